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

from chainlens_ops.core.errors import ConfigError, UsageError
from chainlens_ops.core.record import record, replace
from chainlens_ops.settings.keys import (
    BACKUP_KEYS,
    DAEMON_KEYS,
    DATABASE_KEYS,
    JOB_KEYS,
    KNOWN_TOP_LEVEL_KEYS,
    REPOSITORY_KEYS,
    SECTIONS,
    STATUS_KEYS,
    boolean,
    byte_size,
    check,
    choice,
    duration_ms,
    duration_s,
    port,
    refuse_unknown,
    table,
    text,
    whole_number,
)

# This module is on the `wal push` path, which starts once per WAL segment: no
# dataclasses, typing, pathlib or re at import time (see chainlens_ops.core.record).
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


# Logical dumps: zstd level 10 with a 32 MB window is the best size that stays within
# `pg_dump -Z9`'s time and under 200 MB of memory (bench/README.md, "Backups").
DEFAULT_ZSTD_LEVEL = 10
DEFAULT_SPOOL_RESERVE = 1024**3
# `backup --kind auto` on a local cluster: a full backup once the newest full is this old,
# an incremental on top of the chain otherwise.
DEFAULT_FULL_EVERY_S = 7 * 86_400.0  # 7d
# The repository lock's and restores' claims' life after their last heartbeat (renewed
# every third of it): a killed holder on another host blocks others this long at most.
DEFAULT_LOCK_TTL_S = 120.0  # 2m


@record
class BackupSettings:
    """`[backup]`: how logical dumps are compressed, and the free space a `--jobs`
    backup's local spool must leave on its disk beyond the dump's estimated size."""

    zstd_level: int = DEFAULT_ZSTD_LEVEL
    spool_reserve: int = DEFAULT_SPOOL_RESERVE
    # Retention for `backup prune` when it is given no --keep-* flag (the daemon's job).
    keep_last: int | None = None
    keep_days: float | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    full_every_s: float = DEFAULT_FULL_EVERY_S


_DEFAULT_BACKUP = BackupSettings()
_NO_TABLES: Mapping[str, object] = {}  # never mutated: a Settings' storage is replaced whole


@record
class StatusSettings:
    """`[status]`: when the archive backlog (segments waiting for archive_command) needs
    attention (warn) and when it is urgent (critical): by count, or by the oldest's age."""

    backlog_warn_segments: int = 8
    backlog_critical_segments: int = 64
    backlog_warn_age_s: float = 300.0
    backlog_critical_age_s: float = 1800.0


_DEFAULT_STATUS = StatusSettings()


@record
class DaemonSettings:
    """`[daemon]`: defaults of the scheduled jobs and the daemon's own housekeeping."""

    job_timeout_s: int = 3600  # a job run's timeout unless the job sets its own
    stop_timeout_s: int = 10  # on SIGTERM, how long a running job may finish
    history_days: int = 30  # job_runs rows older than this are pruned
    metrics_file: str | None = None
    # A running job's row is renewed every tenth of this; a run whose daemon stopped
    # renewing it (died, or lost its database) is marked abandoned this long after.
    run_lease_s: int = 30


_DEFAULT_DAEMON = DaemonSettings()


@record
class JobSettings:
    """One `[[jobs]]` entry, its types checked; daemon/jobs.py judges its command and
    schedule (it knows the command tree and cron)."""

    index: int  # 1-based position in the file, to name an entry that has no name
    name: object  # checked by the daemon (a name pattern), so any value is kept here
    command: str | None = None
    cron: str | None = None
    every_s: int | None = None
    every: str | None = None  # as written, for people ("every 1h")
    timezone: str | None = None
    timeout_s: int | None = None  # None: [daemon] job_timeout

    @property
    def label(self) -> str:
        return (
            f"job {self.name!r}" if isinstance(self.name, str) else f"[[jobs]] entry {self.index}"
        )


