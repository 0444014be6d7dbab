"""Table-level point-in-time restore: bring back some tables as they were at a target,
beside the live ones, and touch nothing else.

1. Read-only checks against the live database (reachable; the destination schema does
   not exist; which databases to keep) and the restore plan (`make_plan`: the backup,
   the WAL, the target inside the recoverable window); the scratch folder's free space
   against the backup's size from its manifest. `--dry-run` stops here.
2. A scratch server (`restore/scratch.py`): the backup extracted with only the cluster
   catalogs, the `postgres` database and the tables' database readable (the others are
   sparse placeholders, `restore/selective.py`), recovered to the target, paused there.
3. Every table is looked up in the scratch server *before* anything is written live;
   one missing refuses the whole restore.
4. One live transaction: CREATE SCHEMA (it must not exist), one plain table per
   requested table (its columns, types and NOT NULLs; a partitioned table comes back as
   one plain table holding the rows of all its partitions), the rows streamed with
   COPY from the scratch server, the primary key added after the load. A failure rolls
   it all back. Nothing else live is written: no foreign keys, triggers or defaults that
   would reach live objects.
5. Per table: rows live and restored, and a SQL sketch to put rows back (never run).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from chainlens_ops.backup.files import read_file_map
from chainlens_ops.backup.manifest import FILES_LAYOUT
from chainlens_ops.core.errors import OperationFailed, UsageError
from chainlens_ops.pg.connection import connect, first_line
from chainlens_ops.pg.walnames import parse_wal_name
from chainlens_ops.repository import Repository
from chainlens_ops.restore.assemble import written_bytes
from chainlens_ops.restore.physical import refuse_root
from chainlens_ops.restore.plan import TIME, RestorePlan, Target, make_plan
from chainlens_ops.restore.scratch import ScratchServer, scratch_free_bytes, scratch_server
from chainlens_ops.restore.selective import Selection
from chainlens_ops.settings.config import DatabaseTarget
from chainlens_ops.settings.keys import format_bytes

Say = Callable[[str], None]
COPY_BATCH = 1024 * 1024
MAINTENANCE_DB = "postgres"  # kept readable: the scratch server is watched through it
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")


@dataclass(frozen=True)
class TableRestoreOptions:
    tables: tuple[str, ...]
    target: Target
    into_schema: str | None = None
    backup_id: str | None = None
    dry_run: bool = False
    scratch_root: Path | None = None
    timeout: float = 600.0
    config_file: Path | None = None


@dataclass(frozen=True)
class TablePlan:
    backup_id: str
    backup_finished: str
    target: str  # the recovery target as written for PostgreSQL
    database: str
    kept_databases: list[str]
    skipped_databases: list[str]
    tables: list[str]
    schema: str
    # At most: a files-layout backup's files of the kept databases (its file map), a
    # tar's whole size (its manifest)
    bytes_to_extract: int
    wal_first: str
    wal_last: str
    wal_segments: int
    scratch_root: str
    scratch_free: int


@dataclass(frozen=True)
class TableOutcome:
    table: str  # as it is live: schema.name
    restored_as: str  # schema.name in the new schema
    shape: str  # "table", or "partitioned: N partitions as one table"
    rows_live: int | None  # None: the table no longer exists live
    rows_restored: int
    put_back_sql: str


@dataclass(frozen=True)
class TableRestoreResult:
    plan: TablePlan
    dry_run: bool
    tables: list[TableOutcome] = field(default_factory=list)
    extracted_bytes: int = 0
    skipped_bytes: int = 0
    extract_seconds: float = 0.0
    recovery_seconds: float = 0.0
    copy_seconds: float = 0.0
    loaded_seconds: float = 0.0  # from the start until the rows were committed live
    seconds: float = 0.0  # until the scratch server was stopped and removed too


@dataclass(frozen=True)
class _Shape:
    live_name: tuple[str, str]
    oid: int
    partitioned: bool
    partitions: int
    columns: list[tuple[str, str, bool]]  # name, type as SQL, not null
    primary_key: list[str]


def parse_table_name(text: str) -> tuple[str, str]:
    """`schema.table` or `table` (schema public); plain identifiers, as written live."""
    parts = text.strip().split(".")
    if len(parts) == 1:
        parts = ["public", parts[0]]
    if len(parts) != 2 or not all(parts):
        raise UsageError(f"{text!r} is not a table name (schema.table)")
    return parts[0], parts[1]


def default_schema(target: Target, now: datetime | None = None) -> str:
    """`restored_<target time as YYYYMMDDTHHMMSS>` (UTC); for a restore point or an LSN,
    the time of the restore."""
    when = target.time if target.kind == TIME and target.time else now or datetime.now(UTC)
    return "restored_" + when.astimezone(UTC).strftime("%Y%m%dT%H%M%S").lower()


def check_schema_name(name: str) -> None:
    if not _IDENT.match(name) or name.lower().startswith("pg_"):
        raise UsageError(
            f"--into-schema {name!r} is not a plain schema name "
            "(letters, digits, _; at most 63; not pg_*)"
        )


def keep_databases(conn: psycopg.Connection[Any], names: list[str]) -> dict[str, int]:
    """{database name: oid} for `names` and the maintenance database, from the live
    server; an unknown name is refused."""
    rows = dict(conn.execute("SELECT datname, oid::int FROM pg_database").fetchall())
    for name in names:
        if name not in rows:
            raise UsageError(f"database {name!r} does not exist on {conn.info.host}")
    wanted = [*names, MAINTENANCE_DB] if MAINTENANCE_DB in rows else names
    return {n: int(rows[n]) for n in wanted}


def restore_tables(
    repo: Repository, live: DatabaseTarget, options: TableRestoreOptions, say: Say | None = None
) -> TableRestoreResult:
    began = time.monotonic()
    report: Say = say or (lambda _line: None)
    names = [parse_table_name(t) for t in options.tables]
    if len(set(names)) != len(names):
        raise UsageError("a table is named twice")
    schema = options.into_schema or default_schema(options.target)
    check_schema_name(schema)
    refuse_root()  # the scratch server runs as this user
    with connect(live) as conn:
        database = str(conn.execute("SELECT current_database()").fetchone()[0])  # type: ignore[index]
        if _schema_exists(conn, schema):
            raise UsageError(
                f"schema {schema} already exists in {database}: a table restore never writes "
                "into an existing schema",
                hint="name another with --into-schema",
            )
        facts = _LiveFacts(
            database=database,
            kept=keep_databases(conn, [database]),
            all_dbs=[r[0] for r in conn.execute("SELECT datname FROM pg_database ORDER BY 1")],
            system_identifier=_system_identifier(conn),
        )
    # A running table restore holds a claim, as every restore does: prune keeps its backup
    # and WAL until the scratch cluster is gone (chainlens_ops.repository.claim).
    claim = repo.locks.claim("restore table") if not options.dry_run else None
    with claim.hold() if claim else contextlib.nullcontext() as held:
        plan = make_plan(repo, options.target, options.backup_id)
        if held is not None:
            held.scope(plan.backup.id)
        return _restore_planned(repo, live, options, plan, facts, names, schema, began, report)


@dataclass(frozen=True)
class _LiveFacts:
    """What the live cluster says before anything is planned."""

    database: str  # the live database the tables come back into
    kept: dict[str, int]  # databases the scratch copy keeps readable, by name -> oid
    all_dbs: list[str]
    system_identifier: str | None


def _restore_planned(
    repo: Repository,
    live: DatabaseTarget,
    options: TableRestoreOptions,
    plan: RestorePlan,
    facts: _LiveFacts,
    names: list[tuple[str, str]],
    schema: str,
    began: float,
    report: Say,
) -> TableRestoreResult:
    database, kept, live_sysid = facts.database, facts.kept, facts.system_identifier
    if live_sysid and plan.backup.system_identifier and live_sysid != plan.backup.system_identifier:
        # Database oids (which databases to keep) mean something only in the same cluster.
        raise UsageError(
            f"the live database belongs to cluster {live_sysid}, backup {plan.backup.id} to "
            f"cluster {plan.backup.system_identifier}: restore from that cluster's repository"
        )
    table_plan = _plan(plan, database, kept, facts.all_dbs, names, schema, options.scratch_root)
    selection = Selection(frozenset(kept.values()))
    if plan.backup.layout == FILES_LAYOUT:  # exactly: the files of its map the restore writes
        fmap = read_file_map(repo, plan.backup)
        table_plan = replace(table_plan, bytes_to_extract=written_bytes(fmap, selection))
    if table_plan.scratch_free < table_plan.bytes_to_extract + 4 * plan.seg_size:
        raise UsageError(
            f"too little free space in {table_plan.scratch_root}: "
            f"{format_bytes(table_plan.scratch_free)} free, the scratch copy needs up to "
            f"{format_bytes(table_plan.bytes_to_extract + 4 * plan.seg_size)} (the backup's "
            "data, and room for WAL)",
            hint="point --scratch at a bigger disk",
        )
    if options.dry_run:
        return TableRestoreResult(plan=table_plan, dry_run=True)
    with scratch_server(repo, plan, selection, root=options.scratch_root, timeout=options.timeout,
                        config_file=options.config_file, say=report) as scratch:  # fmt: skip
        shapes = _describe(scratch, database, kept[database], names)
        copy_began = time.monotonic()
        outcomes = _load(scratch, live, database, schema, shapes, report)
        copy_seconds = time.monotonic() - copy_began
        loaded_seconds = time.monotonic() - began
    return TableRestoreResult(
        plan=table_plan, dry_run=False, tables=outcomes,
        extracted_bytes=scratch.extracted_bytes, skipped_bytes=scratch.skipped_bytes,
        extract_seconds=round(scratch.extract_seconds, 3),
        recovery_seconds=round(scratch.recovery_seconds, 3),
        copy_seconds=round(copy_seconds, 3), loaded_seconds=round(loaded_seconds, 3),
        seconds=round(time.monotonic() - began, 3),
    )  # fmt: skip


def _system_identifier(conn: psycopg.Connection[Any]) -> str | None:
    """The live cluster's system identifier, or None when this role may not read it."""
    try:
        row = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()
    except psycopg.errors.InsufficientPrivilege:
        return None
    return str(row[0]) if row else None


