"""What the repository's WAL archive holds (`wal list`) and whether it is whole (`wal check`).

A restore replays every segment from its base backup's start to the recovery target,
following timeline switches. `check_wal` walks that path: the newest timeline's history
file names its ancestors and the positions where each one ended, so segment s is
needed on the timeline whose range holds s. At a switch point, the old timeline's last
segment may exist only as `.partial` (the promoted standby archives it that way) or not
at all once the new timeline's copy exists; neither is a gap.

Exactly what `restore_command` is asked for: for segment s PostgreSQL asks the newest
timeline whose range begins at or before s first, so the segment that holds a switch
point is needed on the NEW timeline (the old timeline's copy, full or `.partial`, ends
at the switch and cannot carry replay onto the new one). PostgreSQL never fetches
`.partial` files: they never cover anything.
"""

from __future__ import annotations

import io
from collections import defaultdict
from dataclasses import dataclass, field

from chainlens_ops.core.errors import UsageError
from chainlens_ops.core.outcome import failed_exit
from chainlens_ops.pg.walnames import (
    BACKUP,
    HISTORY,
    PARTIAL,
    SEGMENT,
    WalName,
    lsn_to_segno,
    parse_lsn,
    parse_wal_name,
    segment_name,
)
from chainlens_ops.repository import HISTORY_PREFIX, Repository
from chainlens_ops.repository.walcodec import decode
from chainlens_ops.storage import NotFound, StorageError

DEFAULT_SEG_SIZE = 16 * 1024 * 1024


@dataclass(frozen=True)
class SegmentRange:
    first: str
    last: str
    count: int
    stored_bytes: int


@dataclass(frozen=True)
class TimelineListing:
    timeline: int
    segments: int
    stored_bytes: int
    ranges: list[SegmentRange]
    partial: list[str] = field(default_factory=list)
    backup_files: list[str] = field(default_factory=list)
    history_file: bool = False


@dataclass(frozen=True)
class WalListing:
    repo: str
    system_identifier: int | None
    wal_segment_size: int | None
    timelines: list[TimelineListing]
    objects: int
    stored_bytes: int


@dataclass(frozen=True)
class WalGap:
    timeline: int
    first: str
    last: str
    count: int


@dataclass(frozen=True)
class TimelineSpan:
    """Where a timeline is on the path to the newest one (segment numbers, inclusive)."""

    timeline: int
    first_segno: int | None  # None: from the beginning
    last_segno: int | None  # None: to the end (the newest timeline)


@dataclass(frozen=True)
class WalCheck:
    repo: str
    first: str | None  # the first segment checked
    last: str | None  # the newest segment
    path: list[TimelineSpan]
    segments_checked: int
    gaps: list[WalGap]
    problems: list[str]
    stale_temp_files: int = 0  # left by killed writers (local), found by this check
    stale_temp_removed: int = 0

    @property
    def ok(self) -> bool:
        return not self.gaps and not self.problems

    @property
    def exit_code(self) -> int:
        return failed_exit(self.ok)


@dataclass
class _Scan:
    seg_size: int
    segments: dict[int, dict[int, int]] = field(default_factory=lambda: defaultdict(dict))
    partial: dict[int, dict[int, str]] = field(default_factory=lambda: defaultdict(dict))
    backups: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))
    histories: set[int] = field(default_factory=set)
    objects: int = 0
    stored_bytes: int = 0


def list_wal(repo: Repository) -> WalListing:
    """Segments per timeline, as contiguous ranges, with stored sizes."""
    repo.require_present()
    marker = repo.marker()
    scan = _scan(repo, marker.wal_segment_size if marker else DEFAULT_SEG_SIZE)
    timelines = []
    for tli in sorted(set(scan.segments) | set(scan.partial) | set(scan.backups) | scan.histories):
        segs = scan.segments.get(tli, {})
        timelines.append(
            TimelineListing(
                timeline=tli,
                segments=len(segs),
                stored_bytes=sum(segs.values()),
                ranges=_ranges(tli, segs, scan.seg_size),
                partial=sorted(scan.partial.get(tli, {}).values()),
                backup_files=sorted(scan.backups.get(tli, [])),
                history_file=tli in scan.histories,
            )
        )
    return WalListing(
        repo=repo.url,
        system_identifier=marker.system_identifier if marker else None,
        wal_segment_size=marker.wal_segment_size if marker else None,
        timelines=timelines,
        objects=scan.objects,
        stored_bytes=scan.stored_bytes,
    )


