"""Selective extraction of a base backup: the cluster-wide catalogs and some databases.

A base backup holds every database of the cluster under `base/<database oid>/`. To read
one database, recovery needs the cluster-wide files (`global/`, `pg_xact`, `pg_wal`,
`pg_control`, ...) and that database's folder; the other databases' relation files are
never read, but WAL replay still writes to them. PostgreSQL tolerates a relation file of
the right size that holds zeros (a zero page is a valid "new" page, and the first change
to every page after the backup's checkpoint carries a full-page image, which replaces
it), so each skipped file is written as a sparse file of its size: it takes no disk
blocks and costs no writes. This is what pgBackRest's `--db-include` does. A skipped
database is present but unusable: its `PG_VERSION` is left out, so a connection to it
fails with one FATAL line ("PG_VERSION is missing") instead of reading zeroed catalogs,
which PANICs (and so restarts) the whole server; `DROP DATABASE` still works on it.
Its `pg_filenode.map` (512 bytes, rewritten whole by WAL) is kept as it was.

The tar stream itself is still read through (zstd cannot seek); skipping saves the
writes, which are most of an extraction's time on a large cluster. Tablespaces do not
occur: base backups are taken to stdout (`-Ft -D -`), which refuses them.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

KEPT_IN_SKIPPED = ("pg_filenode.map",)
# Left out of a skipped database: without it a connection fails cleanly (see above).
LEFT_OUT = "PG_VERSION"


@dataclass(frozen=True)
class Selection:
    """The databases (by oid) whose files are extracted; every other `base/<oid>/` file
    becomes a sparse placeholder."""

    keep_oids: frozenset[int]

    def skips(self, member: tarfile.TarInfo) -> bool:
        return member.isfile() and skipped_database(member.name, self.keep_oids)


def skipped_database(name: str, keep_oids: frozenset[int]) -> bool:
    """Whether a tar member of a base backup belongs to a database not kept."""
    parts = PurePosixPath(name).parts
    if len(parts) != 3 or parts[0] != "base" or not parts[1].isdigit():
        return False
    return int(parts[1]) not in keep_oids and parts[2] not in KEPT_IN_SKIPPED


def write_placeholder(member: tarfile.TarInfo, pgdata: Path) -> None:
    """A sparse file of the member's size (its content is never read or written)."""
    placeholder(pgdata / member.name, member.size)


def placeholder(path: Path, size: int) -> None:
    """A sparse file of `size` bytes at `path` of a skipped database (PG_VERSION left out)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.name == LEFT_OUT:
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def placeholders(pgdata: Path, files: Iterable[tuple[str, int]]) -> int:
    """Sparse placeholders, as `placeholder` makes one, for many files of skipped databases
    (each a path under `pgdata` and a size); the bytes they stand for.

    A skipped database is ~300 files even when empty (its catalogs). Making a file costs
    ~30 us on a quiet disk, but each create waits on the file system's journal, and the
    journal on the data written before it: right after 60 MB were written, 904 creates
    took 0.2-0.6 s on the shared bench host (0.08-0.44 s once those had reached the disk,
    other processes' writes alone; 910 took 0.37 s in a `restore table` made them after
    its extraction). So a restore makes them beside its own writes, started first
    (restore.assemble), and each folder is made once rather than checked per file.
    Threads do not help: the creates all wait on the same journal."""
    total = 0
    folder: Path | None = None
    dir_fd = -1
    try:
        for name, size in sorted(files):
            path = pgdata / name
            total += size
            if path.parent != folder:
                if dir_fd >= 0:
                    os.close(dir_fd)
                    dir_fd = -1
                folder = path.parent
                folder.mkdir(parents=True, exist_ok=True, mode=0o700)
                dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            if path.name == LEFT_OUT:
                continue
            fd = os.open(path.name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600, dir_fd=dir_fd)
            try:
                if size:
                    os.ftruncate(fd, size)
            finally:
                os.close(fd)
    finally:
        if dir_fd >= 0:
            os.close(dir_fd)
    return total