def _schema_exists(conn: psycopg.Connection[Any], schema: str) -> bool:
    row = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    return row is not None


def _plan(
    plan: RestorePlan,
    database: str,
    kept: dict[str, int],
    all_dbs: list[str],
    names: list[tuple[str, str]],
    schema: str,
    scratch_root: Path | None,
) -> TablePlan:
    where, free = scratch_free_bytes(scratch_root)
    first = parse_wal_name(plan.wal_first).segno(plan.seg_size)
    last = parse_wal_name(plan.wal_last).segno(plan.seg_size)
    return TablePlan(
        backup_id=plan.backup.id,
        backup_finished=plan.backup.finished_at,
        target=str(plan.recovery_target),
        database=database,
        kept_databases=sorted(kept),
        skipped_databases=[d for d in all_dbs if d not in kept],
        tables=[f"{s}.{t}" for s, t in names],
        schema=schema,
        bytes_to_extract=plan.backup.raw_bytes,
        wal_first=plan.wal_first,
        wal_last=plan.wal_last,
        wal_segments=last - first + 1,
        scratch_root=str(where),
        scratch_free=free,
    )


def _describe(
    scratch: ScratchServer, database: str, oid: int, names: list[tuple[str, str]]
) -> list[_Shape]:
    """Each table as it was at the target; refuses a missing one before any load."""
    try:
        with psycopg.connect(scratch.conninfo("postgres"), autocommit=True) as conn:
            row = conn.execute("SELECT oid::int FROM pg_database WHERE datname = %s",
                               (database,)).fetchone()  # fmt: skip
        if row is None or int(row[0]) != oid:
            raise OperationFailed(
                f"database {database} at the target is not the live one (it was dropped or "
                "recreated since): a table restore cannot read it"
            )
        with psycopg.connect(scratch.conninfo(database), autocommit=True) as conn:
            conn.execute("SET search_path = pg_catalog")  # format_type then qualifies types
            return [_shape(conn, schema, table) for schema, table in names]
    except psycopg.Error as exc:
        raise OperationFailed(f"reading the scratch server failed: {first_line(exc)}") from None


