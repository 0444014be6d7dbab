"""One configuration model for every command.

Precedence, highest first: command-line option > environment > TOML file > defaults.
The TOML file is `--config FILE`, else `$CHAINLENS_CONFIG`, else
`/etc/chainlens-ops/config.toml` when it exists (the server's `archive_command` runs
with a bare environment, so a system-wide file is the natural place for its settings).

Example file::

    default_db = "microservices"
    repo = "file:///var/lib/chainlens/repo"   # serves both databases on one cluster
    lock_timeout = "2s"

    [databases.supabase]
    dsn = "host=db.internal dbname=postgres user=ops"
    sslmode = "require"            # the seed's `ssl: true`

    [databases.microservices]
    host = "10.0.0.5"
    dbname = "chainlens_microservices"
    user = "chainlens"
    repo = "s3://chainlens-backups/microservices"

    [s3]
    endpoint_url = "https://s3.eu-west-1.amazonaws.com"
    region = "eu-west-1"
    sse = "aws:kms"

Passwords belong in the environment, a libpq passfile (`~/.pgpass`) or this file with
mode 0600, never on the command line. Whatever the source, they are never printed.
"""

from __future__ import annotations

import os

from chainlens_ops.errors import ConfigError, UsageError
from chainlens_ops.record import record, replace

# This module is on the `wal push` path, which starts once per WAL segment: no
# dataclasses, typing, pathlib or re at import time (see chainlens_ops.record).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

DATABASES = ("supabase", "microservices")
SYSTEM_CONFIG = "/etc/chainlens-ops/config.toml"

# The seed's own connection settings (section 1.3), used when no DSN is configured.
_SEED_DEFAULTS: dict[str, dict[str, str]] = {
    "supabase": {"dbname": "postgres"},
    "microservices": {"dbname": "chainlens_microservices", "user": "chainlens"},
}
_SEED_ENV: dict[str, dict[str, str]] = {
    "supabase": {"host": "SUPABASE_HOST", "user": "SUPABASE_USER", "password": "SUPABASE_PASSWORD"},
    "microservices": {"host": "POSTGRES_HOST", "password": "POSTGRES_PASSWORD"},
}
_CONNINFO_KEYS = ("host", "port", "dbname", "user", "password", "sslmode", "passfile")


@record
class DatabaseTarget:
    """One database the tool acts on. `conninfo` may hold a password: never print it."""

    _hidden_ = ("conninfo",)
    name: str
    conninfo: str
    repo: str | None = None

    @property
    def display(self) -> str:
        """The connection string with any password removed, safe for output and logs."""
        return redact_conninfo(self.conninfo)


@record
class S3Settings:
    endpoint_url: str | None = None
    region: str | None = None
    sse: str | None = None  # "AES256" or "aws:kms"
    sse_kms_key_id: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_attempts: int = 4


_DEFAULT_S3 = S3Settings()


