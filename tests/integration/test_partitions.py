"""Monthly partitions against real PostgreSQL: bounds, rescue from the default partition,
identity with a normal partition, ensure, retention, and inserts running alongside."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from pgharness import PgCluster

from chainlens_ops.core.errors import LockTimeout, OperationFailed
from chainlens_ops.partitions import (
    create_month,
    ensure_partitions,
    list_partitions,
    retain_partitions,
)
from chainlens_ops.partitions.months import Month
from chainlens_ops.schema.migrate import apply_schema
from chainlens_ops.settings.config import DatabaseTarget, Settings

USER = uuid.UUID("00000000-0000-0000-0000-0000000000aa")
_names = itertools.count()


@dataclass
class Dbs:
    cluster: PgCluster
    supabase: str
    microservices: str

    def settings(self, lock_timeout_ms: int = 2000, lock_retries: int = 5) -> Settings:
        return Settings(
            databases={
                "supabase": DatabaseTarget("supabase", self.cluster.conninfo(self.supabase)),
                "microservices": DatabaseTarget(
                    "microservices", self.cluster.conninfo(self.microservices)
                ),
            },
            lock_timeout_ms=lock_timeout_ms,
            lock_retries=lock_retries,
        )

    def supa(self) -> psycopg.Connection[Any]:
        conn = self.cluster.connect(self.supabase)
        conn.execute("SET TimeZone = 'UTC'")
        return conn

    def micro(self) -> psycopg.Connection[Any]:
        conn = self.cluster.connect(self.microservices)
        conn.execute("SET TimeZone = 'UTC'")
        return conn


def make_dbs(cluster: PgCluster, *, which: tuple[str, ...] = ("supabase", "microservices")) -> Dbs:
    n = next(_names)
    dbs = Dbs(cluster, f"supa_{n}_{time.monotonic_ns()}", f"micro_{n}_{time.monotonic_ns()}")
    for name, db in (("supabase", dbs.supabase), ("microservices", dbs.microservices)):
        cluster.createdb(db)
        if name in which:
            apply_schema(DatabaseTarget(name, cluster.conninfo(db)))
    with dbs.supa() as conn:
        if "supabase" in which:
            conn.execute("INSERT INTO auth.users (id) VALUES (%s)", (USER,))
            conn.execute(
                "INSERT INTO user_profiles (id, email) VALUES (%s, 'a@example.com')", (USER,)
            )
    return dbs


@pytest.fixture
def dbs(module_pg: PgCluster) -> Dbs:
    return make_dbs(module_pg)


def insert_usage(conn: psycopg.Connection[Any], month: Month, count: int) -> None:
    """`count` events spread over `month` (generate_series: fast for big counts)."""
    conn.execute(
        "INSERT INTO usage_events (user_id, event_type, created_at) "
        "SELECT %s, 'api_call', %s::timestamptz + (g * interval '1 second') "
        "FROM generate_series(0, %s - 1) g",
        (USER, month.start, count),
    )


def partition_of_rows(conn: psycopg.Connection[Any], month: Month) -> dict[str, int]:
    rows = conn.execute(
        "SELECT tableoid::regclass::text, count(*) FROM usage_events "
        "WHERE created_at >= %s AND created_at < %s GROUP BY 1",
        (month.start, month.end),
    ).fetchall()
    return {r[0]: r[1] for r in rows}


def bounds(conn: psycopg.Connection[Any], qualified: str) -> str | None:
    row = conn.execute(
        "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_class c "
        "JOIN pg_inherits i ON i.inhrelid = c.oid WHERE c.oid = to_regclass(%s)",
        (qualified,),
    ).fetchone()
    return row[0] if row else None


def test_create_month_bounds_across_a_year_boundary_and_repeat_is_noop(dbs: Dbs) -> None:
    settings = dbs.settings()
    dec = create_month(settings, "usage_events", "2025-12")
    jan = create_month(settings, "public.usage_events", "2026-01")
    assert dec.created and jan.created
    assert (dec.partition, jan.partition) == (
        "public.usage_events_y2025m12",
        "public.usage_events_y2026m01",
    )
    with dbs.supa() as conn:
        assert bounds(conn, "usage_events_y2025m12") == (
            "FOR VALUES FROM ('2025-12-01 00:00:00+00') TO ('2026-01-01 00:00:00+00')"
        )
        assert bounds(conn, "usage_events_y2026m01") == (
            "FOR VALUES FROM ('2026-01-01 00:00:00+00') TO ('2026-02-01 00:00:00+00')"
        )
        before = conn.execute("SELECT count(*) FROM pg_class").fetchone()
    again = create_month(settings, "usage_events", "2025-12")
    assert not again.created and again.partition == "public.usage_events_y2025m12"
    with dbs.supa() as conn:
        assert conn.execute("SELECT count(*) FROM pg_class").fetchone() == before

    price = create_month(settings, "onchain_analysis.price_history", "2025-12")
    assert price.created and price.database == "microservices"
    with dbs.micro() as conn:
        assert bounds(conn, "onchain_analysis.price_history_y2025m12") == (
            "FOR VALUES FROM ('2025-12-01 00:00:00+00') TO ('2026-01-01 00:00:00+00')"
        )


def test_rows_in_the_default_partition_move_into_the_new_month(dbs: Dbs) -> None:
    may = Month(2025, 5)
    with dbs.supa() as conn:
        insert_usage(conn, may, 500)
        insert_usage(conn, Month(2025, 7), 7)  # another month: stays in the default
        assert partition_of_rows(conn, may) == {"usage_events_default": 500}
        ids_before = {r[0] for r in conn.execute("SELECT id FROM usage_events").fetchall()}

    result = create_month(dbs.settings(), "usage_events", "2025-05")
    assert result.created and result.rows_moved == 500

    with dbs.supa() as conn:
        assert partition_of_rows(conn, may) == {"usage_events_y2025m05": 500}
        assert conn.execute("SELECT count(*) FROM ONLY usage_events_default").fetchone() == (7,)
        ids_after = [r[0] for r in conn.execute("SELECT id FROM usage_events").fetchall()]
        assert len(ids_after) == len(ids_before) and set(ids_after) == ids_before
        # The helper CHECK is gone and the planner has statistics for the moved rows.
        assert conn.execute(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'usage_events_y2025m05'::regclass "
            "AND contype = 'c'"
        ).fetchone() == (0,)
        assert conn.execute(
            "SELECT reltuples FROM pg_class WHERE relname = 'usage_events_y2025m05'"
        ).fetchone() == (500,)

    listed = list_partitions(dbs.settings(), table="usage_events")[0]
    assert listed.default_rows == 7 and listed.default_flagged


def _shape(conn: psycopg.Connection[Any], qualified: str, name: str) -> dict[str, Any]:
    """A partition's catalog shape with its own name blanked out, for comparison."""

    def blank(text: str) -> str:
        return text.replace(name, "<p>")

    oid = f"'{qualified}'::regclass"
    return {
        "columns": conn.execute(
            f"SELECT attname, format_type(atttypid, atttypmod), attnotnull, "
            f"pg_get_expr(d.adbin, d.adrelid), attstorage, attcompression "
            f"FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid "
            f"AND d.adnum = a.attnum WHERE attrelid = {oid} AND attnum > 0 "
            f"AND NOT attisdropped ORDER BY attnum"
        ).fetchall(),
        "constraints": sorted(
            (blank(r[0]), *r[1:])
            for r in conn.execute(
                f"SELECT conname, contype, pg_get_constraintdef(oid), conislocal, coninhcount, "
                f"conparentid <> 0, convalidated FROM pg_constraint WHERE conrelid = {oid}"
            ).fetchall()
        ),
        "indexes": sorted(
            (blank(r[0]), blank(r[1]), r[2])
            for r in conn.execute(
                f"SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid), "
                f"EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = i.indexrelid) "
                f"FROM pg_index i WHERE indrelid = {oid}"
            ).fetchall()
        ),
        "triggers": sorted(
            r[0]
            for r in conn.execute(
                f"SELECT tgfoid::regproc::text FROM pg_trigger WHERE tgrelid = {oid}"
            ).fetchall()
        ),
    }


