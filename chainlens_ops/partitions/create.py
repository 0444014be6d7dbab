"""Monthly partitions: create a month (rescuing its rows from the default partition),
keep months ahead, list them, and retire old ones.

Why a month is not simply `CREATE TABLE ... PARTITION OF`: that takes ACCESS EXCLUSIVE
on the parent, queues behind every open insert and blocks every query behind it; and
when the default partition already holds rows of the month it fails outright, which is
how pg_partman maintenance silently stops for months. Here a month is made in one
transaction, in three steps:

1. Under SHARE UPDATE EXCLUSIVE on the parent (it serialises partition maintenance and
   blocks no application query), a standalone table is made LIKE the parent, the
   month's rows are moved out of the default partition into it (DELETE ... RETURNING,
   so nothing is lost or doubled), its indexes are built after the load, and a CHECK
   constraint matching the bounds lets ATTACH skip scanning it.
2. The short critical section. Every lock ATTACH will take is taken first, in the order
   applications take them: SHARE ROW EXCLUSIVE on the tables the foreign keys point at
   (user_profiles: ATTACH clones the key and adds its RI triggers; the application
   updates a profile, then inserts an event), then SHARE on the parent alone (ONLY),
   then ACCESS EXCLUSIVE on the default partition (parent before default, as every
   insert locks them); rows that arrived meanwhile are moved, and ATTACH runs. Taking
   user_profiles last, as ATTACH itself would, deadlocks with those applications.
   SHARE ROW EXCLUSIVE does not conflict with the ROW SHARE an insert's FK check takes,
   so plain inserts (parent first, user_profiles after) cannot deadlock with it either.
   SHARE, not just the SHARE UPDATE EXCLUSIVE that ATTACH needs, because an insert
   that has already routed a row of this month to the default partition would fail
   once the month is attached ("violates partition constraint"); holding inserts at
   the parent makes them re-route to the new partition instead. Readers never wait
   on the parent; they wait on the default partition only while ATTACH runs.
3. The helper CHECK is dropped, so the result is the same as a normal partition.

The foreign key (usage_events.user_id) is left for ATTACH to clone and validate. A
validated key made beforehand on the standalone table would be reused by ATTACH without
re-validating, but ATTACH then drops that key's own action triggers on user_profiles,
which takes ACCESS EXCLUSIVE on user_profiles (measured on PostgreSQL 15): that blocks
every reader of profiles and conflicts with the ROW SHARE a plain insert's FK check
takes after it has locked usage_events, i.e. a lock-order cycle with every inserter.

No CHECK on the default partition excluding the month (which would let ATTACH skip
scanning the default): a CHECK is enforced from the moment it is added, even NOT VALID,
so added before inserts are held it makes every insert of that month fail (they still
route to the default until ATTACH commits); added after, validating it is the very scan
ATTACH does. Adding it also takes ACCESS EXCLUSIVE on the default, held to commit. So
the default is scanned once, under the critical section; keeping months ahead with
`ensure` keeps the default small and that scan short.

Every lock is taken under `lock_timeout`; a step that times out is rolled back to its
savepoint (releasing what it took), backs off and retries, at most `lock_retries` times.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from psycopg import sql

from chainlens_ops.core.errors import ChainlensError, OperationFailed, UsageError
from chainlens_ops.core.outcome import worst_exit
from chainlens_ops.partitions.months import Month, parse_month, partition_name
from chainlens_ops.partitions.registry import (
    ManagedTable,
    check_dsn,
    check_parent,
    detached_of,
    lock,
    open_table,
    partitions_of,
    referenced_tables,
    resolve_table,
    retrying,
    select_tables,
    table_columns,
)
from chainlens_ops.pg.connection import Connection, first_line
from chainlens_ops.settings.config import Settings

_CHECK_NAME = "chainlens_ops_month_bounds"


class _AlreadyThere(Exception):
    """The month appeared while we waited for the lock: roll back and report a no-op."""

    def __init__(self, partition: str) -> None:
        super().__init__(partition)
        self.partition = partition


@dataclass(frozen=True)
class MonthResult:
    table: str
    database: str
    month: str
    partition: str
    lower: datetime
    upper: datetime
    created: bool
    rows_moved: int = 0
    lock_attempts: int = 0
    duration_ms: int = 0
    # How long inserts into the table were held off (SHARE on the parent) until commit.
    writers_blocked_ms: int = 0


@dataclass(frozen=True)
class TableFailure:
    table: str
    database: str
    message: str
    exit_code: int


@dataclass
class EnsureResult:
    first: str
    last: str
    months: list[MonthResult] = field(default_factory=list)
    failures: list[TableFailure] = field(default_factory=list)

    @property
    def created(self) -> list[MonthResult]:
        return [m for m in self.months if m.created]

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def exit_code(self) -> int:
        return worst_exit(f.exit_code for f in self.failures)


# ---------------------------------------------------------------------------------------
# Public entry points (the CLI and the daemon call these)


def create_month(
    settings: Settings, table_name: str, month_text: str, *, dsn: str | None = None
) -> MonthResult:
    """Create `table`'s partition for `YYYY-MM`, moving its rows out of the default."""
    table = resolve_table(table_name)
    month = parse_month(month_text)
    with open_table(settings, table, dsn) as conn:
        return _create_month(conn, settings, table, month)


