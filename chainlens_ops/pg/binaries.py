"""Finding PostgreSQL's binaries and giving them a connection without a password in argv.

The process that runs them is `chainlens_ops.pg.process`; this module decides *what* to
run: the binary of the server's major version, and a connection string with the
password moved into the child's environment (PGPASSWORD), where `ps` cannot see it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from chainlens_ops.errors import ConfigError

PG_LIB = Path("/usr/lib/postgresql")


def find_binary(name: str, major: int | None = None) -> str:
    """Path of `name` for PostgreSQL `major` (Debian layout).

    With a major version, only that version's binary will do (or a newer one, for the
    tools that read older servers: pg_dump, pg_basebackup, pg_restore, pg_verifybackup
    all support older servers). Without one: the newest installed, else PATH.
    """
    versions: list[int] = []
    if PG_LIB.is_dir():
        versions = sorted((int(p.name) for p in PG_LIB.iterdir() if p.name.isdigit()), reverse=True)
    if major is not None:
        versions = [major] + [v for v in versions if v > major]
    for version in versions:
        candidate = PG_LIB / str(version) / "bin" / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found and major is None:
        return found
    wanted = f"{name} for PostgreSQL {major}" if major is not None else name
    raise ConfigError(
        f"PostgreSQL binary {wanted} not found",
        hint=f"install postgresql-client-{major or 15}",
    )


def major_of(server_version_num: int) -> int:
    """150004 -> 15."""
    return server_version_num // 10000


def connection_for_binary(conninfo: str) -> tuple[str, dict[str, str]]:
    """(connection string without its password, environment carrying it).

    The string goes into argv (`-d`), so it must never hold the password: libpq reads
    PGPASSWORD from the child's environment instead. A passfile keeps working as is.
    """
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from chainlens_ops.pg.connection import bad_conninfo

    try:
        params = conninfo_to_dict(conninfo)
    except Exception as exc:
        raise bad_conninfo(exc, "the connection string") from None
    env: dict[str, str] = {}
    password = params.pop("password", None)
    if password is not None:
        env["PGPASSWORD"] = str(password)
    shown = {k: str(v) for k, v in params.items() if v is not None}
    return make_conninfo("", **shown), env
