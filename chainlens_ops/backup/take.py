"""`chainlens-ops backup`: a logical (pg_dump) or base (pg_basebackup) backup into the
repository, under the repository lock, catalogued by a manifest written last.

Which kind (`auto`): point-in-time restore needs a base backup plus archived WAL, so a
base backup is taken when the cluster archives into this repository (archive_mode on
and its newest archived segment present here); otherwise a logical one, and the reason
is reported in one line. `--kind base` on a cluster that does not archive here is
refused with that reason instead of waiting for WAL that will never come.

A base backup is complete only once the WAL that makes it consistent (its start segment
to its stop segment, and the `.backup` history file) is in the repository: bounded
wait, then a clear error, and no manifest.
"""

from __future__ import annotations

import io
import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import closing, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

from chainlens_ops import __version__
from chainlens_ops.backup.blockcopy import (
    DataFolder,
    choose_parent,
    copy_data_folder,
    files_full_notice,
    open_data_folder,
)
from chainlens_ops.backup.choice import choose_physical
from chainlens_ops.backup.leftovers import remove_dead_backups, remove_dead_spools
from chainlens_ops.backup.manifest import (
    BASE,
    INCR,
    LOGICAL,
    BackupKind,
    BackupManifest,
    BackupObject,
    format_time,
    new_backup_id,
    read_catalog,
    utc_now,
    write_manifest,
)
from chainlens_ops.backup.parallel import (
    DirectoryDump,
    dump_and_store,
    require_room,
    spool_folder,
    spool_root,
)
from chainlens_ops.backup.tarsniff import TarSniffer
from chainlens_ops.core.crashpoints import crash_point
from chainlens_ops.core.errors import OperationFailed, UsageError
from chainlens_ops.pg.binaries import connection_for_binary, find_binary, major_of
from chainlens_ops.pg.connection import Connection, connect
from chainlens_ops.pg.datadir import label_start
from chainlens_ops.pg.process import PgStream
from chainlens_ops.pg.walnames import parse_lsn, parse_wal_name, segment_name
from chainlens_ops.repository import Repository
from chainlens_ops.repository.datacodec import (
    LOGICAL_WINDOW_LOG,
    ZSTD_LEVEL_BASE,
    Progress,
    store_compressed,
)
from chainlens_ops.repository.layout import BASE_TAR_NAME, DUMP_NAME
from chainlens_ops.repository.lock import DEFAULT_WAIT_S
from chainlens_ops.repository.walcodec import decode
from chainlens_ops.settings.config import (
    DEFAULT_FULL_EVERY_S,
    DEFAULT_SPOOL_RESERVE,
    DEFAULT_ZSTD_LEVEL,
    DatabaseTarget,
)
from chainlens_ops.settings.keys import format_bytes
from chainlens_ops.storage import NotFound

# What `--kind` may ask for: a kind, or `auto` (chosen by the cluster's archiving).
KINDS = ("auto", *(kind.value for kind in BackupKind))
PITR_HINT = "point-in-time restore needs WAL archiving into this repository, see README"
WAL_WAIT_S = 120.0  # for the WAL that makes a base backup consistent
ARCHIVE_STALL_S = 300.0  # pg_basebackup silent this long: the server waits for archiving
_POLL_S = 0.5


@dataclass(frozen=True)
class BackupOptions:
    kind: str = "auto"
    progress: Progress | None = None
    notify: Callable[[str], None] | None = None  # one-line notices (kind chosen, takeover)
    cancel: threading.Event | None = None
    lock_wait_s: float = DEFAULT_WAIT_S
    wal_wait_s: float = WAL_WAIT_S
    zstd_level: int = DEFAULT_ZSTD_LEVEL  # logical dumps ([backup] zstd_level)
    jobs: int = 1  # logical: > 1 is pg_dump -Fd -j N, spooled locally (backup.spool)
    spool_dir: str | None = None  # where that spool goes (see spool.spool_root)
    spool_reserve: int = DEFAULT_SPOOL_RESERVE  # free space it must leave on that disk
    stage: Callable[[str], None] | None = None  # "dump", "store": what progress counts
    parent: str | None = None  # incr: `--from ID`, the backup to build on
    full_every_s: float = DEFAULT_FULL_EVERY_S  # auto: a new full once the chain's is this old


