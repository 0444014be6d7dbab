"""The demo's sandbox clusters: where they live, initdb, start and stop as a non-root user.

PostgreSQL refuses to run as root, so when the demo runs as root every server command
runs as the `postgres` OS user (`runuser -u postgres --`). The data must then live in a
folder that user can reach: ./.demo when it can, else /var/tmp/chainlens-ops-demo-<uid>.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from chainlens_ops.errors import ConfigError, OperationFailed
from chainlens_ops.pg.binaries import find_binary

PG_USER = "postgres"
MAJOR = 15


def as_root() -> bool:
    return os.geteuid() == 0


def server_argv(argv: list[str]) -> list[str]:
    """`argv` as the user the server runs as."""
    return ["runuser", "-u", PG_USER, "--", *argv] if as_root() else argv


def _reachable(path: Path) -> bool:
    if not as_root():
        return True
    probe = path if path.exists() else path.parent
    done = subprocess.run(server_argv(["test", "-x", str(probe)]), check=False)
    return done.returncode == 0


def sandbox_root(cwd: Path | None = None) -> Path:
    """./.demo when the server's user can enter it, else a world-traversable fallback."""
    local = (cwd or Path.cwd()) / ".demo"
    if _reachable(local.parent):
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

    def conninfo(self, dbname: str) -> str:
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={PG_USER} connect_timeout=5"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def give_to_server_user(path: Path) -> None:
    """The server's user owns `path` (recursively) when we run as root."""
    if as_root():
        entry = pwd.getpwnam(PG_USER)
        for root, dirs, files in os.walk(path):
            os.chown(root, entry.pw_uid, entry.pw_gid)
            for name in dirs + files:
                os.lchown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


def become_server_user() -> None:
    """Drop root for the rest of this process: it runs as the server's user from here on."""
    entry = pwd.getpwnam(PG_USER)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    os.environ.update(HOME=entry.pw_dir, USER=PG_USER, LOGNAME=PG_USER)


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(server_argv(argv), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise OperationFailed(f"{what} failed: {tail[0]}")


def init_cluster(cluster: Cluster, archive_command: str) -> None:
    if shutil.which("runuser") is None and as_root():
        raise ConfigError("the demo runs as root and needs `runuser` to start PostgreSQL")
    cluster.pgdata.parent.mkdir(parents=True, exist_ok=True)
    give_to_server_user(cluster.pgdata.parent)
    _run([find_binary("initdb", MAJOR), "-D", str(cluster.pgdata), "-U", PG_USER,
          "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"], "initdb")  # fmt: skip
    settings = {
        "listen_addresses": "'127.0.0.1'",
        "unix_socket_directories": f"'{cluster.pgdata.parent}'",
        "wal_level": "replica",
        "archive_mode": "on",
        "archive_command": "'" + archive_command.replace("'", "''") + "'",
        "archive_timeout": "10",
        "max_wal_senders": "4",
        "shared_buffers": "32MB",
        "fsync": "off",
    }
    with open(cluster.pgdata / "postgresql.auto.conf", "a", encoding="utf-8") as fh:
        fh.writelines(f"{k} = {v}\n" for k, v in settings.items())


def start(cluster: Cluster) -> None:
    _run([find_binary("pg_ctl", MAJOR), "-D", str(cluster.pgdata), "-l", str(cluster.log),
          "-o", f"-p {cluster.port} -k {cluster.pgdata.parent}", "-w", "-t", "120", "start"],
         f"starting the {cluster.name} sandbox server (log {cluster.log})")  # fmt: skip


def stop(pgdata: Path) -> None:
    if (pgdata / "postmaster.pid").exists():
        subprocess.run(
            server_argv([find_binary("pg_ctl", MAJOR), "-D", str(pgdata), "-m", "fast", "-w",
                         "stop"]), capture_output=True, check=False)  # fmt: skip


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
            hint=f"stop it with: {find_binary('pg_ctl', MAJOR)} -D {running[0]} stop "
            "-m immediate (as postgres), then run `chainlens-ops demo --down` again",
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
