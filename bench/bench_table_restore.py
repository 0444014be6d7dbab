"""Table-level restore speed: `restore table` against a full `restore --start`, same target.

    /opt/chainlens-ops/venv/bin/python bench/bench_table_restore.py [--scale 2] [--rounds 3]

One cluster (archive_mode on, archive_command our `wal push`) with two databases, each
holding pgbench tables (--scale: the transactions that make the WAL to replay, and
`shop`'s pgbench_accounts is the table to bring back) and a table shaped like ChainLens
data (`chain_events`: uuid, tx hash, address, numeric amount, block, jsonb payload;
~2.5:1 under zstd where pgbench's packs ~20:1): --shop-mb of it in `shop`, --big-mb in
`big`, so that `big` is the other database ten times bigger than the one holding the
table (catalogs included; the run prints the ratio and the backup's). One physical backup, by
default files-layout (`backup --kind incr` with no parent takes a files-layout full:
each database's files in their own bundles, so `restore table` never reads `big`'s);
`--layout tar` takes `backup --kind base` (one base.tar.zst) instead. Then pgbench writes
to both databases (--transactions per client), a time T, a third as many writes and a WAL
switch. Each round (the order alternates) restores from that same backup to the same T:

  full restore   restore --target-time T --pgdata DIR --start --port P, from the command
                 to a promoted server that answers queries (what an operator without
                 `restore table` does first, before copying anything back)
  restore table  restore table public.pgbench_accounts --target-time T, from the
                 command to the rows committed in a new schema of the live database (its
                 --json says when, on its own clock); the time to its exit, once the
                 scratch copy is stopped and removed, is printed too

Both must agree on the table's rows at T (count and sum of abalance), or the run fails.
Target: restore table at most 0.6x the time of the full restore.
"""

from __future__ import annotations

import argparse
import json
import pwd
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))
sys.path.insert(0, str(HERE))

import psycopg  # noqa: E402
from bench_incremental import profile_top, profiled_cli  # noqa: E402
from bench_restore import run, wait_promoted  # noqa: E402
from bench_wal import (  # noqa: E402
    base_env,
    init_cluster,
    need_root,
    print_medians,
    scratch_folder,
)
from pgharness import CLI, PG_BIN, PgCluster, free_port, make_shared_dir  # noqa: E402
from test_wal import switch_and_wait  # noqa: E402

TABLE = "pgbench_accounts"
FULL = "full restore"
TABLE_TOOL = "restore table"


