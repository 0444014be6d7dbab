"""`chainlens-ops backup`, `backup list/verify/prune` against real clusters, run as the
database's OS user would: the installed tool, on a local repository and on S3 (moto)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ClusterFactory
from pgharness import CLI, PG_BIN, SCRAM_PASSWORD, SCRAM_USER, PgCluster, cli_env, run_cli
from test_wal import archiving, pgbench, switch_and_wait
from test_wal_s3 import S3Setup, client, s3_archiving

from chainlens_ops.daemon.metrics import newest_backup_age_s
from chainlens_ops.settings.config import load_settings

__all__ = ["archiving", "s3_archiving"]  # fixtures shared with the WAL tests

TABLES = {"accounts": 3000, "events": 5000}
Proc = subprocess.CompletedProcess[str]


def fill(cluster: PgCluster, db: str) -> None:
    cluster.createdb(db)
    for table, rows in TABLES.items():
        cluster.execute(
            f"CREATE TABLE {table} AS SELECT g AS id, md5(g::text) AS v, now() AS at "
            f"FROM generate_series(1, {rows}) g",
            dbname=db,
        )


def counts(cluster: PgCluster, db: str) -> dict[str, int]:
    return {t: int(cluster.scalar(f"SELECT count(*) FROM {t}", dbname=db)) for t in TABLES}


def backup(
    repo: str | Path, conninfo: str, *args: str, **kw: Any
) -> subprocess.CompletedProcess[str]:
    return run_cli("backup", "--repo", str(repo), "--dsn", conninfo, *args, user="postgres", **kw)


def cli(repo: str | Path, *args: str, **kw: Any) -> Proc:
    command, *rest = args
    return run_cli("backup", command, "--repo", str(repo), *rest, user="postgres", **kw)


def listing(repo: str | Path, **kw: Any) -> list[dict[str, Any]]:
    proc = cli(repo, "list", "--json", **kw)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert isinstance(data, list)
    return data


def flip_local(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_local_base_and_logical_backups_list_verify_restore_and_detect_damage(
    archiving: tuple[PgCluster, Path], make_cluster: ClusterFactory
) -> None:
    cluster, repo = archiving
    fill(cluster, "shop")
    switch_and_wait(cluster)
    dsn = cluster.conninfo("shop")

    # A pg_basebackup base backup (bare `backup` on this host would read the data folder
    # itself: test_incremental.py).
    base = backup(repo, dsn, "--kind", "base")
    assert base.returncode == 0, base.stderr
    base_id = base.stdout.strip()
    assert base_id.endswith("-base-microservices"), base.stdout

    logical = backup(repo, dsn, "--kind", "logical", "--quiet")
    assert logical.returncode == 0 and logical.stderr == "", logical.stderr
    logical_id = logical.stdout.strip()

    shown = listing(repo)
    assert [b["id"] for b in shown] == [logical_id, base_id]  # newest first
    for b in shown:
        assert {"id", "kind", "target", "started_at", "finished_at", "size_bytes"} <= set(b)
        assert b["status"] == "complete" and b["size_bytes"] > 0
        assert b["system_identifier"] == str(cluster.scalar(
            "SELECT system_identifier FROM pg_control_system()"))  # fmt: skip
    b0 = shown[1]
    assert b0["kind"] == "base" and b0["start_wal"] and b0["stop_wal"] >= b0["start_wal"]
    assert "START WAL LOCATION" in b0["backup_label"] and "STOP WAL LOCATION" in b0["backup_label"]
    human = cli(repo, "list")
    assert base_id in human.stdout and "recoverable window" in human.stdout
    # The daemon's metrics file reads the same catalog: one age per database and kind.
    ages = newest_backup_age_s(load_settings(env={"CHAINLENS_REPO": str(repo)}))
    assert set(ages) == {("microservices", "base"), ("microservices", "logical")}
    assert all(0 <= age < 600 for age in ages.values()), ages

    for args in (("--latest",), (base_id,)):
        ok = cli(repo, "verify", *args)
        assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "pg_restore --list reads" in cli(repo, "verify", "--latest").stdout
    assert "files match backup_manifest" in cli(repo, "verify", base_id).stdout
    room = make_cluster.dir("verify")
    extracted = cli(repo, "verify", base_id, "--extract-to", str(room))
    assert extracted.returncode == 0, extracted.stdout + extracted.stderr
    assert "pg_verifybackup ok" in extracted.stdout and not list(room.iterdir())
    # Each verify is recorded beside the backup; `list` shows the latest as proof.
    for b in listing(repo):
        assert b["verified"]["ok"] is True and b["drilled"] is None, b
    assert "verify ok" in cli(repo, "list").stdout

    # The logical backup restores with pg_restore to identical row counts.
    cluster.createdb("shop_restored")
    dump = make_cluster.dir("dump") / "dump.pgc"
    run_cli("backup", "verify", "--repo", str(repo), logical_id, user="postgres")
    obj = repo / "backups" / logical_id / "dump.pgc.zst"
    subprocess.run(["sh", "-c", f"zstd -dc {obj} > {dump}"], check=True, env=cli_env())
    subprocess.run(
        [str(PG_BIN / "pg_restore"), "-d", cluster.conninfo("shop_restored"), str(dump)],
        check=True, capture_output=True, env=cli_env(),
    )  # fmt: skip
    assert counts(cluster, "shop_restored") == counts(cluster, "shop") == TABLES

    # A flipped byte anywhere in any object fails verify, naming that object.
    for backup_id, name, where in ((base_id, "base.tar.zst", (0.5, 1.0)),
                                   (logical_id, "dump.pgc.zst", (0.0, 0.5))):  # fmt: skip
        path = repo / "backups" / backup_id / name
        for offset in (min(int(path.stat().st_size * f), path.stat().st_size - 1) for f in where):
            flip_local(path, offset)
            bad = cli(repo, "verify", backup_id)
            assert bad.returncode == 1, (name, offset, bad.stdout)
            assert f"backups/{backup_id}/{name}" in bad.stderr, bad.stderr
            proof = {b["id"]: b for b in listing(repo)}[backup_id]["verified"]
            assert proof["ok"] is False and name in proof["detail"], proof
            flip_local(path, offset)
        assert cli(repo, "verify", backup_id).returncode == 0
        time.sleep(1.05)  # records are named to the second: the next one is newer
        assert {b["id"]: b for b in listing(repo)}[backup_id]["verified"]["ok"] is True

    # A manifest is part of the backup too: a damaged one is listed as damaged (never
    # as valid, never left out), and the listing exits 1 naming it.
    manifest = repo / "backups" / logical_id / "manifest.json"
    original = manifest.read_bytes()
    manifest.write_bytes(original[:-20])
    proc = cli(repo, "list", "--json")
    assert proc.returncode == 1 and f"{logical_id}/manifest.json is damaged" in proc.stderr
    listed = {b["id"]: b["status"] for b in json.loads(proc.stdout)}
    assert listed == {base_id: "complete", logical_id: "damaged"}, listed
    manifest.write_bytes(original)


def test_retention_keeps_exactly_the_right_backups_and_their_wal(
    archiving: tuple[PgCluster, Path],
) -> None:
    cluster, repo = archiving
    fill(cluster, "retain")
    dsn = cluster.conninfo("retain")
    ids = []
    for kind in ("base", "logical", "base", "base"):
        switch_and_wait(cluster)  # WAL between backups (each base backup adds its own)
        proc = backup(repo, dsn, "--kind", kind, "--quiet")
        assert proc.returncode == 0, proc.stderr
        ids.append(proc.stdout.strip())
    switch_and_wait(cluster)
    mine = [b for b in listing(repo) if b["id"] in ids]
    before = {b["id"]: b for b in mine}
    others = [b["id"] for b in listing(repo) if b["id"] not in ids]

    # --keep-last counts each kind on its own: the newest 2 base and the newest 2 logical.
    everything = listing(repo)  # newest first
    expected = [b["id"] for b in everything if b["kind"] == "base"][:2]
    expected += [b["id"] for b in everything if b["kind"] == "logical"][:2]
    assert expected[:3] == [ids[3], ids[2], ids[1]]

    plan = cli(repo, "prune", "--keep-last", "2", "--dry-run", "--json")
    assert plan.returncode == 0, plan.stderr
    planned = json.loads(plan.stdout)
    assert set(planned["kept"]) == set(expected) and planned["dry_run"] is True
    assert set(planned["removed"]) == {b["id"] for b in everything} - set(expected)
    assert ids[0] in planned["removed"]
    assert len(listing(repo)) == len(mine) + len(others)  # nothing removed by a dry run

    done = cli(repo, "prune", "--keep-last", "2", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert {b["id"] for b in listing(repo)} == set(expected)
    # WAL older than the oldest kept base backup's start segment is gone, and only that.
    start = before[ids[2]]["start_wal"]
    assert result["wal_before"] == start and result["wal_removed"] > 0
    left = sorted(p.name[:24] for p in (repo / "wal").rglob("0*") if p.is_file())
    assert left and min(left) == start
    check = run_cli("wal", "check", "--repo", str(repo), user="postgres")
    assert check.returncode == 0, check.stdout + check.stderr
    for backup_id in (ids[2], ids[3]):
        assert cli(repo, "verify", backup_id).returncode == 0

    # The newest valid backup is never removed, whatever the rule says.
    assert cli(repo, "prune", "--keep-days", "0").returncode == 0
    assert [b["id"] for b in listing(repo)] == [ids[3]]
    bad = cli(repo, "prune")
    assert bad.returncode == 2 and "--keep-last" in bad.stderr


def test_base_backup_while_writes_happen(archiving: tuple[PgCluster, Path]) -> None:
    cluster, repo = archiving
    pgbench(cluster, "-i", "-s", "2", "-q")
    load = subprocess.Popen(
        [str(PG_BIN / "pgbench"), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres",
         "-T", "8", "-c", "2", "postgres"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=cli_env(),
    )  # fmt: skip
    try:
        proc = backup(repo, cluster.conninfo(), "--kind", "base", "--quiet")
    finally:
        _out, err = load.communicate(timeout=60)
    assert load.returncode == 0, err
    assert proc.returncode == 0, proc.stderr
    assert cli(repo, "verify", proc.stdout.strip()).returncode == 0

    # --db all with both databases on this cluster: one base backup covers both.
    env = {"CHAINLENS_SUPABASE_DSN": cluster.conninfo(), "CHAINLENS_REPO": str(repo),
           "CHAINLENS_MICROSERVICES_DSN": cluster.conninfo("template1")}  # fmt: skip
    count = len(listing(repo))
    both = run_cli("backup", "--db", "all", env=env, user="postgres")
    assert both.returncode == 0, both.stderr
    first, second = both.stdout.split()
    assert first == second and first.endswith("-base-supabase")
    assert f"microservices: same cluster as supabase: base backup {first} covers it" in both.stderr
    assert len(listing(repo)) == count + 1


def test_s3_base_and_logical_backups(
    s3_archiving: tuple[PgCluster, str, S3Setup], moto_server: Any
) -> None:
    cluster, repo, setup = s3_archiving
    fill(cluster, "shop")
    switch_and_wait(cluster)
    # The password goes through the environment: never in output or the manifest.
    env = {**setup.env,
           "CHAINLENS_MICROSERVICES_DSN": cluster.conninfo("shop", user=SCRAM_USER,
                                                          password=SCRAM_PASSWORD)}  # fmt: skip
    base = run_cli("--config", str(setup.config), "backup", "--repo", repo, "--kind", "base",
                   env=env, user="postgres")  # fmt: skip
    assert base.returncode == 0, base.stderr
    logical = run_cli("--config", str(setup.config), "backup", "--repo", repo, "--kind", "logical",
                      env=env, user="postgres")  # fmt: skip
    assert logical.returncode == 0, logical.stderr
    base_id, logical_id = base.stdout.strip(), logical.stdout.strip()
    assert base_id.endswith("-base-microservices")
    for proc in (base, logical):
        assert SCRAM_PASSWORD not in proc.stdout + proc.stderr

    shown = json.loads(setup.cli("backup", "list", "--repo", repo, "--json").stdout)
    assert [b["id"] for b in shown] == [logical_id, base_id]
    assert SCRAM_PASSWORD not in json.dumps(shown)
    for backup_id in (base_id, logical_id):
        ok = setup.cli("backup", "verify", "--repo", repo, backup_id)
        assert ok.returncode == 0, ok.stdout + ok.stderr

    # A flipped byte in an S3 object fails verify, naming it.
    s3 = client(moto_server)
    bucket, prefix = repo.removeprefix("s3://").split("/", 1)
    for backup_id, name in ((base_id, "base.tar.zst"), (logical_id, "dump.pgc.zst")):
        key = f"{prefix}/backups/{backup_id}/{name}"
        data = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        data[len(data) // 2] ^= 0x01
        s3.put_object(Bucket=bucket, Key=key, Body=bytes(data))
        bad = setup.cli("backup", "verify", "--repo", repo, backup_id)
        assert bad.returncode == 1 and f"backups/{backup_id}/{name}" in bad.stderr, bad.stderr


def test_a_base_backup_whose_wal_never_arrives_fails_clearly(make_cluster: ClusterFactory) -> None:
    repo = make_cluster.dir("repo")
    cluster = make_cluster(archive_mode="on", archive_command=f"{CLI} wal push --repo {repo} %p")
    switch_and_wait(cluster)
    # archive_command now "succeeds" without storing anything: the server is satisfied,
    # but the WAL this backup needs never reaches the repository.
    cluster.configure(archive_command="true")
    cluster.reload()
    proc = backup(repo, cluster.conninfo(), "--kind", "base", "--wal-timeout", "2")
    assert proc.returncode == 1, proc.stderr
    assert "did not reach repository" in proc.stderr and "within 2s" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert listing(repo) == []


def test_the_first_base_backup_of_a_fresh_archiving_cluster(make_cluster: ClusterFactory) -> None:
    """archive_command just set, nothing archived yet: the backup switches a segment and
    waits for it (as `check` does) instead of refusing; it refuses only when archiving
    fails, saying so."""
    repo = make_cluster.dir("repo")
    fresh = make_cluster(archive_mode="on", archive_command=f"{CLI} wal push --repo {repo} %p")
    assert fresh.scalar("SELECT last_archived_wal FROM pg_stat_archiver") is None
    proc = backup(repo, fresh.conninfo(), "--kind", "base")
    assert proc.returncode == 0, proc.stderr
    assert "no WAL archived yet: switched a segment" in proc.stderr, proc.stderr
    assert [b["kind"] for b in listing(repo)] == ["base"]

    broken_repo = make_cluster.dir("broken-repo")
    broken = make_cluster(archive_mode="on", archive_command="false")
    started = time.monotonic()
    refused = backup(broken_repo, broken.conninfo(), "--kind", "base")
    assert refused.returncode == 1, refused.stderr
    line = refused.stderr.strip().splitlines()[-1]
    assert "archived no WAL after a segment switch" in line, line
    assert "archive_command failed" in line and "chainlens-ops check" in line, line
    assert time.monotonic() - started < 30  # a failure ends the wait; no 120 s stall
    assert listing(broken_repo) == []

    silent = make_cluster(archive_mode="on", archive_command="")  # archives nothing, ever
    started = time.monotonic()
    refused = backup(broken_repo, silent.conninfo(), "--kind", "base")
    assert refused.returncode == 1 and "archive_command is empty" in refused.stderr
    assert time.monotonic() - started < 30


def test_failures_say_one_line_and_leave_nothing_valid(make_cluster: ClusterFactory) -> None:
    pg = make_cluster()  # archive_mode off
    fill(pg, "shop")
    repo = make_cluster.dir("repo")

    down = backup(repo, "host=127.0.0.1 port=1 user=postgres dbname=x connect_timeout=2")
    assert down.returncode == 3, down.stderr
    assert down.stderr.startswith("chainlens-ops: error: cannot connect")
    assert len(down.stderr.strip().splitlines()) == 1

    refused = backup(repo, pg.conninfo("shop"), "--kind", "base")
    assert refused.returncode == 1 and "archive_mode is off" in refused.stderr
    assert "Traceback" not in refused.stderr

    auto = backup(repo, pg.conninfo("shop"))
    assert auto.returncode == 0, auto.stderr
    assert "archive_mode is off: logical backup; point-in-time restore needs WAL archiving" in (
        auto.stderr
    )
    first = auto.stdout.strip()

    # Killed after its objects are stored, before the manifest: nothing new is listed,
    # and the lock it held is taken over once expired, naming the dead owner.
    env = {"CHAINLENS_CRASH_AT": "backup-before-manifest", "CHAINLENS_REPO_LOCK_TTL": "3"}
    crashed = backup(repo, pg.conninfo("shop"), env=env)
    assert crashed.returncode == 137  # SIGKILL, as runuser reports it
    assert [b["id"] for b in listing(repo)] == [first]
    assert "1 incomplete backup(s)" in cli(repo, "list").stdout

    again = backup(repo, pg.conninfo("shop"))
    assert again.returncode == 0, again.stderr
    assert "took over the repository lock of `backup --kind logical --db microservices`" in (
        again.stderr
    )
    # ... and removes what the killed one left, saying how much that freed.
    assert re.search(r"leftovers of killed commands: 1 backup\(s\) without a manifest.*: "
                     r"freed \d", again.stderr), again.stderr  # fmt: skip
    pruned = cli(repo, "prune", "--keep-last", "5", "--json")
    assert pruned.returncode == 0, pruned.stderr
    assert json.loads(pruned.stdout)["leftovers"] == []
    assert len(listing(repo)) == 2
    assert "incomplete" not in cli(repo, "list").stdout

    # --db all: one unreachable database fails, named, and does not skip the other.
    env = {
        "CHAINLENS_SUPABASE_DSN": "host=127.0.0.1 port=1 user=x connect_timeout=2",
        "CHAINLENS_MICROSERVICES_DSN": pg.conninfo("shop"),
        "CHAINLENS_REPO": str(repo),
    }
    both = run_cli("backup", "--db", "all", "--json", env=env, user="postgres")
    assert both.returncode == 3, both.stderr
    errors = [line for line in both.stderr.splitlines() if line.startswith("chainlens-ops: error")]
    assert len(errors) == 1 and "error: supabase: cannot connect" in errors[0], both.stderr
    assert [r["target"] for r in json.loads(both.stdout)] == ["microservices"]
    assert len(listing(repo)) == 3


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHAINLENS_CRASH_AT", raising=False)
