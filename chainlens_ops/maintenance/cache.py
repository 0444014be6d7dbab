"""`shared_cache.analysis_cache` upkeep: delete expired rows in short batches; report stats.

The seed scheduled `shared_cache.cleanup_expired_cache()` with pg_cron, which deletes every
expired row in one statement: on a big cache that is one long transaction holding row
locks and bloating WAL in one go. Here each batch is its own short transaction, and rows
another session has locked (the application refreshing an entry) are skipped, not
waited for; they are picked up by the next run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

from chainlens_ops.core.errors import OperationFailed, UsageError
from chainlens_ops.pg.connection import Connection, connect
from chainlens_ops.settings.config import Settings

CACHE_TABLE = "shared_cache.analysis_cache"
DEFAULT_BATCH_SIZE = 1000

_DELETE_BATCH = f"""
DELETE FROM {CACHE_TABLE}
 WHERE ctid IN (SELECT ctid FROM {CACHE_TABLE}
                 WHERE expires_at < now()
                 LIMIT %s
                   FOR UPDATE SKIP LOCKED)
"""


@dataclass(frozen=True)
class CleanupResult:
    deleted: int
    dry_run: bool
    batches: int
    duration_ms: int


@dataclass(frozen=True)
class AnalysisTypeStats:
    analysis_type: str
    rows: int
    expired_rows: int
    hits: int


@dataclass(frozen=True)
class CacheStats:
    rows: int
    expired_rows: int
    total_bytes: int
    hits: int
    by_type: list[AnalysisTypeStats] = field(default_factory=list)
    oldest_expired_at: datetime | None = None  # when the longest-expired row expired


def cleanup_cache(
    settings: Settings,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dry_run: bool = False,
    dsn: str | None = None,
) -> CleanupResult:
    """Delete expired cache rows, `batch_size` per transaction (dry run: count them)."""
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, not {batch_size}")
    started = time.monotonic()
    with connect(settings.target("microservices", dsn=dsn)) as conn:
        _require_table(conn)
        if dry_run:
            row = conn.execute(
                f"SELECT count(*) FROM {CACHE_TABLE} WHERE expires_at < now()"
            ).fetchone()
            count = int(row[0]) if row else 0
            return CleanupResult(count, True, 0, _ms_since(started))
        deleted = batches = 0
        while True:
            # autocommit: each DELETE is its own transaction, its locks held only briefly.
            cur = conn.execute(_DELETE_BATCH, (batch_size,))
            batches += 1
            deleted += cur.rowcount
            if cur.rowcount < batch_size:
                break
    return CleanupResult(deleted, False, batches, _ms_since(started))


def cache_stats(settings: Settings, *, dsn: str | None = None) -> CacheStats:
    """Rows, expired rows, on-disk size (table, indexes, TOAST) and hits per analysis type."""
    with connect(settings.target("microservices", dsn=dsn)) as conn:
        _require_table(conn)
        rows = conn.execute(
            f"""SELECT analysis_type, count(*), count(*) FILTER (WHERE expires_at < now()),
                       coalesce(sum(hit_count), 0)
                  FROM {CACHE_TABLE} GROUP BY analysis_type ORDER BY analysis_type"""
        ).fetchall()
        oldest = conn.execute(
            f"SELECT min(expires_at) FROM {CACHE_TABLE} WHERE expires_at < now()"
        ).fetchone()
        size_row = conn.execute(
            "SELECT pg_total_relation_size(%s::regclass)", (CACHE_TABLE,)
        ).fetchone()
    by_type = [AnalysisTypeStats(str(t), int(n), int(e), int(h)) for t, n, e, h in rows]
    return CacheStats(
        rows=sum(t.rows for t in by_type),
        expired_rows=sum(t.expired_rows for t in by_type),
        total_bytes=int(size_row[0]) if size_row else 0,
        hits=sum(t.hits for t in by_type),
        by_type=by_type,
        oldest_expired_at=oldest[0] if oldest else None,
    )


def _require_table(conn: Connection) -> None:
    row = conn.execute("SELECT to_regclass(%s)", (CACHE_TABLE,)).fetchone()
    if row is None or row[0] is None:
        raise OperationFailed(
            f"{CACHE_TABLE} does not exist in the microservices database",
            hint="run `chainlens-ops schema apply --db microservices` first",
        )


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
