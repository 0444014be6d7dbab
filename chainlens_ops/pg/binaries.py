"""Finding PostgreSQL's binaries and giving them a connection without a password in argv.

The process that runs them is `chainlens_ops.pg.process`; this module decides *what* to
run: the binary of the server's major version, and a connection string with its
secrets moved into the child's environment (PGPASSWORD) or an in-memory service file,
where `ps` cannot see them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from chainlens_ops.core.errors import ConfigError

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


SECRETS_SERVICE = "chainlens_secrets"
_service_files: dict[str, str] = {}  # service file text -> path, one memfd per text


def connection_for_binary(conninfo: str) -> tuple[str, dict[str, str]]:
    """(connection string without any secret, environment carrying the secrets).

    The string goes into argv (`-d`), where `ps` shows it, so it holds no keyword of
    SECRET_KEYWORDS: `password` goes into PGPASSWORD; `sslpassword`, which has no
    environment variable, into a libpq service file the string names (`service=`,
    PGSERVICEFILE). That file lives in memory (see `_service_file`), never on disk. A
    passfile keeps working as is: only its path is passed.
    """
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from chainlens_ops.pg.connection import bad_conninfo
    from chainlens_ops.settings.config import SECRET_KEYWORDS

    try:
        params = conninfo_to_dict(conninfo)
    except Exception as exc:
        raise bad_conninfo(exc, "the connection string") from None
    env: dict[str, str] = {}
    secrets = {k: str(params.pop(k)) for k in SECRET_KEYWORDS if params.get(k) is not None}
    password = secrets.pop("password", None)
    if password is not None:
        env["PGPASSWORD"] = password
    if secrets:
        if params.get("service"):
            raise ConfigError(
                f"{', '.join(sorted(secrets))} cannot be passed to PostgreSQL's tools "
                "together with service=",
                hint="put it into that service's entry in the service file",
            )
        params["service"] = SECRETS_SERVICE
        env["PGSERVICEFILE"] = _service_file(secrets)
    shown = {k: str(v) for k, v in params.items() if v is not None}
    return make_conninfo("", **shown), env


def _service_file(secrets: dict[str, str]) -> str:
    """A path to a service file holding `secrets` under SECRETS_SERVICE: an anonymous
    in-memory file (memfd) of this process, opened by the children as
    /proc/<our pid>/fd/<n> (the same user may; nobody else can). It goes away with this
    process, which no child outlives (`process.die_with_parent`), and is never on disk."""
    for key, value in secrets.items():
        if "\n" in value or "\r" in value or value != value.strip():
            raise ConfigError(
                f"{key} with a line break or surrounding blanks cannot be passed to "
                "PostgreSQL's tools"
            )
    text = f"[{SECRETS_SERVICE}]\n" + "".join(f"{k}={v}\n" for k, v in sorted(secrets.items()))
    path = _service_files.get(text)
    if path is None:
        fd = os.memfd_create("chainlens-pg-service", os.MFD_CLOEXEC)
        os.write(fd, text.encode())
        path = f"/proc/{os.getpid()}/fd/{fd}"
        _service_files[text] = path
    return path
