"""Is a PostgreSQL port already taken on this machine?

A server started on a taken port fails only once it binds, which for a restore comes
after minutes of extraction: callers ask first. A port is taken when a TCP listener
holds it on the loopback (or wildcard) address, or a live server's Unix-socket lock file
names it in one of the usual socket folders.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

DEFAULT_PORT = 5432
SOCKET_DIRS = (Path("/var/run/postgresql"), Path("/tmp"))


def port_in_use(port: int) -> str | None:
    """Why `port` cannot be used (`a server is listening`, ...), or None when it is free."""
    for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                # As the postmaster binds: a socket in TIME_WAIT does not count.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((address, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"something is listening on {address} port {port}"
            if exc.errno in (errno.EACCES, errno.EPERM):
                return f"port {port} is privileged"
            # EADDRNOTAVAIL/EAFNOSUPPORT: no IPv6 loopback here; nothing to learn.
    for folder in SOCKET_DIRS:
        lock = folder / f".s.PGSQL.{port}.lock"
        if lock.exists() and _lock_holder_alive(lock):
            return f"a PostgreSQL server holds {lock}"
    return None


def _lock_holder_alive(lock: Path) -> bool:
    try:
        pid = int(lock.read_text().split("\n", 1)[0].strip().lstrip("-"))
    except OSError:
        return True  # present and unreadable (another user's 0600 lock): assume live
    except ValueError:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
