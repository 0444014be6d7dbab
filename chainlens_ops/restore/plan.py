"""The restore plan: which base backup, which WAL, which target; decided and checked
before anything touches disk.

Rules (the runbook an on-call engineer relies on):

- the base backup is the newest valid one that ended before the target (`--backup`
  overrides, and must itself have ended before it);
- every WAL segment from the backup's start segment to the last one recovery needs must
  be in the archive, along the newest timeline's history (`wal check`'s walk); the first
  missing one is named. The last one needed: for an LSN target, the segment holding it;
  for a restore point, the segment holding its record; for a time target and `--latest`,
  the newest archived segment (a time maps to a WAL position only by reading WAL, and
  recovery reads on until the first transaction end after the target, wherever it is);
- a time target must be earlier than the newest transaction end in the archive (read
  with pg_waldump from the newest segments), because PostgreSQL stops at the first
  transaction end *after* the target and otherwise fails short of it;
- a restore point comes from the catalog (`restore-points/<name>.json`) or, when the
  catalog has no entry, from a RESTORE_POINT record in the archived WAL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from chainlens_ops.backup.manifest import BackupManifest, read_catalog, require_backup
from chainlens_ops.core.errors import OperationFailed, UsageError
from chainlens_ops.core.timetext import parse_time_text
from chainlens_ops.pg.walnames import lsn_text, parse_lsn, parse_wal_name, segment_name
from chainlens_ops.repository import Repository
from chainlens_ops.restore.walscan import find_restore_point
from chainlens_ops.restore.window import (
    RecoverableWindow,
    recoverable_window,
    span_lines,
    target_time_text,
    window_text,
)
from chainlens_ops.wal.inventory import TimelineSpan, check_wal

TIME = "time"
NAME = "name"
LSN = "lsn"
LATEST = "latest"
# A target past the archive usually means the incident's segment is still being written
# on the primary: --latest would replay up to (and, once archived, into) the damage.
NOT_ARCHIVED_YET = (
    "the segment holding it is most likely not archived yet: run SELECT pg_switch_wal() "
    "on the primary (or `chainlens-ops check`, which does) and plan again; not --latest, "
    "which stops at no target and replays the damage once it is archived"
)


@dataclass(frozen=True)
class Target:
    kind: str  # TIME, NAME, LSN or LATEST
    text: str  # as the user gave it
    time: datetime | None = None
    lsn: int | None = None
    assumed_utc: bool = False

    @property
    def timezone_note(self) -> str:
        if self.kind != TIME:
            return "n/a"
        if self.assumed_utc:
            return "UTC (the time had no offset: read as UTC)"
        return f"offset given ({self.text})"


_LSN_RE = re.compile(r"[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}")
MAX_TARGET_TEXT = 64  # longer than any time or LSN anyone types: echoed back shortened


def _shown(text: str) -> str:
    return repr(text if len(text) <= MAX_TARGET_TEXT else text[:MAX_TARGET_TEXT] + "...")


def parse_target_time(text: str) -> Target:
    """Any form `chainlens_ops.core.timetext` reads (ISO 8601, psql's `now()`, the server
    log's `... UTC`); no offset = UTC."""
    if len(text) > MAX_TARGET_TEXT:
        raise UsageError(f"cannot read the target time {_shown(text)}: too long")
    parsed = parse_time_text(text, "target time")
    return Target(TIME, text, time=parsed.when, assumed_utc=parsed.assumed_utc)


def parse_target_lsn(text: str) -> Target:
    """Two hex numbers of at most 32 bits each, as PostgreSQL prints them."""
    if not _LSN_RE.fullmatch(text.strip()):
        raise UsageError(f"{_shown(text)} is not an LSN (e.g. 0/3000148)")
    return Target(LSN, text, lsn=parse_lsn(text))


def parse_target_name(text: str) -> Target:
    """A restore point name as user input, checked before any lookup: 1 to 63 bytes
    (PostgreSQL's limit), no '/' (it names a catalog object) and no control or blank
    characters (no restore point made by `restore-point create` or found in the WAL
    holds them). Points made in SQL with other characters are still found."""
    size = len(text.encode())
    if not text:
        raise UsageError("--target-name is empty: give a restore point name")
    if size > 63:
        raise UsageError(
            f"restore point name {_shown(text)} is {size} bytes; PostgreSQL allows at most 63"
        )
    bad = next((c for c in text if c == "/" or c.isspace() or not c.isprintable()), None)
    if bad is not None:
        raise UsageError(
            f"restore point name {_shown(text)} holds {bad!r}, which no restore point name holds",
            hint="see `chainlens-ops restore-point list`",
        )
    return Target(NAME, text)


# recovery_target_time with an explicit offset (the server's own zone otherwise).
postgres_time = target_time_text


@dataclass(frozen=True)
class RestorePlan:
    repo: str
    backup: BackupManifest
    target: Target
    recovery_target: str | None  # the value written for recovery_target_<kind>
    wal_first: str
    wal_last: str
    newest_archived: str
    newest_transaction: str | None
    restore_point_lsn: str | None
    restore_point_source: str | None  # "catalog" or "archived WAL"
    seg_size: int
    notes: list[str] = field(default_factory=list)
    window: list[str] = field(default_factory=list)  # span_lines of the recoverable window
    # The last segment recovery must replay on each timeline of the path, oldest first
    # (`wal fetch --required-through`): missing any of them is fatal, never "absent".
    required_wal: tuple[str, ...] = ()

    @property
    def timezone(self) -> str:
        return self.target.timezone_note


def make_plan(repo: Repository, target: Target, backup_id: str | None = None) -> RestorePlan:
    """Choose the backup and check the archive; UsageError/OperationFailed with one line
    for anything that makes the restore impossible. Reads only."""
    if backup_id is not None:
        require_backup(repo, backup_id)  # a mistyped id: exit 2 naming it
    marker = repo.marker()
    catalog = read_catalog(repo)
    if backup_id is not None and backup_id in catalog.problems:
        raise OperationFailed(catalog.problems[backup_id])
    named = next((b for b in catalog.valid if b.id == backup_id), None)
    if named is not None and (broken := catalog.chain_problem(named)) is not None:
        raise OperationFailed(broken)  # an incremental whose chain cannot be read
    bases = catalog.pitr_starts()  # newest first; damaged manifests are passed over
    if marker is None or not bases:
        raise OperationFailed(
            f"repository {repo.url} holds no base backup: point-in-time restore is not possible",
            hint="take one with `chainlens-ops backup --kind base`",
        )
    seg_size = marker.wal_segment_size
    check = check_wal(repo, start=bases[-1].start_wal)
    if check.problems:
        raise OperationFailed(f"the WAL archive cannot be followed: {check.problems[0]}")
    if check.last is None:
        raise OperationFailed(f"repository {repo.url} holds no WAL")
    newest = check.last
    newest_segno = parse_wal_name(newest).segno(seg_size)
    oldest_start = _segno(bases[-1].start_wal, seg_size)
    newest_first = _segments_on_path(check.path, newest_segno, oldest_start, seg_size)[::-1]
    # The one window every command shows (chainlens_ops.restore.window): a time target is
    # accepted exactly when it lies in it.
    window = recoverable_window(repo, check, catalog=catalog)
    shown = window_text(window.recoverable)

    rp_lsn: int | None = None
    rp_source: str | None = None
    if target.kind == NAME:
        rp_lsn, rp_source = _restore_point(repo, target.text, list(reversed(newest_first)))
    backup = _choose(bases, target, rp_lsn, backup_id, shown, window)

    last_segno = newest_segno
    recovery_target: str | None = None
    newest_tx: datetime | None = None
    if target.kind == TIME:
        mark = window.mark(backup.id)
        assert mark is not None and mark.replays_to is not None  # _choose checked it
        newest_tx = mark.reach
        last_segno = parse_wal_name(mark.replays_to).segno(seg_size)
        recovery_target = postgres_time(target.time)  # type: ignore[arg-type]
    elif target.kind == LSN:
        assert target.lsn is not None
        last_segno = target.lsn // seg_size
        if last_segno > newest_segno:
            raise UsageError(
                f"target LSN {target.text} is later than the newest archived WAL ({newest})",
                hint=NOT_ARCHIVED_YET,
            )
        recovery_target = lsn_text(target.lsn)
    elif target.kind == NAME:
        assert rp_lsn is not None
        last_segno = rp_lsn // seg_size
        recovery_target = target.text

    first_segno = _segno(backup.start_wal, seg_size)
    for gap in check.gaps:
        gap_segno = parse_wal_name(gap.first).segno(seg_size)
        gap_last = parse_wal_name(gap.last).segno(seg_size)
        if gap_last >= first_segno and gap_segno <= last_segno:
            missing = gap.first if gap_segno >= first_segno else segment_name(
                gap.timeline, first_segno, seg_size)  # fmt: skip
            raise OperationFailed(
                f"WAL segment {missing} is missing from the archive: backup {backup.id} "
                f"needs every segment from {backup.start_wal} to "
                f"{_name_on_path(check.path, last_segno, seg_size)}",
                hint="see `chainlens-ops wal check`",
            )
    return RestorePlan(
        repo=repo.url,
        backup=backup,
        target=target,
        recovery_target=recovery_target,
        wal_first=str(backup.start_wal),
        wal_last=_name_on_path(check.path, last_segno, seg_size),
        newest_archived=newest,
        newest_transaction=_show(newest_tx) if newest_tx else None,
        restore_point_lsn=lsn_text(rp_lsn) if rp_lsn is not None else None,
        restore_point_source=rp_source,
        seg_size=seg_size,
        window=span_lines(window.recoverable),
        required_wal=required_through(check.path, first_segno, last_segno, seg_size),
    )


def required_through(
    path: list[TimelineSpan], first: int, last: int, seg_size: int
) -> tuple[str, ...]:
    """Per timeline the path takes between segments `first` and `last`, the last segment
    read from it, oldest first (the `--required-through` value of `wal fetch`)."""
    ends: list[str] = []
    current: int | None = None
    for segno in range(first, last + 1):
        tli = _timeline_for(path, segno)
        if tli != current:
            if current is not None:
                ends.append(segment_name(current, segno - 1, seg_size))
            current = tli
    if current is not None:
        ends.append(segment_name(current, last, seg_size))
    return tuple(ends)


def _choose(
    bases: list[BackupManifest],
    target: Target,
    rp_lsn: int | None,
    backup_id: str | None,
    shown: str,
    window: RecoverableWindow,
) -> BackupManifest:
    def ended_before(b: BackupManifest) -> bool:
        if target.kind == TIME:
            assert target.time is not None
            mark = window.mark(b.id)
            return mark is not None and mark.reaches(target.time)
        if target.kind in (LSN, NAME):
            limit = target.lsn if target.kind == LSN else rp_lsn
            return b.stop_lsn is not None and limit is not None and parse_lsn(b.stop_lsn) <= limit
        return True

    if backup_id is not None:
        chosen = next((b for b in bases if b.id == backup_id), None)
        if chosen is None:
            raise UsageError(
                f"no valid base backup {backup_id} in the repository",
                hint="see `chainlens-ops backup list`",
            )
        if not ended_before(chosen):
            raise UsageError(
                f"backup {backup_id} cannot reach the target {target.text}; "
                f"recoverable window: {shown}"
            )
        return chosen
    for b in bases:
        if ended_before(b):
            return b
    if target.kind != TIME:
        raise UsageError(
            f"target {target.text} is earlier than the end of the earliest base backup; "
            f"recoverable window: {shown}"
        )
    assert target.time is not None
    if window.end is None or target.time >= window.end:
        newest = "no time is recoverable" if window.end is None else (
            f"newest transaction {postgres_time(window.end)}")  # fmt: skip
        raise UsageError(
            f"target {postgres_time(target.time)} is later than the newest archived WAL can "
            f"reach ({newest}); recoverable window: {shown}",
            hint=NOT_ARCHIVED_YET,
        )
    if window.start is not None and target.time < window.start:
        raise UsageError(
            f"target {target.text} is earlier than the end of the earliest base backup; "
            f"recoverable window: {shown}"
        )
    raise UsageError(f"target {target.text} is outside the recoverable window: {shown}")


def _restore_point(repo: Repository, name: str, oldest_first: list[str]) -> tuple[int, str]:
    from chainlens_ops.restore.points import COMPLETE, catalog_entry

    # DamagedMetadata (one line naming the entry and the field) when it cannot be read.
    entry = catalog_entry(repo, name)
    # A `pending` entry (its create was interrupted) names no point yet: the archived
    # WAL decides, as for points made in SQL.
    if entry is not None and entry.state == COMPLETE:
        return parse_lsn(entry.lsn), "catalog"
    found = find_restore_point(repo, name, oldest_first)
    if found is None:
        raise UsageError(
            f"unknown restore point {name!r}: not in the restore-point catalog, and no "
            "RESTORE_POINT record of that name in the archived WAL since the oldest base backup",
            hint="see `chainlens-ops restore-point list`",
        )
    return parse_lsn(found.lsn), "archived WAL"


def _show(when: datetime | None) -> str:
    return postgres_time(when) if when else "none"


def _segno(name: str | None, seg_size: int) -> int:
    if not name:
        raise OperationFailed("the base backup's manifest has no start WAL segment")
    return parse_wal_name(name).segno(seg_size)


def _timeline_for(path: list[TimelineSpan], segno: int) -> int:
    for span in reversed(path):
        if (span.first_segno is None or span.first_segno <= segno) and (
            span.last_segno is None or segno <= span.last_segno
        ):
            return span.timeline
    return path[-1].timeline


def _name_on_path(path: list[TimelineSpan], segno: int, seg_size: int) -> str:
    return segment_name(_timeline_for(path, segno), segno, seg_size)


def _segments_on_path(path: list[TimelineSpan], last: int, first: int, seg_size: int) -> list[str]:
    return [_name_on_path(path, s, seg_size) for s in range(first, last + 1)]
