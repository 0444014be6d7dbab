"""Repository storage: one small protocol, one module per backend, chosen by URL scheme.

    file:///abs/path  or  /abs/path   -> chainlens_ops.storage.local.LocalStorage
    s3://bucket/prefix                -> chainlens_ops.storage.s3.S3Storage (boto3, lazily)

Keys are relative, '/'-separated paths ("wal/0000000100000000/...."). Every backend
raises the same NotFound for a missing key and AlreadyExists for a refused
conditional put, and returns from `put` only once the bytes are durable.
"""

from __future__ import annotations

from chainlens_ops.errors import UsageError
from chainlens_ops.storage.base import (
    AlreadyExists,
    InvalidKey,
    NotFound,
    ObjectInfo,
    RepositoryNotOurs,
    StorageError,
    StorageUnreachable,
)

# On the `wal push` path: the protocol (which needs `typing`, ~13 ms to import) lives in
# chainlens_ops.storage.protocol and is loaded here only when someone asks for it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from chainlens_ops.config import S3Settings
    from chainlens_ops.storage.protocol import Storage

__all__ = ["AlreadyExists", "InvalidKey", "NotFound", "ObjectInfo", "RepositoryNotOurs",
           "StorageError", "StorageUnreachable", "open_storage"]  # fmt: skip


def open_storage(url: str, s3: S3Settings | None = None) -> Storage:
    """The backend for `url`. boto3 is imported only for s3:// URLs."""
    if url.startswith("s3://"):
        from chainlens_ops.storage.s3 import S3Storage

        return S3Storage(url, s3)
    if url.startswith("file://") or url.startswith("/"):
        from chainlens_ops.storage.local import LocalStorage

        return LocalStorage(url)
    raise UsageError(
        f"repository {url!r} is not a file:///absolute/path, /absolute/path or s3://bucket/prefix"
    )


def __getattr__(name: str) -> object:
    if name == "Storage":
        from chainlens_ops.storage.protocol import Storage

        return Storage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
