"""The managed tables and what every partition command shares: the registry, reading
partitions and their bounds from the catalog, and taking locks under lock_timeout."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import psycopg
from psycopg import sql

from chainlens_ops.core.errors import LockTimeout, OperationFailed, UsageError
from chainlens_ops.partitions.months import month_of_partition
from chainlens_ops.pg.connection import Connection, connect, first_line
from chainlens_ops.settings.config import Settings

T = TypeVar("T")

_BOUND_RE = re.compile(r"FOR VALUES FROM \((.+)\) TO \((.+)\)")


@dataclass(frozen=True)
class ManagedTable:
    """A table partitioned by month: where it lives and what it is partitioned on."""

    database: str
    schema: str
    name: str
    key: str

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def ident(self, name: str | None = None) -> sql.Identifier:
        return sql.Identifier(self.schema, name or self.name)


# The one registry of managed tables (the daemon and every command read it).
MANAGED_TABLES: tuple[ManagedTable, ...] = (
    ManagedTable("supabase", "public", "usage_events", "created_at"),
    ManagedTable("microservices", "onchain_analysis", "price_history", "timestamp"),
)


def resolve_table(name: str) -> ManagedTable:
    """`usage_events` or `public.usage_events` -> its entry; anything else is a UsageError."""
    for table in MANAGED_TABLES:
        if name in (table.name, table.qualified):
            return table
    known = ", ".join(t.qualified for t in MANAGED_TABLES)
    raise UsageError(
        f"{name!r} is not a managed partitioned table; partition commands manage {known}"
    )


def select_tables(name: str | None) -> list[ManagedTable]:
    return [resolve_table(name)] if name else list(MANAGED_TABLES)


@dataclass(frozen=True)
class PartitionInfo:
    name: str
    is_default: bool
    lower: datetime | None
    upper: datetime | None
    row_estimate: int | None  # None until the table is first analyzed
    size_bytes: int | None  # None when not asked for
    rows: int | None = None  # exact count, counted for the default partition only


@dataclass
class TablePartitions:
    table: str
    database: str
    partitions: list[PartitionInfo]
    default_rows: int | None
    # The months (YYYY-MM, UTC) of the rows in the default partition: each one is a
    # `create-month` away from being where it belongs.
    default_months: list[str] = field(default_factory=list)
    # Tables `partition retain` detached (named for a month, shaped like the table, no
    # longer attached): still holding their rows until `retain --drop` removes them.
    detached: list[PartitionInfo] = field(default_factory=list)

    @property
    def default_flagged(self) -> bool:
        return bool(self.default_rows)


def list_partitions(
    settings: Settings, *, table: str | None = None, dsn: str | None = None
) -> list[TablePartitions]:
    tables = select_tables(table)
    check_dsn(tables, dsn)
    out = []
    for t in tables:
        with open_table(settings, t, dsn) as conn:
            check_parent(conn, t)
            parts = partitions_of(conn, t)
            default = next((p for p in parts if p.is_default), None)
            rows = default.rows if default else None
            listing = TablePartitions(t.qualified, t.database, parts, rows)
            listing.detached = detached_of(conn, t)
            if default is not None and default.rows:
                listing.default_months = _months_in(conn, t, default.name)
            out.append(listing)
    return out


def _months_in(conn: Connection, table: ManagedTable, partition: str) -> list[str]:
    rows = conn.execute(
        sql.SQL(
            "SELECT DISTINCT to_char({key} AT TIME ZONE 'UTC', 'YYYY-MM') FROM ONLY {part} "
            "ORDER BY 1 LIMIT 25"
        ).format(key=sql.Identifier(table.key), part=table.ident(partition))
    ).fetchall()
    return [str(r[0]) for r in rows]


# ---------------------------------------------------------------------------------------
# Shared helpers


@contextmanager
def open_table(settings: Settings, table: ManagedTable, dsn: str | None) -> Iterator[Connection]:
    """A connection to `table`'s database where no statement waits on a lock for longer
    than lock_timeout: catalog reads too (sizes take a lock on each partition), so a
    long transaction holding the table can never make the tool hang."""
    with connect(settings.target(table.database, dsn=dsn)) as conn:
        # Bounds are read back as text: make that text UTC whatever the role's TimeZone.
        conn.execute("SET TimeZone = 'UTC'")
        conn.execute(
            sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{settings.lock_timeout_ms}ms"))
        )
        try:
            yield conn
        except psycopg.errors.LockNotAvailable:
            raise LockTimeout(
                f"{table.qualified}: reading the catalog waited over lock_timeout "
                f"({settings.lock_timeout_ms} ms); nothing was changed",
                hint="a long transaction holds the table (see pg_stat_activity); run again",
            ) from None
        except psycopg.OperationalError as exc:
            raise OperationFailed(
                f"{table.qualified}: lost the {table.database} database: {first_line(exc)}"
            ) from None


def check_dsn(tables: list[ManagedTable], dsn: str | None) -> None:
    if dsn and len({t.database for t in tables}) > 1:
        raise UsageError("--dsn names one database: use it with --table")


def check_parent(conn: Connection, table: ManagedTable) -> str | None:
    """Confirm `table` is range-partitioned here; return its default partition's name."""
    row = conn.execute(
        """
        SELECT c.relkind, pt.partstrat, d.relname,
               (SELECT array_agg(a.attname::text) FROM pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attnum = ANY (pt.partattrs::int2[]))
          FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace
          LEFT JOIN pg_partitioned_table pt ON pt.partrelid = c.oid
          LEFT JOIN pg_class d ON d.oid = pt.partdefid
         WHERE n.nspname = %s AND c.relname = %s
        """,
        (table.schema, table.name),
    ).fetchone()
    if row is None:
        raise OperationFailed(
            f"{table.qualified} does not exist in the {table.database} database",
            hint=f"run `chainlens-ops schema apply --db {table.database}` first",
        )
    relkind, strategy, default, keys = row
    if relkind != "p" or strategy != "r" or keys != [table.key]:
        raise UsageError(
            f"{table.qualified} in the {table.database} database is not partitioned by range "
            f"on {table.key}; partition commands only manage such tables"
        )
    return str(default) if default is not None else None


