"""scripts/gen_dataset.py at tiny scale: loads into applied schemas, row counts, determinism."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pgharness import PgCluster, run_cli
from test_schema import fresh_dbs

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gen_dataset.py"


def generate(pg: PgCluster, mb: str) -> dict[str, str]:
    env = fresh_dbs(pg)
    proc = run_cli("schema", "apply", env=env)
    assert proc.returncode == 0, proc.stderr
    argv = [sys.executable, str(SCRIPT), "--supabase", env["CHAINLENS_SUPABASE_DSN"]]
    argv += ["--microservices", env["CHAINLENS_MICROSERVICES_DSN"], "--mb", mb]
    out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["usage_bytes"] > 0
    return env


def checksum(pg: PgCluster, db: str, table: str) -> str:
    rows = pg.execute(f"SELECT md5(string_agg(t::text, '|' ORDER BY t::text)) FROM {table} t", db)
    return str(rows[0][0])


def count(pg: PgCluster, db: str, sql: str) -> int:
    return int(pg.execute(sql, db)[0][0])


def test_tiny_dataset_counts_and_is_the_same_every_run(module_pg: PgCluster) -> None:
    a = generate(module_pg, "2")
    supa, micro = a["supa"], a["micro"]
    assert count(module_pg, supa, "SELECT count(*) FROM public.user_profiles") == 50_000
    assert count(module_pg, supa, "SELECT count(DISTINCT event_type) FROM usage_events") == 12
    months = "SELECT count(DISTINCT tableoid) FROM usage_events"
    assert count(module_pg, supa, months) == 6
    assert count(module_pg, supa, "SELECT count(*) FROM usage_events_default") == 0
    assert (
        count(
            module_pg,
            micro,
            "SELECT count(DISTINCT project_id) FROM onchain_analysis.price_history",
        )
        == 500
    )
    lengths = (
        "SELECT min(length(content)), max(length(content)) FROM sentiment_analysis.social_mentions"
    )
    lo, hi = module_pg.execute(lengths, micro)[0]
    assert lo >= 200 and hi <= 800
    keys = "SELECT count(*) n FROM usage_events, jsonb_object_keys(metadata) GROUP BY id"
    keys = f"SELECT min(n), max(n) FROM ({keys}) k"
    assert tuple(module_pg.execute(keys, supa)[0]) == (3, 6)

    b = generate(module_pg, "2")
    assert checksum(module_pg, supa, "usage_events") == checksum(
        module_pg, b["supa"], "usage_events"
    )
    table = "sentiment_analysis.social_mentions"
    assert checksum(module_pg, micro, table) == checksum(module_pg, b["micro"], table)
