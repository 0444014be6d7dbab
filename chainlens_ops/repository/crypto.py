"""Envelope encryption: one random data key per repository, wrapped by a key-encryption
key (KEK) that never enters the repository.

    key file   32 random bytes on the server, owner-only (0600 or stricter); the data
               key is sealed with AES-256-GCM under it, the repository id bound as
               associated data (a wrapped key copied into another repository fails)
    AWS KMS    the marker names the KMS key; KMS Encrypt/Decrypt wrap the data key,
               with the repository id as encryption context; AWS credentials in the
               environment decide who may unwrap it (no key file)

The wrap binds the marker's format too (associated data `data key v2`, or the KMS
context's `chainlens-marker = authenticated`, for format 3): a key wrapped for an
authenticated marker does not unwrap under an untagged format-2 one, so the marker's
tag (marker.py) cannot be dropped by rewriting the marker as the older format.

The cipher is OpenSSL's AES-256-GCM everywhere: called through its EVP interface
(aead.py) where libcrypto 3 loads, through `cryptography` otherwise; KMS is boto3's.
Neither is loaded unless a repository is encrypted: cryptography's public package costs
~20 ms of a `wal push`, its Rust binding alone ~7 ms, libcrypto through ctypes ~3 ms.
"""

from __future__ import annotations

import binascii
import os
import stat as st

from chainlens_ops.core.errors import ConfigError, UsageError
from chainlens_ops.core.record import record, replace
from chainlens_ops.repository.layout import MARKER_KEY
from chainlens_ops.repository.marker import MarkerTampered

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from chainlens_ops.repository.marker import RepoMarker

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
FILE = "file"
KMS = "kms"
_WRAP_AAD = {2: b"chainlens-ops data key v1 ", 3: b"chainlens-ops data key v2 "}


class KeyUnavailable(ConfigError):
    """The repository is encrypted and its key cannot be had: no key file configured,
    an unreadable or unsafe one, the wrong key, or KMS refusing to unwrap (exit 3; `wal
    fetch` answers 255: a segment never looks absent because of a key problem)."""


def aesgcm(key: bytes) -> Any:
    """AES-256-GCM under `key`: OpenSSL's through its EVP interface (aead.py: ~4 ms
    less of every `wal push`/`wal fetch` than loading cryptography's binding), or
    cryptography's AESGCM, from its Rust binding loaded without the Python packages
    around it (chainlens_ops.core.native), where libcrypto 3 cannot be loaded."""
    try:
        from chainlens_ops.repository.aead import AESGCM as OpenSSLAESGCM

        return OpenSSLAESGCM(key)
    except ImportError:
        pass
    try:
        from chainlens_ops.core.native import load_extension

        cls: Any = load_extension("cryptography.hazmat.bindings._rust").openssl.aead.AESGCM
    except (ImportError, AttributeError):  # pragma: no cover - another layout
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        cls = AESGCM
    return _WithChunks(cls(key))


