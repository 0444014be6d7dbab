"""Reading a live data folder the way `pg_basebackup` does: what it holds, what a base
backup leaves out, and what a relation page's header says.

Exclusions are PostgreSQL 15's (src/backend/replication/basebackup.c): the contents of
`excludeDirContents` (the folders are kept, empty), `excludeFiles` (`pg_internal.init`
by prefix, in any folder), `pg_wal`'s contents but its `archive_status` folder, temporary
files and folders (`pgsql_tmp*`), temporary relations (`t<backend>_<relfilenode>...`) and
the forks of unlogged relations other than their `_init` fork (they are reset from it at
the end of recovery anyway).
"""

from __future__ import annotations

import os
import re
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BLOCK_SIZE = 8192
PAGE_HEADER = struct.Struct("=IIHHHH")  # pd_lsn (xlogid, xrecoff), checksum, flags, lower, upper
EXCLUDED_DIR_CONTENTS = (
    "pg_stat_tmp", "pg_replslot", "pg_dynshmem", "pg_notify", "pg_serial", "pg_snapshots",
    "pg_subtrans",
)  # fmt: skip
EXCLUDED_FILES = (
    "postgresql.auto.conf.tmp", "current_logfiles.tmp", "backup_label", "tablespace_map",
    "backup_manifest", "postmaster.pid", "postmaster.opts",
)  # fmt: skip
EXCLUDED_PREFIXES = ("pg_internal.init",)  # the relation cache's init file, in any folder
TEMP_PREFIX = "pgsql_tmp"
_TEMP_RELATION = re.compile(r"t\d+_\d+(_(fsm|vm|init))?(\.\d+)?")
_RELATION = re.compile(r"(\d+)(_(fsm|vm|init))?(\.\d+)?")
_LABEL_START = re.compile(r"START WAL LOCATION: ([0-9A-F]+/[0-9A-F]+)")
_LABEL_TLI = re.compile(r"START TIMELINE: (\d+)")
_MAIN_FORK = re.compile(r"(base/\d+|global)/\d+(\.\d+)?")


@dataclass(frozen=True)
class Entry:
    """One file or folder of a data folder, as found by `walk`."""

    path: str  # relative, "/"-separated
    is_dir: bool
    size: int
    mode: int
    mtime_ns: int


def walk(pgdata: Path) -> Iterator[Entry]:
    """Every folder and file a base backup holds, sorted, folders before their contents.
    Refuses (OSError from os.scandir) nothing itself: a file that vanishes while walked
    (a dropped table) is left out, as pg_basebackup does."""
    yield from _walk(pgdata, "")


def _walk(root: Path, rel: str) -> Iterator[Entry]:
    folder = root / rel if rel else root
    try:
        with os.scandir(folder) as it:
            names = sorted(entry.name for entry in it)
    except FileNotFoundError:
        return
    unlogged = _unlogged(names) if rel.startswith("base/") or rel == "global" else set()
    for name in names:
        path = f"{rel}/{name}" if rel else name
        if _excluded(rel, name, unlogged):
            continue
        try:
            info = os.stat(folder / name)  # follows a symlinked pg_wal
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(info.st_mode):
            yield Entry(path, True, 0, stat.S_IMODE(info.st_mode), info.st_mtime_ns)
            if path in EXCLUDED_DIR_CONTENTS or name.startswith(TEMP_PREFIX):
                continue
            if path == "pg_wal":
                archive = folder / name / "archive_status"
                if archive.is_dir():
                    mode = stat.S_IMODE(archive.stat().st_mode)
                    yield Entry("pg_wal/archive_status", True, 0, mode, 0)
                continue
            yield from _walk(root, path)
        elif stat.S_ISREG(info.st_mode):
            yield Entry(path, False, info.st_size, stat.S_IMODE(info.st_mode), info.st_mtime_ns)


def _excluded(rel: str, name: str, unlogged: set[str]) -> bool:
    if name in EXCLUDED_FILES and rel == "":
        return True
    if name.startswith(EXCLUDED_PREFIXES) or name.startswith(TEMP_PREFIX):
        return True
    if rel.startswith("base/") and _TEMP_RELATION.fullmatch(name):
        return True
    match = _RELATION.fullmatch(name)
    return bool(match and match.group(1) in unlogged and match.group(3) != "init")


def _unlogged(names: list[str]) -> set[str]:
    """Relfilenodes of a folder that have an init fork: unlogged relations."""
    return {n[: -len("_init")] for n in names if n.endswith("_init") and n[:-5].isdigit()}


def tablespaces(pgdata: Path) -> list[str]:
    """The entries of pg_tblspc (links to tablespaces)."""
    try:
        return sorted(os.listdir(pgdata / "pg_tblspc"))
    except FileNotFoundError:
        return []


def label_start(label: str) -> tuple[str, int]:
    """(start LSN, timeline) from a backup_label's text; ValueError when it names none."""
    start, tli = _LABEL_START.search(label), _LABEL_TLI.search(label)
    if not (start and tli):
        raise ValueError("no START WAL LOCATION or START TIMELINE in the backup label")
    return start.group(1), int(tli.group(1))


def control_system_identifier(pgdata: Path) -> int:
    """The system identifier in global/pg_control (its first field, native byte order);
    OSError when it cannot be read."""
    with open(pgdata / "global" / "pg_control", "rb") as fh:
        head = fh.read(8)
    if len(head) != 8:
        raise OSError(f"{pgdata / 'global' / 'pg_control'} is truncated")
    return int(struct.unpack("=Q", head)[0])


def is_main_fork(path: str) -> bool:
    """A relation's main fork segment (`base/<db>/<relfilenode>[.N]`, `global/<n>[.N]`):
    the files whose pages carry an LSN that says when they last changed."""
    return _MAIN_FORK.fullmatch(path) is not None


def page_changed(page: bytes | memoryview, since_lsn: int, insert_lsn: int) -> bool:
    """Whether a main-fork page must be stored again by a backup whose parent started at
    `since_lsn` (see docs/reference.md, incremental backups): changed since then, new or
    zero (pd_upper 0), or not a plausible page (then it is stored: never trusted)."""
    xlogid, xrecoff, _checksum, _flags, lower, upper = PAGE_HEADER.unpack_from(page)
    lsn: int = (xlogid << 32) | xrecoff
    if upper == 0 or lsn >= since_lsn or lsn > insert_lsn:
        return True
    return bool(upper > BLOCK_SIZE or lower > upper or lower < PAGE_HEADER.size)
