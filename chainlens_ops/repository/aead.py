"""AES-256-GCM from OpenSSL 3's libcrypto, called through its EVP interface.

The cipher is OpenSSL's: the libcrypto.so.3 that Python's own `hashlib` and `ssl` link
and that cryptography's Rust binding wraps. This module makes no cryptography of its
own; it only calls `EVP_EncryptInit_ex`/`EVP_EncryptUpdate`/`EVP_EncryptFinal_ex` (and
their decrypt twins, which check the tag) with a fresh context per call.

Why not cryptography's AESGCM, which every other path may use (crypto.aesgcm falls back
to it when libcrypto 3 cannot be loaded): PostgreSQL starts `wal push` and `wal fetch`
once per 16 MB segment, and loading cryptography's binding (a 15 MB shared object,
~100 Python types made at init) costs such a process ~7 ms, a fifth of a plain push.
`_ctypes` plus libcrypto (already on disk and in the page cache, shared with every other
process) cost ~3 ms, and every call into it runs without the GIL (a push prepares the
key beside compressing its segment). tests/unit/test_aead.py checks this class against NIST's GCM
vectors and against cryptography's AESGCM, both ways, byte for byte.

Same interface as cryptography's AESGCM: `encrypt(nonce, data, aad)` gives ciphertext
then the 16-byte tag, `decrypt(nonce, sealed, aad)` the plaintext or InvalidTag. Nonces
are 12 bytes, keys 32 (all this repository uses). Standard library only; `_ctypes` and
libcrypto are loaded on the first key, never at import.
"""

from __future__ import annotations

import _thread

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
LIBRARY = "libcrypto.so.3"
_MAX_LEN = (1 << 31) - 1 - TAG_SIZE  # EVP lengths are C ints
_GCM_GET_TAG = 0x10  # EVP_CTRL_GCM_GET_TAG (EVP_CTRL_AEAD_GET_TAG)
_GCM_SET_TAG = 0x11  # EVP_CTRL_GCM_SET_TAG (EVP_CTRL_AEAD_SET_TAG)


class InvalidTag(Exception):
    """Authentication failed: the ciphertext, tag, nonce, associated data or key differ
    from what was sealed."""


