"""`chainlens-ops status`: one look at everything this tool keeps, per database.

Each check is ok or needs action, and then names the commands that fix it; a check
that cannot run (connection, repository) needs action too, so monitoring notices.
Beside the checks: the recoverable window of each repository (chainlens_ops.restore.window)
and the daemon's jobs. Reads only: nothing is written, not even a WAL scan cache.

What needs action, and why the thresholds are where they are:

- schema: a pending file (apply it) or drift (review by hand);
- partitions: the current month or the next one missing (`partition ensure`), rows
  waiting in the default partition (`partition create-month` for each of their months);
- WAL archive: archive_mode off, the archiver failing now (its last failure is newer
  than its last success), the server's last archived segment not in this repository
  (archive_command archives elsewhere), gaps on the restore path (`wal check`'s walk);
- WAL backlog: segments finished but not archived yet (`pg_ls_archive_statusdir()`),
  staged warn then critical by count or by the oldest's age (`[status]` thresholds):
  a stuck archiver fills `pg_wal` and then the disk;
- backups: none, the newest older than 26 h (a daily backup two hours late), archived
  WAL but no base backup (no point-in-time restore), the newest verify or drill failed,
  a damaged manifest (it may be the newest: an older backup never passes for it);
- cache: rows expired for more than 2 h (the hourly cleanup is not running); a few
  expired rows between runs are normal;
- daemon: a job whose last run failed, a slot missed by more than 5 minutes (the
  daemon is not running), or no job ever run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from chainlens_ops.backup.manifest import (
    BASE,
    INCR,
    LOGICAL,
    BackupManifest,
    Catalog,
    read_catalog,
)
from chainlens_ops.backup.proofs import DRILL, VERIFY, Proof, latest_proofs
from chainlens_ops.core.errors import ChainlensError
from chainlens_ops.core.outcome import failed_exit
from chainlens_ops.daemon.history import JobRun
from chainlens_ops.daemon.jobs import CommandCheck, read_daemon_config
from chainlens_ops.daemon.report import daemon_fix, daemon_status
from chainlens_ops.maintenance.cache import cache_stats
from chainlens_ops.partitions.registry import MANAGED_TABLES, list_partitions
from chainlens_ops.pg.backlog import OK, Backlog, backlog_level, read_backlog
from chainlens_ops.pg.connection import connect
from chainlens_ops.pg.walnames import parse_wal_name
from chainlens_ops.repository import Repository, open_repository
from chainlens_ops.restore.window import RecoverableWindow, recoverable_window
from chainlens_ops.settings.config import DATABASES, Settings
from chainlens_ops.settings.keys import format_bytes
from chainlens_ops.storage import NotFound
from chainlens_ops.wal.inventory import DEFAULT_SEG_SIZE, WalCheck, WalGap, check_wal

BACKUP_MAX_AGE = timedelta(hours=26)
CACHE_OVERDUE = timedelta(hours=2)

_ARCHIVER = (
    "SELECT current_setting('archive_mode'), last_archived_wal, last_archived_time, "
    "failed_count, last_failed_wal, last_failed_time FROM pg_stat_archiver"
)


@dataclass(frozen=True)
class Check:
    area: str
    database: str
    ok: bool
    detail: str
    fixes: list[str] = field(default_factory=list)  # commands that fix it, when not ok
    facts: Any = None  # the area's facts, for --json


@dataclass(frozen=True)
class TableFacts:
    table: str
    current_month: bool  # the current month's partition exists
    months_ahead: int  # months after the current one with a partition, without a hole
    newest_month: str | None
    default_rows: int
    default_months: list[str]


@dataclass(frozen=True)
class ArchiveFacts:
    archive_mode: str
    last_archived_wal: str | None
    last_archived_at: datetime | None
    last_archived_age_s: float | None
    failed_count: int
    last_failed_wal: str | None
    last_failed_at: datetime | None
    failing_now: bool
    repo: str | None
    in_repository: bool | None  # the server's last archived file is in this repository
    newest_in_repository: str | None
    gaps: list[WalGap]
    problems: list[str]
    stale_temp_files: int


@dataclass(frozen=True)
class BacklogFacts:
    level: str  # ok, warn, critical
    backlog: Backlog
    last_failed_wal: str | None


@dataclass(frozen=True)
class NewestBackup:
    kind: str
    id: str
    finished_at: str
    age_s: float
    size_bytes: int
    verified: Proof | None
    drilled: Proof | None


@dataclass(frozen=True)
class CacheFacts:
    rows: int
    expired_rows: int
    oldest_expired_at: datetime | None
    overdue: bool


@dataclass(frozen=True)
class JobFacts:
    name: str
    command: str
    schedule: str
    last_run: JobRun | None
    last_success_at: datetime | None
    next_run: datetime | None
    overdue: bool
    failed: bool = False  # its latest finished run failed (daemon.status.JobStatus.failed)


@dataclass(frozen=True)
class RepositoryWindow:
    repo: str
    databases: list[str]
    window: RecoverableWindow | None
    error: str | None = None


@dataclass(frozen=True)
class StatusReport:
    checked_at: datetime
    ok: bool
    checks: list[Check]
    windows: list[RepositoryWindow]
    jobs: list[JobFacts]

    @property
    def exit_code(self) -> int:
        """1 when something needs action (for monitoring)."""
        return failed_exit(self.ok)


def _age(when: datetime, now: datetime) -> str:
    minutes = (now - when).total_seconds() / 60
    if minutes < 120:
        return f"{max(minutes, 0):.0f} min ago"
    return f"{minutes / 60:.1f} h ago" if minutes < 72 * 60 else f"{minutes / 1440:.0f} days ago"


class _Repos:
    """Each repository read once, however many databases share it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._repos: dict[str, Repository] = {}
        self._checks: dict[str, WalCheck] = {}
        self._catalogs: dict[str, Catalog] = {}

    def of(self, db: str) -> Repository:
        repo = open_repository(self.settings, db=db)
        return self._repos.setdefault(repo.url, repo)

    def wal_check(self, repo: Repository) -> WalCheck:
        if repo.url not in self._checks:
            self._checks[repo.url] = check_wal(repo, clean_stale=False)
        return self._checks[repo.url]

    def catalog(self, repo: Repository) -> Catalog:
        if repo.url not in self._catalogs:
            self._catalogs[repo.url] = read_catalog(repo)
        return self._catalogs[repo.url]