def check_wal(repo: Repository, *, start: str | None = None, clean_stale: bool = True) -> WalCheck:
    """Gaps between `start` (default: the oldest segment on the path) and the newest
    segment, along the newest timeline's history. `clean_stale=False` only counts the
    temp files of killed writers (for read-only callers such as `status`)."""
    repo.require_present()
    marker = repo.marker()
    if marker is None:
        return WalCheck(repo.url, None, None, [], 0, [], ["the repository holds no WAL yet"])
    seg_size = marker.wal_segment_size
    scan = _scan(repo, seg_size)
    problems: list[str] = []
    timelines = set(scan.segments) | set(scan.partial) | scan.histories
    if not timelines:
        return WalCheck(repo.url, None, None, [], 0, [], ["the repository holds no WAL yet"])
    newest = max(timelines)
    path = timeline_path(repo, newest, seg_size, problems)

    def on_path(tli: int, segno: int) -> bool:
        return any(_holds(span, segno) for span in path if span.timeline == tli)

    present = [s for tli, segs in scan.segments.items() for s in segs if on_path(tli, s)]
    if not present:
        return WalCheck(
            repo.url, None, None, path, 0, [], ["no segment on the newest timeline's path"]
        )
    first = min(present)
    if start is not None:
        wal = parse_wal_name(start)
        if wal.kind != SEGMENT:
            raise UsageError(f"--from takes a segment name, not {start!r}")
        first = wal.segno(seg_size)
        if not any(span.timeline == wal.tli for span in path):
            raise UsageError(
                f"--from {start}: timeline {wal.tli} is not on the archive's timeline path "
                f"({', '.join(str(span.timeline) for span in path)})"
            )
        if first > max(present):
            raise UsageError(f"--from {start} is past the newest archived segment")
    last = max(present)
    if path[-1].first_segno is not None:
        # A restore to the newest timeline asks at least for its first segment (the one
        # holding the switch point), even when no segment of it is archived.
        last = max(last, path[-1].first_segno)

    missing: list[tuple[int, int]] = []
    for segno in range(first, last + 1):
        tli = needed_timeline(path, segno)
        if tli is not None and segno in scan.segments.get(tli, {}):
            continue
        missing.append((tli if tli is not None else newest, segno))
    gaps = _group(missing, seg_size)
    first_span = next((s for s in path if _holds(s, first)), path[0])
    last_span = next((s for s in reversed(path) if _holds(s, last)), path[-1])
    stale, removed = _clean_stale_temp(repo, remove=clean_stale)
    return WalCheck(
        stale_temp_files=stale,
        stale_temp_removed=removed,
        repo=repo.url,
        first=segment_name(first_span.timeline, first, seg_size),
        last=segment_name(last_span.timeline, last, seg_size),
        path=path,
        segments_checked=last - first + 1,
        gaps=gaps,
        problems=problems,
    )


def _clean_stale_temp(repo: Repository, *, remove: bool = True) -> tuple[int, int]:
    """(found, removed) temp files of killed writers; removal is best effort (a check
    run by a user who may not write the repository still reports them)."""
    found = len(repo.stale_leftovers())
    if not remove:
        return found, 0
    try:
        return found, repo.remove_stale_leftovers() if found else 0
    except StorageError:
        return found, 0


def needed_timeline(path: list[TimelineSpan], segno: int) -> int | None:
    """The timeline whose copy of `segno` a restore to the newest timeline needs: the
    newest one on the path whose range holds it."""
    for span in reversed(path):
        if _holds(span, segno):
            return span.timeline
    return None