@pytest.mark.parametrize(
    "table,schema,name",
    [
        ("usage_events", "public", "usage_events"),
        ("price_history", "onchain_analysis", "price_history"),
    ],
)
def test_result_is_identical_to_a_normal_partition(
    dbs: Dbs, table: str, schema: str, name: str
) -> None:
    db = dbs.supa if schema == "public" else dbs.micro
    with db() as conn:
        conn.execute(
            f"CREATE TABLE {schema}.{name}_y2030m01 PARTITION OF {schema}.{name} "
            "FOR VALUES FROM ('2030-01-01 00:00+00') TO ('2030-02-01 00:00+00')"
        )
    create_month(dbs.settings(), table, "2030-02")
    with db() as conn:
        normal = _shape(conn, f"{schema}.{name}_y2030m01", f"{name}_y2030m01")
        ours = _shape(conn, f"{schema}.{name}_y2030m02", f"{name}_y2030m02")
    assert ours == normal
    assert normal["indexes"] and all(attached for *_, attached in normal["indexes"])


def test_ensure_ahead_covers_both_tables_in_both_databases(dbs: Dbs) -> None:
    now = datetime(2025, 11, 20, 15, 0, tzinfo=UTC)
    result = ensure_partitions(dbs.settings(), ahead=3, now=now)
    assert not result.failures
    assert (result.first, result.last) == ("2025-11", "2026-02")
    want = ["y2025m11", "y2025m12", "y2026m01", "y2026m02"]
    assert sorted(m.partition for m in result.created) == sorted(
        [f"public.usage_events_{s}" for s in want]
        + [f"onchain_analysis.price_history_{s}" for s in want]
    )
    with dbs.supa() as conn:
        for s in want:
            assert bounds(conn, f"usage_events_{s}")
    with dbs.micro() as conn:
        for s in want:
            assert bounds(conn, f"onchain_analysis.price_history_{s}")
    again = ensure_partitions(dbs.settings(), ahead=3, now=now)
    assert not again.created and len(again.months) == 8