def _schema(settings: Settings, db: str) -> Check:
    from chainlens_ops.schema.migrate import schema_status

    files = schema_status(settings.target(db)).files
    named = {s: [f"{f.version}_{f.name}" for f in files if f.state == s]
             for s in ("applied", "pending", "drifted", "missing")}  # fmt: skip
    pending, drift = named["pending"], named["drifted"] + named["missing"]
    detail = f"{len(named['applied'])} applied, {len(pending)} pending, {len(drift)} drifted"
    fixes = [f"chainlens-ops schema status --db {db} (drift: {', '.join(drift)}; review by hand)"]
    if not drift:
        fixes = [f"chainlens-ops schema apply --db {db}"] if pending else []
    return Check("schema", db, not fixes, detail, fixes, named)


def _partitions(settings: Settings, db: str, now: datetime) -> Check:
    facts: list[TableFacts] = []
    fixes: list[str] = []
    for managed in (t for t in MANAGED_TABLES if t.database == db):
        (t,) = list_partitions(settings, table=managed.qualified)
        months = sorted((p.lower, p.upper) for p in t.partitions
                        if not p.is_default and p.lower and p.upper)  # fmt: skip
        current = any(lo <= now < up for lo, up in months)
        ahead = _months_ahead(months, now)
        newest = max((up for _, up in months), default=None)
        last = None if newest is None else f"{(newest - timedelta(days=1)):%Y-%m}"
        facts.append(TableFacts(t.table, current, ahead, last, t.default_rows or 0,
                                t.default_months))  # fmt: skip
        if not current or ahead < 1:
            fixes.append(f"chainlens-ops partition ensure --table {t.table}")
        if t.default_rows:
            fixes += [f"chainlens-ops partition create-month {t.table} {m}"
                      for m in t.default_months]  # fmt: skip
    detail = "; ".join(
        f"{f.table}: {f.months_ahead} month(s) ready ahead"
        + ("" if f.current_month else ", NO partition for this month")
        + f", {f.default_rows} row(s) in default"
        + (f" ({' '.join(f.default_months)})" if f.default_rows else "")
        for f in facts
    )
    return Check("partitions", db, not fixes, detail or "no managed tables", fixes, facts)


