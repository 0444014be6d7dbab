"""Taking a files-layout physical backup (`backup --kind incr`): a full one, or the
blocks changed since its parent, read from the local data folder between
`pg_backup_start` and `pg_backup_stop` on one session.

Which blocks (docs/reference.md, incremental backups, has the reasoning): a page of a
relation's main fork is stored when its LSN is at or after the parent's start LSN, when
it is new or zero, when it is beyond the parent's size of the file, when the parent has
no block map of the file, when its PD_ALL_VISIBLE flag is not its held copy's (VACUUM
sets it without a new LSN), or when its header is implausible; every other page is the
parent's (the map points where the parent said it lives). Every other file is copied
whole. The file map (backup.files) is stored after the bundles, the manifest last.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from chainlens_ops.backup.files import (
    CLUSTER_GROUP,
    MAP_NAME,
    Chunks,
    DirEntry,
    FileEntry,
    FileMap,
    Pending,
    Range,
    Record,
    Run,
    bundle_name,
    group_of,
    read_file_map,
    record_header,
    store_bundle,
)
from chainlens_ops.backup.manifest import (
    FILES_LAYOUT,
    BackupManifest,
    BackupObject,
    Catalog,
    UnknownBackup,
    parse_time,
)
from chainlens_ops.core.crashpoints import crash_point, pause_point
from chainlens_ops.core.errors import OperationFailed, UsageError
from chainlens_ops.core.streams import read_full
from chainlens_ops.pg.connection import Connection, connect, first_line
from chainlens_ops.pg.datadir import (
    BLOCK_SIZE,
    Entry,
    all_visible,
    control_system_identifier,
    is_main_fork,
    label_start,
    page_changed,
    tablespaces,
    walk,
)
from chainlens_ops.pg.walnames import parse_lsn
from chainlens_ops.repository import Repository
from chainlens_ops.repository.datacodec import ZSTD_LEVEL_BASE, store_compressed
from chainlens_ops.settings.config import DatabaseTarget

MTIME_MARGIN_S = 2.0  # a file's mtime must be this much older than the parent's start
READ_BLOCKS = 128  # blocks read at once (1 MiB): a record holds at most this many
CONTROL_FILE = "global/pg_control"  # copied last, as pg_basebackup does
Progress = Callable[[int], None]
# The timeline a primary writes now: pg_control's checkpoint names the old one until the
# first checkpoint after a promotion; the current WAL file's name does not lag.
CURRENT_TIMELINE = "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int"


@dataclass(frozen=True)
class Copy:
    """What a files-layout copy stored, for the manifest."""

    objects: list[BackupObject]
    start_lsn: str
    stop_lsn: str
    timeline: int
    label: str  # backup_label from pg_backup_stop
    lineage: dict[str, Any]  # the manifest's layout, parent and chain_depth


def local_data_folder(conn: Connection, system_identifier: int | None) -> Path:
    """The server's data folder, if it is this machine's: it exists here, can be read,
    holds no tablespace, and its pg_control names the server's system identifier.
    OperationFailed (one line) otherwise, before anything is written."""
    row = conn.execute("SHOW data_directory").fetchone()
    folder = Path(str(row[0])) if row else Path()
    where = f"the server's data folder {folder}"
    if system_identifier is None:
        raise OperationFailed(
            "an incremental backup needs a superuser (to read pg_control_system() "
            "and to run pg_backup_start)"
        )
    if not folder.is_dir():
        raise OperationFailed(
            f"{where} is not on this machine: an incremental backup reads it directly",
            hint="run the backup on the database host, as the server's OS user",
        )
    try:
        found = control_system_identifier(folder)
    except PermissionError:
        raise OperationFailed(
            f"cannot read {where}: permission denied",
            hint="run the backup as the server's OS user (e.g. `sudo -u postgres`)",
        ) from None
    except OSError as exc:
        raise OperationFailed(f"cannot read {folder / CONTROL_FILE}: {exc}") from None
    if found != system_identifier:
        raise OperationFailed(
            f"{where} here belongs to another cluster (system identifier {found}, the "
            f"server's is {system_identifier}): the server is not on this machine",
            hint="run the backup on the database host",
        )
    links = tablespaces(folder)
    if links:
        raise OperationFailed(
            f"the cluster has tablespaces (pg_tblspc/{links[0]}): incremental backups "
            "do not support them; take `--kind base`"
        )
    return folder


@dataclass(frozen=True)
class DataFolder:
    """A server's data folder, checked to be this machine's, and the session its
    backup runs on."""

    session: Connection
    folder: Path
    system_identifier: int
    timeline: int  # the server's now


def open_data_folder(target: DatabaseTarget, system_identifier: int | None) -> DataFolder:
    """A session to `target` and its checked data folder (local_data_folder)."""
    session = connect(target)
    try:
        row = session.execute("SELECT pg_is_in_recovery()").fetchone()
        if row is not None and row[0]:
            raise OperationFailed(
                "the server is in recovery (a standby): an incremental backup is taken on "
                "the primary (it reads the WAL position the primary writes)",
                hint="run it against the primary, or take `--kind base` from the standby",
            )
        folder = local_data_folder(session, system_identifier)
        row = session.execute(f"SELECT {CURRENT_TIMELINE}").fetchone()
    except BaseException:
        session.close()
        raise
    assert system_identifier is not None
    return DataFolder(session, folder, system_identifier, int(row[0]) if row else 1)


def choose_parent(catalog: Catalog, local: DataFolder, wanted: str | None) -> BackupManifest | None:
    """The backup an incremental builds on: `wanted`, or the newest complete
    files-layout physical backup of this cluster and timeline (None: take a full).
    UsageError (exit 2) for a `wanted` that is unknown or cannot be a parent."""
    sysid, timeline = str(local.system_identifier), local.timeline
    if wanted is not None:
        found = next((b for b in catalog.valid if b.id == wanted), None)
        if found is None:
            raise UnknownBackup(
                f"no complete backup {wanted!r} to build on",
                hint="see `chainlens-ops backup list` for the ids",
            )
        why = _not_a_parent(found, sysid, timeline)
        if why is not None:
            raise UsageError(f"--from {wanted}: {why}")
        return found
    for backup in catalog.valid:  # newest first
        if _not_a_parent(backup, sysid, timeline) is None:
            try:
                catalog.chain(backup)
            except OperationFailed:
                continue
            return backup
    return None


def _not_a_parent(backup: BackupManifest, sysid: str, timeline: int) -> str | None:
    if not backup.physical:
        return f"it is a {backup.kind} backup; an incremental builds on a physical one"
    if backup.layout != FILES_LAYOUT:
        return "it is a pg_basebackup (tar) backup; an incremental builds on a files-layout one"
    if backup.system_identifier != sysid:
        return "it is a backup of another cluster"
    if backup.timeline != timeline:
        return f"it is on timeline {backup.timeline}, the server on {timeline}"
    return None


def copy_data_folder(
    local: DataFolder,
    repo: Repository,
    backup_id: str,
    parent: BackupManifest | None,
    progress: Progress | None = None,
) -> Copy:
    """pg_backup_start, the copy into bundles, pg_backup_stop, the file map. A failure
    after the start closes the session, which ends the backup on the server."""
    conn, folder = local.session, local.folder
    parent_map = read_file_map(repo, parent) if parent is not None else None
    since = parse_lsn(parent_map.start_lsn) if parent_map is not None else None
    try:
        row = conn.execute(
            "SELECT pg_backup_start(%s, true)", (f"chainlens-ops {backup_id}",)
        ).fetchone()
    except psycopg.errors.InsufficientPrivilege as exc:
        raise OperationFailed(
            f"cannot start the backup: {first_line(exc)}",
            hint="an incremental backup needs a superuser or EXECUTE on pg_backup_start",
        ) from None
    assert row is not None
    try:
        row = conn.execute(f"SELECT pg_current_wal_insert_lsn(), {CURRENT_TIMELINE}").fetchone()
        insert_lsn = parse_lsn(str(row[0])) if row else 0
        if parent is not None and row is not None and int(row[1]) != parent.timeline:
            raise OperationFailed(_moved_timeline(parent, int(row[1])))
        settled = None
        if parent is not None:  # the parent began after this: its files older than that
            began = parse_time(parent.started_at).timestamp() - MTIME_MARGIN_S
            settled = int(began * 1e9)
        copier = Copier(folder, backup_id, parent_map, since, insert_lsn, progress, settled)
        objects = copier.store(repo)
        row = conn.execute(
            "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)"
        ).fetchone()
    except BaseException:
        conn.close()  # a non-exclusive backup ends with its session
        raise
    assert row is not None
    stop_lsn, label, spcmap = str(row[0]), str(row[1]), str(row[2] or "")
    try:
        start_lsn, timeline = label_start(label)
    except ValueError as exc:
        raise OperationFailed(f"pg_backup_stop's backup label is unreadable: {exc}") from None
    fmap = FileMap(
        start_lsn=start_lsn, backup_label=label, tablespace_map=spcmap,
        dirs=copier.dirs, files=sorted(copier.files, key=lambda f: f.path),
    )  # fmt: skip
    objects.append(
        store_compressed(
            repo.backups,
            repo.backups.object_key(backup_id, MAP_NAME),
            io.BytesIO(fmap.to_bytes()),
            level=ZSTD_LEVEL_BASE,
        )
    )
    lineage = {
        "layout": FILES_LAYOUT,
        "parent": parent.id if parent is not None else None,
        "chain_depth": parent.chain_depth + 1 if parent is not None else 0,
    }
    return Copy(objects, start_lsn, stop_lsn, timeline, label, lineage)


def _moved_timeline(parent: BackupManifest, timeline: int) -> str:
    """The server was promoted after the parent was chosen: another history, whose pages
    an LSN compared with the parent's start cannot tell apart."""
    return (f"the server is on timeline {timeline}, its parent {parent.id} on timeline "
            f"{parent.timeline}: run the backup again (it builds on a backup of timeline "
            f"{timeline} or takes a full one)")  # fmt: skip


