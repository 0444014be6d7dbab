"""Connections to the platform's databases, with connection failures translated once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

from chainlens_ops.config import DatabaseTarget
from chainlens_ops.errors import ConfigError, ConnectionFailed

APPLICATION_NAME = "chainlens-ops"
CONNECT_TIMEOUT_S = 10

Connection = psycopg.Connection[Any]

# Called with each target once a connection to it is open. Commands that change a
# database set it (chainlens_ops.cli.common.announce_connections) to say where they act.
on_connect: Callable[[DatabaseTarget], None] | None = None


def connect(target: DatabaseTarget, *, autocommit: bool = True) -> Connection:
    """Open a connection to `target` or raise ConnectionFailed with one readable line.

    When nothing names a server for it (no DSN, no seed variable, no PGHOST, PGDATABASE
    or PGSERVICE), refuse: libpq's local-socket default is a guess, not a choice."""
    if not target.source:
        upper = target.name.upper()
        raise ConfigError(
            f"nothing names a server for the {target.name} database",
            hint=f"set CHAINLENS_{upper}_DSN, [databases.{target.name}] in the config file, "
            "the seed's variables, PGHOST/PGSERVICE, or pass --dsn",
        )
    extra: dict[str, Any] = {"application_name": APPLICATION_NAME}
    if "connect_timeout" not in target.conninfo:
        extra["connect_timeout"] = CONNECT_TIMEOUT_S
    try:
        conn = psycopg.connect(target.conninfo, autocommit=autocommit, **extra)
    except psycopg.ProgrammingError:
        # psycopg's message can quote the string, password included: do not repeat it.
        raise ConfigError(
            f"the connection string for the {target.name} database is not valid libpq syntax",
            hint="use key=value pairs or a postgresql:// URI",
        ) from None
    except psycopg.OperationalError as exc:
        raise ConnectionFailed(
            f"cannot connect to the {target.name} database ({target.display}): {first_line(exc)}",
            hint=f"check --dsn, CHAINLENS_{target.name.upper()}_DSN or the config file",
        ) from None
    if on_connect is not None:
        on_connect(target)
    return conn


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's text (libpq messages run to several)."""
    for line in str(exc).splitlines():
        line = line.strip()
        if line:
            return line.removeprefix("connection failed: ")
    return type(exc).__name__


def server_version_num(conn: Connection) -> int:
    return int(conn.info.server_version)
