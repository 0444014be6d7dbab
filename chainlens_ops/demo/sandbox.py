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

from chainlens_ops.core.errors import OperationFailed
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
    """Stop every sandbox server under `root` and remove it; False when nothing was there.
    A server that does not stop raises, and nothing is removed (its data is still in use)."""
    if not root.exists():
        return False
    for pid_file in root.glob("*/data/postmaster.pid"):
        stop(pid_file.parent)
    from chainlens_ops.restore.physical import live_postmaster

    running = [p.parent for p in root.glob("*/data/postmaster.pid") if live_postmaster(p.parent)]
    if running:
        raise OperationFailed(
            f"the sandbox server in {running[0]} did not stop; {root} is kept",
            hint="stop that server as postgres (its postmaster.pid names the process), then "
            "run `chainlens-ops demo --down` again",
        )
    shutil.rmtree(root)
    return True


# Where the last demo's sandbox is, so `demo --down` finds it from any folder. Per user
# (the one who ran the demo, before it became the server's user), in that user's home.
def record_file() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "chainlens-ops" / "demo-sandbox"


def remember(root: Path) -> None:
    """Record `root` as this user's demo sandbox (best effort: a convenience for --down)."""
    path = record_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(f"{root}\n", encoding="utf-8")
    except OSError:
        pass


def forget(root: Path) -> None:
    if recorded() == root:
        record_file().unlink(missing_ok=True)


def recorded() -> Path | None:
    try:
        text = record_file().read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return Path(text) if text else None
