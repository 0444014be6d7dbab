"""Repository storage: one small protocol, one module per backend, chosen by URL scheme.

    file:///abs/path  or  /abs/path   -> chainlens_ops.storage.local.LocalStorage
    s3://bucket/prefix                -> chainlens_ops.storage.s3.S3Storage (boto3, lazily)

Keys are relative, '/'-separated paths ("wal/0000000100000000/...."). Every backend
raises the same NotFound for a missing key and AlreadyExists for a refused
conditional put, and returns from `put` only once the bytes are durable.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from chainlens_ops.config import S3Settings
from chainlens_ops.errors import EXIT_USAGE, ConfigError, OperationFailed


class StorageError(OperationFailed):
    """The repository could not be read or written (after retries)."""


class NotFound(StorageError):
    """The key does not exist: a confirmed absence, not a failure to look."""


class AlreadyExists(StorageError):
    """A conditional put (`if_absent=True`) found the key already there."""


class InvalidKey(StorageError, ValueError):
    """A key or prefix that is not a relative '/'-separated path (a caller's mistake)."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    mtime: float  # seconds since the epoch


class Storage(Protocol):
    url: str

    def put(self, key: str, stream: BinaryIO, *, if_absent: bool = False) -> ObjectInfo:
        """Store `stream` under `key`; durable on return. Readers never see a partial
        object. With `if_absent`, raise AlreadyExists (atomically) if `key` exists."""

    def open(self, key: str) -> BinaryIO:
        """A readable stream of the object (use as a context manager). NotFound if absent."""

    def stat(self, key: str) -> ObjectInfo:
        """Size and mtime of `key`. NotFound if absent."""

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`, in key order."""

    def delete(self, key: str) -> None:
        """Remove `key`; deleting a missing key is not an error."""


def open_storage(url: str, s3: S3Settings | None = None) -> Storage:
    """The backend for `url`. boto3 is imported only for s3:// URLs."""
    if url.startswith("s3://"):
        from chainlens_ops.storage.s3 import S3Storage

        return S3Storage(url, s3 or S3Settings())
    if url.startswith("file://") or url.startswith("/"):
        from chainlens_ops.storage.local import LocalStorage

        return LocalStorage(url)
    raise ConfigError(
        f"repository {url!r} is not a file:///absolute/path, /absolute/path or s3://bucket/prefix"
    )
