"""Whole-file replacement: a reader sees the old file or the new one, never a mix.

Temp file in the same folder, write, (fsync), `os.replace`, (fsync the folder); the temp
file is removed on error. Imports only `os`: the `wal push` path uses it.
"""

import os


def write_file_atomic(path: str, data: bytes, *, mode: int = 0o644, durable: bool = True) -> None:
    """Replace `path` with `data`. `durable`: the new content survives a crash once this
    returns (file and folder fsynced); without it, a crash may leave the old content."""
    folder, base = os.path.split(path)
    tmp = os.path.join(folder or ".", f".{base}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # exactly `mode`, whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:  # noqa: SIM105 - contextlib is not imported on the `wal push` path
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        dir_fd = os.open(folder or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
