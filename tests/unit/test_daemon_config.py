"""The daemon's `[daemon]` and `[[jobs]]`: loaded with the rest of the config file (one
model, one duration grammar, one "did you mean"), then judged against the real command
tree. No daemon runs and no database is contacted."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from chainlens_ops.cli.daemon import command_checker
from chainlens_ops.cli.main import build_command
from chainlens_ops.core.errors import ConfigError
from chainlens_ops.daemon.jobs import (
    CommandCheck,
    DaemonConfig,
    display_command,
    parse_daemon_config,
    read_daemon_config,
)
from chainlens_ops.settings.config import build_settings, load_settings

SECRET = "hunter2-not-for-logs"
GOOD = {"name": "good", "command": "cache stats", "every": "1s"}


@pytest.fixture(scope="module")
def check() -> CommandCheck:
    return command_checker(build_command())


def daemon_config(jobs: list[dict[str, Any]], check: CommandCheck, **daemon: Any) -> DaemonConfig:
    data: dict[str, Any] = {"jobs": jobs}
    if daemon:
        data["daemon"] = daemon
    return parse_daemon_config(data, "test.toml", check)


def test_slots_are_aligned_to_the_clock_and_missed_slots_coalesce() -> None:
    config = parse_daemon_config(
        {
            "daemon": {"job_timeout": "2h"},
            "jobs": [
                {"name": "i", "command": "cache stats", "every": "15m"},
                {
                    "name": "c",
                    "command": "cache stats",
                    "cron": "30 2 * * *",
                    "timezone": "Europe/Berlin",
                },
            ],
        },
        "test.toml",
        lambda argv: None,
    )
    interval, cron = config.jobs
    now = datetime(2026, 3, 1, 10, 7, 12, tzinfo=UTC)
    assert interval.next_fire(now) == datetime(2026, 3, 1, 10, 15, tzinfo=UTC)
    # three missed slots, one run: the latest one
    assert interval.latest_due(datetime(2026, 3, 1, 9, 15, tzinfo=UTC), now) == datetime(
        2026, 3, 1, 10, 0, tzinfo=UTC
    )
    assert cron.next_fire(now) == datetime(2026, 3, 2, 1, 30, tzinfo=UTC)  # 02:30 CET
    assert interval.timeout_s == cron.timeout_s == 7200  # [daemon] job_timeout


def test_the_acceptance_pair_lock_timeout_1d_and_a_job_timeout_of_30(tmp_path: Path) -> None:
    path = tmp_path / "ops.toml"
    path.write_text(
        'lock_timeout = "1d"\n\n[[jobs]]\nname = "n"\ncommand = "cache stats"\n'
        'every = "7d"\ntimeout = 30\n'
    )
    settings = load_settings(path, env={})
    assert settings.lock_timeout_ms == 86_400_000
    (job,) = read_daemon_config(settings, lambda argv: None).jobs
    assert job.timeout_s == 30
    assert job.schedule == "every 7d"


@pytest.mark.parametrize("bad", ['"1x"', '"soon"', '"-5s"', "0", "true", '"30 parsecs"', '"2y"'])
def test_a_malformed_duration_is_refused_the_same_way_top_level_and_in_a_job(
    tmp_path: Path, bad: str
) -> None:
    top, job = tmp_path / "top.toml", tmp_path / "job.toml"
    top.write_text(f"lock_timeout = {bad}\n")
    job.write_text(
        f'[[jobs]]\nname = "n"\ncommand = "cache stats"\nevery = "1h"\ntimeout = {bad}\n'
    )
    with pytest.raises(ConfigError) as top_error:
        load_settings(top, env={})
    with pytest.raises(ConfigError) as job_error:
        load_settings(job, env={})
    # the same refusal, word for word, after the name of the key
    assert top_error.value.message.startswith(f"{top}: lock_timeout must be ")
    assert job_error.value.message.startswith(f"{job}: job 'n': timeout must be ")
    assert (
        top_error.value.message.split(" must be ", 1)[1]
        == (job_error.value.message.split(" must be ", 1)[1])
    )
    assert top_error.value.exit_code == job_error.value.exit_code == 3


def test_daemon_durations_share_the_grammar_and_round_up_to_seconds(check: CommandCheck) -> None:
    config = daemon_config(
        [{"name": "n", "command": "cache stats", "every": 90, "timeout": "500ms"}],
        check,
        stop_timeout="2m",
        job_timeout="1d",
    )
    (job,) = config.jobs
    assert config.stop_timeout_s == 120
    assert job.timeout_s == 1  # rounded up, never zero
    assert job.schedule == "every 90s"


def test_unknown_job_key_gets_the_one_did_you_mean(check: CommandCheck) -> None:
    with pytest.raises(ConfigError) as error:
        daemon_config([{**GOOD, "name": "j", "timout": "1m"}], check)
    assert "unknown key 'timout' in job 'j'" in error.value.one_line()
    assert "did you mean 'timeout'?" in error.value.one_line()


def test_unknown_daemon_key_gets_the_one_did_you_mean(check: CommandCheck) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'job_timout' in \[daemon\]") as error:
        daemon_config([GOOD], check, job_timout="1h")
    assert "did you mean 'job_timeout'?" in error.value.one_line()


BAD_JOBS = {
    "unknown command": ({"command": "cache sweep", "every": "1m"}, "unknown command 'sweep'"),
    "bad option": ({"command": "cache cleanup --bogus", "every": "1m"}, "--bogus"),
    "bad cron": ({"command": "cache cleanup", "cron": "61 * * * *"}, "cron"),
    "six-field cron": ({"command": "cache cleanup", "cron": "0 0 * * * *"}, "5-field"),
    "both": ({"command": "cache cleanup", "cron": "0 * * * *", "every": "1h"}, "exactly one"),
    "neither": ({"command": "cache cleanup"}, "exactly one"),
    "bad duration": ({"command": "cache cleanup", "every": "5 minutes"}, "every"),
    "bad timeout": ({"command": "cache cleanup", "every": "1h", "timeout": "0s"}, "timeout"),
    "unknown key": ({"command": "cache cleanup", "every": "1h", "retries": 3}, "retries"),
    "bad timezone": (
        {"command": "cache cleanup", "cron": "0 2 * * *", "timezone": "Mars/Base"},
        "Mars/Base",
    ),
    "timezone on an interval": (
        {"command": "cache cleanup", "every": "1h", "timezone": "UTC"},
        "cron schedules only",
    ),
    "runs the daemon": ({"command": "daemon", "every": "1h"}, "daemon"),
    "carries --config": ({"command": "cache stats --config x.toml", "every": "1h"}, "--config"),
    "prints help": ({"command": "cache stats --help", "every": "1h"}, "--help"),
    "a group alone": ({"command": "cache", "every": "1h"}, "needs a command"),
    "unbalanced quote": ({"command": "cache stats --db 'x", "every": "1h"}, "split into words"),
    "empty command": ({"command": "  ", "every": "1h"}, "needs command"),
    "password in argv": (
        {"command": f"cache stats --dsn 'host=x password={SECRET}'", "every": "1h"},
        "carries a password",
    ),
    "password in a URI": (
        {"command": f"cache stats --dsn=postgresql://u:{SECRET}@h/db", "every": "1h"},
        "carries a password",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_JOBS))
def test_a_bad_job_is_refused_in_one_line_naming_it(check: CommandCheck, case: str) -> None:
    body, expected = BAD_JOBS[case]
    with pytest.raises(ConfigError) as error:
        daemon_config([GOOD, {"name": "broken", **body}], check)
    line = error.value.one_line()
    assert "\n" not in line
    assert "job 'broken'" in line and expected in line, line
    assert SECRET not in line
    assert error.value.exit_code == 3


@pytest.mark.parametrize("name", [None, "", "has space", "-dash-first", 7])
def test_a_job_needs_a_plain_name(check: CommandCheck, name: object) -> None:
    raw: dict[str, Any] = {"command": "cache stats", "every": "1h"}
    if name is not None:
        raw["name"] = name
    with pytest.raises(ConfigError, match="needs a name") as error:
        daemon_config([raw], check)
    assert "[[jobs]] entry 1" in error.value.message or repr(name) in error.value.message


def test_duplicate_job_names_are_refused(check: CommandCheck) -> None:
    with pytest.raises(ConfigError, match="job 'good': the name is used by another job"):
        daemon_config([GOOD, GOOD], check)


def test_no_jobs_and_no_file_are_refused(tmp_path: Path, check: CommandCheck) -> None:
    with pytest.raises(ConfigError, match=r"no \[\[jobs\]\] to run"):
        daemon_config([], check)
    with pytest.raises(ConfigError, match="needs a config file"):
        read_daemon_config(build_settings({}, {}, None), check)


def test_a_job_entry_must_be_a_table_and_jobs_an_array(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('jobs = ["cache stats"]\n')
    with pytest.raises(ConfigError, match=r"\[\[jobs\]\] entry 1 must be a table"):
        load_settings(path, env={})
    path.write_text('jobs = "cache stats"\n')
    with pytest.raises(ConfigError, match="must be an array of tables"):
        load_settings(path, env={})


@pytest.mark.parametrize(
    "command",
    ["backup", "backup --db all --quiet", "restore drill", "partition ensure", "cache cleanup"],
)
def test_real_command_lines_pass_the_check(check: CommandCheck, command: str) -> None:
    check(command.split())


def test_display_command_hides_a_dsn_password() -> None:
    argv = [
        "cache",
        "stats",
        "--dsn",
        f"host=x password={SECRET}",
        f"--dsn=host=y password={SECRET}",
    ]
    shown = display_command(argv)
    assert SECRET not in shown
    assert "host=x" in shown and "host=y" in shown
