"""The storage protocol every backend implements (see chainlens_ops.storage)."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterator
from typing import BinaryIO, Protocol

from chainlens_ops.storage.base import ObjectInfo


class Storage(Protocol):
    url: str

    def put(self, key: str, stream: BinaryIO, *, if_absent: bool = False) -> ObjectInfo:
        """Store `stream` under `key`; durable on return. Readers never see a partial
        object. With `if_absent`, raise AlreadyExists (atomically) if `key` exists, and
        only once the stored copy is itself durable (local: the existing file and its
        folder are fsynced first; S3: a visible object is durable)."""

    def open(self, key: str) -> BinaryIO:
        """A readable stream of the object (use as a context manager). NotFound if absent."""

    def stat(self, key: str) -> ObjectInfo:
        """Size and mtime of `key`. NotFound if absent."""

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`, in key order."""

    def delete(self, key: str) -> None:
        """Remove `key`; deleting a missing key is not an error."""

    # -- what every backend answers about itself (never probed with getattr) ----------

    def exists(self) -> bool:
        """Whether the repository's root is there at all (a missing local folder is
        "does not exist", never an empty archive). May raise StorageError."""

    def stale_leftovers(self) -> tuple[str, ...]:
        """What killed writers left behind (temp files, stale uploads) that housekeeping
        would remove; () for a backend with nothing to clean (see Backend.housekeeping)."""

    def remove_stale_leftovers(self) -> int:
        """Remove what `stale_leftovers` finds; how many were removed."""

    def remove_incomplete(
        self, prefix: str, select: Callable[[ObjectInfo], bool], *, dry_run: bool = False
    ) -> builtins.list[ObjectInfo]:
        """Writes under `prefix` that killed writers never published (local: temp files
        and folders left empty, a folder given as its key with a trailing '/'; S3:
        multipart uploads) that `select` picks, removed unless `dry_run`: each as the key
        it was writing, its bytes and when it was last changed. `stale_leftovers` is the
        age-only form of this, for `wal check` and `wal push`'s housekeeping."""

    def housekeep_now_and_then(self, stamp: str | None) -> None:
        """Called by `wal push` after each success: cheap, rate-limited housekeeping
        (`stamp`: a file in the spool noting the last run). Never raises."""