@dataclass(frozen=True)
class BackupResult:
    id: str
    kind: str
    target: str
    database: str
    server: str
    reason: str  # why this kind
    size_bytes: int
    raw_bytes: int
    seconds: float
    started_at: str
    finished_at: str
    repo: str = ""
    system_identifier: int | None = None
    covered_by: str | None = None  # no new backup: this base backup of the cluster covers it
    notices: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Cluster:
    server: str
    database: str
    version: int
    system_identifier: int | None
    seg_size: int
    archive_mode: str
    last_archived: str | None
    database_size: int
    never_archived: str | None = None  # why no WAL arrived after a switch (see _first_segment)


def take_backup(
    target: DatabaseTarget,
    repo: Repository,
    options: BackupOptions | None = None,
    *,
    earlier: Sequence[BackupResult] = (),
) -> BackupResult:
    """One backup of `target` into `repo`. `earlier`: backups taken in this run (`--db
    all`); a base backup of the same cluster into the same repository already covers
    `target` (a base backup is of the whole cluster), so none is taken twice."""
    options = options or BackupOptions()
    if options.kind not in KINDS:
        raise UsageError(f"--kind must be one of {', '.join(KINDS)}, not {options.kind!r}")
    if options.jobs < 1:
        raise UsageError(f"--jobs must be 1 or more, not {options.jobs}")
    if options.jobs > 1 and options.kind != LOGICAL:
        raise UsageError("--jobs needs --kind logical (pg_dump's parallel directory format)")
    if options.parent is not None and options.kind != INCR:
        raise UsageError("--from needs --kind incr")
    notices: list[str] = []

    def notify(line: str) -> None:
        notices.append(line)
        if options.notify is not None:
            options.notify(line)

    conn = connect(target)
    try:
        cluster = _inspect(conn)
        if options.kind != LOGICAL:
            cluster = _first_segment(conn, cluster, options.wal_wait_s, notify, target.name)
    finally:
        conn.close()
    kind, reason = choose_kind(cluster, repo, options.kind)
    for prev in earlier:
        same = (prev.repo, prev.system_identifier) == (repo.url, cluster.system_identifier)
        physical = kind in (BASE, INCR) and prev.kind in (BASE, INCR)
        if physical and same and prev.covered_by is None:
            line = f"{target.name}: same cluster as {prev.target}: base backup {prev.id} covers it"
            notify(line)
            return replace(
                prev, target=target.name, database=cluster.database, reason=line,
                covered_by=prev.id, size_bytes=0, raw_bytes=0, seconds=0.0, notices=notices,
            )  # fmt: skip
    # auto on a cluster that archives here: read the data folder itself where it is on
    # this host (a full or an incremental, chosen under the lock), else pg_basebackup.
    auto_files = False
    local: DataFolder | None = None
    if kind == INCR:  # refused before anything is written unless the data folder is here
        local = open_data_folder(target, cluster.system_identifier)
    elif options.kind == "auto" and kind == BASE:
        try:
            local = open_data_folder(target, cluster.system_identifier)
        except OperationFailed as exc:
            reason = choose_physical(
                not_local=exc.message, chain=None, full_every_s=options.full_every_s, now=utc_now()
            ).reason
        else:
            auto_files, kind = True, INCR  # the files layout: full or incremental, below
    if options.kind == "auto" and not auto_files:
        notify(f"{target.name}: {reason}")
    # What killed commands left: their spools first, as they take the room checked below.
    cleaned = remove_dead_spools(spool_root(options.spool_dir))
    spool_free = 0
    if kind == LOGICAL and options.jobs > 1:  # refused before anything is written
        spool_free = require_room(
            spool_root(options.spool_dir), cluster.database_size, options.spool_reserve,
            f"the --jobs {options.jobs} dump of {cluster.database}",
        )  # fmt: skip

    lock = repo.locks.lock(
        f"backup --kind {kind} --db {target.name}", wait_s=options.lock_wait_s, notify=notify
    )
    started = utc_now()
    clock = time.monotonic()
    with closing(local.session) if local else nullcontext(), lock.hold():
        cleaned += remove_dead_backups(repo)
        if freed := cleaned.summary():
            notify(freed)
        if cluster.system_identifier is not None:
            repo.ensure_marker(
                cluster.system_identifier, cluster.seg_size, major_of(cluster.version)
            )
        parent: BackupManifest | None = None
        if local is not None:
            catalog = read_catalog(repo)
            parent = choose_parent(catalog, local, options.parent)
            if auto_files:
                choice = choose_physical(
                    not_local=None, chain=catalog.chain(parent) if parent else None,
                    full_every_s=options.full_every_s, now=started,
                )  # fmt: skip
                parent, reason = choice.parent, choice.reason
                notify(f"{target.name}: {reason}")
            elif parent is None:
                notify(files_full_notice(target.name))
            if parent is None:
                kind = BASE
        backup_id = new_backup_id(repo, started, kind, target.name)
        wal: dict[str, Any] = {}  # a physical backup's WAL fields of the manifest
        if local is not None:
            copied = copy_data_folder(local, repo, backup_id, parent, options.progress)
            objects = copied.objects
            wal = _wal_fields(repo, cluster, copied.start_lsn, copied.timeline,
                              copied.stop_lsn, options) | copied.lineage  # fmt: skip
        elif kind == LOGICAL and options.jobs > 1:
            objects = _logical_parallel(
                target, cluster, backup_id, repo, options, notify, spool_free
            )
        elif kind == LOGICAL:
            objects = [_logical(target, cluster, backup_id, repo, options)]
        else:
            obj, wal = _base(target, cluster, backup_id, repo, options)
            objects = [obj]
        lock.check()
        finished = utc_now()
        manifest = BackupManifest(
            id=backup_id, kind=kind, target=target.name, database=cluster.database,
            server=cluster.server, server_version=cluster.version,
            system_identifier=(
                str(cluster.system_identifier) if cluster.system_identifier is not None else None
            ),
            started_at=format_time(started), finished_at=format_time(finished),
            objects=objects, tool_version=__version__,
        )  # fmt: skip
        manifest = replace(manifest, **wal)
        crash_point("backup-before-manifest")
        write_manifest(repo, manifest)
    return BackupResult(
        id=backup_id, kind=kind, target=target.name, database=cluster.database,
        server=cluster.server, reason=reason, size_bytes=manifest.size_bytes,
        raw_bytes=manifest.raw_bytes, seconds=time.monotonic() - clock,
        started_at=manifest.started_at, finished_at=manifest.finished_at, repo=repo.url,
        system_identifier=cluster.system_identifier, notices=notices,
    )  # fmt: skip


