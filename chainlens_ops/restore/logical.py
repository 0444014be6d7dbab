"""Logical restore: a `pg_dump -Fc` backup from the repository into a database.

The dump streams from the repository, decompressed and checked against its manifest,
into pg_restore's stdin: no local copy. `--jobs` needs a seekable file (pg_restore
reads the table of contents, then jumps to each table's data), so with jobs > 1 the
dump is first spooled to a file (said in the result), then removed. A `backup --jobs`
backup is pg_dump's directory format, which pg_restore reads only from a directory: its
files are always spooled into one. Spools go under `spool_dir` (else $TMPDIR, else
/var/tmp), owner-only, after a check that the disk has room for the dump plus
`spool_reserve`.

The database is created when absent; an existing one must hold no tables (or views,
sequences, ...) outside the system schemas unless `clean` (pg_restore --clean
--if-exists drops what the dump recreates).
"""

from __future__ import annotations

import os
import shutil
import time
from contextlib import ExitStack
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from chainlens_ops.backup.manifest import (
    LOGICAL,
    BackupManifest,
    BackupObject,
    read_manifest,
    require_backup,
)
from chainlens_ops.backup.parallel import (
    fetch_directory,
    is_directory,
    require_room,
    spool_folder,
    spool_root,
)
from chainlens_ops.core.crashpoints import crash_point, pause_point
from chainlens_ops.core.errors import OperationFailed, UsageError
from chainlens_ops.pg.binaries import connection_for_binary, find_binary, major_of
from chainlens_ops.pg.connection import connect, server_version_num
from chainlens_ops.pg.process import PgStream
from chainlens_ops.repository import Repository
from chainlens_ops.repository.datacodec import CheckedReader
from chainlens_ops.repository.layout import DUMP_NAME as DUMP_OBJECT
from chainlens_ops.settings.config import DatabaseTarget


@dataclass(frozen=True)
class LogicalResult:
    backup_id: str
    database: str
    created: bool
    cleaned: bool
    jobs: int
    spooled: bool
    restored_bytes: int
    seconds: float


def restore_logical(
    repo: Repository,
    target: DatabaseTarget,
    backup_id: str,
    dbname: str,
    *,
    jobs: int = 1,
    clean: bool = False,
    spool_dir: str | None = None,
    spool_reserve: int = 0,
) -> LogicalResult:
    """Under a claim on the backup, as every restore: a prune that lands meanwhile keeps
    it (repository/claim.py). A mistyped id is refused before the claim is written."""
    require_backup(repo, backup_id)
    with repo.locks.claim("restore --dbname").hold() as claim:
        claim.scope(backup_id)
        return _restore_logical(repo, target, backup_id, dbname, jobs=jobs, clean=clean,
                                spool_dir=spool_dir, spool_reserve=spool_reserve)  # fmt: skip


def _restore_logical(
    repo: Repository,
    target: DatabaseTarget,
    backup_id: str,
    dbname: str,
    *,
    jobs: int,
    clean: bool,
    spool_dir: str | None,
    spool_reserve: int,
) -> LogicalResult:
    manifest = read_manifest(repo, backup_id)
    if manifest.kind != LOGICAL:
        raise UsageError(
            f"backup {backup_id} is a {manifest.kind} backup; --dbname restores logical ones",
            hint="restore a base backup with --pgdata and a target",
        )
    directory = is_directory(manifest)
    obj = None if directory else _dump_object(manifest)
    if obj is None and not directory:
        raise OperationFailed(f"backup {backup_id} has no {DUMP_OBJECT}")
    spooled = directory or jobs > 1
    root = spool_root(spool_dir)
    if spooled:  # refused before the database is created
        require_room(root, manifest.raw_bytes, spool_reserve, f"the dump of backup {backup_id}")
    started = time.monotonic()
    with connect(target) as conn:
        major = major_of(server_version_num(conn))
        exists = (
            conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
            is not None
        )
    if exists and not clean:
        objects = _user_objects(target, dbname)
        if objects:
            raise UsageError(
                f"database {dbname} already holds {objects} table(s) or other relations",
                hint="restore into a new database, or pass --clean to replace what the dump holds",
            )
    argv = [find_binary("pg_restore", major), "--exit-on-error", "--no-owner", "-w"]
    if clean:
        argv += ["--clean", "--if-exists"]
    if jobs > 1:
        argv += ["-j", str(jobs)]
    with ExitStack() as stack:
        if spooled:  # fetched and checked before the database is created
            folder = stack.enter_context(spool_folder(root, f"restore-{backup_id}"))
            path, restored = _spool(repo, manifest, obj, folder)
        if not exists:
            with connect(target) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        conninfo, env = connection_for_binary(_with_db(target.conninfo, dbname))
        argv += ["-d", conninfo]
        if spooled:
            with PgStream([*argv, path], env=env) as proc:
                crash_point("restore-running")  # pg_restore running: it must die with us
                proc.wait()
        else:
            assert obj is not None
            with (
                CheckedReader(repo.backups, obj) as reader,
                PgStream(argv, env=env, stdin=reader) as proc,  # type: ignore[arg-type]
            ):
                pause_point("logical-restoring")  # pg_restore reading the dump
                proc.wait()
                restored = reader.raw_size
    return LogicalResult(
        backup_id=backup_id, database=dbname, created=not exists, cleaned=clean, jobs=jobs,
        spooled=spooled, restored_bytes=restored, seconds=time.monotonic() - started,
    )  # fmt: skip


def _spool(
    repo: Repository, manifest: BackupManifest, obj: BackupObject | None, folder: str
) -> tuple[str, int]:
    """The dump in `folder`, checked against the manifest: a directory-format dump's
    files into `folder`/dump, a custom-format dump into `folder`/dump.pgc. (path, bytes)"""
    if obj is None:
        path = os.path.join(folder, "dump")
        os.mkdir(path, 0o700)
        return path, fetch_directory(repo.backups, manifest, manifest.objects, path)
    path = os.path.join(folder, "dump.pgc")
    with CheckedReader(repo.backups, obj) as reader, open(path, "xb") as fh:
        shutil.copyfileobj(reader, fh, 1024 * 1024)
        return path, reader.raw_size


def _dump_object(manifest: BackupManifest) -> BackupObject | None:
    return next((o for o in manifest.objects if o.key.endswith("/" + DUMP_OBJECT)), None)


def _with_db(conninfo: str, dbname: str) -> str:
    params = {k: v for k, v in conninfo_to_dict(conninfo).items() if v is not None}
    params["dbname"] = dbname
    return make_conninfo("", **{k: str(v) for k, v in params.items()})


def _user_objects(target: DatabaseTarget, dbname: str) -> int:
    other = DatabaseTarget(target.name, _with_db(target.conninfo, dbname), target.repo)
    try:
        with connect(other) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') "
                "AND n.nspname NOT LIKE 'pg_toast%%' AND n.nspname NOT LIKE 'pg_temp%%'"
            ).fetchone()
    except psycopg.Error as exc:
        raise OperationFailed(f"cannot inspect database {dbname}: {exc}") from None
    return int(row[0]) if row else 0
