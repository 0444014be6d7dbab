"""`chainlens-ops restore table` as the on-call runbook: a base backup; rows; time T; an
incident (UPDATE without WHERE, a wrong DELETE) and good writes elsewhere; the damaged
tables brought back as they were at T under a new schema, beside the live ones, which
stay untouched. A partitioned table comes back whole. Every refusal creates nothing,
and no scratch server or folder outlives success, failure or a SIGTERM mid-recovery.
`restore --db-only` restores a cluster where only one database is readable."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import ClusterFactory
from pgharness import CLI, PgCluster, as_postgres, cli_env, free_port, run_cli
from test_backup import backup
from test_wal import PUSH, switch_and_wait
from test_wal_s3 import S3Setup, s3_archiving

__all__ = ["s3_archiving"]

Proc = subprocess.CompletedProcess[str]
SCHEMA_SQL = """
CREATE TABLE user_profiles (id int PRIMARY KEY, name text NOT NULL, tier text NOT NULL);
CREATE TABLE subscriptions (id int PRIMARY KEY, user_id int NOT NULL, status text);
CREATE TABLE audit (id serial PRIMARY KEY, what text);
CREATE TABLE usage_events (id bigint, at date NOT NULL, amount numeric(10,2))
  PARTITION BY RANGE (at);
CREATE TABLE usage_events_2026_10 PARTITION OF usage_events
  FOR VALUES FROM ('2026-10-01') TO ('2026-11-01');
CREATE TABLE usage_events_2026_11 PARTITION OF usage_events
  FOR VALUES FROM ('2026-11-01') TO ('2026-12-01');
CREATE TABLE usage_events_default PARTITION OF usage_events DEFAULT;
INSERT INTO user_profiles SELECT g, 'user ' || g, 'pro' FROM generate_series(1, 200) g;
INSERT INTO subscriptions SELECT g, g, 'active' FROM generate_series(1, 100) g;
INSERT INTO usage_events SELECT g, DATE '2026-10-01' + (g % 75), g / 10.0
  FROM generate_series(1, 300) g;