def _shape(conn: psycopg.Connection[Any], schema: str, table: str) -> _Shape:
    row = conn.execute(
        "SELECT c.oid::int, c.relkind::text FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s "
        "AND c.relkind IN ('r', 'p')",
        (schema, table),
    ).fetchone()
    if row is None:
        raise UsageError(f"table {schema}.{table} does not exist at the target")
    oid, kind = int(row[0]), str(row[1])
    columns = [
        (str(n), str(t), bool(nn))
        for n, t, nn in conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute "
            "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (oid,),
        )
    ]
    key = [
        str(r[0])
        for r in conn.execute(
            "SELECT a.attname FROM pg_index i, unnest(i.indkey) WITH ORDINALITY k(attnum, ord) "
            "JOIN pg_attribute a ON a.attnum = k.attnum WHERE i.indrelid = %s "
            "AND i.indisprimary AND a.attrelid = i.indrelid ORDER BY k.ord",
            (oid,),
        )
    ]
    partitions = 0
    if kind == "p":
        got = conn.execute(
            "SELECT count(*) FROM pg_partition_tree(%s::regclass) WHERE isleaf", (oid,)
        ).fetchone()
        partitions = int(got[0]) if got else 0
    return _Shape((schema, table), oid, kind == "p", partitions, columns, key)


