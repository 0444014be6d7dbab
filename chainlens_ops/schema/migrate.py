"""`schema apply` / `schema status`: the platform's SQL files, applied once each, safely.

Each target database has a folder of versioned files (`sql/<target>/NNN_name.sql`).
Applied files are tracked in `chainlens_ops.schema_migrations`. One run:

1. takes a session-level advisory lock (waiting at most `lock_wait_ms`), and only then
   reads what is applied, so two concurrent runs never both apply a file;
2. refuses to go on if an applied file changed since (drift) or disappeared;
3. applies each pending file in its own transaction, statement by statement, so a
   failure names the file, the statement and its line, and rolls back that file only.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psycopg
from psycopg import sql

from chainlens_ops.core.errors import ConfigError, LockTimeout, OperationFailed
from chainlens_ops.core.outcome import failed_exit
from chainlens_ops.pg.connection import Connection, connect, first_line
from chainlens_ops.settings.config import DatabaseTarget

TRACKING_SCHEMA = "chainlens_ops"
TRACKING_TABLE = "schema_migrations"
# Advisory lock keys: (class, object). 'clop' = chainlens-ops; object 1 = schema apply.
LOCK_CLASS = 0x636C6F70
LOCK_SCHEMA_APPLY = 1

_FILE_RE = re.compile(r"^(\d+)_([A-Za-z0-9_\-]+)\.sql$")
_LEADING_NOISE = re.compile(r"\A(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/)*", re.S)

ProgressFn = Callable[[str], None]


class DriftError(OperationFailed):
    """An applied file no longer matches what was applied."""


class MigrationFailed(OperationFailed):
    """A statement of a pending file failed; that file was rolled back."""


@dataclass(frozen=True)
class MigrationFile:
    version: str
    name: str
    path: Path
    checksum: str

    @property
    def filename(self) -> str:
        return self.path.name

    def read(self) -> str:
        return self.path.read_text(encoding="utf-8")


@dataclass(frozen=True)
class FileStatus:
    version: str
    name: str
    state: str  # applied | pending | drifted | missing
    checksum: str | None
    applied_at: datetime | None = None
    duration_ms: int | None = None


@dataclass(frozen=True)
class TargetStatus:
    database: str
    dsn: str
    files: list[FileStatus]

    def count(self, state: str) -> int:
        return sum(1 for f in self.files if f.state == state)

    @property
    def ok(self) -> bool:
        """No applied file drifted or went missing."""
        return not (self.count("drifted") or self.count("missing"))

    @property
    def exit_code(self) -> int:
        return failed_exit(self.ok)


@dataclass(frozen=True)
class AppliedFile:
    version: str
    name: str
    duration_ms: int
    statements: int


@dataclass
class ApplyResult:
    database: str
    dsn: str
    dry_run: bool
    applied: list[AppliedFile] = field(default_factory=list)
    planned: list[str] = field(default_factory=list)
    already_applied: int = 0


def default_sql_dir() -> Path:
    """The SQL shipped in the package (wheel), or the source tree's `sql/`."""
    package = Path(__file__).resolve().parents[1]  # chainlens_ops/
    for candidate in (package / "sql", package.parent / "sql"):
        if candidate.is_dir():
            return candidate
    raise ConfigError("the schema SQL files are missing from this installation")


def load_files(database: str, sql_dir: Path | None = None) -> list[MigrationFile]:
    folder = (sql_dir or default_sql_dir()) / database
    if not folder.is_dir():
        raise ConfigError(f"no SQL folder for the {database} database at {folder}")
    files: list[MigrationFile] = []
    seen: dict[str, Path] = {}
    for path in sorted(folder.glob("*.sql")):
        match = _FILE_RE.match(path.name)
        if not match:
            raise ConfigError(f"{path}: SQL files must be named NNN_description.sql")
        version = match.group(1)
        if version in seen:
            raise ConfigError(f"{path} and {seen[version]} share version {version}")
        seen[version] = path
        checksum = hashlib.sha256(path.read_bytes()).hexdigest()
        files.append(MigrationFile(version, match.group(2), path, checksum))
    return files


