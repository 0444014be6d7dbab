"""One table of (command, bad input) -> (exit code, message), across every command.

Each row runs the installed tool as a DBA would. A row names the command words, its
arguments, an optional config file body and environment, the exit code the README
promises and a regex the single `chainlens-ops: error:` line must match. Commands added
later (backup, restore-point, cache, daemon) add rows to CASES; nothing else changes.
No row needs a running server: unreachable ones point at a closed loopback port.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import pytest
from pgharness import run_cli

DEAD = "host=127.0.0.1 port=1 dbname=x user=u password=hunter2 connect_timeout=2"
SERVERLESS = {"CHAINLENS_MICROSERVICES_DSN": DEAD, "CHAINLENS_SUPABASE_DSN": DEAD}


class Case(NamedTuple):
    args: tuple[str, ...]
    code: int
    message: str  # regex the error line matches
    config: str | None = None
    env: dict[str, str] | None = None


# Config mistakes reach every command the same way: exit 3 (wal fetch: 255).
BAD_CONFIGS = {
    "wrong type": ('lock_retries = "many"', r"lock_retries must be a whole number"),
    "duration": ('[s3]\nconnect_timeout = "5 parsecs"', r"s3\.connect_timeout must be a dur"),
    "table as string": ('[databases]\nsupabase = "host=x"', r"databases\.supabase must be a table"),
    "repo number": ("repo = 5", r"repo must be a string"),
    "unknown key": ('lokc_timeout = "2s"', r"unknown key 'lokc_timeout'.*did you mean"),
}
COMMANDS = {
    "schema status": ("schema", "status"),
    "schema apply": ("schema", "apply", "--dry-run"),
    "partition list": ("partition", "list"),
    "partition ensure": ("partition", "ensure"),
    "partition retain": ("partition", "retain", "--keep-months", "6", "--dry-run"),
    "wal list": ("wal", "list", "--repo", "/nonexistent/repo"),
    "wal check": ("wal", "check", "--repo", "/nonexistent/repo"),
    "check": ("check",),
    "backup": ("backup", "--repo", "/nonexistent/repo"),
    "backup list": ("backup", "list", "--repo", "/nonexistent/repo"),
    "restore-point list": ("restore-point", "list", "--repo", "/nonexistent/repo"),
    "restore": ("restore", "--latest", "--pgdata", "/nonexistent/data", "--repo", "/r"),
    "cache stats": ("cache", "stats"),
    "daemon status": ("daemon", "status"),
    "status": ("status",),
    "wal push": ("wal", "push", "--repo", "/nonexistent/repo", "pg_wal/x"),
    "repo info": ("repo", "info", "--repo", "/nonexistent/repo"),
}

CASES: dict[str, Case] = {
    f"{command}: config {what}": Case(args, 3, message, config=body)
    for command, args in COMMANDS.items()
    for what, (body, message) in BAD_CONFIGS.items()
    if what in ("wrong type", "unknown key") or command == "schema status"
}
CASES |= {
    f"wal fetch: config {what}": Case(("wal", "fetch", "x", "y"), 255, message, config=body)
    for what, (body, message) in BAD_CONFIGS.items()
}
CASES |= {
    # Bad flag values: 2.
    "schema apply: bad --lock-wait": Case(
        ("schema", "apply", "--lock-wait", "soon"), 2, r"--lock-wait must be a duration"
    ),
    "schema apply: zero --lock-wait": Case(
        ("schema", "apply", "--lock-wait", "0"), 2, r"--lock-wait must be a positive"
    ),
    "schema apply: negative --lock-wait": Case(
        ("schema", "apply", "--lock-wait=-5s"), 2, r"--lock-wait must be"
    ),
    "schema status: bad --db": Case(("schema", "status", "--db", "nope"), 2, r"--db"),
    "check: zero --timeout": Case(("check", "--timeout", "0"), 2, r"--timeout must be a positive"),
    "check: negative --timeout": Case(("check", "--timeout=-1"), 2, r"--timeout must be"),
    "check: bad --timeout": Case(
        ("check", "--timeout", "soon"), 2, r"--timeout must be a duration"
    ),
    "partition create-month: bad month": Case(
        ("partition", "create-month", "usage_events", "2025-13"), 2, r"2025-13"
    ),
    "partition ensure: bad --ahead": Case(("partition", "ensure", "--ahead", "-3"), 2, r"--ahead"),
    "wal push: no path": Case(("wal", "push"), 2, r"takes one PATH"),
    "wal push: bad --look-ahead": Case(
        ("wal", "push", "--look-ahead", "many", "p"), 2, r"--look-ahead takes a whole number"
    ),
    "wal push: huge --look-ahead": Case(
        ("wal", "push", "--repo", "/r", "--look-ahead", "999", "p"),
        2,
        r"--look-ahead must be between",
    ),
    "wal push: unknown option": Case(
        ("wal", "push", "--bogus", "p"), 2, r"unknown option '--bogus'"
    ),
    "wal list: unknown option": Case(("wal", "list", "--bogus"), 2, r"--bogus"),
    # wal fetch: anything but a confirmed absence is 255, usage errors included.
    "wal fetch: one argument": Case(("wal", "fetch", "x"), 255, r"takes NAME and DEST"),
    "wal fetch: bad --prefetch": Case(
        ("wal", "fetch", "--prefetch", "x", "a", "b"), 255, r"--prefetch takes"
    ),
    # Configuration and connection: 3.
    "missing --config": Case(
        ("--config", "/nonexistent.toml", "schema", "status"), 3, r"does not exist"
    ),
    "--config after the command": Case(
        ("schema", "status", "--config", "/nonexistent.toml"), 3, r"does not exist"
    ),
    "schema status: unreachable": Case(
        ("schema", "status", "--db", "microservices"),
        3,
        r"cannot connect to the microservices",
        env=SERVERLESS,
    ),
    "schema apply: unreachable": Case(
        ("schema", "apply", "--db", "supabase"),
        3,
        r"cannot connect to the supabase",
        env=SERVERLESS,
    ),
    "partition ensure --quiet: unreachable": Case(
        ("partition", "ensure", "--quiet"), 3, r"cannot connect", env=SERVERLESS
    ),
    "status: bad --db": Case(("status", "--db", "nope"), 2, r"--db"),
    "partition list: unreachable": Case(
        ("partition", "list"), 3, r"cannot connect", env=SERVERLESS
    ),
    "check: unreachable": Case(
        ("check", "--repo", "/r"), 3, r"check failed at connect: .*cannot connect", env=SERVERLESS
    ),
    "schema status: nothing names a server": Case(
        ("schema", "status", "--db", "microservices"),
        3,
        r"nothing names a server for the microservices",
    ),
    "check: nothing names a server": Case(("check", "--repo", "/r"), 3, r"nothing names a server"),
    "partition list: nothing names a server": Case(
        ("partition", "list"), 3, r"nothing names a server"
    ),
    # Backups, restore points, restore, cache and the daemon.
    "backup: bad --kind": Case(("backup", "--kind", "bogus"), 2, r"--kind"),
    "backup: unreachable": Case(
        ("backup", "--repo", "/r"), 3, r"cannot connect to the microservices", env=SERVERLESS
    ),
    "backup: zero --jobs": Case(("backup", "--jobs", "0", "--repo", "/r"), 2, r"--jobs"),
    "backup: --jobs for a base backup": Case(
        ("backup", "--kind", "base", "--jobs", "2", "--repo", "/r"),
        2,
        r"--jobs needs --kind logical",
        env=SERVERLESS,
    ),
    "backup --jobs: unreachable": Case(
        ("backup", "--kind", "logical", "--jobs", "2", "--repo", "/r"),
        3,
        r"cannot connect to the microservices",
        env=SERVERLESS,
    ),
    "backup: config zstd_level out of range": Case(
        ("backup", "--repo", "/r"),
        3,
        r"backup\.zstd_level must be a whole number from 1 to 22",
        config="[backup]\nzstd_level = 30",
    ),
    "backup: config bad spool_reserve": Case(
        ("backup", "--repo", "/r"),
        3,
        r"backup\.spool_reserve must be a size",
        config='[backup]\nspool_reserve = "lots"',
    ),
    "backup: config unknown [backup] key": Case(
        ("backup", "--repo", "/r"),
        3,
        r"unknown key 'zstd_levle' in \[backup\].*zstd_level",
        config="[backup]\nzstd_levle = 5",
    ),
    "backup: bad CHAINLENS_BACKUP_SPOOL_RESERVE": Case(
        ("backup", "--repo", "/r"),
        3,
        r"CHAINLENS_BACKUP_SPOOL_RESERVE must be a size",
        env={"CHAINLENS_BACKUP_SPOOL_RESERVE": "-5GB"},
    ),
    "backup list: missing repository": Case(
        ("backup", "list", "--repo", "/nonexistent/repo"), 1, r"does not exist"
    ),
    "backup list: bad repository URL": Case(
        ("backup", "list", "--repo", "ftp://x/y"), 2, r"is not a file:///"
    ),
    "backup verify: unknown backup": Case(
        ("backup", "verify", "--repo", "/nonexistent/repo", "nosuch"), 1, r"no backup nosuch"
    ),
    "backup prune: zero --keep-last": Case(
        ("backup", "prune", "--keep-last", "0", "--repo", "/r"), 2, r"--keep-last must be"
    ),
    "backup prune: negative --keep-days": Case(
        ("backup", "prune", "--keep-days", "-1", "--repo", "/r"), 2, r"--keep-days must not"
    ),
    "restore-point create: bad name": Case(
        ("restore-point", "create", "bad name", "--repo", "/r"), 2, r"restore point name"
    ),
    "restore-point create: too long": Case(
        ("restore-point", "create", "x" * 64, "--repo", "/r"), 2, r"at most 63"
    ),
    "restore-point create: unreachable": Case(
        ("restore-point", "create", "ok1", "--repo", "/r"), 3, r"cannot connect", env=SERVERLESS
    ),
    "restore-point list: missing repository": Case(
        ("restore-point", "list", "--repo", "/nonexistent/repo"), 1, r"does not exist"
    ),
    "restore: unparseable time": Case(
        ("restore", "--target-time", "notatime", "--pgdata", "/var/tmp/x", "--repo", "/r"),
        2,
        r"cannot read the target time",
    ),
    "restore: bad LSN": Case(
        ("restore", "--target-lsn", "zz", "--pgdata", "/var/tmp/x", "--repo", "/r"),
        2,
        r"is not an LSN",
    ),
    "restore: as root": Case(
        ("restore", "--latest", "--pgdata", "/var/tmp/x", "--repo", "/nonexistent/repo"),
        2,
        r"run the restore as the OS user that runs PostgreSQL",
    ),
    "cache cleanup: zero --batch-size": Case(
        ("cache", "cleanup", "--batch-size", "0"), 2, r"--batch-size"
    ),
    "cache cleanup: unreachable": Case(
        ("cache", "cleanup"), 3, r"cannot connect to the microservices", env=SERVERLESS
    ),
    "cache stats: nothing names a server": Case(("cache", "stats"), 3, r"nothing names a server"),
    "daemon: no jobs file": Case(("daemon",), 3, r"needs a config file with \[\[jobs\]\]"),
    # The repository itself (key problems on a real encrypted one: test_repo_crypt.py).
    "repo init: key without --encrypt": Case(
        ("repo", "init", "--repo", "/nonexistent/r", "--key-file", "/k"), 2, r"go with --encrypt"
    ),
    "repo init: two keys": Case(
        ("repo", "init", "--repo", "/r", "--encrypt", "--key-file", "/k", "--kms-key-id", "a"),
        2,
        r"not both",
    ),
    "repo init: no key": Case(
        ("repo", "init", "--repo", "/nonexistent/r", "--encrypt"), 2, r"encryption needs a key"
    ),
    "repo encrypt: no key": Case(
        ("repo", "encrypt", "--repo", "/nonexistent/r"), 2, r"encryption needs a key"
    ),
    "repo rotate-key: no new key": Case(
        ("repo", "rotate-key", "--repo", "/nonexistent/r"), 2, r"needs --new-key-file"
    ),
    "repo info: no such repository": Case(
        ("repo", "info", "--repo", "/nonexistent/r"), 1, r"does not exist"
    ),
    "repo info: bad URL": Case(("repo", "info", "--repo", "ftp://x"), 2, r"is not a file://"),
    "repo: key_file not a string": Case(
        ("repo", "info", "--repo", "/r"),
        3,
        r"repository\.key_file must be a string",
        config="[repository]\nkey_file = 5",
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_exit_code_and_one_error_line(case: Case, tmp_path: Path) -> None:
    args = case.args
    if case.config is not None:
        config = tmp_path / "ops.toml"
        config.write_text(case.config)
        args = ("--config", str(config), *args)
    proc = run_cli(*args, env=case.env, cwd=tmp_path, timeout=60)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == case.code, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines, "no error line"
    assert lines[-1].startswith("chainlens-ops: error: "), lines
    assert re.search(case.message, lines[-1]), lines[-1]
    assert "hunter2" not in proc.stderr + proc.stdout


HELP_PATHS = [
    (),
    *[(group,) for group in ("schema", "partition", "wal", "backup", "restore",
                             "restore-point", "cache", "daemon", "repo")],
    ("schema", "apply"), ("schema", "status"), ("partition", "create-month"),
    ("partition", "ensure"), ("partition", "list"), ("partition", "retain"),
    ("wal", "push"), ("wal", "fetch"), ("wal", "list"), ("wal", "check"), ("check",),
    ("backup", "list"), ("backup", "verify"), ("backup", "prune"), ("restore", "drill"),
    ("restore-point", "create"), ("restore-point", "list"), ("cache", "cleanup"),
    ("cache", "stats"), ("daemon", "status"), ("status",), ("demo",), ("repo", "init"),
    ("repo", "info"), ("repo", "rotate-key"), ("repo", "encrypt"),
]  # fmt: skip


def test_every_command_path_is_listed_for_help() -> None:
    import typer

    from chainlens_ops.cli.main import app

    def walk(command: object, path: tuple[str, ...]) -> list[tuple[str, ...]]:
        found = [path]
        for name, sub in getattr(command, "commands", {}).items():
            found += walk(sub, (*path, name))
        return found

    assert sorted(walk(typer.main.get_command(app), ())) == sorted(HELP_PATHS)


@pytest.mark.parametrize("path", HELP_PATHS, ids=[" ".join(p) or "top" for p in HELP_PATHS])
def test_dash_h_works_everywhere(path: tuple[str, ...]) -> None:
    proc = run_cli(*path, "-h")
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout
