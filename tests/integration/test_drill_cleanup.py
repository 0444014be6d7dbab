"""A drill's scratch server and copy never outlive it (issue 18, item 2).

The drill stops its scratch server and removes its folder on success, on failure, on
SIGTERM and on the daemon's job timeout; what a SIGKILL leaves (it cannot be caught) is
swept by the next drill or `backup prune`, which name it. Faults are injected at the
named crash point `drill-started` (the scratch server is up and promoted there).

Each test points TMPDIR at its own folder: the scratch copies and the registry of
scratch folders (`chainlens_ops.pg.scratch`) live there, so parallel runs never sweep
each other's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from conftest import ClusterFactory
from pgharness import CLI, PgCluster, run_cli, wait_for
from psycopg.conninfo import make_conninfo
from test_backup import backup
from test_wal import PUSH, switch_and_wait

from chainlens_ops.daemon.runner import JobProcess

Proc = subprocess.CompletedProcess[str]
KILLED = (-signal.SIGKILL, 128 + signal.SIGKILL)  # directly, or through runuser


@dataclass
class Drillable:
    repo: Path
    factory: ClusterFactory


@pytest.fixture(scope="module")
def drillable(pg_template: Path, scratch: Path) -> Iterator[Drillable]:
    factory = ClusterFactory(pg_template, scratch)
    repo = factory.dir("repo")
    source = factory(
        start=False, archive_mode="on", archive_command=f"{PUSH} --repo file://{repo} %p"
    )
    source.start()
    source.execute("CREATE TABLE t AS SELECT g AS n FROM generate_series(1, 500) g")
    switch_and_wait(source)
    made = backup(repo, source.conninfo(), "--kind", "base", "--quiet")
    assert made.returncode == 0, made.stderr
    source.execute("INSERT INTO t SELECT g FROM generate_series(501, 600) g")
    switch_and_wait(source)
    yield Drillable(repo, factory)
    factory.cleanup()


def drill(box: Drillable, tmp: Path, *args: str, **env: str) -> Proc:
    return run_cli("restore", "drill", "--repo", str(box.repo), *args,
                   env={"TMPDIR": str(tmp), **env}, user="postgres", timeout=300)  # fmt: skip


def processes_under(folder: Path) -> list[str]:
    """Command lines of running processes that name `folder` (a postmaster's -D)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(folder) in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


def scratch_copies(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("chainlens-drill-*"))


def assert_nothing_left(tmp: Path) -> None:
    wait_for(lambda: not processes_under(tmp), timeout=30)
    assert scratch_copies(tmp) == []
    registry = tmp / f"chainlens-ops-scratch-{postgres_uid()}"
    assert not registry.exists() or list(registry.iterdir()) == []


def postgres_uid() -> int:
    import pwd

    return pwd.getpwnam("postgres").pw_uid


def test_a_passing_drill_leaves_nothing(drillable: Drillable) -> None:
    tmp = drillable.factory.dir("tmp")
    proc = drill(drillable, tmp, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"] and result["row_counts"]["postgres.public.t"] == 600
    assert result["swept"] == []
    assert_nothing_left(tmp)


def test_a_killed_drill_is_swept_and_named_by_the_next_drill(drillable: Drillable) -> None:
    tmp = drillable.factory.dir("tmp")
    killed = drill(drillable, tmp, CHAINLENS_CRASH_AT="drill-started")
    assert killed.returncode in KILLED, killed.stdout + killed.stderr
    # What issue 18 found: the server still runs and the copy is still on disk.
    (left,) = scratch_copies(tmp)
    server = PgCluster(left / "data", 0)
    assert server.postmaster_pid() is not None and processes_under(left)

    proc = drill(drillable, tmp)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"removed the scratch copy {left} left by a dead drill" in proc.stdout
    assert "its server stopped" in proc.stdout
    assert not left.exists()
    assert_nothing_left(tmp)


def test_backup_prune_sweeps_what_a_killed_drill_left(drillable: Drillable) -> None:
    tmp = drillable.factory.dir("tmp")
    killed = drill(drillable, tmp, CHAINLENS_CRASH_AT="drill-started")
    assert killed.returncode in KILLED, killed.stdout + killed.stderr
    (left,) = scratch_copies(tmp)
    assert processes_under(left)
    pruned = run_cli("backup", "prune", "--repo", str(drillable.repo), "--keep-last", "5",
                     env={"TMPDIR": str(tmp)}, user="postgres")  # fmt: skip
    assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    assert f"removed the scratch copy {left} left by a dead drill" in pruned.stdout
    assert_nothing_left(tmp)


def test_sigterm_stops_the_scratch_server_and_removes_the_copy(drillable: Drillable) -> None:
    tmp = drillable.factory.dir("tmp")
    proc = drill(drillable, tmp, "--json", CHAINLENS_CRASH_AT="drill-started",
                 CHAINLENS_CRASH_SIGNAL="TERM")  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert not result["ok"] and result["error"] == "stopped by SIGTERM"
    assert_nothing_left(tmp)
    record = json.loads((drillable.repo / result["record_key"]).read_text())
    assert record["error"] == "stopped by SIGTERM"  # the failed drill is on record


def test_the_daemons_job_timeout_stops_the_scratch_server(drillable: Drillable) -> None:
    """The daemon's own child handling (JobProcess: SIGTERM to the job's process group,
    SIGKILL after a grace) on a drill that hangs at `drill-started`."""
    tmp = drillable.factory.dir("tmp")
    argv = ["runuser", "-u", "postgres", "--", "env", f"TMPDIR={tmp}",
            "CHAINLENS_CRASH_AT=drill-started", "CHAINLENS_CRASH_SIGNAL=HANG",
            str(CLI), "restore", "drill", "--repo", str(drillable.repo)]  # fmt: skip
    job = JobProcess("drill", argv)
    try:
        (copy,) = wait_for(lambda: scratch_copies(tmp), timeout=60)
        server = PgCluster(copy / "data", 0)
        wait_for(lambda: promoted(server), timeout=120)
        time.sleep(1)  # the drill sees the promotion within its 0.1 s poll, then hangs
        outcome = job.wait(timeout_s=0.1)
    finally:
        if job.proc.poll() is None:
            os.killpg(job.proc.pid, signal.SIGKILL)
    assert not outcome.succeeded and outcome.error is not None
    assert "timed out" in outcome.error
    assert_nothing_left(tmp)
    # The drill itself caught the SIGTERM, cleaned up and recorded why it stopped.
    newest = max(drillable.repo.glob("backups/*/drill-*.json"), key=lambda p: p.stat().st_mtime)
    assert json.loads(newest.read_text())["error"] == "stopped by SIGTERM"


def promoted(server: PgCluster) -> bool:
    lines = (server.pgdata / "postmaster.pid").read_text().splitlines() if (
        server.pgdata / "postmaster.pid").exists() else []  # fmt: skip
    if len(lines) < 4:
        return False
    if len(lines) < 5:
        return False
    server.port = int(lines[3])
    # A scratch server answers only on its own socket (pg/scratch.py), named on line 5.
    conninfo = make_conninfo(host=lines[4], port=server.port,
                             user="postgres", dbname="postgres", connect_timeout=5)  # fmt: skip
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            row = conn.execute("SELECT NOT pg_is_in_recovery()").fetchone()
            return row is not None and row[0] is True
    except Exception:
        return False


def test_a_cluster_configured_outside_its_data_folder_drills(drillable: Drillable) -> None:
    """Debian keeps postgresql.conf and pg_hba.conf in /etc/postgresql, so a base backup
    holds neither. The scratch server brings its own (an empty postgresql.conf, a
    pg_hba.conf trusting only its private socket) and the primary's hot-standby
    minimums from pg_control (max_connections 120 here, above the default 100, which
    would keep a recovering copy from serving reads)."""
    factory = drillable.factory
    repo, etc, tmp = factory.dir("repo"), factory.dir("etc"), factory.dir("tmp")
    source = factory(start=False, archive_mode="on", max_connections=120,
                     archive_command=f"{PUSH} --repo file://{repo} %p")  # fmt: skip
    for name in ("postgresql.conf", "pg_hba.conf", "pg_ident.conf"):
        shutil.move(source.data / name, etc / name)
    with (etc / "postgresql.conf").open("a") as conf:
        conf.write(f"hba_file = '{etc}/pg_hba.conf'\nident_file = '{etc}/pg_ident.conf'\n")
    source.start(options=f"-c config_file={etc}/postgresql.conf")
    source.execute("CREATE TABLE t AS SELECT g AS n FROM generate_series(1, 70) g")
    switch_and_wait(source)
    made = backup(repo, source.conninfo(), "--kind", "base", "--quiet")
    assert made.returncode == 0, made.stderr
    switch_and_wait(source)
    proc = run_cli("restore", "drill", "--repo", str(repo), "--json", env={"TMPDIR": str(tmp)},
                   user="postgres", timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["row_counts"]["postgres.public.t"] == 70
    assert_nothing_left(tmp)
