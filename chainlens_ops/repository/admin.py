"""Repository administration: `repo init`, `repo info`, `repo rotate-key`, `repo encrypt`.

Rotation re-wraps the data key under a new key-encryption key and rewrites only the
marker (no data object); afterwards the old key opens nothing. `repo encrypt` turns
encryption on for a plain repository: new objects are sealed from then on and the old
ones stay readable (the marker says `plain_objects`); `--rewrite` seals them in place,
object by object, skipping those already sealed, so an interrupted run just resumes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from chainlens_ops.core.crashpoints import crash_point
from chainlens_ops.core.errors import OperationFailed, UsageError
from chainlens_ops.core.record import replace
from chainlens_ops.core.streams import read_full
from chainlens_ops.repository import Repository
from chainlens_ops.repository.codec import Prefixed, is_sealed
from chainlens_ops.repository.crypto import (
    FILE,
    KMS,
    KeySource,
    aesgcm,
    check_marker,
    create_key_file,
    new_data_key,
    unwrap_data_key,
    wrap_data_key,
)
from chainlens_ops.repository.layout import (
    BACKUPS_PREFIX,
    MARKER_KEY,
    RESTORE_POINTS_PREFIX,
    WAL_PREFIX,
    is_plaintext,
)
from chainlens_ops.repository.lock import DEFAULT_WAIT_S
from chainlens_ops.repository.marker import AES_256_GCM, FORMAT_AUTHENTICATED, RepoMarker
from chainlens_ops.storage import AlreadyExists


@dataclass(frozen=True)
class Usage:
    objects: int
    bytes: int


@dataclass(frozen=True)
class RepoInfo:
    repo: str
    initialized: bool
    format: int | None = None
    encryption: str | None = None  # "aes-256-gcm" or None (plain)
    key_source: str | None = None  # "key file" or "KMS key <arn>"
    key_rotated_at: str | None = None
    plain_objects: bool = False
    marker_authenticated: bool = False  # encrypted, format 3: the marker carries a tag
    system_identifier: str | None = None  # None until a cluster has pushed
    pg_version: int | None = None
    wal_segment_size: int | None = None
    created_at: str | None = None
    sizes: dict[str, Usage] = field(default_factory=dict)


@dataclass(frozen=True)
class KeyChange:
    repo: str
    action: str  # "initialized", "rotated", "encrypted"
    key_source: str
    created_key_file: str | None = None
    rewritten: int = 0  # objects sealed in place (`repo encrypt --rewrite`)
    already_sealed: int = 0
    plain_objects: bool = False


def key_source(
    repo: Repository, *, key_file: str | None, kms_key_id: str | None, option: str
) -> KeySource:
    """The key-encryption key named on the command line, else the configured key file."""
    if key_file and kms_key_id:
        raise UsageError(f"{option}: give a key file or a KMS key, not both")
    if kms_key_id:
        return KeySource(KMS, kms_key_id=kms_key_id)
    path = key_file or repo.key_file
    if not path:
        raise UsageError(
            "encryption needs a key: --key-file FILE, --kms-key-id ARN, "
            "CHAINLENS_REPO_KEY_FILE or [repository] key_file"
        )
    return KeySource(FILE, key_file=path)


def _ensure_key_file(source: KeySource) -> str | None:
    """Create a missing key file (32 random bytes, 0600); its path if created."""
    import os

    if source.kind == FILE and not os.path.exists(source.key_file):
        create_key_file(source.key_file)
        return source.key_file
    return None


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _encrypted(marker: RepoMarker, source: KeySource, data_key: bytes) -> RepoMarker:
    """`marker` encrypted with `data_key` wrapped by `source`: an authenticated marker
    (format 3; `Repository.write_marker` tags it), whatever format it had."""
    return replace(
        marker,
        format=FORMAT_AUTHENTICATED,
        encryption=AES_256_GCM,
        key_source=source.kind,
        kms_key_id=source.kms_key_id,
        data_key=wrap_data_key(data_key, source, marker.repository_id, format=FORMAT_AUTHENTICATED),
        key_rotated_at=_now(),
        tag="",
    )


def init_repository(repo: Repository, *, encrypt: bool, source: KeySource | None) -> KeyChange:
    if source is not None and not encrypt:
        raise UsageError("--key-file and --kms-key-id go with --encrypt")
    if repo.stored_marker(fresh=True) is not None:
        raise OperationFailed(
            f"repository {repo.url} is already initialized",
            hint="`repo info` shows it; `repo encrypt` encrypts a plain one",
        )
    marker = repo.new_marker()
    created = None
    data_key = None
    if encrypt:
        assert source is not None
        created = _ensure_key_file(source)
        data_key = new_data_key()
        marker = _encrypted(marker, source, data_key)
    try:
        repo.write_marker(marker, if_absent=True, data_key=data_key)
    except AlreadyExists:
        raise OperationFailed(f"repository {repo.url} is already initialized") from None
    return KeyChange(
        repo.url,
        "initialized",
        source.display if encrypt and source else "none (plain)",
        created_key_file=created,
    )


def repository_info(repo: Repository) -> RepoInfo:
    repo.require_present()
    marker = repo.stored_marker(fresh=True)
    if marker is None:
        return RepoInfo(repo.url, initialized=False)
    sizes = {}
    for prefix in (WAL_PREFIX, BACKUPS_PREFIX, RESTORE_POINTS_PREFIX):
        count = total = 0
        for info in repo.backend.list(prefix):
            count += 1
            total += info.size
        sizes[prefix.rstrip("/")] = Usage(count, total)
    source = None
    if marker.encrypted:
        source = KeySource(marker.key_source, kms_key_id=marker.kms_key_id)
        source_text = f"KMS key {marker.kms_key_id}" if source.kind == KMS else "key file"
    return RepoInfo(
        repo=repo.url,
        initialized=True,
        format=marker.format,
        encryption=marker.encryption or None,
        key_source=source_text if source else None,
        key_rotated_at=marker.key_rotated_at or None,
        plain_objects=marker.plain_objects,
        marker_authenticated=marker.authenticated,
        system_identifier=str(marker.system_identifier) if marker.bound else None,
        pg_version=marker.pg_version or None,
        wal_segment_size=marker.wal_segment_size or None,
        created_at=marker.created_at or None,
        sizes=sizes,
    )


def _require_marker(repo: Repository) -> RepoMarker:
    marker = repo.stored_marker(fresh=True)
    if marker is None:
        raise OperationFailed(
            f"repository {repo.url} is not initialized (no {MARKER_KEY})",
            hint="`repo init` creates it",
        )
    return marker


def rotate_key(
    repo: Repository, new: KeySource, *, lock_wait_s: float = DEFAULT_WAIT_S
) -> KeyChange:
    """Re-wrap the data key under `new`; the current key (configured key file or the
    marker's KMS key) must open it first."""
    with repo.locks.lock("repo rotate-key", wait_s=lock_wait_s).hold():
        marker = _require_marker(repo)
        if not marker.encrypted:
            raise UsageError(
                f"repository {repo.url} is not encrypted", hint="`repo encrypt` encrypts it"
            )
        data_key = unwrap_data_key(marker, key_file=repo.key_file, url=repo.url)
        check_marker(marker, aesgcm(data_key), repo.url)  # never re-sign a changed marker
        created = _ensure_key_file(new)
        rotated = _encrypted(marker, new, data_key)  # a format-2 marker is authenticated now
        repo.write_marker(rotated, data_key=data_key)
        # Read back: the marker now stored must open with the new key alone.
        stored = _require_marker(repo)
        key_file = new.key_file if new.kind == FILE else None
        if unwrap_data_key(stored, key_file=key_file, url=repo.url) != data_key:
            raise OperationFailed(f"repository {repo.url}: the rotated key does not read back")
        check_marker(stored, aesgcm(data_key), repo.url)
    return KeyChange(repo.url, "rotated", new.display, created_key_file=created)


def encrypt_repository(
    repo: Repository,
    source: KeySource | None,
    *,
    rewrite: bool,
    lock_wait_s: float = DEFAULT_WAIT_S,
) -> KeyChange:
    with repo.locks.lock("repo encrypt", wait_s=lock_wait_s).hold():
        marker = repo.stored_marker(fresh=True)
        created = None
        if marker is None or not marker.encrypted:
            if source is None:
                raise UsageError("repo encrypt needs a key: --key-file FILE or --kms-key-id ARN")
            created = _ensure_key_file(source)
            base = marker if marker is not None else repo.new_marker()
            data_key = new_data_key()
            marker = replace(_encrypted(base, source, data_key), plain_objects=True)
            repo.write_marker(marker, data_key=data_key)
            if source.kind == FILE:
                repo.key_file = source.key_file
        elif not rewrite:
            raise UsageError(
                f"repository {repo.url} is already encrypted",
                hint="--rewrite seals objects stored before encryption began",
            )
        rewritten = sealed = 0
        if rewrite and marker.plain_objects:
            rewritten, sealed = _seal_plain_objects(repo)
            marker = replace(marker, plain_objects=False)
            repo.write_marker(marker)
    display = f"KMS key {marker.kms_key_id}" if marker.key_source == KMS else "key file"
    return KeyChange(
        repo.url,
        "encrypted",
        display,
        created_key_file=created,
        rewritten=rewritten,
        already_sealed=sealed,
        plain_objects=marker.plain_objects,
    )


def _seal_plain_objects(repo: Repository) -> tuple[int, int]:
    """Seal every plaintext object in place; (sealed now, already sealed)."""
    rewritten = sealed = 0
    storage, backend = repo.storage, repo.backend
    for info in list(backend.list("")):
        if is_plaintext(info.key):
            continue
        with backend.open(info.key) as raw:
            head = read_full(raw, 8)
            if is_sealed(head):
                sealed += 1
                continue
            storage.put(info.key, Prefixed(head, raw))  # type: ignore[arg-type]
        rewritten += 1
        crash_point("repo-encrypt-after-object")
    return rewritten, sealed