def choose_kind(cluster: _Cluster, repo: Repository, wanted: str) -> tuple[BackupKind, str]:
    """(kind, one line saying why). `--kind base` where it cannot work raises that line."""
    if wanted == LOGICAL:
        return LOGICAL, "logical backup, as asked (a pg_dump cannot be replayed forward)"
    why_not = _why_no_base(cluster, repo)
    if why_not is None and wanted == INCR:
        return INCR, "incremental backup: the cluster archives its WAL into this repository"
    if why_not is None:
        return BASE, "base backup: the cluster archives its WAL into this repository"
    if wanted == INCR:
        raise OperationFailed(f"cannot take an incremental backup: {why_not}", hint=PITR_HINT)
    if wanted == BASE:
        raise OperationFailed(f"cannot take a base backup: {why_not}", hint=PITR_HINT)
    return LOGICAL, f"{why_not}: logical backup; {PITR_HINT}"


def _first_segment(
    conn: Connection, cluster: _Cluster, wait_s: float, notify: Callable[[str], None], name: str
) -> _Cluster:
    """A cluster that archives but has archived nothing yet (archive_command just set):
    switch a segment, as `check` does, and wait (bounded) for it to be archived, so the
    first base backup is not refused for want of WAL that only needed a push."""
    if cluster.archive_mode not in ("on", "always") or cluster.last_archived is not None:
        return cluster
    import psycopg

    from chainlens_ops.health.archiving import switch_segment

    try:
        before = conn.execute(
            "SELECT failed_count, current_setting('archive_command') = '' AND "
            "current_setting('archive_library') = '' FROM pg_stat_archiver"
        ).fetchone()
        if before is not None and before[1]:  # nothing would ever archive: do not wait
            return replace(cluster, never_archived="archive_command is empty")
        segment, lsn = switch_segment(conn)
    except psycopg.Error:  # no privilege to switch: the refusal below says what to run
        return cluster
    notify(f"{name}: no WAL archived yet: switched a segment at {lsn}, waiting up to "
           f"{wait_s:g}s for {segment} to be archived")  # fmt: skip
    deadline = time.monotonic() + wait_s
    while True:
        row = conn.execute(
            "SELECT last_archived_wal, failed_count FROM pg_stat_archiver"
        ).fetchone()
        if row is not None and row[0] is not None:
            return replace(cluster, last_archived=str(row[0]))
        failed = int(row[1]) - int(before[0]) if row is not None and before is not None else 0
        if failed > 0 or time.monotonic() > deadline:  # a failure will not heal by waiting
            return replace(cluster, never_archived=(
                "the cluster archived no WAL after a segment switch"
                + (f" (archive_command failed {failed} time(s): see the server log)"
                   if failed else "")
            ))  # fmt: skip
        time.sleep(_POLL_S)