def _load(
    scratch: ScratchServer,
    live: DatabaseTarget,
    database: str,
    schema: str,
    shapes: list[_Shape],
    say: Say,
) -> list[TableOutcome]:
    outcomes: list[TableOutcome] = []
    source = scratch.conninfo(database)
    with connect(live, autocommit=False) as dst, psycopg.connect(source, autocommit=True) as src:
        try:
            dst.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        except psycopg.errors.DuplicateSchema:
            raise UsageError(f"schema {schema} already exists in {database}") from None
        restored: dict[tuple[str, str], int] = {}
        for shape in shapes:
            say(f"copying {'.'.join(shape.live_name)} into {schema}")
            restored[shape.live_name] = _copy_table(src, dst, schema, shape)
        dst.commit()
        live_rows = {s.live_name: _live_count(dst, s.live_name) for s in shapes}
        live_cols = {s.live_name: _live_columns(dst, s.live_name) for s in shapes}
        dst.rollback()
    for shape in shapes:
        live_name = ".".join(shape.live_name)
        new_name = f"{schema}.{shape.live_name[1]}"
        outcomes.append(
            TableOutcome(
                table=live_name,
                restored_as=new_name,
                shape=_shape_label(shape),
                rows_live=live_rows[shape.live_name],
                rows_restored=restored[shape.live_name],
                put_back_sql=put_back_sql(shape, schema, live_cols[shape.live_name]),
            )
        )
    return outcomes


def _shape_label(shape: _Shape) -> str:
    if shape.partitioned:
        return f"partitioned: {shape.partitions} partitions as one table"
    return "table"


