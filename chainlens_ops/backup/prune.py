"""`chainlens-ops backup prune`: retention by backup time, and the WAL no backup needs.

- A valid backup is kept when any rule of the policy keeps it, or it is pinned
  (`chainlens_ops.backup.retention` says which rules, per target database and per kind);
  each target's newest valid backup and newest point-in-time base are always kept.
- The recoverable window left afterwards is computed before anything is removed (the
  dry run shows it); a prune that would leave no restorable base backup where there was
  one refuses.
- A pruned backup loses its manifest first (it leaves the catalog at once), then its
  objects: a prune cut short leaves leftovers, never a listed backup missing objects.
- Leftovers of failed backups (objects without a manifest) are removed. Running backups
  hold the repository lock, which prune takes too, so none can be mistaken for one. So
  are what killed commands left (`remove_leftovers`: spools, unpublished uploads), with
  the bytes that freed.
- WAL: segments (and .backup files) older than the start segment of the oldest retained
  *base* backup are removed, and only those; history files always stay. With no base
  backup retained, no WAL is removed (there is nothing to measure "older" against).
  A backup kept only because a kept incremental builds on it (its full, the middle of
  its chain) keeps its objects but does not hold WAL back: the incremental replays from
  its own start segment.
- Running restores and drills hold claims (`chainlens_ops.repository.claim`): a claimed
  backup is kept, with its whole chain (retention's ancestor rule) and the WAL it needs;
  while a restore is still planning (its claim names no backup yet) nothing is removed.
  Each is said in a notice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from chainlens_ops.backup.leftovers import Cleanup, remove_dead_backups, remove_dead_spools
from chainlens_ops.backup.manifest import (
    BackupManifest,
    read_catalog,
    utc_now,
)
from chainlens_ops.backup.parallel import spool_root
from chainlens_ops.backup.pins import read_pins
from chainlens_ops.backup.retention import RetentionPolicy, own_right, select_retained
from chainlens_ops.core.errors import OperationFailed, UsageError
from chainlens_ops.pg.scratch import sweep_scratch
from chainlens_ops.pg.walnames import HISTORY, parse_wal_name
from chainlens_ops.repository import HISTORY_PREFIX, Repository
from chainlens_ops.repository.claim import Claim
from chainlens_ops.repository.lock import DEFAULT_WAIT_S
from chainlens_ops.restore.window import RecoverableWindow, recoverable_window, span_lines
from chainlens_ops.wal.inventory import DEFAULT_SEG_SIZE, check_wal


@dataclass(frozen=True)
class PruneResult:
    repo: str
    dry_run: bool
    kept: list[str]
    removed: list[str]
    leftovers: list[str]  # ids of failed backups' objects (no manifest)
    wal_before: str | None  # WAL older than this segment is not needed
    wal_removed: int = 0
    wal_bytes_removed: int = 0
    damaged: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    reasons: dict[str, list[str]] = field(default_factory=dict)  # kept id -> why
    pinned: list[str] = field(default_factory=list)
    # The recoverable window once the plan is carried out (and as `span_lines`).
    window_after: RecoverableWindow | None = None
    window: list[str] | None = None
    scratch_swept: list[str] = field(default_factory=list)  # dead drills' copies, removed
    cleanup: Cleanup = field(default_factory=Cleanup)  # what killed commands left


def prune_backups(
    repo: Repository,
    *,
    policy: RetentionPolicy,
    dry_run: bool = False,
    now: datetime | None = None,
    lock_wait_s: float = DEFAULT_WAIT_S,
    notify: Callable[[str], None] | None = None,
    spool_dir: str | None = None,
) -> PruneResult:
    policy.check()
    notices: list[str] = []

    def note(line: str) -> None:
        notices.append(line)
        if notify:
            notify(line)

    lock = repo.locks.lock("backup prune", wait_s=lock_wait_s, notify=note)
    with lock.hold():
        cleanup = remove_leftovers(repo, spool_dir, dry_run=dry_run)
        catalog = read_catalog(repo)
        pins = read_pins(repo)
        claims = repo.locks.live_claims(remove_stale=not dry_run)
        reasons = select_retained(catalog.valid, policy, now or utc_now(), pinned=pins,
                                  in_use=_claimed(catalog.valid, claims, note))  # fmt: skip
        removed = [b for b in catalog.valid if b.id not in reasons]
        # WAL is kept from the oldest backup kept for itself: an ancestor kept only for
        # the blocks a kept incremental reads from it needs none of its own WAL.
        own = own_right(reasons)
        kept = [b for b in catalog.pitr_starts() if b.id in own]
        wal_before = min((str(b.start_wal)[:24] for b in kept), key=_segno_key, default=None)
        # The WAL removed is older than every kept base backup: the kept ones alone
        # make the window that remains (the one window, chainlens_ops.restore.window).
        # One walk of the archive and one scan of each run of WAL serve both windows.
        check = check_wal(repo, clean_stale=False)
        scans: dict[tuple[str, ...], datetime | None] = {}
        before = recoverable_window(repo, check, catalog=catalog, scans=scans)
        after = recoverable_window(repo, check, catalog=catalog, bases=kept, scans=scans)
        if _restorable(before) and not _restorable(after):
            raise OperationFailed(
                "this prune would leave no base backup a point-in-time restore can start "
                f"from in {repo.url}",
                hint="keep more (--keep-last, --keep-days) or pin a restorable base backup",
            )
        wal = _old_wal(repo, wal_before) if wal_before else []
        if not dry_run:
            for backup in removed:
                lock.check()
                repo.backups.delete(backup.id)
            for backup_id in catalog.without_manifest:
                repo.backups.delete(backup_id)
            for key, _size in wal:
                lock.check()
                repo.wal.delete(key)
    # A drill killed with SIGKILL left its scratch server and copy on this host.
    swept = [] if dry_run else [leftover.describe() for leftover in sweep_scratch()]
    return PruneResult(
        scratch_swept=swept,
        repo=repo.url,
        dry_run=dry_run,
        kept=[b.id for b in catalog.valid if b.id in reasons],
        removed=[b.id for b in removed],
        leftovers=sorted(set(catalog.without_manifest) | set(cleanup.backups)),
        wal_before=wal_before,
        wal_removed=len(wal),
        wal_bytes_removed=sum(size for _, size in wal),
        damaged=catalog.damaged,
        notices=notices,
        reasons={b.id: reasons[b.id] for b in catalog.valid if b.id in reasons},
        pinned=sorted(i for i in pins if i in reasons),
        window_after=after,
        window=span_lines(after.recoverable),
        cleanup=cleanup,
    )


def remove_leftovers(repo: Repository, spool_dir: str | None, *, dry_run: bool) -> Cleanup:
    """What killed commands left (`backup.leftovers`): spools, backups without a
    manifest, unpublished writes. Under prune's lock."""
    return remove_dead_spools(spool_root(spool_dir), dry_run=dry_run) + remove_dead_backups(
        repo, dry_run=dry_run
    )


