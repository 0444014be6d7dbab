"""`chainlens_ops.job_runs`: one row per run, and the claim that makes each slot run once.

A run claims its slot before it starts: `INSERT ... ON CONFLICT DO NOTHING` on the unique
key (job_name, scheduled_for). Whichever replica inserts the row runs the slot; the
others see no row inserted and skip it, however late they fire. (An advisory lock alone
would only stop overlapping runs: a replica firing after the first run ended would run
the slot again.)

The claiming connection also holds a session advisory lock on the job for the length of
the run, so a job never overlaps itself across replicas either: a replica that finds the
lock taken skips the slot without claiming it. PostgreSQL drops the lock if the daemon
dies, so a crash never wedges a job; and the job's process dies with its daemon
(`runner`: a parent-death signal), so the lock never goes while the job still runs.

The lock also goes when only the connection does (the database restarted during a long
run) while the job runs on. So a running row carries a lease (`alive_until`), renewed
every tenth of the lease (`[daemon] run_lease`, 30 s) by the daemon running it: a
replica holding the lock still skips the job while a row of it is `running` with a
lease not yet expired, and marks it abandoned only once the lease has run out (a lease
after its daemon stopped renewing it). The lease leaves room for a database restart
between two renewals.
"""

from __future__ import annotations

import socket
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from chainlens_ops.core.errors import ChainlensError, OperationFailed
from chainlens_ops.pg.connection import Connection, connect, first_line
from chainlens_ops.schema.migrate import LOCK_CLASS
from chainlens_ops.schema.migrate import TRACKING_SCHEMA as SCHEMA
from chainlens_ops.settings.config import DatabaseTarget

TABLE = f"{SCHEMA}.job_runs"
# Advisory lock keys: (class, object). The 'clop' class is schema.py's (object 1 = schema
# apply); object 2 = creating job_runs. Each job's run lock is ('jobs', crc of its name).
LOCK_CREATE_TABLE = 2
_JOB_LOCK_CLASS = 0x6A6F6273  # 'jobs'

_CREATE = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {TABLE} (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_name      text        NOT NULL,
    scheduled_for timestamptz NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at   timestamptz,
    status        text        NOT NULL DEFAULT 'running'
                  CHECK (status IN ('running', 'succeeded', 'failed')),
    error         text,
    host          text        NOT NULL,
    UNIQUE (job_name, scheduled_for)
);
CREATE INDEX IF NOT EXISTS job_runs_scheduled_for ON {TABLE} (scheduled_for);
"""
# Added to tables made by earlier versions (only when missing: ALTER needs ownership).
_LEASE_COLUMN = f"ALTER TABLE {TABLE} ADD COLUMN alive_until timestamptz"
RENEWALS_PER_LEASE = 10


_FINISH = f"""
UPDATE {TABLE} SET finished_at = clock_timestamp(), status = %s, error = %s
 WHERE job_name = %s AND scheduled_for = %s
"""


_ABANDON = f"""
UPDATE {TABLE} SET status = 'failed', finished_at = clock_timestamp(),
       error = 'abandoned: the daemon running it stopped before the run finished'
 WHERE job_name = %s AND status = 'running'
   AND (alive_until IS NULL OR alive_until <= clock_timestamp())
"""

_LIVE = f"""
SELECT count(*) FROM {TABLE}
 WHERE job_name = %s AND status = 'running' AND alive_until > clock_timestamp()
"""

_RENEW = f"""
UPDATE {TABLE} SET alive_until = clock_timestamp() + make_interval(secs => %s)
 WHERE job_name = %s AND scheduled_for = %s AND status = 'running'
"""


@dataclass(frozen=True)
class JobRun:
    job_name: str
    scheduled_for: datetime
    started_at: datetime
    finished_at: datetime | None
    status: str
    error: str | None
    host: str

    @property
    def duration_s(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


def host_name() -> str:
    return socket.gethostname()


@contextmanager
def _db_errors(what: str) -> Iterator[None]:
    """A failed statement (privileges, a dropped connection) as one readable error."""
    try:
        yield
    except psycopg.Error as exc:
        raise OperationFailed(f"{what}: {first_line(exc)}") from None


def ensure_table(target: DatabaseTarget) -> None:
    """Create the schema and table if missing. Replicas starting together serialise on
    an advisory lock; a `schema apply` creating the schema at that moment makes CREATE
    SCHEMA IF NOT EXISTS fail with a unique violation, so that is retried once."""
    for attempt in (1, 2):
        with _db_errors(f"cannot create {TABLE}"), connect(target, autocommit=False) as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_CLASS, LOCK_CREATE_TABLE))
            try:
                conn.execute(_CREATE)
            except psycopg.errors.UniqueViolation:
                if attempt == 2:
                    raise
                conn.rollback()
                continue
            has_lease = conn.execute(
                "SELECT 1 FROM pg_attribute WHERE attrelid = %s::regclass "
                "AND attname = 'alive_until' AND NOT attisdropped",
                (TABLE,),
            ).fetchone()
            if has_lease is None:
                conn.execute(_LEASE_COLUMN)
            conn.commit()
            return


class Claim:
    """A claimed slot: the row exists, and the job's advisory lock is held until close()."""

    def __init__(
        self, conn: Connection, job_name: str, scheduled_for: datetime, lease_s: float
    ) -> None:
        self.conn = conn
        self.job_name = job_name
        self.scheduled_for = scheduled_for
        self.lease_s = lease_s

    @property
    def renew_every_s(self) -> float:
        return self.lease_s / RENEWALS_PER_LEASE

    def finish(self, target: DatabaseTarget, succeeded: bool, error: str | None) -> None:
        """Record the end of the run; on a fresh connection if the claiming one broke
        (the database restarted during a long run)."""
        params = ("succeeded" if succeeded else "failed", error, self.job_name, self.scheduled_for)
        try:
            self.conn.execute(_FINISH, params)
            return
        except psycopg.Error:
            pass
        with _db_errors(f"cannot record the end of the run in {TABLE}"), connect(target) as conn:
            conn.execute(_FINISH, params)

    def release(self) -> None:
        """Give the slot back unrun (the daemon began stopping after claiming it): its
        row goes, so history does not show a run that never started as a failure."""
        try:
            self.conn.execute(
                f"DELETE FROM {TABLE} WHERE job_name = %s AND scheduled_for = %s "
                "AND status = 'running'",
                (self.job_name, self.scheduled_for),
            )
        except psycopg.Error:
            pass  # the lease runs out and the next claim marks it abandoned
        finally:
            self.close()

    def renew(self, target: DatabaseTarget) -> None:
        """Extend the run's lease; on a fresh connection if the claiming one broke. A
        failure is left for the next renewal (the database may be restarting)."""
        params = (self.lease_s, self.job_name, self.scheduled_for)
        try:
            self.conn.execute(_RENEW, params)
            return
        except psycopg.Error:
            pass
        try:
            conn = connect(target)
            conn.execute(_RENEW, params)
        except (psycopg.Error, ChainlensError):
            return
        self.conn.close()
        self.conn = conn

    def close(self) -> None:
        self.conn.close()  # ends the session: the advisory lock goes with it


