"""What the archived WAL says, read with PostgreSQL's own `pg_waldump`.

A restore plan needs two facts the segment names cannot give:

- how far the archive reaches in *time*: PostgreSQL stops a time-targeted recovery at
  the first commit (or abort) later than the target; if the archive holds no such
  record, recovery ends short of the target and (PostgreSQL 13+) fails. So a time
  target is recoverable exactly when the archive holds a transaction end later than it.
- where a restore point is when the restore-point catalog does not name it:
  `pg_create_restore_point()` writes an XLOG RESTORE_POINT record.

Segments are decoded from the repository (checked) into a private temporary folder and
read one at a time by the one WAL reader, `chainlens_ops.pg.waldump`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from chainlens_ops.pg.waldump import WalRecord, scan
from chainlens_ops.pg.walnames import parse_wal_name
from chainlens_ops.repository import Repository
from chainlens_ops.repository.walcodec import decode
from chainlens_ops.storage import NotFound

MAX_SEGMENTS_FOR_TIME = 16  # newest segments read looking for the newest transaction end


@dataclass(frozen=True)
class RestorePointFound:
    name: str
    lsn: str
    segment: str


def _records(repo: Repository, segment: str, folder: Path, rmgr: str) -> Iterator[WalRecord]:
    """The records of one archived segment (one resource manager)."""
    wal = parse_wal_name(segment)
    path = folder / segment
    try:
        with repo.wal.open(wal) as src, open(path, "wb") as dst:
            decode(src, dst, name=segment, where=f"{repo.url}: {segment}")
    except NotFound:
        return
    try:
        yield from scan(path, rmgr=rmgr)
    finally:
        path.unlink(missing_ok=True)


def newest_transaction_time(repo: Repository, newest_first: Sequence[str]) -> datetime | None:
    """The time of the newest commit/abort in the newest of `newest_first` segments
    that holds one (at most MAX_SEGMENTS_FOR_TIME are read)."""
    with tempfile.TemporaryDirectory(prefix="chainlens-walscan-") as tmp:
        for segment in newest_first[:MAX_SEGMENTS_FOR_TIME]:
            times = [
                when
                for record in _records(repo, segment, Path(tmp), "Transaction")
                if (when := record.transaction_end) is not None
            ]
            if times:
                return max(times)
    return None


def find_restore_point(
    repo: Repository, name: str, oldest_first: Sequence[str]
) -> RestorePointFound | None:
    """The first RESTORE_POINT record called `name` in the given segments."""
    with tempfile.TemporaryDirectory(prefix="chainlens-walscan-") as tmp:
        for segment in oldest_first:
            for record in _records(repo, segment, Path(tmp), "XLOG"):
                if record.restore_point == name:
                    return RestorePointFound(name, record.lsn, segment)
    return None