def table_columns(conn: Connection, table: ManagedTable) -> list[str]:
    rows = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
        "AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
        (table.qualified,),
    ).fetchall()
    return [str(r[0]) for r in rows]


def partitions_of(
    conn: Connection, table: ManagedTable, *, details: bool = True
) -> list[PartitionInfo]:
    """The partitions and their bounds; sizes and the default's exact count only with
    `details` (they lock each partition, which creating and retiring need not do)."""
    rows = conn.execute(
        """
        SELECT c.relname, c.oid = pt.partdefid, pg_get_expr(c.relpartbound, c.oid),
               c.reltuples::bigint,
               CASE WHEN %s THEN pg_total_relation_size(c.oid) END
          FROM pg_inherits i
          JOIN pg_class c ON c.oid = i.inhrelid
          JOIN pg_partitioned_table pt ON pt.partrelid = i.inhparent
         WHERE i.inhparent = %s::regclass
        """,
        (details, table.qualified),
    ).fetchall()
    parts = []
    for name, is_default, bound, reltuples, size in rows:
        lower, upper = (None, None) if is_default else parse_bounds(bound)
        exact = None
        if is_default and details:
            counted = conn.execute(
                sql.SQL("SELECT count(*) FROM ONLY {}").format(table.ident(name))
            ).fetchone()
            exact = int(counted[0]) if counted else 0
        estimate = None if reltuples < 0 else int(reltuples)
        size = None if size is None else int(size)
        parts.append(PartitionInfo(name, is_default, lower, upper, estimate, size, exact))
    far = datetime.max.replace(tzinfo=UTC)
    return sorted(parts, key=lambda p: (p.is_default, p.lower or far, p.name))


