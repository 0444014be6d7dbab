"""Restoring a files-layout backup (a full or an incremental, backup.files): the newest
backup's file map says where every byte lives; the bundles of the chain's backups are
streamed (STREAMS at once: each byte has one owner, so the order does not matter) and
only what the map attributes to each backup is written, in place (no intermediate
copy). Then folders, sizes (sparse where no record wrote), modes and
backup_label / tablespace_map from the map.

With a Selection, bundles of skipped databases are never fetched (their files become
placeholders, restore.selective), and nor is a bundle group of an ancestor that the map
no longer attributes anything to.
"""

from __future__ import annotations

import bisect
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from chainlens_ops.backup.files import (
    FileEntry,
    FileMap,
    Range,
    Record,
    bundle_group,
    group_of,
    group_oid,
    read_bundle,
    read_file_map,
)
from chainlens_ops.backup.manifest import BackupManifest, BackupObject
from chainlens_ops.core.errors import OperationFailed
from chainlens_ops.pg.datadir import BLOCK_SIZE
from chainlens_ops.repository import Repository
from chainlens_ops.repository.datacodec import CheckedReader
from chainlens_ops.restore.selective import Selection, placeholders

STREAMS = 3  # bundles read at once (zstd and the writes leave the GIL)


@dataclass(frozen=True)
class Assembled:
    written: int  # bytes written into the data folder
    skipped: int  # bytes of skipped databases' files (sparse placeholders)
    read: int  # raw bytes of the objects read


def needed_objects(
    chain: list[BackupManifest], fmap: FileMap, selection: Selection | None
) -> list[tuple[BackupManifest, BackupObject]]:
    """The bundles a restore of chain[-1] reads, in order: those of groups the map
    attributes something to in that backup, skipped databases left out."""
    ids = {b.id for b in chain}
    wanted: set[tuple[str, str]] = set()
    for entry in fmap.files:
        group = group_of(entry.path)
        if _skipped(group, selection):
            continue
        for owner in entry.owners():
            if owner not in ids:
                raise OperationFailed(
                    f"backup {chain[-1].id}: its file map holds {entry.path} in {owner}, "
                    "which is not in its chain"
                )
            wanted.add((owner, group))
    return [
        (backup, obj)
        for backup in chain
        for obj in backup.objects
        if (backup.id, bundle_group(obj.key)) in wanted
    ]


def written_bytes(fmap: FileMap, selection: Selection | None) -> int:
    """What a restore of the map writes into the data folder: every file but those of
    skipped databases (sparse placeholders, which take no room)."""
    return sum(e.size for e in fmap.files if not _skipped(group_of(e.path), selection))


def _skipped(group: str, selection: Selection | None) -> bool:
    oid = group_oid(group)
    return selection is not None and oid is not None and oid not in selection.keep_oids


def assemble(
    repo: Repository,
    chain: list[BackupManifest],
    pgdata: Path,
    *,
    extracting: Callable[[int], None] = lambda total: None,
    extracted: Callable[[int], None] = lambda n: None,
    selection: Selection | None = None,
) -> Assembled:
    """Write chain[-1] (its ancestors first in `chain`) into the empty folder `pgdata`."""
    newest = chain[-1]
    fmap = read_file_map(repo, newest)
    objects = needed_objects(chain, fmap, selection)
    extracting(sum(obj.raw_size for _b, obj in objects))
    for folder in sorted(fmap.dirs, key=lambda d: d.path):
        (pgdata / folder.path).mkdir(parents=True, exist_ok=True, mode=0o700)
    files = fmap.by_path()
    lock = threading.Lock()
    stop = threading.Event()  # one stream failed (or the restore was interrupted)

    def seen(n: int) -> None:
        with lock:
            extracted(n)

    sized: set[str] = set()  # files opened (and given their size and mode) so far

    def one(backup: BackupManifest, obj: BackupObject) -> tuple[int, int]:
        writer = _Writer(pgdata, files, backup.id, sized, lock)

        def write(record: Record, done: int, chunk: bytes) -> None:
            if stop.is_set():
                raise OperationFailed("stopped: another bundle of the restore failed")
            writer.write(record, done, chunk)
            seen(len(chunk))  # the bytes read, as they pass

        def wanted(record: Record) -> bool:
            if writer.needs(record):
                return True
            seen(record.length)  # read past, never decompressed
            return False

        try:
            with CheckedReader(repo.backups, obj, decompress=False) as reader:
                read_bundle(reader, f"{repo.url}: {obj.key}", write, wanted)  # type: ignore[arg-type]
                reader.drain()
                return writer.written, obj.raw_size
        finally:
            writer.close()

    # Each byte is written by the one backup the map attributes it to, so the objects
    # can be read in any order, several at once.
    written = read = 0
    skipped_files = [(e.path, e.size) for e in fmap.files if _skipped(group_of(e.path), selection)]
    with ThreadPoolExecutor(max_workers=STREAMS + 1) as pool:
        # Beside the streams and first: a create waits longer once their writes are
        # pending (restore.selective.placeholders). The pool waits for it on failure too.
        placed = pool.submit(placeholders, pgdata, skipped_files)
        futures = [pool.submit(one, backup, obj) for backup, obj in objects]
        try:
            for future in as_completed(futures):  # the first failure as soon as it happens
                w, r = future.result()
                written, read = written + w, read + r
        except BaseException:
            stop.set()
            for future in futures:
                future.cancel()
            raise
    skipped = placed.result()
    for entry in fmap.files:
        path = pgdata / entry.path
        if _skipped(group_of(entry.path), selection):
            continue
        if entry.path not in sized:  # no record written: created here
            os.close(_open_sized(path, entry, first=True))
    labels = (("backup_label", fmap.backup_label), ("tablespace_map", fmap.tablespace_map))
    for name, text in labels:
        if text:
            (pgdata / name).write_text(text)
            os.chmod(pgdata / name, 0o600)
    return Assembled(written, skipped, read)


