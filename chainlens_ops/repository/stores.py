"""Typed stores: the repository's objects by what they are, not by key.

Operations code asks `repo.wal`, `repo.points` and `repo.proofs` (and, as callers migrate, the
other stores) instead of building keys from layout.py and calling `repo.storage`. Each
store builds its keys with layout.py (the one place) and reads and writes through
RepositoryStorage (the codec), so behaviour, keys and errors are those of the storage
door underneath.

Standard library only: on the `wal push` path (imported by chainlens_ops.repository).
"""

from __future__ import annotations

import io

from chainlens_ops.repository.layout import (
    BACKUPS_PREFIX,
    PIN_NAME,
    RESTORE_POINTS_PREFIX,
    SCANNED_PREFIX,
    WAL_PREFIX,
    backup_prefix,
    pin_key,
    proof_key,
    restore_point_key,
    scan_state_key,
    wal_key,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import BinaryIO

    from chainlens_ops.pg.walnames import WalName
    from chainlens_ops.repository.codec import RepositoryStorage
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

    def objects(self, backup_id: str) -> Iterator[tuple[str, str]]:
        """(name inside the backup's folder, key) of every object of `backup_id`: the
        caller picks the proofs by name."""
        prefix = backup_prefix(backup_id)
        for info in self._storage.list(prefix):
            yield info.key[len(prefix) :], info.key

    def open(self, key: str) -> BinaryIO:
        """A proof by the key `key` or `objects` gave; NotFound when it is gone."""
        return self._storage.open(key)

    # -- pins ---------------------------------------------------------------------------

    @staticmethod
    def pin_key(backup_id: str) -> str:
        return pin_key(backup_id)

    def pinned(self) -> Iterator[str]:
        """The id of every backup holding a pin record."""
        for info in self._storage.list(BACKUPS_PREFIX):
            backup_id, _, name = info.key[len(BACKUPS_PREFIX) :].partition("/")
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
