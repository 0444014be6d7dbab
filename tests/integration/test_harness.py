"""The harness itself: clusters run as postgres, and postgres can run the installed tool."""

from __future__ import annotations

import psycopg
import pytest
from pgharness import SCRAM_PASSWORD, SCRAM_USER, PgCluster, run_cli


def test_cluster_runs_as_postgres_with_scram_role(pg: PgCluster) -> None:
    assert pg.scalar("SELECT current_setting('server_version_num')::int") >= 150000
    owner = pg.scalar("SELECT pg_catalog.pg_get_userbyid(datdba) FROM pg_database LIMIT 1")
    assert owner == "postgres"
    conninfo = pg.conninfo(user=SCRAM_USER, password=SCRAM_PASSWORD)
    with psycopg.connect(conninfo) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (SCRAM_USER,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg.conninfo(user=SCRAM_USER, password="wrong"))


def test_postgres_user_can_run_the_installed_tool() -> None:
    proc = run_cli("--version", user="postgres")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("chainlens-ops ")
