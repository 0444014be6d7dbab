"""`chainlens-ops status`: one look at everything this tool keeps, per database.

Each check is `ok` or `action` (with the command that fixes it); a check that cannot
run (connection, repository) is an `action` too, so monitoring notices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from chainlens_ops.backup.manifest import BackupManifest, parse_time, read_catalog
from chainlens_ops.cache import cache_stats
from chainlens_ops.config import DATABASES, Settings
from chainlens_ops.daemon.jobs import CommandCheck, read_daemon_config
from chainlens_ops.daemon.status import daemon_status
from chainlens_ops.errors import ChainlensError
from chainlens_ops.partitions.catalog import list_partitions
from chainlens_ops.pg.connection import connect
from chainlens_ops.repository import Repository, repo_url
from chainlens_ops.schema import schema_status

_ARCHIVER = (
    "SELECT last_archived_wal, last_archived_time, failed_count, last_failed_wal, "
    "last_failed_time FROM pg_stat_archiver"
)
BACKUP_MAX_AGE_H = 26.0  # a daily backup that is late by more than two hours


@dataclass(frozen=True)
class Check:
    area: str
    database: str
    ok: bool
    detail: str
    fix: str = ""


def _age(when: datetime, now: datetime) -> str:
    hours = (now - when).total_seconds() / 3600
    return f"{hours * 60:.0f} min ago" if hours < 2 else f"{hours:.1f} h ago"


def _schema(settings: Settings, db: str, now: datetime) -> Check:
    st = schema_status(settings.target(db))
    pending, drift = st.count("pending"), st.count("drifted") + st.count("missing")
    detail = f"{st.count('applied')} applied, {pending} pending, {drift} drifted/missing"
    fix = f"chainlens-ops schema apply --db {db}" if pending and not drift else ""
    fix = fix or (f"chainlens-ops schema status --db {db} (drift: review by hand)" if drift else "")
    return Check("schema", db, not pending and not drift, detail, fix)


def _partitions(settings: Settings, db: str, now: datetime) -> Check:
    tables = [t for t in list_partitions(settings) if t.database == db]
    problems, parts = [], []
    for t in tables:
        uppers = [p.upper for p in t.partitions if not p.is_default and p.upper is not None]
        ahead = max(0, max(((u.year - now.year) * 12 + u.month - now.month - 1 for u in uppers),
                           default=-1))  # fmt: skip
        parts.append(f"{t.table}: {ahead} month(s) ready ahead, {t.default_rows or 0} in default")
        if not uppers or max(uppers) <= now or ahead < 1:
            problems.append("chainlens-ops partition ensure")
        if t.default_flagged:
            months = " ".join(t.default_months) or "?"
            problems.append(f"chainlens-ops partition create-month {t.table} <month> ({months})")
    return Check("partitions", db, not problems, "; ".join(parts) or "no managed tables",
                 "; ".join(dict.fromkeys(problems)))  # fmt: skip


def _archive(settings: Settings, db: str, now: datetime) -> Check:
    with connect(settings.target(db)) as conn:
        mode = conn.execute("SELECT current_setting('archive_mode')").fetchone()
        row = conn.execute(_ARCHIVER).fetchone()
    if not mode or mode[0] == "off" or row is None:
        fix = "set archive_mode/archive_command (README: wiring archive_command)"
        return Check("wal archive", db, False, "archive_mode is off", fix)
    last, last_at, failed, failed_wal, failed_at = row
    detail = f"last archived {last or 'none'}" + (f" ({_age(last_at, now)})" if last_at else "")
    failing = failed_at is not None and (last_at is None or failed_at > last_at)
    if failed:
        detail += f"; {failed} failures" + (f", failing now on {failed_wal}" if failing else "")
    return Check("wal archive", db, not failing, detail,
                 f"chainlens-ops wal check --db {db}" if failing else "")  # fmt: skip


def _backups(settings: Settings, db: str, now: datetime) -> Check:
    repository = Repository(repo_url(settings, db=db), settings.s3)
    mine = [b for b in read_catalog(repository).valid if b.target == db]
    newest: dict[str, BackupManifest] = {}
    for b in mine:  # newest first
        newest.setdefault(b.kind, b)
    if not newest:
        return Check("backups", db, False, "no backup in the repository",
                     f"chainlens-ops backup --db {db}")  # fmt: skip
    ages = {k: parse_time(b.finished_at) for k, b in newest.items()}
    detail = "; ".join(f"{k} {newest[k].id} ({_age(t, now)})" for k, t in ages.items())
    fresh = (now - max(ages.values())).total_seconds() / 3600 <= BACKUP_MAX_AGE_H
    return Check("backups", db, fresh, detail, "" if fresh else f"chainlens-ops backup --db {db}")


def _cache(settings: Settings, now: datetime) -> Check:
    stats = cache_stats(settings)
    detail = f"{stats.rows} rows, {stats.expired_rows} expired"
    return Check("cache", "microservices", stats.expired_rows == 0, detail,
                 "chainlens-ops cache cleanup" if stats.expired_rows else "")  # fmt: skip


def _daemon(settings: Settings, check: CommandCheck) -> Check | None:
    try:
        config = read_daemon_config(settings.config_file, check)
    except ChainlensError:
        return None  # no daemon configured here: nothing to report
    jobs = daemon_status(settings, config)
    failed = [j.name for j in jobs if j.last_status == "failed"]
    detail = "; ".join(f"{j.name}: {j.last_status or 'never ran'}" for j in jobs)
    return Check("daemon", "microservices", not failed, detail,
                 "chainlens-ops daemon status" if failed else "")  # fmt: skip


def collect_status(
    settings: Settings, db: str | None, check_command: CommandCheck, now: datetime | None = None
) -> list[Check]:
    """Every check for `db` (default: both databases). Never raises ChainlensError: a
    failing check is reported as needing action."""
    now = now or datetime.now(UTC)
    names = [db] if db and db != "all" else list(DATABASES)
    out: list[Check] = []

    def run(area: str, name: str, fn: Callable[[], Check | None]) -> None:
        try:
            got = fn()
        except ChainlensError as exc:
            got = Check(area, name, False, f"cannot check: {exc.one_line()}", "")
        if got is not None:
            out.append(got)

    for name in names:
        run("schema", name, lambda n=name: _schema(settings, n, now))  # type: ignore[misc]
        run("partitions", name, lambda n=name: _partitions(settings, n, now))  # type: ignore[misc]
        run("wal archive", name, lambda n=name: _archive(settings, n, now))  # type: ignore[misc]
        run("backups", name, lambda n=name: _backups(settings, n, now))  # type: ignore[misc]
    if "microservices" in names:
        run("cache", "microservices", lambda: _cache(settings, now))
        run("daemon", "microservices", lambda: _daemon(settings, check_command))
    return out
