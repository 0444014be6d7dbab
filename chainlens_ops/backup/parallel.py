"""Parallel logical backups: `pg_dump -Fd -j N`, spooled on local disk.

`pg_dump -j` works only with its directory format, which pg_dump writes into a local
folder (one file per table plus `toc.dat`), so this mode cannot stream:

    1. the dump's size is estimated (pg_database_size: the text of a dump is usually
       smaller than the database, whose indexes it does not copy) and the spool's disk
       must have that much free plus `[backup] spool_reserve`; otherwise one line and
       nothing is written;
    2. `pg_dump -Fd -Z0 -j N` into a fresh owner-only folder under the spool folder
       (`spool_dir`, else $TMPDIR, else /var/tmp): `chainlens-backup-<id>-XXXX/dump`;
    3. each file, zstd-compressed as it streams, becomes `backups/<id>/dump.d/<file>.zst`
       with its size and sha256 in the manifest, and leaves the spool once stored;
    4. the spool folder is removed, whether the backup succeeded or not; if the command
       is killed, pg_dump dies with it (`pg.process`) and the next backup or prune
       removes the folder (`backup.leftovers`).

Restore and verify bring the objects back into such a folder (`fetch_directory`):
pg_restore reads a directory-format dump only from a directory, `-j` included.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from chainlens_ops.backup.manifest import BackupManifest, BackupObject
from chainlens_ops.core.crashpoints import crash_point
from chainlens_ops.core.errors import OperationFailed
from chainlens_ops.pg.process import PgStream
from chainlens_ops.repository.datacodec import (
    LOGICAL_WINDOW_LOG,
    READ_SIZE,
    CheckedReader,
    Progress,
    store_compressed,
)
from chainlens_ops.repository.layout import DUMP_FOLDER as DIRECTORY
from chainlens_ops.repository.stores import BackupStore
from chainlens_ops.settings.keys import format_bytes

TOC = "toc.dat"
_POLL_S = 0.5


def spool_root(spool_dir: str | None) -> str:
    """Where local spools go: `spool_dir` (CHAINLENS_SPOOL_DIR), else $TMPDIR, else
    /var/tmp (on disk, unlike a /tmp that is often memory)."""
    return spool_dir or os.environ.get("TMPDIR") or "/var/tmp"


def require_room(folder: str, needed: int, reserve: int, what: str) -> int:
    """Free bytes in `folder`'s file system; OperationFailed unless it holds `needed`
    plus `reserve` (the room left for everything else on that disk)."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        raise OperationFailed(
            f"cannot use spool folder {folder}: {exc.strerror or exc}",
            hint="set spool_dir (CHAINLENS_SPOOL_DIR) to a folder this user can write",
        ) from None
    if free < needed + reserve:
        raise OperationFailed(
            f"not enough free space in {folder} for {what}: about {format_bytes(needed)} "
            f"needed plus {format_bytes(reserve)} kept free (spool_reserve), "
            f"{format_bytes(free)} free",
            hint="free some space, point spool_dir at a larger disk, or back up without --jobs",
        )
    return free


SPOOL_PREFIX = "chainlens-"
OWNER_FILE = "owner"  # in each spool folder: "<host> <pid> <process start time>"


