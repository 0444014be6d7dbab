"""Retention: detach or drop partitions wholly older than N months."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from psycopg import sql

from chainlens_ops.core.errors import OperationFailed, UsageError
from chainlens_ops.partitions.months import Month
from chainlens_ops.partitions.registry import (
    ManagedTable,
    check_dsn,
    check_parent,
    detached_of,
    lock,
    open_table,
    partitions_of,
    referenced_tables,
    retrying,
    select_tables,
)
from chainlens_ops.pg.connection import Connection, first_line
from chainlens_ops.settings.config import Settings


@dataclass(frozen=True)
class RetainAction:
    partition: str
    lower: datetime
    upper: datetime
    action: str  # detach | drop
    done: bool
    lock_attempts: int = 0
    # A table detached earlier (by `retain` or by hand), dropped now by `--drop`.
    was_detached: bool = False


@dataclass
class RetainResult:
    table: str
    database: str
    keep_months: int
    cutoff: datetime
    dry_run: bool
    actions: list[RetainAction] = field(default_factory=list)


def retain_partitions(
    settings: Settings,
    keep_months: int,
    *,
    table: str | None = None,
    drop: bool = False,
    dry_run: bool = False,
    dsn: str | None = None,
    now: datetime | None = None,
) -> list[RetainResult]:
    """Detach (or drop) partitions wholly older than `keep_months` months.

    With keep_months=3 in May, partitions ending on or before February 1st go; the
    current month and the default partition are never touched.
    """
    if keep_months < 1:
        raise UsageError(f"--keep-months must be 1 or more, not {keep_months}")
    tables = select_tables(table)
    check_dsn(tables, dsn)
    cutoff = Month.current(now).plus(-keep_months).start
    action = "drop" if drop else "detach"
    results = []
    for t in tables:
        with open_table(settings, t, dsn) as conn:
            check_parent(conn, t)
            result = RetainResult(t.qualified, t.database, keep_months, cutoff, dry_run)
            old = [
                p
                for p in partitions_of(conn, t, details=False)
                if not p.is_default and p.upper is not None and p.upper <= cutoff
            ]
            for p in old:
                assert p.lower is not None and p.upper is not None
                attempts = 0 if dry_run else _retire(conn, settings, t, p.name, drop)
                result.actions.append(
                    RetainAction(p.name, p.lower, p.upper, action, not dry_run, attempts)
                )
            if drop:  # leftovers of earlier detaches, past the window too
                for p in detached_of(conn, t, details=False):
                    assert p.lower is not None and p.upper is not None
                    if p.upper > cutoff:
                        continue
                    attempts = 0 if dry_run else _drop_detached(conn, settings, t, p.name)
                    result.actions.append(
                        RetainAction(p.name, p.lower, p.upper, "drop", not dry_run, attempts, True)
                    )
            results.append(result)
    return results


# ---------------------------------------------------------------------------------------
# Retention


def _retire(
    conn: Connection, settings: Settings, table: ManagedTable, name: str, drop: bool
) -> int:
    default = check_parent(conn, table)

    def run() -> None:
        # Every lock the statement takes, taken first in the applications' order. DETACH
        # re-creates the foreign key's action triggers on the referenced tables (SHARE ROW
        # EXCLUSIVE on user_profiles), then both DETACH and DROP take ACCESS EXCLUSIVE on
        # the parent, the default and the partition (DETACH CONCURRENTLY is refused while
        # a default exists). Dropping an attached partition leaves user_profiles alone.
        if not drop:
            for referenced in referenced_tables(conn, table):
                lock(conn, referenced, "SHARE ROW EXCLUSIVE")
        lock(conn, table.ident(), "ACCESS EXCLUSIVE")
        if default is not None:
            lock(conn, table.ident(default), "ACCESS EXCLUSIVE")
        lock(conn, table.ident(name), "ACCESS EXCLUSIVE")
        if drop:
            conn.execute(sql.SQL("DROP TABLE {}").format(table.ident(name)))
        else:
            conn.execute(
                sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(
                    table.ident(), table.ident(name)
                )
            )

    return _in_transaction(conn, settings, table, name, "dropping" if drop else "detaching", run)


def _in_transaction(
    conn: Connection,
    settings: Settings,
    table: ManagedTable,
    name: str,
    verb: str,
    run: Callable[[], None],
) -> int:
    try:
        with conn.transaction():
            attempts, _ = retrying(conn, settings, f"{table.qualified} ({name})", run)
    except psycopg.Error as exc:
        raise OperationFailed(
            f"{table.qualified}: {verb} {name} failed and was rolled back: {first_line(exc)}"
        ) from None
    return attempts


def _drop_detached(conn: Connection, settings: Settings, table: ManagedTable, name: str) -> int:
    """DROP a detached month. Its foreign key has action triggers of its own on the
    referenced tables, and dropping them takes ACCESS EXCLUSIVE there (PostgreSQL 15):
    taken first, referenced tables before the table, as for every partition DDL."""

    def run() -> None:
        for referenced in referenced_tables(conn, table, name):
            lock(conn, referenced, "ACCESS EXCLUSIVE")
        lock(conn, table.ident(name), "ACCESS EXCLUSIVE")
        conn.execute(sql.SQL("DROP TABLE {}").format(table.ident(name)))

    return _in_transaction(conn, settings, table, name, "dropping", run)
