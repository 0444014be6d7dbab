"""What client-side encryption costs: the same work into a plain and an encrypted
repository, side by side in one run.

    /opt/chainlens-ops/venv/bin/python bench/bench_encryption.py [--segments 32] [--rounds 2]

Makes its own cluster with 16 MB segments (bench_wal's), then, as the postgres OS user:

    wal push    every segment once into each repository, one process per segment (as
                PostgreSQL's archiver runs it), interleaved segment by segment with the
                first repository rotating, so neither meets a disk or cache the other
                warmed; the same for `wal fetch`
    backup      a logical backup of the pgbench database into each, alternating, `--rounds`
                times; then a logical restore of each into a new database

The goal (issue #20): encrypted at most 1.1x the plain time for each row. The floor
row is what encrypting adds to a push or fetch that no code of ours can remove: loading
OpenSSL's libcrypto with its first cipher (repository/aead.py), and AES-256-GCM over the
segment's object (measured in fresh processes as postgres; a push overlaps part of it
with compressing).
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))

from bench_wal import base_env, make_cluster, need_root, run_as_postgres, scratch_folder
from pgharness import CLI, PgCluster, make_shared_dir

GOAL = 1.1
FLOOR = """
import statistics, sys, time
import chainlens_ops.repository.crypto as crypto  # on the push path already
started = time.perf_counter()
aead = crypto.aesgcm(bytes(32))
loaded = time.perf_counter()
size = int(sys.argv[1])
sealing = time.perf_counter()
chunk = bytearray(12 + size + 16)  # as the codec seals: in place, in a buffer of its own
aead.seal_in_place(bytes(12), chunk, size, b"")
print(loaded - started, time.perf_counter() - sealing)
"""


def floor_ms(object_bytes: int, *, cwd: Path, runs: int = 15) -> tuple[float, float]:
    """(cipher load + first use, AES over `object_bytes`) in ms, medians of fresh processes."""
    import statistics

    loads, seals = [], []
    for _ in range(runs):
        proc = subprocess.run(
            ["runuser", "-u", "postgres", "--", str(CLI.parent / "python"), "-c", FLOOR,
             str(object_bytes)], cwd=cwd, capture_output=True, text=True, check=True,
        )  # fmt: skip
        load, seal = map(float, proc.stdout.split())
        loads.append(load * 1000)
        seals.append(seal * 1000)
    return statistics.median(loads), statistics.median(seals)


def side_by_side(
    argv_for: tuple[Callable[[str], list[str]], Callable[[str], list[str]]],
    names: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
) -> tuple[float, float, float, float]:
    """One process per segment for each of (plain, encrypted), the first rotating; the
    medians per segment: (plain wall s, encrypted wall s, plain CPU s, encrypted CPU s). CPU time
    (user + system, its threads included) is what a busy machine pays; wall time what a
    quiet one waits."""
    import statistics

    pw = pwd.getpwnam("postgres")
    wall: tuple[list[float], list[float]] = ([], [])
    cpu: tuple[list[float], list[float]] = ([], [])
    for i, name in enumerate(names):
        for side in (0, 1) if i % 2 == 0 else (1, 0):
            started = time.perf_counter()
            proc = subprocess.Popen(
                argv_for[side](name), cwd=cwd, env=env, user=pw.pw_uid, group=pw.pw_gid,
                extra_groups=[], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            _, status, usage = os.wait4(proc.pid, 0)
            wall[side].append(time.perf_counter() - started)
            cpu[side].append(usage.ru_utime + usage.ru_stime)
            stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            if proc.stderr:
                proc.stderr.close()
            if os.waitstatus_to_exitcode(status) != 0:
                raise RuntimeError(f"{' '.join(argv_for[side](name)[1:4])} failed: {stderr}")
    m = statistics.median  # a shared machine's outliers skew means, not medians
    return m(wall[0]), m(wall[1]), m(cpu[0]), m(cpu[1])


def timed(argv: list[str], *, cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    code, _, stderr = run_as_postgres(argv, cwd=cwd, env=env)
    elapsed = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"{' '.join(argv[:4])}... exited {code}: {stderr.strip()[-300:]}")
    return elapsed, stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--segments", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--wal-only", action="store_true", help="skip backup and restore")
    args = parser.parse_args()
    if not need_root():
        return 2
    base = scratch_folder("enc")
    made: list[PgCluster] = []
    results: list[tuple[str, float, float, float, float]] = []  # walls, then CPU times
    floor = (0.0, 0.0)
    try:
        print(f"generating {args.segments}+ WAL segments of 16 MB with pgbench in {base} ...")
        cluster, _ = make_cluster(base, args.segments, made)
        names = sorted(p.name for p in (cluster.data / "pg_wal").glob("0*") if len(p.name) == 24)
        names = names[: args.segments]
        src = make_shared_dir(base / "src" / "data", mode=0o700)
        pg_wal = make_shared_dir(src / "pg_wal", mode=0o700)
        for name in names:
            shutil.copy2(cluster.data / "pg_wal" / name, pg_wal / name)
        subprocess.run(["chown", "-R", "postgres:postgres", str(base / "src")], check=True)

        env = base_env()
        keys = make_shared_dir(base / "keys", mode=0o700)
        key = keys / "repo.key"
        plain, sealed = f"file://{base}/plain", f"file://{base}/sealed"
        timed([str(CLI), "repo", "init", "--repo", plain], cwd=base, env=env)
        timed([str(CLI), "repo", "init", "--repo", sealed, "--encrypt", "--key-file", str(key)],
              cwd=base, env=env)  # fmt: skip
        env_key = {**env, "CHAINLENS_REPO_KEY_FILE": str(key)}

        cli = str(CLI)
        push = (lambda n: [cli, "wal", "push", "--repo", plain, f"pg_wal/{n}"],
                lambda n: [cli, "wal", "push", "--repo", sealed, f"pg_wal/{n}"])  # fmt: skip
        results.append(("wal push", *side_by_side(push, names, cwd=src, env=env_key)))
        dest = make_shared_dir(base / "fetched", mode=0o700)
        fetch = (lambda n: [cli, "wal", "fetch", "--repo", plain, n, f"{dest}/p-{n}"],
                 lambda n: [cli, "wal", "fetch", "--repo", sealed, n, f"{dest}/e-{n}"])  # fmt: skip
        results.append(("wal fetch", *side_by_side(fetch, names, cwd=src, env=env_key)))
        for name in names[:4]:  # the two roads give the same bytes
            assert (dest / f"p-{name}").read_bytes() == (dest / f"e-{name}").read_bytes()
        objects = [p.stat().st_size for p in (base / "sealed" / "wal").glob("*/*")]
        floor = floor_ms(sum(objects) // len(objects), cwd=base)

        if args.wal_only:
            args.rounds = 0
        dsn = cluster.conninfo()
        backup_s = {plain: 0.0, sealed: 0.0}
        restore_s = {plain: 0.0, sealed: 0.0}
        ids: dict[str, str] = {}
        for r in range(args.rounds):
            order = [plain, sealed] if r % 2 == 0 else [sealed, plain]
            for repo in order:
                argv = [str(CLI), "backup", "--repo", repo, "--dsn", dsn, "--kind", "logical",
                        "--quiet"]  # fmt: skip
                started = time.perf_counter()
                out = subprocess.run(
                    ["runuser", "-u", "postgres", "--", *argv], env=env_key,
                    capture_output=True, text=True, check=False, cwd=base,
                )  # fmt: skip
                backup_s[repo] += time.perf_counter() - started
                if out.returncode != 0:
                    raise RuntimeError(out.stderr[-300:])
                ids[repo] = out.stdout.strip()
            for repo in order:
                db = f"copy_{r}_{'p' if repo == plain else 'e'}"
                elapsed, _ = timed(
                    [str(CLI), "restore", "--repo", repo, "--backup", ids[repo], "--dbname", db,
                     "--dsn", dsn], cwd=base, env=env_key,
                )  # fmt: skip
                restore_s[repo] += elapsed
        if args.rounds:
            results.append(("logical backup", backup_s[plain] / args.rounds,
                            backup_s[sealed] / args.rounds, 0.0, 0.0))  # fmt: skip
            results.append(("logical restore", restore_s[plain] / args.rounds,
                            restore_s[sealed] / args.rounds, 0.0, 0.0))  # fmt: skip
    finally:
        for c in made:
            c.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    print(f"\n{'operation':<18} {'plain s':>9} {'encrypted s':>12} {'ratio':>6}  goal <= {GOAL}x")
    worst = 0.0
    for what, p, e, p_cpu, e_cpu in results:
        ratio = e / p if p else 0.0
        worst = max(worst, ratio)
        unit = " (per segment)" if what.startswith("wal") else ""
        cpu = (
            f"; CPU {p_cpu * 1000:.1f} / {e_cpu * 1000:.1f} ms, {e_cpu / p_cpu:.2f}x"
            if p_cpu
            else ""
        )
        print(f"{what:<18} {p:>9.3f} {e:>12.3f} {ratio:>5.2f}x{unit}{cpu}")
    if results:
        load, seal = floor
        for what, p, *_ in results[:2]:
            least = p + (load + seal) / 1000
            print(f"{what + ' floor':<18} {p:>9.3f} {least:>12.3f} {least / p:>5.2f}x  "
                  f"cipher load {load:.1f} ms, AES {seal:.1f} ms")  # fmt: skip
    print(f"\n{args.segments} segments of 16 MB, {args.rounds} rounds of backup and restore")
    return 0 if worst <= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
