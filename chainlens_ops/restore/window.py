"""The recoverable window of a repository: which times `restore --target-time` can reach.

The one source of the window: `backup list`, `status`, `restore` (its plan, its dry run
and its refusals) and `backup prune --dry-run` all show `recoverable_window(...)` with
`span_lines`, so none can promise a time another refuses.

A time T is recoverable from base backup B when:
- B is valid and ended at or before T;
- every WAL segment from B's start segment on is archived along the newest timeline's
  path (`wal check`'s walk, gaps included) up to the end of the contiguous run holding
  B (a restore from B replays that run and stops at its end: a gap after it cuts the
  times later than the gap off from B, not the times before it);
- the run holds a transaction end later than T: PostgreSQL stops a time-targeted
  recovery at the first commit or abort after the target and fails when there is none.
So each run that holds a restorable base backup gives the span [end of its oldest base
backup, newest transaction end in the run), read with pg_waldump (`restore.walscan`).

For drawing, runs also carry the times their segments were archived (the objects'
modification times); restore points (from the catalog) are labels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from chainlens_ops.backup.manifest import BackupManifest, Catalog, parse_time, read_catalog
from chainlens_ops.core.errors import UsageError
from chainlens_ops.pg.walnames import SEGMENT, parse_wal_name, segment_name
from chainlens_ops.repository import Repository
from chainlens_ops.restore.points import COMPLETE, list_restore_points
from chainlens_ops.wal.inventory import WalCheck, WalGap, check_wal, needed_timeline

_NEVER = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Span:
    """Times `--target-time` reaches: from `start` (inclusive: the end of a base backup)
    to `end` (exclusive: the newest transaction end the WAL after it holds)."""

    start: datetime
    end: datetime

    def holds(self, when: datetime) -> bool:
        return self.start <= when < self.end


@dataclass(frozen=True)
class BaseMark:
    id: str
    started_at: datetime
    finished_at: datetime  # recoverable from here on (with the WAL after it)
    start_wal: str | None
    restorable: bool  # its WAL from start to stop is all archived
    replays_to: str | None = None  # the last segment of its run: where a restore stops
    reach: datetime | None = None  # its run's newest transaction end (span end)

    def reaches(self, when: datetime) -> bool:
        """`--target-time when` can be restored from this backup."""
        return self.reach is not None and self.finished_at <= when < self.reach


@dataclass(frozen=True)
class WalRun:
    """Contiguous archived segments on the restore path."""

    first: str
    last: str
    segments: int
    start: datetime  # when the first was archived
    end: datetime  # when the last was archived
    reach: datetime | None = None  # its newest transaction end (read for runs with a base)


@dataclass(frozen=True)
class PointLabel:
    name: str
    time: datetime | None
    lsn: str


@dataclass(frozen=True)
class RecoverableWindow:
    repo: str
    recoverable: list[Span]  # what --target-time can reach, oldest first
    base_backups: list[BaseMark]  # oldest first
    wal: list[WalRun]  # oldest first
    gaps: list[WalGap]
    restore_points: list[PointLabel]  # oldest first
    newest_archived: str | None
    newest_archived_at: datetime | None
    problems: list[str] = field(default_factory=list)

    @property
    def start(self) -> datetime | None:
        return self.recoverable[0].start if self.recoverable else None

    @property
    def end(self) -> datetime | None:
        return self.recoverable[-1].end if self.recoverable else None

    def mark(self, backup_id: str) -> BaseMark | None:
        return next((m for m in self.base_backups if m.id == backup_id), None)


# -- the pure computation (unit-tested) ------------------------------------------------


@dataclass(frozen=True)
class BaseOnAxis:
    """A base backup placed on the segment axis."""

    id: str
    finished_at: datetime
    first: int | None  # its start segment (None: unknown)
    last: int | None  # its stop segment


def contiguous_runs(present: dict[int, bool]) -> list[tuple[int, int]]:
    """(first, last) segment numbers of each run of present segments, oldest first."""
    runs: list[tuple[int, int]] = []
    start: int | None = None
    for segno in sorted(present):
        if present[segno] and start is None:
            start = segno
        elif not present[segno] and start is not None:
            runs.append((start, segno - 1))
            start = None
    if start is not None:
        runs.append((start, max(present)))
    return runs


def run_holding(base: BaseOnAxis, runs: Sequence[tuple[int, int]]) -> tuple[int, int] | None:
    """The run that holds all of `base`'s own WAL (start to stop), if one does."""
    if base.first is None or base.last is None:
        return None
    return next((r for r in runs if r[0] <= base.first and base.last <= r[1]), None)


