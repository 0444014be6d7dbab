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
