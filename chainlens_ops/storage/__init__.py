"""Repository storage: one small protocol, one module per backend, chosen by URL scheme.

    file:///abs/path  or  /abs/path   -> chainlens_ops.storage.local.LocalStorage
    s3://bucket/prefix                -> chainlens_ops.storage.s3.S3Storage (boto3, lazily)

Keys are relative, '/'-separated paths ("wal/0000000100000000/...."). Every backend
raises the same NotFound for a missing key and AlreadyExists for a refused
conditional put, and returns from `put` only once the bytes are durable.
"""

from __future__ import annotations

from chainlens_ops.errors import EXIT_CONFIG, EXIT_USAGE, OperationFailed, UsageError
from chainlens_ops.record import record

# On the `wal push` path: the protocol (which needs `typing`, ~13 ms to import) lives in
# chainlens_ops.storage.protocol and is loaded here only when someone asks for it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from chainlens_ops.config import S3Settings
    from chainlens_ops.storage.protocol import Storage


class StorageError(OperationFailed):
    """The repository could not be read or written (after retries)."""


class StorageUnreachable(StorageError):
    """The repository cannot be reached or refuses our credentials (exit 3, as for any
    configuration or connection problem; `wal fetch` still answers 255)."""

    exit_code = EXIT_CONFIG


class RepositoryNotOurs(StorageError):
    """This OS user must not write the repository (root on the database user's folder, or
    a user without write access): the wrong user for the command, exit 2 like every
    other wrong-user refusal (restore as root, ...)."""

    exit_code = EXIT_USAGE


class NotFound(StorageError):
    """The key does not exist: a confirmed absence, not a failure to look."""


class AlreadyExists(StorageError):
    """A conditional put (`if_absent=True`) found the key already there; the stored copy
    is durable (part of the contract: "already there" is an answer PostgreSQL acts on)."""


class InvalidKey(StorageError, ValueError):
    """A key or prefix that is not a relative '/'-separated path (a caller's mistake)."""

    exit_code = EXIT_USAGE


@record
class ObjectInfo:
    key: str
    size: int
    mtime: float  # seconds since the epoch


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