def _why_no_base(cluster: _Cluster, repo: Repository) -> str | None:
    if cluster.archive_mode not in ("on", "always"):
        return f"archive_mode is {cluster.archive_mode}"
    if cluster.system_identifier is None:
        return "cannot read the cluster's system identifier (needs a superuser)"
    if cluster.last_archived is None:
        return (cluster.never_archived or "the cluster has archived no WAL yet") + (
            " (see `chainlens-ops check`)"
        )
    try:
        wal = parse_wal_name(cluster.last_archived)
        repo.wal.stat(wal)
    except (NotFound, UsageError):
        return (
            f"its newest archived WAL {cluster.last_archived} is not in repository "
            f"{repo.url} (archive_command archives elsewhere)"
        )
    marker = repo.marker()
    if marker is not None and marker.system_identifier != cluster.system_identifier:
        return f"repository {repo.url} belongs to another cluster"
    return None


def _inspect(conn: Connection) -> _Cluster:
    row = conn.execute(
        "SELECT current_database(), current_setting('server_version_num')::int, "
        "current_setting('archive_mode'), current_setting('wal_segment_size'), "
        "(SELECT last_archived_wal FROM pg_stat_archiver), "
        "pg_database_size(current_database())"
    ).fetchone()
    assert row is not None
    try:
        sysid_row = conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()
        sysid = int(sysid_row[0]) if sysid_row else None
    except Exception:  # no privilege: base backups need a superuser or replication role
        sysid = None
    return _Cluster(
        server=f"{conn.info.host}:{conn.info.port}",
        database=str(row[0]),
        version=int(row[1]),
        system_identifier=sysid,
        seg_size=_size_setting(str(row[3])),
        archive_mode=str(row[2]),
        last_archived=row[4],
        database_size=int(row[5]),
    )


def _size_setting(text: str) -> int:
    units = {"kB": 1024, "MB": 1024**2, "GB": 1024**3}
    match = re.fullmatch(r"(\d+)\s*(kB|MB|GB)?", text.strip())
    if not match:
        raise OperationFailed(f"cannot read wal_segment_size {text!r}")
    return int(match.group(1)) * units.get(match.group(2) or "", 1)


def _binary_args(target: DatabaseTarget) -> tuple[str, dict[str, str]]:
    dsn, env = connection_for_binary(target.conninfo)
    if "connect_timeout" not in dsn:
        dsn += " connect_timeout=10"
    return dsn, env


def _logical(
    target: DatabaseTarget, cluster: _Cluster, backup_id: str, repo: Repository,
    options: BackupOptions,
) -> BackupObject:  # fmt: skip
    dsn, env = _binary_args(target)
    argv = [find_binary("pg_dump", major_of(cluster.version)), "-Fc", "-Z0", "-w", "-d", dsn]
    with PgStream(argv, env=env, cancel=options.cancel) as stream:
        return store_compressed(
            repo.backups, repo.backups.object_key(backup_id, DUMP_NAME), stream,  # type: ignore[arg-type]
            level=options.zstd_level, window_log=LOGICAL_WINDOW_LOG, progress=options.progress,
        )  # fmt: skip


def _logical_parallel(
    target: DatabaseTarget, cluster: _Cluster, backup_id: str, repo: Repository,
    options: BackupOptions, notify: Callable[[str], None], free: int,
) -> list[BackupObject]:  # fmt: skip
    """`pg_dump -Fd -j N` through a local spool (chainlens_ops.backup.parallel)."""
    dsn, env = _binary_args(target)
    run = DirectoryDump(
        argv=[find_binary("pg_dump", major_of(cluster.version)), "-w", "-d", dsn], env=env,
        jobs=options.jobs, level=options.zstd_level, cancel=options.cancel,
        progress=options.progress, stage=options.stage,
    )  # fmt: skip
    with spool_folder(spool_root(options.spool_dir), f"backup-{backup_id}") as folder:
        notify(
            f"{target.name}: --jobs {options.jobs} needs pg_dump's directory format, which "
            f"writes to local disk: spooling in {folder} (about "
            f"{format_bytes(cluster.database_size)}, "
            f"{format_bytes(free)} free), removed once stored"
        )
        return dump_and_store(run, folder, repo.backups, backup_id)


