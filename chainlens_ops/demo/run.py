"""`chainlens-ops demo`: the whole mission on a sandbox cluster, step by step.

Each step calls the same core function the CLI command calls; only PostgreSQL itself
runs our executable (archive_command = `wal push`, restore_command = `wal fetch`).
"""

from __future__ import annotations

import os
import shlex
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from chainlens_ops.backup.manifest import read_catalog
from chainlens_ops.backup.take import BackupOptions, take_backup
from chainlens_ops.backup.verify import verify_backup
from chainlens_ops.core.errors import OperationFailed
from chainlens_ops.daemon.jobs import CommandCheck, read_daemon_config
from chainlens_ops.daemon.scheduler import Daemon
from chainlens_ops.demo import data, sandbox
from chainlens_ops.demo.sandbox import Cluster
from chainlens_ops.maintenance.cache import cleanup_cache
from chainlens_ops.partitions.create import ensure_partitions
from chainlens_ops.repository import Repository, repository_for
from chainlens_ops.restore.drill import run_drill
from chainlens_ops.restore.physical import _tool_path as executable_path
from chainlens_ops.restore.plan import parse_target_time
from chainlens_ops.restore.points import create_restore_point
from chainlens_ops.restore.table import TableRestoreOptions, restore_tables
from chainlens_ops.schema.migrate import apply_schema
from chainlens_ops.settings.config import DATABASES, Settings, load_settings

__all__ = ["DemoOptions", "DemoResult", "Step", "run_demo", "tear_down_demo"]

RESTORE_POINT = "demo-before-incident"
# What the incident step brings back (usage_events, untouched, shows a partitioned table
# coming back whole).
RESTORED_TABLES = ("public.user_profiles", "public.subscriptions", "public.usage_events")
DAEMON_JOBS = (("cache-cleanup", "cache cleanup", "15s"), ("partitions", "partition ensure", "30s"))
Say = Callable[[str], None]


@dataclass(frozen=True)
class DemoOptions:
    root: Path
    check_command: CommandCheck  # validates the daemon jobs' command lines (the real CLI)
    daemon_seconds: float = 60.0
    tool: str = ""  # our executable, as PostgreSQL runs it (default: found next to python)


@dataclass
class Step:
    name: str
    seconds: float
    detail: str  # what the narration said
    summary: str = ""  # a few words for the summary table


class StepLog(list[str]):
    """The narration lines of a step, and its summary for the closing table."""

    summary = ""


@dataclass
class DemoResult:
    root: str
    primary_port: int
    restored_schema: str  # in the primary's supabase database: `restore table`'s copy
    config_file: str
    repo: str
    tool: str = "chainlens-ops"  # the executable, as PostgreSQL runs it
    steps: list[Step] = field(default_factory=list)
    comparison: list[tuple[str, int, int]] = field(default_factory=list)  # (what, now, restored)


def tear_down_demo(root: Path) -> bool:
    return sandbox.tear_down(root)


