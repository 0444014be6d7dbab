"""`cache cleanup` / `cache stats` against a real microservices database."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from pgharness import PgCluster, run_cli

INSERT_ROWS = """
INSERT INTO shared_cache.analysis_cache
       (cache_key, project_id, analysis_type, cached_data, ttl_seconds, expires_at, hit_count)
SELECT %(prefix)s || g, 'p' || (g %% 7), %(kind)s, '{}', 60,
       now() + %(offset)s::interval, g %% 3
  FROM generate_series(1, %(n)s) AS g
"""


def micro_db(pg: PgCluster) -> dict[str, str]:
    """A fresh microservices database with the platform schema applied via the CLI."""
    name = f"micro_{uuid.uuid4().hex[:8]}"
    pg.createdb(name)
    env = {"CHAINLENS_MICROSERVICES_DSN": pg.conninfo(name), "micro": name}
    proc = run_cli("schema", "apply", "--db", "microservices", env=env)
    assert proc.returncode == 0, proc.stderr
    return env


def add_cache_rows(pg: PgCluster, db: str, n: int, offset: str, kind: str = "onchain") -> None:
    with pg.connect(db) as conn:
        conn.execute(
            INSERT_ROWS,
            {"prefix": f"{kind}-{offset}-", "kind": kind, "offset": offset, "n": n},
        )


@pytest.fixture
def micro(module_pg: PgCluster) -> dict[str, str]:
    return micro_db(module_pg)


def test_cleanup_deletes_exactly_the_expired_rows_and_dry_run_none(
    module_pg: PgCluster, micro: dict[str, str]
) -> None:
    add_cache_rows(module_pg, micro["micro"], 5000, "-1 hour")
    add_cache_rows(module_pg, micro["micro"], 10, "1 hour", kind="sentiment")
    count = "SELECT count(*) FROM shared_cache.analysis_cache"

    dry = run_cli("cache", "cleanup", "--dry-run", "--json", env=micro)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout) == {"deleted": 0, "would_delete": 5000, "dry_run": True}
    assert module_pg.scalar(count, micro["micro"]) == 5010

    proc = run_cli("cache", "cleanup", "--batch-size", "700", "--json", env=micro)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["deleted"] == 5000
    left = module_pg.execute(
        "SELECT analysis_type, expires_at > now() FROM shared_cache.analysis_cache", micro["micro"]
    )
    assert len(left) == 10 and all(kind == "sentiment" and fresh for kind, fresh in left)

    again = run_cli("cache", "cleanup", env=micro)
    assert again.returncode == 0 and "deleted 0 expired rows" in again.stdout


def test_stats_counts_rows_expired_rows_and_hits_by_type(
    module_pg: PgCluster, micro: dict[str, str]
) -> None:
    add_cache_rows(module_pg, micro["micro"], 30, "-1 minute", kind="onchain")
    add_cache_rows(module_pg, micro["micro"], 12, "1 day", kind="team")
    proc = run_cli("cache", "stats", "--json", env=micro)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    assert (stats["rows"], stats["expired_rows"]) == (42, 30)
    by_type = {t["analysis_type"]: t for t in stats["by_type"]}
    # hit_count = g % 3 over g = 1..n
    assert by_type["onchain"] == {
        "analysis_type": "onchain",
        "rows": 30,
        "expired_rows": 30,
        "hits": 30,
    }
    assert by_type["team"]["hits"] == 12 and by_type["team"]["expired_rows"] == 0
    assert stats["hits"] == 42 and stats["total_bytes"] > 0
    table = run_cli("cache", "stats", env=micro)
    assert table.returncode == 0 and "onchain" in table.stdout


def test_wrong_dsn_is_one_line_exit_3() -> None:
    env = {"CHAINLENS_MICROSERVICES_DSN": "host=127.0.0.1 port=1 dbname=x connect_timeout=3"}
    for args in (("cache", "cleanup"), ("cache", "stats", "--json")):
        proc = run_cli(*args, env=env)
        assert proc.returncode == 3, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("chainlens-ops: error: cannot connect")


def test_cleanup_without_the_schema_says_what_to_do(module_pg: PgCluster) -> None:
    name = f"empty_{uuid.uuid4().hex[:8]}"
    module_pg.createdb(name)
    proc = run_cli(
        "cache", "cleanup", env={"CHAINLENS_MICROSERVICES_DSN": module_pg.conninfo(name)}
    )
    assert proc.returncode == 1
    assert "schema apply" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_cleanup_skips_rows_the_application_holds_instead_of_waiting(
    module_pg: PgCluster, micro: dict[str, str]
) -> None:
    db = micro["micro"]
    add_cache_rows(module_pg, db, 50, "-1 hour")
    with module_pg.connect(db, autocommit=False) as app:
        # the application is refreshing one expired entry: its row lock is held
        app.execute(
            "SELECT 1 FROM shared_cache.analysis_cache WHERE cache_key = 'onchain--1 hour-7' "
            "FOR UPDATE"
        )
        started = time.monotonic()
        proc = run_cli("cache", "cleanup", "--batch-size", "10", "--json", env=micro)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["deleted"] == 49
        assert time.monotonic() - started < 10  # did not queue behind the lock
        app.rollback()
    proc = run_cli("cache", "cleanup", "--json", env=micro)
    assert json.loads(proc.stdout)["deleted"] == 1