def schema_status(target: DatabaseTarget, sql_dir: Path | None = None) -> TargetStatus:
    files = load_files(target.name, sql_dir)
    with connect(target) as conn:
        applied = _read_applied(conn)
    return TargetStatus(target.name, target.display, _compare(files, applied))


def apply_schema(
    target: DatabaseTarget,
    *,
    sql_dir: Path | None = None,
    dry_run: bool = False,
    lock_wait_ms: int = 60_000,
    statement_lock_timeout_ms: int = 2_000,
    progress: ProgressFn | None = None,
) -> ApplyResult:
    """Apply every pending file of `target`'s folder, each in its own transaction."""
    files = load_files(target.name, sql_dir)
    result = ApplyResult(target.name, target.display, dry_run)
    say = progress or (lambda _msg: None)

    with connect(target) as conn:
        if dry_run:
            statuses = _compare(files, _read_applied(conn))
            _refuse_drift(target, statuses)
            result.planned = [f"{s.version}_{s.name}.sql" for s in statuses if s.state == "pending"]
            result.already_applied = sum(1 for s in statuses if s.state == "applied")
            return result

        _take_lock(conn, target, lock_wait_ms, say)
        try:
            _ensure_tracking_table(conn)
            statuses = _compare(files, _read_applied(conn))
            _refuse_drift(target, statuses)
            result.already_applied = sum(1 for s in statuses if s.state == "applied")
            pending = {s.version for s in statuses if s.state == "pending"}
            conn.execute(
                sql.SQL("SET lock_timeout = {}").format(sql.Literal(statement_lock_timeout_ms))
            )
            for file in files:
                if file.version in pending:
                    say(f"{target.name}: applying {file.filename}")
                    result.applied.append(_apply_file(conn, target, file))
        finally:
            if not conn.closed and not conn.broken:
                conn.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_CLASS, LOCK_SCHEMA_APPLY))
    return result


def _take_lock(conn: Connection, target: DatabaseTarget, wait_ms: int, say: ProgressFn) -> None:
    got = conn.execute(
        "SELECT pg_try_advisory_lock(%s, %s)", (LOCK_CLASS, LOCK_SCHEMA_APPLY)
    ).fetchone()
    if got and got[0]:
        return
    say(f"{target.name}: another schema apply is running; waiting up to {wait_ms} ms")
    conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(wait_ms)))
    try:
        conn.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_CLASS, LOCK_SCHEMA_APPLY))
    except psycopg.errors.LockNotAvailable:
        raise LockTimeout(
            f"{target.name}: another schema apply held the migration lock for over {wait_ms} ms",
            hint="wait for it to finish, then run again",
        ) from None


def _ensure_tracking_table(conn: Connection) -> None:
    conn.execute(
        sql.SQL(
            """
            CREATE SCHEMA IF NOT EXISTS {schema};
            CREATE TABLE IF NOT EXISTS {schema}.{table} (
                version     text PRIMARY KEY,
                name        text NOT NULL,
                checksum    text NOT NULL,
                applied_at  timestamptz NOT NULL DEFAULT now(),
                duration_ms integer NOT NULL,
                applied_by  text NOT NULL DEFAULT current_user
            )
            """
        ).format(schema=sql.Identifier(TRACKING_SCHEMA), table=sql.Identifier(TRACKING_TABLE)),
        prepare=False,
    )


def _read_applied(conn: Connection) -> dict[str, tuple[str, str, datetime, int]]:
    exists = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL", (f"{TRACKING_SCHEMA}.{TRACKING_TABLE}",)
    ).fetchone()
    if not exists or not exists[0]:
        return {}
    rows = conn.execute(
        sql.SQL("SELECT version, name, checksum, applied_at, duration_ms FROM {}.{}").format(
            sql.Identifier(TRACKING_SCHEMA), sql.Identifier(TRACKING_TABLE)
        )
    ).fetchall()
    return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}