def test_ensure_goes_on_when_one_database_is_unreachable(module_pg: PgCluster) -> None:
    dbs = make_dbs(module_pg, which=("microservices",))
    settings = dbs.settings()
    dead = DatabaseTarget("supabase", "host=127.0.0.1 port=1 dbname=x user=postgres")
    settings = Settings(databases={**settings.databases, "supabase": dead})
    result = ensure_partitions(settings, ahead=1, now=datetime(2025, 11, 1, tzinfo=UTC))
    assert [f.database for f in result.failures] == ["supabase"]
    assert result.failures[0].exit_code == 3
    assert len(result.created) == 2 and {m.database for m in result.created} == {"microservices"}


def test_retain_detaches_or_drops_only_old_months_and_dry_run_changes_nothing(dbs: Dbs) -> None:
    settings = dbs.settings()
    now = datetime(2025, 6, 15, tzinfo=UTC)
    for m in ("2025-03", "2025-04", "2025-05", "2025-06", "2025-07"):
        create_month(settings, "usage_events", m)
    with dbs.supa() as conn:
        insert_usage(conn, Month(2025, 1), 3)
        insert_usage(conn, Month(2030, 1), 2)  # default partition: never touched

    def attached() -> list[str]:
        listed = list_partitions(settings, table="usage_events")
        return [p.name for t in listed for p in t.partitions]

    everything = attached()
    plan = retain_partitions(settings, 3, table="usage_events", dry_run=True, now=now)[0]
    assert [a.partition for a in plan.actions] == ["usage_events_y2025m01", "usage_events_y2025m02"]
    assert plan.cutoff == datetime(2025, 3, 1, tzinfo=UTC) and not any(a.done for a in plan.actions)
    assert attached() == everything

    done = retain_partitions(settings, 3, table="usage_events", now=now)[0]
    assert [(a.partition, a.action, a.done) for a in done.actions] == [
        ("usage_events_y2025m01", "detach", True),
        ("usage_events_y2025m02", "detach", True),
    ]
    assert attached() == everything[2:]
    with dbs.supa() as conn:  # detached, not lost
        assert conn.execute("SELECT count(*) FROM usage_events_y2025m01").fetchone() == (3,)
        assert conn.execute("SELECT count(*) FROM ONLY usage_events_default").fetchone() == (2,)

    dropped = retain_partitions(settings, 1, table="usage_events", drop=True, now=now)[0]
    assert [(a.partition, a.was_detached) for a in dropped.actions] == [
        ("usage_events_y2025m03", False),
        ("usage_events_y2025m04", False),
        # the months detached above, now past the window too
        ("usage_events_y2025m01", True),
        ("usage_events_y2025m02", True),
    ]
    with dbs.supa() as conn:
        assert conn.execute("SELECT to_regclass('usage_events_y2025m03')").fetchone() == (None,)
    names = attached()
    assert "usage_events_y2025m05" in names and "usage_events_y2025m06" in names
    assert "usage_events_default" in names
    # Nothing in the microservices database was considered (only --table's own DB).
    assert all(r.table == "public.usage_events" for r in (plan, done, dropped))


