"""The format of a WAL object in the repository: a small envelope around one zstd frame.

    header   magic b"CLOPSWAL" | version u8 (1) | compression u8 (1 = zstd) |
             name length u16 | source size u64 | name (ASCII)
    body     one zstd frame, with its content size and content checksum (XXH64) on
    trailer  size u64 of the uncompressed file | magic b"CLOPSEND"

All integers little-endian. The checksum is zstd's own, inside the frame: it can never
disagree with a separate file or metadata, both backends store identical bytes, and the
key stays the bare WAL file name, which the conditional put (`if_absent`) relies on.
Decoding refuses a frame without it, and zstd verifies it as it decompresses; the sizes
in header, frame and trailer guard against truncation, the name in the header against
an object stored (or spooled) under the wrong name.

No sha256 is computed while pushing: hashlib alone costs ~6 ms to import and
hashing a 16 MB segment ~10 ms, a third of pgBackRest's whole push. Where an exact
content identity is needed (is a pushed-again file the same as the stored one? is a
look-ahead upload still the file on disk?) `decode` and `file_digest` compute sha256 of
the uncompressed bytes.

Decoding streams, holding back the last bytes of the object as the trailer, so memory
stays flat whatever the segment size.

Standard library and zstandard only: this is on the `wal push`/`wal fetch` hot path.
"""

from __future__ import annotations

import io
import os
import stat as st
import struct
import sys

from chainlens_ops.core.errors import OperationFailed
from chainlens_ops.core.native import load_extension
from chainlens_ops.core.record import record
from chainlens_ops.core.streams import read_full, readinto_full
from chainlens_ops.repository.codec import CorruptObject as CorruptObject

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Iterator
    from types import ModuleType
    from typing import Any, BinaryIO

    import zstandard


def _load_zstandard() -> ModuleType:
    """python-zstandard's C backend, loaded without the package's `__init__`.

    That `__init__` only picks a backend, but imports `platform` and `typing` to do so:
    ~10 ms of the ~30 ms budget of a `wal push` (pgBackRest archives a 16 MB segment
    in about that). The backend module is the same object `import zstandard` would
    use; if anything about the layout differs, fall back to the normal import.
    """
    if "zstandard" in sys.modules:
        return sys.modules["zstandard"]
    try:
        return load_extension("zstandard.backend_c")
    except Exception:
        import zstandard as full

        return full


zstandard = _load_zstandard()  # the module itself, as typed above

MAGIC = b"CLOPSWAL"
END_MAGIC = b"CLOPSEND"
VERSION = 1
ZSTD = 1
_HEADER = struct.Struct("<8sBBHQ")
_TRAILER = struct.Struct("<Q8s")
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ZSTD_CHECKSUM_FLAG = 0x04  # Frame_Header_Descriptor bit 2: Content_Checksum_flag
TRAILER_SIZE = _TRAILER.size
CHUNK = 1024 * 1024
# A WAL file is compressed from its mapping in slices of MAPPED_SLICE, the first of
# BESIDE_SLICE when work runs beside it (`beside`): ~5 ms without the GIL, beside which
# an encrypted repository's cipher is loaded and its key unwrapped. Each slice's pages
# leave the process after it.
MAPPED_SLICE = CHUNK  # both whole pages (madvise)
BESIDE_SLICE = 8 * CHUNK
DEFAULT_LEVEL = 1  # measured: level 1 is ~as small as 3 on WAL and the fastest


@record
class Digest:
    """What identifies a WAL file's content."""

    size: int
    sha256: str  # hex


