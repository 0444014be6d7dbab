"""Incremental backups: chainlens-ops `backup --kind incr` against pgBackRest `--type=incr`.

    /opt/chainlens-ops/venv/bin/python bench/bench_incremental.py [--rows 1500000] [--days 7]
        [--rounds 5] [--ours-kind incr|base] [--keep]

One cluster (archive_mode on: archive_command pushes every segment to the chainlens-ops
repository AND pgBackRest's stanza, as bench_backup.py does), shaped like the platform:

  db `supabase`        usage_events partitioned by month (12 months of 2026; the current
                       one, December, holds 40% of --rows), primary key (id, created_at),
                       indexes on user_id and created_at; user_profiles; api_sessions;
                       rate_limits
  db `microservices`   price_history

loaded, frozen (VACUUM FREEZE: hint bits set before the full, as on a cluster that has run
for a while) and checkpointed. A full backup by each tool (ours: `backup --kind incr` with
no parent takes a files-layout full), then --days "days", each:

  appends        2% of --rows into the current month (in time order, as events arrive)
  updates        --updates rows picked at random in --months-touched (3) of the 11 older
                 months, a different few each day (corrections to old events: a month
                 nobody touched that day is a file pgBackRest can skip too)
  profiles       1% of user_profiles updated
  shorter        the newest 4% of api_sessions deleted, VACUUM api_sessions (truncates)
  rewritten      20% of rate_limits updated, VACUUM FULL rate_limits (a new relfilenode)
  other db       price_history appended to

then `backup --kind incr` and pgBackRest `--type=incr backup` (the order alternates by day).
Per day and in total: bytes written to each repository's backup area (`backups/` and
pgBackRest's `backup/`: WAL excluded, it is the same for both), wall time, peak RSS.
Targets (issue 22): bytes <= 0.5x pgBackRest's incremental, time <= 1.0x, peak < 200 MB.

After the last day, `backup --kind base` (a full of the same data, no writes between),
then --rounds rounds (order alternating) of `restore --backup ID --latest --start` to a
promoted server from the end of the chain and from that full, and, for reference,
pgBackRest's restore of its own incremental chain (`--set`, recovery to the end of the
archive, then `pg_ctl start`). Target: the chain's restore <= 1.2x the full's. Every
restored server must hold the source's rows (count and a hash sum per table).

Last, where our incremental's time goes: one more day of changes and `backup --kind incr`
run under cProfile (its numbers are not in the ratios); the top functions are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))
sys.path.insert(0, str(HERE))

from bench_backup import cluster_with_pgbackrest, du  # noqa: E402
from bench_restore import wait_promoted  # noqa: E402
from bench_wal import base_env, need_root, print_medians, scratch_folder  # noqa: E402
from pgharness import CLI, VENV, PgCluster, free_port, make_shared_dir  # noqa: E402

MONTHS = 12  # 2026-01 .. 2026-12; December is the current month
CURRENT_SHARE = 0.40
OURS = "chainlens-ops"
PGBR = "pgBackRest"
TABLES = {
    "supabase": ("usage_events", "user_profiles", "api_sessions", "rate_limits"),
    "microservices": ("price_history",),
}


@dataclass
class Run:
    """One timed command: wall seconds, peak RSS (KB), CPU seconds (user + system, the
    process and the children it waited for: less swayed by a busy machine than wall
    time), --json output if any."""

    seconds: float
    peak_kb: int
    cpu: float = 0.0
    out: dict[str, Any] = field(default_factory=dict)


def as_postgres(argv: list[str], *, cwd: Path, env: dict[str, str], json_out: bool = False) -> Run:
    """Run one command as postgres, timed; its peak RSS from wait4 (the process and the
    children it waited for). Exits the benchmark with its stderr if it fails."""
    pw = pwd.getpwnam("postgres")
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen([*argv, *(["--json"] if json_out else [])], cwd=cwd, env=env,
                                user=pw.pw_uid, group=pw.pw_gid, extra_groups=[], stdout=out,
                                stderr=err)  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            tail = err.read().decode(errors="replace").strip()[-600:]
            raise SystemExit(f"{' '.join(argv[:4])} ... failed ({proc.returncode}): {tail}")
        parsed = json.loads(out.read() or b"{}") if json_out else {}
    cpu = usage.ru_utime + usage.ru_stime
    return Run(seconds, usage.ru_maxrss, cpu, parsed if isinstance(parsed, dict) else {})


def sql(cluster: PgCluster, db: str, *statements: str) -> None:
    """Each statement on its own (autocommit: VACUUM cannot run in a transaction)."""
    with cluster.connect(db) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]


def load(cluster: PgCluster, rows: int) -> None:
    """The platform-shaped data (see the module's docstring); deterministic (setseed)."""
    for db in TABLES:
        cluster.createdb(db)
    old_rows = int(rows * (1 - CURRENT_SHARE)) // (MONTHS - 1) * (MONTHS - 1)
    per_month = old_rows // (MONTHS - 1)
    current = rows - old_rows
    parts = [
        f"CREATE TABLE usage_events_2026m{m:02d} PARTITION OF usage_events FOR VALUES FROM "
        f"('2026-{m:02d}-01 00:00+00') TO ('{2026 + m // 12}-{m % 12 + 1:02d}-01 00:00+00')"
        for m in range(1, MONTHS + 1)
    ]
    # Old months: per_month rows each, spread over the month; the current month: `current`
    # rows over its first 20 days (the days of the benchmark append after them).
    event = (
        "SELECT g, (random() * 50000)::int, (ARRAY['api_call','login','search','export',"
        "'analysis_viewed','alert_triggered'])[1 + (random() * 5)::int], "
        "substr(md5(g::text), 1, 16), jsonb_build_object('ms', (random() * 900)::int, "
        "'path', '/v1/' || substr(md5((g * 7)::text), 1, 24), 'ok', random() > 0.05), "
        "{at} FROM generate_series({first}, {last}) g"
    )
    old_at = (
        f"make_timestamptz(2026, (1 + (g - 1) / {per_month})::int, 1, 0, 0, 0, 'UTC') + "
        f"(((g - 1) % {per_month})::float8 / {per_month}) * interval '28 days'"
    )
    cur_at = (
        f"timestamptz '2026-12-01 00:00+00' + ((g - {old_rows + 1})::float8 / {current}) * "
        "interval '20 days'"
    )
    sql(
        cluster, "supabase",
        "SELECT setseed(0.22)",
        "CREATE TABLE usage_events (id bigint NOT NULL, user_id int NOT NULL, event_type text "
        "NOT NULL, resource_id text, metadata jsonb, created_at timestamptz NOT NULL) "
        "PARTITION BY RANGE (created_at)",
        *parts,
        "INSERT INTO usage_events " + event.format(at=old_at, first=1, last=old_rows),
        "INSERT INTO usage_events " + event.format(at=cur_at, first=old_rows + 1, last=rows),
        "ALTER TABLE usage_events ADD PRIMARY KEY (id, created_at)",
        "CREATE INDEX ON usage_events (user_id)",
        "CREATE INDEX ON usage_events (created_at)",
        "CREATE TABLE user_profiles AS SELECT g AS id, (ARRAY['free','pro','team'])"
        "[1 + (random() * 2)::int] AS tier, jsonb_build_object('theme', md5(g::text)) AS "
        "settings, now() AS updated_at FROM generate_series(1, 50000) g",
        "ALTER TABLE user_profiles ADD PRIMARY KEY (id)",
        "CREATE TABLE api_sessions AS SELECT g AS id, (random() * 50000)::int AS user_id, "
        "md5(g::text) || md5((g + 1)::text) AS token, now() AS started_at, "
        "repeat(md5((g * 3)::text), 5) AS data FROM generate_series(1, "
        f"{max(rows // 6, 1000)}) g",
        "ALTER TABLE api_sessions ADD PRIMARY KEY (id)",
        "CREATE TABLE rate_limits AS SELECT g AS id, (random() * 50000)::int AS user_id, "
        "(random() * 100)::int AS count, now() AS window_start, now() + interval '1 hour' "
        f"AS window_end FROM generate_series(1, {max(rows // 8, 1000)}) g",
        "ALTER TABLE rate_limits ADD PRIMARY KEY (id)",
    )  # fmt: skip
    sql(
        cluster, "microservices",
        "SELECT setseed(0.23)",
        "CREATE TABLE price_history AS SELECT g AS id, g % 500 AS project_id, "
        "timestamptz '2026-01-01 00:00+00' + g * interval '10 seconds' AS ts, "
        "(random() * 1000)::numeric(18, 8) AS price, (random() * 1e6)::numeric(24, 2) AS "
        f"volume FROM generate_series(1, {max(rows // 4, 1000)}) g",
        "ALTER TABLE price_history ADD PRIMARY KEY (id)",
    )  # fmt: skip
    for db in ("supabase", "microservices", "postgres"):
        sql(cluster, db, "VACUUM (FREEZE, ANALYZE)")
    sql(cluster, "postgres", "CHECKPOINT")


def a_day(cluster: PgCluster, day: int, rows: int, updates: int, months: int) -> None:
    """One day of the platform's writes (see the module's docstring); the old-month
    updates fall in `months` of the 11 old months, a different few each day."""
    old_rows = int(rows * (1 - CURRENT_SHARE)) // (MONTHS - 1) * (MONTHS - 1)
    per_month = old_rows // (MONTHS - 1)
    touched = sorted({(months * day + k) % (MONTHS - 1) + 1 for k in range(months)})
    months_list = ",".join(map(str, touched))
    appends = rows // 50
    first = rows + (day - 1) * appends + 1
    sql(
        cluster, "supabase",
        f"SELECT setseed({day / 100})",
        "INSERT INTO usage_events SELECT g, (random() * 50000)::int, 'api_call', "
        "substr(md5(g::text), 1, 16), jsonb_build_object('ms', (random() * 900)::int, 'path', "
        "'/v1/' || substr(md5((g * 7)::text), 1, 24), 'ok', true), "
        f"timestamptz '2026-12-21 00:00+00' + interval '{day - 1} hours' + "
        f"((g - {first})::float8 / {appends}) * interval '1 hour' "
        f"FROM generate_series({first}, {first + appends - 1}) g",
        "UPDATE usage_events SET metadata = metadata || jsonb_build_object('corrected', "
        f"{day}) WHERE created_at < '2026-12-01 00:00+00' AND id = ANY(ARRAY(SELECT "
        f"(('{{{months_list}}}'::int[])[1 + floor(random() * {len(touched)})::int] - 1) * "
        f"{per_month} + 1 + floor(random() * {per_month})::bigint "
        f"FROM generate_series(1, {updates})))",
        "UPDATE user_profiles SET tier = 'pro', updated_at = now() WHERE id = ANY(ARRAY("
        "SELECT 1 + (random() * 49999)::int FROM generate_series(1, 500)))",
        "DELETE FROM api_sessions WHERE id > (SELECT max(id) - count(*) / 25 FROM api_sessions)",
        "VACUUM api_sessions",
        "UPDATE rate_limits SET count = count + 1 WHERE random() < 0.2",
        "VACUUM FULL rate_limits",
    )  # fmt: skip
    sql(
        cluster, "microservices",
        f"INSERT INTO price_history SELECT g, g % 500, timestamptz '2026-12-21 00:00+00' + "
        f"g * interval '1 second', (random() * 1000)::numeric(18, 8), "
        f"(random() * 1e6)::numeric(24, 2) FROM generate_series((SELECT max(id) + 1 FROM "
        f"price_history), (SELECT max(id) + {max(rows // 200, 10)} FROM price_history)) g",
    )  # fmt: skip


def fingerprint(port: int) -> dict[str, tuple[int, int]]:
    """Per table: row count and a sum of row hashes (equal data, equal fingerprint)."""
    found: dict[str, tuple[int, int]] = {}
    probe = PgCluster(Path("/nonexistent"), port)
    for db, tables in TABLES.items():
        for table in tables:
            row = probe.execute(
                f"SELECT count(*), coalesce(sum(hashtext(t::text)::bigint), 0) FROM {table} t",
                dbname=db,
            )[0]
            found[f"{db}.{table}"] = (int(row[0]), int(row[1]))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_500_000, help="usage_events rows")
    parser.add_argument("--days", type=int, default=7, help="incrementals in the chain")
    parser.add_argument("--updates", type=int, default=2000,
                        help="old-month rows updated per day")  # fmt: skip
    parser.add_argument("--months-touched", type=int, default=3, choices=range(1, MONTHS),
                        help="old months the day's updates fall in (of 11)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=5, help="restore rounds")
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile'd incr")
    parser.add_argument(
        "--ours-kind",
        default="incr",
        choices=("incr", "base"),
        help="base: nightly full base backups instead (the issue's baseline)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    if not need_root():
        return 2
    if not shutil.which("pgbackrest"):
        print("pgBackRest is not installed (make bench-deps)", file=sys.stderr)
        return 2
    base = scratch_folder("in")
    env = base_env()
    cluster: PgCluster | None = None
    days: list[dict[str, Run]] = []
    bytes_by: list[dict[str, int]] = []
    fulls: dict[str, tuple[Run, int]] = {}
    restores: dict[str, list[float]] = {}
    restore_peak = 0
    restore_phases: dict[str, list[str]] = {}
    extracts: dict[str, list[tuple[float, float]]] = {}  # ours: (extract s, CPU s)
    profile_lines: list[str] = []
    ok = True
    try:
        cluster, repo, pgbr = cluster_with_pgbackrest(base)
        ours_repo = ["--repo", f"file://{repo}", "--dsn", cluster.conninfo("supabase")]
        ours_backup = [str(CLI), "backup", "--kind", args.ours_kind, *ours_repo]
        as_postgres([*pgbr, "stanza-create"], cwd=base, env=env)

        def written() -> dict[str, int]:
            return {OURS: du(repo / "backups") if (repo / "backups").exists() else 0,
                    PGBR: du(base / "pgbr" / "backup")}  # fmt: skip

        print(f"loading {args.rows:,} events (+ other tables) in {base} ...", flush=True)
        started = time.perf_counter()
        load(cluster, args.rows)
        size = sum(int(cluster.scalar(f"SELECT pg_database_size('{db}')")) for db in TABLES)
        cur = int(cluster.scalar("SELECT pg_total_relation_size('usage_events_2026m12')",
                                 dbname="supabase"))  # fmt: skip
        print(f"loaded in {time.perf_counter() - started:.0f} s: {size / 2**20:.0f} MB in the "
              f"two databases, current month {cur / 2**20:.0f} MB with its indexes",
              flush=True)  # fmt: skip

        before = written()
        full_ours = as_postgres(ours_backup, cwd=base, env=env, json_out=True)
        full_pgbr = as_postgres([*pgbr, "--type=full", "backup"], cwd=base, env=env)
        after = written()
        fulls = {OURS: (full_ours, after[OURS] - before[OURS]),
                 PGBR: (full_pgbr, after[PGBR] - before[PGBR])}  # fmt: skip
        print(f"full: {OURS} {full_ours.seconds:.1f} s {fulls[OURS][1] / 2**20:.1f} MB "
              f"(kind {full_ours.out.get('kind')}), {PGBR} {full_pgbr.seconds:.1f} s "
              f"{fulls[PGBR][1] / 2**20:.1f} MB", flush=True)  # fmt: skip

        chain_end = ""
        for day in range(1, args.days + 1):
            a_day(cluster, day, args.rows, args.updates, args.months_touched)
            order = [OURS, PGBR] if day % 2 else [PGBR, OURS]
            runs: dict[str, Run] = {}
            wrote: dict[str, int] = {}
            for tool in order:
                before = written()
                if tool == OURS:
                    runs[tool] = as_postgres(ours_backup, cwd=base, env=env, json_out=True)
                    chain_end = str(runs[tool].out.get("id", ""))
                else:
                    runs[tool] = as_postgres([*pgbr, "--type=incr", "backup"], cwd=base, env=env)
                wrote[tool] = written()[tool] - before[tool]
            days.append(runs)
            bytes_by.append(wrote)
            print(f"  day {day}: " + ", ".join(
                f"{t} {runs[t].seconds:.1f} s (CPU {runs[t].cpu:.1f} s) {wrote[t] / 2**20:.2f} "
                f"MB {runs[t].peak_kb / 1024:.0f} MB peak" for t in (OURS, PGBR)
            ) + f" (ours: kind {runs[OURS].out.get('kind')})", flush=True)  # fmt: skip

        # A full of the same data (no writes since the chain's end) and the restores.
        tar_full = as_postgres([str(CLI), "backup", "--kind", "base", *ours_repo], cwd=base,
                               env=env, json_out=True)  # fmt: skip
        full_id = str(tar_full.out.get("id", ""))
        raw = [int(full_ours.out.get("raw_bytes", 0)),
               sum(int(d[OURS].out.get("raw_bytes", 0)) for d in days)]  # fmt: skip
        print(f"the chain's objects hold {(raw[0] + raw[1]) / 2**20:.0f} MB raw (its full "
              f"{raw[0] / 2**20:.0f} MB, the {len(days)} incrementals {raw[1] / 2**20:.0f} MB); "
              f"the tar full {int(tar_full.out.get('raw_bytes', 0)) / 2**20:.0f} MB",
              flush=True)  # fmt: skip
        pgbr_set = _pgbr_latest_set(pgbr, base, env)
        source = fingerprint(cluster.port)
        sources = {"chain end": chain_end, "full": full_id, "pgBackRest chain": pgbr_set}
        for n in range(args.rounds):
            order = list(sources) if n % 2 == 0 else list(reversed(sources))
            for label in order:
                pgdata = base / f"restore-{n}-{label.replace(' ', '-')}"
                port = free_port()
                if label == "pgBackRest chain":
                    make_shared_dir(pgdata)
                    t0 = time.perf_counter()
                    as_postgres([*pgbr, f"--pg1-path={pgdata}", f"--set={pgbr_set}",
                                 "--type=default", "restore"], cwd=base, env=env)  # fmt: skip
                    PgCluster(pgdata, port, log_path=pgdata / "log").start(
                        wait=False, options="-c archive_mode=off")  # fmt: skip
                    wait_promoted(port)
                    took = time.perf_counter() - t0
                    phase = ""
                else:
                    t0 = time.perf_counter()
                    run = as_postgres([str(CLI), "restore", "--repo", f"file://{repo}",
                                       "--backup", sources[label], "--latest", "--pgdata",
                                       str(pgdata), "--start", "--port", str(port)],
                                      cwd=base, env=env, json_out=True)  # fmt: skip
                    wait_promoted(port)
                    took = time.perf_counter() - t0
                    restore_peak = max(restore_peak, run.peak_kb)
                    start_s = float(run.out.get("started", {}).get("seconds", 0.0))
                    extract = float(run.out.get("seconds", 0.0)) - start_s
                    extracts.setdefault(label, []).append((extract, run.cpu))
                    wrote_mb = int(run.out.get("extracted_bytes", 0)) / 2**20
                    phase = (f" (extract {extract:.2f} s, {wrote_mb:.0f} MB written, start and "
                             f"recovery {start_s:.2f} s; CPU {run.cpu:.2f} s, peak "
                             f"{run.peak_kb / 1024:.0f} MB)")  # fmt: skip
                restores.setdefault(label, []).append(took)
                restore_phases.setdefault(label, []).append(phase)
                got = fingerprint(port)
                PgCluster(pgdata, port).stop("immediate")
                shutil.rmtree(pgdata, ignore_errors=True)
                if got != source:
                    bad = sorted(k for k in source if got.get(k) != source[k])
                    print(f"  {label}: restored rows differ from the source in {bad}",
                          file=sys.stderr)  # fmt: skip
                    ok = False
                print(f"  round {n + 1}: restore from {label} {took:.2f} s{phase}", flush=True)

        if not args.no_profile:
            prof = base / "restore.prof"
            pgdata = base / "restore-profiled"
            t0 = time.perf_counter()
            serial = {**env, "SERIAL": "1"}
            as_postgres(profiled_cli(prof, ["restore", "--repo", f"file://{repo}", "--backup",
                                            chain_end, "--latest", "--pgdata", str(pgdata),
                                            "--quiet"]), cwd=base, env=serial)  # fmt: skip
            profile_lines += [f"\nthe restore from the chain's end, extraction only (no start), "
                              f"its bundles read one at a time: {time.perf_counter() - t0:.2f} s",
                              *profile_top(prof)]  # fmt: skip
            shutil.rmtree(pgdata, ignore_errors=True)
            a_day(cluster, args.days + 1, args.rows, args.updates, args.months_touched)
            prof = base / "incr.prof"
            t0 = time.perf_counter()
            as_postgres(profiled_cli(prof, [*ours_backup[1:], "--quiet"]), cwd=base, env=env)
            profile_lines += [f"\none more day's backup --kind incr: "
                              f"{time.perf_counter() - t0:.2f} s", *profile_top(prof)]  # fmt: skip
    finally:
        if cluster is not None:
            cluster.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    ok = _report(args, fulls, days, bytes_by, restores, restore_peak) and ok
    cpu = {label: statistics.median(p[1] for p in pairs) for label, pairs in extracts.items()}
    for label, pairs in extracts.items():
        print(f"restore from {label}: extraction median "
              f"{statistics.median(p[0] for p in pairs):.2f} s, the command's CPU median "
              f"{cpu[label]:.2f} s")  # fmt: skip
    if cpu.get("full"):
        print(f"CPU of the restore command, chain end / full: "
              f"{cpu.get('chain end', 0.0) / cpu['full']:.2f}x")  # fmt: skip
    if profile_lines:
        print("\nwhere our time goes (cProfile: the main thread only; not in the ratios above)")
        print("\n".join(profile_lines))
    return 0 if ok else 1


def _pgbr_latest_set(pgbr: list[str], base: Path, env: dict[str, str]) -> str:
    pw = pwd.getpwnam("postgres")
    proc = subprocess.run([*pgbr, "--output=json", "info"], cwd=base, env=env, user=pw.pw_uid,
                          group=pw.pw_gid, extra_groups=[], capture_output=True, text=True,
                          check=True)  # fmt: skip
    return str(json.loads(proc.stdout)[0]["backup"][-1]["label"])


# `python -c PROFILED PROF ARGS...`: the CLI under cProfile, keeping its exit code
# (`python -m cProfile` exits 0 whatever the command did). cProfile sees the main thread
# only, so with SERIAL=1 in the environment a files-layout restore reads its bundles one
# after the other in the main thread instead of in restore.assemble's thread pool.
PROFILED = (
    "import cProfile, os, sys\n"
    "from concurrent.futures import Future\n"
    "from chainlens_ops.entry import main\n"
    "class Serial:\n"
    "    def __init__(self, max_workers=0): pass\n"
    "    def __enter__(self): return self\n"
    "    def __exit__(self, *exc): return False\n"
    "    def submit(self, fn, *args):\n"
    "        done = Future()\n"
    "        try:\n            done.set_result(fn(*args))\n"
    "        except BaseException as exc:\n            done.set_exception(exc)\n"
    "        return done\n"
    "if os.environ.get('SERIAL'):\n"
    "    import chainlens_ops.restore.assemble as assemble\n"
    "    assemble.ThreadPoolExecutor = Serial\n"
    "out, sys.argv = sys.argv[1], ['chainlens-ops', *sys.argv[2:]]\n"
    "prof = cProfile.Profile()\n"
    "try:\n    prof.runcall(main)\nfinally:\n    prof.dump_stats(out)\n"
)


def profiled_cli(prof: Path, args: list[str]) -> list[str]:
    """argv running the CLI with `args` under cProfile into `prof`."""
    return [str(VENV / "bin" / "python"), "-c", PROFILED, str(prof), *args]


def profile_top(prof: Path, n: int = 20) -> list[str]:
    """The profile's top functions by own time, then chainlens_ops's by cumulative time."""
    import io

    lines: list[str] = []
    views = (
        ("tottime", (), "by own time"),
        ("cumulative", ("chainlens_ops/",), "ours, cumulative"),
    )
    for order, restrict, title in views:
        buf = io.StringIO()
        stats = pstats.Stats(str(prof), stream=buf)
        stats.sort_stats(order).print_stats(*restrict, n)
        if not lines:
            lines.append(f"  total {getattr(stats, 'total_tt', 0.0):.2f} s under the profiler")
        lines.append(f"  -- {title}")
        keep = False
        for line in buf.getvalue().splitlines():
            keep = keep or line.strip().startswith("ncalls")
            if keep and line.strip():
                cut = line.find("/chainlens_ops/")
                tail = line[cut + 1 :] if cut >= 0 else line
                if cut >= 0:
                    tail = line[: line.rfind(" ", 0, cut) + 1] + tail
                lines.append("  " + tail.replace(str(Path(sys.prefix)), "")[:140])
    return lines


def _report(
    args: argparse.Namespace,
    fulls: dict[str, tuple[Run, int]],
    days: list[dict[str, Run]],
    bytes_by: list[dict[str, int]],
    restores: dict[str, list[float]],
    restore_peak: int,
) -> bool:
    if not days:
        return False
    mb = 2**20
    ok = True
    print(f"\n{'backup':22} {'tool':14} {'seconds':>8} {'CPU s':>6} {'MB written':>11} "
          f"{'peak MB':>8}  ratio to pgBackRest")  # fmt: skip
    for tool in (PGBR, OURS):
        run, size = fulls[tool]
        ratio = "anchor" if tool == PGBR else (
            f"time {run.seconds / fulls[PGBR][0].seconds:.2f}x, bytes "
            f"{size / max(fulls[PGBR][1], 1):.2f}x")  # fmt: skip
        print(f"{'full':22} {tool:14} {run.seconds:8.1f} {run.cpu:6.1f} {size / mb:11.2f} "
              f"{run.peak_kb / 1024:8.0f}  {ratio}")  # fmt: skip
    rows = [("incr, day 1", [0])]
    if len(days) > 1:
        rows.append((f"incr, days 1-{len(days)}", list(range(len(days)))))
    for label, idx in rows:
        secs = {t: sum(days[i][t].seconds for i in idx) for t in (OURS, PGBR)}
        cpu = {t: sum(days[i][t].cpu for i in idx) for t in (OURS, PGBR)}
        size = {t: sum(bytes_by[i][t] for i in idx) for t in (OURS, PGBR)}
        peak = {t: max(days[i][t].peak_kb for i in idx) for t in (OURS, PGBR)}
        t_ratio = secs[OURS] / secs[PGBR]
        b_ratio = size[OURS] / max(size[PGBR], 1)
        for tool in (PGBR, OURS):
            ratio = "anchor" if tool == PGBR else f"time {t_ratio:.2f}x, bytes {b_ratio:.2f}x"
            print(f"{label:22} {tool:14} {secs[tool]:8.1f} {cpu[tool]:6.1f} "
                  f"{size[tool] / mb:11.2f} {peak[tool] / 1024:8.0f}  {ratio}")  # fmt: skip
        ok = ok and t_ratio <= 1.0 and b_ratio <= 0.5
    per_day = [bytes_by[i][OURS] / max(bytes_by[i][PGBR], 1) for i in range(len(days))]
    print("bytes ratio per day: " + ", ".join(f"{r:.2f}x" for r in per_day))
    per_day_t = [days[i][OURS].seconds / days[i][PGBR].seconds for i in range(len(days))]
    print("time ratio per day: " + ", ".join(f"{r:.2f}x" for r in per_day_t))
    ours_peak = max(max(d[OURS].peak_kb for d in days), fulls[OURS][0].peak_kb, restore_peak)
    if restores:
        anchor = print_medians(
            "restore to promoted", restores, "full", width=22,
            anchor_says="anchor (ours, kind base)", ratio_says="x", label=lambda n: "from " + n,
        )  # fmt: skip
        chain_ratio = statistics.median(restores["chain end"]) / anchor
        ok = ok and chain_ratio <= 1.2
    print(f"\npeak RSS of our backups and restores: {ours_peak / 1024:.0f} MB (target < 200 MB)")
    ok = ok and ours_peak < 200 * 1024
    print(f"targets (issue 22): incr bytes <= 0.5x and time <= 1.0x pgBackRest --type=incr; "
          f"restore from the end of a chain of {len(days)} <= 1.2x a full's; peak < 200 MB: "
          f"{'met' if ok else 'MISSED'}")  # fmt: skip
    return ok


if __name__ == "__main__":
    sys.exit(main())
