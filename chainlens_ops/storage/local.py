"""The local-folder backend: one file per key under the repository folder.

This module is on the `wal push` hot path (one process per WAL segment), so it imports
only the standard library's cheapest modules: no boto3, psycopg or Typer.

Writes follow the crash-safe recipe: a dot-named temp file in the destination folder,
written in chunks, fsynced, then published with `os.replace` (or `os.link` for
`if_absent`, which fails atomically if the name exists), and the folder fsynced. A
process killed at any point leaves at most a `.NAME.<random>.tmp` file, which `list`
never shows and `remove_stale_temp` removes; never a partial object under its key.
"""

from __future__ import annotations

import builtins
import os
import stat as st
import time

from chainlens_ops.core.atomicfile import fsync_dir, is_temp_name, temp_writer_gone, write_atomic
from chainlens_ops.core.crashpoints import crash_point
from chainlens_ops.core.errors import UsageError
from chainlens_ops.storage.base import (
    AlreadyExists,
    NotFound,
    ObjectInfo,
    RepositoryNotOurs,
    StorageError,
)
from chainlens_ops.storage.keys import check_key, check_prefix

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import BinaryIO

CHUNK = 1024 * 1024
STALE_TEMP_S = 3600.0  # older than any live push could be
SWEEP_EVERY_S = 600.0  # `wal push` sweeps stale temp files at most this often
DIR_MODE = 0o700
FILE_MODE = 0o600


