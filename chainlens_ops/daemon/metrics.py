"""The Prometheus textfile-collector file, rewritten atomically after each run.

Job figures come from `chainlens_ops.job_runs`, so every replica writes the same picture
(runs made by the other replicas included). WAL archiving comes from each database
server's `pg_stat_archiver`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psycopg

from chainlens_ops.core.atomicfile import write_bytes_atomic
from chainlens_ops.core.errors import ChainlensError
from chainlens_ops.daemon.history import JobRun, last_runs, wal_archiver
from chainlens_ops.pg.backlog import read_backlog
from chainlens_ops.pg.connection import connect
from chainlens_ops.settings.config import DATABASES, Settings

log = logging.getLogger("chainlens_ops.daemon")


@dataclass(frozen=True)
class Metric:
    name: str
    help: str
    samples: list[tuple[dict[str, str], float]]


def newest_backup_age_s(settings: Settings) -> dict[tuple[str, str], float]:
    """Seconds since the newest valid backup finished, per (database, kind), read from
    each configured repository's catalog. A repository that cannot be read is logged and
    left out (an absent series, never a made-up value)."""
    from chainlens_ops.backup.manifest import BackupKind, parse_time, read_catalog, utc_now
    from chainlens_ops.repository import repository_for

    ages: dict[tuple[str, str], float] = {}
    now = utc_now()
    for db in DATABASES:
        url = settings.target(db).repo
        if not url:
            continue
        try:
            catalog = read_catalog(repository_for(settings, url))
        except ChainlensError as exc:
            log.warning("metrics: no backup figures for %s: %s", db, exc.one_line())
            continue
        for backup in catalog.valid:  # newest first
            # An incremental is a base backup a restore starts from, as `status` counts it.
            key = (backup.target, BackupKind.BASE.value if backup.physical else backup.kind)
            if key not in ages:
                ages[key] = (now - parse_time(backup.finished_at)).total_seconds()
    return ages


def collect(settings: Settings, job_names: Iterable[str]) -> list[Metric]:
    runs = last_runs(settings.target("microservices"))
    names = sorted(job_names)
    metrics = [
        Metric(
            "chainlens_ops_job_last_success_timestamp_seconds",
            "When the job's last successful run finished (Unix time).",
            _per_job(names, runs.succeeded, _finished_epoch),
        ),
        Metric(
            "chainlens_ops_job_last_success_duration_seconds",
            "How long the job's last successful run took.",
            _per_job(names, runs.succeeded, lambda r: r.duration_s),
        ),
        Metric(
            "chainlens_ops_job_last_run_succeeded",
            "1 if the job's latest finished run succeeded, 0 if it failed.",
            _per_job(names, runs.finished, lambda r: 1.0 if r.status == "succeeded" else 0.0),
        ),
    ]
    wal_age: list[tuple[dict[str, str], float]] = []
    wal_failed: list[tuple[dict[str, str], float]] = []
    ready: list[tuple[dict[str, str], float]] = []
    ready_age: list[tuple[dict[str, str], float]] = []
    for db in DATABASES:
        try:
            with connect(settings.target(db)) as conn:
                archiver = wal_archiver(conn)
                backlog = read_backlog(conn)
        except (ChainlensError, psycopg.Error) as exc:
            why = exc.one_line() if isinstance(exc, ChainlensError) else str(exc).strip()
            log.warning("metrics: no WAL archiver figures for %s: %s", db, why)
            continue
        if archiver.get("seconds_since_archived") is not None:
            wal_age.append(({"db": db}, float(archiver["seconds_since_archived"])))
        wal_failed.append(({"db": db}, float(archiver.get("failed_count") or 0)))
        ready.append(({"db": db}, float(backlog.segments)))
        ready_age.append(({"db": db}, float(backlog.oldest_age_s or 0.0)))
    metrics.append(
        Metric(
            "chainlens_ops_wal_ready_segments",
            "WAL segments finished and waiting for archive_command (archive_status/*.ready).",
            ready,
        )
    )
    metrics.append(
        Metric(
            "chainlens_ops_wal_ready_oldest_age_seconds",
            "Seconds the oldest segment waiting for archive_command has waited (0: none).",
            ready_age,
        )
    )
    metrics.append(
        Metric(
            "chainlens_ops_wal_archive_lag_seconds",
            "Seconds since the server last archived a WAL file (pg_stat_archiver).",
            wal_age,
        )
    )
    metrics.append(
        Metric(
            "chainlens_ops_wal_archive_failed_total",
            "archive_command failures since the server's statistics reset.",
            wal_failed,
        )
    )
    backup_age = [
        ({"db": db, "kind": kind}, age)
        for (db, kind), age in sorted(newest_backup_age_s(settings).items())
    ]
    metrics.append(
        Metric(
            "chainlens_ops_backup_newest_age_seconds",
            "Age of the newest completed backup.",
            backup_age,
        )
    )
    metrics += repository_metrics(settings)
    return metrics


def repository_metrics(settings: Settings) -> list[Metric]:
    """Per database: the recoverable window's start and end, and the age of the newest
    passed verify and drill of any of its backups. Read from each repository once."""
    from chainlens_ops.backup.manifest import read_catalog, utc_now
    from chainlens_ops.backup.proofs import DRILL, VERIFY, latest_proofs
    from chainlens_ops.repository import open_repository
    from chainlens_ops.restore.window import recoverable_window

    start: list[tuple[dict[str, str], float]] = []
    end: list[tuple[dict[str, str], float]] = []
    proof_age: dict[str, list[tuple[dict[str, str], float]]] = {VERIFY: [], DRILL: []}
    now = utc_now()
    for db in DATABASES:
        if not settings.target(db).repo:
            continue
        try:
            repo = open_repository(settings, db=db)
            window = recoverable_window(repo)
            backups = [b for b in read_catalog(repo).valid if b.target == db]
            proofs = [latest_proofs(repo, b.id) for b in backups]
        except ChainlensError as exc:
            log.warning("metrics: no repository figures for %s: %s", db, exc.one_line())
            continue
        if window.start is not None and window.end is not None:
            start.append(({"db": db}, window.start.timestamp()))
            end.append(({"db": db}, window.end.timestamp()))
        for kind, samples in proof_age.items():
            passed = [p[kind].at for p in proofs if kind in p and p[kind].ok]
            if passed:
                samples.append(({"db": db}, (now - max(passed)).total_seconds()))
    return [
        Metric("chainlens_ops_recoverable_window_start_timestamp_seconds",
               "Oldest time a point-in-time restore can reach (Unix time).", start),
        Metric("chainlens_ops_recoverable_window_end_timestamp_seconds",
               "Newest time a point-in-time restore can reach (Unix time).", end),
        Metric("chainlens_ops_backup_verify_newest_age_seconds",
               "Seconds since the newest passed `backup verify` of this database.",
               proof_age[VERIFY]),
        Metric("chainlens_ops_backup_drill_newest_age_seconds",
               "Seconds since the newest passed `restore drill` of this database.",
               proof_age[DRILL]),
    ]  # fmt: skip


def render(metrics: list[Metric]) -> str:
    lines: list[str] = []
    for m in metrics:
        if not m.samples:
            continue
        lines += [f"# HELP {m.name} {m.help}", f"# TYPE {m.name} gauge"]
        for labels, value in m.samples:
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
            lines.append(f"{m.name}{{{label_text}}} {float(value)!r}")
    return "\n".join(lines) + "\n"


def write_metrics(path: str, settings: Settings, job_names: Iterable[str]) -> None:
    """Collect and atomically replace `path` (node_exporter never sees half a file)."""
    write_bytes_atomic(path, render(collect(settings, job_names)).encode(), mode=0o644)


def _per_job(
    names: list[str], runs: dict[str, JobRun], value: Callable[[JobRun], float | None]
) -> list[tuple[dict[str, str], float]]:
    out: list[tuple[dict[str, str], float]] = []
    for name in names:
        run = runs.get(name)
        figure = value(run) if run is not None else None
        if figure is not None:
            out.append(({"job": name}, float(figure)))
    return out


def _finished_epoch(run: JobRun) -> float | None:
    return run.finished_at.timestamp() if run.finished_at else None


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
