"""The one reader of WAL records: PostgreSQL's own `pg_waldump`, parsed.

    rmgr: XLOG  len (rec/tot): 98/ 98, tx: 0, lsn: 0/0301B0E8, prev 0/0301B0B0, desc: ...

`scan()` streams the records of a segment file, or of a folder of segments between two
LSNs, as `WalRecord`s (pg_waldump runs with TZ=UTC, so the times in `desc` are UTC).
pg_waldump exits 1 where the valid WAL ends (a zero-filled tail, a record continued in a
segment that is not there): that is the end of the scan, not an error; any other
failure raises PgCommandError.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from chainlens_ops.core.errors import PgCommandError
from chainlens_ops.pg.binaries import find_binary
from chainlens_ops.pg.process import PgStream
from chainlens_ops.pg.walnames import lsn_text

_RECORD = re.compile(
    r"rmgr: (\S+)\s+len \(rec/tot\):\s*\d+/\s*(\d+), tx:\s*(\d+), "
    r"lsn: ([0-9A-F]+/[0-9A-F]+), prev [0-9A-F]+/[0-9A-F]+, desc: (.*)$"
)
_XACT_END = re.compile(
    r"^(?:COMMIT|ABORT)(?:_PREPARED)? (?:\d+: )?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC"
)
_RESTORE_POINT = "RESTORE_POINT "
# Where the valid WAL in the given files ends; pg_waldump reports it and exits 1.
_END_OF_WAL = ("error in WAL record", "could not find", "could not read file")


@dataclass(frozen=True)
class WalRecord:
    rmgr: str
    total_length: int
    xid: int
    lsn: str
    desc: str

    @property
    def restore_point(self) -> str | None:
        """The name, for a RESTORE_POINT record (pg_create_restore_point)."""
        if self.rmgr == "XLOG" and self.desc.startswith(_RESTORE_POINT):
            return self.desc[len(_RESTORE_POINT) :].rstrip()
        return None

    @property
    def transaction_end(self) -> datetime | None:
        """The time of a commit or abort record: where a time-targeted recovery stops."""
        if self.rmgr != "Transaction":
            return None
        match = _XACT_END.match(self.desc)
        return parse_time(match.group(1)) if match else None


def parse_record(line: str) -> WalRecord | None:
    """One line of pg_waldump's output, or None for a line that is not a record."""
    match = _RECORD.search(line)
    if match is None:
        return None
    rmgr, total, xid, lsn, desc = match.groups()
    return WalRecord(rmgr, int(total), int(xid), lsn, desc.rstrip())


def parse_time(text: str) -> datetime:
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in text else "%Y-%m-%d %H:%M:%S"
    return datetime.strptime(text, fmt).replace(tzinfo=UTC)


def is_end_of_wal(stderr: str) -> bool:
    return any(marker in stderr for marker in _END_OF_WAL)


def scan(
    source: Path,
    *,
    rmgr: str | None = None,
    major: int | None = None,
    timeline: int | None = None,
    start: int | None = None,
    end: int | None = None,
) -> Iterator[WalRecord]:
    """The records of segment file `source`, or, when `source` is a folder, of the
    segments in it from LSN `start` to `end` on `timeline`."""
    argv = [find_binary("pg_waldump", major)]
    if rmgr is not None:
        argv += ["--rmgr", rmgr]
    if source.is_dir():
        argv += ["--path", str(source)]
        if timeline is not None:
            argv += ["--timeline", str(timeline)]
        if start is not None:
            argv += ["--start", lsn_text(start)]
        if end is not None:
            argv += ["--end", lsn_text(end)]
    else:
        argv.append(str(source))
    stream = PgStream(argv, env={"TZ": "UTC"})
    try:
        with io.BufferedReader(stream) as lines:
            for raw in lines:
                record = parse_record(raw.decode("utf-8", "replace").rstrip("\n"))
                if record is not None:
                    yield record
    except PgCommandError as exc:
        if exc.returncode != 1 or not is_end_of_wal(exc.stderr_tail):
            raise
