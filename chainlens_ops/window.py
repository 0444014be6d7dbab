"""The recoverable window of a repository: which times `restore --target-time` can reach.

A time is recoverable when a valid base backup ended before it and every WAL segment
from that backup's start segment up to the time is archived along the newest timeline's
path (`wal check`'s walk, reused here, gaps included). The pieces are kept apart so they
can be drawn: base backups as marks, archived WAL as a bar broken by its gaps, restore
points (from the repository's catalog) as labels.

WAL times are the times the segments were archived (the objects' modification times):
a segment archived at T holds nothing newer than T, so the window's end is where the
archive stands, not the newest transaction (`restore --dry-run` reads that one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from chainlens_ops.backup.manifest import BackupManifest, parse_time, read_catalog
from chainlens_ops.errors import UsageError
from chainlens_ops.repository import WAL_PREFIX, Repository
from chainlens_ops.restore_points import COMPLETE, list_restore_points
from chainlens_ops.wal.catalog import WalCheck, WalGap, check_wal, needed_timeline
from chainlens_ops.wal.names import SEGMENT, parse_wal_name, segment_name

_NEVER = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Span:
    start: datetime
    end: datetime


@dataclass(frozen=True)
class BaseMark:
    id: str
    started_at: datetime
    finished_at: datetime  # recoverable from here on (with the WAL after it)
    start_wal: str | None
    restorable: bool  # its WAL from start to stop is all archived


@dataclass(frozen=True)
class WalRun:
    """Contiguous archived segments on the restore path."""

    first: str
    last: str
    segments: int
    start: datetime  # when the first was archived
    end: datetime  # when the last was archived


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


def recoverable_window(repo: Repository, check: WalCheck | None = None) -> RecoverableWindow:
    """The window of `repo`; `check` is a `check_wal` of it already made (else made here,
    without removing anything). Reads only."""
    bases = sorted(read_catalog(repo).pitr_starts(), key=_finished)
    points = [
        PointLabel(p.name, _point_time(p.time), p.lsn)
        for p in list_restore_points(repo, scan_wal=False)
        if p.state == COMPLETE and p.lsn
    ]
    marker = repo.marker()
    if check is None:
        check = check_wal(repo, clean_stale=False)
    if marker is None or check.first is None or check.last is None:
        unreachable = [_mark(b, False) for b in bases]
        return RecoverableWindow(repo.url, [], unreachable, [], [], points, None, None,
                                 list(check.problems))  # fmt: skip
    seg_size = marker.wal_segment_size
    times = _segment_times(repo, seg_size)
    first = parse_wal_name(check.first).segno(seg_size)
    last = parse_wal_name(check.last).segno(seg_size)
    # The archive time of each segment on the path, None where it is missing.
    on_path: dict[int, datetime | None] = {}
    for segno in range(first, last + 1):
        tli = needed_timeline(check.path, segno)
        on_path[segno] = times.get((tli, segno)) if tli is not None else None
    runs = _runs(on_path)

    marks: list[BaseMark] = []
    spans: list[Span] = []
    for b in bases:
        begin, end = _segno(b.start_wal, seg_size), _segno(b.stop_wal, seg_size)
        run = next((r for r in runs if r[0] <= (begin or -1) and (end or -1) <= r[1]), None)
        marks.append(_mark(b, run is not None))
        if run is not None:
            reach = max(t for s, t in on_path.items() if run[0] <= s <= run[1] and t)
            if reach > _finished(b):
                spans.append(Span(_finished(b), reach))
    newest = max((t for t in on_path.values() if t), default=None)
    return RecoverableWindow(
        repo=repo.url,
        recoverable=_merge(spans),
        base_backups=marks,
        wal=[_wal_run(r, on_path, check, seg_size) for r in runs],
        gaps=check.gaps,
        restore_points=sorted(points, key=lambda p: (p.time or _NEVER, p.name)),
        newest_archived=check.last,
        newest_archived_at=newest,
        problems=list(check.problems),
    )


def _finished(b: BackupManifest) -> datetime:
    return parse_time(b.finished_at)


def _mark(b: BackupManifest, restorable: bool) -> BaseMark:
    return BaseMark(b.id, parse_time(b.started_at), _finished(b), b.start_wal, restorable)


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
    for info in repo.storage.list(WAL_PREFIX):
        try:
            wal = parse_wal_name(info.key.rsplit("/", 1)[-1])
        except UsageError:
            continue
        if wal.kind == SEGMENT:
            times[(wal.tli, wal.segno(seg_size))] = datetime.fromtimestamp(info.mtime, UTC)
    return times


def _runs(on_path: dict[int, datetime | None]) -> list[tuple[int, int]]:
    """(first, last) segment numbers of each contiguous archived run."""
    runs: list[tuple[int, int]] = []
    start: int | None = None
    for segno in sorted(on_path):
        if on_path[segno] is not None and start is None:
            start = segno
        elif on_path[segno] is None and start is not None:
            runs.append((start, segno - 1))
            start = None
    if start is not None:
        runs.append((start, max(on_path)))
    return runs


def _wal_run(
    run: tuple[int, int], on_path: dict[int, datetime | None], check: WalCheck, seg_size: int
) -> WalRun:
    stamps = [t for s, t in on_path.items() if run[0] <= s <= run[1] and t]

    def name(segno: int) -> str:
        return segment_name(needed_timeline(check.path, segno) or 1, segno, seg_size)

    return WalRun(name(run[0]), name(run[1]), run[1] - run[0] + 1, min(stamps), max(stamps))


def _merge(spans: list[Span]) -> list[Span]:
    merged: list[Span] = []
    for span in sorted(spans, key=lambda s: s.start):
        if merged and span.start <= merged[-1].end:
            merged[-1] = Span(merged[-1].start, max(merged[-1].end, span.end))
        else:
            merged.append(span)
    return merged
