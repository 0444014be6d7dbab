"""Small stream helpers shared by the storage backends and the WAL object format.

Standard library only: it is on the `wal push`/`wal fetch` path.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO


def read_full(stream: BinaryIO, size: int) -> bytes:
    """Up to `size` bytes; fewer only at the end of the stream (pipes, sockets and
    decompressors return short reads)."""
    data = stream.read(size)
    if not data or len(data) == size:
        return data or b""
    pieces = [data]
    got = len(data)
    while got < size:
        more = stream.read(size - got)
        if not more:
            break
        pieces.append(more)
        got += len(more)
    return b"".join(pieces)


def readinto_full(stream: Any, buffer: bytearray | memoryview) -> int:
    """Fill `buffer` from `stream`; how many bytes, fewer only at the end of the stream.
    The buffer is the caller's to reuse: no new object per read (read_full's form makes
    one per call, and joins short reads into another)."""
    view = memoryview(buffer).cast("B")
    got = 0
    readinto = getattr(stream, "readinto", None)
    while got < len(view):
        if readinto is not None:
            n = readinto(view[got:]) or 0
        else:
            more = stream.read(len(view) - got)
            n = len(more)
            view[got : got + n] = more
        if not n:
            break
        got += n
    return got