def test_lock_timeout_gives_up_cleanly_and_changes_nothing(dbs: Dbs) -> None:
    month = Month(2025, 8)
    with dbs.supa() as conn:
        insert_usage(conn, month, 50)
    # An open application transaction that inserted into the table holds the parent in
    # ROW EXCLUSIVE: the attach must not wait behind it for longer than lock_timeout.
    holder = dbs.cluster.connect(dbs.supabase, autocommit=False)
    try:
        insert_usage(holder, Month(2025, 1), 1)
        started = time.monotonic()
        with pytest.raises(LockTimeout) as info:
            create_month(
                dbs.settings(lock_timeout_ms=100, lock_retries=2), "usage_events", "2025-08"
            )
        assert time.monotonic() - started < 5
        assert "3 attempts" in info.value.one_line()
    finally:
        holder.rollback()
        holder.close()
    with dbs.supa() as conn:
        assert conn.execute("SELECT to_regclass('usage_events_y2025m08')").fetchone() == (None,)
        assert partition_of_rows(conn, month) == {"usage_events_default": 50}
    # Once the transaction is gone the same call succeeds.
    assert create_month(dbs.settings(), "usage_events", "2025-08").rows_moved == 50


def test_a_clashing_table_is_refused(dbs: Dbs) -> None:
    with dbs.supa() as conn:
        conn.execute("CREATE TABLE public.usage_events_y2025m09 (x int)")
        conn.execute(
            "CREATE TABLE public.odd PARTITION OF usage_events "
            "FOR VALUES FROM ('2025-10-15 00:00+00') TO ('2025-11-15 00:00+00')"
        )
    with pytest.raises(OperationFailed, match="not a partition"):
        create_month(dbs.settings(), "usage_events", "2025-09")
    with pytest.raises(OperationFailed, match="overlaps 2025-11"):
        create_month(dbs.settings(), "usage_events", "2025-11")


