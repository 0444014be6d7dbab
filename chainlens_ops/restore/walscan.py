"""What the archived WAL says, read with PostgreSQL's own `pg_waldump`.

A restore plan needs two facts the segment names cannot give:

- how far the archive reaches in *time*: PostgreSQL stops a time-targeted recovery at
  the first commit (or abort) later than the target; if the archive holds no such
  record, recovery ends short of the target and (PostgreSQL 13+) fails. So a time
  target is recoverable exactly when the archive holds a transaction end later than it.
- where a restore point is when the restore-point catalog does not name it:
  `pg_create_restore_point()` writes an XLOG RESTORE_POINT record.

Segments are decoded from the repository (checked) into a private temporary folder and
read one at a time; pg_waldump runs with TZ=UTC so its timestamps are UTC.
"""

from __future__ import annotations

import io
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from chainlens_ops.errors import PgCommandError
from chainlens_ops.pg.binaries import find_binary
from chainlens_ops.pg.process import PgStream
from chainlens_ops.repository import Repository
from chainlens_ops.repository.walcodec import decode
from chainlens_ops.storage import NotFound
from chainlens_ops.wal.names import parse_wal_name

MAX_SEGMENTS_FOR_TIME = 16  # newest segments read looking for the newest transaction end

_LSN = re.compile(r"lsn: ([0-9A-F]+/[0-9A-F]+)")
_XACT_TIME = re.compile(
    r"desc: (?:COMMIT|ABORT)(?:_PREPARED)? (?:\d+: )?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC"
)
_RESTORE_POINT = re.compile(r"desc: RESTORE_POINT (.*)$")


@dataclass(frozen=True)
class RestorePointFound:
    name: str
    lsn: str
    segment: str


def _records(repo: Repository, segment: str, folder: Path, rmgr: str) -> Iterator[str]:
    """pg_waldump's lines for one archived segment (one resource manager)."""
    wal = parse_wal_name(segment)
    path = folder / segment
    try:
        with repo.storage.open(repo.wal_key(wal)) as src, open(path, "wb") as dst:
            decode(src, dst, name=segment, where=f"{repo.url}: {segment}")
    except NotFound:
        return
    argv = [find_binary("pg_waldump"), "--rmgr", rmgr, str(path)]
    stream = PgStream(argv, env={"TZ": "UTC"})
    try:
        with io.BufferedReader(stream) as lines:
            for raw in lines:
                yield raw.decode("utf-8", "replace").rstrip("\n")
    except PgCommandError:
        pass  # pg_waldump exits 1 where the segment's valid records end: not an error here
    finally:
        path.unlink(missing_ok=True)


def newest_transaction_time(repo: Repository, newest_first: Sequence[str]) -> datetime | None:
    """The time of the newest commit/abort in the newest of `newest_first` segments
    that holds one (at most MAX_SEGMENTS_FOR_TIME are read)."""
    with tempfile.TemporaryDirectory(prefix="chainlens-walscan-") as tmp:
        for segment in newest_first[:MAX_SEGMENTS_FOR_TIME]:
            times = [
                _parse_time(m.group(1))
                for line in _records(repo, segment, Path(tmp), "Transaction")
                if (m := _XACT_TIME.search(line))
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
            for line in _records(repo, segment, Path(tmp), "XLOG"):
                point = _RESTORE_POINT.search(line)
                lsn = _LSN.search(line)
                if point and lsn and point.group(1) == name:
                    return RestorePointFound(name, lsn.group(1), segment)
    return None


def lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def _parse_time(text: str) -> datetime:
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in text else "%Y-%m-%d %H:%M:%S"
    return datetime.strptime(text, fmt).replace(tzinfo=UTC)