def _open_sized(path: Path, entry: FileEntry, *, first: bool) -> int:
    """Open (creating it) a file of the map; the first open of it in a restore also
    sets its final size (sparse zeros where no record writes: a size never cuts what
    another stream wrote, records lie within it) and mode."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    if not first:
        return fd
    try:
        os.ftruncate(fd, entry.size)
        os.fchmod(fd, (entry.mode & 0o600) | 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


class _Writer:
    """Writes the part of each record that the newest map attributes to the backup
    being read (`backup_id`); keeps the current file open across its records. The
    first writer to open a file (`sized`, shared by the streams) sets its size and
    mode, so the final pass reopens only the files no record wrote."""

    def __init__(
        self, pgdata: Path, files: dict[str, FileEntry], backup_id: str,
        sized: set[str], lock: threading.Lock,
    ) -> None:  # fmt: skip
        self.pgdata = pgdata
        self.files = files
        self.backup_id = backup_id
        self.written = 0
        self._sized = sized
        self._lock = lock
        self._path: str | None = None
        self._fd = -1

    def needs(self, record: Record) -> bool:
        """Whether the map attributes any byte of `record` to this backup."""
        entry = self.files.get(record.path)
        if entry is None:
            return False  # not in the newest backup: dropped since
        if entry.whole is not None:
            return entry.whole == self.backup_id
        start, end = record.offset, min(record.offset + record.length, entry.size)
        for first, count, owner in self._ranges(entry, start):
            if owner == self.backup_id and first * BLOCK_SIZE < end:
                return True
            if (first + count) * BLOCK_SIZE >= end:
                break
        return False

    @staticmethod
    def _ranges(entry: FileEntry, start: int) -> list[Range]:
        ranges = entry.ranges or []
        at = max(bisect.bisect_right(ranges, start // BLOCK_SIZE, key=lambda r: r[0]) - 1, 0)
        return ranges[at:]

    def write(self, record: Record, done: int, chunk: bytes) -> None:
        entry = self.files.get(record.path)
        if entry is None:
            return  # not in the newest backup: dropped since
        start = record.offset + done
        if entry.whole is not None:
            if entry.whole == self.backup_id:
                self._pwrite(entry, chunk, start)
            return
        end = min(start + len(chunk), entry.size)
        for first, count, owner in self._ranges(entry, start):
            lo, hi = max(start, first * BLOCK_SIZE), min(end, (first + count) * BLOCK_SIZE)
            if lo < hi and owner == self.backup_id:
                self._pwrite(entry, chunk[lo - start : hi - start], lo)
            if (first + count) * BLOCK_SIZE >= end:
                break

    def _pwrite(self, entry: FileEntry, data: bytes, offset: int) -> None:
        if entry.path != self._path:
            self.close()
            with self._lock:
                first = entry.path not in self._sized
                self._sized.add(entry.path)
            self._fd = _open_sized(self.pgdata / entry.path, entry, first=first)
            self._path = entry.path
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, offset)
            view, offset = view[n:], offset + n
        self.written += len(data)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._path = -1, None