class Copier:
    """Reads the data folder into bundle records, group by group, and keeps the file
    map entries of what it read."""

    def __init__(
        self, folder: Path, backup_id: str, parent: FileMap | None, since: int | None,
        insert_lsn: int, progress: Progress | None, settled_ns: int | None = None,
    ) -> None:  # fmt: skip
        self.settled_ns = settled_ns  # see _unchanged
        self.folder = folder
        self.backup_id = backup_id
        self.parent = parent.by_path() if parent is not None else {}
        self.since = since
        self.insert_lsn = insert_lsn
        self.progress = progress
        self.dirs: list[DirEntry] = []
        self.files: list[FileEntry] = []

    def store(self, repo: Repository) -> list[BackupObject]:
        groups: dict[str, list[Entry]] = {}
        try:
            for entry in walk(self.folder):
                if entry.is_dir:
                    self.dirs.append(DirEntry(entry.path, entry.mode))
                else:
                    groups.setdefault(group_of(entry.path), []).append(entry)
        except PermissionError as exc:
            raise _unreadable(Path(exc.filename or self.folder)) from None
        cluster = groups.pop(CLUSTER_GROUP, [])
        cluster.sort(key=lambda e: e.path == CONTROL_FILE)  # pg_control last
        order = [*sorted(groups, key=lambda g: int(g[2:])), CLUSTER_GROUP]
        groups[CLUSTER_GROUP] = cluster
        objects: list[BackupObject] = []
        for group in order:
            pending = Pending(self.records(groups[group]))
            part = 0
            while pending.has_more():
                key = repo.backups.object_key(self.backup_id, bundle_name(group, part))
                objects.append(store_bundle(repo.backups, key, pending))
                crash_point("incr-mid-copy")
                pause_point("incr-mid-copy")  # files listed, one bundle stored
                part += 1
        return objects

    def records(self, entries: list[Entry]) -> Iterator[Chunks]:
        """Bundle records of `entries` (read as they are consumed); their map entries
        land in `files`."""
        for entry in entries:
            if self._unchanged(entry):
                continue
            try:
                fh = open(self.folder / entry.path, "rb")  # noqa: SIM115 (read as records)
            except FileNotFoundError:
                continue  # dropped since the walk: WAL replay drops it too
            except PermissionError:
                raise _unreadable(self.folder / entry.path) from None
            with fh:
                if entry.size and entry.size % BLOCK_SIZE == 0 and is_main_fork(entry.path):
                    yield from self._blocks(entry, fh)
                else:
                    yield from self._whole(entry, fh)

    def _unchanged(self, entry: Entry) -> bool:
        """A file the parent holds as it is now, not read again: same size, mtime_ns
        and ctime_ns as in the parent's map, and both older than the parent's start by
        MTIME_MARGIN_S. A write after the parent read the file came after the parent
        began, so it set both times (the kernel's clock, at most a tick coarse) past the
        margin: values the map cannot hold. The ctime also moves on a rename over the
        file or a utime() that sets its mtime back, which nothing can set back. Its map
        entry (and the backups it names) carries over."""
        newest = max(entry.mtime_ns, entry.ctime_ns)
        if self.settled_ns is None or newest >= self.settled_ns:
            return False
        previous = self.parent.get(entry.path)
        if previous is None or previous.ctime_ns is None:
            return False
        if (previous.size, previous.mtime_ns, previous.ctime_ns) != (
            entry.size, entry.mtime_ns, entry.ctime_ns,
        ):  # fmt: skip
            return False
        self.files.append(previous)
        return True

    def _whole(self, entry: Entry, fh: io.BufferedReader) -> Iterator[Chunks]:
        self.files.append(FileEntry(entry.path, entry.size, entry.mode, entry.mtime_ns,
                                    whole=self.backup_id, ctime_ns=entry.ctime_ns))  # fmt: skip
        if entry.size:
            yield self._chunks(Record(entry.path, 0, entry.size), fh)

    def _chunks(self, record: Record, fh: io.BufferedReader) -> Chunks:
        yield record_header(record)
        left = record.length
        while left:
            data = fh.read(min(left, READ_BLOCKS * BLOCK_SIZE))
            if not data:  # shorter than when listed: zeros, as pg_basebackup pads
                data = bytes(min(left, READ_BLOCKS * BLOCK_SIZE))
            left -= len(data)
            if self.progress is not None:
                self.progress(len(data))
            yield data

    def _blocks(self, entry: Entry, fh: io.BufferedReader) -> Iterator[Chunks]:
        blocks = entry.size // BLOCK_SIZE
        previous = self.parent.get(entry.path)
        inherited = previous.ranges if previous is not None and self.since is not None else None
        if inherited and len(inherited) > max_ranges(blocks):
            inherited = None  # too fragmented: stored whole again, its map entry one range
        owners = _Owners(inherited or [])
        # PD_ALL_VISIBLE of the copies the parent's map points to: a page whose flag is
        # not its held copy's is stored (VACUUM sets it without a new LSN), so every
        # block's held copy carries the flag the page has now.
        held_visible = _Runs(previous.visible if inherited and previous is not None else [])
        visible: list[Run] = []
        ranges: list[Range] = []
        first = 0
        while first < blocks:
            count = min(READ_BLOCKS, blocks - first)
            data = read_full(fh, count * BLOCK_SIZE)
            if len(data) < count * BLOCK_SIZE:  # truncated while read: zero pages
                data += bytes(count * BLOCK_SIZE - len(data))
            if self.progress is not None:
                self.progress(len(data))
            view = memoryview(data)
            flags = all_visible(view)
            for i in (i for i, flagged in enumerate(flags) if flagged):
                _extend_run(visible, first + i)
            if owners.beyond(first):  # nothing of the parent's from here on: all stored
                yield _run(entry.path, first, 0, count, view)
                _extend(ranges, first, self.backup_id, count)
                first += count
                continue
            run_start: int | None = None
            for i in range(count):
                block = first + i
                owner = owners.at(block)
                page = view[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE]
                assert self.since is not None or owner is None
                if (
                    owner is None
                    or page_changed(page, self.since or 0, self.insert_lsn)
                    or flags[i] != held_visible.has(block)
                ):
                    owner = self.backup_id
                    if run_start is None:
                        run_start = i
                elif run_start is not None:
                    yield _run(entry.path, first, run_start, i, view)
                    run_start = None
                _extend(ranges, block, owner)
            if run_start is not None:
                yield _run(entry.path, first, run_start, count, view)
            first += count
        # Bounded like the ranges: a block left out only costs its store next time.
        del visible[max_ranges(blocks) :]
        self.files.append(FileEntry(entry.path, entry.size, entry.mode, entry.mtime_ns,
                                    ranges=ranges, ctime_ns=entry.ctime_ns,
                                    visible=visible))  # fmt: skip


