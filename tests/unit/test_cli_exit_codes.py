"""Command-line parsing and exit codes in process: refusals that need no server (bad
flags, bad config, missing repositories), the error hierarchy's codes, and how every
command's result (the Outcome protocol) becomes the exit code. The installed tool's
table, with servers, is tests/integration/test_exit_codes.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from chainlens_ops.cli.common import finish
from chainlens_ops.cli.main import app, hoist_global_options, run
from chainlens_ops.core import errors
from chainlens_ops.core.errors import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    ChainlensError,
    ConfigError,
    ConnectionFailed,
    LockTimeout,
    OperationFailed,
    PgCommandError,
    UsageError,
)
from chainlens_ops.core.outcome import Outcome, PerTarget, TargetFailure, failed_exit, worst_exit


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No stray CHAINLENS_*, PG* or AWS_* from the shell, and nothing names a server."""
    import os

    for name in list(os.environ):
        if name.startswith(("CHAINLENS_", "PG", "AWS_", "SUPABASE_", "POSTGRES_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = run(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# (args, config body or None, exit code, regex of the last stderr line)
REFUSALS: dict[str, tuple[tuple[str, ...], str | None, int, str]] = {
    "unknown command": (("bogus",), None, 2, r"No such command"),
    "unknown option": (("schema", "status", "--bogus"), None, 2, r"--bogus"),
    "bad --db": (("schema", "status", "--db", "nope"), None, 2, r"--db"),
    "status bad --db": (("status", "--db", "nope"), None, 2, r"--db"),
    "bad --lock-wait": (("schema", "apply", "--lock-wait", "soon"), None, 2, r"--lock-wait must"),
    "zero --lock-wait": (("schema", "apply", "--lock-wait", "0"), None, 2, r"must be a positive"),
    "zero check --timeout": (("check", "--timeout", "0"), None, 2, r"--timeout must be"),
    "bad --kind": (("backup", "--kind", "bogus"), None, 2, r"--kind.*auto, base, incr, logical"),
    "zero --jobs": (("backup", "--jobs", "0", "--repo", "/r"), None, 2, r"--jobs"),
    "--from without incr": (
        ("backup", "--kind", "base", "--from", "x", "--repo", "/r", "--dsn", "host=h"),
        None,
        2,
        r"--from needs --kind incr",
    ),
    "--dsn with --db all": (
        ("backup", "--db", "all", "--dsn", "host=x", "--repo", "/r"),
        None,
        2,
        r"--dsn names one",
    ),
    "verify without an id": (
        ("backup", "verify", "--repo", "/r"),
        None,
        2,
        r"backup id or --latest",
    ),
    "prune without a rule": (("backup", "prune", "--repo", "/r"), None, 2, r"say what to keep"),
    "missing repository": (
        ("backup", "list", "--repo", "/nonexistent/repo"),
        None,
        1,
        r"does not exist",
    ),
    "missing --config file": (
        ("--config", "/nonexistent.toml", "status"),
        None,
        3,
        r"does not exist",
    ),
    "config bad duration": (
        ("schema", "status"),
        'lock_timeout = "1x"',
        3,
        r"lock_timeout must be",
    ),
    "config unknown key": (
        ("schema", "status"),
        'lokc_timeout = "2s"',
        3,
        r"unknown key 'lokc_timeout'.*did you mean",
    ),
    "config bad job timeout": (
        ("schema", "status"),
        '[[jobs]]\nname = "n"\ncommand = "cache stats"\nevery = "1h"\ntimeout = "1x"',
        3,
        r"job 'n': timeout must be a duration",
    ),
    "config wrong type": (("cache", "stats"), 'lock_retries = "many"', 3, r"whole number"),
    "nothing names a server": (("cache", "stats"), None, 3, r"nothing names a server"),
    "daemon without a config file": (("daemon",), None, 3, r"needs a config file"),
    "daemon without jobs": (("daemon", "status"), 'repo = "/r"', 3, r"no \[\[jobs\]\] to run"),
    "bad target time": (
        ("restore", "--target-time", "yesterday", "--pgdata", "/nonexistent/d", "--repo", "/r"),
        None,
        2,
        r"cannot read the target time",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_refusal_is_one_line_with_its_exit_code(
    case: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args, config, code, message = REFUSALS[case]
    if config is not None:
        path = tmp_path / "ops.toml"
        path.write_text(config + "\n")
        args = ("--config", str(path), *args)
    got, _out, err = cli(capsys, *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert got == code, err
    assert "Traceback" not in err
    assert lines and lines[-1].startswith("chainlens-ops: error: "), lines
    assert re.search(message, lines[-1]), lines[-1]


def test_global_options_may_follow_the_command() -> None:
    assert hoist_global_options(["schema", "status", "-v", "--config", "f.toml"]) == [
        "-v", "--config", "f.toml", "schema", "status",
    ]  # fmt: skip
    assert hoist_global_options(["wal", "push", "--config=f.toml", "--", "--config"]) == [
        "--config=f.toml", "wal", "push", "--", "--config",
    ]  # fmt: skip


def test_no_arguments_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = cli(capsys)
    assert code == EXIT_USAGE and "Usage:" in out


def test_version_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = cli(capsys, "--version")
    assert code == EXIT_OK and out.startswith("chainlens-ops ")


def test_cli_runner_sees_the_same_refusal() -> None:
    result = CliRunner().invoke(app, ["backup", "--kind", "incremental"])
    assert result.exit_code == EXIT_USAGE


@pytest.mark.parametrize("group", ["schema", "partition", "wal", "backup", "restore", "daemon"])
def test_every_group_has_help_that_fits_80_columns(
    group: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _err = cli(capsys, group, "--help")
    assert code == EXIT_OK
    assert max(len(line) for line in out.splitlines()) <= 80


# -- the error hierarchy -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ChainlensError("x"), EXIT_FAILED),
        (OperationFailed("x"), EXIT_FAILED),
        (LockTimeout("x"), EXIT_FAILED),
        (PgCommandError("pg_dump", 1, "boom"), EXIT_FAILED),
        (UsageError("x"), EXIT_USAGE),
        (ConfigError("x"), EXIT_CONFIG),
        (ConnectionFailed("x"), EXIT_CONFIG),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
def test_each_error_carries_its_documented_exit_code(error: ChainlensError, code: int) -> None:
    assert error.exit_code == code


def test_the_exit_code_values_are_the_readmes() -> None:
    assert (EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CONFIG) == (0, 1, 2, 3)
    assert (errors.FETCH_MISSING, errors.FETCH_FATAL) == (1, 255)


def test_one_line_folds_newlines_and_adds_the_hint() -> None:
    error = UsageError("bad\nmonth  ", hint="use YYYY-MM")
    assert error.one_line() == "bad month (use YYYY-MM)"


def test_a_binary_failure_keeps_its_last_stderr_line() -> None:
    error = PgCommandError("pg_dump", 1, "warning\npg_dump: error: connection refused\n")
    assert error.one_line() == "pg_dump exited with code 1: pg_dump: error: connection refused"
    assert PgCommandError("initdb", 2, "  ").one_line().endswith("no output")


# -- Outcome: each result knows its own exit code ---------------------------------------------


def test_worst_exit_and_failed_exit() -> None:
    assert worst_exit([]) == 0
    assert worst_exit([1, 3, 2]) == 3
    assert (failed_exit(True), failed_exit(False)) == (0, 1)


def test_one_target_raises_its_error_as_any_command_would() -> None:
    run_ = PerTarget[int](alone=True)
    with pytest.raises(ConfigError), run_.attempt("supabase"):
        raise ConfigError("cannot connect")
    assert run_.failures == []


def test_several_targets_gather_failures_and_the_rest_still_run() -> None:
    run_ = PerTarget[str]()
    for name in ("supabase", "microservices"):
        with run_.attempt(name):
            if name == "supabase":
                raise ConnectionFailed("cannot connect", hint="check --dsn")
            run_.results.append(name)
    assert run_.results == ["microservices"]
    assert run_.failures == [TargetFailure("supabase", "cannot connect (check --dsn)", 3)]
    assert run_.failures[0].line == "supabase: cannot connect (check --dsn)"
    assert (run_.ok, run_.exit_code) == (False, 3)


def test_results_that_carry_their_own_outcome_count_too() -> None:
    class Drifted:
        ok = False
        exit_code = 1

    run_ = PerTarget[object](results=[Drifted(), "plain"])
    assert isinstance(Drifted(), Outcome)
    assert (run_.ok, run_.exit_code) == (False, 1)
    run_.failures.append(TargetFailure("x", "unreachable", 3))
    assert run_.exit_code == 3  # the worst wins
    with pytest.raises(KeyboardInterrupt), run_.attempt("y"):
        raise KeyboardInterrupt  # only ChainlensError is gathered


def test_finish_exits_with_the_outcomes_code_and_names_failed_targets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    finish(PerTarget[int](results=[1, 2]))  # all ok: returns
    run_ = PerTarget[int](failures=[TargetFailure("supabase", "cannot connect", 3)])
    with pytest.raises(typer.Exit) as exited:
        finish(run_)
    assert exited.value.exit_code == 3
    assert capsys.readouterr().err.strip() == "chainlens-ops: error: supabase: cannot connect"


def test_core_results_carry_their_outcome() -> None:
    from chainlens_ops.backup.verify import ObjectCheck, VerifyResult
    from chainlens_ops.partitions.create import EnsureResult, TableFailure
    from chainlens_ops.schema.migrate import FileStatus, TargetStatus

    drifted = TargetStatus("supabase", "x", [FileStatus("001", "a", "drifted", None)])
    fine = TargetStatus("supabase", "x", [FileStatus("001", "a", "applied", None)])
    assert (drifted.ok, drifted.exit_code, fine.ok, fine.exit_code) == (False, 1, True, 0)
    ensure = EnsureResult("2026-11", "2027-02")
    assert (ensure.ok, ensure.exit_code) == (True, 0)
    ensure.failures.append(TableFailure("public.t", "supabase", "unreachable", 3))
    assert (ensure.ok, ensure.exit_code) == (False, 3)
    verify = VerifyResult(id="b", kind="base", checks=[ObjectCheck("k", False, "bad")])
    assert (verify.ok, verify.exit_code) == (False, 1)
