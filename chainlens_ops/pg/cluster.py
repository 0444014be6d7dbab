"""Control of one local PostgreSQL cluster: initdb, configure, start on a loopback port,
wait, promote, stop. The one place that runs `initdb` and `pg_ctl`.

Restore (the restored server), drills and table restores (their scratch servers, see
`chainlens_ops.pg.scratch`), the demo's sandboxes, the tests' harness and the benchmarks
all drive clusters through `LocalCluster`.

PostgreSQL refuses to run as root, so when this process is root every server command
runs as the `postgres` OS user (`runuser -u postgres --`), and the data must be owned by
that user (`give_to_server_user`). The binaries run through `chainlens_ops.pg.process`
(argv lists, bounded output, stderr kept for the error line), found per major version.
"""

from __future__ import annotations

import os
import pwd
import secrets
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from chainlens_ops.core.errors import ConfigError, OperationFailed, PgCommandError
from chainlens_ops.pg.binaries import find_binary
from chainlens_ops.pg.process import PgResult, run_pg

PG_USER = "postgres"
DEFAULT_MAJOR = 15
LOG_TAIL_LINES = 20
PORT_RANGE = (20000, 40000)
PORT_CLAIM_TTL_S = 6 * 3600  # a claim older than this belongs to a finished run


class ServerStartFailed(OperationFailed):
    """`pg_ctl start` failed; `log_tail` holds the end of the server's log."""

    def __init__(self, message: str, reason: str, log_tail: list[str]) -> None:
        super().__init__(message)
        self.reason = reason  # pg_ctl's own error line
        self.log_tail = log_tail


def as_root() -> bool:
    return os.geteuid() == 0


def server_argv(argv: Sequence[str]) -> list[str]:
    """`argv` as the user the server runs as (`postgres` when we are root)."""
    return ["runuser", "-u", PG_USER, "--", *argv] if as_root() else [str(a) for a in argv]


def give_to_server_user(path: Path) -> None:
    """The server's user owns `path` (recursively) when we run as root."""
    if not as_root():
        return
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


def server_user_can_enter(path: Path) -> bool:
    """Whether the server's user may traverse `path` (always, when we are not root)."""
    if not as_root():
        return True
    probe = path if path.exists() else path.parent
    return run_pg(server_argv(["test", "-x", str(probe)]), check=False).returncode == 0


def free_port(claims: Path | None = None) -> int:
    """A free loopback port.

    With `claims`, each port is also claimed by creating `claims/<port>` exclusively, so
    two processes (test workers, concurrent drills) never pick the same port between the
    probe and the server's bind; binding port 0 alone cannot promise that.
    """
    if claims is None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
    claims.mkdir(mode=0o777, exist_ok=True)
    low, high = PORT_RANGE
    start = low + secrets.randbelow(high - low)
    for offset in range(high - low):
        port = low + (start - low + offset) % (high - low)
        claim = claims / str(port)
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                if time.time() - claim.stat().st_mtime < PORT_CLAIM_TTL_S:
                    continue
                claim.unlink()
                fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except OSError:
                continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use by something else: keep the claim, move on
        return port
    raise OperationFailed(f"no free loopback port left in {low}-{high}")


def loopback_conninfo(port: int, dbname: str = "postgres", user: str | None = None) -> str:
    """A libpq string for a local server: TCP on 127.0.0.1 (unless $PGHOST says where)."""
    conninfo = f"port={port} dbname={dbname} connect_timeout=5"
    if not os.environ.get("PGHOST"):
        conninfo += " host=127.0.0.1"
    if user:
        conninfo += f" user={user}"
    return conninfo


def quote_setting(value: object) -> str:
    """A postgresql.conf value: always quoted (PostgreSQL accepts it for every type)."""
    if isinstance(value, bool):
        value = "on" if value else "off"
    return "'" + str(value).replace("'", "''") + "'"