"""
BIG_ROWS = 300_000  # the other database: ten times and more the size of "shop"


@dataclass
class Scene:
    source: PgCluster
    repo: Path
    time_t: str
    factory: ClusterFactory
    events_at_t: int


def env_for(scene: Scene) -> dict[str, str]:
    return {"CHAINLENS_SUPABASE_DSN": scene.source.conninfo("shop")}


@pytest.fixture(scope="module")
def scene(pg_template: Path, scratch: Path) -> Iterator[Scene]:
    factory = ClusterFactory(pg_template, scratch)
    repo = factory.dir("repo")
    source = factory(
        start=False, archive_mode="on", archive_command=f"{PUSH} --repo file://{repo} %p"
    )
    source.start()
    source.createdb("shop")
    source.createdb("big")
    source.execute(SCHEMA_SQL, dbname="shop")
    source.execute(
        "CREATE TABLE filler AS SELECT g AS id, md5(g::text) AS v FROM "
        f"generate_series(1, {BIG_ROWS}) g",
        dbname="big",
    )
    switch_and_wait(source)
    made = backup(repo, source.conninfo("shop"), "--kind", "base", "--quiet")
    assert made.returncode == 0, made.stderr
    # After the backup: replay writes to both databases (the skipped one included).
    source.execute("UPDATE filler SET v = 'changed' WHERE id % 7 = 0", dbname="big")
    source.execute(
        "INSERT INTO user_profiles SELECT g, 'late ' || g, 'pro' FROM generate_series(201, 210) g",
        dbname="shop",
    )
    events_at_t = int(source.scalar("SELECT count(*) FROM usage_events", dbname="shop"))
    time.sleep(0.2)
    time_t = str(source.scalar("SELECT now()::text"))
    time.sleep(0.3)
    source.execute("UPDATE user_profiles SET tier = 'free'", dbname="shop")
    source.execute("DELETE FROM subscriptions WHERE status = 'active'", dbname="shop")
    source.execute("INSERT INTO audit (what) VALUES ('good write after the incident')", "shop")
    source.execute("INSERT INTO usage_events VALUES (9999, '2026-11-15', 1)", dbname="shop")
    switch_and_wait(source)
    switch_and_wait(source)
    yield Scene(source, repo, time_t, factory, events_at_t)
    factory.cleanup()


def restore_table(scene: Scene, *args: str, scratch: Path, **kw: Any) -> Proc:
    env = {**env_for(scene), **kw.pop("env", {})}
    return run_cli(
        "restore", "table", "--repo", str(scene.repo), "--db", "supabase",
        "--scratch", str(scratch), *args, user="postgres", env=env, **kw,
    )  # fmt: skip


def schemas(scene: Scene) -> set[str]:
    rows = scene.source.execute("SELECT nspname FROM pg_namespace", dbname="shop")
    return {str(r[0]) for r in rows}


def no_scratch_left(scratch: Path) -> None:
    assert list(scratch.iterdir()) == []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            assert str(scratch) not in cmdline or "pytest" in cmdline, cmdline


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for a parent that never reaps it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_incident_tables_come_back_beside_the_live_ones(scene: Scene) -> None:
    scratch = scene.factory.dir("scratch")
    before = schemas(scene)
    proc = restore_table(
        scene, "public.user_profiles", "public.subscriptions", "--target-time", scene.time_t,
        "--into-schema", "pit", "--json", scratch=scratch,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    rows = {t["table"]: (t["rows_live"], t["rows_restored"]) for t in result["tables"]}
    assert rows == {"public.user_profiles": (210, 210), "public.subscriptions": (0, 100)}
    assert schemas(scene) - before == {"pit"}
    src = scene.source
    assert src.scalar("SELECT count(*) FROM pit.user_profiles WHERE tier = 'pro'", "shop") == 210
    assert src.scalar("SELECT count(*) FROM pit.subscriptions WHERE status = 'active'", "shop") == (
        100
    )
    # The live tables and the later good writes are untouched.
    assert src.scalar("SELECT count(*) FROM user_profiles WHERE tier = 'free'", "shop") == 210
    assert src.scalar("SELECT count(*) FROM subscriptions", "shop") == 0
    assert src.scalar("SELECT count(*) FROM audit", "shop") == 1
    # Only the tables' database (and postgres) were written; the big one was skipped.
    plan = result["plan"]
    assert plan["kept_databases"] == ["postgres", "shop"] and "big" in plan["skipped_databases"]
    assert result["skipped_bytes"] > result["extracted_bytes"] - result["skipped_bytes"]
    no_scratch_left(scratch)
    # The printed sketch is what it says: run by hand, it puts the rows back.
    sketch = next(
        t["put_back_sql"] for t in result["tables"] if t["table"] == "public.subscriptions"
    )
    src.execute(sketch, dbname="shop")
    assert src.scalar("SELECT count(*) FROM subscriptions WHERE status = 'active'", "shop") == 100
    sketch = next(
        t["put_back_sql"] for t in result["tables"] if t["table"] == "public.user_profiles"
    )
    src.execute(sketch, dbname="shop")
    assert src.scalar("SELECT count(*) FROM user_profiles WHERE tier = 'pro'", "shop") == 210
    src.execute("UPDATE user_profiles SET tier = 'free'; DELETE FROM subscriptions", "shop")


def test_partitioned_table_comes_back_whole(scene: Scene) -> None:
    scratch = scene.factory.dir("scratch")
    proc = restore_table(
        scene, "usage_events", "--target-time", scene.time_t, "--into-schema", "pit_events",
        scratch=scratch,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "partitioned: 3 partitions as one table" in proc.stdout, proc.stdout
    src = scene.source
    assert src.scalar("SELECT count(*) FROM pit_events.usage_events", "shop") == scene.events_at_t
    assert src.scalar("SELECT relkind::text FROM pg_class WHERE oid = "
                      "'pit_events.usage_events'::regclass", "shop") == "r"  # fmt: skip
    assert src.scalar("SELECT count(*) FROM usage_events", "shop") == scene.events_at_t + 1
    assert "INSERT INTO public.usage_events" in proc.stdout
    no_scratch_left(scratch)


def test_dry_run_prints_the_plan_and_touches_nothing(scene: Scene) -> None:
    scratch = scene.factory.dir("scratch")
    before = schemas(scene)
    proc = restore_table(
        scene, "user_profiles", "--target-time", scene.time_t, "--dry-run", scratch=scratch
    )
    assert proc.returncode == 0, proc.stderr
    for needle in ("backup ", "segments)", f"scratch: {scratch}", "free)", "dry run"):
        assert needle in proc.stdout, proc.stdout
    assert re.search(r"into: schema restored_\d{8}t\d{6} \(new\)", proc.stdout), proc.stdout
    assert schemas(scene) == before
    no_scratch_left(scratch)


REFUSALS = {
    "missing table": (("public.nope", "--target-time", "T"), 2, r"public\.nope does not exist at"),
    "existing schema": (("user_profiles", "--target-time", "T", "--into-schema", "public"), 2,
                        r"schema public already exists"),
    "before the backup": (("user_profiles", "--target-time", "2000-01-01T00:00:00Z"), 2,
                          r"earlier than the end of the earliest base backup"),
    "after the archive": (("user_profiles", "--target-time", "2999-01-01T00:00:00Z"), 2,
                          r"later than the newest archived WAL"),
    "unreachable live database": (("user_profiles", "--target-time", "T"), 3,
                                  r"cannot connect to the supabase database"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_create_nothing(scene: Scene, case: str) -> None:
    args, code, message = REFUSALS[case]
    args = tuple(scene.time_t if a == "T" else a for a in args)
    env = {}
    if case == "unreachable live database":
        env["CHAINLENS_SUPABASE_DSN"] = f"host=127.0.0.1 port={free_port()} dbname=x user=u"
    scratch = scene.factory.dir("scratch")
    before = schemas(scene)
    proc = restore_table(scene, *args, scratch=scratch, env=env)
    assert proc.returncode == code, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("chainlens-ops: error")]
    assert len(errors) == 1 and re.search(message, errors[0]), proc.stderr
    assert "Traceback" not in proc.stderr
    assert schemas(scene) == before
    no_scratch_left(scratch)


def test_too_little_free_space_is_refused(scene: Scene) -> None:
    scratch = scene.factory.dir("tiny")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0777", "tmpfs", str(scratch)],
                   check=True)  # fmt: skip
    try:
        proc = restore_table(scene, "user_profiles", "--target-time", scene.time_t,
                             scratch=scratch)  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert "too little free space" in proc.stderr
        no_scratch_left(scratch)
    finally:
        subprocess.run(["umount", str(scratch)], check=True)


def test_sigterm_mid_recovery_leaves_no_scratch(scene: Scene) -> None:
    scratch = scene.factory.dir("scratch")
    before = schemas(scene)
    argv = as_postgres([
        str(CLI), "restore", "table", "--repo", str(scene.repo), "--db", "supabase",
        "--scratch", str(scratch), "user_profiles", "--target-time", scene.time_t,
    ])  # fmt: skip
    env = cli_env({**env_for(scene), "CHAINLENS_PAUSE_AT": "table-scratch-recovering"})
    with subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stderr is not None
        pid = None
        for line in proc.stderr:
            found = re.search(r"paused at table-scratch-recovering \(pid (\d+)\)", line)
            if found:
                pid = int(found.group(1))
                break
        assert pid is not None
        (folder,) = list(scratch.iterdir())
        postmaster = int((folder / "data" / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(timeout=60) == 143, rest
    assert "stopped by SIGTERM" in rest
    assert not alive(postmaster)
    no_scratch_left(scratch)
    assert schemas(scene) == before


def test_db_only_restores_one_readable_database(scene: Scene) -> None:
    pgdata = scene.factory.dir("dbonly") / "data"
    port = free_port()
    proc = run_cli(
        "restore", "--repo", str(scene.repo), "--db", "supabase", "--db-only", "shop",
        "--target-time", scene.time_t, "--pgdata", str(pgdata), "--start", "--port", str(port),
        user="postgres", env=env_for(scene),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    restored = PgCluster(pgdata, port)
    scene.factory.made.append(restored)
    assert "skipped" in proc.stdout
    assert restored.scalar("SELECT count(*) FROM user_profiles WHERE tier = 'pro'", "shop") == 210
    # A skipped database refuses connections with one FATAL line; the server stays up.
    with pytest.raises(psycopg.OperationalError, match="PG_VERSION"):
        restored.scalar("SELECT count(*) FROM filler", "big")
    assert restored.scalar("SELECT count(*) FROM subscriptions", "shop") == 100
    restored.stop()


def test_restore_table_from_s3(
    s3_archiving: tuple[PgCluster, str, S3Setup], make_cluster: ClusterFactory
) -> None:
    cluster, repo, setup = s3_archiving
    cluster.createdb("s3shop")
    cluster.execute(SCHEMA_SQL, dbname="s3shop")
    switch_and_wait(cluster)
    made = setup.cli("backup", "--repo", repo, "--dsn", cluster.conninfo("s3shop"), "--kind",
                     "base")  # fmt: skip
    assert made.returncode == 0, made.stderr
    time_t = str(cluster.scalar("SELECT now()::text"))
    time.sleep(0.3)
    cluster.execute("DELETE FROM subscriptions WHERE id <= 40", dbname="s3shop")
    switch_and_wait(cluster)
    scratch = make_cluster.dir("s3scratch")
    proc = setup.cli("restore", "table", "subscriptions", "--repo", repo, "--dsn",
                     cluster.conninfo("s3shop"), "--db", "supabase", "--target-time", time_t,
                     "--into-schema", "pit", "--scratch", str(scratch))  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert cluster.scalar("SELECT count(*) FROM pit.subscriptions", "s3shop") == 100
    assert cluster.scalar("SELECT count(*) FROM subscriptions", "s3shop") == 60
    no_scratch_left(scratch)
