"""Throwaway PostgreSQL clusters and the installed CLI, for tests run as root.

PostgreSQL refuses to run as root, so clusters run as the `postgres` OS user, and the
server runs `archive_command`/`restore_command` as that user. Hence:

- the tool under test is the non-editable install in a venv made from Debian's
  /usr/bin/python3 in a world-traversable folder (`make install`; $CHAINLENS_TEST_VENV);
- cluster data and repositories live under a world-traversable scratch base
  ($CHAINLENS_TEST_SCRATCH, default /var/tmp/chainlens-ops-tests), never under pytest's
  0700 temp base or the clone, which `postgres` may not be able to enter;
- `initdb` runs once per test process into a template; each cluster is a copy of it.

Cluster control (initdb, pg_ctl, ports) is the tool's own, `chainlens_ops.pg.cluster`:
`PgCluster` is a `LocalCluster` with the tests' conveniences (connect, execute, scalar).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from chainlens_ops.core.errors import ChainlensError
from chainlens_ops.pg import cluster as pgcluster
from chainlens_ops.pg.cluster import LocalCluster

PG_BIN = Path(os.environ.get("CHAINLENS_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
VENV = Path(os.environ.get("CHAINLENS_TEST_VENV", "/opt/chainlens-ops/venv"))
CLI = VENV / "bin" / "chainlens-ops"
SCRATCH_ROOT = Path(os.environ.get("CHAINLENS_TEST_SCRATCH", "/var/tmp/chainlens-ops-tests"))
PG_USER = "postgres"
SCRAM_USER = "chainlens_scram"
# A throwaway password for throwaway clusters, made per run: nothing real to leak.
SCRAM_PASSWORD = secrets.token_urlsafe(12)

_PG_HBA = """\
host all {scram} 127.0.0.1/32 scram-sha-256
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
"""

_BASE_CONF = """
# chainlens-ops test harness
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
fsync = off
shared_buffers = 32MB
max_connections = 40
max_wal_senders = 4
wal_level = replica
log_line_prefix = '%m [%p] '
"""


def pg_uid_gid() -> tuple[int, int]:
    entry = pwd.getpwnam(PG_USER)
    return entry.pw_uid, entry.pw_gid


def as_postgres(argv: Sequence[str]) -> list[str]:
    return ["runuser", "-u", PG_USER, "--", *argv]


PORT_CLAIMS = Path("/tmp/chainlens-test-ports")


def free_port() -> int:
    """A loopback port no other test process (xdist worker, or another engineer's run)
    is handed: each port is claimed under /tmp/chainlens-test-ports (see
    `chainlens_ops.pg.cluster.free_port`)."""
    return pgcluster.free_port(PORT_CLAIMS)


def make_shared_dir(path: Path, *, owner_postgres: bool = True, mode: int = 0o755) -> Path:
    """A folder the postgres user can enter (and own, so the tool can write there)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    if owner_postgres:
        uid, gid = pg_uid_gid()
        os.chown(path, uid, gid)
    return path


def run_checked(argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False, **kwargs)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {proc.returncode}\nstdout: {proc.stdout}\n"
            f"stderr: {proc.stderr}"
        )
    return proc


def create_template(base: Path) -> Path:
    """initdb once (1 MB WAL segments keep WAL tests fast) with a scram role."""
    make_shared_dir(base)
    data = base / "data"
    cluster = PgCluster(data, free_port())
    cluster.initdb(wal_segsize_mb=1, no_sync=True)
    with (data / "postgresql.conf").open("a") as conf:
        conf.write(_BASE_CONF)
    (data / "pg_hba.conf").write_text(_PG_HBA.format(scram=SCRAM_USER))
    cluster.start()
    with cluster.connect() as conn:
        conn.execute(
            psycopg.sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                psycopg.sql.Identifier(SCRAM_USER), psycopg.sql.Literal(SCRAM_PASSWORD)
            )
        )
    cluster.stop()
    return data


@dataclass
class PgCluster(LocalCluster):
    """One throwaway cluster, run as the postgres OS user on a loopback port."""

    extra_conf: list[str] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.pgdata

    @property
    def base(self) -> Path:
        return self.pgdata.parent

    def conninfo(self, dbname: str = "postgres", user: str | None = PG_USER, **extra: str) -> str:
        parts = [f"host=127.0.0.1 port={self.port} dbname={dbname} user={user or PG_USER}"]
        parts += [f"{k}={v}" for k, v in extra.items()]
        return " ".join(parts)

    def connect(self, dbname: str = "postgres", autocommit: bool = True) -> psycopg.Connection[Any]:
        return psycopg.connect(self.conninfo(dbname), autocommit=autocommit)

    def execute(self, query: str, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        with self.connect(dbname) as conn:
            cur = conn.execute(query)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def scalar(self, query: str, dbname: str = "postgres") -> Any:
        rows = self.execute(query, dbname)
        return rows[0][0] if rows else None

    def start(self, *, wait: bool = True, timeout: float = 60, options: str = "") -> None:
        try:
            super().start(wait=wait, timeout=timeout, options=options)
        except ChainlensError as exc:
            raise RuntimeError(f"{exc}\nserver log:\n{self.read_log()[-3000:]}") from None

    def restart(self) -> None:
        self.stop()
        self.start()

    def createdb(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))


def clone_cluster(template: Path, base: Path) -> PgCluster:
    """A fresh cluster: a copy of the template data folder in `base`, on a free port."""
    make_shared_dir(base)
    data = base / "data"
    # cp -a keeps owner postgres and mode 0700; far faster than another initdb.
    run_checked(["cp", "-a", str(template), str(data)])
    return PgCluster(data, free_port())


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment for the CLI with no stray configuration from this machine."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CHAINLENS_", "PG", "AWS_", "SUPABASE_", "POSTGRES_"))
        or k.startswith("CHAINLENS_TEST_")
    }
    env["PATH"] = f"{VENV / 'bin'}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env.setdefault("HOME", "/tmp")
    if extra:
        env.update(extra)
    return env


def run_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    user: str | None = None,
    timeout: float = 120,
    cwd: Path | str = "/",
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the installed `chainlens-ops` as root, or as `user` (e.g. postgres)."""
    argv = [str(CLI), *args]
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    return subprocess.run(
        argv,
        env=cli_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        input=input,
        check=False,
    )


def wait_for(predicate: Any, timeout: float = 30, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(interval)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


Fingerprint = dict[tuple[str, str], tuple[int, str]]


def fingerprint(cluster: PgCluster) -> Fingerprint:
    """Every user table of every database that takes connections (templates too):
    (database, schema.table) -> row count and an md5 over its ordered rows. Two clusters
    hold the same data exactly when their fingerprints are equal."""
    prints: Fingerprint = {}
    databases = cluster.execute("SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1")
    for (db,) in databases:
        tables = cluster.execute(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname NOT IN "
            "('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' "
            "ORDER BY 1",
            dbname=db,
        )
        for (table,) in tables:
            row = cluster.execute(
                f"SELECT count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) "
                f"FROM {table} t",
                dbname=db,
            )[0]
            prints[(str(db), str(table))] = (int(row[0]), str(row[1]))
    return prints
