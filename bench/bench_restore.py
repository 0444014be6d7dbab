"""Point-in-time restore speed: chainlens-ops against pgBackRest, to a promoted server.

    /opt/chainlens-ops/venv/bin/python bench/bench_restore.py [--scale 20] [--rounds 2] [--keep]

One cluster (archive_mode on; archive_command pushes every segment to the chainlens-ops
repository AND pgBackRest's), pgbench data at --scale (20 is about 320 MB), one base
backup by each tool, then writes, a time T, more writes and a WAL switch. Each round
restores to T with each tool (the order alternates between rounds), timed from the
command to a promoted server that answers queries:

  pgBackRest     restore --type=time --target=T --target-action=promote,
                 then pg_ctl start and a poll until pg_is_in_recovery() is false
  chainlens-ops  restore --target-time T --start (it starts the server and waits itself)

Both restored servers must hold the same rows (pgbench_history count), or the run fails.
The restored copies run with archive_mode off, so they never push into the repositories.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))
sys.path.insert(0, str(HERE))

import psycopg  # noqa: E402
from bench_backup import cluster_with_pgbackrest  # noqa: E402
from bench_wal import (  # noqa: E402
    base_env,
    need_root,
    print_medians,
    run_as_postgres,
    scratch_folder,
)
from pgharness import CLI, PG_BIN, PgCluster, free_port, make_shared_dir  # noqa: E402
from test_wal import switch_and_wait  # noqa: E402


def run(argv: list[str], *, cwd: Path, env: dict[str, str]) -> None:
    code, _, err = run_as_postgres(argv, cwd=cwd, env=env)
    if code != 0:
        raise SystemExit(f"{' '.join(argv[:3])} ... failed ({code}): {err.strip()[-400:]}")


def wait_promoted(port: int, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(host="127.0.0.1", port=port, user="postgres",
                                 dbname="postgres", connect_timeout=2) as conn:  # fmt: skip
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                if row is not None and not row[0]:
                    return
        except psycopg.OperationalError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"the server on port {port} was not promoted within {timeout:.0f} s")


def history_rows(port: int) -> int:
    with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres") as c:
        row = c.execute("SELECT count(*) FROM pgbench_history").fetchone()
        return int(row[0]) if row else -1


def server_start(log: Path) -> float:
    """When the server in `log` began to start (epoch seconds), from its first line."""
    from datetime import datetime

    for line in log.read_text(errors="replace").splitlines():
        if "starting PostgreSQL" in line:
            stamp = " ".join(line.split()[:3]).replace(" UTC", "+00:00")
            return datetime.fromisoformat(stamp).timestamp()
    raise SystemExit(f"{log}: no 'starting PostgreSQL' line")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=int, default=20, help="pgbench scale (20: ~320 MB)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    if not need_root():
        return 2
    if not shutil.which("pgbackrest"):
        print("pgBackRest is not installed (scripts/install-system-deps.sh --bench)",
              file=sys.stderr)  # fmt: skip
        return 2
    base = scratch_folder("rs")
    env = base_env()
    cluster: PgCluster | None = None
    times: dict[str, list[float]] = {"pgBackRest": [], "chainlens-ops": []}
    rows: dict[str, int] = {}
    phases: dict[str, list[float]] = {"pgBackRest": [], "chainlens-ops": []}  # to the start
    try:
        cluster, repo, pgbr = cluster_with_pgbackrest(base)
        run([*pgbr, "stanza-create"], cwd=base, env=env)
        pgbench = [str(PG_BIN / "pgbench"), "-h", "127.0.0.1", "-p", str(cluster.port),
                   "-U", "postgres"]  # fmt: skip
        print(f"pgbench -i -s {args.scale} in {base} ...", flush=True)
        run([*pgbench, "-i", "-q", "-s", str(args.scale)], cwd=base, env=env)
        size = int(cluster.scalar("SELECT pg_database_size('postgres')"))
        print(f"cluster: {size / 2**20:.0f} MB; base backups ...", flush=True)
        run([*pgbr, "--type=full", "backup"], cwd=base, env=env)
        run([str(CLI), "backup", "--kind", "base", "--quiet", "--repo", f"file://{repo}",
             "--dsn", cluster.conninfo()], cwd=base, env=env)  # fmt: skip
        # WAL to replay: writes before and after T (about 20 segments in all).
        run([*pgbench, "-n", "-c", "2", "-t", "15000"], cwd=base, env=env)
        target = str(cluster.scalar("SELECT now()::text"))
        time.sleep(0.5)
        run([*pgbench, "-n", "-c", "2", "-t", "3000"], cwd=base, env=env)
        switch_and_wait(cluster, timeout=120)
        wal = int(cluster.scalar("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))
        print(f"target {target}; WAL written {wal / 2**20:.0f} MB", flush=True)

        for n in range(args.rounds):
            order = ["pgBackRest", "chainlens-ops"]
            if n % 2:
                order.reverse()
            for tool in order:
                pgdata = base / f"restore-{tool}-{n}"
                port = free_port()
                make_shared_dir(pgdata.parent)
                started = time.perf_counter()
                wall = time.time()
                if tool == "pgBackRest":
                    run([*pgbr, f"--pg1-path={pgdata}", "--type=time", f"--target={target}",
                         "--target-action=promote", "restore"], cwd=base, env=env)  # fmt: skip
                    PgCluster(pgdata, port, log_path=pgdata / "log").start(
                        wait=False, options="-c archive_mode=off")  # fmt: skip
                    wait_promoted(port)
                    phases[tool].append(server_start(pgdata / "log") - wall)
                else:
                    run([str(CLI), "restore", "--repo", f"file://{repo}", "--target-time",
                         target, "--pgdata", str(pgdata), "--start", "--port", str(port)],
                        cwd=base, env=env)  # fmt: skip
                    wait_promoted(port)
                    phases[tool].append(server_start(pgdata / "chainlens-restore.log") - wall)
                times[tool].append(time.perf_counter() - started)
                rows.setdefault(tool, history_rows(port))
                PgCluster(pgdata, port).stop("immediate")
                shutil.rmtree(pgdata, ignore_errors=True)
                print(
                    f"  round {n + 1}: {tool} {times[tool][-1]:.2f} s (restore "
                    f"{phases[tool][-1]:.2f} s, start and recovery "
                    f"{times[tool][-1] - phases[tool][-1]:.2f} s)",
                    flush=True,
                )
    finally:
        if cluster is not None:
            cluster.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    if rows.get("pgBackRest") != rows.get("chainlens-ops"):
        print(f"restored rows differ: {rows}", file=sys.stderr)
        return 1
    print_medians("tool", times, "pgBackRest", width=16,
                  ratio_title=f"ratio (rows at T: {rows['pgBackRest']:,})")  # fmt: skip
    print("target: chainlens-ops no slower than pgBackRest restore --type=time + recovery")
    return 0


if __name__ == "__main__":
    sys.exit(main())
