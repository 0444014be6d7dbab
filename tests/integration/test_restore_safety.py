"""A restore never promotes short, on a local and an S3 repository.

- a `backup prune` that lands while a restore's server replays (held at the pause point
  `wal-fetch-segment`, so the prune lands mid-replay on every run) keeps the backup and
  the WAL the restore reads (its claim), and the restore ends with every row;
- a WAL segment that vanishes while the base backup is extracted (pause point
  `restore-extracting`) stops recovery: the restore exits 1 naming the segment, and no
  promoted server (and no server at all) is left;
- a logical restore holds a claim too: a prune while pg_restore reads the dump (pause
  point `logical-restoring`) keeps that backup;
- a backup killed while it holds the repository lock (crash point `repo-lock-acquired`)
  does not block the next backup: the lock of a dead process of this host is taken over
  at once, naming it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ClusterFactory, MotoServer
from pgharness import CLI, PgCluster, free_port, run_cli, wait_for
from test_wal import PUSH, switch_and_wait
from test_wal_s3 import S3Setup

from chainlens_ops.backup.manifest import manifest_key
from chainlens_ops.storage import open_storage
from chainlens_ops.storage.protocol import Storage
from chainlens_ops.storage.s3 import S3Settings

Proc = subprocess.CompletedProcess[str]
ROWS_PER_STEP = 3000
STEPS = 4  # rows written (and a WAL switch) between and after the two backups


@dataclass
class Repo:
    url: str
    archive_command: str
    run: Callable[..., Proc]  # run(*args, env=...) as postgres, with the backend's settings
    storage: Storage  # for reading (a local repository refuses writes by root)

    def delete(self, key: str) -> None:
        """Remove one object behind the tool's back, as a lost or pruned object would be."""
        if self.url.startswith("file://"):
            (Path(self.url.removeprefix("file://")) / key).unlink()
        else:
            self.storage.delete(key)

    def start_wal(self, backup_id: str) -> str:
        with self.storage.open(manifest_key(backup_id)) as fh:
            return str(json.loads(fh.read())["start_wal"])


@pytest.fixture(params=["local", "s3"])
def repo(
    request: pytest.FixtureRequest, make_cluster: ClusterFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Repo]:
    if request.param == "local":
        url = f"file://{make_cluster.dir('repo')}"

        def run_local(*args: str, env: dict[str, str] | None = None) -> Proc:
            return run_cli(*args, env=env, user="postgres", timeout=300)

        yield Repo(url, f"{PUSH} --repo {url} %p", run_local, open_storage(url, S3Settings()))
        return
    server: MotoServer = request.getfixturevalue("moto_server")
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    url = f"s3://{request.getfixturevalue('s3_bucket')}/cluster"
    setup = S3Setup(make_cluster.dir("s3conf"), server)

    def run_s3(*args: str, env: dict[str, str] | None = None) -> Proc:
        return run_cli("--config", str(setup.config), *args, env={**setup.env, **(env or {})},
                       user="postgres", timeout=300)  # fmt: skip

    push = (
        f"AWS_SHARED_CREDENTIALS_FILE={setup.credentials} {CLI} --config {setup.config} "
        f"wal push --repo {url} %p"
    )
    yield Repo(url, push, run_s3, open_storage(url, S3Settings()))


@dataclass
class Source:
    cluster: PgCluster
    old_backup: str
    new_backup: str
    rows: int


def write_step(cluster: PgCluster, step: int) -> None:
    cluster.execute(
        f"INSERT INTO t SELECT g, 'step {step}', repeat('x', 200) "
        f"FROM generate_series(1, {ROWS_PER_STEP}) g"
    )
    switch_and_wait(cluster)


def base_backup(repo: Repo, cluster: PgCluster, env: dict[str, str] | None = None) -> Proc:
    return repo.run("backup", "--repo", repo.url, "--dsn", cluster.conninfo(), "--kind", "base",
                    "--quiet", env=env)  # fmt: skip


