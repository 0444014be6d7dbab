"""Peak memory of backups of a database whose dump is over 500 MB, beside pg_dump and
pg_basebackup.

    /opt/chainlens-ops/venv/bin/python bench/bench_backup_memory.py [--rows 3500000] [--keep]

Makes its own cluster (pgbench scale 8, plus an `events` table of random UUIDs, JSONB
with random numbers and hex strings, and timestamps: ~560 MB as `pg_dump -Fc -Z0`), then
runs, as the postgres OS user:

    chainlens-ops backup --kind logical   into a local repository, and into S3 (moto)
    pg_dump -Fc -Z9 > file                the seed's command (anchor)
    pg_dump -Fc > file                    pg_dump's default compression
    chainlens-ops backup --kind base      local repository (the cluster then archives
                                          into it), beside pg_basebackup -Ft -z -X none

Peak RSS is the largest resident set of any process of the run (Linux's wait4 reports
the maximum over the process and the children it waited for: chainlens-ops and its
pg_dump). The claim it checks: memory does not grow with the database (the issue's
bound is 200 MB to S3). The full speed/size comparison on the seeded ChainLens dataset
is bench/bench_backup.py's.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))

from bench_wal import (
    _wait_http,
    base_env,
    make_cluster,
    need_root,
    run_as_postgres,
    scratch_folder,
)
from pgharness import CLI, PG_BIN, VENV, PgCluster, free_port, make_shared_dir

MB = 1024 * 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=3_500_000)
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    if not need_root():
        return 2
    base = scratch_folder("mem")
    made: list[PgCluster] = []
    moto: subprocess.Popen[bytes] | None = None
    rows: list[tuple[str, float, int, int, str]] = []
    try:
        cluster, _sock = make_cluster(make_shared_dir(base / "cluster"), 0, made)
        cluster.execute(
            "CREATE TABLE events AS SELECT g AS id, gen_random_uuid() AS user_id, "
            "(random() * 11)::int AS event_type, jsonb_build_object('n', random(), "
            "'h', substr(md5(random()::text), 1, 16), 'c', (random() * 1e6)::int) AS metadata, "
            f"now() - random() * interval '180 days' AS at FROM generate_series(1, {args.rows}) g"
        )
        dsn = cluster.conninfo()
        env = base_env()
        work = make_shared_dir(base / "out")

        def measure(label: str, argv: list[str], run_env: dict[str, str], size_of: object) -> None:
            started = time.perf_counter()
            code, peak_kb, stderr = run_as_postgres(argv, cwd=work, env=run_env)
            seconds = time.perf_counter() - started
            note = "" if code == 0 else f"failed: {stderr.strip()[-200:]}"
            rows.append((label, seconds, peak_kb // 1024, size_of() if code == 0 else 0, note))  # type: ignore[operator]

        raw = work / "raw.pgc"
        measure("pg_dump -Fc -Z0 (size of the raw dump)",
                ["sh", "-c", f'{PG_BIN}/pg_dump -Fc -Z0 -d "{dsn}" > {raw}'], env,
                lambda: raw.stat().st_size)  # fmt: skip
        repo = make_shared_dir(base / "repo")
        measure("chainlens-ops backup, local",
                [str(CLI), "backup", "--kind", "logical", "--quiet", "--repo", f"file://{repo}",
                 "--dsn", dsn], env, lambda: _tree_size(repo / "backups"))  # fmt: skip

        port = free_port()
        moto = subprocess.Popen(
            [str(VENV / "bin" / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        endpoint = f"http://127.0.0.1:{port}"
        _wait_http(endpoint)
        import boto3

        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="bench",
                     aws_secret_access_key="bench", region_name="us-east-1",
                     ).create_bucket(Bucket="bench")  # fmt: skip
        s3_env = {**env, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                  "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}  # fmt: skip
        s3_repo = f"s3://bench/r{time.time_ns()}"
        measure("chainlens-ops backup, S3 (moto)",
                [str(CLI), "backup", "--kind", "logical", "--quiet", "--repo", s3_repo,
                 "--dsn", dsn], s3_env, lambda: _s3_size(endpoint, s3_repo))  # fmt: skip

        for label, level in (("pg_dump -Fc -Z9 (anchor)", "-Z9"), ("pg_dump -Fc", "")):
            out = work / f"dump{level}.pgc"
            measure(label, ["sh", "-c", f'{PG_BIN}/pg_dump -Fc {level} -d "{dsn}" > {out}'],
                    env, lambda out=out: out.stat().st_size)  # type: ignore[misc]  # fmt: skip

        # Base backups: the cluster archives into the local repository.
        cluster.configure(archive_mode="on",
                          archive_command=f"{CLI} wal push --repo file://{repo} %p")  # fmt: skip
        cluster.restart()
        cluster.execute("CREATE TABLE t AS SELECT 1; SELECT pg_switch_wal()")
        time.sleep(3)
        measure("chainlens-ops backup --kind base, local",
                [str(CLI), "backup", "--kind", "base", "--quiet", "--repo", f"file://{repo}",
                 "--dsn", dsn], env,
                lambda: _tree_size(repo / "backups") - rows[1][3])  # fmt: skip
        tar = work / "base.tgz"
        basebackup = f'{PG_BIN}/pg_basebackup -d "{dsn}" -D - -Ft -z -X none -c fast'
        measure("pg_basebackup -Ft -z -X none (anchor)", ["sh", "-c", f"{basebackup} > {tar}"],
                env, lambda: tar.stat().st_size)  # fmt: skip
    finally:
        if moto is not None:
            moto.kill()
            moto.wait()
        for cluster in made:
            cluster.stop(mode="immediate")
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    dump_anchor = next((r for r in rows if "-Z9" in r[0]), None)
    base_anchor = next((r for r in rows if "pg_basebackup" in r[0]), None)
    print(
        f"{'run':42} {'seconds':>8} {'peak RSS MB':>12} {'size MB':>9} {'time/size vs anchor':>17}"
    )
    for label, seconds, peak, size, note in rows:
        ratio = ""
        anchor = base_anchor if "base" in label else dump_anchor
        if anchor and anchor[3] and size and "chainlens" in label:
            ratio = f"{seconds / anchor[1]:.2f}x / {size / anchor[3]:.2f}x"
        print(f"{label:42} {seconds:8.1f} {peak:12d} {size / MB:9.1f} {ratio:>17} {note}")
    return 0 if all(not r[4] for r in rows) else 1


def _tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _s3_size(endpoint: str, url: str) -> int:
    import boto3

    bucket, prefix = url.removeprefix("s3://").split("/", 1)
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="bench",
                      aws_secret_access_key="bench", region_name="us-east-1")  # fmt: skip
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return sum(int(o["Size"]) for o in listed if "/backups/" in o["Key"])


if __name__ == "__main__":
    sys.exit(main())
