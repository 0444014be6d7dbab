"""`wal fetch`: restore one WAL file from the repository for PostgreSQL's recovery.

`restore_command` semantics: a confirmed missing object is an ordinary answer
(`found=False`, only when the repository is present, holds its marker and belongs to this
data folder's cluster: `Repository.confirm_absent`; PostgreSQL probes for files that may
not exist, e.g. the next timeline's history file); everything else that is not success
raises, and the caller exits with a status PostgreSQL treats as fatal. DEST is written
to a temp file in its folder and renamed into place only after the object's checksum has
been verified.

Required WAL (`--required-through`, written by `restore` and drills into the
restore_command): the last segment the restore's plan must replay, one per timeline of
the plan's path (oldest first, comma-separated). A segment up to it, on the timeline the
path uses for it, is *required*: if it is missing now (pruned, deleted, lost), the
answer is fatal (255), never "absent" (1), because "absent" would make PostgreSQL end
recovery there and promote a short copy. Requests for other timelines (PostgreSQL's
probes for newer timelines, or its fallback to an older one) stay ordinary.

Prefetch: a fetch that has to go to the repository also downloads the next N segments
of the timeline, in parallel, into the spool (outside `pg_wal`); PostgreSQL's next calls
are then served from there. Spooled objects keep the repository format and are verified
like any other before use; a damaged one is dropped and fetched again.
"""

from __future__ import annotations

import os

from chainlens_ops.core.atomicfile import unlink_quietly as _unlink
from chainlens_ops.core.atomicfile import write_atomic
from chainlens_ops.core.crashpoints import pause_point
from chainlens_ops.core.errors import FETCH_MISSING, OperationFailed, UsageError
from chainlens_ops.core.record import record
from chainlens_ops.pg.walnames import SEGMENT, WalName, next_segment_names, parse_wal_name
from chainlens_ops.repository import Repository, data_folder_system_identifier
from chainlens_ops.repository.walcodec import CorruptObject, decode
from chainlens_ops.storage import NotFound
from chainlens_ops.wal.spool import Spool

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

PREFETCH_THREADS = 4
REPOSITORY = "repository"
SPOOL = "spool"


class RequiredWalMissing(OperationFailed):
    """A segment the restore's plan needs is not in the repository (any more)."""


def parse_required(text: str) -> tuple[WalName, ...]:
    """`--required-through`: segment names, one per timeline, oldest first."""
    names = tuple(parse_wal_name(part.strip()) for part in text.split(",") if part.strip())
    if not names or any(n.kind != SEGMENT for n in names):
        raise UsageError(f"--required-through takes WAL segment names, not {text!r}")
    return names


def is_required(wal: WalName, required: tuple[WalName, ...]) -> bool:
    """Is `wal` on the plan's path at or before its end? The first entry whose end is at
    or after `wal` says which timeline the path takes there."""
    if wal.kind != SEGMENT:
        return False
    for end in required:
        if (end.log, end.seg) >= (wal.log, wal.seg):
            return end.tli == wal.tli
    return False


@record
class FetchResult:
    name: str
    found: bool
    source: str = ""  # REPOSITORY or SPOOL when found
    size: int = 0
    prefetched: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.found

    @property
    def exit_code(self) -> int:
        """0 restored; FETCH_MISSING when confirmed absent (failures raise: FETCH_FATAL)."""
        return 0 if self.found else FETCH_MISSING