@dataclass
class LocalCluster:
    """One cluster's data folder and the loopback port it runs on."""

    pgdata: Path
    port: int
    major: int = DEFAULT_MAJOR
    log_path: Path | None = None  # default: server.log beside the data folder

    @property
    def log(self) -> Path:
        return self.log_path or self.pgdata.parent / "server.log"

    def conninfo(self, dbname: str = "postgres", user: str | None = None) -> str:
        return loopback_conninfo(self.port, dbname, user)

    # -- the binaries -------------------------------------------------------------------

    def pg_ctl(self, *args: str, timeout: float = 120, check: bool = True) -> PgResult:
        argv = server_argv([find_binary("pg_ctl", self.major), "-D", str(self.pgdata), *args])
        return run_pg(argv, timeout=timeout, check=check)

    def initdb(
        self,
        *,
        user: str = PG_USER,
        wal_segsize_mb: int | None = None,
        no_sync: bool = False,
        extra: Sequence[str] = (),
    ) -> None:
        """A new cluster in `pgdata` (its parent must exist and be the server user's)."""
        argv = [find_binary("initdb", self.major), "-D", str(self.pgdata), "-U", user,
                "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", *extra]  # fmt: skip
        if wal_segsize_mb is not None:
            argv.append(f"--wal-segsize={wal_segsize_mb}")
        if no_sync:
            argv.append("--no-sync")
        try:
            run_pg(server_argv(argv), timeout=300)
        except PgCommandError as exc:
            raise OperationFailed(f"initdb of {self.pgdata} failed: {exc.one_line()}") from None

    def configure(self, **settings: object) -> None:
        """Append settings to postgresql.conf (a start, restart or reload applies them)."""
        with (self.pgdata / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.writelines(f"{k} = {quote_setting(v)}\n" for k, v in settings.items())

    def start(self, *, wait: bool = True, timeout: float = 60, options: str = "") -> None:
        """`pg_ctl start` on `port`. With wait=False pg_ctl returns at once (a recovery
        may take longer than any fixed wait: the caller polls for the state it needs)."""
        waiting = ["-w", "-t", str(int(timeout))] if wait else ["-W"]
        server_options = f"-p {self.port} {options}".strip()
        try:
            self.pg_ctl("-l", str(self.log), *waiting, "-o", server_options, "start",
                        timeout=timeout + 30)  # fmt: skip
        except PgCommandError as exc:
            raise ServerStartFailed(
                f"the server in {self.pgdata} did not start: {exc.one_line()} (log {self.log})",
                exc.one_line(),
                self.log_tail(),
            ) from None

    def stop(self, mode: str = "fast", timeout: float = 120) -> bool:
        """Stop the server if it runs; False when there was none to stop."""
        if not (self.pgdata / "postmaster.pid").exists():
            return False
        result = self.pg_ctl("-m", mode, "-w", "-t", str(int(timeout)), "stop",
                             timeout=timeout + 30, check=False)  # fmt: skip
        return result.returncode == 0

    def promote(self, timeout: float = 60) -> None:
        self.pg_ctl("-w", "-t", str(int(timeout)), "promote", timeout=timeout + 30)

    def reload(self) -> None:
        self.pg_ctl("reload")

    def is_running(self) -> bool:
        return self.pg_ctl("status", check=False).returncode == 0

    def postmaster_pid(self) -> int | None:
        """The pid in postmaster.pid, or None when there is no (readable) pid file."""
        try:
            first = (self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first)
        except (OSError, ValueError):
            return None

    def accepting_connections(self) -> bool:
        """Whether *this* server listens: postmaster.pid's status line says `ready` (or
        `standby`, a hot standby). A connection to the port alone cannot tell: another
        server may hold the port while this one is still failing to bind it."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[7].strip() in ("ready", "standby")

    # -- the log ------------------------------------------------------------------------

    def read_log(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> list[str]:
        return self.read_log().splitlines()[-lines:]


def require_runuser() -> None:
    """Root can only run a server through `runuser`: say so plainly when it is missing."""
    from shutil import which

    if as_root() and which("runuser") is None:
        raise ConfigError("running as root needs `runuser` to start PostgreSQL as postgres")
