"""Connections to the platform's databases, with connection failures translated once."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from typing import Any

import psycopg

from chainlens_ops.core.errors import ConfigError, ConnectionFailed
from chainlens_ops.settings.config import DatabaseTarget

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
    except psycopg.ProgrammingError as exc:
        raise bad_conninfo(exc, f"the connection string for the {target.name} database") from None
    except psycopg.OperationalError as exc:
        raise ConnectionFailed(
            f"cannot connect to the {target.name} database ({target.display}): {first_line(exc)}",
            hint=f"check --dsn, CHAINLENS_{target.name.upper()}_DSN or the config file",
        ) from None
    if on_connect is not None:
        on_connect(target)
    return conn


_UNKNOWN_KEYWORD = re.compile(
    r'(?:invalid connection option|invalid URI query parameter:) "([A-Za-z_][A-Za-z0-9_]{0,63})"'
)


def bad_conninfo(exc: BaseException, what: str) -> ConfigError:
    """One line for a connection string libpq refused to parse, naming the mistake.

    libpq's own message can quote the string, password included (`missing "=" after
    "hunter2"`): only a keyword name is ever repeated from it, never a value."""
    text = str(exc)
    unknown = _UNKNOWN_KEYWORD.search(text)
    if unknown:
        keyword = unknown.group(1)
        close = difflib.get_close_matches(keyword, libpq_keywords(), n=1, cutoff=0.6)
        return ConfigError(
            f"{what} has an unknown keyword {keyword!r}"
            + (f": did you mean {close[0]}?" if close else ""),
            hint="libpq's keywords are listed under 'Parameter Key Words' in its manual",
        )
    if 'missing "="' in text:
        why = "has a word without '=' (quote values that hold spaces)"
    elif "unterminated quoted string" in text:
        why = "has an unterminated quoted value"
    else:
        why = "is not valid libpq syntax"
    return ConfigError(f"{what} {why}", hint="use key=value pairs or a postgresql:// URI")


def libpq_keywords() -> list[str]:
    return [opt.keyword.decode() for opt in psycopg.pq.Conninfo.get_defaults()]


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's text (libpq messages run to several)."""
    for line in str(exc).splitlines():
        line = line.strip()
        if line:
            return line.removeprefix("connection failed: ")
    return type(exc).__name__


def server_version_num(conn: Connection) -> int:
    return int(conn.info.server_version)
