"""`restore-point create/list`: catalog + archived WAL, on a real archiving cluster."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from conftest import ClusterFactory, MotoServer
from pgharness import CLI, PgCluster, cli_env, run_cli
from test_wal_s3 import S3Setup


def rp(*args: str, repo: str, dsn: str | None = None) -> subprocess.CompletedProcess[str]:
    extra = ["--dsn", dsn] if dsn else []
    return run_cli("restore-point", *args, *extra, "--repo", repo, user="postgres")


def listed(repo: str) -> list[dict[str, object]]:
    proc = rp("list", "--json", repo=repo)
    assert proc.returncode == 0, proc.stderr
    points = json.loads(proc.stdout)
    assert isinstance(points, list)
    return points


def archiving_cluster(make_cluster: ClusterFactory) -> tuple[PgCluster, str]:
    repo = str(make_cluster.dir("repo"))
    cluster = make_cluster(
        archive_mode="on", archive_command=f"{CLI} wal push --repo file://{repo} %p"
    )
    return cluster, repo


def test_create_list_duplicate_sql_point_and_concurrency(make_cluster: ClusterFactory) -> None:
    cluster, repo = archiving_cluster(make_cluster)
    dsn = cluster.conninfo()

    proc = rp("create", "before-deploy", "--json", repo=repo, dsn=dsn)
    assert proc.returncode == 0, proc.stderr
    made = json.loads(proc.stdout)
    assert made["name"] == "before-deploy" and made["lsn"] and made["timeline"] == 1
    assert made["archived"] is True and made["time"][-6] in "+-"
    entry = Path(repo) / "restore-points" / "before-deploy.json"
    before = entry.read_bytes()

    # A duplicate is refused: exit 1, catalog unchanged, no second point in the server.
    proc = rp("create", "before-deploy", repo=repo, dsn=dsn)
    assert proc.returncode == 1 and "already exists" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert entry.read_bytes() == before

    # Invalid names: exit 2, nothing written.
    for bad in ("bad name", "x" * 64, "../up", ".hidden", "", "naïve"):
        proc = rp("create", bad, repo=repo, dsn=dsn)
        assert proc.returncode == 2, (bad, proc.stderr)
        assert "restore point name" in proc.stderr
    assert "x" * 63 + ".json" not in {p.name for p in (Path(repo) / "restore-points").iterdir()}

    # A point made in SQL, as the seed's runbook does; the next create archives its WAL.
    cluster.execute("SELECT pg_create_restore_point('runbook-1')")

    # Two concurrent creates of one name: exactly one wins.
    argv = ["runuser", "-u", "postgres", "--", str(CLI), "restore-point", "create", "race"]
    argv += ["--dsn", dsn, "--repo", repo]
    pipe = subprocess.PIPE
    procs = [
        subprocess.Popen(argv, env=cli_env(None), stdout=pipe, stderr=pipe, text=True)
        for _ in range(2)
    ]
    codes = sorted(p.wait(timeout=120) for p in procs)
    assert codes == [0, 1], [p.stderr.read() for p in procs if p.stderr]

    points = listed(repo)
    by_name: dict[str, list[dict[str, object]]] = {}
    for point in points:
        by_name.setdefault(str(point["name"]), []).append(point)
    # Exactly one of each: the refused duplicate and the race loser made no WAL record.
    counts = {n: len(v) for n, v in by_name.items()}
    assert counts == {"before-deploy": 1, "runbook-1": 1, "race": 1}
    assert by_name["before-deploy"][0]["source"] == "catalog"
    assert by_name["before-deploy"][0]["lsn"] == made["lsn"]
    sql_point = by_name["runbook-1"][0]
    assert sql_point["source"] == "wal" and sql_point["lsn"] and sql_point["timeline"] == 1
    lsns = [str(p["lsn"]) for p in points]
    assert lsns.index(made["lsn"]) < lsns.index(str(sql_point["lsn"]))

    # The scan is cached in the repository; a second list reads the cache and agrees.
    scanned = list((Path(repo) / "restore-points" / "scanned").iterdir())
    assert scanned
    stamps = {p: p.stat().st_mtime_ns for p in scanned}
    assert listed(repo) == points
    assert {p: p.stat().st_mtime_ns for p in scanned} == stamps

    # Human output names the source.
    proc = rp("list", repo=repo)
    assert proc.returncode == 0 and "runbook-1" in proc.stdout and "wal" in proc.stdout


def test_unreachable_database_is_one_line_exit_3(make_cluster: ClusterFactory) -> None:
    repo = str(make_cluster.dir("repo"))
    proc = rp(
        "create", "x1", repo=repo, dsn="host=127.0.0.1 port=1 user=postgres connect_timeout=2"
    )
    assert proc.returncode == 3, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "cannot connect" in proc.stderr
    assert not (Path(repo) / "restore-points").exists()


def test_create_and_list_on_s3(make_cluster: ClusterFactory, moto_server: MotoServer) -> None:
    bucket = f"rp{time.monotonic_ns()}"
    moto_server.create_bucket(bucket)
    setup = S3Setup(make_cluster.dir("s3conf"), moto_server)
    repo = f"s3://{bucket}/c"
    cluster = make_cluster(
        archive_mode="on",
        archive_command=(
            f"AWS_SHARED_CREDENTIALS_FILE={setup.credentials} {CLI} --config {setup.config} "
            f"wal push --repo {repo} %p"
        ),
    )
    cluster.execute("SELECT pg_create_restore_point('sql-made')")
    made = setup.cli("restore-point", "create", "s3-point", "--dsn", cluster.conninfo(),
                     "--repo", repo, "--json")  # fmt: skip
    assert made.returncode == 0, made.stderr
    again = setup.cli("restore-point", "create", "s3-point", "--dsn", cluster.conninfo(),
                      "--repo", repo)  # fmt: skip
    assert again.returncode == 1 and "already exists" in again.stderr
    proc = setup.cli("restore-point", "list", "--repo", repo, "--json")
    assert proc.returncode == 0, proc.stderr
    points = {p["name"]: p for p in json.loads(proc.stdout)}
    assert set(points) == {"sql-made", "s3-point"}
    assert points["s3-point"]["source"] == "catalog" and points["sql-made"]["source"] == "wal"
    assert points["s3-point"]["lsn"] == json.loads(made.stdout)["lsn"]
