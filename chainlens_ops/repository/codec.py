"""The codec every stored byte passes through: compress, then encrypt, then authenticate.

Compression is the object kind's own, beside this module: `walcodec` (the WAL envelope:
one zstd frame with the file's name and size) and `datacodec` (the zstd stream of backup
data, checked against its manifest); metadata JSON is small and stored as it is.
Encryption and authentication are this module's, for every object but the marker and
the locks (`layout.is_plaintext`), when the repository is encrypted:

    header   magic b"CLOPSENC" | version u8 (1) | chunk log2 u8 (20) | reserved u16
    chunks   nonce (12 random bytes) | AES-256-GCM ciphertext | tag (16)
             each chunk holds 2**20 bytes of plaintext, the last one fewer (maybe 0)

Each chunk is sealed with the repository's data key and a fresh random nonce, with
`header | object key | chunk index u64 | last u8` as associated data, so a flipped
byte, chunks reordered or dropped, a truncation (the last chunk is marked) and an
object copied under another key name all fail authentication, naming the object.

`RepositoryStorage` is the door: it has the storage protocol's methods, seals on `put`
and opens on `open`, so operations code reads and writes through it alike on a plain
or an encrypted repository. A plain repository's objects are stored exactly as before
(today's repositories stay readable byte for byte); an encrypted one refuses plaintext
objects unless its marker says that objects from before `repo encrypt` remain.

Standard library only at import time: on the `wal push`/`wal fetch` path.
"""

from __future__ import annotations

import _thread
import io
import os
import struct

from chainlens_ops.core.errors import OperationFailed
from chainlens_ops.core.streams import read_full, readinto_full
from chainlens_ops.repository.crypto import is_invalid_tag
from chainlens_ops.repository.layout import is_plaintext
from chainlens_ops.storage import NotFound, ObjectInfo

TYPE_CHECKING = False
if TYPE_CHECKING:
    import builtins
    from collections.abc import Callable, Iterator
    from typing import Any, BinaryIO

    from chainlens_ops.storage.protocol import Storage

MAGIC = b"CLOPSENC"
VERSION = 1
CHUNK_LOG = 20
CHUNK = 1 << CHUNK_LOG
NONCE = 12
TAG = 16
_HEADER = struct.Struct("<8sBBH")
_AAD_TAIL = struct.Struct("<QB")


class CorruptObject(OperationFailed):
    """A repository object that fails its checksum or authentication, or is not in
    our format."""


# Locks of sealers whose key is being prepared in the background. The process waits for
# them at exit: a thread still inside the cipher's native code when the interpreter
# finalizes is torn down mid-call, which aborts the whole process (SIGABRT, exit 134)
# after the command's work was done.
_PREPARING: list[Any] = []


def _wait_for_preparing() -> None:
    for done in _PREPARING:
        if done.acquire(timeout=30):
            done.release()


class Sealer:
    """The data key of one encrypted repository, ready to seal and open objects.

    `data_key` (reading the key file or asking KMS) runs, with loading the cipher
    (aead.py), when the key is first needed, or in a background thread from
    `prepare_in_background` on. The thread pays only beside work that releases the GIL
    for long stretches (the loading holds it for ~1-2 ms at a time): `wal
    push` compresses its segment meanwhile; `wal fetch` needs the key for its first
    bytes and takes it at once. KeyUnavailable is raised by every call that needs it.
    `_thread`, not `threading`: the hot path avoids importing `threading`."""

    def __init__(
        self,
        data_key: Callable[[], bytes],
        *,
        plain_allowed: bool,
        check: Callable[[Any], None] | None = None,
    ) -> None:
        self.plain_allowed = plain_allowed
        self._data_key = data_key
        self._check = check  # given the AEAD: the marker's tag (marker.py)
        self._aead: Any = None
        self._error: BaseException | None = None
        # Held while the key is being prepared (look-ahead threads share one sealer).
        self._preparing = _thread.allocate_lock()

    def _prepare(self) -> None:
        """With `_preparing` held: the AEAD, or the error every later call raises."""
        if self._aead is not None or self._error is not None:
            return
        try:
            from chainlens_ops.repository.crypto import aesgcm

            aead = aesgcm(self._data_key())
            if self._check is not None:
                self._check(aead)
            self._aead = aead
        except BaseException as exc:
            self._error = exc

    def prepare_in_background(self) -> bool:
        """Start preparing the key in a thread, for a caller with GIL-free work ahead;
        False if it is prepared (or being prepared) already."""
        if not self._preparing.acquire(blocking=False):
            return False  # being prepared already
        if self._aead is not None or self._error is not None:
            self._preparing.release()
            return False
        done = self._preparing

        def prepare() -> None:
            try:
                self._prepare()
            finally:
                done.release()

        if not _PREPARING:
            import atexit

            atexit.register(_wait_for_preparing)
        _PREPARING.append(done)
        _thread.start_new_thread(prepare, ())
        return True

    def ready(self) -> Any:
        """The AEAD, once the key is in hand; KeyUnavailable if it cannot be."""
        if self._aead is None:
            with self._preparing:
                self._prepare()
            if self._error is not None:
                raise self._error
        return self._aead

    def seal(self, src: BinaryIO, key: str) -> SealingReader:
        return SealingReader(src, key, self)

    def open(self, src: BinaryIO, key: str, where: str) -> BinaryIO:
        """The plaintext of `src`; CorruptObject if it is not sealed for `key`."""
        head = read_full(src, _HEADER.size)
        if head[:8] == MAGIC:
            return UnsealingReader(src, head, key, self, where)  # type: ignore[return-value]
        self.ready()  # `plain_allowed` is the marker's word: trusted once its tag is checked
        if self.plain_allowed:
            return Prefixed(head, src)  # type: ignore[return-value]
        raise CorruptObject(
            f"{where}: stored unencrypted in an encrypted repository (not written by "
            "chainlens-ops, or tampered with)"
        )

    def seal_chunk(self, buffer: bytearray, size: int, aad: bytes) -> memoryview:
        """`buffer` holds `size` bytes of plaintext after NONCE bytes of room; sealed
        there under a fresh random nonce: `nonce | ciphertext | tag`, a view of it."""
        sealed: int = self.ready().seal_in_place(os.urandom(NONCE), buffer, size, aad)
        return memoryview(buffer)[:sealed]

    def open_chunk(self, buffer: bytearray, size: int, aad: bytes) -> memoryview:
        """The plaintext of the sealed chunk in `buffer[:size]`, decrypted there (a view);
        the AEAD's InvalidTag if it fails."""
        plain: memoryview = self.ready().open_in_place(buffer, size, aad)
        return plain


