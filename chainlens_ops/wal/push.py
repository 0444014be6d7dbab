"""`wal push`: archive one WAL file into the repository, durably, never overwriting.

The rules PostgreSQL's `archive_command` relies on:

- success only once the object is durable (the storage backend's `put` contract);
- the same name again with the same bytes succeeds; with other bytes it fails and the
  original stays (`put(if_absent=True)` decides atomically, so two concurrent pushers
  cannot both win); `.history` files are thereby never overwritten;
- a segment whose header names another database system than the repository's is
  refused, naming both.

Look-ahead (for slow repositories such as S3): a push also uploads up to N other files
PostgreSQL has marked `.ready` in `pg_wal/archive_status`, in parallel, and records each
one in the spool once it is durable. PostgreSQL's later call for such a file then only
checks that the file on disk is still the one uploaded (same inode, size, mtime, ctime)
and that the repository is still the one the record was made in (its marker's identity:
a repository deleted and recreated at the same URL must get the file again), and returns:
on S3 no storage call and no boto3 for most calls (the identity is re-read at most every
REPOSITORY_RECHECK_S seconds).
"""

from __future__ import annotations

import os

from chainlens_ops.core.crashpoints import crash_point
from chainlens_ops.core.errors import OperationFailed, UsageError
from chainlens_ops.core.record import record
from chainlens_ops.pg.walnames import (
    HISTORY,
    LONG_HEADER_SIZE,
    WalName,
    check_header_matches_name,
    parse_wal_header,
    parse_wal_name,
)
from chainlens_ops.repository import Repository
from chainlens_ops.repository.walcodec import (
    DEFAULT_LEVEL,
    CorruptObject,
    Digest,
    EncodingReader,
    decode,
    file_digest,
)
from chainlens_ops.storage import AlreadyExists, NotFound, is_remote
from chainlens_ops.wal.origin import check_origin
from chainlens_ops.wal.spool import Spool

ARCHIVED = "archived"  # stored by this call
IDENTICAL = "already-archived"  # the repository already held the same bytes
AHEAD = "archived-ahead"  # stored earlier by a look-ahead upload, local file unchanged
REPOSITORY_RECHECK_S = 30.0  # S3: how long a verified repository identity is trusted
LOOK_AHEAD_THREADS = 2  # beside the own segment; each upload in flight may hold an 8 MiB part


class DifferentContent(OperationFailed):
    """The repository already holds this name with other bytes; the original is kept."""


@record
class PushResult:
    name: str
    key: str
    outcome: str  # ARCHIVED, IDENTICAL or AHEAD
    size: int
    sha256: str | None  # of the file, when this call had to know it (else None)
    stored_size: int | None = None  # bytes in the repository, when this call stored them
    look_ahead: tuple[str, ...] = ()  # other files stored ahead by this call

    @property
    def ok(self) -> bool:
        return True  # a push that did not archive raises

    @property
    def exit_code(self) -> int:
        return 0


def push_wal(
    repo: Repository,
    path: str,
    *,
    spool: Spool | None = None,
    look_ahead: int = 0,
    level: int = DEFAULT_LEVEL,
) -> PushResult:
    """Archive the WAL file at `path` (PostgreSQL's %p) into `repo`."""
    name = parse_wal_name(os.path.basename(path))
    if spool is not None:
        ahead = _take_look_ahead_record(repo, spool, path, name)
        if ahead is not None:
            return ahead

    candidates: list[str] = []
    if look_ahead > 0 and spool is not None and spool.ready(spool.pushed):
        candidates = ready_files(path, look_ahead, skip={name.name, *spool.pushed_names()})
    if not candidates:
        result = push_file(repo, path, name, level=level)
        _sweep(repo, spool)
        return result

    assert spool is not None  # candidates come from the spool's folder
    folder = os.path.dirname(path)
    from concurrent.futures import ThreadPoolExecutor  # only when there is work ahead

    with ThreadPoolExecutor(max_workers=min(LOOK_AHEAD_THREADS, len(candidates))) as pool:
        futures = [
            pool.submit(_push_ahead, repo, spool, os.path.join(folder, other), level)
            for other in candidates
        ]
        try:
            result = push_file(repo, path, name, level=level)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        done = tuple(f.result() for f in futures)
    _sweep(repo, spool)
    stored = tuple(n for n in done if n)
    return PushResult(
        result.name,
        result.key,
        result.outcome,
        result.size,
        result.sha256,
        result.stored_size,
        stored,
    )


def push_file(
    repo: Repository, path: str, name: WalName, *, level: int = DEFAULT_LEVEL
) -> PushResult:
    """Store one file under its name, with the duplicate and cluster rules."""
    try:
        fh = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a folder, not a WAL file") from None
    except OSError as exc:
        raise OperationFailed(f"cannot read {path}: {exc.strerror or exc}") from None
    with fh:
        size = os.fstat(fh.fileno()).st_size
        if name.has_header:
            header = parse_wal_header(os.pread(fh.fileno(), LONG_HEADER_SIZE, 0), what=path)
            check_header_matches_name(header, name, size=size)
            repo.ensure_marker(header.system_identifier, header.seg_size, header.pg_version)
        # History and backup files carry no system identifier: the data folder's
        # pg_control says which cluster they come from (or, pushed from elsewhere, they
        # must fit what the repository holds).
        check_origin(repo, path, name)
        key = repo.wal_key(name)
        # An encrypted repository's key is prepared while the segment is compressed.
        reader = EncodingReader(fh, name.name, size, level=level, beside=repo.prepare_key)
        try:
            info = repo.wal.put(name, reader, if_absent=True)  # type: ignore[arg-type]
        except AlreadyExists:
            local = file_digest(path)
            _check_same_as_stored(repo, key, name, local)
            return PushResult(name.name, key, IDENTICAL, local.size, local.sha256)
    return PushResult(name.name, key, ARCHIVED, size, None, info.size)


