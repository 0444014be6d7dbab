"""How `--help` reads: one-line summaries in command lists, value names in option lists.

Click shortens a command's docstring to ~45 characters for the lists in `--help`,
cutting mid-sentence ("End-to-end archive check: settings, a WAL switch, and...");
each command gets a summary written to fit instead. Options show what their value is
(`--repo URL`, `--timeout DURATION`) rather than its Python type (`<str>`). Both tables
live here, applied to the command tree once it is built, so every group reads alike
and a test can require an entry for every command (tests/test_readme.py).
"""

from __future__ import annotations

from typing import Any

# Typer builds its own command classes on its own copy of click: duck-typed here
# (a group has `commands`, an option has param_type_name "option").
Command = Any

SUMMARIES = {
    "check": "Prove WAL archiving works, end to end.",
    "status": "What needs action, per database (exit 1 if any).",
    "demo": "The whole lifecycle on a sandbox cluster.",
    "schema": "Apply the platform schema; show its state.",
    "schema apply": "Apply the pending SQL files.",
    "schema status": "Applied, pending and drifted files.",
    "partition": "Monthly partitions: create, keep ahead, list, retire.",
    "partition create-month": "Create one month; move its rows out of default.",
    "partition ensure": "This month and the next N, on every table.",
    "partition list": "Partitions, sizes, rows waiting in default.",
    "partition retain": "Detach or drop months older than N.",
    "wal": "Archive WAL (push/fetch), list and check it.",
    "wal push": "Archive one WAL file (archive_command).",
    "wal fetch": "Restore one WAL file (restore_command).",
    "wal list": "Archived segments per timeline.",
    "wal check": "Gaps on the restore path (exit 1 if any).",
    "backup": "Take a backup (bare); list, verify, prune.",
    "backup list": "The catalog and the recoverable window.",
    "backup verify": "Re-read a backup and check every object.",
    "backup prune": "Remove backups and WAL beyond retention.",
    "backup pin": "Keep a backup whatever retention says.",
    "backup unpin": "Let retention remove a pinned backup.",
    "restore": "Point-in-time or logical restore; drills.",
    "restore drill": "Prove a backup restores, in a scratch copy.",
    "restore table": "Tables as they were at a target, in a new schema.",
    "restore-point": "Named restore points: create, list.",
    "restore-point create": "Create a restore point and archive it.",
    "restore-point list": "Restore points in the catalog and the WAL.",
    "cache": "The analysis cache: cleanup, stats.",
    "cache cleanup": "Delete expired rows in short batches.",
    "cache stats": "Rows, expired rows, size, hits.",
    "daemon": "Run the config's [[jobs]] on their schedules.",
    "daemon status": "Each job's last run, result and next run.",
    "repo": "The repository: init, info, encryption, key.",
    "repo init": "Create a repository, optionally encrypted.",
    "repo info": "Format, encryption, key, cluster, sizes.",
    "repo rotate-key": "Re-wrap the data key with a new key.",
    "repo encrypt": "Encrypt a plain repository from now on.",
}

# Value names by option; a number-typed option of a name listed as DURATION takes
# seconds (`restore drill --timeout 600`), a text one a duration (`check --timeout 2m`).
METAVARS = {
    "--config": "FILE",
    "--dsn": "DSN",
    "--repo": "URL",
    "--timeout": "DURATION",
    "--lock-wait": "DURATION",
    "--sql-dir": "DIR",
    "--table": "TABLE",
    "--ahead": "N",
    "--keep-months": "N",
    "--keep-last": "N",
    "--keep-days": "DAYS",
    "--batch-size": "N",
    "--jobs": "N",
    "--from": "SEGMENT",
    "--extract-to": "DIR",
    "--target-time": "TIME",
    "--target-name": "NAME",
    "--target-lsn": "LSN",
    "--target-action": "promote|pause|shutdown",
    "--archive-mode": "off|preserve",
    "--pgdata": "DIR",
    "--backup": "ID",
    "--port": "PORT",
    "--start-timeout": "SECONDS",
    "--wal-timeout": "SECONDS",
    "--daemon-seconds": "SECONDS",
    "--dbname": "NAME",
    "--scratch": "DIR",
    "--into-schema": "SCHEMA",
    "--db-only": "NAME",
    "--metrics-file": "FILE",
    "--key-file": "FILE",
    "--new-key-file": "FILE",
    "--kms-key-id": "ARN",
    "--new-kms-key-id": "ARN",
}


def polish(command: Command, path: str = "") -> None:
    """Apply SUMMARIES and METAVARS to `command` and everything under it."""
    if path in SUMMARIES:
        command.short_help = SUMMARIES[path]
    for param in command.params:
        if param.param_type_name == "option" and param.metavar is None and not param.is_flag:
            name = next((o for o in param.opts if o in METAVARS), None)
            if name is not None:
                param.metavar = _value_name(name, param)
    for name, sub in getattr(command, "commands", {}).items():
        polish(sub, f"{path} {name}".strip())


def _value_name(option: str, param: Any) -> str:
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    numeric = annotation in (int, float, int | None, float | None)
    if METAVARS[option] == "DURATION" and numeric:
        return "SECONDS"
    return METAVARS[option]


def command_paths(command: Command, path: str = "") -> list[str]:
    """Every command path under `command` ("", "wal", "wal push", ...)."""
    paths = [path]
    for name, sub in getattr(command, "commands", {}).items():
        paths += command_paths(sub, f"{path} {name}".strip())
    return paths
