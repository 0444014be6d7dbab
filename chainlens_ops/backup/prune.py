"""`chainlens-ops backup prune`: retention by backup time, and the WAL no backup needs.

- A valid backup is kept when any rule keeps it: among the newest `keep_last` of its
  target database, or started within `keep_days`. Each target's newest valid backup is
  always kept.
- A pruned backup loses its manifest first (it leaves the catalog at once), then its
  objects: a prune cut short leaves leftovers, never a listed backup missing objects.
- Leftovers of failed backups (objects without a manifest) are removed. Running backups
  hold the repository lock, which prune takes too, so none can be mistaken for one. So
  are what killed commands left (`remove_leftovers`: spools, unpublished uploads), with
  the bytes that freed.
- WAL: segments (and .backup files) older than the start segment of the oldest retained
  *base* backup are removed, and only those; history files always stay. With no base
  backup retained, no WAL is removed (there is nothing to measure "older" against).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from chainlens_ops.backup.leftovers import Cleanup, remove_dead_backups, remove_dead_spools
from chainlens_ops.backup.manifest import (
    BASE,
    BackupManifest,
    backup_prefix,
    manifest_key,
    read_catalog,
    utc_now,
)
from chainlens_ops.backup.spool import spool_root
from chainlens_ops.errors import UsageError
from chainlens_ops.repolock import DEFAULT_WAIT_S, RepositoryLock
from chainlens_ops.repository import HISTORY_PREFIX, WAL_PREFIX, Repository
from chainlens_ops.wal.catalog import DEFAULT_SEG_SIZE
from chainlens_ops.wal.names import HISTORY, parse_wal_name


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
    cleanup: Cleanup = field(default_factory=Cleanup)  # what killed commands left


def prune_backups(
    repo: Repository,
    *,
    keep_last: int | None = None,
    keep_days: float | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
    lock_wait_s: float = DEFAULT_WAIT_S,
    notify: Callable[[str], None] | None = None,
    spool_dir: str | None = None,
) -> PruneResult:
    if keep_last is None and keep_days is None:
        raise UsageError("say what to keep: --keep-last N and/or --keep-days D")
    if keep_last is not None and keep_last < 1:
        raise UsageError("--keep-last must be at least 1")
    if keep_days is not None and keep_days < 0:
        raise UsageError("--keep-days must not be negative")
    notices: list[str] = []

    def note(line: str) -> None:
        notices.append(line)
        if notify:
            notify(line)

    lock = RepositoryLock(repo.storage, "backup prune", wait_s=lock_wait_s, notify=note)
    with lock.hold():
        cleanup = remove_leftovers(repo, spool_dir, dry_run=dry_run)
        catalog = read_catalog(repo)
        keep = retained(catalog.valid, keep_last, keep_days, now or utc_now())
        removed = [b for b in catalog.valid if b.id not in keep]
        bases = [b for b in catalog.valid if b.id in keep and b.kind == BASE and b.start_wal]
        wal_before = min((str(b.start_wal)[:24] for b in bases), key=_segno_key, default=None)
        wal = _old_wal(repo, wal_before) if wal_before else []
        if not dry_run:
            for backup in removed:
                lock.check()
                _delete_backup(repo, backup.id)
            for backup_id in catalog.without_manifest:
                _delete_backup(repo, backup_id)
            for key, _size in wal:
                lock.check()
                repo.storage.delete(key)
    return PruneResult(
        repo=repo.url,
        dry_run=dry_run,
        kept=[b.id for b in catalog.valid if b.id in keep],
        removed=[b.id for b in removed],
        leftovers=sorted(set(catalog.without_manifest) | set(cleanup.backups)),
        wal_before=wal_before,
        wal_removed=len(wal),
        wal_bytes_removed=sum(size for _, size in wal),
        damaged=catalog.damaged,
        notices=notices,
        cleanup=cleanup,
    )


def remove_leftovers(repo: Repository, spool_dir: str | None, *, dry_run: bool) -> Cleanup:
    """What killed commands left (`backup.leftovers`): spools, backups without a
    manifest, unpublished writes. Under prune's lock."""
    return remove_dead_spools(spool_root(spool_dir), dry_run=dry_run) + remove_dead_backups(
        repo, dry_run=dry_run
    )


def retained(
    valid: list[BackupManifest], keep_last: int | None, keep_days: float | None, now: datetime
) -> set[str]:
    """Ids kept (`valid` is newest first). The rules apply per target database, so a
    repository holding both databases' backups keeps N of each; each target's newest
    backup is always kept."""
    keep: set[str] = set()
    for target in {b.target for b in valid}:
        mine = [b for b in valid if b.target == target]
        keep |= {b.id for b in mine[:1]}
        if keep_last is not None:
            keep |= {b.id for b in mine[:keep_last]}
        if keep_days is not None:
            cutoff = now - timedelta(days=keep_days)
            keep |= {b.id for b in mine if b.started() >= cutoff}
    return keep


def _delete_backup(repo: Repository, backup_id: str) -> None:
    manifest = manifest_key(backup_id)
    repo.storage.delete(manifest)
    for info in list(repo.storage.list(backup_prefix(backup_id))):
        repo.storage.delete(info.key)


def _segno_key(name: str) -> tuple[int, int]:
    wal = parse_wal_name(name)
    return (wal.log, wal.seg)


def _old_wal(repo: Repository, before: str) -> list[tuple[str, int]]:
    """WAL objects (segments, partial segments, .backup files) older than `before`."""
    marker = repo.marker()
    seg_size = marker.wal_segment_size if marker else DEFAULT_SEG_SIZE
    limit = parse_wal_name(before).segno(seg_size)
    old = []
    for info in repo.storage.list(WAL_PREFIX):
        if info.key.startswith(HISTORY_PREFIX):
            continue
        try:
            wal = parse_wal_name(info.key.rsplit("/", 1)[-1])
        except UsageError:
            continue
        if wal.kind != HISTORY and wal.segno(seg_size) < limit:
            old.append((info.key, info.size))
    return old
