"""aead.py: OpenSSL's AES-256-GCM through its EVP interface, checked against NIST's GCM
test vectors and against cryptography's AESGCM, both ways, byte for byte."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM as Reference

from chainlens_ops.repository import aead
from chainlens_ops.repository.aead import AESGCM, InvalidTag
from chainlens_ops.repository.crypto import aesgcm, is_invalid_tag

H = bytes.fromhex

# McGrew & Viega, "The Galois/Counter Mode of Operation", AES-256 test cases 13-16
# (key, nonce, plaintext, associated data, ciphertext, tag).
NIST = [
    (bytes(32), bytes(12), b"", b"", b"", H("530f8afbc74536b9a963b4f1c4cb738b")),
    (
        bytes(32),
        bytes(12),
        bytes(16),
        b"",
        H("cea7403d4d606b6e074ec5d3baf39d18"),
        H("d0d1c8a799996bf0265b98b5d48ab919"),
    ),
    (
        H("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308"),
        H("cafebabefacedbaddecaf888"),
        H(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
            "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255"
        ),
        b"",
        H(
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
            "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad"
        ),
        H("b094dac5d93471bdec1a502270e3cc6c"),
    ),
    (
        H("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308"),
        H("cafebabefacedbaddecaf888"),
        H(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
            "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39"
        ),
        H("feedfacedeadbeeffeedfacedeadbeefabaddad2"),
        H(
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
            "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"
        ),
        H("76fc6ece0f4e1768cddf8853bb2d551b"),
    ),
]


@pytest.mark.parametrize("case", range(len(NIST)))
def test_nist_vectors(case: int) -> None:
    key, nonce, plain, aad, cipher, tag = NIST[case]
    assert AESGCM(key).encrypt(nonce, plain, aad) == cipher + tag
    assert AESGCM(key).decrypt(nonce, cipher + tag, aad) == plain
    assert Reference(key).encrypt(nonce, plain, aad) == cipher + tag  # the vectors are right


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 4096, (1 << 20) + 3])
def test_the_same_bytes_as_cryptography_both_ways(size: int) -> None:
    key, nonce, plain = os.urandom(32), os.urandom(12), os.urandom(size)
    for aad in (b"", b"wal/000000010000000000000001", os.urandom(300)):
        sealed = AESGCM(key).encrypt(nonce, plain, aad)
        assert sealed == Reference(key).encrypt(nonce, plain, aad or None)
        assert Reference(key).decrypt(nonce, sealed, aad or None) == plain
        assert AESGCM(key).decrypt(nonce, sealed, aad) == plain
        # what the codec passes: memoryview slices of one buffer, and None for no aad
        view = memoryview(nonce + sealed)
        assert AESGCM(key).decrypt(view[:12], view[12:], aad or None) == plain
        # the chunk forms, on the codec's reused (writable) buffers: passed in place
        buffer = bytearray(12) + plain + bytearray(16) + b"spare"
        assert AESGCM(key).seal_in_place(nonce, buffer, size, aad) == 12 + size + 16
        assert buffer == nonce + sealed + b"spare"
        chunk = bytes(buffer[: 12 + size + 16])
        assert AESGCM(key).open(memoryview(bytearray(chunk)), aad) == plain
        assert AESGCM(key).open(bytes(chunk), aad) == plain
        room = bytearray(chunk) + b"spare"
        assert AESGCM(key).open_in_place(room, len(chunk), aad) == plain
        assert room.endswith(plain + sealed[-16:] + b"spare")


def test_every_change_fails_authentication() -> None:
    key, nonce, aad, plain = os.urandom(32), os.urandom(12), b"backups/x", os.urandom(100)
    sealed = AESGCM(key).encrypt(nonce, plain, aad)
    flips = []
    for at in (0, 50, 99, 100, 115):  # ciphertext first, middle, last byte; tag first, last
        changed = bytearray(sealed)
        changed[at] ^= 1
        flips.append(bytes(changed))
    tries = [
        *((key, nonce, s, aad) for s in flips),
        (key, nonce, sealed, b"backups/y"),  # another object's name
        (key, nonce, sealed, b""),
        (key, bytes(12), sealed, aad),
        (os.urandom(32), nonce, sealed, aad),  # another key
        (key, nonce, sealed[:-1], aad),  # truncated
        (key, nonce, sealed[:15], aad),  # shorter than a tag
        (key, nonce, sealed + b"\0", aad),
    ]
    for k, n, s, a in tries:
        with pytest.raises(InvalidTag) as caught:
            AESGCM(k).decrypt(n, s, a)
        assert is_invalid_tag(caught.value)
    with pytest.raises(Exception) as theirs:
        Reference(key).decrypt(nonce, flips[0], aad)
    assert is_invalid_tag(theirs.value)  # cryptography's failure too
    assert not is_invalid_tag(ValueError("other"))


def test_wrong_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        AESGCM(bytes(16))
    with pytest.raises(ValueError):
        AESGCM(bytes(32)).encrypt(bytes(8), b"x", b"")
    with pytest.raises(ValueError):  # no room for the tag
        AESGCM(bytes(32)).seal_in_place(bytes(12), bytearray(12 + 4 + 15), 4, b"")
    with pytest.raises(ValueError):  # more plaintext claimed than the buffer holds
        AESGCM(bytes(32)).seal_in_place(bytes(12), bytearray(12 + 4 + 16), 5, b"")
    with pytest.raises(ValueError):  # not writable
        AESGCM(bytes(32)).seal_in_place(bytes(12), bytes(12 + 4 + 16), 4, b"")


def test_threads_share_one_key() -> None:
    box = AESGCM(os.urandom(32))
    data = [os.urandom(200_000 + i) for i in range(16)]

    def trip(plain: bytes) -> bytes:
        nonce = os.urandom(12)
        return box.decrypt(nonce, box.encrypt(nonce, plain, b"a"), b"a")

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(trip, data)) == data


def test_aesgcm_is_openssl_without_cryptography_and_falls_back_to_it() -> None:
    """`aesgcm` (every sealer, key wrap and marker tag) is aead.py's and imports no
    cryptography module; where libcrypto 3 cannot be loaded it is cryptography's, from
    the Rust binding alone (chainlens_ops.core.native), and the two read each other."""
    assert isinstance(aesgcm(bytes(32)), AESGCM)
    script = (
        "import sys\n"
        "from chainlens_ops.repository import aead\n"
        "from chainlens_ops.repository.crypto import aesgcm\n"
        "ours = aesgcm(bytes(32))\n"
        "sealed = ours.encrypt(bytes(12), b'x', b'a')\n"
        "assert type(aesgcm(bytes(32))) is aead.AESGCM\n"
        "assert not [m for m in sys.modules if m.startswith('cryptography')], sys.modules\n"
        "aead._loaded, aead._failed = None, ImportError('no libcrypto')\n"
        "theirs = aesgcm(bytes(32))\n"
        "assert not any(m == 'cryptography' or m.startswith('cryptography.') and "
        "not m.endswith('._rust') for m in sys.modules), sorted(sys.modules)\n"
        "from cryptography.hazmat.primitives.ciphers.aead import AESGCM\n"
        "assert type(theirs.inner) is AESGCM, (type(theirs.inner), AESGCM)\n"
        "assert theirs.decrypt(bytes(12), sealed, b'a') == b'x'\n"
        "chunk = bytearray(12) + b'y' + bytearray(16)\n"
        "assert theirs.seal_in_place(bytes(12), chunk, 1, b'a') == 29\n"
        "assert ours.open(chunk, b'a') == b'y'\n"
        "assert bytes(theirs.open_in_place(chunk, 29, b'a')) == b'y'\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_a_library_that_cannot_load_is_an_import_error_every_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(aead, "_loaded", None)
    monkeypatch.setattr(aead, "_failed", None)
    monkeypatch.setattr(aead, "LIBRARY", "libcrypto-missing.so.0")
    for _ in range(2):
        with pytest.raises(ImportError, match="libcrypto-missing"):
            AESGCM(bytes(32))


@pytest.mark.parametrize("size", [0, 5, (1 << 20) - 1, (1 << 20) + 17, 3 << 20])
def test_objects_sealed_by_either_implementation_open_with_the_other(
    size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host whose libcrypto 3 cannot be loaded (cryptography's AESGCM) and one that
    loads it (aead.py) read each other's objects through the codec, across chunk
    boundaries, read whole or in small reads."""
    import io

    from chainlens_ops.repository.codec import Sealer

    data_key, plain = os.urandom(32), os.urandom(size)
    key = "backups/x/data/cluster-001.blk.zst"
    ours = Sealer(lambda: data_key, plain_allowed=False)
    sealed_ours = ours.seal(io.BytesIO(plain), key).read()
    monkeypatch.setattr(aead, "_loaded", None)
    monkeypatch.setattr(aead, "_failed", ImportError("no libcrypto here"))
    theirs = Sealer(lambda: data_key, plain_allowed=False)
    assert not isinstance(theirs.ready(), AESGCM)  # cryptography's
    sealed_theirs = theirs.seal(io.BytesIO(plain), key).read()
    assert theirs.open(io.BytesIO(sealed_ours), key, key).read() == plain
    monkeypatch.undo()
    reader = ours.open(io.BytesIO(sealed_theirs), key, key)
    pieces = iter(lambda: reader.read(4093), b"")
    assert b"".join(pieces) == plain
