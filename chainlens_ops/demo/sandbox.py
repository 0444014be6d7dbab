"""The demo's sandbox clusters: where they live, initdb, start and stop as a non-root user.

PostgreSQL refuses to run as root, so when the demo runs as root every server command
runs as the `postgres` OS user (`runuser -u postgres --`). The data must then live in a
folder that user can reach: ./.demo when it can, else /var/tmp/chainlens-ops-demo-<uid>.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from chainlens_ops.pg.cluster import (
    PG_USER,
    LocalCluster,
    as_root,
    become_server_user,
    free_port,
    give_to_server_user,
    require_runuser,
    server_user_can_enter,
)

MAJOR = 15
__all__ = ["as_root", "become_server_user", "free_port", "give_to_server_user"]


def sandbox_root(cwd: Path | None = None) -> Path:
    """./.demo when the server's user can enter it, else a world-traversable fallback."""
    local = (cwd or Path.cwd()) / ".demo"
    if server_user_can_enter(local.parent):
        return local
    return Path(f"/var/tmp/chainlens-ops-demo-{os.geteuid()}")


@dataclass(frozen=True)
class Cluster:
    name: str
    pgdata: Path
    port: int

    @property
    def log(self) -> Path:
        return self.pgdata.parent / f"{self.name}.log"

    @property
    def server(self) -> LocalCluster:
        return LocalCluster(self.pgdata, self.port, MAJOR, self.log)

    def conninfo(self, dbname: str) -> str:
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={PG_USER} connect_timeout=5"


def init_cluster(cluster: Cluster, archive_command: str) -> None:
    require_runuser()
    cluster.pgdata.parent.mkdir(parents=True, exist_ok=True)
    give_to_server_user(cluster.pgdata.parent)
    cluster.server.initdb()
    cluster.server.configure(
        listen_addresses="127.0.0.1",
        unix_socket_directories=str(cluster.pgdata.parent),
        wal_level="replica",
        archive_mode="on",
        archive_command=archive_command,
        archive_timeout=10,
        max_wal_senders=4,
        shared_buffers="32MB",
        fsync="off",
    )


def start(cluster: Cluster) -> None:
    cluster.server.start(timeout=120, options=f"-k {cluster.pgdata.parent}")


def stop(pgdata: Path) -> None:
    LocalCluster(pgdata, 0, MAJOR).stop("fast")


def tear_down(root: Path) -> bool:
    """Stop every sandbox server under `root` and remove it; False when nothing was there."""
    if not root.exists():
        return False
    for pid_file in root.glob("*/data/postmaster.pid"):
        stop(pid_file.parent)
    shutil.rmtree(root)
    return True
