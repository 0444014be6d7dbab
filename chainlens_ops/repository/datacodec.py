"""Streaming a backup object into the repository, and reading it back checked.

    PgStream (pg_dump / pg_basebackup stdout)  ->  zstd (as it streams)  ->  sha256+size
        ->  BackupStore.put (repo.backups: the codec door underneath)

One chunk at a time end to end: memory stays flat whatever the database's size (S3
holds one multipart part). If the process fails, even after its last byte, PgStream
raises from its final read, the put aborts (temp file removed, multipart upload
aborted), and nothing is published under the key.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from typing import BinaryIO

import zstandard

from chainlens_ops.backup.manifest import BackupObject
from chainlens_ops.core.crashpoints import crash_point
from chainlens_ops.core.errors import OperationFailed
from chainlens_ops.storage import NotFound

TYPE_CHECKING = False
if TYPE_CHECKING:
    from chainlens_ops.repository.stores import BackupStore

# Logical dumps (their level is `[backup] zstd_level`, default config.DEFAULT_ZSTD_LEVEL)
# are compressed with a 32 MB window instead of the 4-8 MB of zstd's levels: a database
# repeats values across far-apart rows (the ChainLens data: a pool of 50,000 user UUIDs
# in every month of events), and the window is what finds them again (0.84x of
# `pg_dump -Z9` at level 10 instead of 0.86x; bench/README.md has the measurements).
# Two workers on 4 MB jobs (each with 8 MB of the data before it) keep zstd's memory
# near 70 MB, so a backup to S3 stays under 200 MB. Base backups are pages, much of
# them free space, where level 3 (pgBackRest's default) compresses nearly as well as
# any level, at several times the speed.
LOGICAL_WINDOW_LOG = 25
ZSTD_JOB_SIZE = 4 * 1024 * 1024
ZSTD_LEVEL_BASE = 3
ZSTD_THREADS = 2  # compression overlaps with pg_dump's own work; S3 uploads block anyway
READ_SIZE = 1024 * 1024
CRASH_AFTER_STORED = 9 * READ_SIZE  # where the `backup-mid-upload` crash point is

Progress = Callable[[int], None]
Tap = Callable[[bytes], None]  # sees every byte of the source on its way


class CorruptBackupObject(OperationFailed):
    """An object of a backup does not match its manifest (size, checksum, content)."""


class _Counting(io.RawIOBase):
    """Passes reads through, counting bytes and hashing them (sha256, unless `hashed`
    is False: the raw side of a compressor needs only its size, and hashing it would
    cost a second of CPU per 500 MB)."""

    def __init__(
        self,
        source: BinaryIO,
        progress: Progress | None = None,
        tap: Tap | None = None,
        *,
        hashed: bool = True,
    ) -> None:
        super().__init__()
        self._source = source
        self._progress = progress
        self._tap = tap
        self.size = 0
        self.digest = hashlib.sha256()
        self._hashed = hashed

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        """Direct, without RawIOBase's buffer and copy: S3 asks for 8 MB parts."""
        if size is None or size < 0:
            return self.readall()
        data = self._source.read(size)
        if data:
            self.size += len(data)
            if self._hashed:
                self.digest.update(data)
                if self.size > CRASH_AFTER_STORED:
                    # Past the first S3 part (uploaded) and 9 MiB of a local temp file.
                    crash_point("backup-mid-upload")
            if self._tap is not None:
                self._tap(data)
            if self._progress is not None:
                self._progress(len(data))
        return data

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def store_compressed(
    store: BackupStore,
    key: str,
    source: BinaryIO,
    *,
    level: int,
    window_log: int | None = None,
    threads: int = ZSTD_THREADS,
    progress: Progress | None = None,
    tap: Tap | None = None,
) -> BackupObject:
    """Compress `source` with zstd into `key`; the object's size and sha256 as stored.
    `window_log`: a longer window than `level`'s own (see LOGICAL_WINDOW_LOG)."""
    raw = _Counting(source, progress, tap, hashed=False)
    compressor = zstandard.ZstdCompressor(compression_params=_params(level, window_log, threads))
    reader = compressor.stream_reader(raw, read_size=READ_SIZE, closefd=False)  # type: ignore[arg-type]
    with reader as compressed:
        stored = _Counting(compressed)
        info = store.put(key, stored, if_absent=True)  # type: ignore[arg-type]
    if info.size != stored.size:
        raise OperationFailed(f"{key}: stored {info.size} bytes, sent {stored.size}")
    return BackupObject(key=key, size=stored.size, sha256=stored.digest.hexdigest(),
                        raw_size=raw.size)  # fmt: skip