def test_concurrent_inserts_neither_fail_nor_get_lost(dbs: Dbs) -> None:
    """A writer keeps inserting, into the month being rescued and into another month,
    while create-month moves 150,000 rows: every insert succeeds and every row is found."""
    rescued = Month(2025, 3)
    other = Month(2025, 1)  # has a partition from the schema
    with dbs.supa() as conn:
        insert_usage(conn, rescued, 150_000)

    stop = threading.Event()
    spans: list[tuple[float, float]] = []
    errors: list[str] = []
    written: list[tuple[uuid.UUID, Month]] = []

    def writer() -> None:
        with dbs.cluster.connect(dbs.supabase) as conn:
            for i in itertools.count():
                if stop.is_set():
                    return
                row_id = uuid.uuid4()
                month = rescued if i % 2 else other
                began = time.monotonic()
                try:
                    conn.execute(
                        "INSERT INTO usage_events (id, user_id, event_type, created_at) "
                        "VALUES (%s, %s, 'live', %s)",
                        (row_id, USER, month.start.replace(day=20)),
                    )
                except psycopg.Error as exc:
                    errors.append(str(exc))
                    continue
                spans.append((began, time.monotonic()))
                written.append((row_id, month))

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.2)
        op_start = time.monotonic()
        result = create_month(dbs.settings(), "usage_events", str(rescued))
        op_end = time.monotonic()
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join()

    assert errors == []
    during = [s for s in spans if op_start <= s[0] <= op_end]
    assert len(during) >= 5, "the writer did not overlap the operation"
    assert result.rows_moved >= 150_000
    with dbs.supa() as conn:
        found = {
            r[0]
            for r in conn.execute(
                "SELECT id FROM usage_events WHERE event_type = 'live'"
            ).fetchall()
        }
        assert found == {row_id for row_id, _ in written}
        live_in_rescued = sum(1 for _, m in written if m == rescued)
        assert live_in_rescued > 0
        assert partition_of_rows(conn, rescued) == {
            "usage_events_y2025m03": 150_000 + live_in_rescued
        }
        assert conn.execute(
            "SELECT count(*) FROM usage_events WHERE event_type = 'api_call'"
        ).fetchone() == (150_000,)
        assert conn.execute("SELECT count(*) FROM ONLY usage_events_default").fetchone() == (0,)


def test_two_runs_for_the_same_month_one_creates_one_reports_noop(dbs: Dbs) -> None:
    with dbs.supa() as conn:
        insert_usage(conn, Month(2025, 4), 50_000)
    results: list[Any] = []

    def run() -> None:
        try:
            results.append(create_month(dbs.settings(), "usage_events", "2025-04"))
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.created for r in results) == [False, True], results
    assert sum(r.rows_moved for r in results) == 50_000


class ProfileWriters:
    """Application transactions as the platform runs them: in ONE transaction, UPDATE the
    user's profile, then INSERT a usage event (referenced table first, then the parent).
    Each writer has its own user, so writers never wait on each other's rows; every
    failed transaction is counted."""

    def __init__(self, dbs: Dbs, months: list[Month], count: int = 4) -> None:
        self.dbs = dbs
        self.months = months
        self.users = [uuid.uuid4() for _ in range(count)]
        with dbs.supa() as conn:
            for user in self.users:
                conn.execute("INSERT INTO auth.users (id) VALUES (%s)", (user,))
                conn.execute(
                    "INSERT INTO user_profiles (id, email) VALUES (%s, 'w@example.com')", (user,)
                )
        self.stop = threading.Event()
        self.committed = 0
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(u,)) for u in self.users]

    def _run(self, user: uuid.UUID) -> None:
        with self.dbs.cluster.connect(self.dbs.supabase, autocommit=False) as conn:
            for i in itertools.count():
                if self.stop.is_set():
                    return
                month = self.months[i % len(self.months)]
                try:
                    conn.execute(
                        "UPDATE user_profiles SET full_name = %s WHERE id = %s", (f"n{i}", user)
                    )
                    conn.execute(
                        "INSERT INTO usage_events (user_id, event_type, created_at) "
                        "VALUES (%s, 'app', %s)",
                        (user, month.start.replace(day=10)),
                    )
                    conn.commit()
                    self.committed += 1
                except psycopg.Error as exc:
                    conn.rollback()
                    self.errors.append(str(exc).splitlines()[0])

    def __enter__(self) -> ProfileWriters:
        for t in self.threads:
            t.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.1)
        self.stop.set()
        for t in self.threads:
            t.join()