def source_with_two_backups(make_cluster: ClusterFactory, repo: Repo) -> Source:
    """Backup 1; rows over several segments; backup 2; more rows; the source stopped."""
    cluster = make_cluster(start=False, archive_mode="on", archive_command=repo.archive_command)
    cluster.start()
    cluster.execute("CREATE TABLE t (n int, tag text, pad text)")
    switch_and_wait(cluster)
    first = base_backup(repo, cluster)
    assert first.returncode == 0, first.stderr
    for step in range(STEPS):
        write_step(cluster, step)
    second = base_backup(repo, cluster)
    assert second.returncode == 0, second.stderr
    for step in range(STEPS, 2 * STEPS):
        write_step(cluster, step)
    rows = int(cluster.scalar("SELECT count(*) FROM t"))
    cluster.stop()
    return Source(cluster, first.stdout.strip(), second.stdout.strip(), rows)


def restore_in_background(
    repo: Repo, pool: ThreadPoolExecutor, pgdata: Path, port: int, pause_at: str, pause_dir: Path,
    *target: str,
) -> Future[Proc]:  # fmt: skip
    env = {"CHAINLENS_PAUSE_AT": pause_at, "CHAINLENS_PAUSE_DIR": str(pause_dir)}
    return pool.submit(repo.run, "restore", "--repo", repo.url, *target, "--pgdata", str(pgdata),
                       "--start", "--port", str(port), env=env)  # fmt: skip