def run_json(argv: list[str], *, cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run one command as postgres; its --json output."""
    pw = pwd.getpwnam("postgres")
    proc = subprocess.run([*argv, "--json"], cwd=cwd, env=env, user=pw.pw_uid, group=pw.pw_gid,
                          extra_groups=[], capture_output=True, text=True, check=False)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(
            f"{' '.join(argv[:3])} ... failed ({proc.returncode}): {proc.stderr[-400:]}"
        )
    return dict(json.loads(proc.stdout))


def fingerprint(conninfo: str, table: str) -> tuple[int, int]:
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(f"SELECT count(*), coalesce(sum(abalance), 0) FROM {table}").fetchone()
        assert row is not None
        return int(row[0]), int(row[1])


# ChainLens rows: crypto analysis (ids, hashes, addresses, amounts, JSON), which compress
# far less than pgbench's mostly blank rows. ~330 bytes a row on disk.
PLATFORM_TABLE = """
CREATE TABLE IF NOT EXISTS chain_events (
    id uuid PRIMARY KEY, tx_hash text NOT NULL, address text NOT NULL,
    amount numeric NOT NULL, block bigint NOT NULL, payload jsonb NOT NULL)"""
PLATFORM_ROWS = """
INSERT INTO chain_events
SELECT gen_random_uuid(), '0x' || md5(random()::text) || md5(random()::text),
       '0x' || substr(md5(random()::text), 1, 40), round((random() * 1e6)::numeric, 18),
       18000000 + g, jsonb_build_object(
           'from', '0x' || substr(md5(random()::text), 1, 40),
           'to', '0x' || substr(md5(random()::text), 1, 40),
           'method', (ARRAY['transfer', 'swap', 'approve', 'mint'])[1 + g %% 4],
           'gas', (random() * 1e6)::int, 'fee', round((random() * 1e3)::numeric, 9))
FROM generate_series(1, %s) AS g"""
PLATFORM_ROW_BYTES = 330


def fill_platform(conninfo: str, mb: int) -> None:
    """`mb` MB of platform-shaped rows in `chain_events` (in batches: one transaction of
    several hundred MB would hold WAL and memory longer than it needs to)."""
    rows = mb * 2**20 // PLATFORM_ROW_BYTES
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(PLATFORM_TABLE)
        while rows > 0:
            batch = min(rows, 200_000)
            conn.execute(PLATFORM_ROWS, (batch,))
            rows -= batch
        conn.execute("VACUUM ANALYZE chain_events")


def children_cpu() -> float:
    """CPU seconds of the finished processes this one waited for: a command and what it
    waited for itself (pg_ctl, ...), not a server it started (the postmaster detaches, so
    neither recovery's replay nor its `wal fetch` calls are in it)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=int, default=2, help="pgbench scale of each database")
    parser.add_argument("--big-scale", type=int, default=None,
                        help="of `big` (default --scale; the earlier pgbench-only runs: "
                        "--big-scale 25 --shop-mb 0 --big-mb 0)")  # fmt: skip
    parser.add_argument("--shop-mb", type=int, default=16,
                        help="MB of platform-shaped rows in `shop`")  # fmt: skip
    parser.add_argument("--big-mb", type=int, default=480,
                        help="in `big` (480: ~10x shop with its pgbench tables)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--transactions", type=int, default=1000,
                        help="pgbench transactions per client and database before T")  # fmt: skip
    parser.add_argument(
        "--layout",
        choices=("files", "tar"),
        default="files",
        help="files: --kind incr (a files-layout full); tar: --kind base",
    )
    parser.add_argument("--profile", action="store_true",
                        help="one more restore table under cProfile")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    if not need_root():
        return 2
    base = scratch_folder("tr")
    env = base_env()
    repo = make_shared_dir(base / "repo", mode=0o700)
    scratch = make_shared_dir(base / "scratch")
    cluster: PgCluster | None = None
    times: dict[str, list[float]] = {FULL: [], TABLE_TOOL: []}
    cpu: dict[str, list[float]] = {FULL: [], TABLE_TOOL: []}  # the command's, not the server's
    to_exit: list[float] = []  # restore table until it exited (scratch removed)
    seen: dict[str, tuple[int, int]] = {}
    profiled: list[str] = []
    try:
        cluster, _ = init_cluster(
            base,
            "max_wal_size = 4GB\nshared_buffers = 256MB\narchive_mode = on\n"
            f"archive_command = '{CLI} wal push --repo file://{repo} %p'\n",
        )
        cluster.start()
        pgbench = [str(PG_BIN / "pgbench"), "-h", "127.0.0.1", "-p", str(cluster.port),
                   "-U", "postgres"]  # fmt: skip
        big_scale = args.scale if args.big_scale is None else args.big_scale
        for db, scale, mb in (("shop", args.scale, args.shop_mb), ("big", big_scale, args.big_mb)):
            cluster.createdb(db)
            print(f"pgbench -i -s {scale} {db}, {mb} MB of chain_events ...", flush=True)
            run([*pgbench, "-i", "-q", "-s", str(scale), db], cwd=base, env=env)
            if mb:
                fill_platform(cluster.conninfo(db), mb)
        sizes = {db: int(cluster.scalar(f"SELECT pg_database_size('{db}')")) for db in
                 ("shop", "big")}  # fmt: skip
        print(f"shop {sizes['shop'] / 2**20:.0f} MB, big {sizes['big'] / 2**20:.0f} MB "
              f"({sizes['big'] / sizes['shop']:.1f}x); {args.layout}-layout backup ...",
              flush=True)  # fmt: skip
        kind = "incr" if args.layout == "files" else "base"
        taken = run_json([str(CLI), "backup", "--kind", kind, "--repo", f"file://{repo}",
                          "--dsn", cluster.conninfo("shop")], cwd=base, env=env)  # fmt: skip
        stored = int(taken.get("size_bytes", 0))
        print(f"backup {taken.get('id')}: kind {taken.get('kind')}, {stored / 2**20:.0f} MB "
              f"stored ({sum(sizes.values()) / max(stored, 1):.1f}:1 of the two databases)",
              flush=True)  # fmt: skip
        for db in ("shop", "big"):  # WAL to replay in both databases
            run([*pgbench, "-n", "-c", "2", "-t", str(args.transactions), db], cwd=base, env=env)
        target = str(cluster.scalar("SELECT now()::text"))
        at_t = fingerprint(cluster.conninfo("shop"), TABLE)
        time.sleep(0.5)
        for db in ("shop", "big"):
            run([*pgbench, "-n", "-c", "2", "-t", str(args.transactions // 3), db], cwd=base,
                env=env)  # fmt: skip
        switch_and_wait(cluster, timeout=120)
        wal = int(cluster.scalar("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))
        print(f"target {target}; {TABLE} at T: {at_t[0]:,} rows; WAL since initdb "
              f"{wal / 2**20:.0f} MB", flush=True)  # fmt: skip
        live_env = {**env, "CHAINLENS_SUPABASE_DSN": cluster.conninfo("shop")}

        for n in range(args.rounds):
            order = [FULL, TABLE_TOOL] if n % 2 == 0 else [TABLE_TOOL, FULL]
            for tool in order:
                started = time.perf_counter()
                cpu_before = children_cpu()
                if tool == FULL:
                    pgdata = base / f"restore-{n}"
                    port = free_port()
                    done = run_json([str(CLI), "restore", "--repo", f"file://{repo}",
                                     "--target-time", target, "--pgdata", str(pgdata),
                                     "--start", "--port", str(port)],
                                    cwd=base, env=env)  # fmt: skip
                    wait_promoted(port)
                    times[tool].append(time.perf_counter() - started)
                    start_s = float(done["started"]["seconds"])
                    phases = (f"extract {float(done['seconds']) - start_s:.2f} s, start and "
                              f"recovery {start_s:.2f} s; outside the command's clock "
                              f"{times[tool][-1] - float(done['seconds']):.2f} s")  # fmt: skip
                    restored = PgCluster(pgdata, port)
                    seen[tool] = fingerprint(restored.conninfo("shop"), TABLE)
                    restored.stop("immediate")
                    shutil.rmtree(pgdata, ignore_errors=True)
                else:
                    schema = f"bench_{n}"
                    done = run_json([str(CLI), "restore", "table", f"public.{TABLE}", "--db",
                                     "supabase", "--repo", f"file://{repo}", "--target-time",
                                     target, "--into-schema", schema, "--scratch", str(scratch)],
                                    cwd=base, env=live_env)  # fmt: skip
                    exited = time.perf_counter() - started
                    # To rows loaded: the command's own clock says when the commit was made.
                    cleanup = float(done["seconds"]) - float(done["loaded_seconds"])
                    times[tool].append(exited - cleanup)
                    to_exit.append(exited)
                    steps = sum(float(done[k]) for k in ("extract_seconds", "recovery_seconds",
                                                         "copy_seconds"))  # fmt: skip
                    phases = (
                        f"extract {done['extract_seconds']:.2f} s, recovery "
                        f"{done['recovery_seconds']:.2f} s, copy {done['copy_seconds']:.2f} s, "
                        f"the rest of its clock {float(done['loaded_seconds']) - steps:.2f} s, "
                        f"outside it {exited - float(done['seconds']):.2f} s; "
                        f"scratch removed {cleanup:.2f} s later"
                    )
                    seen[tool] = fingerprint(cluster.conninfo("shop"), f"{schema}.{TABLE}")
                    cluster.execute(f"DROP SCHEMA {schema} CASCADE", dbname="shop")
                cpu[tool].append(children_cpu() - cpu_before)
                print(f"  round {n + 1}: {tool} {times[tool][-1]:.2f} s, CPU {cpu[tool][-1]:.2f} s "
                      f"({phases})", flush=True)  # fmt: skip
        if args.profile:
            prof = base / "table.prof"
            run(profiled_cli(prof, ["restore", "table", f"public.{TABLE}", "--db", "supabase",
                                    "--repo", f"file://{repo}", "--target-time", target,
                                    "--into-schema", "bench_profiled", "--scratch",
                                    str(scratch)]), cwd=base, env=live_env)  # fmt: skip
            profiled = profile_top(prof)
    finally:
        if cluster is not None:
            cluster.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    if not (seen.get(FULL) == seen.get(TABLE_TOOL) == at_t):
        print(f"rows at T differ: {seen} vs live at T {at_t}", file=sys.stderr)
        return 1
    anchor = print_medians(
        "", times, FULL, width=14, ratio_title=f"ratio ({TABLE} at T: {at_t[0]:,} rows)",
        extra=lambda tool: f"; CPU median {statistics.median(cpu[tool]):.2f} s",
    )  # fmt: skip
    exit_med = statistics.median(to_exit)
    print(f"{'(to its exit)':14} {exit_med:9.2f} {', '.join(f'{t:.2f}' for t in to_exit):>22}  "
          f"{exit_med / anchor:.2f}x the time")  # fmt: skip
    if profiled:
        print("\nrestore table under cProfile (main thread only; not in the ratio):")
        print("\n".join(profiled))
    ok = statistics.median(times[TABLE_TOOL]) <= 0.6 * anchor
    print(f"target: restore table at most 0.6x a full restore --start: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