def _months_ahead(months: list[tuple[datetime, datetime]], now: datetime) -> int:
    """How many months after the current one have their partition, without a hole."""
    starts = {(lo.astimezone(UTC).year, lo.astimezone(UTC).month) for lo, _ in months}
    year, month, ahead = now.year, now.month, 0
    while True:
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        if (year, month) not in starts:
            return ahead
        ahead += 1


def _archive(settings: Settings, repos: _Repos, db: str, now: datetime) -> Check:
    with connect(settings.target(db)) as conn:
        row = conn.execute(_ARCHIVER).fetchone()
    assert row is not None
    mode, last, last_at, failed, failed_wal, failed_at = row
    failing = failed_at is not None and (last_at is None or failed_at > last_at)
    fixes: list[str] = []
    if mode == "off":
        fixes.append("set archive_mode = on and archive_command (README: Wiring the archive)")
    elif failing:
        fixes.append(f"chainlens-ops check --db {db} (and the server log: archive_command fails)")
    repo: Repository | None = None
    try:
        repo = repos.of(db)
    except ChainlensError:
        if mode != "off":
            fixes.append(f"set CHAINLENS_REPO or `repo` in the config file for {db}")
    check: WalCheck | None = None
    if repo is not None:
        try:
            check = repos.wal_check(repo)
        except ChainlensError as exc:
            fixes.append(f"chainlens-ops check --db {db} ({exc.one_line()})")
    in_repo = _holds(repo, last) if repo is not None and last else None
    if in_repo is False:
        fixes.append(f"chainlens-ops check --db {db} (the server archives {last} elsewhere)")
    if repo is not None and check is not None and _gaps_after_newest_base(repos, repo, check):
        fixes.append(f"chainlens-ops backup --db {db} (WAL gaps since the newest "
                     f"base backup: `chainlens-ops wal check --db {db}` names them)")  # fmt: skip
    facts = ArchiveFacts(
        str(mode), last, last_at, (now - last_at).total_seconds() if last_at else None,
        int(failed or 0), failed_wal, failed_at, failing, repo.url if repo else None, in_repo,
        check.last if check else None, list(check.gaps) if check else [],
        list(check.problems) if check else [], check.stale_temp_files if check else 0,
    )  # fmt: skip
    return Check("wal archive", db, not fixes, _archive_detail(facts, now), fixes, facts)


def _backlog(settings: Settings, db: str) -> Check:
    with connect(settings.target(db)) as conn:
        backlog = read_backlog(conn)
        row = conn.execute("SELECT last_failed_wal FROM pg_stat_archiver").fetchone()
    level = backlog_level(backlog, settings.status)
    facts = BacklogFacts(level, backlog, row[0] if row else None)
    detail = f"{backlog.segments} segment(s) waiting to be archived"
    if backlog.segments:
        detail += f" ({format_bytes(backlog.bytes)}, oldest {backlog.oldest_age_s or 0:.0f}s)"
    if level == OK:
        return Check("wal backlog", db, True, detail, [], facts)
    cause = f"; archiver's last failure: {facts.last_failed_wal}" if facts.last_failed_wal else ""
    fixes = [f"chainlens-ops check --db {db} (archiving is behind or stuck{cause})"]
    return Check("wal backlog", db, False, f"{level.upper()}: {detail}", fixes, facts)


def _gaps_after_newest_base(repos: _Repos, repo: Repository, check: WalCheck) -> bool:
    """Gaps that break a restore to now. Older ones only cut off older times, which a new
    base backup cannot mend either; the detail still counts them."""
    if not check.gaps:
        return False
    base = next(iter(repos.catalog(repo).pitr_starts()), None)
    if base is None:
        return True
    marker = repo.marker()
    seg_size = marker.wal_segment_size if marker else DEFAULT_SEG_SIZE
    start = parse_wal_name(str(base.start_wal)).segno(seg_size)
    return any(parse_wal_name(g.last).segno(seg_size) >= start for g in check.gaps)