def _base(
    target: DatabaseTarget, cluster: _Cluster, backup_id: str, repo: Repository,
    options: BackupOptions,
) -> tuple[BackupObject, dict[str, Any]]:  # fmt: skip
    dsn, env = _binary_args(target)
    sniffer = TarSniffer({"backup_label", "backup_manifest"})
    argv = [
        find_binary("pg_basebackup", major_of(cluster.version)), "-d", dsn, "-D", "-",
        "-Ft", "-X", "none", "-c", "fast", "-w", "--manifest-checksums=SHA256",
        "-l", f"chainlens-ops {backup_id}",
    ]  # fmt: skip
    with PgStream(argv, env=env, cancel=options.cancel, idle_timeout=ARCHIVE_STALL_S) as stream:
        obj = store_compressed(
            repo.backups, repo.backups.object_key(backup_id, BASE_TAR_NAME), stream,  # type: ignore[arg-type]
            progress=options.progress, tap=sniffer.feed, level=ZSTD_LEVEL_BASE,
        )  # fmt: skip
    start_lsn, tli, stop_lsn = _positions(sniffer.files)
    return obj, _wal_fields(repo, cluster, start_lsn, tli, stop_lsn, options)


def _wal_fields(
    repo: Repository, cluster: _Cluster, start_lsn: str, tli: int, stop_lsn: str,
    options: BackupOptions,
) -> dict[str, Any]:  # fmt: skip
    """Wait for the WAL a physical backup needs (start to stop segment and its .backup
    history file) in the repository; the manifest's WAL fields."""
    seg = cluster.seg_size
    start, stop = parse_lsn(start_lsn), parse_lsn(stop_lsn)
    first, last = start // seg, max(stop - 1, start) // seg
    history = f"{segment_name(tli, first, seg)}.{start % seg:08X}.backup"
    label = _wait_for_wal(repo, tli, first, last, history, options)
    return {
        "timeline": tli, "start_lsn": start_lsn, "stop_lsn": stop_lsn,
        "start_wal": segment_name(tli, first, seg), "stop_wal": segment_name(tli, last, seg),
        "backup_label": label,
    }  # fmt: skip


def _positions(files: dict[str, bytes]) -> tuple[str, int, str]:
    """(start LSN, timeline, stop LSN) from backup_label and backup_manifest."""
    label = files.get("backup_label", b"").decode("utf-8", "replace")
    try:
        start, tli = label_start(label)
    except ValueError:
        start, tli = "", 0
    try:
        ranges = json.loads(files.get("backup_manifest", b"")).get("WAL-Ranges", [])
        stop = str(ranges[-1]["End-LSN"])
    except (ValueError, KeyError, IndexError, AttributeError, TypeError):
        stop = ""
    if not (start and tli and stop):
        raise OperationFailed(
            "pg_basebackup's tar holds no readable backup_label or backup_manifest"
        )
    return start, tli, stop


def _wait_for_wal(
    repo: Repository, tli: int, first: int, last: int, history: str, options: BackupOptions
) -> str:
    """Wait until segments first..last and the .backup file are in the repository; the
    .backup file's text (backup_label plus the stop position)."""
    marker = repo.marker()
    seg = marker.wal_segment_size if marker else 16 * 1024 * 1024
    needed = [segment_name(tli, s, seg) for s in range(first, last + 1)] + [history]
    deadline = time.monotonic() + options.wal_wait_s
    while True:
        missing = []
        for name in needed:
            try:
                repo.wal.stat(parse_wal_name(name))
            except NotFound:
                missing.append(name)
        if not missing:
            break
        if time.monotonic() > deadline:
            raise OperationFailed(
                f"the WAL this base backup needs ({', '.join(missing[:3])}) did not reach "
                f"repository {repo.url} within {options.wal_wait_s:g}s; the backup is not "
                "usable without it",
                hint="check archive_command and pg_stat_archiver (`chainlens-ops check`)",
            )
        time.sleep(_POLL_S)
    key = repo.wal_key(parse_wal_name(history))
    out = io.BytesIO()
    with repo.wal.open(parse_wal_name(history)) as src:
        decode(src, out, name=history, where=f"{repo.url}: {key}")
    return out.getvalue().decode("utf-8", "replace")
