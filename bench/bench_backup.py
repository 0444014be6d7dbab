"""Backup speed, size and memory: chainlens-ops against the tools a DBA would pick instead.

    /opt/chainlens-ops/venv/bin/python bench/bench_backup.py [--mb 500] [--keep]

One cluster (16 MB segments, archive_mode on: archive_command pushes every segment to
the chainlens-ops repository AND pgBackRest's, so both base backups can complete), the
ChainLens dataset from scripts/gen_dataset.py (both databases, --mb of COPY text), then,
side by side, each run once as the postgres OS user:

  logical (both databases, one after the other; time and bytes summed)
    pg_dump -Fc -Z9               the seed's plan (anchor: time <= 1x, size <= 0.7x)
    pg_dump -Fc                   default compression, for reference
    chainlens-ops backup --kind logical --db all
  base (the cluster)
    pgBackRest full backup, zstd  anchor: time <= 1x, size <= 1.2x
    pg_basebackup -Ft -z          for reference
    chainlens-ops backup --kind base
  S3 (moto on loopback)
    chainlens-ops backup --kind logical to s3://   peak RSS < 200 MB

The chainlens-ops rows run only when `chainlens-ops backup --help` exits 0 (the command
comes with issue 8's backup branch); otherwise the table says so.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))
sys.path.insert(0, str(HERE))

from bench_wal import (  # noqa: E402
    _wait_http,
    base_env,
    init_cluster,
    need_root,
    run_as_postgres,
    scratch_folder,
)
from pgharness import (  # noqa: E402
    CLI,
    PG_BIN,
    VENV,
    PgCluster,
    free_port,
    make_shared_dir,
)

GEN = HERE.parent / "scripts" / "gen_dataset.py"
DBS = {"supabase": "chainlens_supabase", "microservices": "chainlens_microservices"}


@dataclass
class Row:
    group: str
    tool: str
    seconds: float = 0.0
    size: int = 0
    peak_kb: int = 0
    note: str = ""
    anchor: str = ""  # the row this one is compared with


def du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def timed(row: Row, argv: list[str], *, cwd: Path, env: dict[str, str]) -> bool:
    started = time.perf_counter()
    code, peak, stderr = run_as_postgres(argv, cwd=cwd, env=env)
    row.seconds += time.perf_counter() - started
    row.peak_kb = max(row.peak_kb, peak)
    if code != 0:
        row.note = f"failed: {stderr.strip()[-200:]}"
    return code == 0


def ours_available() -> bool:
    proc = subprocess.run([str(CLI), "backup", "--help"], capture_output=True, check=False)
    return proc.returncode == 0


def make_cluster(base: Path, pgbr_conf: Path, repo: Path) -> tuple[PgCluster, Path]:
    push = f"{CLI} wal push --repo file://{repo} %p"
    if shutil.which("pgbackrest"):
        push += f" && pgbackrest --config={pgbr_conf} --stanza=bench archive-push %p"
    cluster, sock = init_cluster(
        base,
        "max_wal_size = 4GB\nshared_buffers = 256MB\n"
        f"archive_mode = on\narchive_command = '{push}'\n",
    )
    cluster.start()
    return cluster, sock


def cluster_with_pgbackrest(base: Path) -> tuple[PgCluster, Path, list[str]]:
    """A started cluster archiving into both repositories: ours (base/repo) and a
    pgBackRest stanza `bench` (base/pgbr); returns it, our repo, pgBackRest's argv."""
    repo = make_shared_dir(base / "repo", mode=0o700)
    conf = base / "pgbackrest.conf"
    for sub in ("pgbr", "pgbr-log", "pgbr-lock"):
        make_shared_dir(base / sub, mode=0o700)
    cluster, sock = make_cluster(base, conf, repo)
    conf.write_text(
        f"[global]\nrepo1-path={base}/pgbr\ncompress-type=zst\nlog-level-console=warn\n"
        f"log-level-file=off\nlock-path={base}/pgbr-lock\nlog-path={base}/pgbr-log\n"
        f"start-fast=y\n[bench]\npg1-path={cluster.data}\npg1-port={cluster.port}\n"
        f"pg1-socket-path={sock}\npg1-user=postgres\n"
    )
    os.chmod(conf, 0o644)
    return cluster, repo, ["pgbackrest", f"--config={conf}", "--stanza=bench"]