class _OpenSSL:
    """libcrypto's functions with their C signatures, and the AES-256-GCM cipher
    fetched once.

    Built on `_ctypes`, the extension `ctypes` is made of, with the four C types and the
    function-pointer class this module needs declared as `ctypes/__init__.py` declares
    them: importing the `ctypes` package itself costs a `wal fetch` ~1.2 ms more."""

    def __init__(self) -> None:
        import _ctypes as untyped
        import os

        _ctypes: Any = untyped  # typeshed types these as ctypes' public classes

        def declare(base: Any, name: str, **fields: Any) -> Any:
            return type(base)(name, (base,), fields)  # `class name(base)`, via its metaclass

        simple = _ctypes._SimpleCData
        CInt = declare(simple, "c_int", _type_="i")
        CULong = declare(simple, "c_ulong", _type_="L")
        CVoidP = declare(simple, "c_void_p", _type_="P")
        CCharP = declare(simple, "c_char_p", _type_="z")
        CChar = declare(simple, "c_char", _type_="c")
        # as ctypes.CDLL's functions: C calling convention, the GIL released in calls
        Function = declare(
            _ctypes.CFuncPtr, "Function", _flags_=_ctypes.FUNCFLAG_CDECL, _restype_=CInt
        )

        class Library:
            try:
                _handle = _ctypes.dlopen(LIBRARY, os.RTLD_NOW | os.RTLD_LOCAL)
            except OSError as exc:
                raise ImportError(f"cannot load {LIBRARY}: {exc}") from None

        def function(name: str, restype: Any, *argtypes: Any) -> Any:
            try:
                f = Function((name, Library))
            except AttributeError:
                raise ImportError(f"{LIBRARY} has no {name}") from None
            f.restype, f.argtypes = restype, argtypes
            return f

        int_p = _ctypes.POINTER(CInt)
        ptr, char_p = CVoidP, CCharP
        if function("OpenSSL_version_num", CULong)() < 0x30000000:
            raise ImportError(f"{LIBRARY} is not OpenSSL 3")
        self.ctx_new = function("EVP_CIPHER_CTX_new", ptr)
        self.ctx_free = function("EVP_CIPHER_CTX_free", None, ptr)
        self.ctx_ctrl = function("EVP_CIPHER_CTX_ctrl", CInt, ptr, CInt, CInt, ptr)
        self.pointer, self.char_p = CVoidP, CCharP
        self.encrypt_init = function("EVP_EncryptInit_ex", CInt, ptr, ptr, ptr, char_p, char_p)
        self.decrypt_init = function("EVP_DecryptInit_ex", CInt, ptr, ptr, ptr, char_p, char_p)
        self.encrypt_update = function("EVP_EncryptUpdate", CInt, ptr, ptr, int_p, ptr, CInt)
        self.decrypt_update = function("EVP_DecryptUpdate", CInt, ptr, ptr, int_p, ptr, CInt)
        self.encrypt_final = function("EVP_EncryptFinal_ex", CInt, ptr, ptr, int_p)
        self.decrypt_final = function("EVP_DecryptFinal_ex", CInt, ptr, ptr, int_p)
        fetch = function("EVP_CIPHER_fetch", ptr, ptr, char_p, char_p)
        self.cipher = fetch(None, b"AES-256-GCM", None)
        if not self.cipher:
            raise ImportError(f"{LIBRARY} has no AES-256-GCM")
        self.byref = _ctypes.byref
        self.addressof = _ctypes.addressof
        self.int = CInt
        self.char = CChar

    def address(self, data: Any) -> tuple[int, Any]:
        """Where `data`'s bytes are, and what keeps them there until the call is over.
        Writable buffers (bytearray, the ctypes buffers) in place; bytes through their
        `char *`; a read-only view of anything else is copied once."""
        if isinstance(data, bytes):
            pointer = self.char_p(data)  # holds `data`
            return self.pointer.from_buffer(pointer).value or 0, pointer
        view = memoryview(data).cast("B")
        if view.readonly:
            return self.address(bytes(view))
        if not view.nbytes:
            return 0, view
        array = (self.char * view.nbytes).from_buffer(view)
        return self.addressof(array), array

    def context(self) -> Any:
        ctx = self.ctx_new()
        if not ctx:
            raise MemoryError("OpenSSL: cannot allocate a cipher context")
        return ctx


_loaded: _OpenSSL | None = None
_failed: ImportError | None = None
_loading = _thread.allocate_lock()


def _openssl() -> _OpenSSL:
    """The library, loaded once per process; ImportError (every time) if it cannot be."""
    global _loaded, _failed
    if _loaded is not None:
        return _loaded
    with _loading:
        if _loaded is None and _failed is None:
            try:
                _loaded = _OpenSSL()
            except ImportError as exc:
                _failed = exc
        if _failed is not None:
            raise ImportError(str(_failed))
        assert _loaded is not None
        return _loaded