def test_create_month_under_profile_then_event_writers_fails_no_transaction(dbs: Dbs) -> None:
    """The tool takes user_profiles before usage_events, as the application does: no
    writer transaction is aborted (deadlock or otherwise) and every month is made."""
    months = [Month(2024, m) for m in range(1, 7)]
    with dbs.supa() as conn:
        for m in months:
            insert_usage(conn, m, 5_000)
    settings = dbs.settings(lock_timeout_ms=500, lock_retries=20)
    with ProfileWriters(dbs, [*months, Month(2025, 1)]) as writers:
        before = writers.committed
        results = [create_month(settings, "usage_events", str(m)) for m in months]
        during = writers.committed - before
    assert writers.errors == []
    assert during >= 20, "the writers did not overlap the operation"
    assert all(r.created for r in results)
    with dbs.supa() as conn:
        assert conn.execute("SELECT count(*) FROM ONLY usage_events_default").fetchone() == (0,)
        for m in months:
            assert set(partition_of_rows(conn, m)) == {f"usage_events_{m.suffix}"}


def test_retain_under_profile_then_event_writers_fails_no_transaction(dbs: Dbs) -> None:
    settings = dbs.settings(lock_timeout_ms=500, lock_retries=20)
    months = [Month(2024, m) for m in range(1, 13)]
    for m in months:
        create_month(settings, "usage_events", str(m))
    now = datetime(2025, 1, 15, tzinfo=UTC)
    with ProfileWriters(dbs, [Month(2025, 1), Month(2024, 12), Month(2030, 1)]) as writers:
        before = writers.committed
        detached = retain_partitions(settings, 6, table="usage_events", now=now)[0]
        dropped = retain_partitions(settings, 2, table="usage_events", drop=True, now=now)[0]
        during = writers.committed - before
    assert writers.errors == []
    assert during >= 20, "the writers did not overlap the operation"
    assert len(detached.actions) == 6 and all(a.done for a in detached.actions)
    assert all(a.done for a in dropped.actions)
    with dbs.supa() as conn:
        for m in (Month(2024, 7), Month(2024, 10)):
            assert conn.execute(
                "SELECT to_regclass(%s)", (f"usage_events_{m.suffix}",)
            ).fetchone() == (None,)


def test_detached_leftovers_are_listed_refused_by_create_and_dropped_past_the_window(
    dbs: Dbs,
) -> None:
    settings = dbs.settings()
    now = datetime(2025, 6, 15, tzinfo=UTC)
    for m in ("2025-02", "2025-03", "2025-04"):
        create_month(settings, "usage_events", m)
    with dbs.supa() as conn:
        insert_usage(conn, Month(2025, 3), 4)
        # Not ours: a month-named table of another shape is never listed nor dropped.
        conn.execute("CREATE TABLE public.usage_events_y2024m01 (x int)")
    retain_partitions(settings, 2, table="usage_events", now=now)  # detaches 2025-01..03
    listed = list_partitions(settings, table="usage_events")[0]
    assert [p.name for p in listed.detached] == [
        "usage_events_y2025m01",
        "usage_events_y2025m02",
        "usage_events_y2025m03",
    ]
    assert listed.detached[2].lower == datetime(2025, 3, 1, tzinfo=UTC)
    with pytest.raises(OperationFailed, match="that `partition retain` detached") as info:
        create_month(settings, "usage_events", "2025-03")
    assert "ATTACH PARTITION public.usage_events_y2025m03 FOR VALUES" in info.value.one_line()

    # keep 3 months: 2025-03 ends inside the window and stays; older leftovers go.
    dropped = retain_partitions(settings, 3, table="usage_events", drop=True, now=now)[0]
    assert [(a.partition, a.was_detached) for a in dropped.actions] == [
        ("usage_events_y2025m01", True),
        ("usage_events_y2025m02", True),
    ]
    with dbs.supa() as conn:
        assert conn.execute("SELECT count(*) FROM usage_events_y2025m03").fetchone() == (4,)
        assert conn.execute("SELECT to_regclass('usage_events_y2025m02')").fetchone() == (None,)
        assert conn.execute("SELECT to_regclass('usage_events_y2024m01')").fetchone() is not None
    listed = list_partitions(settings, table="usage_events")[0]
    assert [p.name for p in listed.detached] == ["usage_events_y2025m03"]
