"""A `kill -9` of a command leaves nothing running and, after the next backup or prune,
nothing on disk or in the bucket: at named crash points, on a local repository and S3.

pg_dump and pg_restore are kept waiting by a lock the test holds (ACCESS EXCLUSIVE on a
table they must read or drop), so a child that did not die with its command would still
be there when the test looks: the assertions cannot pass by a race.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import ClusterFactory, MotoServer
from pgharness import PgCluster, run_cli, wait_for
from test_backup import TABLES, counts, fill
from test_wal_s3 import S3Setup, client

KILLED = (137, -9)  # runuser reports the SIGKILL of its child as 128 + 9
# The lock a killed command leaves expires soon (given to killed commands alone: a
# living one on a busy machine may not refresh its lock within 3 s).
TTL = {"CHAINLENS_REPO_LOCK_TTL": "3"}


def processes(name: str, marker: str) -> list[int]:
    """Pids of running `name` processes (pg_dump, pg_restore) whose command line holds
    `marker` (a cluster's port)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            argv
            and os.path.basename(argv[0]) == name.encode()
            and marker.encode() in b" ".join(argv)
        ):
            found.append(int(pid))
    return found


def gone(name: str, marker: str) -> bool:
    return not processes(name, marker)


@contextmanager
def table_locked(pg: PgCluster, db: str, table: str) -> Iterator[psycopg.Connection[Any]]:
    """ACCESS EXCLUSIVE on `table` until the block ends: pg_dump (and a pg_restore
    --clean) wait for it. A backend blocked on a lock notices its client is gone only
    when it checks: with client_connection_check_interval set (as production servers
    should have it), the one a killed pg_dump/pg_restore left waiting ends within a
    second, whether the kill came before its lock request or during the wait."""
    pg.execute("ALTER SYSTEM SET client_connection_check_interval = '200ms'")
    pg.execute("SELECT pg_reload_conf()")
    conn = pg.connect(db, autocommit=False)
    try:
        conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        yield conn
    finally:
        conn.rollback()
        conn.close()


def waiting_on_lock(pg: PgCluster, db: str) -> bool:
    return bool(
        pg.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            f"AND datname = '{db}'"
        )
    )


class Repo:
    """A local or S3 repository, run as the postgres user; `leftovers()` is everything
    in it that is not a published object of a backup with a manifest."""

    def __init__(self, kind: str, make_cluster: ClusterFactory, request: pytest.FixtureRequest):
        self.kind = kind
        self.spool = make_cluster.dir("spool")
        self.env = {"CHAINLENS_SPOOL_DIR": str(self.spool)}
        self.config: list[str] = []
        if kind == "local":
            self.path = make_cluster.dir("repo")
            self.url = str(self.path)
            return
        server: MotoServer = request.getfixturevalue("moto_server")
        self.bucket: str = request.getfixturevalue("s3_bucket")
        setup = S3Setup(make_cluster.dir("s3conf"), server)
        self.env.update(setup.env)
        self.config = ["--config", str(setup.config)]
        self.client = client(server)
        self.url = f"s3://{self.bucket}/r"

    def cli(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        if env and "CHAINLENS_CRASH_AT" in env:
            env = {**env, **TTL}
        return run_cli(*self.config, *args, env={**self.env, **(env or {})}, user="postgres")

    def uploads(self) -> list[str]:
        if self.kind == "local":
            return [str(p) for p in self.path.rglob(".*.tmp")]
        answer = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix="r/")
        return [u["Key"] for u in answer.get("Uploads", [])]

    def backup_folders(self) -> list[str]:
        if self.kind == "local":
            return sorted(p.name for p in (self.path / "backups").iterdir())
        answer = self.client.list_objects_v2(Bucket=self.bucket, Prefix="r/backups/")
        return sorted({o["Key"].split("/")[2] for o in answer.get("Contents", [])})


@pytest.fixture(params=["local", "s3"])
def repo(
    request: pytest.FixtureRequest, make_cluster: ClusterFactory
) -> Repo:  # the repository, and a spool folder for its commands
    return Repo(request.param, make_cluster, request)