def claim_slot(
    target: DatabaseTarget, job_name: str, scheduled_for: datetime, lease_s: float
) -> Claim | None:
    """Claim (job, slot) for this host, or None if another run has it or the job is busy.
    `lease_s`: `[daemon] run_lease`."""
    conn = connect(target)
    try:
        with _db_errors(f"cannot claim the slot in {TABLE}"):
            row = conn.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (_JOB_LOCK_CLASS, _job_key(job_name))
            ).fetchone()
            if not (row and row[0]):
                conn.close()
                return None
            # We hold the job's lock: a run of it still going elsewhere (its daemon lost
            # the lock with its connection) is told by its lease; a row still 'running'
            # whose lease ran out belongs to a daemon that died mid-run.
            live = conn.execute(_LIVE, (job_name,)).fetchone()
            if live and live[0]:
                conn.close()
                return None
            conn.execute(_ABANDON, (job_name,))
            inserted = conn.execute(
                f"INSERT INTO {TABLE} (job_name, scheduled_for, host, alive_until) "
                "VALUES (%s, %s, %s, clock_timestamp() + make_interval(secs => %s)) "
                "ON CONFLICT (job_name, scheduled_for) DO NOTHING RETURNING id",
                (job_name, scheduled_for, host_name(), lease_s),
            ).fetchone()
    except BaseException:
        conn.close()
        raise
    if inserted is None:
        conn.close()
        return None
    return Claim(conn, job_name, scheduled_for, lease_s)


def prune(target: DatabaseTarget, history_days: int) -> int:
    with _db_errors(f"cannot prune {TABLE}"), connect(target) as conn:
        cur = conn.execute(
            f"DELETE FROM {TABLE} WHERE scheduled_for < now() - make_interval(days => %s) "
            "AND status <> 'running'",
            (history_days,),
        )
        return cur.rowcount


@dataclass(frozen=True)
class LastRuns:
    """Per job name: the latest run, the latest finished run, the latest succeeded run."""

    latest: dict[str, JobRun]
    finished: dict[str, JobRun]
    succeeded: dict[str, JobRun]


def last_runs(target: DatabaseTarget) -> LastRuns:
    """The latest runs of every job (all empty if the daemon never ran here)."""
    with _db_errors(f"cannot read {TABLE}"), connect(target) as conn:
        if not _table_exists(conn):
            return LastRuns({}, {}, {})
        return LastRuns(
            _runs(conn, ""),
            _runs(conn, "WHERE status <> 'running'"),
            _runs(conn, "WHERE status = 'succeeded'"),
        )


def _runs(conn: Connection, where: str) -> dict[str, JobRun]:
    rows = conn.execute(
        "SELECT DISTINCT ON (job_name) job_name, scheduled_for, started_at, finished_at, "
        f"status, error, host FROM {TABLE} {where} ORDER BY job_name, scheduled_for DESC"
    ).fetchall()
    return {r[0]: JobRun(*r) for r in rows}


def _table_exists(conn: Connection) -> bool:
    row = conn.execute("SELECT to_regclass(%s)", (TABLE,)).fetchone()
    return bool(row and row[0])


def _job_key(job_name: str) -> int:
    # Advisory lock objects are int4; crc32 fits once shifted into the signed range.
    return zlib.crc32(job_name.encode()) - 2**31


def wal_archiver(conn: Connection) -> dict[str, Any]:
    """pg_stat_archiver of the server behind `conn` (for the metrics file)."""
    with _db_errors("cannot read pg_stat_archiver"):
        row = conn.execute(
            "SELECT archived_count, failed_count, "
            "extract(epoch FROM last_archived_time)::float8, "
            "extract(epoch FROM now() - last_archived_time)::float8 FROM pg_stat_archiver"
        ).fetchone()
    keys = ("archived_count", "failed_count", "last_archived_time", "seconds_since_archived")
    return dict(zip(keys, row, strict=True)) if row else {}
