"""Benchmark: rescuing rows from the default partition while the application writes.

For each tool, a fresh database holds N rows (default 1,000,000) of one month in
usage_events' default partition; a writer thread inserts rows one at a time the whole
run. The tool then makes that month's partition and moves the rows into it:

  chainlens-ops   create_month(): standalone table, move, index, then a short ATTACH
  pg_partman      partition_data_proc() (4.x/5.x, native partitioning), where installed

Two writer mixes: `other month` (inserts land in an existing partition) and `same month`
(half the inserts are for the month being rescued, as when maintenance has lapsed).
Beside the inserting writer, a second writer runs the application's other shape: in one
transaction it updates the user's profile, then inserts an event (user_profiles, then
usage_events: the lock order that deadlocked with ATTACH before issue 7).
Reported: time, rows moved, each writer's worst latency during the run (its peak lock
wait) against the inserter's median beforehand, failed transactions of both writers, and
our/partman ratios.

    /opt/chainlens-ops/venv/bin/python bench/bench_partitions.py [--rows N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from pgharness import (  # noqa: E402
    PgCluster,
    clone_cluster,
    create_template,
    make_shared_dir,
    remove_tree,
)

from chainlens_ops.partitions import create_month  # noqa: E402
from chainlens_ops.partitions.months import Month  # noqa: E402
from chainlens_ops.schema.migrate import apply_schema  # noqa: E402
from chainlens_ops.settings.config import DatabaseTarget, Settings  # noqa: E402

USER = uuid.UUID("00000000-0000-0000-0000-00000000beef")
RESCUED = Month(2024, 6)
OTHER = Month(2025, 1)  # has a partition from the schema


@dataclass
class Run:
    tool: str
    mix: str
    seconds: float = 0.0
    rows_moved: int = 0
    baseline_ms: float = 0.0
    peak_ms: float = 0.0
    profile_peak_ms: float = 0.0
    inserts: int = 0
    failed: int = 0
    outcome: str = "ok"
    errors: list[str] = field(default_factory=list)


def partman_installed() -> str | None:
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status} ${Version}", "postgresql-15-partman"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode == 0 and proc.stdout.startswith("install ok installed"):
        return proc.stdout.split()[-1]
    return None


def prepare_db(cluster: PgCluster, name: str, rows: int, *, partman: bool) -> str:
    cluster.createdb(name)
    apply_schema(DatabaseTarget("supabase", cluster.conninfo(name)))
    with cluster.connect(name) as conn:
        conn.execute("INSERT INTO auth.users (id) VALUES (%s)", (USER,))
        conn.execute(
            "INSERT INTO user_profiles (id, email) VALUES (%s, 'bench@example.com')", (USER,)
        )
        if partman:
            # pg_partman makes its own default partition (<parent>_default): hand it the
            # table without ours. It starts its months at the current one.
            conn.execute("ALTER TABLE usage_events DETACH PARTITION usage_events_default")
            conn.execute("DROP TABLE usage_events_default")
            conn.execute("CREATE SCHEMA partman")
            conn.execute("CREATE EXTENSION pg_partman SCHEMA partman")
            version = conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'pg_partman'"
            ).fetchone()
            if version and str(version[0]).startswith("4."):
                conn.execute(
                    "SELECT partman.create_parent('public.usage_events', 'created_at', "
                    "'native', 'monthly', p_premake := 1)"
                )
            else:
                conn.execute(
                    "SELECT partman.create_parent('public.usage_events', 'created_at', "
                    "'1 month', p_premake := 1)"
                )
        conn.execute(
            "INSERT INTO usage_events (user_id, event_type, resource_type, created_at) "
            "SELECT %s, 'api_call', 'project', %s::timestamptz + g * interval '2 seconds' "
            "FROM generate_series(0, %s - 1) g",
            (USER, RESCUED.start, rows),
        )
        conn.execute("VACUUM ANALYZE usage_events")
    return name


class Writer(threading.Thread):
    """Inserts one row per statement (or, with `profile`, updates the profile and then
    inserts, in one transaction), recording each transaction's start and latency."""

    def __init__(self, conninfo: str, mix: str, *, profile: bool = False) -> None:
        super().__init__(daemon=True)
        self.conninfo = conninfo
        self.mix = mix
        self.profile = profile
        self.stop = threading.Event()
        self.samples: list[tuple[float, float]] = []
        self.errors: list[tuple[float, str]] = []

    def run(self) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            i = 0
            while not self.stop.is_set():
                i += 1
                month = RESCUED if self.mix == "same month" and i % 2 else OTHER
                began = time.monotonic()
                try:
                    with conn.transaction():
                        if self.profile:
                            conn.execute(
                                "UPDATE user_profiles SET full_name = %s WHERE id = %s",
                                (f"w{i}", USER),
                            )
                        conn.execute(
                            "INSERT INTO usage_events (user_id, event_type, created_at) "
                            "VALUES (%s, 'live', %s)",
                            (USER, month.start.replace(day=20)),
                        )
                    self.samples.append((began, time.monotonic() - began))
                except psycopg.Error as exc:
                    self.errors.append((began, str(exc).splitlines()[0]))
                time.sleep(0.002)


