"""The daemon's configuration: `[[jobs]]` and `[daemon]` of the one TOML config file.

    [daemon]                       # optional
    job_timeout = "1h"             # default timeout of a job run
    stop_timeout = "10s"           # on SIGTERM, how long a running job may finish
    history_days = 30              # job_runs rows older than this are pruned
    run_lease = "30s"              # a dead daemon's run is marked abandoned this long after
    metrics_file = "/var/lib/node_exporter/textfile/chainlens_ops.prom"

    [[jobs]]
    name = "cache-cleanup"
    command = "cache cleanup"      # any chainlens-ops command line
    every = "1h"                   # or cron = "0 2 * * *" (+ optional timezone = "UTC")
    timeout = "15m"                # optional

`config.py` loads these two tables with the rest of the file (keys, types, the one
duration grammar); this module judges what only the daemon can (names, commands,
schedules): any problem refuses the daemon before anything runs, in one line naming
the job.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from chainlens_ops.core.errors import ConfigError
from chainlens_ops.settings.config import JobSettings, Settings, build_settings, redact_conninfo

# Intervals are aligned to this instant, so every replica computes the same slots.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_TICK = timedelta(microseconds=1)
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
    stop_timeout_s: int
    history_days: int
    metrics_file: str | None
    config_file: str | None
    run_lease_s: int  # [daemon] run_lease (chainlens_ops.daemon.history)


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

    from chainlens_ops.settings.config import SECRET_KEYWORDS

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


def read_daemon_config(settings: Settings, check_command: CommandCheck) -> DaemonConfig:
    """The daemon's part of the loaded settings (`[daemon]`, `[[jobs]]`, their keys and
    types already checked with everything else), judged as only the daemon can: job
    names, commands against the command tree, schedules."""
    path = settings.config_file
    if path is None:
        raise ConfigError(
            "the daemon needs a config file with [[jobs]]",
            hint="pass --config FILE or set CHAINLENS_CONFIG",
        )
    if not settings.jobs:
        raise ConfigError(f"{path}: no [[jobs]] to run", hint="see README, 'the daemon'")
    daemon = settings.daemon
    jobs: list[JobSpec] = []
    seen: set[str] = set()
    for raw in settings.jobs:
        job = _job(raw, daemon.job_timeout_s, check_command, path)
        if job.name in seen:
            raise ConfigError(f"{path}: job {job.name!r}: the name is used by another job")
        seen.add(job.name)
        jobs.append(job)
    return DaemonConfig(
        tuple(jobs), daemon.stop_timeout_s, daemon.history_days, daemon.metrics_file, path,
        run_lease_s=daemon.run_lease_s,
    )  # fmt: skip


def parse_daemon_config(
    data: Mapping[str, Any], path: str | None, check_command: CommandCheck
) -> DaemonConfig:
    """The daemon's configuration from a parsed config file `data` (read as any command
    reads it, without the environment)."""
    return read_daemon_config(build_settings(data, {}, path or "<config>"), check_command)


def _job(raw: JobSettings, default_timeout: int, check_command: CommandCheck, path: str) -> JobSpec:
    def fail(problem: str) -> ConfigError:
        return ConfigError(f"{path}: {raw.label}: {problem}")

    name = raw.name
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise fail("needs a name of letters, digits, '-', '_' or '.'")
    command = raw.command
    if command is None or not command.strip():
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
        trigger, schedule = _trigger(raw)
    except ValueError as exc:
        raise fail(str(exc)) from None
    timeout = default_timeout if raw.timeout_s is None else raw.timeout_s
    return JobSpec(name, command, tuple(argv), schedule, trigger, timeout)


def _trigger(raw: JobSettings) -> tuple[BaseTrigger, str]:
    cron, every_s, tz_name = raw.cron, raw.every_s, raw.timezone
    if (cron is None) == (every_s is None):
        raise ValueError('give exactly one of cron = "m h dom mon dow" or every = "1h"')
    if every_s is not None:
        if tz_name is not None:
            raise ValueError("timezone applies to cron schedules only")
        trigger = IntervalTrigger(seconds=every_s, start_date=EPOCH, timezone=UTC)
        return trigger, f"every {raw.every}"
    if cron is None or len(cron.split()) != 5:
        raise ValueError(f"cron = {cron!r} is not a 5-field crontab expression (m h dom mon dow)")
    try:
        tz = ZoneInfo(tz_name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {tz_name!r}") from None
    try:
        trigger = CronTrigger.from_crontab(cron, timezone=tz)
    except ValueError as exc:
        raise ValueError(f"cron = {cron!r}: {exc}") from None
    return trigger, f"cron {cron} ({tz.key})"