def ensure_partitions(
    settings: Settings,
    *,
    ahead: int = 3,
    table: str | None = None,
    dsn: str | None = None,
    now: datetime | None = None,
) -> EnsureResult:
    """The current month and the next `ahead` exist for every managed table afterwards.

    A table whose database fails is reported in `failures`; the others still run, so one
    unreachable database never stops maintenance of the other.
    """
    if ahead < 0:
        raise UsageError(f"--ahead must be 0 or more, not {ahead}")
    tables = select_tables(table)
    check_dsn(tables, dsn)
    first = Month.current(now)
    months = [first.plus(i) for i in range(ahead + 1)]
    result = EnsureResult(str(months[0]), str(months[-1]))
    for t in tables:
        try:
            with open_table(settings, t, dsn) as conn:
                for month in months:
                    result.months.append(_create_month(conn, settings, t, month))
        except ChainlensError as exc:
            result.failures.append(
                TableFailure(t.qualified, t.database, exc.one_line(), exc.exit_code)
            )
    return result


# ---------------------------------------------------------------------------------------
# Creating one month


def _create_month(
    conn: Connection, settings: Settings, table: ManagedTable, month: Month
) -> MonthResult:
    started = time.monotonic()
    name = partition_name(table.name, month)
    default = check_parent(conn, table)
    existing = _existing_for(conn, table, month, name)
    if existing:
        return _month_result(table, month, existing, created=False)

    columns = table_columns(conn, table)
    new = table.ident(name)
    moved = 0
    attempts = 0

    def move_rows() -> int:
        if default is None:
            return 0
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        cur = conn.execute(
            sql.SQL(
                "WITH moved AS (DELETE FROM {default} WHERE {key} >= {lo} AND {key} < {hi} "
                "RETURNING {cols}) INSERT INTO {new} ({cols}) SELECT {cols} FROM moved"
            ).format(
                default=table.ident(default),
                key=sql.Identifier(table.key),
                lo=sql.Literal(month.start),
                hi=sql.Literal(month.end),
                cols=cols,
                new=new,
            )
        )
        return max(cur.rowcount, 0)

    def prepare() -> int:
        lock(conn, table.ident(), "SHARE UPDATE EXCLUSIVE")
        # Another run (the daemon, a DBA) may have made it while we waited for the lock.
        made_meanwhile = _existing_for(conn, table, month, name)
        if made_meanwhile:
            raise _AlreadyThere(made_meanwhile)
        conn.execute(
            sql.SQL(
                "CREATE TABLE {new} (LIKE {parent} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
                "INCLUDING STORAGE INCLUDING COMPRESSION INCLUDING GENERATED)"
            ).format(new=new, parent=table.ident())
        )
        conn.execute(
            sql.SQL(
                "ALTER TABLE {new} ADD CONSTRAINT {chk} CHECK ({key} >= {lo} AND {key} < {hi})"
            ).format(
                new=new,
                chk=sql.Identifier(_CHECK_NAME),
                key=sql.Identifier(table.key),
                lo=sql.Literal(month.start),
                hi=sql.Literal(month.end),
            )
        )
        rows = move_rows()
        _clone_indexes(conn, table, new)
        if rows:
            conn.execute(sql.SQL("ANALYZE {}").format(new))
        return rows

    def critical() -> tuple[int, float]:
        for referenced in referenced_tables(conn, table):
            lock(conn, referenced, "SHARE ROW EXCLUSIVE")
        lock(conn, table.ident(), "SHARE")
        blocked_from = time.monotonic()
        rows = move_rows()
        if default is not None:
            lock(conn, table.ident(default), "ACCESS EXCLUSIVE")
        conn.execute(
            sql.SQL(
                "ALTER TABLE {parent} ATTACH PARTITION {new} FOR VALUES FROM ({lo}) TO ({hi})"
            ).format(
                parent=table.ident(),
                new=new,
                lo=sql.Literal(month.bound_literal),
                hi=sql.Literal(month.end_literal),
            )
        )
        conn.execute(
            sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(new, sql.Identifier(_CHECK_NAME))
        )
        return rows, blocked_from

    try:
        with conn.transaction():
            tries, moved = retrying(
                conn, settings, f"{table.qualified} (preparing {name})", prepare
            )
            attempts += tries
            tries, (delta, blocked_from) = retrying(
                conn, settings, f"{table.qualified} (attaching {name})", critical
            )
            attempts += tries
            moved += delta
    except _AlreadyThere as there:
        return _month_result(table, month, there.partition, created=False)
    except psycopg.Error as exc:
        raise OperationFailed(
            f"{table.qualified}: creating {name} failed and was rolled back: {first_line(exc)}"
        ) from None
    done = time.monotonic()
    return _month_result(
        table,
        month,
        name,
        created=True,
        rows_moved=moved,
        lock_attempts=attempts,
        duration_ms=int((done - started) * 1000),
        writers_blocked_ms=int((done - blocked_from) * 1000),
    )