def recoverable_spans(
    bases: Sequence[BaseOnAxis],
    runs: Sequence[tuple[int, int]],
    reach: Callable[[tuple[int, int]], datetime | None],
) -> list[Span]:
    """The spans of the window: for each restorable base, [its end, its run's newest
    transaction end), merged. `reach` is asked once per run that holds a base."""
    ends: dict[tuple[int, int], datetime | None] = {}
    spans: list[Span] = []
    for b in bases:
        run = run_holding(b, runs)
        if run is None:
            continue
        if run not in ends:
            ends[run] = reach(run)
        end = ends[run]
        if end is not None and end > b.finished_at:
            spans.append(Span(b.finished_at, end))
    return merge_spans(spans)


def merge_spans(spans: Sequence[Span]) -> list[Span]:
    merged: list[Span] = []
    for span in sorted(spans, key=lambda s: s.start):
        if merged and span.start <= merged[-1].end:
            merged[-1] = Span(merged[-1].start, max(merged[-1].end, span.end))
        else:
            merged.append(span)
    return merged


def target_time_text(when: datetime) -> str:
    """A time as `recovery_target_time` and `--target-time` take it (explicit UTC)."""
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")


def span_lines(spans: Sequence[Span]) -> list[str]:
    """The window as every command prints it: one `start .. end` line per span (the end
    excluded), or the one line saying nothing is recoverable."""
    if not spans:
        return ["none (a base backup and a transaction after it, all WAL archived, needed)"]
    return [f"{target_time_text(s.start)} .. {target_time_text(s.end)}" for s in spans]


def window_text(spans: Sequence[Span]) -> str:
    """The window on one line (for a one-line error)."""
    return ", ".join(span_lines(spans))


# -- reading it from a repository ------------------------------------------------------


def recoverable_window(
    repo: Repository,
    check: WalCheck | None = None,
    *,
    catalog: Catalog | None = None,
    bases: Sequence[BackupManifest] | None = None,
    scans: dict[tuple[str, ...], datetime | None] | None = None,
) -> RecoverableWindow:
    """The window of `repo`. `check`: a `check_wal` of it already made (else made here,
    removing nothing); `catalog`: its catalog already read; `bases`: the base backups
    to count (default: every valid one; `prune --dry-run` passes those it keeps);
    `scans`: the newest transaction times already read from runs of WAL (a caller
    drawing two windows of one archive reads each run once: archived WAL never changes).
    Reads only (WAL is decoded into a private temporary folder for pg_waldump)."""
    from chainlens_ops.restore.walscan import newest_transaction_time

    catalog = catalog if catalog is not None else read_catalog(repo)
    chosen = sorted(catalog.pitr_starts() if bases is None else bases, key=_finished)
    problems = list(catalog.problems.values())
    points: list[PointLabel] = []
    for p in list_restore_points(repo, scan_wal=False):
        if p.problem:
            problems.append(p.problem)
        elif p.state == COMPLETE and p.lsn:
            points.append(PointLabel(p.name, _point_time(p.time), p.lsn))
    points.sort(key=lambda p: (p.time or _NEVER, p.name))
    marker = repo.marker()
    if check is None:
        check = check_wal(repo, clean_stale=False)
    problems += check.problems
    if marker is None or check.first is None or check.last is None:
        unreachable = [_mark(b, False) for b in chosen]
        return RecoverableWindow(repo.url, [], unreachable, [], [], points, None, None,
                                 problems)  # fmt: skip
    seg_size = marker.wal_segment_size
    times = _segment_times(repo, seg_size)
    first = parse_wal_name(check.first).segno(seg_size)
    last = parse_wal_name(check.last).segno(seg_size)
    # The archive time of each segment on the path, None where it is missing.
    on_path: dict[int, datetime | None] = {}
    for segno in range(first, last + 1):
        tli = needed_timeline(check.path, segno)
        on_path[segno] = times.get((tli, segno)) if tli is not None else None
    runs = contiguous_runs({s: t is not None for s, t in on_path.items()})

    def name(segno: int) -> str:
        return segment_name(needed_timeline(check.path, segno) or 1, segno, seg_size)

    reached: dict[tuple[int, int], datetime | None] = {}

    known = scans if scans is not None else {}

    def reach(run: tuple[int, int]) -> datetime | None:
        newest_first = tuple(name(s) for s in range(run[1], run[0] - 1, -1))
        if newest_first not in known:
            known[newest_first] = newest_transaction_time(repo, list(newest_first))
        reached[run] = known[newest_first]
        return reached[run]

    on_axis = [BaseOnAxis(b.id, _finished(b), _segno(b.start_wal, seg_size),
                          _segno(b.stop_wal or b.start_wal, seg_size)) for b in chosen]  # fmt: skip
    spans = recoverable_spans(on_axis, runs, reach)
    marks = []
    for b, a in zip(chosen, on_axis, strict=True):
        run = run_holding(a, runs)
        end = (name(run[1]), reached.get(run)) if run else (None, None)
        marks.append(_mark(b, run is not None, *end))
    wal = []
    for run in runs:
        stamps = [t for s, t in on_path.items() if run[0] <= s <= run[1] and t]
        wal.append(WalRun(name(run[0]), name(run[1]), run[1] - run[0] + 1, min(stamps),
                          max(stamps), reached.get(run)))  # fmt: skip
    return RecoverableWindow(
        repo=repo.url,
        recoverable=spans,
        base_backups=marks,
        wal=wal,
        gaps=check.gaps,
        restore_points=points,
        newest_archived=check.last,
        newest_archived_at=max((t for t in on_path.values() if t), default=None),
        problems=problems,
    )