class _WithChunks:
    """cryptography's AESGCM with aead.py's chunk forms (`seal_in_place`, `open_in_place`)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.encrypt = inner.encrypt
        self.decrypt = inner.decrypt

    def seal_in_place(self, nonce: bytes, buffer: Any, size: int, aad: Any) -> int:
        view = memoryview(buffer).cast("B")
        sealed = self.inner.encrypt(nonce, bytes(view[NONCE_SIZE : NONCE_SIZE + size]), aad)
        view[:NONCE_SIZE] = nonce
        view[NONCE_SIZE : NONCE_SIZE + len(sealed)] = sealed
        return NONCE_SIZE + len(sealed)

    def open_in_place(self, buffer: Any, size: int, aad: Any) -> memoryview:
        view = memoryview(buffer).cast("B")
        nonce, sealed = bytes(view[:NONCE_SIZE]), bytes(view[NONCE_SIZE:size])
        plain = self.inner.decrypt(nonce, sealed, aad)
        view[NONCE_SIZE : NONCE_SIZE + len(plain)] = plain
        return view[NONCE_SIZE : NONCE_SIZE + len(plain)]


def is_invalid_tag(exc: Exception) -> bool:
    """Whether `exc` is AES-GCM's authentication failure, from either implementation.
    `cryptography.exceptions` is asked only on a failure that is not aead.py's: it
    imports `typing` (~10 ms of every `wal fetch`)."""
    from chainlens_ops.repository.aead import InvalidTag as OpenSSLInvalidTag

    if isinstance(exc, OpenSSLInvalidTag):
        return True
    from cryptography.exceptions import InvalidTag

    return isinstance(exc, InvalidTag)


def new_data_key() -> bytes:
    return os.urandom(KEY_SIZE)


# -- key files ----------------------------------------------------------------------


def read_key_file(path: str) -> bytes:
    """The 32 bytes of `path`; KeyUnavailable if missing, unsafe or malformed. The
    message names the file, never its content."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise KeyUnavailable(f"key file {path} does not exist") from None
    except OSError as exc:
        raise KeyUnavailable(f"cannot read key file {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not st.S_ISREG(info.st_mode):
            raise KeyUnavailable(f"key file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise KeyUnavailable(
                f"key file {path} is accessible by group or others "
                f"(mode {st.S_IMODE(info.st_mode):04o})",
                hint=f"chmod 600 {path}",
            )
        data = os.read(fd, KEY_SIZE + 1)
    finally:
        os.close(fd)
    if len(data) != KEY_SIZE:
        raise KeyUnavailable(f"key file {path} must hold exactly {KEY_SIZE} bytes")
    return data


def create_key_file(path: str) -> None:
    """A new key file of 32 random bytes, mode 0600; refuses to replace an existing one."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"key file {path} already exists") from None
    except OSError as exc:
        raise UsageError(f"cannot create key file {path}: {exc.strerror or exc}") from None
    try:
        os.write(fd, os.urandom(KEY_SIZE))
        os.fsync(fd)
    finally:
        os.close(fd)


def _wrap_aad(repository_id: str, format: int) -> bytes:
    return _WRAP_AAD[min(max(format, 2), 3)] + repository_id.encode()


def _kms_context(repository_id: str, format: int) -> dict[str, str]:
    context = {"chainlens-repository": repository_id}
    if format >= 3:
        context["chainlens-marker"] = "authenticated"
    return context


def wrap_with_file(kek: bytes, data_key: bytes, repository_id: str, *, format: int) -> str:
    nonce = os.urandom(NONCE_SIZE)
    sealed = aesgcm(kek).encrypt(nonce, data_key, _wrap_aad(repository_id, format))
    return _b64encode(nonce + sealed)


def unwrap_with_file(
    kek: bytes, wrapped: str, repository_id: str, *, path: str, format: int
) -> bytes:
    raw = _b64(wrapped)
    try:
        data_key: bytes = aesgcm(kek).decrypt(
            raw[:NONCE_SIZE], raw[NONCE_SIZE:], _wrap_aad(repository_id, format)
        )
    except Exception as exc:
        if not is_invalid_tag(exc):
            raise
        raise KeyUnavailable(
            f"key file {path} does not open this repository (wrong key, or the key was rotated)"
        ) from None
    return data_key


# -- AWS KMS ------------------------------------------------------------------------


def _kms_client(key_id: str) -> Any:
    import boto3

    region = None
    parts = key_id.split(":")
    if key_id.startswith("arn:") and len(parts) > 3 and parts[3]:
        region = parts[3]
    import botocore.config

    # A few quick attempts: `wal fetch` must answer (255) rather than hang on KMS.
    config = botocore.config.Config(
        connect_timeout=5, read_timeout=15, retries={"max_attempts": 3, "mode": "standard"}
    )
    return boto3.session.Session().client("kms", region_name=region, config=config)


def wrap_with_kms(key_id: str, data_key: bytes, repository_id: str, *, format: int) -> str:
    try:
        response = _kms_client(key_id).encrypt(
            KeyId=key_id,
            Plaintext=data_key,
            EncryptionContext=_kms_context(repository_id, format),
        )
    except Exception as exc:
        raise KeyUnavailable(f"KMS key {key_id} cannot wrap the data key: {_why(exc)}") from None
    return _b64encode(response["CiphertextBlob"])


def unwrap_with_kms(key_id: str, wrapped: str, repository_id: str, *, format: int) -> bytes:
    try:
        response = _kms_client(key_id).decrypt(
            KeyId=key_id,
            CiphertextBlob=_b64(wrapped),
            EncryptionContext=_kms_context(repository_id, format),
        )
    except Exception as exc:
        raise KeyUnavailable(
            f"KMS key {key_id} does not unwrap this repository's key: {_why(exc)}"
        ) from None
    data_key: bytes = response["Plaintext"]
    return data_key


def _why(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        return f"{error.get('Code', '')} {error.get('Message', '')}".strip()
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _b64encode(data: bytes) -> str:
    # binascii, not base64: base64 imports `re` (~5 ms of a `wal push`).
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _b64(text: str) -> bytes:
    try:
        return binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        raise KeyUnavailable("the repository's wrapped data key is damaged") from None


# -- the data key of a repository ---------------------------------------------------


@record
class KeySource:
    """Where a key-encryption key lives: a key file on this machine, or a KMS key."""

    kind: str  # FILE or KMS
    key_file: str = ""
    kms_key_id: str = ""

    @property
    def display(self) -> str:
        return f"key file {self.key_file}" if self.kind == FILE else f"KMS key {self.kms_key_id}"


def wrap_data_key(data_key: bytes, source: KeySource, repository_id: str, *, format: int) -> str:
    """`data_key` wrapped for a marker of `format` (the wrap binds it)."""
    if source.kind == KMS:
        return wrap_with_kms(source.kms_key_id, data_key, repository_id, format=format)
    return wrap_with_file(read_key_file(source.key_file), data_key, repository_id, format=format)


def unwrap_data_key(marker: RepoMarker, *, key_file: str | None, url: str) -> bytes:
    """The data key of encrypted repository `marker`, unwrapped with its KMS key or
    with `key_file`; KeyUnavailable otherwise."""
    if marker.key_source == KMS:
        return unwrap_with_kms(
            marker.kms_key_id, marker.data_key, marker.repository_id, format=marker.format
        )
    if not key_file:
        raise KeyUnavailable(
            f"repository {url} is encrypted and no key file is configured",
            hint="set CHAINLENS_REPO_KEY_FILE or [repository] key_file",
        )
    return unwrap_with_file(
        read_key_file(key_file),
        marker.data_key,
        marker.repository_id,
        path=key_file,
        format=marker.format,
    )


# -- the marker's tag (marker.py says why) ------------------------------------------


def sign_marker(marker: RepoMarker, aead: Any) -> RepoMarker:
    """`marker` with its tag, made with the data key's AEAD (format 3, encrypted)."""
    nonce = os.urandom(NONCE_SIZE)
    tag = aead.encrypt(nonce, b"", marker.signed_bytes())
    return replace(marker, tag=_b64encode(nonce + tag))


def check_marker(marker: RepoMarker, aead: Any, url: str) -> None:
    """MarkerTampered unless `marker`'s tag authenticates every field (format 3)."""
    if not marker.authenticated:
        return
    try:
        raw = binascii.a2b_base64(marker.tag.encode("ascii"), strict_mode=True)
        aead.decrypt(raw[:NONCE_SIZE], raw[NONCE_SIZE:], marker.signed_bytes())
    except Exception as exc:
        if not isinstance(exc, ValueError | UnicodeError) and not is_invalid_tag(exc):
            raise
        raise MarkerTampered(
            f"repository {url}: {MARKER_KEY} fails authentication (changed by someone "
            "without the repository's key); nothing was read or written",
            hint="restore the marker from a copy; `repo info` shows what it says now",
        ) from None
