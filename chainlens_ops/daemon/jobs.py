"""The daemon's configuration: `[[jobs]]` and `[daemon]` of the one TOML config file.

    [daemon]                       # optional
    job_timeout = "1h"             # default timeout of a job run
    stop_timeout = "10s"           # on SIGTERM, how long a running job may finish
    history_days = 30              # job_runs rows older than this are pruned
    metrics_file = "/var/lib/node_exporter/textfile/chainlens_ops.prom"

    [[jobs]]
    name = "cache-cleanup"
    command = "cache cleanup"      # any chainlens-ops command line
    every = "1h"                   # or cron = "0 2 * * *" (+ optional timezone = "UTC")
    timeout = "15m"                # optional

`config.py` leaves these two tables to this module, which validates them fully: any
problem refuses the daemon before anything runs, in one line naming the job.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from chainlens_ops import configcheck
from chainlens_ops.config import redact_conninfo
from chainlens_ops.errors import ConfigError

JOB_KEYS = frozenset(configcheck.JOB_KEYS)
DAEMON_KEYS = frozenset(configcheck.DAEMON_KEYS)
DEFAULT_JOB_TIMEOUT_S = 3600
DEFAULT_STOP_TIMEOUT_S = 10
DEFAULT_HISTORY_DAYS = 30
# Intervals are aligned to this instant, so every replica computes the same slots.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_TICK = timedelta(microseconds=1)
_DURATION = re.compile(r"(\d+)(s|m|h|d)")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}")

# Checks a job's argv against the real command tree; raises ValueError with the reason.
CommandCheck = Callable[[list[str]], None]


@dataclass(frozen=True)
class JobSpec:
    name: str
    command: str
    argv: tuple[str, ...]
    schedule: str  # "cron 0 2 * * * (UTC)" or "every 1h", for people
    trigger: BaseTrigger
    timeout_s: int

    @property
    def display(self) -> str:
        """The command line for logs and status, any --dsn shown without its password."""
        return display_command(self.argv)

    def next_fire(self, after: datetime) -> datetime | None:
        """The first slot strictly after `after`."""
        fire: datetime | None = self.trigger.get_next_fire_time(None, after + _TICK)
        return fire

    def latest_due(self, first_due: datetime, now: datetime) -> datetime:
        """The last slot at or before `now`, starting from a due slot: missed slots
        coalesce into this one."""
        slot = first_due
        while True:
            following = self.next_fire(slot)
            if following is None or following > now:
                return slot
            slot = following


@dataclass(frozen=True)
class DaemonConfig:
    jobs: tuple[JobSpec, ...]
    stop_timeout_s: int = DEFAULT_STOP_TIMEOUT_S
    history_days: int = DEFAULT_HISTORY_DAYS
    metrics_file: str | None = None
    config_file: str | None = None


def display_command(argv: tuple[str, ...] | list[str]) -> str:
    shown: list[str] = []
    after_dsn = False
    for arg in argv:
        if after_dsn:
            arg = redact_conninfo(arg)
        elif arg.startswith("--dsn="):
            arg = "--dsn=" + redact_conninfo(arg.removeprefix("--dsn="))
        after_dsn = arg == "--dsn"
        shown.append(arg)
    return shlex.join(shown)


def _dsn_password(argv: list[str]) -> bool:
    """Whether any `--dsn` value in `argv` holds a secret (password, sslpassword)."""
    from psycopg.conninfo import conninfo_to_dict

    from chainlens_ops.config import SECRET_KEYWORDS

    values = [a.removeprefix("--dsn=") for a in argv if a.startswith("--dsn=")]
    values += [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--dsn"]
    for value in values:
        try:
            params = conninfo_to_dict(value)
            if any(params.get(keyword) for keyword in SECRET_KEYWORDS):
                return True
        except Exception:
            return ":" in value and "@" in value  # unparseable: assume the worst of a URI
    return False


def parse_duration_s(value: object, what: str) -> int:
    """`"30s"`, `"15m"`, `"1h"`, `"1d"` -> seconds (positive)."""
    match = _DURATION.fullmatch(value.strip()) if isinstance(value, str) else None
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)] if match else 0
    if seconds <= 0:
        raise ValueError(f'{what} = {value!r} is not a duration like "30s", "15m", "1h", "1d"')
    return seconds


def read_daemon_config(path: str | None, check_command: CommandCheck) -> DaemonConfig:
    """Read and validate the daemon's part of the config file at `path`."""
    if path is None:
        raise ConfigError(
            "the daemon needs a config file with [[jobs]]",
            hint="pass --config FILE or set CHAINLENS_CONFIG",
        )
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return parse_daemon_config(data, path, check_command)