def _finished(b: BackupManifest) -> datetime:
    return parse_time(b.finished_at)


def _mark(
    b: BackupManifest, restorable: bool, last: str | None = None, reach: datetime | None = None
) -> BaseMark:
    return BaseMark(b.id, b.started(), _finished(b), b.start_wal, restorable, last, reach)


def _segno(name: str | None, seg_size: int) -> int | None:
    try:
        return parse_wal_name(name).segno(seg_size) if name else None
    except UsageError:
        return None


def _point_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _segment_times(repo: Repository, seg_size: int) -> dict[tuple[int, int], datetime]:
    times = {}
    for info in repo.wal.list():
        try:
            wal = parse_wal_name(info.key.rsplit("/", 1)[-1])
        except UsageError:
            continue
        if wal.kind == SEGMENT:
            times[(wal.tli, wal.segno(seg_size))] = datetime.fromtimestamp(info.mtime, UTC)
    return times


def missing_own_wal(repo: Repository, b: BackupManifest) -> str | None:
    """The first segment of base backup `b`'s own WAL (its start segment to its stop
    segment, along the archive's timeline path) that is not archived, None when all are.
    Without it no restore from `b` ever becomes consistent, whatever the target."""
    marker = repo.marker()
    if marker is None or not b.start_wal:
        return b.start_wal or "its start segment (unknown)"
    seg_size = marker.wal_segment_size
    first = _segno(b.start_wal, seg_size)
    last = _segno(b.stop_wal or b.start_wal, seg_size)
    if first is None or last is None:
        return b.start_wal
    try:
        check = check_wal(repo, start=b.start_wal, clean_stale=False)
    except UsageError:  # its timeline is not on the path, or it is past the newest
        return b.start_wal
    if check.last is None:
        return b.start_wal
    newest = parse_wal_name(check.last).segno(seg_size)
    gone = [newest + 1] if newest < last else []
    for gap in check.gaps:
        gap_first = parse_wal_name(gap.first).segno(seg_size)
        if parse_wal_name(gap.last).segno(seg_size) >= first and gap_first <= last:
            gone.append(max(gap_first, first))
    if not gone:
        return None
    segno = min(gone)
    tli = needed_timeline(check.path, segno) or parse_wal_name(b.start_wal).tli
    return segment_name(tli, segno, seg_size)