class AESGCM:
    """AES-256-GCM under one key; safe to share between threads (a context per call).

    `seal_in_place` and `open_in_place` are the codec's chunk forms (`nonce | ciphertext | tag`
    in one buffer): a chunk is encrypted where it was read and decrypted from where it
    was read, where `nonce + encrypt(...)` would allocate and copy a 1 MiB chunk three
    more times (each new MiB also costs 256 page faults)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError(f"AES-256-GCM takes a {KEY_SIZE}-byte key")
        self._ssl = _openssl()
        self._key = bytes(key)

    def seal_in_place(self, nonce: bytes, buffer: Any, size: int, aad: Any) -> int:
        """`buffer` holds `size` bytes of plaintext after room for the nonce; they become
        `nonce | ciphertext | tag` where they lie. Its length (the buffer must have
        room for the tag)."""
        view = memoryview(buffer).cast("B")
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"AES-256-GCM nonces here are {NONCE_SIZE} bytes")
        if len(view) < NONCE_SIZE + size + TAG_SIZE or view.readonly:
            raise ValueError("no writable room for the nonce and the tag")
        view[:NONCE_SIZE] = nonce
        plain = view[NONCE_SIZE : NONCE_SIZE + size]
        self._run(True, bytes(nonce), plain, size, aad, view, NONCE_SIZE, None)
        return NONCE_SIZE + size + TAG_SIZE

    def open_in_place(self, buffer: Any, size: int, aad: Any) -> memoryview:
        """The plaintext of the `nonce | ciphertext | tag` in `buffer[:size]`, decrypted
        where it lies (a view of `buffer`); InvalidTag, and nothing to read, if it does
        not authenticate."""
        view = memoryview(buffer).cast("B")[:size]
        if view.readonly:
            raise ValueError("open_in_place needs a writable buffer")
        if size < NONCE_SIZE + TAG_SIZE:
            raise InvalidTag()
        plain = size - NONCE_SIZE - TAG_SIZE
        nonce, tag = bytes(view[:NONCE_SIZE]), bytes(view[NONCE_SIZE + plain :])
        self._run(False, nonce, view[NONCE_SIZE:], plain, aad, view, NONCE_SIZE, tag)
        return view[NONCE_SIZE : NONCE_SIZE + plain]

    def open(self, sealed: Any, aad: Any) -> bytes:
        """The plaintext of a `seal_in_place`d chunk (any buffer); InvalidTag if it
        does not authenticate."""
        buffer = bytearray(sealed)
        return bytes(self.open_in_place(buffer, len(buffer), aad))

    def encrypt(self, nonce: Any, data: Any, aad: Any) -> bytes:
        """cryptography's form: ciphertext then tag."""
        size = memoryview(data).nbytes
        buffer = bytearray(NONCE_SIZE + size + TAG_SIZE)
        buffer[NONCE_SIZE : NONCE_SIZE + size] = memoryview(data).cast("B")
        self.seal_in_place(bytes(nonce), buffer, size, aad)
        return bytes(memoryview(buffer)[NONCE_SIZE:])

    def decrypt(self, nonce: Any, sealed: Any, aad: Any) -> bytes:
        """cryptography's form: the plaintext of ciphertext then tag."""
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"AES-256-GCM nonces here are {NONCE_SIZE} bytes")
        return self.open(bytes(nonce) + bytes(sealed), aad)

    def _run(
        self,
        encrypting: bool,
        nonce: bytes,
        data: Any,
        size: int,
        aad: Any,
        out: Any,
        at: int,
        tag: bytes | None,
    ) -> None:
        """Encrypt (then write the tag after the output) or decrypt (checking `tag`)
        `size` bytes of `data` into `out` from offset `at`."""
        ssl = self._ssl
        aad = bytes(aad) if aad else b""
        if size > _MAX_LEN or len(aad) > _MAX_LEN:
            raise OverflowError("AES-256-GCM input longer than OpenSSL's EVP takes at once")
        # OpenSSL reads and writes where it is told: the bounds are checked here, once.
        room = at + size + (TAG_SIZE if encrypting else 0)
        if size < 0 or memoryview(data).nbytes < size or memoryview(out).nbytes < room:
            raise ValueError("AES-256-GCM: a buffer is shorter than the data")
        if tag is not None and len(tag) != TAG_SIZE:
            raise ValueError(f"AES-256-GCM tags here are {TAG_SIZE} bytes")
        source, keep = ssl.address(data)
        target, kept = ssl.address(out)
        target += at
        init, update = (
            (ssl.encrypt_init, ssl.encrypt_update)
            if encrypting
            else (ssl.decrypt_init, ssl.decrypt_update)
        )
        written = ssl.int(0)
        ctx = ssl.context()
        try:
            _ok(init(ctx, ssl.cipher, None, self._key, nonce), "init")
            if aad:
                _ok(update(ctx, None, ssl.byref(written), aad, len(aad)), "aad")
            _ok(update(ctx, target, ssl.byref(written), source, size), "update")
            if written.value != size:
                raise RuntimeError("OpenSSL AES-256-GCM: short update")
            if encrypting:
                _ok(ssl.encrypt_final(ctx, target + size, ssl.byref(written)), "final")
                _ok(ssl.ctx_ctrl(ctx, _GCM_GET_TAG, TAG_SIZE, target + size), "tag")
            else:
                _ok(ssl.ctx_ctrl(ctx, _GCM_SET_TAG, TAG_SIZE, tag), "tag")
                if ssl.decrypt_final(ctx, target + size, ssl.byref(written)) != 1:
                    raise InvalidTag()
        finally:
            ssl.ctx_free(ctx)
            del keep, kept


def _ok(result: int, step: str) -> None:
    if result != 1:
        raise RuntimeError(f"OpenSSL AES-256-GCM {step} failed")