def detached_of(
    conn: Connection, table: ManagedTable, *, details: bool = True
) -> list[PartitionInfo]:
    """Plain tables beside `table` named for a month and with exactly its columns: the
    partitions `retain` detached (or a DBA did). Anything else is not ours to show."""
    rows = conn.execute(
        """
        SELECT c.relname, c.reltuples::bigint,
               CASE WHEN %(details)s THEN pg_total_relation_size(c.oid) END
          FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = %(schema)s AND c.relkind = 'r' AND NOT c.relispartition
           AND c.relname ~ ('^' || %(name)s || '_y[0-9]{4}m[0-9]{2}$')
           AND (SELECT array_agg((a.attname, a.atttypid, a.atttypmod) ORDER BY a.attnum)
                  FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
                   AND NOT a.attisdropped)
             = (SELECT array_agg((a.attname, a.atttypid, a.atttypmod) ORDER BY a.attnum)
                  FROM pg_attribute a WHERE a.attrelid = %(parent)s::regclass
                   AND a.attnum > 0 AND NOT a.attisdropped)
        """,
        {
            "details": details,
            "schema": table.schema,
            "name": table.name,
            "parent": table.qualified,
        },
    ).fetchall()
    out = []
    for name, reltuples, size in rows:
        month = month_of_partition(table.name, str(name))
        if month is None:
            continue
        estimate = None if reltuples < 0 else int(reltuples)
        size = None if size is None else int(size)
        out.append(PartitionInfo(str(name), False, month.start, month.end, estimate, size))
    return sorted(out, key=lambda p: p.name)


def parse_bounds(bound: str) -> tuple[datetime | None, datetime | None]:
    """`FOR VALUES FROM ('2025-01-01 00:00:00+00') TO (...)` (TimeZone is UTC here)."""
    match = _BOUND_RE.fullmatch(bound.strip())
    if not match:
        return None, None
    return bound_value(match.group(1)), bound_value(match.group(2))


def bound_value(text: str) -> datetime | None:
    text = text.strip()
    if not (text.startswith("'") and text.endswith("'")):
        return None  # MINVALUE / MAXVALUE
    try:
        return datetime.fromisoformat(text[1:-1])
    except ValueError:
        return None


def referenced_tables(
    conn: Connection, table: ManagedTable, relation: str | None = None
) -> list[sql.Identifier]:
    """The tables `table`'s foreign keys point at (usage_events -> user_profiles), in a
    stable order. ATTACH and DETACH lock them (SHARE ROW EXCLUSIVE: they add or check
    the RI triggers), so they must be locked first, as applications do: an application
    updates a profile (ROW EXCLUSIVE on user_profiles) and then inserts an event."""
    rows = conn.execute(
        """
        SELECT DISTINCT n.nspname, c.relname
          FROM pg_constraint con
          JOIN pg_class c ON c.oid = con.confrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE con.conrelid = %s::regclass AND con.contype = 'f' AND con.confrelid <> con.conrelid
         ORDER BY 1, 2
        """,
        (f"{table.schema}.{relation}" if relation else table.qualified,),
    ).fetchall()
    return [sql.Identifier(str(schema), str(name)) for schema, name in rows]


def lock(conn: Connection, relation: sql.Identifier, mode: str, *, only: bool = True) -> None:
    """LOCK TABLE [ONLY] relation IN mode MODE (under the session's lock_timeout)."""
    conn.execute(
        sql.SQL("LOCK TABLE {only}{rel} IN {mode} MODE").format(
            only=sql.SQL("ONLY " if only else ""), rel=relation, mode=sql.SQL(mode)
        )
    )


def retrying(
    conn: Connection, settings: Settings, what: str, step: Callable[[], T]
) -> tuple[int, T]:
    """Run `step` in a savepoint; on a lock timeout or deadlock roll it back (releasing
    every lock it took, so application queries stop queueing behind it), back off and
    try again. Returns (attempts, result)."""
    attempts = 1 + max(settings.lock_retries, 0)
    for attempt in range(1, attempts + 1):
        try:
            with conn.transaction():
                return attempt, step()
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
            if attempt == attempts:
                break
            time.sleep(min(0.1 * 2 ** (attempt - 1), 2.0) * random.uniform(0.5, 1.0))
    raise LockTimeout(
        f"{what}: could not take the locks it needs within lock_timeout "
        f"({settings.lock_timeout_ms} ms) in {attempts} attempts; nothing was changed",
        hint="a long transaction holds the table (see pg_stat_activity); run again later "
        "or raise lock_timeout / lock_retries",
    )