def _write_config(path: Path, primary: Cluster, repo: Path) -> None:
    lines = [f'repo = "{repo}"', ""]
    for db in DATABASES:
        lines += [f"[databases.{db}]", f'dsn = "{primary.conninfo(db)}"', ""]
    lines += ["[daemon]", 'job_timeout = "60s"', ""]
    for name, command, every in DAEMON_JOBS:
        lines += [
            "[[jobs]]",
            f'name = "{name}"',
            f'command = "{command}"',
            f'every = "{every}"',
            "",
        ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _query(conninfo: str, statement: str) -> int:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(statement).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _execute(conninfo: str, script: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(script)


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


class _Runner:
    def __init__(self, say: Say) -> None:
        self.say = say
        self.steps: list[Step] = []

    @contextmanager
    def step(self, name: str) -> Iterator[StepLog]:
        self.say(f"[bold cyan]▶ {name}[/]")
        detail = StepLog()
        started = time.monotonic()
        yield detail
        seconds = time.monotonic() - started
        self.steps.append(Step(name, seconds, "; ".join(detail), detail.summary))
        for line in detail:
            self.say(f"  {line}")


def _wait_archived(conninfo: str, timeout: float = 60.0) -> None:
    """Switch WAL and wait until the archiver has the segment (so a restore can reach it)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
        wanted = str(row[0]) if row else ""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = conn.execute(
                "SELECT last_archived_wal, failed_count FROM pg_stat_archiver"
            ).fetchone()
            if got and got[0] is not None and str(got[0]) >= wanted:
                return
            time.sleep(0.2)
    raise OperationFailed(f"WAL segment {wanted} was not archived within {timeout:g}s")


def run_demo(options: DemoOptions, say: Say) -> DemoResult:
    root = options.root
    sandbox.tear_down(root)  # a second run starts clean
    root.mkdir(parents=True)
    os.chmod(root, 0o755)
    repo = root / "repo"
    repo.mkdir()
    tool = options.tool or executable_path()
    primary = Cluster("primary", root / "primary" / "data", sandbox.free_port())
    config = root / "chainlens-ops.toml"
    _write_config(config, primary, repo)
    result = DemoResult(str(root), primary.port, "", str(config), str(repo), tool)
    r = _Runner(say)
    if sandbox.as_root():
        # The tool refuses root for restores and another owner's repository: the whole
        # demo runs as the server's user, as a DBA would run the tool.
        sandbox.give_to_server_user(root)
        sandbox.become_server_user()
    archive = f"{shlex.quote(tool)} wal push --repo {shlex.quote(str(repo))} %p"
    with r.step("start sandbox cluster") as d:
        sandbox.init_cluster(primary, archive)
        sandbox.start(primary)
        d.append(f"PostgreSQL {sandbox.MAJOR} on 127.0.0.1:{primary.port}, data {primary.pgdata}")
        d.append(f"archive_command = {archive}")
        d.summary = f"PostgreSQL {sandbox.MAJOR}, port {primary.port}"
    for db in DATABASES:
        _execute(primary.conninfo("postgres"), f"CREATE DATABASE {db}")
    settings = load_settings(config, env={})
    _steps_with_data(r, settings, primary, result)
    _steps_incident_restore(r, settings, primary, repo, result)
    _steps_prove(r, repository_for(settings, str(repo)))
    with r.step("cache cleanup") as d:
        cleaned = cleanup_cache(settings)
        d.append(f"{cleaned.deleted} expired cache rows deleted in {cleaned.batches} batch(es)")
        d.summary = f"{cleaned.deleted} expired rows deleted"
    _step_daemon(r, settings, config, options.daemon_seconds, options.check_command)
    with r.step("sizes") as d:
        d.append(
            f"repository {_mb(_dir_bytes(repo))}, primary data {_mb(_dir_bytes(primary.pgdata))}"
        )
        d.summary = d[0]
    result.steps = r.steps
    return result


def _steps_with_data(r: _Runner, settings: Settings, primary: Cluster, result: DemoResult) -> None:
    with r.step("schema apply") as d:
        for db in DATABASES:
            applied = apply_schema(settings.target(db))
            d.append(f"{db}: {len(applied.applied)} files applied")
            d.summary += f"{', ' if d.summary else ''}{db} {len(applied.applied)} files"
    with r.step("generate sample data") as d:
        _execute(primary.conninfo("supabase"), data.SUPABASE_SQL)
        _execute(primary.conninfo("microservices"), data.MICROSERVICES_SQL)
        users = _query(primary.conninfo("supabase"), "SELECT count(*) FROM public.user_profiles")
        events = _query(primary.conninfo("supabase"), "SELECT count(*) FROM public.usage_events")
        d.append(f"{users} users, {events} usage events over 5 months, 6000 prices, 400 cache rows")
        d.summary = f"{users} users, {events} events, 6000 prices"
    with r.step("partition ensure") as d:
        ensured = ensure_partitions(settings)
        moved = sum(m.rows_moved for m in ensured.months)
        d.append(
            f"{len(ensured.created)} monthly partitions created ({ensured.first}..{ensured.last})"
            + (f", {moved} rows moved out of the default" if moved else "")
        )
        d.summary = f"{len(ensured.created)} created, {moved} rows moved"
    with r.step("base and logical backups") as d:
        for kind in ("base", "logical"):
            for db in DATABASES if kind == "logical" else DATABASES[:1]:
                target = settings.target(db)
                taken = take_backup(target, repository_for(settings, str(Path(result.repo))),
                                    BackupOptions(kind=kind))  # fmt: skip
                d.append(f"{kind} {db}: {taken.id} ({_mb(taken.size_bytes)}, {taken.seconds:.1f}s)")
                d.summary += f"{', ' if d.summary else ''}{kind} {db} {_mb(taken.size_bytes)}"


def _steps_incident_restore(
    r: _Runner,
    settings: Settings,
    primary: Cluster,
    repo: Path,
    result: DemoResult,
) -> None:
    conninfo = primary.conninfo("supabase")
    with r.step("restore point, then an incident") as d:
        create_restore_point(settings.target("supabase"), repository_for(settings, str(repo)),
                             RESTORE_POINT)  # fmt: skip
        before = {k: _query(conninfo, q) for k, q in data.PROBE_SQL.items()}
        time.sleep(1.0)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            row = conn.execute("SELECT to_char(now() AT TIME ZONE 'UTC', "
                               "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')").fetchone()  # fmt: skip
        target_time = str(row[0]) if row else ""
        time.sleep(1.0)
        _execute(conninfo, data.INCIDENT_SQL)
        _wait_archived(conninfo)
        d.append(f"restore point {RESTORE_POINT!r}; target time {target_time}")
        d.append(
            "incident: UPDATE user_profiles SET tier='free' (no WHERE); DELETE active subscriptions"
        )
        d.summary = f"{RESTORE_POINT}; UPDATE, DELETE"
    with r.step("restore table --target-time, beside the live tables") as d:
        done = restore_tables(
            repository_for(settings, str(repo)),
            settings.target("supabase"),
            TableRestoreOptions(
                tables=RESTORED_TABLES,
                target=parse_target_time(target_time),
                scratch_root=primary.pgdata.parent.parent,
            ),
        )
        schema = done.plan.schema
        written = done.extracted_bytes - done.skipped_bytes
        d.append(
            f"from {done.plan.backup_id}: {_mb(written)} extracted, {_mb(done.skipped_bytes)} "
            f"of other databases skipped; recovered in a scratch server in "
            f"{done.recovery_seconds:.1f}s, then removed"
        )
        for t in done.tables:
            d.append(f"{t.table} -> {t.restored_as}: {t.rows_restored} rows ({t.shape})")
        d.append(f"into schema {schema} of the live supabase database (live tables untouched)")
        d.summary = f"{len(done.tables)} tables into {schema}, {done.seconds:.1f}s"
    result.restored_schema = schema
    after = {k: _query(conninfo, q) for k, q in data.PROBE_SQL.items()}
    back = {k: _query(conninfo, q.replace("public.", f"{schema}."))
            for k, q in data.PROBE_SQL.items()}  # fmt: skip
    result.comparison = [(k, after[k], back[k]) for k in data.PROBE_SQL]
    if back != before:
        raise OperationFailed(
            f"the restored data differs from before the incident: {back} vs {before}"
        )


def _steps_prove(r: _Runner, repository: Repository) -> None:
    """What `status` reports as proof: every backup re-read, the base backup drilled."""
    with r.step("backup verify") as d:
        for backup in read_catalog(repository).valid:
            checked = verify_backup(repository, backup.id)
            d.append(f"{backup.id}: {'ok' if checked.ok else 'FAILED'}")
            if not checked.ok:
                raise OperationFailed(f"backup {backup.id} failed verification")
        d.summary = f"{len(d)} backups ok"
    with r.step("restore drill") as d:
        drill = run_drill(repository, None)
        if not drill.ok:
            raise OperationFailed(f"the restore drill failed: {drill.error}")
        d.append(f"{drill.backup_id} restored in a scratch copy and promoted; RTO "
                 f"{drill.rto_seconds or 0:.1f}s; {len(drill.row_counts)} tables read")  # fmt: skip
        d.summary = f"RTO {drill.rto_seconds or 0:.1f}s, {len(drill.row_counts)} tables read"


def _step_daemon(
    r: _Runner, settings: Settings, config: Path, seconds: float, check: CommandCheck
) -> None:
    with r.step(f"daemon for {seconds:g}s") as d:
        daemon_config = read_daemon_config(settings, check)
        daemon = Daemon(settings, daemon_config)
        jobs = ", ".join(f"{name} every {every}" for name, _, every in DAEMON_JOBS)
        r.say(f"  {jobs}: quiet for {seconds:g}s, then the runs")
        timer = threading.Timer(seconds, daemon.stop.set)
        timer.start()
        try:
            outcome = daemon.run()
        finally:
            timer.cancel()
        names = ", ".join(j.name for j in daemon_config.jobs)
        runs = f"{outcome.runs_started} job run{'' if outcome.runs_started == 1 else 's'}"
        d.append(f"{runs} started ({names})")
        d.summary = runs