def is_sealed(head: bytes) -> bool:
    return head[:8] == MAGIC


class _Chunked(io.RawIOBase):
    """A readable stream of chunks produced on demand (`_next_chunk`)."""

    def __init__(self) -> None:
        super().__init__()
        self._pending: bytes | memoryview = b""
        self._offset = 0

    def readable(self) -> bool:
        return True

    def _next_chunk(self) -> bytes | memoryview | None:
        """The next chunk, or None at the end. A view is copied out, never kept: its
        buffer may be the next chunk's (asked for only once this one is read)."""
        raise NotImplementedError

    def read(self, size: int | None = -1) -> bytes:
        """`size` bytes, fewer only at the end (as a buffered file reads: callers such
        as `json.loads(fh.read(limit))` rely on it); all of the rest for a negative size."""
        if size is None or size < 0:
            return self.readall()
        parts: list[bytes] = []
        while size > 0:
            if self._offset >= len(self._pending):
                chunk = self._next_chunk()
                if chunk is None:
                    break
                self._pending, self._offset = chunk, 0
                if self._offset == 0 and len(chunk) <= size and not parts:
                    # A whole chunk asked for: hand it over (bytes: without a copy).
                    self._pending = b""
                    size -= len(chunk)
                    parts.append(bytes(chunk))
                    continue
            data = bytes(self._pending[self._offset : self._offset + size])
            self._offset += len(data)
            size -= len(data)
            parts.append(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def readinto(self, buffer: Any) -> int:
        """Fills `buffer` (fewer bytes only at the end), copying from the chunks where
        they lie: a 1 MiB sealed chunk read into a 1 MiB buffer is never sliced into
        a new bytes object first."""
        view = memoryview(buffer).cast("B")
        got = 0
        while got < len(view):
            if self._offset >= len(self._pending):
                chunk = self._next_chunk()
                if chunk is None:
                    break
                self._pending, self._offset = chunk, 0
            n = min(len(view) - got, len(self._pending) - self._offset)
            view[got : got + n] = memoryview(self._pending)[self._offset : self._offset + n]
            self._offset += n
            got += n
        return got

    def readall(self) -> bytes:
        parts = [bytes(self._pending[self._offset :])]
        self._pending, self._offset = b"", 0
        while (chunk := self._next_chunk()) is not None:
            parts.append(bytes(chunk))  # a view's buffer is reused by the next chunk
        return b"".join(parts)


class SealingReader(_Chunked):
    """The sealed form of `src` under `key`, produced as it is read."""

    def __init__(self, src: BinaryIO, key: str, sealer: Sealer) -> None:
        super().__init__()
        self._src = src
        self._sealer = sealer
        self._header = _HEADER.pack(MAGIC, VERSION, CHUNK_LOG, 0)
        self._aad = self._header + key.encode()
        self._index = -1  # the header comes first
        self._done = False
        self._buffer = bytearray(NONCE + CHUNK + TAG)
        self.plain_size = 0

    def _next_chunk(self) -> bytes | memoryview | None:
        if self._done:
            return None
        if self._index < 0:
            self._index = 0
            return self._header
        # Read into the middle of the buffer and sealed there, no copy; one buffer for
        # every chunk (each new MiB would cost 256 page faults).
        buffer = self._buffer
        size = readinto_full(self._src, memoryview(buffer)[NONCE : NONCE + CHUNK])
        last = size < CHUNK
        self.plain_size += size
        aad = self._aad + _AAD_TAIL.pack(self._index, last)
        sealed = self._sealer.seal_chunk(buffer, size, aad)
        self._index += 1
        self._done = last
        return sealed


class UnsealingReader(_Chunked):
    """The plaintext of a sealed object; any read raises CorruptObject when a chunk
    fails authentication or the object ends early."""

    def __init__(self, src: BinaryIO, head: bytes, key: str, sealer: Sealer, where: str) -> None:
        super().__init__()
        self._src = src
        self._sealer = sealer
        self._where = where
        if len(head) < _HEADER.size:
            raise CorruptObject(f"{where}: object is truncated ({len(head)} bytes)")
        _, version, chunk_log, _ = _HEADER.unpack(head)
        if version != VERSION or not 12 <= chunk_log <= 26:
            raise CorruptObject(f"{where}: unsupported encrypted format {version}/{chunk_log}")
        self._sealed_chunk = NONCE + (1 << chunk_log) + TAG
        self._buffer = bytearray(self._sealed_chunk)  # each sealed chunk is read into it
        self._aad = head + key.encode()
        self._index = 0
        self._done = False

    def _next_chunk(self) -> bytes | memoryview | None:
        if self._done:
            return None
        size = readinto_full(self._src, self._buffer)
        last = size < self._sealed_chunk
        if size < NONCE + TAG:
            raise CorruptObject(f"{self._where}: object is truncated (its last chunk is missing)")
        aad = self._aad + _AAD_TAIL.pack(self._index, last)
        try:
            plain = self._sealer.open_chunk(self._buffer, size, aad)
        except Exception as exc:
            if not is_invalid_tag(exc):
                raise
            raise CorruptObject(
                f"{self._where}: fails authentication (damaged, truncated, stored under "
                "another name, or sealed with another key)"
            ) from None
        self._index += 1
        self._done = last
        return plain

    def close(self) -> None:
        if not self.closed:
            try:
                self._src.close()
            finally:
                super().close()


class Prefixed(_Chunked):
    """`head` followed by the rest of `src` (a plaintext object peeked at)."""

    def __init__(self, head: bytes, src: BinaryIO) -> None:
        super().__init__()
        self._head: bytes | None = head
        self._src = src

    def _next_chunk(self) -> bytes | None:
        if self._head is not None:
            head, self._head = self._head, None
            if head:
                return head
        return self._src.read(CHUNK) or None

    def close(self) -> None:
        if not self.closed:
            try:
                self._src.close()
            finally:
                super().close()


class RepositoryStorage:
    """The storage protocol over a backend, sealing and opening through the codec.

    `sealer` returns the repository's Sealer, or None for a plain repository; it is
    asked before anything is read or written, so a key problem surfaces as itself
    (KeyUnavailable), never as "absent"."""

    def __init__(self, backend: Storage, sealer: Callable[[], Sealer | None]) -> None:
        self.backend = backend
        self.url = backend.url
        self._sealer = sealer

    def put(self, key: str, stream: BinaryIO, *, if_absent: bool = False) -> ObjectInfo:
        sealer = None if is_plaintext(key) else self._sealer()
        if sealer is None:
            return self.backend.put(key, stream, if_absent=if_absent)
        sealing = sealer.seal(stream, key)
        info = self.backend.put(key, sealing, if_absent=if_absent)  # type: ignore[arg-type]
        # Callers compare what they sent with what was stored: the plaintext's size.
        return ObjectInfo(key=info.key, size=sealing.plain_size, mtime=info.mtime)

    def open(self, key: str) -> BinaryIO:
        sealer = None if is_plaintext(key) else self._sealer()
        try:
            stream = self.backend.open(key)
        except NotFound:
            if sealer is not None:
                sealer.ready()  # a key problem is never answered as "absent"
            raise
        if sealer is None:
            return stream
        try:
            return sealer.open(stream, key, f"{self.url}: {key}")
        except BaseException:
            stream.close()
            raise

    def stat(self, key: str) -> ObjectInfo:
        return self.backend.stat(key)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return self.backend.list(prefix)

    def delete(self, key: str) -> None:
        self.backend.delete(key)

    def exists(self) -> bool:
        return self.backend.exists()

    def stale_leftovers(self) -> tuple[str, ...]:
        return self.backend.stale_leftovers()

    def remove_stale_leftovers(self) -> int:
        return self.backend.remove_stale_leftovers()

    def remove_incomplete(
        self, prefix: str, select: Callable[[ObjectInfo], bool], *, dry_run: bool = False
    ) -> builtins.list[ObjectInfo]:
        return self.backend.remove_incomplete(prefix, select, dry_run=dry_run)

    def housekeep_now_and_then(self, stamp: str | None) -> None:
        self.backend.housekeep_now_and_then(stamp)
