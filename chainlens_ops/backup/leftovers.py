"""What killed commands leave behind, found and removed by the next backup or prune.

A `kill -9` runs no cleanup. Its children die with it (`pg.process`), but it can leave:

- a spool folder (`backup --jobs`, `restore --jobs`, `verify`): a full uncompressed copy
  of a dump, on local disk. Each names its process (`spool.OWNER_FILE`); one whose
  process is gone from this host is removed. A folder of another host is left alone;
- a backup without a manifest: objects, temp files (local) and multipart uploads (S3)
  under `backups/<id>/`. Backups write only under the repository lock, which the
  callers hold, so every such backup is dead: all of it goes, whatever its age;
- unpublished writes elsewhere (a killed `wal push`, a proof record): removed once
  older than STALE_S, as no live writer takes that long.

Each removal is reported with the bytes it freed.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from dataclasses import dataclass, field

from chainlens_ops.backup.parallel import OWNER_FILE, SPOOL_PREFIX, process_identity
from chainlens_ops.repository import Repository
from chainlens_ops.settings.keys import format_bytes
from chainlens_ops.storage import ObjectInfo

STALE_S = 3600.0  # an unpublished write this old outside a dead backup has no writer
UNOWNED_SPOOL_S = 86400.0  # a spool folder naming no process (older versions): a day


@dataclass(frozen=True)
class Cleanup:
    """What was removed (or, in a dry run, would be)."""

    spools: list[str] = field(default_factory=list)  # spool folders of dead commands
    backups: list[str] = field(default_factory=list)  # ids of backups without a manifest
    unpublished: int = 0  # temp files and multipart uploads never published
    bytes_freed: int = 0

    def __add__(self, other: Cleanup) -> Cleanup:
        return Cleanup(
            self.spools + other.spools,
            self.backups + other.backups,
            self.unpublished + other.unpublished,
            self.bytes_freed + other.bytes_freed,
        )

    def summary(self, dry_run: bool = False) -> str | None:
        """One line for the user, None when there was nothing to remove."""
        parts = []
        if self.spools:
            parts.append(f"{len(self.spools)} spool folder(s) ({', '.join(self.spools)})")
        if self.backups:
            parts.append(f"{len(self.backups)} backup(s) without a manifest")
        if self.unpublished:
            parts.append(f"{self.unpublished} unfinished upload(s) or temp file(s)")
        if not parts:
            return None
        verb = "would free" if dry_run else "freed"
        return f"leftovers of killed commands: {', '.join(parts)}: {verb} " + format_bytes(
            self.bytes_freed
        )


def remove_dead_spools(root: str, *, dry_run: bool = False) -> Cleanup:
    """Spool folders under `root` whose process is gone (see the module's text)."""
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return Cleanup()
    removed: list[str] = []
    freed = 0
    for name in names:
        path = os.path.join(root, name)
        if not name.startswith(SPOOL_PREFIX) or not _is_dead_spool(path):
            continue
        size = _tree_size(path)
        if not dry_run:
            shutil.rmtree(path, ignore_errors=True)
            if os.path.lexists(path):
                continue  # not ours to remove (another user's): leave it
        removed.append(path)
        freed += size
    return Cleanup(spools=removed, bytes_freed=freed)


def remove_dead_backups(repo: Repository, *, dry_run: bool = False) -> Cleanup:
    """Backups without a manifest, and writes never published. The caller holds the
    repository lock."""
    sizes: dict[str, int] = {}
    has_manifest: set[str] = set()
    for backup_id, name, info in repo.backups.contents():
        sizes[backup_id] = sizes.get(backup_id, 0) + info.size
        if repo.backups.is_manifest(name):
            has_manifest.add(backup_id)
    dead = {i for i in sizes if i not in has_manifest}
    if not dry_run:
        for backup_id in sorted(dead):
            repo.backups.delete(backup_id)
    cutoff = time.time() - STALE_S

    def unpublished(found: ObjectInfo) -> bool:
        folder = found.key.endswith("/")  # local: a folder left empty
        backup_id = repo.backups.backup_of(found.key)  # None: outside backups/
        if backup_id and backup_id not in has_manifest:
            if not folder:
                dead.add(backup_id)
            return True
        return not folder and found.mtime < cutoff

    incomplete = repo.remove_incomplete(unpublished, dry_run=dry_run)
    files = [f for f in incomplete if not f.key.endswith("/")]
    freed = sum(sizes.get(i, 0) for i in dead) + sum(f.size for f in files)
    return Cleanup(backups=sorted(dead), unpublished=len(files), bytes_freed=freed)


def _is_dead_spool(path: str) -> bool:
    try:
        with open(os.path.join(path, OWNER_FILE)) as fh:
            owner = fh.read().split()
    except FileNotFoundError:
        try:  # no owner: made by an older version, or being made right now
            return time.time() - os.lstat(path).st_mtime > UNOWNED_SPOOL_S
        except OSError:
            return False
    except OSError:
        return False
    if len(owner) != 3 or not owner[1].isdigit():
        return False
    if owner[0] != socket.gethostname():
        return False  # another host's: its process cannot be checked from here
    return process_identity(int(owner[1])) != " ".join(owner)


def _tree_size(path: str) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total