@record
class Settings:
    databases: Mapping[str, DatabaseTarget]
    default_db: str = "microservices"
    lock_timeout_ms: int = 2000
    lock_retries: int = 5
    # Storage backends' own tables (`[s3]`), parsed by their modules, by table name; a
    # backend whose table is absent uses its defaults (chainlens_ops.storage).
    storage: Mapping[str, object] = _NO_TABLES
    spool_dir: str | None = None
    config_file: str | None = None
    backup: BackupSettings = _DEFAULT_BACKUP
    status: StatusSettings = _DEFAULT_STATUS
    daemon: DaemonSettings = _DEFAULT_DAEMON
    jobs: tuple[JobSettings, ...] = ()
    # `[repository] key_file` / CHAINLENS_REPO_KEY_FILE: the key-encryption key of an
    # encrypted repository (the path is no secret; the file is, and stays on the server).
    repo_key_file: str | None = None
    # `[repository] lock_ttl` / CHAINLENS_REPO_LOCK_TTL: how long the repository lock
    # and restores' claims live after their last heartbeat (chainlens_ops.repository.lock)
    repo_lock_ttl_s: float = DEFAULT_LOCK_TTL_S

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

    storage = _backend_settings(data, env)

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
        keep_last=backup_table.get("keep_last"),
        keep_days=backup_table.get("keep_days"),
        keep_daily=backup_table.get("keep_daily"),
        keep_weekly=backup_table.get("keep_weekly"),
        keep_monthly=backup_table.get("keep_monthly"),
        full_every_s=duration_ms(backup_table.get("full_every", DEFAULT_FULL_EVERY_S),
                                 "backup.full_every") / 1000,
    )  # fmt: skip
    status_table = data.get("status", {})
    status = StatusSettings(
        backlog_warn_segments=status_table.get("backlog_warn_segments", 8),
        backlog_critical_segments=status_table.get("backlog_critical_segments", 64),
        backlog_warn_age_s=duration_ms(status_table.get("backlog_warn_age", "5m"),
                                       "status.backlog_warn_age") / 1000,
        backlog_critical_age_s=duration_ms(status_table.get("backlog_critical_age", "30m"),
                                           "status.backlog_critical_age") / 1000,
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
        storage=storage,
        spool_dir=env.get("CHAINLENS_SPOOL_DIR") or data.get("spool_dir"),
        config_file=path,
        backup=backup,
        status=status,
        daemon=_daemon_settings(data.get("daemon", {})),
        jobs=tuple(_job_settings(raw, i) for i, raw in enumerate(data.get("jobs", []), 1)),
        repo_key_file=env.get("CHAINLENS_REPO_KEY_FILE")
        or data.get("repository", {}).get("key_file"),
        repo_lock_ttl_s=_lock_ttl_s(data.get("repository", {}), env),
    )


def _lock_ttl_s(repository: Mapping[str, Any], env: Mapping[str, str]) -> float:
    """The environment over the file; a bare number is seconds, as before the key."""
    if env_ttl := env.get("CHAINLENS_REPO_LOCK_TTL"):
        return duration_ms(env_ttl, "CHAINLENS_REPO_LOCK_TTL") / 1000
    return duration_ms(repository.get("lock_ttl", DEFAULT_LOCK_TTL_S), "repository.lock_ttl") / 1000


def _daemon_settings(data: Mapping[str, Any]) -> DaemonSettings:
    d = _DEFAULT_DAEMON
    return DaemonSettings(
        job_timeout_s=duration_s(data.get("job_timeout", d.job_timeout_s), "daemon.job_timeout"),
        stop_timeout_s=duration_s(
            data.get("stop_timeout", d.stop_timeout_s), "daemon.stop_timeout"
        ),
        history_days=data.get("history_days", d.history_days),
        metrics_file=data.get("metrics_file"),
        run_lease_s=duration_s(data.get("run_lease", d.run_lease_s), "daemon.run_lease"),
    )


def _job_settings(data: Mapping[str, Any], index: int) -> JobSettings:
    label = JobSettings(index, data.get("name")).label
    every, timeout = data.get("every"), data.get("timeout")
    return JobSettings(
        index=index,
        name=data.get("name"),
        command=data.get("command"),
        cron=data.get("cron"),
        every_s=None if every is None else duration_s(every, f"{label}: every"),
        every=None if every is None else every if isinstance(every, str) else f"{every}s",
        timezone=data.get("timezone"),
        timeout_s=None if timeout is None else duration_s(timeout, f"{label}: timeout"),
    )


