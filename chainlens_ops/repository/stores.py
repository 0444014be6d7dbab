"""Typed stores: the repository's objects by what they are, not by key.

Operations code asks `repo.wal`, `repo.points`, `repo.proofs`, `repo.backups` and
`repo.locks` instead of building keys from layout.py and calling `repo.storage`; it never
holds a Storage (tests/unit/test_layers.py checks). Each store builds its keys with
layout.py (the one place) and reads and writes through RepositoryStorage (the codec), so
behaviour, keys and errors are those of the storage door underneath.

Standard library only: on the `wal push` path (imported by chainlens_ops.repository).
The lock and claim machinery (threads, sockets) is imported when a LockStore is used.
"""

from __future__ import annotations

import io

from chainlens_ops.repository.layout import (
    BACKUPS_PREFIX,
    MANIFEST_NAME,
    PIN_NAME,
    RESTORE_POINTS_PREFIX,
    SCANNED_PREFIX,
    WAL_PREFIX,
    backup_object_key,
    backup_prefix,
    manifest_key,
    pin_key,
    proof_key,
    restore_point_key,
    scan_state_key,
    wal_key,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import BinaryIO

    from chainlens_ops.pg.walnames import WalName
    from chainlens_ops.repository.claim import Claim, RestoreClaim
    from chainlens_ops.repository.codec import RepositoryStorage
    from chainlens_ops.repository.lock import RepositoryLock
    from chainlens_ops.storage import ObjectInfo


class PointStore:
    """Restore points: the catalog (`restore-points/<name>.json`) and the WAL scan
    state (`restore-points/scanned/<segment>.json`)."""

    def __init__(self, storage: RepositoryStorage) -> None:
        self._storage = storage

    # -- the catalog ------------------------------------------------------------------

    @staticmethod
    def key(name: str) -> str:
        """The catalog entry's key (for messages: `<url>: <key>`)."""
        return restore_point_key(name)

    def put(self, name: str, data: bytes, *, if_absent: bool = False) -> ObjectInfo:
        """AlreadyExists with `if_absent` when the name is taken."""
        return self._storage.put(self.key(name), io.BytesIO(data), if_absent=if_absent)

    def open(self, name: str) -> BinaryIO:
        """NotFound when there is no such entry."""
        return self._storage.open(self.key(name))

    def delete(self, name: str) -> None:
        self._storage.delete(self.key(name))

    def names(self) -> Iterator[str]:
        """The name of every catalog entry (not the scan state below it)."""
        for info in self._storage.list(RESTORE_POINTS_PREFIX):
            rest = info.key[len(RESTORE_POINTS_PREFIX) :]
            if "/" in rest or not rest.endswith(".json"):
                continue
            yield rest.removesuffix(".json")

    # -- the WAL scan state -----------------------------------------------------------

    @staticmethod
    def scanned_key(segment: str) -> str:
        return scan_state_key(segment)

    def scanned(self) -> set[str]:
        """The segments whose scan state is stored."""
        return {
            info.key[len(SCANNED_PREFIX) :].removesuffix(".json")
            for info in self._storage.list(SCANNED_PREFIX)
        }

    def open_scanned(self, segment: str) -> BinaryIO:
        """NotFound when the segment's scan state is not stored."""
        return self._storage.open(self.scanned_key(segment))

    def put_scanned(self, segment: str, data: bytes) -> ObjectInfo:
        return self._storage.put(self.scanned_key(segment), io.BytesIO(data))


class ProofStore:
    """What is kept beside a backup to say it is good or kept: its proofs
    (`backups/<id>/<kind>-<stamp>Z.json`, see chainlens_ops.backup.proofs) and its pin
    (`backups/<id>/pin.json`, chainlens_ops.backup.pins)."""

    def __init__(self, storage: RepositoryStorage) -> None:
        self._storage = storage

    # -- proofs -------------------------------------------------------------------------

    @staticmethod
    def key(backup_id: str, kind: str, stamp: str) -> str:
        """`stamp`: YYYYmmddTHHMMSS (UTC)."""
        return proof_key(backup_id, kind, stamp)

    def put(self, backup_id: str, kind: str, stamp: str, data: bytes) -> str:
        """Store a proof; its key."""
        key = self.key(backup_id, kind, stamp)
        self._storage.put(key, io.BytesIO(data))
        return key

    def open(self, key: str) -> BinaryIO:
        """A proof by the key `key` or BackupStore.objects gave (the caller picks the
        proofs by name among a backup's objects); NotFound when it is gone."""
        return self._storage.open(key)

    # -- pins ---------------------------------------------------------------------------

    @staticmethod
    def pin_key(backup_id: str) -> str:
        return pin_key(backup_id)

    def pinned(self) -> Iterator[str]:
        """The id of every backup holding a pin record."""
        for backup_id, name, _info in BackupStore(self._storage).contents():
            if name == PIN_NAME:
                yield backup_id

    def open_pin(self, backup_id: str) -> BinaryIO:
        """NotFound when `backup_id` has no pin."""
        return self._storage.open(self.pin_key(backup_id))

    def put_pin(self, backup_id: str, data: bytes) -> None:
        self._storage.put(self.pin_key(backup_id), io.BytesIO(data))

    def delete_pin(self, backup_id: str) -> None:
        self._storage.delete(self.pin_key(backup_id))


class WalStore:
    """The WAL archive: segments, `.partial` and `.backup` files under
    `wal/<TTTTTTTTXXXXXXXX>/`, timeline histories under `wal/history/`."""

    def __init__(self, storage: RepositoryStorage) -> None:
        self._storage = storage

    @staticmethod
    def key(name: WalName) -> str:
        return wal_key(name)

    def put(self, name: WalName, stream: BinaryIO, *, if_absent: bool = False) -> ObjectInfo:
        """AlreadyExists with `if_absent` when `name` is stored already."""
        return self._storage.put(self.key(name), stream, if_absent=if_absent)

    def open(self, name: WalName) -> BinaryIO:
        """NotFound when `name` is not archived."""
        return self._storage.open(self.key(name))

    def stat(self, name: WalName) -> ObjectInfo:
        """NotFound when `name` is not archived."""
        return self._storage.stat(self.key(name))

    def list(self, timeline: int | None = None) -> Iterator[ObjectInfo]:
        """Every object of the archive (histories included), or only the folders of
        `timeline`, in key order; callers parse the names and skip what does not parse."""
        prefix = WAL_PREFIX if timeline is None else f"{WAL_PREFIX}{timeline:08X}"
        return self._storage.list(prefix)

    def delete(self, key: str) -> None:
        """Remove the object at `key`, as `list` gave it (a listed object is removed
        where it lies, even one whose folder does not match its name)."""
        self._storage.delete(key)


class BackupStore:
    """Backups: each one's folder `backups/<id>/`, holding its manifest (`manifest.json`,
    written last: it publishes the backup) and its data objects (names in layout.py).
    The proofs and the pin beside them are ProofStore's; the listings here see them too."""

    def __init__(self, storage: RepositoryStorage) -> None:
        self._storage = storage

    # -- manifests ----------------------------------------------------------------------

    @staticmethod
    def manifest_key(backup_id: str) -> str:
        """The manifest's key (for messages: `<url>: <key>`)."""
        return manifest_key(backup_id)

    def put_manifest(self, backup_id: str, data: bytes) -> ObjectInfo:
        """Publish the backup: a conditional put, AlreadyExists when `backup_id` has a
        manifest already."""
        return self._storage.put(self.manifest_key(backup_id), io.BytesIO(data), if_absent=True)

    def open_manifest(self, backup_id: str) -> BinaryIO:
        """NotFound when `backup_id` has no manifest."""
        return self._storage.open(self.manifest_key(backup_id))

    def stat_manifest(self, backup_id: str) -> ObjectInfo:
        """NotFound when `backup_id` has no manifest."""
        return self._storage.stat(self.manifest_key(backup_id))

    # -- data objects -------------------------------------------------------------------

    @staticmethod
    def object_key(backup_id: str, name: str) -> str:
        """The key of the data object `name` of `backup_id` (layout.py's names)."""
        return backup_object_key(backup_id, name)

    def put(self, key: str, stream: BinaryIO, *, if_absent: bool = False) -> ObjectInfo:
        """Store a data object under `key` (from `object_key`); AlreadyExists with
        `if_absent` when it is stored already."""
        return self._storage.put(key, stream, if_absent=if_absent)

    def open(self, key: str) -> BinaryIO:
        """A data object by its key, as the manifest records it; NotFound when absent."""
        return self._storage.open(key)

    # -- folders ------------------------------------------------------------------------

    def contents(self) -> Iterator[tuple[str, str, ObjectInfo]]:
        """(backup id, name inside its folder, object) of every object under
        `backups/`, in key order: manifests, data objects, proofs and pins alike ('' as
        the name of an object lying directly under `backups/`)."""
        for info in self._storage.list(BACKUPS_PREFIX):
            backup_id, _, name = info.key[len(BACKUPS_PREFIX) :].partition("/")
            yield backup_id, name, info

    def objects(self, backup_id: str) -> Iterator[tuple[str, str]]:
        """(name inside the backup's folder, key) of every object of `backup_id`."""
        prefix = backup_prefix(backup_id)
        for info in self._storage.list(prefix):
            yield info.key[len(prefix) :], info.key

    def holds_anything(self, backup_id: str) -> bool:
        """Whether `backup_id`'s folder holds any object (published or not)."""
        return next(iter(self._storage.list(backup_prefix(backup_id))), None) is not None

    def delete(self, backup_id: str) -> None:
        """Remove a whole backup: its manifest first, so it leaves the catalog at once (a
        delete cut short leaves a backup without a manifest, which the next backup or
        prune removes as a leftover), then every object of its folder."""
        self._storage.delete(self.manifest_key(backup_id))
        for _name, key in list(self.objects(backup_id)):
            self._storage.delete(key)

    @staticmethod
    def backup_of(key: str) -> str | None:
        """The id of the backup whose folder holds `key` ('' for `backups/` itself, as
        Repository.remove_incomplete reports a folder left empty), None for a key
        outside `backups/`."""
        if not key.startswith(BACKUPS_PREFIX):
            return None
        return key[len(BACKUPS_PREFIX) :].partition("/")[0]

    @staticmethod
    def is_manifest(name: str) -> bool:
        """Whether `name` (inside a backup's folder) is its manifest."""
        return name == MANIFEST_NAME


class LockStore:
    """The repository lock (`locks/repository.lock`, its takeover markers) and the
    claims of running restores (`locks/claims/`): plaintext, see
    chainlens_ops.repository.lock and .claim, which implement them over this door."""

    def __init__(self, storage: RepositoryStorage, *, ttl_s: float | None = None) -> None:
        self._storage = storage
        self._ttl_s = ttl_s  # the repository's (`[repository] lock_ttl`); None: the default

    def lock(
        self,
        command: str,
        *,
        wait_s: float | None = None,
        notify: Callable[[str], None] | None = None,
        ttl_s: float | None = None,
    ) -> RepositoryLock:
        """The lock for `command` (not taken yet: `hold()` it); `wait_s` for a holder to
        finish (default: lock.DEFAULT_WAIT_S)."""
        from chainlens_ops.repository.lock import DEFAULT_WAIT_S, RepositoryLock

        wait = DEFAULT_WAIT_S if wait_s is None else wait_s
        ttl = self._ttl_s if ttl_s is None else ttl_s
        return RepositoryLock(self._storage, command, ttl_s=ttl, wait_s=wait, notify=notify)

    def claim(
        self, command: str, *, wait_s: float | None = None, ttl_s: float | None = None
    ) -> RestoreClaim:
        """A restore's claim for `command` (not taken yet: `hold()` it)."""
        from chainlens_ops.repository.claim import RestoreClaim
        from chainlens_ops.repository.lock import DEFAULT_WAIT_S

        wait = DEFAULT_WAIT_S if wait_s is None else wait_s
        ttl = self._ttl_s if ttl_s is None else ttl_s
        return RestoreClaim(self._storage, command, ttl_s=ttl, wait_s=wait)

    def live_claims(self, *, remove_stale: bool = False, ttl_s: float | None = None) -> list[Claim]:
        """The claims of running restores (see claim.live_claims)."""
        from chainlens_ops.repository.claim import live_claims

        ttl = self._ttl_s if ttl_s is None else ttl_s
        return live_claims(self._storage, remove_stale=remove_stale, ttl_s=ttl)