def _compare(
    files: list[MigrationFile], applied: dict[str, tuple[str, str, datetime, int]]
) -> list[FileStatus]:
    statuses: list[FileStatus] = []
    for f in files:
        row = applied.get(f.version)
        if row is None:
            statuses.append(FileStatus(f.version, f.name, "pending", f.checksum))
        else:
            state = "applied" if row[1] == f.checksum else "drifted"
            statuses.append(FileStatus(f.version, f.name, state, f.checksum, row[2], row[3]))
    known = {f.version for f in files}
    for version, (name, checksum, at, ms) in sorted(applied.items()):
        if version not in known:
            statuses.append(FileStatus(version, name, "missing", checksum, at, ms))
    return sorted(statuses, key=lambda s: s.version)


def _refuse_drift(target: DatabaseTarget, statuses: list[FileStatus]) -> None:
    for s in statuses:
        if s.state == "drifted":
            raise DriftError(
                f"{target.name}: {s.version}_{s.name}.sql changed after it was applied "
                "(checksum differs); nothing was run",
                hint="restore the file as applied and put changes in a new file",
            )
        if s.state == "missing":
            raise DriftError(
                f"{target.name}: version {s.version} ({s.name}) is applied but its file is "
                "missing; nothing was run",
                hint="is this an older chainlens-ops than the one that applied it?",
            )


@dataclass(frozen=True)
class _Statement:
    text: str
    line: int  # 1-based line in the file where the statement starts


def split_statements(text: str) -> list[_Statement]:
    """Statements of a file with their starting lines, using PostgreSQL's own parser."""
    import pglast

    statements = []
    for piece in pglast.parser.split(text, with_parser=True, only_slices=True):
        chunk = text[piece]
        start = piece.start + _LEADING_NOISE.match(chunk).end()  # type: ignore[union-attr]
        body = text[start : piece.stop].strip()
        if body:
            statements.append(_Statement(body, text.count("\n", 0, start) + 1))
    return statements


def _apply_file(conn: Connection, target: DatabaseTarget, file: MigrationFile) -> AppliedFile:
    text = file.read()
    try:
        statements = split_statements(text)
    except Exception as exc:  # pglast.parser.ParseError
        index = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else 0
        line = text.count("\n", 0, index) + 1
        raise MigrationFailed(
            f"{target.name}: {file.filename} line {line}: {exc.args[0]}; nothing in this file "
            "was applied"
        ) from None

    started = time.monotonic()
    try:
        with conn.transaction():
            for stmt in statements:
                try:
                    conn.execute(stmt.text.encode(), prepare=False)
                except psycopg.Error as exc:
                    raise _statement_error(target, file, stmt, exc) from None
            duration_ms = int((time.monotonic() - started) * 1000)
            conn.execute(
                sql.SQL(
                    "INSERT INTO {}.{} (version, name, checksum, duration_ms) "
                    "VALUES (%s, %s, %s, %s)"
                ).format(sql.Identifier(TRACKING_SCHEMA), sql.Identifier(TRACKING_TABLE)),
                (file.version, file.name, file.checksum, duration_ms),
            )
    except psycopg.OperationalError as exc:
        raise OperationFailed(
            f"{target.name}: connection lost while applying {file.filename}: {first_line(exc)}"
        ) from None
    return AppliedFile(file.version, file.name, duration_ms, len(statements))


def _statement_error(
    target: DatabaseTarget, file: MigrationFile, stmt: _Statement, exc: psycopg.Error
) -> OperationFailed:
    line = stmt.line
    position = exc.diag.statement_position
    if position and position.isdigit():
        line += stmt.text.count("\n", 0, int(position) - 1)
    first = stmt.text.splitlines()[0]
    shown = first if len(first) <= 80 else first[:77] + "..."
    context = exc.diag.context.splitlines()[0] if exc.diag.context else None
    detail = f" [{context}]" if context else ""
    cls = LockTimeout if isinstance(exc, psycopg.errors.LockNotAvailable) else MigrationFailed
    return cls(
        f"{target.name}: {file.filename} line {line}: {first_line(exc)}{detail} "
        f"in statement `{shown}`; this file was rolled back, earlier files stay applied"
    )