@contextmanager
def spool_folder(root: str, label: str) -> Iterator[str]:
    """A fresh owner-only folder under `root`, removed on the way out. It names its
    process (OWNER_FILE), so that what a `kill -9` leaves is found and removed by the
    next backup or prune (`backup.leftovers`)."""
    try:
        folder = tempfile.mkdtemp(prefix=f"{SPOOL_PREFIX}{label}-", dir=root)
        with open(os.path.join(folder, OWNER_FILE), "x") as fh:
            fh.write(process_identity(os.getpid()) or "")
    except OSError as exc:
        raise OperationFailed(
            f"cannot create a spool folder in {root}: {exc.strerror or exc}",
            hint="set spool_dir (CHAINLENS_SPOOL_DIR) to a folder this user can write",
        ) from None
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def process_identity(pid: int) -> str | None:
    """ "<host> <pid> <start time>" of a running process of this host, None if there is
    none: the start time (in clock ticks since boot) tells a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()  # after "pid (comm) "
    return f"{socket.gethostname()} {pid} {fields[19].decode()}"


@dataclass(frozen=True)
class DirectoryDump:
    """One `pg_dump -Fd -j N` run; `argv` is pg_dump with its connection options."""

    argv: Sequence[str]
    env: dict[str, str]
    jobs: int
    level: int
    cancel: threading.Event | None = None
    progress: Progress | None = None
    stage: Callable[[str], None] | None = None


def dump_and_store(run: DirectoryDump, folder: str, store: BackupStore, backup_id: str) -> list[
    BackupObject
]:  # fmt: skip
    """pg_dump into `folder`/dump, then every file into the repository (each removed
    from the spool once stored). The objects, `toc.dat` first."""
    dump = os.path.join(folder, "dump")
    argv = [*run.argv, "-Fd", "-Z0", "-j", str(run.jobs), "-f", dump]
    if run.stage is not None:
        run.stage("dump")
    with _watching(dump, run.progress), PgStream(argv, env=run.env, cancel=run.cancel) as proc:
        crash_point("backup-dumping")  # pg_dump running: it must die with us
        proc.wait()
    crash_point("backup-spooled")  # the whole dump in the spool, nothing stored yet
    if run.stage is not None:
        run.stage("store")
    names = sorted(os.listdir(dump), key=lambda name: (name != TOC, name))
    if TOC not in names:
        raise OperationFailed(f"pg_dump wrote no {TOC} into {dump}")
    objects = []
    for name in names:
        path = os.path.join(dump, name)
        with open(path, "rb") as fh:
            objects.append(store_compressed(
                store, store.object_key(backup_id, f"{DIRECTORY}{name}.zst"), fh,
                level=run.level, window_log=LOGICAL_WINDOW_LOG, progress=run.progress,
            ))  # fmt: skip
        os.unlink(path)
    return objects


def is_directory(manifest: BackupManifest) -> bool:
    """A `--jobs` backup (pg_dump's directory format) rather than one custom-format dump."""
    return any(_member(manifest, obj) is not None for obj in manifest.objects)


def member_name(manifest: BackupManifest, obj: BackupObject) -> str:
    """The file of the dump folder that `obj` holds (`toc.dat`, `3586.dat`)."""
    name = _member(manifest, obj)
    if name is None:
        raise OperationFailed(f"{obj.key} is not part of a directory-format dump")
    return name


def fetch_directory(
    store: BackupStore, manifest: BackupManifest, objects: Iterable[BackupObject], folder: str
) -> int:
    """Write `objects` (decompressed, checked against the manifest) into `folder`; the
    bytes written. Raises CorruptBackupObject naming the first bad object."""
    written = 0
    for obj in objects:
        path = os.path.join(folder, member_name(manifest, obj))
        with CheckedReader(store, obj) as reader, open(path, "xb") as out:
            while chunk := reader.read(READ_SIZE):
                out.write(chunk)
            written += reader.raw_size
    return written


def _member(manifest: BackupManifest, obj: BackupObject) -> str | None:
    prefix = BackupStore.object_key(manifest.id, DIRECTORY)
    if not (obj.key.startswith(prefix) and obj.key.endswith(".zst")):
        return None
    name = obj.key[len(prefix) : -len(".zst")]
    # Names come from pg_dump (toc.dat, 1234.dat, blob_5.dat, blobs.toc): never a path.
    if not name or "/" in name or name.startswith("."):
        raise OperationFailed(f"{obj.key}: not a file name pg_dump writes")
    return name


@contextmanager
def _watching(folder: str, progress: Progress | None) -> Iterator[None]:
    """Report the growth of `folder` while pg_dump writes into it (its processes write
    the files; nothing passes through this one)."""
    if progress is None:
        yield
        return
    done = threading.Event()

    def watch() -> None:
        seen = 0
        while not done.wait(_POLL_S):
            size = _tree_size(folder)
            if size > seen:
                progress(size - seen)
                seen = size

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _tree_size(folder: str) -> int:
    total = 0
    with suppress(FileNotFoundError), os.scandir(folder) as entries:
        for entry in entries:
            with suppress(FileNotFoundError):
                total += entry.stat().st_size
    return total
