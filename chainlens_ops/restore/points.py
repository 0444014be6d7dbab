"""Restore points: named positions in the WAL that `restore --target-name` can stop at.

`create` records each point in the repository catalog, `restore-points/<name>.json`,
and makes sure the WAL holding it reaches the archive. `list` shows the catalog plus
points created directly in SQL (`SELECT pg_create_restore_point('...')`), which it finds
by scanning the archived WAL with `pg_waldump`; each segment's scan result is cached in
`restore-points/scanned/<segment>.json`, so old segments are decoded once.

Names: 1 to 63 bytes (PostgreSQL's MAXFNAMELEN is 64 including the terminator) of
`A-Z a-z 0-9 . _ : -`, starting with a letter or digit. The set is safe in a repository
key, a shell, a TOML file and `recovery_target_name`.

Order of `create` (no lock is needed):
  1. conditional put of a `pending` catalog entry: of two concurrent creates of one
     name exactly one wins; the loser (and any duplicate) is refused before the server
     is touched, so a refused name creates no second restore point in the WAL;
  2. `pg_create_restore_point(name)`; if it fails, the pending entry is deleted (the
     server has no such point, so the name is free again);
  3. the entry is rewritten complete (LSN, timeline, server time) and the WAL switched;
  4. bounded wait until the segment holding the point is in the repository.
A crash between 1 and 2 leaves a `pending` entry: `list` shows it as pending (or
completes it from the archived WAL if the point is there), and the name stays taken
until an operator removes the object; it never silently names a point that is absent.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from chainlens_ops import __version__
from chainlens_ops.core.atomicfile import unlink_quietly as _unlink
from chainlens_ops.core.errors import OperationFailed, UsageError
from chainlens_ops.core.metadata import MAX_RECORD, DamagedMetadata, Fields, load_json
from chainlens_ops.pg.connection import Connection, connect
from chainlens_ops.pg.waldump import scan
from chainlens_ops.pg.walnames import SEGMENT, parse_lsn, parse_wal_name, segment_name
from chainlens_ops.repository import HISTORY_PREFIX, Repository
from chainlens_ops.repository.stores import PointStore
from chainlens_ops.repository.walcodec import decode
from chainlens_ops.settings.config import DatabaseTarget
from chainlens_ops.storage import AlreadyExists, NotFound

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,62}")
SCAN_FORMAT = 1
POLL_S = 0.25
CATALOG = "catalog"
WAL = "wal"
PENDING = "pending"
COMPLETE = "complete"
DAMAGED = "damaged"


class DuplicateRestorePoint(OperationFailed):
    """The name is already in the repository catalog."""


@dataclass(frozen=True)
class RestorePoint:
    name: str
    lsn: str  # pg_lsn text; catalog: what pg_create_restore_point returned (record end)
    timeline: int
    time: str | None  # server time with offset; None for points found only in the WAL
    source: str  # CATALOG or WAL
    database: str | None = None
    system_identifier: str | None = None
    segment: str | None = None
    state: str = COMPLETE  # PENDING, COMPLETE, or DAMAGED (a catalog entry unreadable)
    archived: bool = True
    problem: str | None = None  # why a DAMAGED entry cannot be read (one line)


def validate_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        if len(name.encode()) >= 64:
            why = f"is {len(name.encode())} bytes; PostgreSQL allows at most 63"
        else:
            why = "must start with a letter or digit and use only A-Z a-z 0-9 . _ : -"
        raise UsageError(f"restore point name {name!r} {why}")
    return name


def catalog_key(name: str) -> str:
    return PointStore.key(name)


def create_restore_point(
    target: DatabaseTarget, repo: Repository, name: str, *, timeout_s: float = 60.0
) -> RestorePoint:
    validate_name(name)
    conn = connect(target)
    try:
        return _create(conn, target, repo, name, timeout_s)
    finally:
        conn.close()


def _create(
    conn: Connection, target: DatabaseTarget, repo: Repository, name: str, timeout_s: float
) -> RestorePoint:
    row = conn.execute(
        "SELECT system_identifier::text, current_setting('archive_mode') FROM pg_control_system()"
    ).fetchone()
    assert row is not None
    sysid, archive_mode = str(row[0]), str(row[1])
    repo.check_cluster(int(sysid), what="this database")
    if archive_mode not in ("on", "always"):
        raise OperationFailed(
            f"archive_mode is {archive_mode}: a restore point is useless without archived WAL",
            hint="set archive_mode = on and archive_command to `chainlens-ops wal push %p`",
        )
    pending = RestorePoint(
        name, "", 0, None, CATALOG, target.name, sysid, state=PENDING, archived=False
    )
    try:
        repo.points.put(name, _entry_bytes(pending), if_absent=True)
    except AlreadyExists:
        raise DuplicateRestorePoint(
            f"restore point {name!r} already exists in {repo.url}",
            hint="PostgreSQL would accept it, but recovery stops at the first; choose another",
        ) from None
    try:
        row = conn.execute(
            "SELECT lsn::text, pg_walfile_name(lsn), "
            "to_char(clock_timestamp(), 'YYYY-MM-DD\"T\"HH24:MI:SS.USTZH:TZM') "
            "FROM pg_create_restore_point(%s) AS lsn",
            (name,),
        ).fetchone()
        assert row is not None
    except BaseException:
        # The server has no such point: free the name again (see the module docstring).
        try:  # noqa: SIM105 - keep the original error
            repo.points.delete(name)
        except Exception:
            pass
        raise
    lsn, segment, when = str(row[0]), str(row[1]), str(row[2])
    point = RestorePoint(
        name, lsn, int(segment[:8], 16), when, CATALOG, target.name, sysid, segment, COMPLETE,
        archived=False,
    )  # fmt: skip
    repo.points.put(name, _entry_bytes(point))
    conn.execute("SELECT pg_switch_wal()")
    _wait_archived(repo, segment, timeout_s, name)
    point = RestorePoint(**{**asdict(point), "archived": True})
    repo.points.put(name, _entry_bytes(point))
    return point


def _wait_archived(repo: Repository, segment: str, timeout_s: float, name: str) -> None:
    wal = parse_wal_name(segment)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            repo.wal.stat(wal)
            return
        except NotFound:
            pass
        if time.monotonic() > deadline:
            raise OperationFailed(
                f"restore point {name!r} was created, but WAL segment {segment} holding it "
                f"did not reach {repo.url} within {timeout_s:g}s",
                hint="check archive_command and pg_stat_archiver; `chainlens-ops check`",
            )
        time.sleep(POLL_S)


def _entry_bytes(point: RestorePoint) -> bytes:
    data: dict[str, Any] = asdict(point)
    data.pop("source")
    data.pop("problem")
    data["created_by"] = f"chainlens-ops {__version__}"
    return json.dumps(data, indent=2).encode() + b"\n"


# -- list ------------------------------------------------------------------------------


def list_restore_points(repo: Repository, *, scan_wal: bool = True) -> list[RestorePoint]:
    """Catalog entries plus restore points found in the archived WAL, in LSN order."""
    repo.require_present()
    catalog = list(_catalog(repo))
    points = list(catalog)
    if scan_wal:
        for found in _scan_archive(repo):
            same = next((c for c in catalog if _same_point(c, found)), None)
            if same is None:
                points.append(found)
            elif same.state == PENDING:  # completed by the WAL (crash after the call)
                points[points.index(same)] = RestorePoint(
                    **{**asdict(same), "lsn": found.lsn, "timeline": found.timeline,
                       "segment": found.segment, "state": COMPLETE, "archived": True}
                )  # fmt: skip
    return sorted(points, key=lambda p: (p.lsn == "", _lsn_num(p.lsn), p.name))


def _lsn_num(lsn: str) -> int:
    return parse_lsn(lsn) if lsn else 0


def _same_point(cat: RestorePoint, wal: RestorePoint) -> bool:
    if cat.name != wal.name or cat.system_identifier is None:
        return False
    if cat.state == PENDING:
        return True
    # The catalog holds the record's end, the WAL scan its start.
    return 0 <= _lsn_num(cat.lsn) - _lsn_num(wal.lsn) <= 256


def _catalog(repo: Repository) -> Iterator[RestorePoint]:
    """Every catalog entry; one that cannot be read is yielded as DAMAGED (with its
    problem), so the others still list and a restore to them still works."""
    for name in repo.points.names():
        try:
            with repo.points.open(name) as fh:
                raw = fh.read(MAX_RECORD)
            yield parse_entry(raw, f"{repo.url}: {catalog_key(name)}", name)
        except NotFound:
            continue  # removed since the listing
        except DamagedMetadata as exc:
            yield RestorePoint(name, "", 0, None, CATALOG, state=DAMAGED, archived=False,
                               problem=exc.one_line())  # fmt: skip


def catalog_entry(repo: Repository, name: str) -> RestorePoint | None:
    """The catalog entry of `name`, None when there is none; DamagedMetadata when it
    cannot be read."""
    try:
        with repo.points.open(name) as fh:
            raw = fh.read(MAX_RECORD)
    except NotFound:
        return None
    return parse_entry(raw, f"{repo.url}: {catalog_key(name)}", name)


_ENTRY_FIELDS = ("name", "lsn", "timeline", "time", "database", "system_identifier",
                 "segment", "state", "archived", "created_by")  # fmt: skip
_SCANNED_FIELDS = ("name", "lsn", "timeline", "time", "source", "database",
                   "system_identifier", "segment", "state", "archived")  # fmt: skip


def parse_entry(raw: bytes, where: str, name: str) -> RestorePoint:
    """A catalog entry (`restore-points/<name>.json`) read through the metadata layer."""
    fields = load_json(raw, where, known=_ENTRY_FIELDS)
    point = _read_point(fields, CATALOG)
    fields.opt_text("created_by")
    fields.finish()
    if point.name != name:
        raise fields.damaged("name", f"is {point.name!r}, not the entry's own name {name!r}")
    return point


def _read_point(fields: Fields, source: str) -> RestorePoint:
    state = fields.choice("state", (PENDING, COMPLETE), COMPLETE)
    complete = state == COMPLETE
    return RestorePoint(
        name=fields.parsed("name", validate_name, "a restore point name"),
        lsn=fields.parsed("lsn", parse_lsn, "an LSN") if complete else fields.text("lsn", ""),
        timeline=fields.integer("timeline", minimum=1 if complete else 0),
        time=fields.opt_parsed("time", datetime.fromisoformat, "a time"),
        source=source,
        database=fields.opt_text("database"),
        system_identifier=fields.opt_parsed("system_identifier", int, "a number"),
        segment=fields.opt_parsed("segment", parse_wal_name, "a WAL file name"),
        state=state,
        archived=fields.flag("archived", True),
    )


def parse_scanned(raw: bytes, where: str) -> list[RestorePoint]:
    """A WAL scan-cache entry (`restore-points/scanned/<segment>.json`); DamagedMetadata
    when unreadable, and for another format (the caller scans the segment again)."""
    fields = load_json(raw, where, known=("format", "points"))
    if fields.integer("format") != SCAN_FORMAT:
        raise fields.damaged("format", f"is not {SCAN_FORMAT}")

    def point(sub: Fields) -> RestorePoint:
        sub.choice("source", (WAL,), WAL)
        return _read_point(sub, WAL)

    points = fields.records("points", point, _SCANNED_FIELDS)
    fields.finish()
    return points


def _scan_archive(repo: Repository) -> Iterator[RestorePoint]:
    marker = repo.marker()
    if marker is None:
        return
    seg_size = marker.wal_segment_size
    segments = sorted(
        info.key.rsplit("/", 1)[1]
        for info in repo.wal.list()
        if not info.key.startswith(HISTORY_PREFIX)
        and parse_wal_name(info.key.rsplit("/", 1)[1]).kind == SEGMENT
    )
    present = set(segments)
    cached = repo.points.scanned()
    todo: list[str] = []
    for segment in segments:
        if segment in cached:
            key = repo.points.scanned_key(segment)
            try:
                with repo.points.open_scanned(segment) as fh:
                    yield from parse_scanned(fh.read(MAX_RECORD), f"{repo.url}: {key}")
                continue
            except (NotFound, DamagedMetadata):
                pass  # a cache: an unreadable entry is scanned again and rewritten
        todo.append(segment)
    if not todo:
        return
    major = marker.pg_version or None
    with tempfile.TemporaryDirectory(prefix="chainlens-rp-") as tmp:
        for segment in todo:
            wal = parse_wal_name(segment)
            segno = wal.segno(seg_size)
            following = segment_name(wal.tli, segno + 1, seg_size)
            for name in (segment, following):
                if name in present and not os.path.exists(os.path.join(tmp, name)):
                    _decode_to(repo, name, tmp)
            points = [
                RestorePoint(name, lsn, wal.tli, None, WAL, segment=segment)
                for name, lsn in run_waldump(
                    major, tmp, wal.tli, segno * seg_size, (segno + 1) * seg_size
                )
            ]
            yield from points
            if following in present:  # a record crossing into it was read whole: final
                body = {"format": SCAN_FORMAT, "points": [_scanned(p) for p in points]}
                repo.points.put_scanned(segment, json.dumps(body).encode())
            _unlink(os.path.join(tmp, segment))


def _scanned(point: RestorePoint) -> dict[str, Any]:
    data = asdict(point)
    data.pop("problem")
    return data


def _decode_to(repo: Repository, name: str, folder: str) -> None:
    key = repo.wal_key(parse_wal_name(name))
    with repo.wal.open(parse_wal_name(name)) as src, open(os.path.join(folder, name), "wb") as out:
        decode(src, out, name=name, where=f"{repo.url}: {key}")


def run_waldump(
    major: int | None, folder: str, timeline: int, start: int, end: int
) -> list[tuple[str, str]]:
    """(name, start LSN) of every restore-point record starting in [start, end)."""
    records = scan(Path(folder), rmgr="XLOG", major=major, timeline=timeline, start=start, end=end)
    return [(name, r.lsn) for r in records if (name := r.restore_point) is not None]
