"""Scratch clusters that always clean up, and a registry a later run sweeps.

A drill (and a table-level restore) needs a throwaway server: a folder holding a data
copy, a server started on a free loopback port, both gone when the work is done. Use
`ScratchCluster` as a context manager:

    with ScratchCluster("drill", root=scratch_root, major=15) as scratch:
        for leftover in scratch.swept:  # dead runs' copies, removed on entry: say so
            notify(leftover.describe())
        ...  # put a data folder at scratch.pgdata (restore, initdb, copy)
        scratch.give_to_server_user()  # when root: the copy must be postgres's
        scratch.cluster.start()  # scratch.cluster is a LocalCluster on scratch.port
        ...  # connect with scratch.cluster.conninfo(dbname)
    # here the server is stopped (immediate) and the folder removed

On every exit path the server in the folder is stopped and the folder removed: normal
exit, an exception, and SIGTERM (while the context is open in the main thread, SIGTERM
raises `Terminated` there, so the `with` unwinds; the daemon's job timeout sends SIGTERM
to the job's process group before it kills it). A SIGKILL cannot be caught, so each
scratch folder is entered in a registry first: one small file per folder in
`<TMPDIR>/chainlens-ops-scratch-<uid>/`, naming the folder, the owning pid and that
process's start time. `sweep_scratch()` (run on entry to every ScratchCluster, and by
`backup prune`) stops the server and removes the folder of every entry whose owner is
gone, and returns what it removed so the caller can name it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from chainlens_ops.core.errors import OperationFailed
from chainlens_ops.pg.cluster import (
    DEFAULT_MAJOR,
    LocalCluster,
    free_port,
    give_to_server_user,
)
from chainlens_ops.pg.controldata import hot_standby_minimums, read_controldata

DATA = "data"
_STOP_TIMEOUT_S = 30
SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes, the last a NUL
SHORT_ROOT = "/tmp"  # a socket folder when the scratch folder is too deep for one
HBA = "pg_hba.conf"
IDENT = "pg_ident.conf"


class Terminated(OperationFailed):
    """SIGTERM arrived while a scratch cluster was open (its cleanup still runs)."""

    exit_code = 143  # 128 + SIGTERM, as a shell reports it


@dataclass(frozen=True)
class SweptScratch:
    folder: str
    purpose: str
    owner_pid: int
    server_stopped: bool
    bytes_freed: int

    def describe(self) -> str:
        server = "its server stopped, " if self.server_stopped else ""
        return (
            f"removed the scratch copy {self.folder} left by a dead {self.purpose} "
            f"(pid {self.owner_pid}): {server}{self.bytes_freed / 1e6:.1f} MB freed"
        )


def registry_dir() -> Path:
    """Where this user's scratch entries live (per user: /tmp is shared)."""
    return Path(tempfile.gettempdir()) / f"chainlens-ops-scratch-{os.geteuid()}"


def process_start(pid: int) -> str | None:
    """The start time of `pid` (clock ticks since boot, /proc), None if it is gone.
    With the pid it names a process uniquely: a reused pid has a later start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


class ScratchCluster:
    """A registered scratch folder with a `LocalCluster` in `<folder>/data`."""

    def __init__(
        self, purpose: str, *, root: Path | None = None, major: int = DEFAULT_MAJOR
    ) -> None:
        self.purpose = purpose
        self.root = root
        self.major = major
        self.folder = Path()
        self.cluster = LocalCluster(Path(), 0, major)
        self.swept: list[SweptScratch] = []  # what dead owners left, removed on entry
        self.socket_dir = Path()  # the folder, or a private one in SHORT_ROOT
        self._entry: Path | None = None
        self._previous_handler: Any = None
        self._handling = False

    @property
    def pgdata(self) -> Path:
        return self.folder / DATA

    @property
    def port(self) -> int:
        return self.cluster.port

    def __enter__(self) -> ScratchCluster:
        self.swept = sweep_scratch()
        self.folder = Path(tempfile.mkdtemp(prefix=f"chainlens-{self.purpose}-", dir=self.root))
        self.cluster = LocalCluster(self.pgdata, free_port(), self.major,
                                    self.folder / "server.log")  # fmt: skip
        self.socket_dir = self.folder
        if not socket_fits(self.folder):
            self.socket_dir = Path(tempfile.mkdtemp(prefix="clo-", dir=SHORT_ROOT))
        self._entry = _register(self.folder, self.purpose, self.major, self.socket_dir)
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, self._terminated)
            self._handling = True
        return self

    def set_major(self, major: int) -> None:
        """The server version is known only once the backup is chosen."""
        self.major = self.cluster.major = major
        if self._entry is not None:
            _write_entry(self._entry, self.folder, self.purpose, major, self.socket_dir)

    def _terminated(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM: the server first, at once (SIGQUIT, PostgreSQL's immediate shutdown,
        sent from here: no pg_ctl to start), so a supervisor's SIGKILL after a short
        grace cannot leave it running; then the usual unwinding removes the folder."""
        pid = self.cluster.postmaster_pid()
        if pid is not None and process_start(pid) is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGQUIT)
        _raise_terminated(signum, frame)

    def give_to_server_user(self) -> None:
        """Before a start as root: the server's user must own the copy."""
        give_to_server_user(self.folder)

    def conninfo(self, dbname: str = "postgres") -> str:
        """A connection to the scratch server through its own socket (server_settings)."""
        return scratch_conninfo(self.socket_dir, self.port, dbname)

    def server_settings(self) -> dict[str, str]:
        """The settings the scratch server runs with (see scratch_server_settings), once a
        data folder is at `pgdata`."""
        return scratch_server_settings(self.folder, self.socket_dir, self.pgdata, self.major)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._handling:  # a second SIGTERM must not cut the cleanup short
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            _remove(self.folder, self.major, self.socket_dir)
            if self._entry is not None:
                self._entry.unlink(missing_ok=True)
        finally:
            if self._handling:
                previous = self._previous_handler
                signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
                self._handling = False


