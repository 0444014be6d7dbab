"""One table of (command, bad input) -> (exit code, message), across every command.

Each row runs the installed tool as a DBA would. A row names the command words, its
arguments, an optional config file body and environment, the exit code the README
promises and a regex the single `chainlens-ops: error:` line must match. Commands added
later (backup, restore-point, cache, daemon) add rows to CASES; nothing else changes.
No row needs a running server: unreachable ones point at a closed loopback port.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import NamedTuple

import pytest
from conftest import ClusterFactory
from pgharness import CLI, run_cli
from test_wal import switch_and_wait

DAMAGED_ID = "20261206T100000Z-logical-supabase"
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
    # [[jobs]] load with everything else, with the one duration grammar.
    "job duration": (
        '[[jobs]]\nname = "n"\ncommand = "cache stats"\nevery = "1h"\ntimeout = "1x"',
        r"job 'n': timeout must be a duration such as 500ms, 30s, 2m, 1h or 7d",
    ),
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
    "wal fetch: bad --required-through": Case(
        ("wal", "fetch", "--required-through", "x", "000000010000000000000001", "/tmp/d"),
        255,
        r"fatal: .*not a WAL",
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
    # A mistyped DSN names the keyword (and never repeats a value from it).
    "schema status: DSN keyword typo": Case(
        (
            "schema",
            "status",
            "--db",
            "supabase",
            "--dsn",
            "host=127.0.0.1 dbnme=x password=hunter2",
        ),
        3,
        r"unknown keyword 'dbnme': did you mean dbname\?",
    ),
    "backup: DSN keyword typo": Case(
        ("backup", "--repo", "/r", "--dsn", "sslmod=require password=hunter2"),
        3,
        r"unknown keyword 'sslmod': did you mean sslmode\?",
    ),
    "schema status: DSN word without =": Case(
        ("schema", "status", "--db", "supabase", "--dsn", "host=127.0.0.1 hunter2"),
        3,
        r"a word without '='",
    ),
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
    "backup: config bad full_every": Case(
        ("backup", "--repo", "/r"),
        3,
        r"backup\.full_every must be a duration",
        config='[backup]\nfull_every = "weekly"',
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
    # A backup id the catalog does not hold is bad input (2) wherever it is given; a
    # repository that is not there is said first (1). {tmp}: an empty folder.
    "backup verify: missing repository": Case(
        ("backup", "verify", "--repo", "/nonexistent/repo", "nosuch"), 1, r"does not exist"
    ),
    "backup verify: unknown backup": Case(
        ("backup", "verify", "--repo", "{tmp}", "nosuch"),
        2,
        r"no backup 'nosuch' in repository .*backup list",
    ),
    "restore drill: unknown backup": Case(
        ("restore", "drill", "--repo", "{tmp}", "--backup", "nope"),
        2,
        r"no backup 'nope' in repository .*backup list",
    ),
    "restore logical: unknown backup": Case(
        ("restore", "--repo", "{tmp}", "--backup", "nope", "--dbname", "x"),
        2,
        r"no backup 'nope'",
    ),
    "backup prune: zero --keep-last": Case(
        ("backup", "prune", "--keep-last", "0", "--repo", "/r"), 2, r"--keep-last must be"
    ),
    "backup prune: negative --keep-days": Case(
        ("backup", "prune", "--keep-days", "-1", "--repo", "/r"), 2, r"--keep-days must not"
    ),
    "backup prune: zero --keep-daily": Case(
        ("backup", "prune", "--keep-daily", "0", "--repo", "/r"), 2, r"--keep-daily must be"
    ),
    "backup prune: nothing to keep": Case(
        ("backup", "prune", "--repo", "/r"), 2, r"say what to keep"
    ),
    "backup pin: missing repository": Case(
        ("backup", "pin", "x", "--repo", "/nonexistent/repo"), 1, r"does not exist"
    ),
    "backup pin: note too long": Case(
        ("backup", "pin", "x", "--note", "n" * 600, "--repo", "/r"), 2, r"--note is 600"
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
    "restore: target name with a path": Case(
        ("restore", "--target-name", "../x", "--pgdata", "/var/tmp/x", "--repo", "/r"),
        2,
        r"restore point name '\.\./x' holds '/'",
    ),
    "restore: 300-character target name": Case(
        ("restore", "--target-name", "x" * 300, "--pgdata", "/var/tmp/x", "--repo", "/r"),
        2,
        r"is 300 bytes; PostgreSQL allows at most 63",
    ),
    "restore: empty target name": Case(
        ("restore", "--target-name", "", "--pgdata", "/var/tmp/x", "--repo", "/r"), 2, r"empty"
    ),
    "restore: signed LSN": Case(
        ("restore", "--target-lsn", "-1/0", "--pgdata", "/var/tmp/x", "--repo", "/r"),
        2,
        r"is not an LSN",
    ),
    "restore: as root": Case(
        ("restore", "--latest", "--pgdata", "/var/tmp/x", "--repo", "/nonexistent/repo"),
        2,
        r"run the restore as the OS user that runs PostgreSQL",
    ),
    "restore table: no target": Case(
        ("restore", "table", "t", "--repo", "/r"), 2, r"give exactly one of --target-time"
    ),
    "restore table: bad schema name": Case(
        ("restore", "table", "t", "--target-lsn", "0/1", "--into-schema", "pg_x", "--repo", "/r"),
        2,
        r"is not a plain schema name",
    ),
    "restore table: as root": Case(
        ("restore", "table", "t", "--target-lsn", "0/1", "--repo", "/r"),
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
    # Damaged metadata (a repository built by `damaged_repository`): one line, exit 1.
    "backup list: damaged manifest": Case(
        ("backup", "list", "--repo", "DAMAGED_REPO"), 1,
        rf"{DAMAGED_ID}/manifest\.json is damaged: field 'objects\[0\]\.size'",
    ),
    "backup verify: damaged manifest": Case(
        ("backup", "verify", "--repo", "DAMAGED_REPO", DAMAGED_ID), 1,
        r"manifest\.json is damaged: field 'objects\[0\]\.size' should be an integer",
    ),
    "restore-point list: damaged entry": Case(
        ("restore-point", "list", "--repo", "DAMAGED_REPO"), 1,
        r"restore-points/rp\.json is damaged: truncated JSON",
    ),
    "backup list: damaged marker": Case(
        ("backup", "list", "--repo", "DAMAGED_MARKER"), 1, r"chainlens-repo\.toml is damaged"
    ),
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
}  # fmt: skip


def damaged_repository(root: Path, marker: bool) -> Path:
    """A repository (no server needed) with a manifest whose size is text and a truncated
    restore-point entry; with `marker`, its marker is damaged instead."""
    (root / "backups" / DAMAGED_ID).mkdir(parents=True)
    (root / "restore-points").mkdir()
    (root / "chainlens-repo.toml").write_text(
        'format = 1\nsystem_identifier = "1"\nwal_segment_size = '
        + ("sixteen" if marker else "16777216")
        + "\npg_version = 15\n"
    )
    manifest = {
        "id": DAMAGED_ID, "kind": "logical", "target": "supabase", "database": "supabase",
        "server": "h:1", "server_version": 150000, "system_identifier": "1",
        "started_at": "2026-12-06T10:00:00.000000Z",
        "finished_at": "2026-12-06T10:00:01.000000Z",
        "objects": [{"key": "k", "size": "1234", "sha256": "ab" * 32}], "tool_version": "0",
    }  # fmt: skip
    (root / "backups" / DAMAGED_ID / "manifest.json").write_text(json.dumps(manifest))
    (root / "restore-points" / "rp.json").write_text('{"name": "rp", "lsn": "0/30')
    return root


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_exit_code_and_one_error_line(case: Case, tmp_path: Path) -> None:
    args = tuple(arg.replace("{tmp}", str(tmp_path)) for arg in case.args)
    for token, marker in (("DAMAGED_REPO", False), ("DAMAGED_MARKER", True)):
        if token in args:
            repo = str(damaged_repository(tmp_path / token.lower(), marker))
            args = tuple(repo if a == token else a for a in args)
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
    ("backup", "list"), ("backup", "verify"), ("backup", "prune"), ("backup", "pin"),
    ("backup", "unpin"), ("restore", "drill"), ("restore", "table"),
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


def test_an_unreadable_config_is_exit_3_like_a_missing_one(make_cluster: ClusterFactory) -> None:
    folder = make_cluster.dir("config")  # postgres may enter it, not read the file
    config = folder / "ops.toml"
    config.write_text("lock_retries = 3\n")
    os.chown(config, 0, 0)
    config.chmod(0o600)
    for where in (("--config", str(config), "schema", "status"),
                  ("schema", "status", "--config", str(config))):  # fmt: skip
        proc = run_cli(*where, user="postgres")
        assert proc.returncode == 3, proc.stderr
        assert f"config file {config} is not readable" in proc.stderr
    proc = run_cli("status", env={"CHAINLENS_CONFIG": str(config)}, user="postgres")
    assert proc.returncode == 3 and "is not readable" in proc.stderr, proc.stderr


def test_the_wrong_os_user_is_exit_2_for_every_command(make_cluster: ClusterFactory) -> None:
    """Root acting on the database user's repository: backup, restore-point create and
    restore refuse the same way (2), naming the user to run as, and write nothing."""
    repo = make_cluster.dir("repo")
    pg = make_cluster(archive_mode="on", archive_command=f"{CLI} wal push --repo {repo} %p")
    switch_and_wait(pg)  # the repository as the archiver made it
    before = sorted(p.name for p in repo.rglob("*") if "wal" not in p.parts)
    runs = {
        "backup": run_cli("backup", "--repo", str(repo), "--dsn", pg.conninfo(), "--kind",
                          "logical"),
        "restore-point create": run_cli("restore-point", "create", "p1", "--repo", str(repo),
                                        "--dsn", pg.conninfo()),
        "restore": run_cli("restore", "--repo", str(repo), "--latest", "--pgdata",
                           str(make_cluster.dir("restore") / "data")),
    }  # fmt: skip
    for command, proc in runs.items():
        assert proc.returncode == 2, (command, proc.stderr)
        line = proc.stderr.strip().splitlines()[-1]
        assert line.startswith("chainlens-ops: error: "), (command, line)
        assert "postgres" in line, (command, line)
    assert sorted(p.name for p in repo.rglob("*") if "wal" not in p.parts) == before