def _copy_table(
    src: psycopg.Connection[Any], dst: psycopg.Connection[Any], schema: str, shape: _Shape
) -> int:
    new = sql.Identifier(schema, shape.live_name[1])
    old = sql.Identifier(*shape.live_name)
    cols = sql.SQL(", ").join(sql.Identifier(c) for c, _, _ in shape.columns)
    definition = sql.SQL(", ").join(
        sql.SQL("{} {}{}").format(sql.Identifier(c), sql.SQL(t), sql.SQL(" NOT NULL" if nn else ""))
        for c, t, nn in shape.columns
    )
    try:
        dst.execute(sql.SQL("CREATE TABLE {} ({})").format(new, definition))
        load = dst.cursor()
        with (
            src.cursor().copy(
                sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT (FORMAT binary)").format(cols, old)
            ) as out,  # fmt: skip
            load.copy(
                sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(new, cols)
            ) as into,  # fmt: skip
        ):
            # COPY hands over one row per chunk: batched, the load costs a write per
            # COPY_BATCH bytes instead of one per row.
            batch = bytearray()
            for chunk in out:
                batch += chunk
                if len(batch) >= COPY_BATCH:
                    into.write(bytes(batch))
                    batch.clear()
            if batch:
                into.write(bytes(batch))
        if shape.primary_key:
            dst.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(
                new, sql.SQL(", ").join(sql.Identifier(c) for c in shape.primary_key)))  # fmt: skip
    except psycopg.Error as exc:
        raise OperationFailed(
            f"loading {'.'.join(shape.live_name)} into {schema} failed (nothing was kept): "
            f"{first_line(exc)}"
        ) from None
    return max(load.rowcount, 0)  # COPY's own count ("COPY n")


def _live_columns(conn: psycopg.Connection[Any], name: tuple[str, str]) -> list[str] | None:
    rows = conn.execute(
        "SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND "
        "c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        name,
    ).fetchall()
    return [str(r[0]) for r in rows] or None


def _live_count(conn: psycopg.Connection[Any], name: tuple[str, str]) -> int | None:
    quoted = sql.Identifier(*name).as_string(conn)
    found = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (quoted,)).fetchone()
    if not found or not found[0]:
        return None
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(*name)))
    got = row.fetchone()
    return int(got[0]) if got else 0


def put_back_sql(shape: _Shape, schema: str, live_columns: list[str] | None) -> str:
    """A sketch to review and run by hand, never run by the tool. `live_columns`: the
    live table's columns in order (None: the table is gone live)."""
    live = ".".join(_q(p) for p in shape.live_name)
    restored = f"{_q(schema)}.{_q(shape.live_name[1])}"
    if live_columns is None:
        return f"ALTER TABLE {restored} SET SCHEMA {_q(shape.live_name[0])};"
    cols = [c for c, _, _ in shape.columns]
    same = cols == live_columns  # then `*` lines up, and the sketch stays short
    into = live if same else f"{live} ({', '.join(_q(c) for c in cols)})"
    picked = "r.*" if same else ", ".join(f"r.{_q(c)}" for c in cols)
    if not shape.primary_key:
        return (
            f"-- rows missing live (deleted or changed since the target):\n"
            f"INSERT INTO {into} SELECT {picked} FROM {restored} r\n"
            f"  EXCEPT ALL SELECT {picked.replace('r.', 'l.')} FROM {live} l;"
        )
    match = " AND ".join(f"l.{_q(c)} = r.{_q(c)}" for c in shape.primary_key)
    lines = [
        f"-- rows deleted since the target:\nINSERT INTO {into} SELECT {picked} FROM {restored} r\n"
        f"  WHERE NOT EXISTS (SELECT FROM {live} l WHERE {match});"
    ]
    rest = [c for c in cols if c not in shape.primary_key]
    if rest:
        lhs = ", ".join(_q(c) for c in rest)
        rhs = ", ".join(f"r.{_q(c)}" for c in rest)
        lines.append(
            f"-- rows changed since the target:\nUPDATE {live} l SET ({lhs})\n"
            f"  = ROW({rhs})\n  FROM {restored} r WHERE {match} AND l::text <> r::text;"
        )
    return "\n".join(lines)


def _q(name: str) -> str:
    return name if re.match(r"^[a-z_][a-z0-9_]*$", name) else '"' + name.replace('"', '""') + '"'