def measure(run: Run, conninfo: str, operation: Callable[[], int]) -> Run:
    writer = Writer(conninfo, run.mix)
    profiler = Writer(conninfo, run.mix, profile=True)
    writer.start()
    profiler.start()
    time.sleep(1.0)
    op_start = time.monotonic()
    try:
        run.rows_moved = operation()
    except Exception as exc:  # a bench reports what happened; it does not stop
        run.outcome = f"failed: {str(exc).splitlines()[0][:90]}"
    op_end = time.monotonic()
    time.sleep(0.3)
    for w in (writer, profiler):
        w.stop.set()
        w.join()
    run.seconds = op_end - op_start
    before = [lat for t, lat in writer.samples if t < op_start]
    during = [lat for t, lat in writer.samples if op_start <= t <= op_end]
    run.baseline_ms = statistics.median(before) * 1000 if before else 0.0
    run.peak_ms = max(during, default=0.0) * 1000
    run.profile_peak_ms = 1000 * max(
        (lat for t, lat in profiler.samples if op_start <= t <= op_end), default=0.0
    )
    run.inserts = len(during)
    errors = writer.errors + profiler.errors
    run.failed = sum(1 for t, _ in errors if op_start <= t <= op_end + 0.3)
    run.errors = sorted({e for _, e in errors})[:2]
    return run


def ours(cluster: PgCluster, db: str, mix: str) -> Run:
    target = DatabaseTarget("supabase", cluster.conninfo(db))
    settings = Settings(databases={"supabase": target, "microservices": target})

    def op() -> int:
        return create_month(settings, "usage_events", str(RESCUED)).rows_moved

    return measure(Run("chainlens-ops", mix), cluster.conninfo(db), op)


def partman(cluster: PgCluster, db: str, mix: str) -> Run:
    def op() -> int:
        with psycopg.connect(cluster.conninfo(db), autocommit=True) as conn:
            before = _count(conn, "usage_events_default")
            conn.execute("CALL partman.partition_data_proc('public.usage_events', p_wait := 0)")
            return before - _count(conn, "usage_events_default")

    return measure(Run("pg_partman", mix), cluster.conninfo(db), op)


def _count(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute(
        f"SELECT count(*) FROM ONLY {table} WHERE created_at >= %s AND created_at < %s",  # type: ignore[arg-type]
        (RESCUED.start, RESCUED.end),
    ).fetchone()
    return int(row[0]) if row else 0


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()

    partman_version = partman_installed()
    base = Path("/var/tmp/chainlens-bench-partitions")
    remove_tree(base)
    make_shared_dir(base, owner_postgres=False)
    cluster = clone_cluster(create_template(base / "template"), base / "cluster")
    cluster.configure(shared_buffers="512MB", max_wal_size="8GB", checkpoint_timeout="30min")
    cluster.start()
    runs: list[Run] = []
    try:
        for n, mix in enumerate(("other month", "same month")):
            print(f"[{mix}] loading {args.rows:,} rows for chainlens-ops ...", flush=True)
            db = prepare_db(cluster, f"ours_{n}", args.rows, partman=False)
            runs.append(ours(cluster, db, mix))
            if partman_version:
                print(f"[{mix}] loading {args.rows:,} rows for pg_partman ...", flush=True)
                db = prepare_db(cluster, f"partman_{n}", args.rows, partman=True)
                runs.append(partman(cluster, db, mix))
    finally:
        cluster.stop(mode="immediate")
        remove_tree(base)

    print()
    if not partman_version:
        print("pg_partman: SKIPPED (postgresql-15-partman is not installed)")
    else:
        print(f"pg_partman {partman_version} (partition_data_proc, native partitioning)")
    header = (
        f"{'mix':<12} {'tool':<14} {'seconds':>8} {'rows moved':>11} {'writer p50 ms':>14} "
        f"{'peak wait ms':>13} {'profile+insert peak':>20} {'inserts':>8} {'failed':>7}  outcome"
    )
    print(header)
    print("-" * len(header))
    for r in runs:
        print(
            f"{r.mix:<12} {r.tool:<14} {r.seconds:>8.2f} {r.rows_moved:>11,} "
            f"{r.baseline_ms:>14.2f} {r.peak_ms:>13.1f} {r.profile_peak_ms:>20.1f} "
            f"{r.inserts:>8} {r.failed:>7}  {r.outcome}"
        )
        for e in r.errors:
            print(f"{'':<28}writer error: {e[:100]}")
    if partman_version:
        print()
        print("ratios, chainlens-ops / pg_partman (below 1 = chainlens-ops better)")
        for mix in ("other month", "same month"):
            a = next(r for r in runs if r.mix == mix and r.tool == "chainlens-ops")
            b = next(r for r in runs if r.mix == mix and r.tool == "pg_partman")
            if b.outcome != "ok" or a.outcome != "ok":
                print(f"  {mix:<12} no ratio: {a.tool} {a.outcome}; {b.tool} {b.outcome}")
                continue
            print(
                f"  {mix:<12} time {ratio(a.seconds, b.seconds)}   "
                f"peak writer wait {ratio(a.peak_ms, b.peak_ms)}   "
                f"profile+insert {ratio(a.profile_peak_ms, b.profile_peak_ms)}   "
                f"failed inserts {a.failed} vs {b.failed}"
            )


if __name__ == "__main__":
    main()