class EncodingReader(io.RawIOBase):
    """A readable stream of the encoded object for `src`, produced as it is read."""

    def __init__(
        self,
        src: BinaryIO,
        name: str,
        size: int,
        *,
        level: int = DEFAULT_LEVEL,
        beside: Callable[[], bool] | None = None,
    ) -> None:
        """`beside`: called right before the first compress call, to start work in a
        thread that runs while zstd holds no GIL (`wal push`: an encrypted repository's
        key, ~3 ms of loading OpenSSL and unwrapping it); it says whether it started
        any (then the first compress call is a long one)."""
        super().__init__()
        self._chunks = _encode(src, name, size, level, beside)
        self._pending = b""
        self._offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while self._offset >= len(self._pending):
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending, self._offset = chunk, 0
        n = min(len(view), len(self._pending) - self._offset)
        view[:n] = memoryview(self._pending)[self._offset : self._offset + n]  # no slice copy
        self._offset += n
        return n

    def read(self, size: int = -1) -> bytes:
        # Hand whole chunks to callers that ask for more: no copy through readinto.
        if size is not None and 0 <= size < len(self._pending) - self._offset:
            data = self._pending[self._offset : self._offset + size]
            self._offset += size
            return data
        if self._offset < len(self._pending):
            data = self._pending[self._offset :]
            self._pending, self._offset = b"", 0
            return data
        chunk = next(self._chunks, None)
        if chunk is None:
            return b""
        if size is not None and 0 <= size < len(chunk):
            self._pending, self._offset = chunk, size
            return chunk[:size]
        return chunk


def _encode(
    src: BinaryIO, name: str, size: int, level: int, beside: Callable[[], bool] | None
) -> Iterator[bytes]:
    raw_name = name.encode("ascii")
    yield _HEADER.pack(MAGIC, VERSION, ZSTD, len(raw_name), size) + raw_name
    compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)
    stream = compressor.compressobj(size=size)
    mapped = _mapped(src, size)
    # Nothing between `beside` and the first compress call releases the GIL.
    first = BESIDE_SLICE if beside is not None and beside() else MAPPED_SLICE
    if mapped is not None:
        yield from _compress_mapped(mapped, stream, first)
        total = os.fstat(src.fileno()).st_size
    else:
        total = yield from _compress_read(src, stream)
    if total != size:
        # zstd would also refuse the frame; say what happened in our words.
        raise OperationFailed(f"{name} changed size while it was read ({size} -> {total} bytes)")
    yield stream.flush()
    yield _TRAILER.pack(size, END_MAGIC)


def _mapped(src: BinaryIO, size: int) -> Any:
    """`src` mapped into memory (read-only), or None when it is not a regular file.

    zstd then reads the page cache itself: no copy of 16 MB into a buffer, and each
    compress call runs for milliseconds without the GIL, beside which an encrypted
    repository's key is prepared (`Sealer.prepare_in_background`). A file that shrank
    while mapped would raise SIGBUS: PostgreSQL never truncates a WAL file it archives
    (segments are complete and recycled by rename; history files are written once)."""
    if size <= 0:
        return None
    try:
        import mmap

        fd = src.fileno()
        if not st.S_ISREG(os.fstat(fd).st_mode):
            return None
        return mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return None


def _compress_mapped(mapped: Any, stream: Any, first: int) -> Iterator[bytes]:
    import mmap

    view = memoryview(mapped)
    try:
        offset, length = 0, first
        while offset < len(mapped):
            length = min(length, len(mapped) - offset)
            out = stream.compress(view[offset : offset + length])
            # Done with these pages: out of this process's memory (the page cache keeps
            # them), so its peak stays one slice whatever the segment size.
            mapped.madvise(mmap.MADV_DONTNEED, offset, length)
            offset, length = offset + length, MAPPED_SLICE
            if out:
                yield out
    finally:
        view.release()
        mapped.close()


def _compress_read(src: BinaryIO, stream: Any) -> Generator[bytes, None, int]:
    """Streams that are not files: read in chunks into one reused buffer (a fresh bytes
    object per chunk costs ~3 ms per 16 MB segment); returns how many bytes it read."""
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    total = 0
    while n := readinto_full(src, buffer):
        total += n
        out = stream.compress(view[:n])
        if out:
            yield out
    return total


