"""Restore drills: prove a backup restorable, end to end, without touching anything real.

A drill restores a base backup into a scratch folder, starts it on a free loopback port,
replays to the newest archived WAL and promotes, reads every table of every database
(row counts recorded), measures RTO (seconds from the start of the drill until the
server was usable) and RPO (age of the newest transaction it replayed), stops and
removes the scratch copy, and records the result in the catalog next to the backup
(`backups/<id>/drill-<time>.json`), so `backup list` can show proven backups.

The scratch copy is a `chainlens_ops.pg.scratch.ScratchCluster`: its server is stopped
and its folder removed on success, failure and SIGTERM (the daemon's timeout); what a
SIGKILL left behind is swept, and named, by the next drill (and `backup prune`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql

from chainlens_ops.backup.manifest import format_time, parse_time, require_backup
from chainlens_ops.backup.proofs import DRILL, record_proof
from chainlens_ops.core.crashpoints import crash_point
from chainlens_ops.core.errors import ChainlensError
from chainlens_ops.core.outcome import failed_exit
from chainlens_ops.pg.scratch import ScratchCluster
from chainlens_ops.repository import Repository
from chainlens_ops.restore.physical import RestoreOptions, planned_restore
from chainlens_ops.restore.plan import LATEST, RestorePlan, Target


@dataclass
class DrillResult:
    backup_id: str | None
    ok: bool
    started_at: str
    rto_seconds: float | None = None
    rpo_seconds: float | None = None
    replay_lsn: str | None = None
    row_counts: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    record_key: str | None = None
    swept: list[str] = field(default_factory=list)  # leftovers of dead drills, removed

    @property
    def exit_code(self) -> int:
        return failed_exit(self.ok)


def run_drill(
    repo: Repository,
    backup_id: str | None,
    *,
    scratch_root: Path | None = None,
    timeout: float = 600.0,
    config_file: Path | None = None,
) -> DrillResult:
    """Never raises for a failed drill: the result says why (and is recorded). An id the
    catalog does not hold raises UnknownBackup before anything is written."""
    if backup_id is not None:
        require_backup(repo, backup_id)
    began = time.monotonic()
    result = DrillResult(backup_id=backup_id, ok=False, started_at=format_time(datetime.now(UTC)))
    try:
        with ScratchCluster("drill", root=scratch_root) as scratch:
            result.swept = [leftover.describe() for leftover in scratch.swept]
            options = RestoreOptions(pgdata=scratch.pgdata, start=True, port=scratch.port,
                                     start_timeout=timeout, config_file=config_file,
                                     scratch=scratch)  # fmt: skip

            def planned(plan: RestorePlan) -> None:
                result.backup_id = plan.backup.id
                scratch.set_major(plan.backup.server_version // 10000)

            # Under a claim on the repository, so a prune keeps what the drill replays.
            restored = planned_restore(repo, Target(LATEST, "latest"), backup_id, options,
                                       command="restore drill", on_plan=planned)  # fmt: skip
            assert restored.started is not None
            crash_point("drill-started")
            result.rto_seconds = round(time.monotonic() - began, 3)
            result.replay_lsn = restored.started.replay_lsn
            result.row_counts, last_tx = _read_everything(scratch)
            if last_tx is not None:
                result.rpo_seconds = round((datetime.now(UTC) - last_tx).total_seconds(), 3)
            result.ok = True
    except ChainlensError as exc:
        result.error = exc.one_line()
    except psycopg.Error as exc:
        result.error = f"reading the restored copy failed: {str(exc).strip().splitlines()[0]}"
    if result.backup_id is not None:
        result.record_key = _record(repo, result)
    return result


def _read_everything(scratch: ScratchCluster) -> tuple[dict[str, int], datetime | None]:
    counts: dict[str, int] = {}
    with psycopg.connect(scratch.conninfo(), autocommit=True) as conn:
        row = conn.execute("SELECT pg_last_xact_replay_timestamp()").fetchone()
        last_tx = row[0] if row else None
        databases = [r[0] for r in conn.execute(
            "SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1")]  # fmt: skip
    for db in databases:
        with psycopg.connect(scratch.conninfo(db), autocommit=True) as conn:
            tables = conn.execute(
                "SELECT n.nspname, c.relname FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'm') "
                "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                "AND n.nspname NOT LIKE 'pg\\_toast%' ORDER BY 1, 2"
            ).fetchall()
            for schema, table in tables:
                query = sql.SQL("SELECT count(*) FROM {}.{}").format(
                    sql.Identifier(schema), sql.Identifier(table)
                )
                found = conn.execute(query).fetchone()
                counts[f"{db}.{schema}.{table}"] = int(found[0]) if found else 0
    return counts, last_tx


def _record(repo: Repository, result: DrillResult) -> str:
    when = parse_time(result.started_at)
    return record_proof(repo, str(result.backup_id), DRILL, when, asdict(result))