def test_killed_jobs_backup_takes_pg_dump_along_and_prune_frees_its_spool(
    make_cluster: ClusterFactory, repo: Repo
) -> None:
    pg = make_cluster()
    fill(pg, "shop")
    port = f"port={pg.port} "
    with table_locked(pg, "shop", "accounts"):
        proc = repo.cli("backup", "--repo", repo.url, "--dsn", pg.conninfo("shop"), "--kind",
                        "logical", "--jobs", "2",
                        env={"CHAINLENS_CRASH_AT": "backup-dumping"})  # fmt: skip
        assert proc.returncode in KILLED, proc.stderr
        # pg_dump would wait for the lock for ever: it died with the command instead.
        wait_for(lambda: gone("pg_dump", port), timeout=10)
        wait_for(lambda: not waiting_on_lock(pg, "shop"), timeout=10)
    (spooled,) = repo.spool.iterdir()
    assert spooled.name.startswith("chainlens-backup-") and (spooled / "owner").exists()

    dry = repo.cli("backup", "prune", "--repo", repo.url, "--keep-last", "1", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "1 spool folder(s)" in dry.stdout and "would free" in dry.stdout, dry.stdout
    assert spooled.exists()
    pruned = repo.cli("backup", "prune", "--repo", repo.url, "--keep-last", "1")
    assert pruned.returncode == 0, pruned.stderr
    assert re.search(r"1 spool folder\(s\) \(.*chainlens-backup-.*\): freed", pruned.stdout)
    assert list(repo.spool.iterdir()) == []


def test_a_spooled_dump_and_an_unfinished_upload_are_freed_by_the_next_backup(
    make_cluster: ClusterFactory, repo: Repo
) -> None:
    pg = make_cluster()
    fill(pg, "shop")
    # Random text compresses to about half: a dump of ~13 MiB, more than one S3 part.
    pg.execute("CREATE TABLE noise AS SELECT g, md5(random()::text) || md5(random()::text) AS v "
               "FROM generate_series(1, 400000) g", dbname="shop")  # fmt: skip
    dsn = pg.conninfo("shop")

    spooled = repo.cli("backup", "--repo", repo.url, "--dsn", dsn, "--kind", "logical",
                       "--jobs", "2", env={"CHAINLENS_CRASH_AT": "backup-spooled"})  # fmt: skip
    assert spooled.returncode in KILLED, spooled.stderr
    port = f"port={pg.port} "
    assert gone("pg_dump", port)
    (folder,) = repo.spool.iterdir()
    dumped = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert dumped > 20 * 1024 * 1024  # the whole dump, uncompressed

    # The next backup frees that spool first (and is then killed mid-upload itself).
    cut = repo.cli("backup", "--repo", repo.url, "--dsn", dsn, "--kind", "logical",
                   env={"CHAINLENS_CRASH_AT": "backup-mid-upload"})  # fmt: skip
    assert cut.returncode in KILLED, cut.stderr
    assert re.search(r"leftovers of killed commands: 1 spool folder\(s\) \(.*chainlens-backup-"
                     r".*\): freed ", cut.stderr), cut.stderr  # fmt: skip
    assert freed(cut.stderr) >= dumped
    assert list(repo.spool.iterdir()) == [] and gone("pg_dump", port)
    assert repo.uploads(), "the killed upload left nothing to clean: the test proves nothing"

    made = repo.cli("backup", "--repo", repo.url, "--dsn", dsn, "--kind", "logical")
    assert made.returncode == 0, made.stderr
    said = [line for line in made.stderr.splitlines() if "leftovers of killed commands" in line]
    assert len(said) == 1, made.stderr
    # The killed upload, and any temp file the killed command was writing when it died
    # (its lock renewal, say): all of them freed.
    assert re.search(r"1 backup\(s\) without a manifest, \d+ unfinished upload\(s\) or temp "
                     r"file\(s\)", said[0]), said[0]  # fmt: skip
    assert freed(said[0]) >= 8 * 1024 * 1024  # a whole S3 part, or 9 MiB of a temp file
    assert repo.uploads() == []
    assert repo.backup_folders() == [made.stdout.strip()]


def freed(text: str) -> float:
    found = re.search(r"freed ([\d.]+) (B|KiB|MiB|GiB)", text)
    assert found, text
    return float(found.group(1)) * 1024 ** ["B", "KiB", "MiB", "GiB"].index(found.group(2))


def test_killed_jobs_restore_takes_pg_restore_along(make_cluster: ClusterFactory) -> None:
    pg = make_cluster()
    fill(pg, "shop")
    repo = Repo("local", make_cluster, None)  # type: ignore[arg-type]
    made = repo.cli("backup", "--repo", repo.url, "--dsn", pg.conninfo("shop"), "--kind",
                    "logical", "--jobs", "2", "--quiet")  # fmt: skip
    assert made.returncode == 0, made.stderr
    restore = ["restore", "--repo", repo.url, "--backup", made.stdout.strip(), "--dbname",
               "copy", "--dsn", pg.conninfo(), "--jobs", "2"]  # fmt: skip
    first = repo.cli(*restore)
    assert first.returncode == 0, first.stderr
    port = f"port={pg.port} "
    # Again over the copy (--clean), whose table the test holds: pg_restore waits to drop it.
    with table_locked(pg, "copy", "events"):
        proc = repo.cli(*restore, "--clean", env={"CHAINLENS_CRASH_AT": "restore-running"})
        assert proc.returncode in KILLED, proc.stderr
        wait_for(lambda: gone("pg_restore", port), timeout=10)
        wait_for(lambda: not waiting_on_lock(pg, "copy"), timeout=10)
    (spooled,) = repo.spool.iterdir()
    assert spooled.name.startswith("chainlens-restore-")
    assert counts(pg, "copy") == TABLES  # the killed restore dropped nothing

    pruned = repo.cli("backup", "prune", "--repo", repo.url, "--keep-last", "1")
    assert pruned.returncode == 0, pruned.stderr
    assert "1 spool folder(s)" in pruned.stdout and "freed" in pruned.stdout, pruned.stdout
    assert list(repo.spool.iterdir()) == []


class CuttingProxy:
    """A TCP proxy to moto that passes `limit` bytes of requests, then closes every
    connection and refuses new ones: S3 gone in the middle of an upload."""

    def __init__(self, upstream_port: int, limit: int) -> None:
        self.upstream = upstream_port
        self.limit = limit
        self.sent = 0
        self.cut = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.cut.is_set():
            try:
                client_sock, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            self.socks += [client_sock, upstream]
            for src, dst, counted in (
                (client_sock, upstream, True),
                (upstream, client_sock, False),
            ):
                threading.Thread(target=self._pump, args=(src, dst, counted), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, counted: bool) -> None:
        try:
            while data := src.recv(65536):
                if counted:
                    self.sent += len(data)
                    if self.sent > self.limit:
                        self.close()
                        return
                dst.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.cut.set()
        for sock in [self.listener, *self.socks]:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def test_s3_lost_mid_upload_is_reported_as_the_upload_error_not_the_lock(
    make_cluster: ClusterFactory, moto_server: MotoServer, s3_bucket: str
) -> None:
    pg = make_cluster()
    fill(pg, "shop")
    pg.execute("CREATE TABLE noise AS SELECT g, md5(random()::text) || md5(random()::text) AS v "
               "FROM generate_series(1, 400000) g", dbname="shop")  # fmt: skip
    proxy = CuttingProxy(moto_server.port, limit=4 * 1024 * 1024)
    env = moto_server.env()
    folder = make_cluster.dir("s3cut")
    config = folder / "config.toml"
    config.write_text(f'[s3]\nendpoint_url = "http://127.0.0.1:{proxy.port}"\n'
                      f'region = "{env["AWS_DEFAULT_REGION"]}"\nmax_attempts = 2\n'
                      "connect_timeout = 2\nread_timeout = 5\n")  # fmt: skip
    config.chmod(0o644)
    creds = {k: v for k, v in env.items() if k.startswith("AWS_") and k != "AWS_ENDPOINT_URL"}
    try:
        proc = run_cli("--config", str(config), "backup", "--repo", f"s3://{s3_bucket}/r",
                       "--dsn", pg.conninfo("shop"), "--kind", "logical", "--quiet",
                       env=creds, user="postgres")  # fmt: skip
    finally:
        proxy.close()
    assert proxy.cut.is_set(), "the upload was never cut: the test proves nothing"
    assert proc.returncode != 0
    (line,) = proc.stderr.strip().splitlines()
    assert "backups/" in line and "dump" in line, line  # the object whose upload failed
    assert "lock" not in line, line