def store_encoded(store: BackupStore, key: str, source: BinaryIO) -> BackupObject:
    """Store `source`, already zstd frames (a bundle's, backup.files), as it is: the
    object's size and sha256 as stored (raw_size is the caller's to fill in)."""
    stored = _Counting(source)
    info = store.put(key, stored, if_absent=True)  # type: ignore[arg-type]
    if info.size != stored.size:
        raise OperationFailed(f"{key}: stored {info.size} bytes, sent {stored.size}")
    return BackupObject(key=key, size=stored.size, sha256=stored.digest.hexdigest())


def _params(
    level: int, window_log: int | None, threads: int
) -> zstandard.ZstdCompressionParameters:
    extra: dict[str, int] = {}
    if window_log is not None:
        # The job size is set because zstd's default is 4x the window (a 128 MB job
        # would leave one worker idle for most of a dump and hold 128 MB more).
        extra = {"window_log": window_log, "job_size": ZSTD_JOB_SIZE if threads else 0}
    return zstandard.ZstdCompressionParameters.from_level(
        level, threads=threads, write_checksum=True, **extra
    )


class CheckedReader(io.RawIOBase):
    """An object read back from the repository, decompressed (or, with `decompress`
    False, its stored zstd frames as they are, for a reader that decompresses only the
    frames it needs); the final read raises CorruptBackupObject if the stored bytes do
    not match the manifest's size and sha256 (or zstd finds the frame damaged)."""

    def __init__(self, store: BackupStore, obj: BackupObject, *, decompress: bool = True) -> None:
        super().__init__()
        self.obj = obj
        try:
            self._stored = store.open(obj.key)
        except NotFound:
            raise CorruptBackupObject(f"{obj.key} is missing from the repository") from None
        self._counting = _Counting(self._stored)
        self._zstd: BinaryIO = self._counting  # type: ignore[assignment]
        if decompress:
            self._zstd = zstandard.ZstdDecompressor().stream_reader(
                self._counting,  # type: ignore[arg-type]
                read_size=READ_SIZE,
                read_across_frames=True,
            )
        self._decompress = decompress
        self.raw_size = 0
        self._done = False
        self._error: CorruptBackupObject | None = None

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        """Direct, without RawIOBase's buffer and copy (bundles read small headers)."""
        if size is None or size < 0:
            return self.readall()
        if self._error is not None:
            raise self._error  # a retried read must never look like a clean end
        if self._done:
            return b""
        try:
            data = self._zstd.read(size)
            if not data:
                self._check()
        except zstandard.ZstdError as exc:
            self._error = CorruptBackupObject(f"{self.obj.key} is damaged: zstd: {exc}")
            raise self._error from None
        except CorruptBackupObject as exc:
            self._error = exc
            raise
        if data:
            self.raw_size += len(data)
            return data
        self._done = True
        return b""

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        """Read to the end (checking everything) without keeping the bytes."""
        buffer = bytearray(READ_SIZE)
        while self.readinto(buffer):
            pass

    def _check(self) -> None:
        # Bytes after the last frame would not be read by zstd: count them too.
        while self._counting.read(READ_SIZE):
            pass
        obj = self.obj
        if self._counting.size != obj.size:
            raise CorruptBackupObject(
                f"{obj.key} is {self._counting.size} bytes, the manifest says {obj.size}"
            )
        if self._counting.digest.hexdigest() != obj.sha256:
            raise CorruptBackupObject(f"{obj.key} does not match its sha256 in the manifest")
        if self._decompress and obj.raw_size and self.raw_size != obj.raw_size:
            raise CorruptBackupObject(
                f"{obj.key} decompresses to {self.raw_size} bytes, the manifest says {obj.raw_size}"
            )

    def close(self) -> None:
        if not self.closed:
            try:
                if self._decompress:
                    self._zstd.close()
                self._stored.close()
            finally:
                super().close()