def _archive_detail(f: ArchiveFacts, now: datetime) -> str:
    if f.archive_mode == "off":
        return "archive_mode is off"
    text = f"last archived {f.last_archived_wal or 'none'}"
    if f.last_archived_at:
        text += f" ({_age(f.last_archived_at, now)})"
    text += f"; {f.failed_count} failure(s)"
    if f.failing_now:
        text += f", failing now on {f.last_failed_wal}"
    if f.repo is not None:
        gaps = sum(g.count for g in f.gaps)
        text += f"; {gaps} missing segment(s) in {len(f.gaps)} gap(s)" if f.gaps else "; no gaps"
    if f.stale_temp_files:
        text += f"; {f.stale_temp_files} stale temp file(s) (`wal check` removes them)"
    return text


def _holds(repo: Repository, name: str) -> bool | None:
    try:
        repo.wal.stat(parse_wal_name(name))
    except NotFound:
        return False
    except ChainlensError:
        return None
    return True


def _backups(repos: _Repos, db: str, now: datetime) -> Check:
    repo = repos.of(db)
    valid = repos.catalog(repo).valid  # newest first
    # A base backup is of the whole cluster, which this repository serves.
    picks = [next(iter(repos.catalog(repo).pitr_starts()), None),
             next((b for b in valid if b.kind == LOGICAL and b.target == db), None)]  # fmt: skip
    newest = [_newest(repo, b, now) for b in picks if b is not None]
    fixes: list[str] = []
    # `backup` (auto) takes a physical backup on a cluster that archives here: a full or
    # an incremental read from the data folder on the database host, pg_basebackup
    # elsewhere; where it cannot, its one line says why.
    no_base = picks[0] is None and repos.wal_check(repo).last is not None
    if no_base:
        fixes.append(f"chainlens-ops backup --db {db} (WAL but no base backup)")
    elif not newest:
        fixes.append(f"chainlens-ops backup --db {db}")
    elif min(n.age_s for n in newest) > BACKUP_MAX_AGE.total_seconds():
        fixes.append(f"chainlens-ops backup --db {db} (the newest is over 26 h old)")
    for n in newest:
        if n.verified is not None and not n.verified.ok:
            fixes.append(f"chainlens-ops backup verify {n.id}")
        if n.drilled is not None and not n.drilled.ok:
            fixes.append(f"chainlens-ops restore drill --backup {n.id}")
    detail = "; ".join(_backup_detail(n) for n in newest) or "no backup in the repository"
    damaged = repos.catalog(repo).damaged
    if damaged:
        # A damaged manifest may be the newest backup: never let an older one pass for it.
        detail += f"; {len(damaged)} damaged manifest(s): {', '.join(damaged)}"
        fixes += [f"chainlens-ops backup list --db {db} (the manifest of {i} is damaged)"
                  for i in damaged]  # fmt: skip
    return Check("backups", db, not fixes, detail, list(dict.fromkeys(fixes)), newest)


def _newest(repo: Repository, b: BackupManifest, now: datetime) -> NewestBackup:
    from chainlens_ops.backup.manifest import parse_time

    proofs = latest_proofs(repo, b.id)
    age = (now - parse_time(b.finished_at)).total_seconds()
    return NewestBackup(b.kind, b.id, b.finished_at, age, b.size_bytes, proofs.get(VERIFY),
                        proofs.get(DRILL))  # fmt: skip


def _backup_detail(n: NewestBackup) -> str:
    def proof(p: Proof | None, passed: str, never: str) -> str:
        return never if p is None else passed if p.ok else f"{p.kind} FAILED"

    minutes = n.age_s / 60
    age = f"{minutes:.0f} min ago" if minutes < 120 else f"{minutes / 60:.1f} h ago"
    proofs = [proof(n.verified, "verified", "not verified")]
    if n.kind in (BASE, INCR):  # a physical backup: a drill restores it
        proofs.append(proof(n.drilled, "drilled", "never drilled"))
    return f"{n.kind} {n.id} ({age}, {', '.join(proofs)})"


