"""Small stream helpers shared by the storage backends and the WAL object format.

Standard library only: it is on the `wal push`/`wal fetch` path.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO


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