@record
class Settings:
    databases: Mapping[str, DatabaseTarget]
    default_db: str = "microservices"
    lock_timeout_ms: int = 2000
    lock_retries: int = 5
    s3: S3Settings = _DEFAULT_S3
    spool_dir: str | None = None
    config_file: str | None = None

    def target(self, name: str | None = None, *, dsn: str | None = None) -> DatabaseTarget:
        """The target called `name` (default: `default_db`), with a one-off `--dsn` applied."""
        key = name or self.default_db
        if key not in self.databases:
            raise UsageError(f"unknown database {key!r}: choose one of {', '.join(DATABASES)}")
        target = self.databases[key]
        if dsn:
            target = replace(target, conninfo=dsn)
        return target

    def targets(self, name: str | None, *, dsn: str | None = None) -> list[DatabaseTarget]:
        """`all` expands to both databases; anything else is one target."""
        if name == "all":
            if dsn:
                raise UsageError(
                    "--dsn names one database: use it with --db supabase|microservices"
                )
            return [self.databases[n] for n in DATABASES]
        return [self.target(name, dsn=dsn)]


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings from the file, the environment and the defaults."""
    env = os.environ if env is None else env
    path = _config_path(config_file, env)
    data = _read_toml(path) if path else {}

    db_tables = data.get("databases", {})
    if not isinstance(db_tables, dict) or not set(db_tables) <= set(DATABASES):
        raise ConfigError(f"{path}: [databases] may only hold {' and '.join(DATABASES)}")

    databases: dict[str, DatabaseTarget] = {}
    for name in DATABASES:
        table = db_tables.get(name, {})
        databases[name] = DatabaseTarget(
            name=name,
            conninfo=_resolve_conninfo(name, table, env, path),
            repo=(
                env.get(f"CHAINLENS_{name.upper()}_REPO")
                or env.get("CHAINLENS_REPO")
                or table.get("repo")
                or data.get("repo")
            ),
        )

    default_db = env.get("CHAINLENS_DEFAULT_DB") or data.get("default_db", "microservices")
    if default_db not in DATABASES:
        raise ConfigError(f"default_db must be one of {', '.join(DATABASES)}, not {default_db!r}")

    s3_table = data.get("s3", {})
    s3 = S3Settings(
        endpoint_url=s3_table.get("endpoint_url"),
        region=s3_table.get("region"),
        sse=env.get("CHAINLENS_S3_SSE") or s3_table.get("sse"),
        sse_kms_key_id=s3_table.get("sse_kms_key_id"),
        connect_timeout=float(s3_table.get("connect_timeout", 5.0)),
        read_timeout=float(s3_table.get("read_timeout", 30.0)),
        max_attempts=int(s3_table.get("max_attempts", 4)),
    )
    if s3.sse not in (None, "AES256", "aws:kms"):
        raise ConfigError(f"s3.sse must be AES256 or aws:kms, not {s3.sse!r}")

    return Settings(
        databases=databases,
        default_db=default_db,
        lock_timeout_ms=parse_duration_ms(
            env.get("CHAINLENS_LOCK_TIMEOUT") or data.get("lock_timeout", 2000), "lock_timeout"
        ),
        lock_retries=int(env.get("CHAINLENS_LOCK_RETRIES") or data.get("lock_retries", 5)),
        s3=s3,
        spool_dir=env.get("CHAINLENS_SPOOL_DIR") or data.get("spool_dir"),
        config_file=path,
    )


def parse_duration_ms(value: object, what: str) -> int:
    """`2000`, `"2000ms"`, `"2s"`, `"1min"` -> milliseconds."""
    if isinstance(value, int) and value >= 0:
        return value
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|min)?\s*", str(value))
    if not match:
        raise ConfigError(f"{what}: cannot read {value!r} as a duration (e.g. 500ms, 2s, 1min)")
    scale = {"ms": 1, None: 1, "s": 1000, "min": 60_000}[match.group(2)]
    return int(float(match.group(1)) * scale)


def redact_conninfo(conninfo: str) -> str:
    """Remove the password from a libpq keyword string or URI."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(conninfo)
    except Exception:
        return "<unparseable connection string>"
    params.pop("password", None)
    shown = {k: str(v) for k, v in params.items() if v is not None}
    return make_conninfo("", **shown) or "<libpq defaults>"


def _config_path(explicit: str | os.PathLike[str] | None, env: Mapping[str, str]) -> str | None:
    chosen = os.fspath(explicit) if explicit else env.get("CHAINLENS_CONFIG")
    if chosen:
        if not os.path.isfile(chosen):
            raise ConfigError(f"config file {chosen} does not exist or is not a file")
        return chosen
    return SYSTEM_CONFIG if os.path.isfile(SYSTEM_CONFIG) else None


def _read_toml(path: str) -> dict[str, Any]:
    import tomllib  # only when there is a file: it imports re

    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except PermissionError:
        raise ConfigError(f"config file {path} is not readable by this user") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def make_conninfo(base: str = "", **params: str) -> str:
    """libpq's keyword form, quoted as libpq reads it (psycopg is not imported here:
    this runs on the `wal push` path, which must start fast)."""

    def quote(value: str) -> str:
        if value and not any(c.isspace() or c in "'\\" for c in value):
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    parts = [base] if base else []
    parts += [f"{key}={quote(str(value))}" for key, value in params.items()]
    return " ".join(parts)


def _resolve_conninfo(
    name: str, table: Mapping[str, Any], env: Mapping[str, str], path: str | None
) -> str:
    env_dsn = env.get(f"CHAINLENS_{name.upper()}_DSN")
    if env_dsn:
        return env_dsn

    seed_env = {k: env[v] for k, v in _SEED_ENV[name].items() if env.get(v)}
    if "host" in seed_env:
        return make_conninfo("", **(_SEED_DEFAULTS[name] | seed_env))

    if table:
        unknown = set(table) - {*_CONNINFO_KEYS, "dsn", "ssl", "repo"}
        if unknown:
            raise ConfigError(f"{path}: unknown keys in [databases.{name}]: {sorted(unknown)}")
        params = {k: str(table[k]) for k in _CONNINFO_KEYS if k in table}
        if table.get("ssl") is True and "sslmode" not in params:
            params["sslmode"] = "require"
        base = str(table.get("dsn", ""))
        if not base:
            params = _SEED_DEFAULTS[name] | params
        return make_conninfo(base, **params)

    return make_conninfo("", **_SEED_DEFAULTS[name])
