"""Typed stores: the repository's objects by what they are, not by key.

Operations code asks `repo.points` (and, as callers migrate, the other stores) instead
of building keys from layout.py and calling `repo.storage`. Each store builds its keys
with layout.py (the one place) and reads and writes through RepositoryStorage (the
codec), so behaviour, keys and errors are those of the storage door underneath.

Standard library only: on the `wal push` path (imported by chainlens_ops.repository).
"""

from __future__ import annotations

import io

from chainlens_ops.repository.layout import (
    RESTORE_POINTS_PREFIX,
    SCANNED_PREFIX,
    restore_point_key,
    scan_state_key,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import BinaryIO

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