def _month_result(
    table: ManagedTable, month: Month, partition: str, *, created: bool, **figures: int
) -> MonthResult:
    return MonthResult(
        table=table.qualified,
        database=table.database,
        month=str(month),
        partition=f"{table.schema}.{partition}",
        lower=month.start,
        upper=month.end,
        created=created,
        **figures,
    )


def _existing_for(conn: Connection, table: ManagedTable, month: Month, name: str) -> str | None:
    """The partition already covering exactly this month (no-op), or raise on a clash."""
    for p in partitions_of(conn, table, details=False):
        if p.is_default or p.lower is None or p.upper is None:
            continue
        if p.lower == month.start and p.upper == month.end:
            return p.name
        if p.lower < month.end and p.upper > month.start:
            raise OperationFailed(
                f"{table.qualified}: partition {p.name} [{p.lower:%Y-%m-%d %H:%M%z}, "
                f"{p.upper:%Y-%m-%d %H:%M%z}) overlaps {month}; nothing was created",
                hint="split or detach it by hand first",
            )
    row = conn.execute(
        "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s",
        (table.schema, name),
    ).fetchone()
    if row is not None and any(d.name == name for d in detached_of(conn, table, details=False)):
        raise OperationFailed(
            f"{table.schema}.{name} is the {month} partition that `partition retain` "
            f"detached, and it still holds its rows; nothing was created",
            hint=f"to bring it back: ALTER TABLE {table.qualified} ATTACH PARTITION "
            f"{table.schema}.{name} FOR VALUES FROM ('{month.bound_literal}') TO "
            f"('{month.end_literal}'); to discard it: `chainlens-ops partition retain --drop` "
            f"(once past the window) or DROP TABLE {table.schema}.{name}",
        )
    if row is not None:
        raise OperationFailed(
            f"{table.schema}.{name} exists but is not a partition of {table.qualified} "
            "(detached by `partition retain`?); nothing was created",
            hint="rename, re-attach or drop it, then run again",
        )
    return None


def _clone_indexes(conn: Connection, table: ManagedTable, new: sql.Identifier) -> None:
    """Build the parent's indexes on the loaded table, as a normal partition has them.

    Left unnamed so PostgreSQL picks the names it picks for `PARTITION OF`; ATTACH then
    adopts them. An index definition we cannot read is left for ATTACH to build.
    """
    rows = conn.execute(
        """
        SELECT pg_get_indexdef(i.indexrelid), i.indisunique, con.contype,
               pg_get_constraintdef(con.oid),
               quote_ident(n.nspname) || '.' || quote_ident(pc.relname)
          FROM pg_index i
          JOIN pg_class pc ON pc.oid = i.indrelid
          JOIN pg_namespace n ON n.oid = pc.relnamespace
          LEFT JOIN pg_constraint con
                 ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid
                AND con.contype IN ('p', 'u', 'x')
         WHERE i.indrelid = %s::regclass
         ORDER BY i.indexrelid
        """,
        (table.qualified,),
    ).fetchall()
    for indexdef, unique, contype, condef, parent_name in rows:
        if contype is not None:
            conn.execute(sql.SQL("ALTER TABLE {} ADD ").format(new) + sql.SQL(condef))
            continue
        marker = f" ON ONLY {parent_name} "
        if marker not in indexdef:
            continue
        tail = indexdef.split(marker, 1)[1]
        head = "CREATE UNIQUE INDEX ON " if unique else "CREATE INDEX ON "
        conn.execute(sql.SQL(head) + new + sql.SQL(" " + tail))