def parse_duration_ms(value: object, what: str, *, flag: bool = False) -> int:
    """`"500ms"`, `"30s"`, `"2m"`, `"1h"`; a bare number is seconds -> milliseconds.

    A command-line flag (`flag=True`) with a bad value is a usage error (exit 2); a
    configuration value is a configuration error (exit 3)."""
    return duration_ms(value, what, error=UsageError if flag else ConfigError)


def _database_table(value: object, what: str) -> None:
    params = table(value, what)
    checks: dict[str, Callable[[object, str], object]] = dict.fromkeys(_CONNINFO_KEYS, text)
    checks |= {"port": port, "dsn": text, "ssl": boolean, "repo": text}
    check(params, {key: checks[key] for key in DATABASE_KEYS}, f"{what}.")


def _databases(value: object, what: str) -> None:
    check(table(value, what), dict.fromkeys(DATABASES, _database_table), f"{what}.")


def _backend_settings(data: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, object]:
    """Each storage backend's table (`[s3]`), parsed by the backend's module, for the
    tables the file has or the environment overrides; others keep their defaults (and
    their modules stay unloaded: a `wal push` into a local repository reads no boto3)."""
    from chainlens_ops.storage import BACKENDS

    parsed: dict[str, object] = {}
    for backend in BACKENDS.values():
        name = backend.settings_table
        if not name:
            continue
        if name in data or any(env.get(var) for var in backend.settings_env):
            parsed[name] = backend.load().parse_settings(data.get(name, {}), env)
    return parsed


def _backend_checks() -> dict[str, Callable[[object, str], object]]:
    """The checks of the storage backends' tables, by table name: their modules',
    loaded only for a table the file has."""
    from chainlens_ops.storage import BACKENDS, Backend

    def checker(backend: Backend) -> Callable[[object, str], object]:
        return lambda value, what: backend.load().check_settings(value, what)

    return {b.settings_table: checker(b) for b in BACKENDS.values() if b.settings_table}


def known_keys() -> list[str]:
    """Every key as the README names it: `repo`, `databases.<db>.host`, `s3.region`,
    `daemon.job_timeout`, `jobs.name` (`[[jobs]]` entries); a backend's table keys come
    from its module."""
    from chainlens_ops.storage import BACKENDS

    keys = [k for k in KNOWN_TOP_LEVEL_KEYS if k not in SECTIONS]
    keys += [f"databases.<db>.{k}" for k in DATABASE_KEYS]
    for backend in BACKENDS.values():
        if backend.settings_table:
            names = backend.load().SETTINGS_KEYS
            keys += [f"{backend.settings_table}.{k}" for k in names]
    keys += [f"daemon.{k}" for k in DAEMON_KEYS]
    keys += [f"jobs.{k}" for k in JOB_KEYS]
    keys += [f"backup.{k}" for k in BACKUP_KEYS]
    keys += [f"status.{k}" for k in STATUS_KEYS]
    keys += [f"repository.{k}" for k in REPOSITORY_KEYS]
    return keys


def _backup(value: object, what: str) -> None:
    def count(v: object, w: str) -> object:
        return whole_number(v, w, 1, 100_000)

    checks: dict[str, Callable[[object, str], object]] = {
        "zstd_level": lambda v, w: whole_number(v, w, 1, 22),
        "spool_reserve": byte_size,
        "keep_last": count,
        "keep_days": _days,
        "keep_daily": count,
        "keep_weekly": count,
        "keep_monthly": count,
        "full_every": duration_ms,
    }
    check(table(value, what), {key: checks[key] for key in BACKUP_KEYS}, f"{what}.")


def _days(value: object, what: str) -> object:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ConfigError(f"{what} must be a number of days (0 or more), not {value!r}")
    return value


def _status(value: object, what: str) -> None:
    checks: dict[str, Callable[[object, str], object]] = {
        "backlog_warn_segments": lambda v, w: whole_number(v, w, 1, 1_000_000),
        "backlog_critical_segments": lambda v, w: whole_number(v, w, 1, 1_000_000),
        "backlog_warn_age": duration_ms,
        "backlog_critical_age": duration_ms,
    }
    check(table(value, what), {key: checks[key] for key in STATUS_KEYS}, f"{what}.")