def sweep_scratch() -> list[SweptScratch]:
    """Stop and remove the scratch clusters whose owning process is gone."""
    folder = registry_dir()
    swept: list[SweptScratch] = []
    try:
        entries = sorted(folder.glob("*.json"))
    except OSError:
        return swept
    for entry in entries:
        try:
            info = json.loads(entry.read_text())
            pid, started = int(info["pid"]), info.get("started")
            scratch, purpose = Path(info["folder"]), str(info["purpose"])
            major = int(info.get("major", DEFAULT_MAJOR))
            socket_dir = Path(info.get("socket") or scratch)
        except (OSError, ValueError, KeyError, TypeError):
            entry.unlink(missing_ok=True)  # unreadable: nothing can be swept from it
            continue
        alive = process_start(pid)
        if alive is not None and (started is None or alive == started):
            continue  # its owner still runs: its own cleanup will do this
        size = _size(scratch)
        stopped = _remove(scratch, major, socket_dir)
        entry.unlink(missing_ok=True)
        if size or stopped:
            swept.append(SweptScratch(str(scratch), purpose, pid, stopped, size))
    return swept


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated("stopped by SIGTERM")


def _register(scratch: Path, purpose: str, major: int, socket_dir: Path) -> Path:
    registry = registry_dir()
    registry.mkdir(mode=0o700, exist_ok=True)
    entry = registry / f"{scratch.name}.json"
    _write_entry(entry, scratch, purpose, major, socket_dir)
    return entry


def _write_entry(entry: Path, scratch: Path, purpose: str, major: int, socket_dir: Path) -> None:
    body = {"folder": str(scratch), "purpose": purpose, "pid": os.getpid(),
            "started": process_start(os.getpid()), "major": major,
            "created": time.time(), "socket": str(socket_dir)}  # fmt: skip
    tmp = entry.with_suffix(".tmp")
    tmp.write_text(json.dumps(body))
    os.replace(tmp, entry)


def _remove(scratch: Path, major: int, socket_dir: Path) -> bool:
    """Stop a server running in `scratch/data` (True if one was) and remove the folder
    (and its socket folder when that is elsewhere)."""
    stopped = False
    cluster = LocalCluster(scratch / DATA, 0, major)
    pid = cluster.postmaster_pid()
    if pid is not None and process_start(pid) is not None:
        stopped = cluster.stop("immediate", timeout=_STOP_TIMEOUT_S)
        if not stopped:  # pg_ctl could not: the postmaster's pid file still names it
            try:
                os.kill(pid, signal.SIGQUIT)  # PostgreSQL's immediate shutdown
                stopped = True
            except OSError:
                pass
    shutil.rmtree(scratch, ignore_errors=True)
    if socket_dir != scratch and socket_dir.name.startswith("clo-"):
        shutil.rmtree(socket_dir, ignore_errors=True)
    return stopped


def _size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def socket_fits(folder: Path) -> bool:
    """Whether a server socket in `folder` fits sun_path whatever the port."""
    return len(str(folder / ".s.PGSQL.65535").encode()) <= SOCKET_PATH_MAX


def scratch_conninfo(folder: Path, port: int, dbname: str = "postgres") -> str:
    """libpq: the socket in `folder`, as ourselves (restores refuse root: the server
    runs as the user who runs the restore)."""
    from psycopg.conninfo import make_conninfo

    return make_conninfo(host=str(folder), port=port, dbname=dbname, connect_timeout=5)


def scratch_server_settings(
    folder: Path, socket_dir: Path, pgdata: Path, major: int
) -> dict[str, str]:
    """A scratch server answers only on a socket in its own folder, or in a private one
    in /tmp when its folder is too deep for a socket path (mode 0700 either way: only
    its owner and root reach it), with its own pg_hba.conf trusting that socket, and never
    touches the live server's things, whatever the backed-up configuration says:
    no TCP listener, no external pid file, no log collector writing into the live
    server's log folder (the log goes to pg_ctl's file, which recovery is watched
    through), no streaming from the live primary, no synchronous standby to wait for,
    a small shared_buffers beside the live server, and the hot-standby minimums the
    primary ran with (pg_control), so reads are served during recovery. A backup
    without postgresql.conf (Debian keeps it in /etc/postgresql) gets an empty one."""
    (folder / HBA).write_text("# chainlens-ops scratch server: its own socket only\n"
                              "local all all trust\n")  # fmt: skip
    (folder / IDENT).write_text("")
    conf = pgdata / "postgresql.conf"
    if not conf.exists():
        conf.write_text("# chainlens-ops: the backup held no postgresql.conf\n")
    settings = {
        "listen_addresses": "",
        "unix_socket_directories": str(socket_dir),
        "unix_socket_permissions": "0700",
        "hba_file": str(folder / HBA),
        "ident_file": str(folder / IDENT),
        "external_pid_file": "",
        "logging_collector": "off",
        "log_destination": "stderr",
        "ssl": "off",
        "shared_buffers": "128MB",
        "huge_pages": "try",
        "primary_conninfo": "",
        "primary_slot_name": "",
        "synchronous_standby_names": "",
        "hot_standby": "on",
    }
    settings.update(hot_standby_minimums(read_controldata(pgdata, major)))
    return settings