def processes_using(path: Path) -> list[str]:
    """Command lines of live processes that name `path` (a server of that data folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(path) in cmdline:
            found.append(cmdline)
    return found


def keys(storage: Storage, prefix: str) -> list[str]:
    return sorted(info.key for info in storage.list(prefix))


def test_prune_during_replay_keeps_what_the_restore_reads(
    make_cluster: ClusterFactory, repo: Repo
) -> None:
    source = source_with_two_backups(make_cluster, repo)
    wal_before = keys(repo.storage, "wal/")
    pause = make_cluster.dir("pause")
    pgdata = make_cluster.dir("restore") / "data"
    port = free_port()
    with ThreadPoolExecutor(1) as pool:
        # The restore starts from the OLD backup: a prune keeping one backup would remove
        # it and every segment before the new backup's start, which the replay still needs.
        running = restore_in_background(repo, pool, pgdata, port, "wal-fetch-segment", pause,
                                        "--latest", "--backup", source.old_backup)  # fmt: skip
        try:
            wait_for((pause / "wal-fetch-segment.reached").exists, timeout=120)
            assert (pgdata / "postmaster.pid").exists()  # the server is replaying
            assert keys(repo.storage, "locks/claims/"), "the restore holds no claim"
            pruned = repo.run("backup", "prune", "--repo", repo.url, "--keep-last", "1")
        finally:
            (pause / "wal-fetch-segment.go").touch()
        restored = running.result(timeout=300)
    copy = PgCluster(pgdata, port)
    make_cluster.made.append(copy)
    assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    assert f"kept backup {source.old_backup} and its WAL" in pruned.stderr, pruned.stderr
    assert "is restoring it" in pruned.stderr
    # Nothing the replay reads was removed: every segment from the old backup's start on.
    start = repo.start_wal(source.old_backup)[:24]
    needed = {k for k in wal_before if k.rsplit("/", 1)[-1][:24] >= start}
    assert len(needed) > 2 * STEPS and needed <= set(keys(repo.storage, "wal/"))
    assert keys(repo.storage, f"backups/{source.old_backup}/")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert "promoted" in restored.stdout
    assert int(copy.scalar("SELECT count(*) FROM t")) == source.rows
    copy.stop()
    # The claim ended with the restore: the next prune removes the old backup and its WAL.
    assert keys(repo.storage, "locks/claims/") == []
    again = repo.run("backup", "prune", "--repo", repo.url, "--keep-last", "1")
    assert again.returncode == 0, again.stderr
    assert source.old_backup in again.stdout and "kept backup" not in again.stderr
    assert len(keys(repo.storage, "wal/")) < len(wal_before)


def test_a_segment_vanishing_during_extraction_stops_recovery(
    make_cluster: ClusterFactory, repo: Repo
) -> None:
    source = source_with_two_backups(make_cluster, repo)
    pause = make_cluster.dir("pause")
    pgdata = make_cluster.dir("restore") / "data"
    port = free_port()
    segments = [k for k in keys(repo.storage, "wal/0") if len(k.rsplit("/", 1)[-1]) == 24]
    victim = segments[len(segments) // 2]  # after the old backup's start, before the end
    with ThreadPoolExecutor(1) as pool:
        running = restore_in_background(repo, pool, pgdata, port, "restore-extracting", pause,
                                        "--latest", "--backup", source.old_backup)  # fmt: skip
        try:
            wait_for((pause / "restore-extracting.reached").exists, timeout=120)
            repo.delete(victim)
        finally:
            (pause / "restore-extracting.go").touch()
        restored = running.result(timeout=300)
    name = victim.rsplit("/", 1)[-1]
    assert restored.returncode == 1, restored.stdout + restored.stderr
    assert "promoted" not in restored.stdout
    error = [line for line in restored.stderr.splitlines() if "error:" in line]
    assert error and f"required WAL segment {name} is missing" in error[0], restored.stderr
    # The server stopped itself (fatal restore_command): nothing runs, nothing promoted.
    assert processes_using(pgdata) == []
    assert not (pgdata / "postmaster.pid").exists()
    assert not list((pgdata / "pg_wal").glob("*.history"))
    log = (pgdata / "chainlens-restore.log").read_text()
    assert "exit code 255" in log and "ready to accept connections" not in log
    assert keys(repo.storage, "locks/claims/") == []


def test_a_backup_killed_holding_the_lock_does_not_block_the_next(
    make_cluster: ClusterFactory, repo: Repo
) -> None:
    cluster = make_cluster(start=False, archive_mode="on", archive_command=repo.archive_command)
    cluster.start()
    switch_and_wait(cluster)
    killed = base_backup(repo, cluster, env={"CHAINLENS_CRASH_AT": "repo-lock-acquired"})
    assert killed.returncode in (-9, 137), killed.stderr  # runuser reports 128 + SIGKILL
    assert keys(repo.storage, "locks/") == ["locks/repository.lock"]
    # Killed before it started pg_basebackup: no child of it is left behind.
    assert not [p for p in processes_using(Path(f"port={cluster.port}")) if "pg_basebackup" in p]
    started = time.monotonic()
    proc = repo.run("backup", "--repo", repo.url, "--dsn", cluster.conninfo(), "--kind", "base")
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert "took over the repository lock of `backup --kind base" in proc.stderr, proc.stderr
    assert f"on {os.uname().nodename}" in proc.stderr
    assert "no longer exists on this host" in proc.stderr
    assert took < 30, took  # not the lock's 120 s expiry


def test_a_prune_during_a_logical_restore_keeps_the_dump(
    make_cluster: ClusterFactory, repo: Repo
) -> None:
    """A logical restore holds a claim like every restore: a prune that lands while
    pg_restore reads the dump (pause point `logical-restoring`) keeps that backup."""
    cluster = make_cluster()
    cluster.execute("CREATE TABLE t AS SELECT g AS n FROM generate_series(1, 2000) g")
    made = []
    for _ in range(2):
        proc = repo.run("backup", "--repo", repo.url, "--dsn", cluster.conninfo(), "--kind",
                        "logical", "--quiet")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        made.append(proc.stdout.strip())
    old = made[0]
    pause = make_cluster.dir("pause")
    env = {"CHAINLENS_PAUSE_AT": "logical-restoring", "CHAINLENS_PAUSE_DIR": str(pause)}
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(repo.run, "restore", "--repo", repo.url, "--backup", old,
                              "--dsn", cluster.conninfo(), "--dbname", "back", env=env)  # fmt: skip
        try:
            wait_for((pause / "logical-restoring.reached").exists, timeout=120)
            pruned = repo.run("backup", "prune", "--repo", repo.url, "--keep-last", "1")
            assert pruned.returncode == 0, pruned.stderr
            assert f"keep {old} (in use by a running restore)" in pruned.stdout, pruned.stdout
        finally:
            (pause / "logical-restoring.go").touch()
        restored = running.result(timeout=300)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert int(cluster.scalar("SELECT count(*) FROM t", "back")) == 2000
    assert keys(repo.storage, "locks/claims/") == []
    again = repo.run("backup", "prune", "--repo", repo.url, "--keep-last", "1")
    assert again.returncode == 0 and "removed 1" in again.stdout, again.stdout + again.stderr