def _daemon(value: object, what: str) -> None:
    checks: dict[str, Callable[[object, str], object]] = {
        "job_timeout": duration_ms,
        "stop_timeout": duration_ms,
        "history_days": lambda v, w: whole_number(v, w, 1, 3650),
        "metrics_file": text,
        "run_lease": duration_ms,
    }
    check(table(value, what), {key: checks[key] for key in DAEMON_KEYS}, f"{what}.")


def _jobs(value: object, what: str) -> None:
    """`[[jobs]]`: an array of tables, each entry's keys and types (named by its job)."""
    if not isinstance(value, list):
        raise ConfigError(f"{what} must be an array of tables ([[jobs]]), not {value!r}"[:160])
    checks: dict[str, Callable[[object, str], object]] = {
        "name": text,
        "command": text,
        "cron": text,
        "every": duration_ms,
        "timezone": text,
        "timeout": duration_ms,
    }
    for index, raw in enumerate(value, 1):
        if not isinstance(raw, dict):
            raise ConfigError(f"[[jobs]] entry {index} must be a table")
        label = JobSettings(index, raw.get("name")).label
        refuse_unknown(raw, JOB_KEYS, f" in {label}")
        for key, item in raw.items():
            if key != "name":  # the daemon judges names (a pattern), with its own words
                checks[key](item, f"{label}: {key}")


def _repository(value: object, what: str) -> None:
    checks: dict[str, Callable[[object, str], object]] = {
        "key_file": text,
        "lock_ttl": duration_ms,
    }
    check(table(value, what), {key: checks[key] for key in REPOSITORY_KEYS}, f"{what}.")


def _validate(data: Mapping[str, Any]) -> None:
    checks: dict[str, Callable[[object, str], object]] = {}
    checks |= {
        "default_db": choice(DATABASES),
        "repo": text,
        "lock_timeout": duration_ms,
        "lock_retries": lambda v, w: whole_number(v, w, 0, 100),
        "spool_dir": text,
        "databases": _databases,
        "backup": _backup,
        "status": _status,
        "daemon": _daemon,
        "jobs": _jobs,
        "repository": _repository,
    }
    checks = {key: checks[key] for key in KNOWN_TOP_LEVEL_KEYS} | _backend_checks()
    check(data, checks)


# libpq keywords whose value is a secret: never in argv (`pg.binaries` moves them into
# the child's environment or a service file), never in a message (`redact_conninfo`).
# A `passfile` is a path; its contents never pass through this tool.
SECRET_KEYWORDS = ("password", "sslpassword")


def redact_conninfo(conninfo: str) -> str:
    """Remove every secret keyword (SECRET_KEYWORDS) from a libpq keyword string or URI."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(conninfo)
    except Exception:
        return "<unparseable connection string>"
    for keyword in SECRET_KEYWORDS:
        params.pop(keyword, None)
    shown = {k: str(v) for k, v in params.items() if v is not None}
    return make_conninfo("", **shown) or "<libpq defaults>"


_SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "PASSWD", "CREDENTIAL", "PRIVATE", "SESSION")


def mask_secrets(command: str) -> str:
    """A shell command (e.g. archive_command) fit to print: values of secret-looking
    variables (`AWS_SECRET_ACCESS_KEY=...`, `PGPASSWORD=...`), `password=` in a libpq
    string (and `sslpassword=`) and the password of a `scheme://user:password@host` URI
    become `***`."""
    import re

    def variable(match: re.Match[str]) -> str:
        name = match.group(1)
        if any(word in name.upper() for word in _SECRET_WORDS):
            return f"{name}=***"
        return match.group(0)

    masked = re.sub(r"""\b([A-Za-z_][A-Za-z0-9_]*)=('[^']*'|"[^"]*"|[^\s'"]+)""", variable, command)
    masked = re.sub(r"(?i)\b((?:ssl)?password\s*=\s*)('[^']*'|[^\s'\"&]+)", r"\1***", masked)
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


def __getattr__(name: str) -> object:
    """`S3Settings` lives with its backend now (chainlens_ops.storage.s3); still importable
    from here for callers written before."""
    if name == "S3Settings":
        from chainlens_ops.storage.s3 import S3Settings

        return S3Settings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
