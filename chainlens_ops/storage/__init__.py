"""Repository storage: one small protocol, one module per backend, chosen by URL scheme
(`BACKENDS`; nothing outside this package asks which backend it talks to).

    file:///abs/path  or  /abs/path   -> chainlens_ops.storage.local.LocalStorage
    s3://bucket/prefix                -> chainlens_ops.storage.s3.S3Storage (boto3, lazily)

Keys are relative, '/'-separated paths ("wal/0000000100000000/...."). Every backend
raises the same NotFound for a missing key and AlreadyExists for a refused
conditional put, and returns from `put` only once the bytes are durable.

A backend with settings of its own has a table in the config file named in its entry
(`[s3]`, and the variables overriding it); its module checks and parses it
(`SETTINGS_KEYS`, `check_settings`, `parse_settings`), only when the file has that table
or a variable is set, and the parsed value reaches its class's
`from_settings(url, settings)`: generic code carries it as an opaque object.
"""

from __future__ import annotations

from chainlens_ops.core.errors import UsageError
from chainlens_ops.core.record import record
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
    from collections.abc import Mapping
    from types import ModuleType

    from chainlens_ops.storage.protocol import Storage

__all__ = ["BACKENDS", "AlreadyExists", "Backend", "InvalidKey", "NotFound", "ObjectInfo",
           "RepositoryNotOurs", "StorageError", "StorageUnreachable", "backend_for",
           "check_url", "is_remote", "open_storage", "same_location"]  # fmt: skip


@record
class Backend:
    """A storage backend, registered by URL scheme. What it declares is known without
    importing it (boto3 costs ~0.3 s; `wal push` decides its look-ahead before that)."""

    scheme: str  # "file" for file:// and bare absolute paths
    module: str  # chainlens_ops.storage.<module>, imported on first use
    cls: str
    remote: bool  # round trips dominate: WAL look-ahead and prefetch pay off by default
    housekeeping: tuple[str, ...]  # leftovers of killed writers it can find and remove
    form: str  # how its URLs look, for messages
    settings_table: str = ""  # its table in the config file, parsed by its module
    settings_env: tuple[str, ...] = ()  # variables that override that table's keys

    def load(self) -> ModuleType:
        """Its module (for the S3 backend, without boto3: that comes with a client)."""
        # __import__, not importlib (~0.6 ms more of a `wal push`).
        return __import__(f"chainlens_ops.storage.{self.module}", fromlist=[self.cls])

    def settings_from(self, tables: Mapping[str, object]) -> object | None:
        """Its parsed settings among `tables` (Settings.storage), None for its defaults."""
        return tables.get(self.settings_table) if self.settings_table else None


# Adding a backend: one module with the protocol's methods (and, if it has settings, its
# table here and SETTINGS_KEYS/check_settings/parse_settings there), one entry here, and
# one in the contract suite's list (tests/integration/test_storage_contract.py).
BACKENDS: dict[str, Backend] = {
    "file": Backend("file", "local", "LocalStorage", False, ("stale temp files",),
                    "file:///absolute/path, /absolute/path"),
    "s3": Backend("s3", "s3", "S3Storage", True, ("stale multipart uploads",),
                  "s3://bucket/prefix", "s3", ("CHAINLENS_S3_SSE",)),
}  # fmt: skip


def backend_for(url: str) -> Backend:
    """The backend registered for `url`'s scheme; UsageError for any other URL."""
    scheme, sep, _ = url.partition("://")
    if not sep and url.startswith("/"):
        scheme = "file"
    backend = BACKENDS.get(scheme) if (sep or scheme == "file") else None
    if backend is None:
        forms = " or ".join(b.form for b in BACKENDS.values())
        raise UsageError(f"repository {url!r} is not a {forms}")
    return backend


def check_url(url: str) -> str:
    backend_for(url)
    return url


def is_remote(url: str) -> bool:
    return backend_for(url).remote


def same_location(a: str, b: str) -> bool:
    """Whether two repository URLs name the same place (`/x/` and `file:///x`)."""

    def normal(url: str) -> str:
        if url.startswith("/") or url.startswith("file://"):
            import os.path

            return "file://" + os.path.normpath(url.removeprefix("file://"))
        return url.rstrip("/")

    return normal(a) == normal(b)


def open_storage(url: str, settings: object | None = None) -> Storage:
    """The backend for `url`, its module imported now (boto3 only for s3:// URLs), with
    its parsed settings (`Backend.settings_from`; None: its defaults)."""
    backend = backend_for(url)
    storage: Storage = getattr(backend.load(), backend.cls).from_settings(url, settings)
    return storage


def __getattr__(name: str) -> object:
    if name == "Storage":
        from chainlens_ops.storage.protocol import Storage

        return Storage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