def _sweep(repo: Repository, spool: Spool | None) -> None:
    """Now and then, remove temp files killed pushes left (local repositories)."""
    ready = spool is not None and spool.ready(spool.base)
    repo.housekeep_now_and_then(
        os.path.join(spool.base, "temp-sweep") if spool is not None and ready else None
    )


def ready_files(path: str, limit: int, *, skip: set[str]) -> list[str]:
    """Up to `limit` WAL files PostgreSQL has marked ready, in the order it archives
    them (history files first, then oldest first)."""
    status = os.path.join(os.path.dirname(path), "archive_status")
    try:
        entries = os.listdir(status)
    except OSError:
        return []
    names = []
    for entry in entries:
        if not entry.endswith(".ready"):
            continue
        wal = entry[: -len(".ready")]
        if wal in skip:
            continue
        try:
            parsed = parse_wal_name(wal)
        except UsageError:
            continue
        names.append((parsed.kind != HISTORY, wal))
    return [wal for _, wal in sorted(names)[:limit]]


def _push_ahead(repo: Repository, spool: Spool, path: str, level: int) -> str | None:
    """Upload one ready file ahead of PostgreSQL's call; record it once durable.

    The record holds the file's identity (device, inode, size, mtime, ctime) as it was
    before and after the upload: PostgreSQL never writes to a segment it has marked
    ready, and any write, rename or replacement changes ctime or the inode. A file that
    changed during the upload gets no record. Any failure is left for PostgreSQL's own
    call for that file, which reports it.
    """
    try:
        before = file_identity(path)
        result = push_file(repo, path, parse_wal_name(os.path.basename(path)), level=level)
        if file_identity(path) != before:
            return None
        marker = repo.marker()
        if marker is None:
            return None
        crash_point("after-upload-before-record")
        spool.record_pushed(result.name, result.key, before, marker.identity)
    except Exception:
        return None
    return result.name


def file_identity(path: str) -> tuple[int, ...]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _take_look_ahead_record(
    repo: Repository, spool: Spool, path: str, name: WalName
) -> PushResult | None:
    """The answer for a file a look-ahead upload stored, if it is still that file.

    A stat, not a re-hash: this is the call PostgreSQL makes for every segment of a
    backlog, and it must return at once (no hashlib, no boto3, no reading 16 MB).
    """
    record = spool.pushed_record(name.name)
    if record is None:
        return None
    # One use only: whatever happens next, this record has served its purpose.
    spool.forget_pushed(name.name)
    key, identity, repository = record
    if key != repo.wal_key(name):
        return None
    try:
        if file_identity(path) != identity:
            return None  # changed since the upload: the normal path applies the rules
    except OSError:
        return None  # the normal path reports the problem with the file
    if not _same_repository(repo, spool, repository):
        return None  # deleted or recreated since: the normal path stores it again
    return PushResult(name.name, key, AHEAD, identity[2], None)


def _same_repository(repo: Repository, spool: Spool, identity: str) -> bool:
    """Is the repository still the one the look-ahead record was made in?

    A local marker is one small file: read it every time. On S3 that read costs boto3
    and a request, which look-ahead exists to avoid: it is re-read at most once every
    REPOSITORY_RECHECK_S seconds (the spool notes when it last saw which identity).
    """
    remote = is_remote(repo.url)
    if remote and spool.verified_repository(REPOSITORY_RECHECK_S) == identity:
        return True
    try:
        marker = repo.marker(fresh=True)
    except Exception:
        return False  # the normal path reports the problem
    if marker is None or marker.identity != identity:
        return False
    if remote:
        spool.note_verified_repository(identity)
    return True


def _check_same_as_stored(repo: Repository, key: str, name: WalName, local: Digest) -> None:
    try:
        with repo.wal.open(name) as src:
            stored = decode(src, None, name=name.name, where=f"{repo.url}: {key}")
    except NotFound:
        raise OperationFailed(
            f"{key} was reported as existing in {repo.url} but cannot be read; try again"
        ) from None
    except CorruptObject as exc:
        raise OperationFailed(
            f"{exc.message}; the stored object is kept, not overwritten",
            hint="inspect it and remove it by hand if it is damaged",
        ) from None
    if stored != local:
        never = " (history files are never overwritten)" if name.kind == HISTORY else ""
        raise DifferentContent(
            f"{name.name} is already in repository {repo.url} with different content "
            f"(stored {stored.size} bytes sha256 {stored.sha256[:16]}..., local "
            f"{local.size} bytes sha256 {local.sha256[:16]}...); the original is kept{never}",
            hint="is another cluster archiving into this repository?",
        )