def _unreadable(path: Path) -> OperationFailed:
    return OperationFailed(
        f"cannot read {path}: permission denied",
        hint="run the backup as the server's OS user (e.g. `sudo -u postgres`)",
    )


def max_ranges(blocks: int) -> int:
    """The ranges a file's map entry may inherit: beyond that (scattered changes over a
    long chain) the file is stored again whole, so the file map, and the memory that
    holds it, stays near 2 ranges per 64 blocks at most."""
    return max(64, blocks // 64)


def _run(path: str, first: int, start: int, end: int, view: memoryview) -> Chunks:
    record = Record(path, (first + start) * BLOCK_SIZE, (end - start) * BLOCK_SIZE)
    return iter((record_header(record), bytes(view[start * BLOCK_SIZE : end * BLOCK_SIZE])))


def _extend(ranges: list[Range], block: int, owner: str, count: int = 1) -> None:
    if ranges and ranges[-1][2] == owner:
        first, had, _ = ranges[-1]
        ranges[-1] = (first, had + count, owner)
    else:
        ranges.append((block, count, owner))


def _extend_run(runs: list[Run], block: int) -> None:
    if runs and runs[-1][0] + runs[-1][1] == block:
        runs[-1] = (runs[-1][0], runs[-1][1] + 1)
    else:
        runs.append((block, 1))


class _Runs:
    """Whether a block is in a list of runs, asked in block order."""

    def __init__(self, runs: list[Run]) -> None:
        self._runs = runs
        self._i = 0

    def has(self, block: int) -> bool:
        while self._i < len(self._runs):
            first, count = self._runs[self._i]
            if block < first + count:
                return block >= first
            self._i += 1
        return False


class _Owners:
    """Which backup the parent's map says holds each block, asked in block order."""

    def __init__(self, ranges: list[Range]) -> None:
        self._ranges = ranges
        self._i = 0

    def at(self, block: int) -> str | None:
        while self._i < len(self._ranges):
            first, count, owner = self._ranges[self._i]
            if block < first + count:
                return owner if block >= first else None
            self._i += 1
        return None  # beyond the parent's size of the file

    def beyond(self, block: int) -> bool:
        """No block from `block` on is the parent's."""
        last = self._ranges[-1] if self._ranges else None
        return last is None or block >= last[0] + last[1]


def files_full_notice(name: str) -> str:
    return (f"{name}: no files-layout backup of this cluster and timeline to build on: "
            "taking a full one (kind base, layout files)")  # fmt: skip
