"""One configuration model for every command.

Precedence, highest first: command-line option > environment > TOML file > defaults.
The TOML file is `--config FILE`, else `$CHAINLENS_CONFIG`, else
`/etc/chainlens-ops/config.toml` when it exists (the server's `archive_command` runs
with a bare environment, so a system-wide file is the natural place for its settings).

Example file::

    default_db = "microservices"
    repo = "file:///var/lib/chainlens/repo"   # serves both databases on one cluster
    lock_timeout = "2s"            # durations: 500ms, 30s, 2m, 1h; a bare number is seconds

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

from chainlens_ops.configcheck import (
    DATABASE_KEYS,
    KNOWN_TOP_LEVEL_KEYS,
    REPOSITORY_KEYS,
    S3_KEYS,
    boolean,
    byte_size,
    check,
    duration_ms,
    port,
    table,
    text,
    whole_number,
)
from chainlens_ops.errors import ConfigError, UsageError
from chainlens_ops.record import record, replace

# This module is on the `wal push` path, which starts once per WAL segment: no
# dataclasses, typing, pathlib or re at import time (see chainlens_ops.record).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
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
    # What named the server: a variable, a config table, "--dsn", or "" for nothing at all
    # (then connecting refuses rather than guess libpq's local socket).
    source: str = "--dsn"

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

# Logical dumps: zstd level 10 with a 32 MB window is the best size that stays within
# `pg_dump -Z9`'s time and under 200 MB of memory (bench/README.md, "Backups").
DEFAULT_ZSTD_LEVEL = 10
DEFAULT_SPOOL_RESERVE = 1024**3


@record
class BackupSettings:
    """`[backup]`: how logical dumps are compressed, and the free space a `--jobs`
    backup's local spool must leave on its disk beyond the dump's estimated size."""

    zstd_level: int = DEFAULT_ZSTD_LEVEL
    spool_reserve: int = DEFAULT_SPOOL_RESERVE


_DEFAULT_BACKUP = BackupSettings()


@record
class Settings:
    databases: Mapping[str, DatabaseTarget]
    default_db: str = "microservices"
    lock_timeout_ms: int = 2000
    lock_retries: int = 5
    s3: S3Settings = _DEFAULT_S3
    spool_dir: str | None = None
    config_file: str | None = None
    backup: BackupSettings = _DEFAULT_BACKUP
    # `[repository] key_file` / CHAINLENS_REPO_KEY_FILE: the key-encryption key of an
    # encrypted repository (the path is no secret; the file is, and stays on the server).
    repo_key_file: str | None = None

    def target(self, name: str | None = None, *, dsn: str | None = None) -> DatabaseTarget:
        """The target called `name` (default: `default_db`), with a one-off `--dsn` applied."""
        key = name or self.default_db
        if key not in self.databases:
            raise UsageError(f"unknown database {key!r}: choose one of {', '.join(DATABASES)}")
        target = self.databases[key]
        if dsn:
            target = replace(target, conninfo=dsn, source="--dsn")
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
    """Build the settings from the file, the environment and the defaults.

    Every key of the file is type-checked here, so a mistake is one line naming the key
    and the expected form (ConfigError, exit 3), whatever command reads it later."""
    env = os.environ if env is None else env
    path = _config_path(config_file, env)
    return build_settings(_read_toml(path) if path else {}, env, path)


def build_settings(data: Mapping[str, Any], env: Mapping[str, str], path: str | None) -> Settings:
    """Settings from a parsed config file `data` (checked here, key by key) and `env`."""
    try:
        _validate(data)
    except ConfigError as exc:
        where = f"{path}: " if path else ""
        raise ConfigError(f"{where}{exc.message}", hint=exc.hint) from None

    db_tables = data.get("databases", {})
    databases: dict[str, DatabaseTarget] = {}
    for name in DATABASES:
        db_table = db_tables.get(name, {})
        conninfo, source = _resolve_conninfo(name, db_table, env)
        databases[name] = DatabaseTarget(
            name=name,
            conninfo=conninfo,
            repo=(
                env.get(f"CHAINLENS_{name.upper()}_REPO")
                or env.get("CHAINLENS_REPO")
                or db_table.get("repo")
                or data.get("repo")
            ),
            source=source,
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
        connect_timeout=duration_ms(s3_table.get("connect_timeout", 5), "s3.connect_timeout")
        / 1000,
        read_timeout=duration_ms(s3_table.get("read_timeout", 30), "s3.read_timeout") / 1000,
        max_attempts=s3_table.get("max_attempts", 4),
    )
    if s3.sse not in (None, "AES256", "aws:kms"):
        raise ConfigError(f"CHAINLENS_S3_SSE must be AES256 or aws:kms, not {s3.sse!r}")

    backup_table = data.get("backup", {})
    env_level = env.get("CHAINLENS_BACKUP_ZSTD_LEVEL")
    env_reserve = env.get("CHAINLENS_BACKUP_SPOOL_RESERVE")
    backup = BackupSettings(
        zstd_level=whole_number(env_level, "CHAINLENS_BACKUP_ZSTD_LEVEL", 1, 22)
        if env_level
        else backup_table.get("zstd_level", DEFAULT_ZSTD_LEVEL),
        spool_reserve=byte_size(env_reserve, "CHAINLENS_BACKUP_SPOOL_RESERVE")
        if env_reserve
        else byte_size(backup_table.get("spool_reserve", DEFAULT_SPOOL_RESERVE),
                       "backup.spool_reserve"),
    )  # fmt: skip

    env_timeout = env.get("CHAINLENS_LOCK_TIMEOUT")
    env_retries = env.get("CHAINLENS_LOCK_RETRIES")
    return Settings(
        databases=databases,
        default_db=default_db,
        lock_timeout_ms=duration_ms(env_timeout, "CHAINLENS_LOCK_TIMEOUT")
        if env_timeout
        else duration_ms(data.get("lock_timeout", "2s"), "lock_timeout"),
        lock_retries=whole_number(env_retries, "CHAINLENS_LOCK_RETRIES", 0, 100)
        if env_retries
        else data.get("lock_retries", 5),
        s3=s3,
        spool_dir=env.get("CHAINLENS_SPOOL_DIR") or data.get("spool_dir"),
        config_file=path,
        backup=backup,
        repo_key_file=env.get("CHAINLENS_REPO_KEY_FILE")
        or data.get("repository", {}).get("key_file"),
    )


def parse_duration_ms(value: object, what: str, *, flag: bool = False) -> int:
    """`"500ms"`, `"30s"`, `"2m"`, `"1h"`; a bare number is seconds -> milliseconds.

    A command-line flag (`flag=True`) with a bad value is a usage error (exit 2); a
    configuration value is a configuration error (exit 3)."""
    return duration_ms(value, what, error=UsageError if flag else ConfigError)


def _choice(options: tuple[str, ...]) -> Callable[[object, str], object]:
    def checker(value: object, what: str) -> object:
        if value not in options:
            raise ConfigError(f"{what} must be one of {', '.join(options)}, not {value!r}")
        return value

    return checker


def _database_table(value: object, what: str) -> None:
    params = table(value, what)
    checks: dict[str, Callable[[object, str], object]] = dict.fromkeys(_CONNINFO_KEYS, text)
    checks |= {"port": port, "dsn": text, "ssl": boolean, "repo": text}
    check(params, {key: checks[key] for key in DATABASE_KEYS}, f"{what}.")


def _databases(value: object, what: str) -> None:
    check(table(value, what), dict.fromkeys(DATABASES, _database_table), f"{what}.")


def _s3(value: object, what: str) -> None:
    checks: dict[str, Callable[[object, str], object]] = {
        "endpoint_url": text,
        "region": text,
        "sse": _choice(("AES256", "aws:kms")),
        "sse_kms_key_id": text,
        "connect_timeout": duration_ms,
        "read_timeout": duration_ms,
        "max_attempts": lambda v, w: whole_number(v, w, 1, 20),
    }
    check(table(value, what), {key: checks[key] for key in S3_KEYS}, f"{what}.")


def _backup(value: object, what: str) -> None:
    checks: dict[str, Callable[[object, str], object]] = {
        "zstd_level": lambda v, w: whole_number(v, w, 1, 22),
        "spool_reserve": byte_size,
    }
    check(table(value, what), checks, f"{what}.")


def _repository(value: object, what: str) -> None:
    checks: dict[str, Callable[[object, str], object]] = {"key_file": text}
    check(table(value, what), {key: checks[key] for key in REPOSITORY_KEYS}, f"{what}.")


def _owned_elsewhere(value: object, what: str) -> None:
    """Sections whose contents their own modules check (daemon, jobs)."""


def _validate(data: Mapping[str, Any]) -> None:
    checks: dict[str, Callable[[object, str], object]] = dict.fromkeys(
        KNOWN_TOP_LEVEL_KEYS, _owned_elsewhere
    )
    checks |= {
        "default_db": _choice(DATABASES),
        "repo": text,
        "lock_timeout": duration_ms,
        "lock_retries": lambda v, w: whole_number(v, w, 0, 100),
        "spool_dir": text,
        "databases": _databases,
        "s3": _s3,
        "backup": _backup,
        "repository": _repository,
    }
    check(data, checks)


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


_SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "PASSWD", "CREDENTIAL", "PRIVATE", "SESSION")


def mask_secrets(command: str) -> str:
    """A shell command (e.g. archive_command) fit to print: values of secret-looking
    variables (`AWS_SECRET_ACCESS_KEY=...`, `PGPASSWORD=...`), `password=` in a libpq
    string and the password of a `scheme://user:password@host` URI become `***`."""
    import re

    def variable(match: re.Match[str]) -> str:
        name = match.group(1)
        if any(word in name.upper() for word in _SECRET_WORDS):
            return f"{name}=***"
        return match.group(0)

    masked = re.sub(r"""\b([A-Za-z_][A-Za-z0-9_]*)=('[^']*'|"[^"]*"|[^\s'"]+)""", variable, command)
    masked = re.sub(r"(?i)\b(password\s*=\s*)('[^']*'|[^\s'\"]+)", r"\1***", masked)
    return re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", masked)


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
    name: str, table: Mapping[str, Any], env: Mapping[str, str]
) -> tuple[str, str]:
    """The connection string for `name` and where it came from (for "where it is acting")."""
    env_dsn = env.get(f"CHAINLENS_{name.upper()}_DSN")
    if env_dsn:
        return env_dsn, f"CHAINLENS_{name.upper()}_DSN"

    seed_env = {k: env[v] for k, v in _SEED_ENV[name].items() if env.get(v)}
    if "host" in seed_env:
        return make_conninfo("", **(_SEED_DEFAULTS[name] | seed_env)), _SEED_ENV[name]["host"]

    if table.keys() - {"repo"}:
        params = {k: str(table[k]) for k in _CONNINFO_KEYS if k in table}
        if table.get("ssl") is True and "sslmode" not in params:
            params["sslmode"] = "require"
        base = str(table.get("dsn", ""))
        if not base:
            params = _SEED_DEFAULTS[name] | params
        return make_conninfo(base, **params), f"[databases.{name}]"

    libpq = [v for v in ("PGHOST", "PGDATABASE", "PGSERVICE") if env.get(v)]
    return make_conninfo("", **_SEED_DEFAULTS[name]), (",".join(libpq) if libpq else "")