def _cache(settings: Settings, now: datetime) -> Check:
    stats = cache_stats(settings)
    oldest = stats.oldest_expired_at
    overdue = oldest is not None and now - oldest > CACHE_OVERDUE
    detail = f"{stats.rows} rows, {stats.expired_rows} expired"
    if oldest is not None:
        detail += f" (the oldest expired {_age(oldest, now)})"
    facts = CacheFacts(stats.rows, stats.expired_rows, oldest, overdue)
    return Check("cache", "microservices", not overdue, detail,
                 ["chainlens-ops cache cleanup"] if overdue else [], facts)  # fmt: skip


def _jobs(settings: Settings, check: CommandCheck, now: datetime) -> list[JobFacts] | None:
    """None when no daemon is configured here (no [[jobs]]); a broken [[jobs]] entry
    raises, so status reports it (as `daemon status` does) and exits 1."""
    if not settings.jobs:
        return None
    config = read_daemon_config(settings, check)
    return [
        JobFacts(
            j.name,
            j.command,
            j.schedule,
            j.last_run,
            j.last_success.started_at if j.last_success else None,
            j.next_fire,
            j.overdue,
            j.failed,
        )
        for j in daemon_status(settings, config, now)
    ]


def _daemon(jobs: list[JobFacts], fix: str) -> Check:
    failed = [j.name for j in jobs if j.failed]
    late = [j.name for j in jobs if j.overdue]
    fixes = [f"chainlens-ops daemon status (failed: {', '.join(failed)})"] if failed else []
    if late or not any(j.last_run for j in jobs):
        fixes.append(fix)
    detail = "; ".join(
        f"{j.name}: {j.last_run.status if j.last_run else 'never ran'}"
        + (", overdue" if j.overdue else "")
        for j in jobs
    )
    return Check("daemon", "microservices", not fixes, detail, fixes, jobs)


def collect_status(
    settings: Settings, db: str | None, check_command: CommandCheck, now: datetime | None = None
) -> StatusReport:
    """Every check for `db` (default: both databases). Never raises for a failing check:
    it is reported as needing action."""
    now = now or datetime.now(UTC)
    names = [db] if db and db != "all" else list(DATABASES)
    repos = _Repos(settings)
    checks: list[Check] = []

    def run(area: str, name: str, fn: Callable[[], Check]) -> None:
        try:
            checks.append(fn())
        except (ChainlensError, psycopg.Error) as exc:
            why = exc.one_line() if isinstance(exc, ChainlensError) else str(exc).strip()
            checks.append(Check(area, name, False, f"cannot check: {why}", []))

    for n in names:
        run("schema", n, lambda n=n: _schema(settings, n))  # type: ignore[misc]
        run("partitions", n, lambda n=n: _partitions(settings, n, now))  # type: ignore[misc]
        run("wal archive", n, lambda n=n: _archive(settings, repos, n, now))  # type: ignore[misc]
        run("wal backlog", n, lambda n=n: _backlog(settings, n))  # type: ignore[misc]
        run("backups", n, lambda n=n: _backups(repos, n, now))  # type: ignore[misc]
    jobs: list[JobFacts] = []
    if "microservices" in names:
        run("cache", "microservices", lambda: _cache(settings, now))
        try:
            jobs = _jobs(settings, check_command, now) or []
        except (ChainlensError, psycopg.Error) as exc:
            why = exc.one_line() if isinstance(exc, ChainlensError) else str(exc).strip()
            checks.append(Check("daemon", "microservices", False, f"cannot check: {why}"))
        else:
            if jobs:
                checks.append(_daemon(jobs, daemon_fix(settings)))
    windows = _windows(repos, names)
    return StatusReport(now, all(c.ok for c in checks), checks, windows, jobs)


def _windows(repos: _Repos, names: list[str]) -> list[RepositoryWindow]:
    by_repo: dict[str, list[str]] = {}
    for n in names:
        try:
            by_repo.setdefault(repos.of(n).url, []).append(n)
        except ChainlensError:
            continue  # no repository for it: its wal archive check says so
    out = []
    for url, dbs in by_repo.items():
        repo = repos.of(dbs[0])
        try:
            window = recoverable_window(repo, repos.wal_check(repo), catalog=repos.catalog(repo))
            out.append(RepositoryWindow(url, dbs, window))
        except ChainlensError as exc:
            out.append(RepositoryWindow(url, dbs, None, exc.one_line()))
    return out
