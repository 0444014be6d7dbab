"""The archive backlog: WAL segments the server has finished but not yet archived.

PostgreSQL marks each finished segment with `archive_status/<name>.ready` and renames
it `.done` once `archive_command` succeeded, so the `.ready` files are the backlog: it
grows while the archiver is stuck, and `pg_wal` grows with it until the disk is full.
`pg_ls_archive_statusdir()` lists them (superuser or `pg_monitor`).

One reading serves `status` (staged: ok, warn, critical) and the metrics file.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg import Connection

from chainlens_ops.settings.config import StatusSettings

OK = "ok"
WARN = "warn"
CRITICAL = "critical"

_QUERY = """
SELECT count(*),
       min(modification),
       (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'),
       now()
  FROM pg_ls_archive_statusdir()
 WHERE name ~ '^[0-9A-F]{24}(\\.partial)?\\.ready$'
"""


@dataclass(frozen=True)
class Backlog:
    segments: int  # finished segments waiting to be archived
    bytes: int  # their size in pg_wal
    oldest_at: datetime | None  # when the oldest waiting segment was finished
    oldest_age_s: float | None


def read_backlog(conn: Connection[tuple[object, ...]]) -> Backlog:
    row = conn.execute(_QUERY).fetchone()
    assert row is not None
    count, oldest, seg_size, now = row
    assert isinstance(count, int) and isinstance(seg_size, int) and isinstance(now, datetime)
    oldest_at = oldest if isinstance(oldest, datetime) else None
    age = (now - oldest_at).total_seconds() if oldest_at else None
    return Backlog(count, count * seg_size, oldest_at, age)


def backlog_level(backlog: Backlog, limits: StatusSettings) -> str:
    """OK, WARN or CRITICAL: by how many segments wait, or how long the oldest has."""
    age = backlog.oldest_age_s or 0.0
    waiting = backlog.segments > 0
    if backlog.segments >= limits.backlog_critical_segments or (
        waiting and age >= limits.backlog_critical_age_s
    ):
        return CRITICAL
    if backlog.segments >= limits.backlog_warn_segments or (
        waiting and age >= limits.backlog_warn_age_s
    ):
        return WARN
    return OK