def fetch_wal(
    repo: Repository,
    name: str,
    dest: str,
    *,
    spool: Spool | None = None,
    prefetch: int = 0,
    required: tuple[WalName, ...] = (),
) -> FetchResult:
    """Restore `name` (PostgreSQL's %f) from `repo` to `dest` (%p); RequiredWalMissing
    when it is missing but `required` says the restore needs it."""
    wal = parse_wal_name(name)
    dest = os.path.abspath(dest)
    if not os.path.isdir(os.path.dirname(dest)):
        raise UsageError(f"cannot write {dest}: its folder does not exist")

    if spool is not None:
        spooled = spool.prefetched(name)
        if spooled is not None:
            try:
                with open(spooled, "rb") as src:
                    size = write_verified(src, dest, name, where=f"spooled {spooled}")
                return FetchResult(name, True, SPOOL, size)
            except (CorruptObject, OSError):
                pass  # fetch it from the repository instead
            finally:
                _unlink(spooled)

    ahead = _prefetch_names(repo, wal, spool, prefetch)
    if not ahead:
        return _fetch_direct(repo, wal, dest, spool, required)
    assert spool is not None
    from concurrent.futures import ThreadPoolExecutor  # only when there is work ahead

    with ThreadPoolExecutor(max_workers=min(PREFETCH_THREADS, len(ahead))) as pool:
        futures = [pool.submit(_download, repo, spool, other) for other in ahead]
        try:
            result = _fetch_direct(repo, wal, dest, spool, required)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        if not result.found:
            pool.shutdown(wait=True, cancel_futures=True)
            spool.clear_prefetch()
            return result
        fetched = tuple(other for other, f in zip(ahead, futures, strict=True) if f.result())
    return FetchResult(result.name, True, REPOSITORY, result.size, fetched)


def write_verified(src: BinaryIO, dest: str, name: str, *, where: str) -> int:
    """Decode `src` into a temp file next to `dest`, verify, then rename it into place
    (no fsync: PostgreSQL syncs what it keeps of a restored file)."""

    def fill(fd: int) -> int:
        with os.fdopen(fd, "wb", closefd=False) as out:
            return decode(src, out, name=name, where=where, sha256=False).size

    size, _ = write_atomic(dest, fill, durable=False)
    return size


def _fetch_direct(
    repo: Repository, wal: WalName, dest: str, spool: Spool | None, required: tuple[WalName, ...]
) -> FetchResult:
    key = repo.wal_key(wal)
    pause_point("wal-fetch-segment" if wal.kind == SEGMENT else "wal-fetch-other")
    try:
        with repo.wal.open(wal) as src:
            size = write_verified(src, dest, wal.name, where=f"{repo.url}: {key}")
    except NotFound:
        if is_required(wal, required):
            raise RequiredWalMissing(
                f"required WAL segment {wal.name} is missing from repository {repo.url}: "
                f"the restore's plan replays through {required[-1].name}, and recovery must "
                "not end before it",
                hint="was it pruned or deleted during the restore? see `chainlens-ops wal check`",
            ) from None
        repo.confirm_absent(wal.name, data_folder_system_identifier(dest))
        if spool is not None and wal.kind == SEGMENT:
            # Past the end of the archive: what was prefetched will not be asked for.
            spool.clear_prefetch()
        return FetchResult(wal.name, False)
    return FetchResult(wal.name, True, REPOSITORY, size)


def _prefetch_names(repo: Repository, wal: WalName, spool: Spool | None, count: int) -> list[str]:
    if count <= 0 or spool is None or wal.kind != SEGMENT or not spool.ready(spool.prefetch):
        return []
    marker = repo.marker()
    if marker is None:
        return []
    names = next_segment_names(wal, count, marker.wal_segment_size)
    spool.clear_prefetch(keep=set(names))
    return [n for n in names if spool.prefetched(n) is None]


def _download(repo: Repository, spool: Spool, name: str) -> bool:
    """Copy one object into the spool as it is (verified when used). False if absent
    or on any failure: PostgreSQL's own call for it goes to the repository."""
    final = os.path.join(spool.prefetch, name)

    def fill(fd: int) -> None:
        while chunk := src.read(1024 * 1024):
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]

    try:
        with repo.wal.open(parse_wal_name(name)) as src:
            write_atomic(final, fill, durable=False)
    except Exception:
        return False
    return True