def _restorable(window: RecoverableWindow) -> bool:
    return any(mark.restorable for mark in window.base_backups)


def _claimed(
    valid: list[BackupManifest], claims: list[Claim], note: Callable[[str], None]
) -> set[str]:
    """The ids running restores and drills use (all of them, while one still plans)."""
    planning = next((c for c in claims if c.backup_id is None), None)
    if planning is not None:
        note(f"nothing pruned: {planning.describe()} is planning a restore from this repository")
        return {b.id for b in valid}
    by_id = {b.id: b for b in valid}
    used: set[str] = set()
    for claim in claims:
        claimed = by_id.get(str(claim.backup_id))
        if claimed is not None and claimed.id not in used:
            used.add(claimed.id)
            chain = " (with the chain it builds on)" if claimed.parent else ""
            note(f"kept backup {claimed.id} and its WAL{chain}: {claim.describe()} is "
                 "restoring it")  # fmt: skip
    return used


def _segno_key(name: str) -> tuple[int, int]:
    wal = parse_wal_name(name)
    return (wal.log, wal.seg)


def _old_wal(repo: Repository, before: str) -> list[tuple[str, int]]:
    """WAL objects (segments, partial segments, .backup files) older than `before`."""
    marker = repo.marker()
    seg_size = marker.wal_segment_size if marker else DEFAULT_SEG_SIZE
    limit = parse_wal_name(before).segno(seg_size)
    old = []
    for info in repo.wal.list():
        if info.key.startswith(HISTORY_PREFIX):
            continue
        try:
            wal = parse_wal_name(info.key.rsplit("/", 1)[-1])
        except UsageError:
            continue
        if wal.kind != HISTORY and wal.segno(seg_size) < limit:
            old.append((info.key, info.size))
    return old
