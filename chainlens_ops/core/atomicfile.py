"""One helper writes a file atomically, for every writer (storage, spool, fetch).

    temp file in the destination folder -> fill -> [fsync] -> rename or link -> [fsync folder]

A reader sees the whole file or none; a process killed at any point leaves at most a
`.NAME.<pid>-<random>.tmp` file (which `LocalStorage.remove_stale_temp` removes), never a
partial file under the final name. The caller says what durability it needs:

- `durable=True`: success means the bytes and the directory entry survive an OS crash.
  With `exclusive=True` (publish by `link`, which fails if the name exists) an existing
  file is fsynced, and its folder too, before `FileExistsError` is raised: "already
  there" is an answer only once the stored copy is itself durable (a writer killed
  between its link and its folder fsync leaves an entry that may not survive a crash).
- `durable=False`: for caches (spool records, files handed to PostgreSQL's recovery,
  which fsyncs what it keeps): no fsync at all.

Named crash points (chainlens_ops.core.crashpoints): `after-temp-write`, `after-link`
(published, folder not yet fsynced), `exists-before-sync` (an exclusive write found the
name taken, before syncing it).

On the `wal push` path: imports only `os`.
"""

from __future__ import annotations

import os

from chainlens_ops.core.crashpoints import crash_point

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    T = TypeVar("T")

TEMP_SUFFIX = ".tmp"
FILE_MODE = 0o600


def temp_name(path: str) -> str:
    folder, base = os.path.split(path)
    return os.path.join(folder, f".{base}.{os.getpid()}-{os.urandom(6).hex()}{TEMP_SUFFIX}")


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def temp_writer_gone(name: str) -> bool:
    """The process that wrote temp file `name` (its pid is in the name, see `temp_name`)
    no longer exists on this host: the write can never be published. A pid that is alive
    (ours, or reused by another process) or a name without one counts as still writing."""
    try:
        pid = int(name[: -len(TEMP_SUFFIX)].rsplit(".", 1)[1].split("-", 1)[0])
    except (IndexError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # alive, and someone else's (EPERM)
    return False


def write_atomic(
    path: str,
    fill: Callable[[int], T],
    *,
    durable: bool = True,
    exclusive: bool = False,
    mode: int = FILE_MODE,
) -> tuple[T, os.stat_result]:
    """Write `path` through `fill(fd)`; returns what `fill` returned and the file's stat.

    Errors from `fill` and from the file system propagate (OSError) after the temp file
    is removed; `FileExistsError` for `exclusive=True` when the name is taken (then the
    existing file is durable when `durable=True`).
    """
    folder = os.path.dirname(path)
    tmp = temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            if mode != FILE_MODE:
                os.fchmod(fd, mode)  # exactly `mode`, whatever the umask
            value = fill(fd)
            if durable:
                os.fsync(fd)
            info = os.fstat(fd)
        finally:
            os.close(fd)
        crash_point("after-temp-write")
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                crash_point("exists-before-sync")
                if durable:
                    fsync_path(path)
                    fsync_dir(folder)
                raise
        else:
            os.replace(tmp, path)
            tmp = ""
        crash_point("after-link")
        if durable:
            fsync_dir(folder)
    finally:
        if tmp:
            unlink_quietly(tmp)
    return value, info


def write_bytes_atomic(
    path: str, data: bytes, *, durable: bool = True, mode: int = FILE_MODE
) -> None:
    def fill(fd: int) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    write_atomic(path, fill, durable=durable, mode=mode)


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink_quietly(path: str) -> None:
    # A plain try: suppress() would import contextlib on the `wal push` path.
    try:  # noqa: SIM105
        os.unlink(path)
    except OSError:
        pass