class LocalStorage:
    """A repository in a local (or mounted) folder.

    The constructor touches nothing on disk. The first write (`put`, `delete`) calls
    `check_writable()`, which refuses a root-run tool on a folder owned by another user
    and creates the folder (0700) if it does not exist. Reads need no check. Safe to use
    from several threads: each call works on its own file descriptors.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.root = _path_from_url(url)
        self._writable = False

    def __repr__(self) -> str:
        return f"LocalStorage({self.url!r})"

    # -- the protocol -----------------------------------------------------------------

    def put(self, key: str, stream: BinaryIO, *, if_absent: bool = False) -> ObjectInfo:
        """Errors raised by `stream` itself propagate unchanged (after the cleanup)."""
        check_key(key)
        self.check_writable()
        final = self._path(key)
        self._make_dirs(os.path.dirname(final))
        try:
            _, info = write_atomic(
                final, lambda fd: self._copy_to_fd(key, stream, fd), exclusive=if_absent
            )
        except _SourceError as exc:
            raise exc.original from None
        except FileExistsError:
            # write_atomic has fsynced the existing file and its folder: "already there"
            # is an answer only once the stored copy is durable.
            raise AlreadyExists(f"{key} already exists in repository {self.root}") from None
        except OSError as exc:
            raise self._error("write", key, exc) from exc
        return ObjectInfo(key=key, size=info.st_size, mtime=info.st_mtime)

    def open(self, key: str) -> BinaryIO:
        check_key(key)
        path = self._path(key)
        try:
            return open(path, "rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(f"{key} not found in repository {self.root}") from None
        except OSError as exc:
            raise self._error("read", key, exc) from exc

    def stat(self, key: str) -> ObjectInfo:
        check_key(key)
        try:
            info = os.stat(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"{key} not found in repository {self.root}") from None
        except OSError as exc:
            raise self._error("stat", key, exc) from exc
        if not st.S_ISREG(info.st_mode):
            raise NotFound(f"{key} not found in repository {self.root} (not a file)")
        return ObjectInfo(key=key, size=info.st_size, mtime=info.st_mtime)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        folder_key, _, rest = prefix.rpartition("/")
        folder = self._path(folder_key) if folder_key else self.root
        base = f"{folder_key}/" if folder_key else ""
        try:
            yield from self._walk(folder, base, rest)
        except OSError as exc:
            raise self._error("list", prefix or "/", exc) from exc

    def delete(self, key: str) -> None:
        check_key(key)
        self.check_writable()
        path = self._path(key)
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError):
            return
        except IsADirectoryError:
            return  # a folder is not an object: nothing to delete
        except OSError as exc:
            raise self._error("delete", key, exc) from exc
        try:
            fsync_dir(os.path.dirname(path))
        except OSError as exc:
            raise self._error("delete", key, exc) from exc

    @classmethod
    def from_settings(cls, url: str, _settings: object = None) -> LocalStorage:
        return cls(url)

    def exists(self) -> bool:
        return os.path.isdir(self.root)

    def stale_leftovers(self) -> tuple[str, ...]:
        return self.stale_temp()

    def remove_stale_leftovers(self) -> int:
        return self.remove_stale_temp()

    def housekeep_now_and_then(self, stamp: str | None) -> None:
        self.sweep_stale_temp_now_and_then(stamp)

    # -- beyond the protocol ----------------------------------------------------------

    def check_writable(self) -> None:
        """Make sure this process may write the repository; create it (0700) if missing.

        Running as root on a folder that belongs to another user is refused: the files we
        would create (0600, root's) could not be read by the database's OS user, whose
        `archive_command`/`restore_command` use the same repository.
        """
        if self._writable:
            return
        try:
            info = os.stat(self.root)
        except FileNotFoundError:
            self._make_dirs(self.root)
            self._writable = True
            return
        except OSError as exc:
            raise StorageError(f"repository {self.root}: cannot stat: {_why(exc)}") from exc
        if not st.S_ISDIR(info.st_mode):
            raise StorageError(f"repository {self.root} exists and is not a folder")
        euid = os.geteuid()
        if euid == 0 and info.st_uid != 0:
            owner = user_name(info.st_uid)
            raise RepositoryNotOurs(
                f"repository {self.root} is owned by {owner}; run chainlens-ops as that user "
                f"(e.g. sudo -u {owner} chainlens-ops ...)"
            )
        if euid != 0 and not os.access(self.root, os.W_OK | os.X_OK):
            if _read_only_fs(self.root):
                raise StorageError(f"repository {self.root} is on a read-only file system")
            raise RepositoryNotOurs(
                f"repository {self.root} is not writable by {user_name(euid)} "
                f"(owned by {user_name(info.st_uid)}); run chainlens-ops as its owner"
            )
        self._writable = True

    def remove_stale_temp(self, older_than_s: float = STALE_TEMP_S) -> int:
        """Remove temp files left by killed writers, older than `older_than_s` seconds.

        The age guard keeps a concurrent writer's live temp file. Returns how many were
        removed. Not part of the protocol: S3 has no such leftovers (abandoned multipart
        uploads are a bucket lifecycle rule's job).
        """
        stale = self.stale_temp(older_than_s)
        if stale:
            self.check_writable()
        removed = 0
        for path in stale:
            try:
                os.unlink(path)
                removed += 1
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StorageError(f"cannot remove temp file {path}: {_why(exc)}") from exc
        return removed

    def stale_temp(self, older_than_s: float = STALE_TEMP_S) -> tuple[str, ...]:
        """Temp files left by killed writers, older than `older_than_s` seconds."""
        cutoff = time.time() - older_than_s
        found: builtins.list[str] = []
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if is_temp_name(name):
                    path = os.path.join(dirpath, name)
                    try:
                        if os.lstat(path).st_mtime < cutoff:
                            found.append(path)
                    except FileNotFoundError:
                        continue
        return tuple(found)

    def remove_incomplete(
        self, prefix: str, select: Callable[[ObjectInfo], bool], *, dry_run: bool = False
    ) -> builtins.list[ObjectInfo]:
        """Writes that never published under `prefix` (temp files of killed writers), and
        folders left empty, that `select` picks, removed (unless `dry_run`). Each is
        given as the key it was writing (a folder: its key with a trailing '/'), its size
        and its last change; a temp file whose writer process is gone from this host is
        given as changed at time 0 (abandoned for good, whatever its age: a command killed
        mid-write, e.g. while renewing the repository lock). The same method on every
        backend (S3: multipart uploads)."""
        check_prefix(prefix)
        folder_key = prefix.rpartition("/")[0]
        top = self._path(folder_key) if folder_key else self.root
        chosen: builtins.list[ObjectInfo] = []
        for dirpath, _dirs, files in os.walk(top, topdown=False):
            rel = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            base = "" if rel == "." else rel + "/"
            for name in files:
                if not is_temp_name(name):
                    continue
                key = base + name[1:].rsplit(".", 2)[0]  # .NAME.<pid>-<random>.tmp -> NAME
                path = os.path.join(dirpath, name)
                try:
                    info = os.lstat(path)
                except FileNotFoundError:
                    continue
                mtime = 0.0 if temp_writer_gone(name) else info.st_mtime
                found = ObjectInfo(key=key, size=info.st_size, mtime=mtime)
                if key.startswith(prefix) and select(found):
                    chosen.append(found)
                    if not dry_run:
                        self.check_writable()
                        try:  # noqa: SIM105 (contextlib is not imported on `wal push`)
                            os.unlink(path)
                        except FileNotFoundError:
                            pass
            if base.startswith(prefix) and base and not dry_run:
                try:
                    mtime = os.lstat(dirpath).st_mtime
                    if not os.listdir(dirpath) and select(ObjectInfo(base, 0, mtime)):
                        os.rmdir(dirpath)
                except OSError:
                    continue  # written meanwhile, or gone: not ours to insist on
        return chosen

    def sweep_stale_temp_now_and_then(self, stamp: str | None) -> None:
        """Called by `wal push` after each success: remove temp files of killed writers
        at most once every SWEEP_EVERY_S seconds, as noted by the `stamp` file (kept in
        the spool, not the repository, which holds nothing but objects; one stat
        otherwise), or, with no stamp, on about one push in 256. Never fails the caller:
        a failed sweep is retried later."""
        try:
            if stamp is None:
                if os.urandom(1) != b"\0":
                    return
            else:
                try:
                    if os.stat(stamp).st_mtime > time.time() - SWEEP_EVERY_S:
                        return
                except FileNotFoundError:
                    pass
                with open(stamp, "wb"):
                    pass
            self.remove_stale_temp()
        except (OSError, StorageError):
            return

    # -- internals --------------------------------------------------------------------

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *key.split("/"))

    def _walk(self, folder: str, base: str, rest: str) -> Iterator[ObjectInfo]:
        """Objects under `folder` (whose keys start with `base`) in key order.

        Sorting each folder's entries by name, with '/' appended to sub-folders, yields
        keys in plain string order (what S3 returns), as every key below a sub-folder
        shares that sub-folder's 'name/' prefix. Only names starting with `rest` are kept.
        """
        try:
            with os.scandir(folder) as it:
                entries = []
                for entry in it:
                    if entry.name.startswith("."):
                        continue  # temp files (and anything else hidden) are not objects
                    is_dir = entry.is_dir(follow_symlinks=False)
                    sort_name = entry.name + "/" if is_dir else entry.name
                    if sort_name.startswith(rest):
                        entries.append((sort_name, is_dir, entry))
        except (FileNotFoundError, NotADirectoryError):
            return
        entries.sort(key=lambda item: item[0])
        for sort_name, is_dir, entry in entries:
            if is_dir:
                yield from self._walk(entry.path, base + sort_name, "")
                continue
            try:
                info = entry.stat()
            except FileNotFoundError:
                continue  # deleted while we listed
            if st.S_ISREG(info.st_mode):
                yield ObjectInfo(key=base + entry.name, size=info.st_size, mtime=info.st_mtime)

    @staticmethod
    def _copy_to_fd(key: str, stream: BinaryIO, fd: int) -> None:
        """Copy in fixed chunks, so memory stays flat whatever the object's size. A failing
        source is told apart from a failing disk (wrapped in _SourceError)."""
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        readinto = getattr(stream, "readinto", None)
        while True:
            try:
                if readinto is not None:
                    n = readinto(view)
                    chunk: bytes | memoryview = view[: n or 0]
                else:
                    chunk = stream.read(CHUNK)
            except NotImplementedError:
                readinto = None  # a RawIOBase that only overrides read()
                continue
            except OSError as exc:
                raise _SourceError(exc) from exc
            if not chunk:
                return
            while chunk:
                written = os.write(fd, chunk)
                chunk = chunk[written:]
            crash_point("mid-upload")

    def _make_dirs(self, folder: str) -> None:
        """Create `folder` and missing parents (0700), fsyncing each new entry's parent."""
        missing: list[str] = []
        path = folder
        while not os.path.isdir(path):
            missing.append(path)
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent
        for path in reversed(missing):
            try:
                os.mkdir(path, DIR_MODE)
            except FileExistsError:
                if not os.path.isdir(path):
                    raise StorageError(
                        f"cannot create folder {path}: a file has that name"
                    ) from None
                continue  # a concurrent writer made it
            except OSError as exc:
                raise StorageError(f"cannot create folder {path}: {_why(exc)}") from exc
            try:
                fsync_dir(os.path.dirname(path))
            except OSError as exc:
                raise StorageError(f"cannot sync folder of {path}: {_why(exc)}") from exc

    def _error(self, action: str, key: str, exc: OSError) -> StorageError:
        return StorageError(f"cannot {action} {key} in repository {self.root}: {_why(exc)}")


class _SourceError(OSError):
    """The stream being stored failed (not the repository)."""

    def __init__(self, original: OSError) -> None:
        super().__init__(str(original))
        self.original = original


def _path_from_url(url: str) -> str:
    path = url
    if url.startswith("file://"):
        path = url[len("file://") :]
        if path.startswith("localhost/"):
            path = path[len("localhost") :]
        if "%" in path:
            from urllib.parse import unquote

            path = unquote(path)
    if not path.startswith("/"):
        raise UsageError(f"repository {url!r} is not an absolute path (file:///abs/path)")
    return os.path.normpath(path)


def user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


_ERRNO_MEANING = {
    30: "the repository is on a read-only file system (remount it read-write)",  # EROFS
    28: "no space left on the repository's device (free space or grow the volume)",  # ENOSPC
    122: "disk quota exceeded on the repository's device",  # EDQUOT
    13: "permission denied (check the folder's owner and mode)",  # EACCES
    1: "operation not permitted (check the folder's owner and mode)",  # EPERM
}


def _why(exc: OSError) -> str:
    """What is actually wrong, from the errno (not a guess from ownership)."""
    meaning = _ERRNO_MEANING.get(exc.errno or 0)
    return meaning or exc.strerror or str(exc)


def _read_only_fs(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
