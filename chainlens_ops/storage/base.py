"""What every storage backend shares: its errors and the listing entry.

Apart from `chainlens_ops.storage` (the factory that picks a backend by URL), so the
backends import these without importing the factory that imports them.
"""

from __future__ import annotations

from chainlens_ops.core.errors import EXIT_CONFIG, EXIT_USAGE, OperationFailed
from chainlens_ops.core.record import record


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