def decode(
    src: BinaryIO, dst: BinaryIO | None, *, name: str, where: str = "", sha256: bool = True
) -> Digest:
    """Stream the object in `src` into `dst` (or nowhere), verifying it as it goes.

    CorruptObject if it is not our format, names another file, lacks zstd's content
    checksum or fails it. Returns the size and sha256 of the decoded file. `dst`
    receives unverified bytes: write to a temp file and publish it only on success.
    `sha256=False` (with a `dst`) skips the hash, leaving the digest's sha256 empty:
    zstd's checksum and the sizes already verify the object, and `wal fetch`, which
    PostgreSQL waits on for every segment it replays, needs no content identity.
    """

    label = where or name
    head = read_full(src, _HEADER.size)
    if len(head) < _HEADER.size:
        raise CorruptObject(f"{label}: object is truncated ({len(head)} bytes)")
    magic, version, compression, name_len, size = _HEADER.unpack(head)
    if magic != MAGIC:
        raise CorruptObject(f"{label}: not a chainlens-ops WAL object")
    if version != VERSION or compression != ZSTD:
        raise CorruptObject(f"{label}: unsupported object format {version}/{compression}")
    stored_name = read_full(src, name_len).decode("ascii", "replace")
    if stored_name != name:
        raise CorruptObject(f"{label}: object holds {stored_name!r}, not {name!r}")
    frame_start = read_full(src, 5)
    if frame_start[:4] != _ZSTD_MAGIC or len(frame_start) < 5:
        raise CorruptObject(f"{label}: compressed data is damaged (no zstd frame)")
    if not frame_start[4] & _ZSTD_CHECKSUM_FLAG:
        raise CorruptObject(f"{label}: zstd frame carries no content checksum")
    body = _HoldBack(src, TRAILER_SIZE, prefix=frame_start)
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(
            body,  # type: ignore[arg-type]
            read_size=CHUNK // 4,
        )
        if sha256 or dst is None:
            digest = _copy_hashing(reader, dst)
        else:
            digest = Digest(_copy(reader, dst), "")
        total = digest.size
        # Reach the end so the trailer is known; anything between frame and trailer
        # means the object was not written by us.
        extra = 0
        while more := body.read(CHUNK):
            extra += len(more)
        if extra:
            raise CorruptObject(f"{label}: unexpected bytes after the compressed data")
    except zstandard.ZstdError as exc:
        raise CorruptObject(f"{label}: compressed data is damaged ({exc})") from None
    trailer = body.tail
    if len(trailer) != TRAILER_SIZE:
        raise CorruptObject(f"{label}: object is truncated")
    trailer_size, end = _TRAILER.unpack(trailer)
    if end != END_MAGIC:
        raise CorruptObject(f"{label}: object is truncated or damaged (no trailer)")
    if not size == trailer_size == total:
        raise CorruptObject(
            f"{label}: size mismatch (header {size}, trailer {trailer_size}, "
            f"decompressed {total} bytes)"
        )
    return digest


def file_digest(path: str) -> Digest:
    """The size and sha256 of a local file, read in chunks."""
    with open(path, "rb", buffering=0) as fh:
        return _copy_hashing(fh, None)


def _copy(src: Any, dst: BinaryIO) -> int:
    total = 0
    while chunk := src.read(CHUNK):
        total += len(chunk)
        dst.write(chunk)
    return total


def _copy_hashing(src: Any, dst: BinaryIO | None) -> Digest:
    """Read `src` to its end in chunks, hashing (and copying to `dst`) as it goes."""
    import hashlib  # here, not at the top: pushing never hashes

    sha = hashlib.sha256()
    total = 0
    while chunk := src.read(CHUNK):
        total += len(chunk)
        sha.update(chunk)
        if dst is not None:
            dst.write(chunk)
    return Digest(total, sha.hexdigest())


class _HoldBack(io.RawIOBase):
    """Reads `src` but withholds its last `keep` bytes, which end up in `tail`."""

    def __init__(self, src: BinaryIO, keep: int, *, prefix: bytes = b"") -> None:
        super().__init__()
        self._src = src
        self._keep = keep
        self._buf = prefix
        self._eof = False

    @property
    def tail(self) -> bytes:
        return self._buf if self._eof else b""

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        want = CHUNK if size is None or size < 0 else size
        while not self._eof and len(self._buf) < want + self._keep:
            more = self._src.read(max(want, CHUNK // 4))
            if not more:
                self._eof = True
                break
            self._buf += more
        available = max(0, len(self._buf) - self._keep)
        n = min(want, available)
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)
