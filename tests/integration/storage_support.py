"""Streams for storage tests: big objects without holding them in memory."""

from __future__ import annotations

import hashlib
import io
import random
import time
from typing import BinaryIO

MiB = 1024 * 1024


class PatternStream(io.RawIOBase):
    """`size` pseudo-random bytes made on the fly (seeded), in reads of at most `max_read`.

    A small `max_read` mimics a pipe's short reads. `fail_after` raises OSError once that
    many bytes were served, to test a source that breaks mid-upload. `pause` sleeps that
    long before each read: a slow source, so a writer can be killed mid-write.
    """

    def __init__(
        self,
        size: int,
        seed: int = 0,
        *,
        max_read: int = MiB,
        fail_after: int | None = None,
        pause: float = 0.0,
    ) -> None:
        super().__init__()
        self.size = size
        self.pos = 0
        self.max_read = max_read
        self.fail_after = fail_after
        self.pause = pause
        rng = random.Random(seed)
        self._block = rng.randbytes(MiB + 7)  # odd length: chunks never line up with reads

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self.fail_after is not None and self.pos >= self.fail_after:
            raise OSError("source broke")
        n = min(len(buffer), self.size - self.pos, self.max_read)
        if n <= 0:
            return 0
        if self.pause:
            time.sleep(self.pause)
        start = self.pos % len(self._block)
        head = self._block[start : start + n]
        buffer[: len(head)] = head
        if len(head) < n:  # wrap around (n <= 1 MiB < the block's length)
            buffer[len(head) : n] = self._block[: n - len(head)]
        self.pos += n
        return n


def pattern_digest(size: int, seed: int = 0) -> str:
    return stream_digest(PatternStream(size, seed))


def stream_digest(stream: BinaryIO | io.RawIOBase, chunk: int = MiB) -> str:
    digest = hashlib.sha256()
    while True:
        data = stream.read(chunk)
        if not data:
            return digest.hexdigest()
        digest.update(data)