def timeline_path(
    repo: Repository, newest: int, seg_size: int, problems: list[str]
) -> list[TimelineSpan]:
    """The timelines a restore to `newest` walks through, oldest first."""
    if newest == 1:
        return [TimelineSpan(1, None, None)]
    name = f"{newest:08X}.history"
    try:
        with repo.wal.open(parse_wal_name(name)) as src:
            out = io.BytesIO()
            decode(src, out, name=name, where=f"{repo.url}: {name}")
    except NotFound:
        problems.append(f"{name} is missing: cannot follow timeline {newest}'s ancestry")
        return [TimelineSpan(newest, None, None)]
    switches = parse_history(out.getvalue().decode("ascii", "replace"))
    path = []
    begin: int | None = None
    for parent, lsn in switches:
        # The parent's last segment holds the byte before the switch point; the child
        # starts in the segment holding the switch point (the same one, unless the
        # switch fell on a segment boundary).
        path.append(TimelineSpan(parent, begin, lsn_to_segno(max(lsn - 1, 0), seg_size)))
        begin = lsn_to_segno(lsn, seg_size)
    path.append(TimelineSpan(newest, begin, None))
    return path


def parse_history(text: str) -> list[tuple[int, int]]:
    """(parent timeline, switch LSN) per line of a timeline history file."""
    switches = []
    for line in text.splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        try:
            switches.append((int(fields[0]), parse_lsn(fields[1])))
        except (IndexError, ValueError):
            continue  # PostgreSQL ignores what it cannot parse too
    return switches


def _scan(repo: Repository, seg_size: int) -> _Scan:
    scan = _Scan(seg_size)
    for info in repo.wal.list():
        scan.objects += 1
        scan.stored_bytes += info.size
        base = info.key.rsplit("/", 1)[-1]
        try:
            wal: WalName = parse_wal_name(base)
        except UsageError:
            continue
        if wal.kind == HISTORY:
            if info.key.startswith(HISTORY_PREFIX):
                scan.histories.add(wal.tli)
        elif wal.kind == SEGMENT:
            scan.segments[wal.tli][wal.segno(seg_size)] = info.size
        elif wal.kind == PARTIAL:
            scan.partial[wal.tli][wal.segno(seg_size)] = wal.name
        elif wal.kind == BACKUP:
            scan.backups[wal.tli].append(wal.name)
    return scan


def _holds(span: TimelineSpan, segno: int) -> bool:
    return (span.first_segno is None or span.first_segno <= segno) and (
        span.last_segno is None or segno <= span.last_segno
    )


def _ranges(tli: int, segs: dict[int, int], seg_size: int) -> list[SegmentRange]:
    ranges: list[SegmentRange] = []
    run: list[int] = []
    for segno in sorted(segs):
        if run and segno != run[-1] + 1:
            ranges.append(_range(tli, run, segs, seg_size))
            run = []
        run.append(segno)
    if run:
        ranges.append(_range(tli, run, segs, seg_size))
    return ranges


def _range(tli: int, run: list[int], segs: dict[int, int], seg_size: int) -> SegmentRange:
    return SegmentRange(
        first=segment_name(tli, run[0], seg_size),
        last=segment_name(tli, run[-1], seg_size),
        count=len(run),
        stored_bytes=sum(segs[s] for s in run),
    )


def _group(missing: list[tuple[int, int]], seg_size: int) -> list[WalGap]:
    gaps: list[WalGap] = []
    run: list[tuple[int, int]] = []
    for tli, segno in missing:
        if run and (tli != run[-1][0] or segno != run[-1][1] + 1):
            gaps.append(_gap(run, seg_size))
            run = []
        run.append((tli, segno))
    if run:
        gaps.append(_gap(run, seg_size))
    return gaps


def _gap(run: list[tuple[int, int]], seg_size: int) -> WalGap:
    tli = run[0][0]
    return WalGap(
        timeline=tli,
        first=segment_name(tli, run[0][1], seg_size),
        last=segment_name(tli, run[-1][1], seg_size),
        count=len(run),
    )