def load_dataset(cluster: PgCluster, mb: float, env: dict[str, str]) -> None:
    for db in DBS.values():
        cluster.createdb(db)
    dsns = {f"CHAINLENS_{name.upper()}_DSN": cluster.conninfo(db) for name, db in DBS.items()}
    subprocess.run([str(CLI), "schema", "apply"], env={**env, **dsns}, check=True,
                   capture_output=True)  # fmt: skip
    subprocess.run(
        [str(VENV / "bin" / "python"), str(GEN), "--supabase", dsns["CHAINLENS_SUPABASE_DSN"],
         "--microservices", dsns["CHAINLENS_MICROSERVICES_DSN"], "--mb", str(mb)],
        check=True,
    )  # fmt: skip
    cluster.execute("CHECKPOINT")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=500.0, help="dataset size (COPY text MB)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    if not need_root():
        return 2
    base = scratch_folder("bk")
    rows: list[Row] = []
    skipped: list[str] = []
    env = base_env()
    ours = ours_available()
    if not ours:
        skipped.append("chainlens-ops backup: not in this build (`backup --help` failed)")
    cluster: PgCluster | None = None
    moto: subprocess.Popen[bytes] | None = None
    try:
        cluster, repo, pgbr = cluster_with_pgbackrest(base)
        have_pgbr = bool(shutil.which("pgbackrest"))
        if have_pgbr:
            code, _, err = run_as_postgres([*pgbr, "stanza-create"], cwd=base, env=env)
            if code != 0:
                have_pgbr = False
                skipped.append(f"pgBackRest: stanza-create failed: {err.strip()[-200:]}")
        else:
            skipped.append("pgBackRest: not installed (scripts/install-system-deps.sh --bench)")

        print(f"loading a {args.mb:g} MB ChainLens dataset in {base} ...", flush=True)
        load_dataset(cluster, args.mb, env)
        sizes = cluster.execute(
            "SELECT sum(pg_database_size(datname)) FROM pg_database "
            "WHERE datname LIKE 'chainlens_%'"
        )
        print(f"databases: {int(sizes[0][0]) / 2**20:.0f} MB on disk", flush=True)

        out = make_shared_dir(base / "out")
        dsn_env = {**env, **{
            f"CHAINLENS_{n.upper()}_DSN": cluster.conninfo(db) for n, db in DBS.items()
        }}  # fmt: skip
        pg_dump = str(PG_BIN / "pg_dump")
        for label, extra in (("pg_dump -Fc -Z9", ["-Z9"]), ("pg_dump -Fc", [])):
            row = Row("logical", label, anchor="" if extra else "pg_dump -Fc -Z9")
            for db in DBS.values():
                dest = out / f"{db}{''.join(extra)}.dump"
                if not timed(row, [pg_dump, "-Fc", *extra, "-f", str(dest),
                                   "-d", cluster.conninfo(db)], cwd=base, env=env):  # fmt: skip
                    break
                row.size += du(dest)
            rows.append(row)
        if ours:
            row = Row("logical", "chainlens-ops backup --kind logical", anchor="pg_dump -Fc -Z9")
            rl = make_shared_dir(base / "repo-logical", mode=0o700)
            timed(row, [str(CLI), "backup", "--kind", "logical", "--db", "all", "--quiet",
                        "--repo", f"file://{rl}"], cwd=base, env=dsn_env)  # fmt: skip
            row.size = du(rl / "backups") if (rl / "backups").exists() else 0
            rows.append(row)

        if have_pgbr:
            row = Row("base", "pgBackRest full (zst)")
            if timed(row, [*pgbr, "--type=full", "backup"], cwd=base, env=env):
                row.size = du(base / "pgbr" / "backup")
            rows.append(row)
        row = Row("base", "pg_basebackup -Ft -z", anchor="pgBackRest full (zst)")
        bb = base / "out" / "basebackup"
        if timed(row, [str(PG_BIN / "pg_basebackup"), "-Ft", "-z", "-D", str(bb),
                       "-d", cluster.conninfo()], cwd=base, env=env):  # fmt: skip
            row.size = du(bb)
        rows.append(row)
        if ours:
            row = Row("base", "chainlens-ops backup --kind base", anchor="pgBackRest full (zst)")
            timed(row, [str(CLI), "backup", "--kind", "base", "--quiet", "--db", "microservices",
                        "--repo", f"file://{repo}"], cwd=base, env=dsn_env)  # fmt: skip
            row.size = du(repo / "backups") if (repo / "backups").exists() else 0
            rows.append(row)

            port = free_port()
            moto = subprocess.Popen(
                [str(VENV / "bin" / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            endpoint = f"http://127.0.0.1:{port}"
            _wait_http(endpoint)
            s3_env = {**dsn_env, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                      "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}  # fmt: skip
            req = urllib.request.Request(f"{endpoint}/bench", method="PUT")
            urllib.request.urlopen(req).close()
            row = Row("s3", "chainlens-ops backup --kind logical, S3")
            timed(row, [str(CLI), "backup", "--kind", "logical", "--db", "microservices",
                        "--quiet", "--repo", "s3://bench/c"], cwd=base, env=s3_env)  # fmt: skip
            rows.append(row)
    finally:
        if moto is not None:
            moto.kill()
            moto.wait()
        if cluster is not None:
            cluster.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    _print(rows, skipped)
    return 0 if all(not r.note for r in rows) else 1


def _print(rows: list[Row], skipped: list[str]) -> None:
    by_tool = {r.tool: r for r in rows}
    print(f"\n{'group':8} {'tool':42} {'seconds':>8} {'MB':>9} {'peak MB':>8}  vs anchor")
    for r in rows:
        ratio = ""
        anchor = by_tool.get(r.anchor)
        if anchor and anchor.seconds and anchor.size and not r.note:
            ratio = f"time {r.seconds / anchor.seconds:.2f}x, size {r.size / anchor.size:.2f}x"
        size = f"{r.size / 2**20:9.1f}" if r.size else f"{'-':>9}"
        print(f"{r.group:8} {r.tool:42} {r.seconds:8.1f} {size} {r.peak_kb / 1024:8.0f}  "
              f"{ratio}{'  ' + r.note if r.note else ''}")  # fmt: skip
    for note in skipped:
        print(f"skipped: {note}")
    print("targets: logical time <= 1x and size <= 0.7x of pg_dump -Fc -Z9; base time <= 1x "
          "and size <= 1.2x of pgBackRest full (zst); S3 peak < 200 MB")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