def parse_daemon_config(
    data: Mapping[str, Any], path: str | None, check_command: CommandCheck
) -> DaemonConfig:
    daemon = data.get("daemon", {})
    if not isinstance(daemon, dict):
        raise ConfigError(f"{path}: [daemon] must be a table")
    unknown = sorted(set(daemon) - DAEMON_KEYS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown keys in [daemon]: {', '.join(unknown)} "
            f"(known: {', '.join(sorted(DAEMON_KEYS))})"
        )
    try:
        job_timeout = parse_duration_s(
            daemon.get("job_timeout", f"{DEFAULT_JOB_TIMEOUT_S}s"), "daemon.job_timeout"
        )
        stop_timeout = parse_duration_s(
            daemon.get("stop_timeout", f"{DEFAULT_STOP_TIMEOUT_S}s"), "daemon.stop_timeout"
        )
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    history_days = daemon.get("history_days", DEFAULT_HISTORY_DAYS)
    if not isinstance(history_days, int) or isinstance(history_days, bool) or history_days < 1:
        raise ConfigError(f"{path}: daemon.history_days must be a whole number of days >= 1")
    metrics_file = daemon.get("metrics_file")
    if metrics_file is not None and not isinstance(metrics_file, str):
        raise ConfigError(f"{path}: daemon.metrics_file must be a path string")

    raw_jobs = data.get("jobs", [])
    if not isinstance(raw_jobs, list) or not raw_jobs:
        raise ConfigError(f"{path}: no [[jobs]] to run", hint="see README, 'the daemon'")
    jobs: list[JobSpec] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_jobs, 1):
        job = _parse_job(raw, index, job_timeout, check_command, path)
        if job.name in seen:
            raise ConfigError(f"{path}: job {job.name!r}: the name is used by another job")
        seen.add(job.name)
        jobs.append(job)
    return DaemonConfig(tuple(jobs), stop_timeout, history_days, metrics_file, path)


def _parse_job(
    raw: object, index: int, default_timeout: int, check_command: CommandCheck, path: str | None
) -> JobSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: [[jobs]] entry {index} must be a table")
    name = raw.get("name")
    label = f"job {name!r}" if isinstance(name, str) else f"[[jobs]] entry {index}"

    def fail(problem: str) -> ConfigError:
        return ConfigError(f"{path}: {label}: {problem}")

    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise fail("needs a name of letters, digits, '-', '_' or '.'")
    unknown = sorted(set(raw) - JOB_KEYS)
    if unknown:
        raise fail(f"unknown keys {', '.join(unknown)} (known: {', '.join(sorted(JOB_KEYS))})")
    command = raw.get("command")
    if not isinstance(command, str) or not command.strip():
        raise fail('needs command = "<chainlens-ops command line>"')
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise fail(f"command cannot be split into words: {exc}") from None
    if _dsn_password(argv):
        raise fail(
            "--dsn in a job's command carries a password, which anyone can read in `ps` "
            "while the job runs: put the connection in [databases.<name>] of this file, "
            "the environment or ~/.pgpass"
        )
    try:
        check_command(argv)
    except ValueError as exc:
        raise fail(f"command {display_command(argv)!r}: {exc}") from None
    try:
        timeout = parse_duration_s(raw.get("timeout", f"{default_timeout}s"), "timeout")
        trigger, schedule = _trigger(raw)
    except ValueError as exc:
        raise fail(str(exc)) from None
    return JobSpec(name, command, tuple(argv), schedule, trigger, timeout)


def _trigger(raw: Mapping[str, Any]) -> tuple[BaseTrigger, str]:
    cron, every, tz_name = raw.get("cron"), raw.get("every"), raw.get("timezone")
    if (cron is None) == (every is None):
        raise ValueError('give exactly one of cron = "m h dom mon dow" or every = "1h"')
    if every is not None:
        if tz_name is not None:
            raise ValueError("timezone applies to cron schedules only")
        seconds = parse_duration_s(every, "every")
        return IntervalTrigger(seconds=seconds, start_date=EPOCH, timezone=UTC), f"every {every}"
    if not isinstance(cron, str) or len(cron.split()) != 5:
        raise ValueError(f"cron = {cron!r} is not a 5-field crontab expression (m h dom mon dow)")
    if tz_name is not None and not isinstance(tz_name, str):
        raise ValueError('timezone must be a name such as "UTC" or "Europe/Berlin"')
    try:
        tz = ZoneInfo(tz_name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {tz_name!r}") from None
    try:
        trigger = CronTrigger.from_crontab(cron, timezone=tz)
    except ValueError as exc:
        raise ValueError(f"cron = {cron!r}: {exc}") from None
    return trigger, f"cron {cron} ({tz.key})"
