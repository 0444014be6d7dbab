"""`schema apply` / `schema status` against real clusters: the runbook a DBA follows."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pgharness import PG_BIN, SCRAM_PASSWORD, SCRAM_USER, PgCluster, run_cli, wait_for

REPO_SQL = Path(__file__).resolve().parents[2] / "sql"

SUPABASE_TABLES = {
    "public.user_profiles",
    "public.api_keys",
    "public.subscriptions",
    "public.billing_events",
    "public.usage_events",
    "public.rate_limits",
    "public.usage_events_y2025m01",
    "public.usage_events_y2025m02",
}
MICRO_TABLES = {
    "onchain_analysis.project_analyses",
    "onchain_analysis.price_history",
    "onchain_analysis.price_history_y2025m01",
    "onchain_analysis.price_history_y2025m02",
    "sentiment_analysis.sentiment_analyses",
    "sentiment_analysis.social_mentions",
    "tokenomics_analysis.tokenomics_analyses",
    "team_verification.team_analyses",
    "team_verification.team_members",
    "shared_cache.analysis_cache",
}
SUPABASE_INDEXES = {
    "idx_user_profiles_tier",
    "idx_user_profiles_email",
    "idx_api_keys_user_id",
    "idx_api_keys_hash",
    "idx_api_keys_active",
    "idx_subscriptions_user_id",
    "idx_subscriptions_stripe_id",
    "idx_subscriptions_status",
    "idx_billing_events_user_id",
    "idx_billing_events_type",
    "idx_billing_events_created_at",
    "idx_usage_events_user_id",
    "idx_usage_events_type",
    "idx_usage_events_created_at",
    "idx_rate_limits_user_resource",
    "idx_rate_limits_window",
    "idx_usage_events_user_type_date",
    "idx_subscriptions_active",
}
MICRO_INDEXES = {
    "idx_onchain_project_id",
    "idx_onchain_token_address",
    "idx_onchain_created_at",
    "idx_onchain_risk_score",
    "idx_onchain_price_data_gin",
    "idx_price_history_project_timestamp",
    "idx_price_history_token_timestamp",
    "idx_sentiment_project_id",
    "idx_sentiment_created_at",
    "idx_sentiment_overall_score",
    "idx_sentiment_keywords_gin",
    "idx_social_mentions_analysis_id",
    "idx_social_mentions_source",
    "idx_social_mentions_published_at",
    "idx_tokenomics_project_id",
    "idx_tokenomics_token_address",
    "idx_tokenomics_score",
    "idx_tokenomics_created_at",
    "idx_team_project_id",
    "idx_team_credibility_score",
    "idx_team_verification_level",
    "idx_team_created_at",
    "idx_team_members_analysis_id",
    "idx_team_members_name",
    "idx_team_members_overall_score",
    "idx_cache_key",
    "idx_cache_project_id",
    "idx_cache_expires_at",
    "idx_cache_analysis_type",
    "idx_project_analyses_project_created",
    "idx_price_data_current",
}


def fresh_dbs(pg: PgCluster) -> dict[str, str]:
    """Two new databases in the cluster and the environment that points the tool at them."""
    suffix = uuid.uuid4().hex[:8]
    pg.createdb(f"supa_{suffix}")
    pg.createdb(f"micro_{suffix}")
    return {
        "CHAINLENS_SUPABASE_DSN": pg.conninfo(f"supa_{suffix}"),
        "CHAINLENS_MICROSERVICES_DSN": pg.conninfo(f"micro_{suffix}"),
        "supa": f"supa_{suffix}",
        "micro": f"micro_{suffix}",
    }


def schema_dump(pg: PgCluster, dbname: str) -> str:
    proc = subprocess.run(
        [str(PG_BIN / "pg_dump"), "--schema-only", "-d", pg.conninfo(dbname)],
        capture_output=True,
        text=True,
        check=True,
    )
    # Recent pg_dump wraps its output in \restrict <random key>: not part of the schema.
    return "\n".join(
        line
        for line in proc.stdout.splitlines()
        if not line.startswith(("\\restrict", "\\unrestrict"))
    )


def one_line_error(proc: subprocess.CompletedProcess[str], *, after_progress: bool = False) -> str:
    """The failure is exactly one line on stderr and never a traceback. Work that got
    under way may have reported progress lines before it (`after_progress`)."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    if after_progress:
        errors = [line for line in lines if line.startswith("chainlens-ops:")]
        assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
        return errors[0]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def copy_sql(dest: Path) -> Path:
    shutil.copytree(REPO_SQL, dest)
    return dest


@pytest.fixture(scope="module")
def applied(module_pg: PgCluster) -> dict[str, str]:
    """Both databases created fresh and the whole schema applied through the CLI."""
    env = fresh_dbs(module_pg)
    proc = run_cli("schema", "apply", env=env)
    assert proc.returncode == 0, proc.stderr
    return env


def relations(pg: PgCluster, dbname: str, kinds: str) -> set[str]:
    rows = pg.execute(
        "SELECT n.nspname || '.' || c.relname FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE c.relkind = ANY (string_to_array('{kinds}', ',')::\"char\"[])",
        dbname,
    )
    return {r[0] for r in rows}


def test_fresh_apply_creates_every_seed_table_and_index(
    module_pg: PgCluster, applied: dict[str, str]
) -> None:
    supa, micro = applied["supa"], applied["micro"]
    assert relations(module_pg, supa, "r,p") >= SUPABASE_TABLES
    assert relations(module_pg, micro, "r,p") >= MICRO_TABLES
    assert {r.split(".")[1] for r in relations(module_pg, supa, "i,I")} >= SUPABASE_INDEXES
    assert {r.split(".")[1] for r in relations(module_pg, micro, "i,I")} >= MICRO_INDEXES
    assert module_pg.scalar("SELECT to_regclass('auth.users') IS NOT NULL", supa)
    # The two time-series tables are partitioned by range, each with a default partition.
    assert relations(module_pg, supa, "p") == {"public.usage_events"}
    assert relations(module_pg, micro, "p") == {"onchain_analysis.price_history"}
    for db, parent in ((supa, "public.usage_events"), (micro, "onchain_analysis.price_history")):
        strategy = module_pg.scalar(
            f"SELECT partstrat FROM pg_partitioned_table WHERE partrelid = '{parent}'::regclass", db
        )
        assert strategy == "r"
        default = module_pg.scalar(
            f"SELECT partdefid::regclass::text FROM pg_partitioned_table "
            f"WHERE partrelid = '{parent}'::regclass",
            db,
        )
        assert default.endswith("_default")
    bound = module_pg.scalar(
        "SELECT pg_get_expr(relpartbound, oid) FROM pg_class "
        "WHERE relname = 'usage_events_y2025m01'",
        supa,
    )
    assert bound == "FOR VALUES FROM ('2025-01-01 00:00:00+00') TO ('2025-02-01 00:00:00+00')"


def test_second_apply_is_a_noop(module_pg: PgCluster, applied: dict[str, str]) -> None:
    before = {db: schema_dump(module_pg, applied[db]) for db in ("supa", "micro")}
    rows_before = module_pg.scalar(
        "SELECT count(*) FROM chainlens_ops.schema_migrations", applied["supa"]
    )
    proc = run_cli("schema", "apply", env=applied)
    assert proc.returncode == 0, proc.stderr
    assert "up to date" in proc.stdout
    after = {db: schema_dump(module_pg, applied[db]) for db in ("supa", "micro")}
    assert before == after
    assert rows_before == module_pg.scalar(
        "SELECT count(*) FROM chainlens_ops.schema_migrations", applied["supa"]
    )
    assert rows_before == len(list((REPO_SQL / "supabase").glob("*.sql")))


def test_status_reports_applied_files_as_json(applied: dict[str, str]) -> None:
    import json

    proc = run_cli("schema", "status", "--json", env=applied)
    assert proc.returncode == 0, proc.stderr
    statuses = json.loads(proc.stdout)
    assert [s["database"] for s in statuses] == ["supabase", "microservices"]
    for s in statuses:
        assert s["files"] and {f["state"] for f in s["files"]} == {"applied"}
        assert "password" not in s["dsn"]


def test_rate_limit_and_usage_analytics(module_pg: PgCluster, applied: dict[str, str]) -> None:
    supa = applied["supa"]
    with module_pg.connect(supa) as conn:
        user = conn.execute(
            "INSERT INTO auth.users (id) VALUES (gen_random_uuid()) RETURNING id"
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO public.user_profiles (id, email) VALUES (%s, 'a@example.com')", (user,)
        )
        results = [
            conn.execute("SELECT public.check_rate_limit(%s, 'analysis', 2)", (user,)).fetchone()[0]
            for _ in range(3)
        ]
        assert results == [True, True, False]
        # A 1-minute window is honoured: it is its own window, with its own count.
        short = conn.execute(
            "SELECT public.check_rate_limit(%s, 'export', 1, 1)", (user,)
        ).fetchone()[0]
        assert short is True
        span = conn.execute(
            "SELECT window_end - window_start FROM public.rate_limits "
            "WHERE user_id = %s AND resource_type = 'export'",
            (user,),
        ).fetchone()[0]
        assert span.total_seconds() == 60

        conn.execute(
            "INSERT INTO public.usage_events (user_id, event_type) "
            "SELECT %s, t FROM unnest(ARRAY['analysis','analysis','analysis','export']) t",
            (user,),
        )
        conn.execute(
            "INSERT INTO public.usage_events (user_id, event_type, created_at) "
            "VALUES (%s, 'analysis', now() - interval '90 days')",
            (user,),
        )
        rows = conn.execute(
            "SELECT date, event_type, count FROM public.get_usage_analytics(%s)", (user,)
        ).fetchall()
        today = conn.execute("SELECT current_date").fetchone()[0]
        assert rows == [(today, "analysis", 3), (today, "export", 1)]


def test_updated_at_moves_on_update_in_both_databases(
    module_pg: PgCluster, applied: dict[str, str]
) -> None:
    # Every table with an updated_at column has the trigger, in both databases.
    expected = {
        applied["supa"]: {"public.user_profiles", "public.subscriptions"},
        applied["micro"]: {
            "onchain_analysis.project_analyses",
            "sentiment_analysis.sentiment_analyses",
            "tokenomics_analysis.tokenomics_analyses",
            "team_verification.team_analyses",
            "team_verification.team_members",
        },
    }
    for db, tables in expected.items():
        rows = module_pg.execute(
            "SELECT c.table_schema || '.' || c.table_name, EXISTS ("
            "  SELECT 1 FROM pg_trigger g WHERE NOT g.tgisinternal"
            "  AND g.tgfoid = 'public.update_updated_at_column'::regproc AND g.tgrelid ="
            "  (quote_ident(c.table_schema) || '.' || quote_ident(c.table_name))::regclass)"
            " FROM information_schema.columns c WHERE c.column_name = 'updated_at'"
            " AND c.table_schema NOT IN ('pg_catalog', 'information_schema')",
            db,
        )
        assert {name for name, _ in rows} == tables
        assert all(has_trigger for _, has_trigger in rows), rows
    with module_pg.connect(applied["micro"]) as conn:
        row_id = conn.execute(
            "INSERT INTO team_verification.team_analyses "
            "(project_id, credibility_score, verification_level, confidence, updated_at) "
            "VALUES ('p', 1, 'low', 0.5, now() - interval '1 hour') RETURNING id"
        ).fetchone()[0]
        conn.execute(
            "UPDATE team_verification.team_analyses SET team_size = 3 WHERE id = %s", (row_id,)
        )
        moved = conn.execute(
            "SELECT updated_at > now() - interval '1 minute' "
            "FROM team_verification.team_analyses WHERE id = %s",
            (row_id,),
        ).fetchone()[0]
        assert moved
    with module_pg.connect(applied["supa"]) as conn:
        user = conn.execute(
            "INSERT INTO auth.users (id) VALUES (gen_random_uuid()) RETURNING id"
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO public.user_profiles (id, email, updated_at) "
            "VALUES (%s, 'b@example.com', now() - interval '1 hour')",
            (user,),
        )
        conn.execute("UPDATE public.user_profiles SET tier = 'pro' WHERE id = %s", (user,))
        moved = conn.execute(
            "SELECT updated_at > now() - interval '1 minute' FROM public.user_profiles "
            "WHERE id = %s",
            (user,),
        ).fetchone()[0]
        assert moved


def test_cache_cleanup_deletes_only_expired_rows(
    module_pg: PgCluster, applied: dict[str, str]
) -> None:
    with module_pg.connect(applied["micro"]) as conn:
        conn.execute(
            "INSERT INTO shared_cache.analysis_cache "
            "(cache_key, project_id, analysis_type, cached_data, ttl_seconds, expires_at) VALUES "
            "('old1', 'p', 'onchain', '{}', 60, now() - interval '1 hour'), "
            "('old2', 'p', 'onchain', '{}', 60, now() - interval '1 second'), "
            "('live', 'p', 'onchain', '{}', 60, now() + interval '1 hour')"
        )
        conn.execute("SELECT shared_cache.cleanup_expired_cache()")
        keys = [r[0] for r in conn.execute("SELECT cache_key FROM shared_cache.analysis_cache")]
        assert keys == ["live"]


def test_inserts_of_any_date_succeed(module_pg: PgCluster, applied: dict[str, str]) -> None:
    with module_pg.connect(applied["supa"]) as conn:
        user = conn.execute(
            "INSERT INTO auth.users (id) VALUES (gen_random_uuid()) RETURNING id"
        ).fetchone()[0]
        conn.execute("INSERT INTO public.user_profiles (id, email) VALUES (%s, 'c@x')", (user,))
        where = conn.execute(
            "INSERT INTO public.usage_events (user_id, event_type, created_at) "
            "VALUES (%s, 'analysis', '2039-06-01 12:00+00') RETURNING tableoid::regclass::text",
            (user,),
        ).fetchone()[0]
        assert where == "usage_events_default"
        # UTC bounds: 23:30 in New York on 31 January is already February in UTC.
        conn.execute("SET TIME ZONE 'America/New_York'")
        where = conn.execute(
            "INSERT INTO public.usage_events (user_id, event_type, created_at) "
            "VALUES (%s, 'analysis', '2025-01-31 23:30') RETURNING tableoid::regclass::text",
            (user,),
        ).fetchone()[0]
        assert where == "usage_events_y2025m02"
    where = module_pg.scalar(
        "INSERT INTO onchain_analysis.price_history (project_id, price, timestamp) "
        "VALUES ('p', 1.5, '2039-01-01 00:00+00') RETURNING tableoid::regclass::text",
        applied["micro"],
    )
    assert where == "onchain_analysis.price_history_default"


def test_dry_run_prints_the_plan_and_changes_nothing(module_pg: PgCluster) -> None:
    env = fresh_dbs(module_pg)
    proc = run_cli("schema", "apply", "--db", "supabase", "--dry-run", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "would apply: 001_auth_prerequisites.sql" in proc.stdout
    assert (
        module_pg.scalar(
            "SELECT count(*) FROM pg_namespace WHERE nspname IN ('auth', 'chainlens_ops')",
            env["supa"],
        )
        == 0
    )


def test_concurrent_applies_run_each_file_exactly_once(module_pg: PgCluster, scratch: Path) -> None:
    # A test migration that holds the first run inside its transaction (at the gate the
    # test holds), and counts its runs. No timing: the gate opens only once the second
    # run is seen waiting for the migration lock.
    env, sql_dir, first, gate = start_held_apply(
        module_pg,
        scratch,
        "CREATE TABLE IF NOT EXISTS public.applied_runs (n int);\n"
        "INSERT INTO public.applied_runs VALUES (1);\n"
        f"SELECT pg_advisory_xact_lock({GATE});\n",
    )
    second = subprocess.Popen(
        [*_cli_argv(), "schema", "apply", "--db", "supabase"],
        env=_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: waiting_on_advisory_locks(module_pg, env["supa"]) >= 2, timeout=60)
    gate.close()  # the first run goes on; the second gets the lock after it
    _, err = first.communicate(timeout=60)
    _, second_err = second.communicate(timeout=60)
    assert first.returncode == 0, err
    assert second.returncode == 0, second_err
    assert "another schema apply is running" in second_err
    assert module_pg.scalar("SELECT count(*) FROM public.applied_runs", env["supa"]) == 1
    versions = module_pg.execute(
        "SELECT version, count(*) FROM chainlens_ops.schema_migrations GROUP BY 1", env["supa"]
    )
    assert len(versions) == len(list((sql_dir / "supabase").glob("*.sql")))
    assert all(count == 1 for _, count in versions)


def test_second_apply_gives_up_after_lock_wait(module_pg: PgCluster, scratch: Path) -> None:
    env, _, first, gate = start_held_apply(
        module_pg, scratch, f"SELECT pg_advisory_xact_lock({GATE});\n"
    )
    second = run_cli("schema", "apply", "--db", "supabase", "--lock-wait", "300ms", env=env)
    gate.close()
    first.communicate(timeout=60)
    assert second.returncode == 1
    assert "held the migration lock" in one_line_error(second, after_progress=True)


def test_drift_is_reported_and_nothing_runs(module_pg: PgCluster, scratch: Path) -> None:
    env = fresh_dbs(module_pg)
    sql_dir = copy_sql(scratch / f"sql-{uuid.uuid4().hex[:6]}")
    env = env | {"CHAINLENS_SQL_DIR": str(sql_dir)}
    assert run_cli("schema", "apply", "--db", "microservices", env=env).returncode == 0
    changed = sql_dir / "microservices" / "003_sentiment_analysis.sql"
    changed.write_text(changed.read_text() + "\n-- an innocent-looking edit\n")
    (sql_dir / "microservices" / "950_new.sql").write_text(
        "CREATE TABLE public.must_not_exist();\n"
    )

    proc = run_cli("schema", "apply", "--db", "microservices", env=env)
    assert proc.returncode == 1
    line = one_line_error(proc, after_progress=True)
    assert "003_sentiment_analysis.sql changed after it was applied" in line
    assert f"microservices: acting on user=postgres dbname={env['micro']} host=" in proc.stderr
    assert module_pg.scalar("SELECT to_regclass('public.must_not_exist')", env["micro"]) is None

    status = run_cli("schema", "status", "--db", "microservices", "--json", env=env)
    assert status.returncode == 1
    import json

    states = {f["name"]: f["state"] for f in json.loads(status.stdout)[0]["files"]}
    assert states["sentiment_analysis"] == "drifted"
    assert states["new"] == "pending"


def test_runtime_failure_names_file_statement_and_line(module_pg: PgCluster, scratch: Path) -> None:
    env = fresh_dbs(module_pg)
    sql_dir = scratch / f"sql-{uuid.uuid4().hex[:6]}"
    (sql_dir / "supabase").mkdir(parents=True)
    (sql_dir / "supabase" / "001_ok.sql").write_text("CREATE TABLE public.first_ok (a int);\n")
    (sql_dir / "supabase" / "002_bad.sql").write_text(
        "-- a file whose fourth statement fails at run time\n"
        "CREATE TABLE public.partly (a int);\n"
        "INSERT INTO public.partly VALUES (1);\n"
        "\n"
        "INSERT INTO public.partly\n"
        "SELECT 1 / 0;\n"
    )
    (sql_dir / "supabase" / "003_later.sql").write_text("CREATE TABLE public.later (a int);\n")
    env = env | {"CHAINLENS_SQL_DIR": str(sql_dir)}
    proc = run_cli("schema", "apply", "--db", "supabase", env=env)
    assert proc.returncode == 1
    line = one_line_error(proc, after_progress=True)
    assert "002_bad.sql line 5" in line
    assert "division by zero" in line
    assert "INSERT INTO public.partly" in line
    db = env["supa"]
    assert module_pg.scalar("SELECT to_regclass('public.first_ok') IS NOT NULL", db)
    assert module_pg.scalar("SELECT to_regclass('public.partly')", db) is None
    assert module_pg.scalar("SELECT to_regclass('public.later')", db) is None
    assert module_pg.scalar("SELECT count(*) FROM chainlens_ops.schema_migrations", db) == 1


def test_syntax_error_is_reported_with_its_line(module_pg: PgCluster, scratch: Path) -> None:
    env = fresh_dbs(module_pg)
    sql_dir = scratch / f"sql-{uuid.uuid4().hex[:6]}"
    (sql_dir / "supabase").mkdir(parents=True)
    (sql_dir / "supabase" / "001_typo.sql").write_text(
        "CREATE TABLE public.t1 (a int);\n\nCREATE INDEX idx ON public.t1((a)::numeric);\n"
    )
    proc = run_cli(
        "schema", "apply", "--db", "supabase", env=env | {"CHAINLENS_SQL_DIR": str(sql_dir)}
    )
    assert proc.returncode == 1
    line = one_line_error(proc, after_progress=True)
    assert "001_typo.sql line 3" in line and "syntax error" in line
    assert module_pg.scalar("SELECT to_regclass('public.t1')", env["supa"]) is None


def test_unreachable_database_is_one_line_exit_3() -> None:
    from pgharness import free_port

    dsn = f"host=127.0.0.1 port={free_port()} dbname=x user=postgres password=hunter2"
    proc = run_cli("schema", "apply", "--db", "supabase", env={"CHAINLENS_SUPABASE_DSN": dsn})
    assert proc.returncode == 3
    line = one_line_error(proc)
    assert "cannot connect to the supabase database" in line
    assert "hunter2" not in proc.stderr + proc.stdout


def test_wrong_password_is_one_line_exit_3(module_pg: PgCluster) -> None:
    env = {
        "CHAINLENS_MICROSERVICES_DSN": module_pg.conninfo(user=SCRAM_USER)
        + " password=not-the-password"
    }
    proc = run_cli("schema", "status", "--db", "microservices", env=env)
    assert proc.returncode == 3
    line = one_line_error(proc)
    assert "password authentication failed" in line
    assert "not-the-password" not in proc.stderr + proc.stdout
    # And the right password through the seed's own variables works.
    env = {
        "POSTGRES_HOST": "127.0.0.1",
        "PGPORT": str(module_pg.port),
        "POSTGRES_PASSWORD": SCRAM_PASSWORD,
        "PGUSER": SCRAM_USER,
    }
    proc = run_cli("schema", "status", "--db", "microservices", env=env)
    # The seed names database chainlens_microservices and user chainlens: absent here.
    assert proc.returncode == 3
    assert "chainlens" in one_line_error(proc)
    assert SCRAM_PASSWORD not in proc.stderr + proc.stdout


def test_unknown_db_is_a_usage_error() -> None:
    proc = run_cli("schema", "apply", "--db", "nope")
    assert proc.returncode == 2
    assert "--db" in one_line_error(proc)


GATE = 7_770_001  # an advisory lock the test holds while a migration waits for it


def waiting_on_advisory_locks(pg: PgCluster, dbname: str) -> int:
    return int(
        pg.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'chainlens-ops' "
            f"AND wait_event = 'advisory' AND datname = '{dbname}'"
        )
    )


def start_held_apply(
    pg: PgCluster, scratch: Path, slow_sql: str
) -> tuple[dict[str, str], Path, subprocess.Popen[str], psycopg.Connection[Any]]:
    """Fresh databases, the shipped SQL plus `900_slow.sql` (which must end in a
    `SELECT pg_advisory_xact_lock(GATE)`), and a first `schema apply` that is sitting
    inside it, held there until the test closes the returned connection (the gate)."""
    env = fresh_dbs(pg)
    gate = pg.connect(env["supa"])
    gate.execute(f"SELECT pg_advisory_lock({GATE})")
    sql_dir = copy_sql(scratch / f"sql-{uuid.uuid4().hex[:6]}")
    (sql_dir / "supabase" / "900_slow.sql").write_text(slow_sql)
    env = env | {"CHAINLENS_SQL_DIR": str(sql_dir)}
    first = subprocess.Popen(
        [*_cli_argv(), "schema", "apply", "--db", "supabase"],
        env=_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sleep = slow_sql.strip().splitlines()[-1].rstrip(";")
    wait_for(
        lambda: pg.scalar(
            f"SELECT count(*) FROM pg_stat_activity WHERE query LIKE '{sleep}%' "
            "AND application_name = 'chainlens-ops'"
        ),
        timeout=30,
    )
    return env, sql_dir, first, gate


def _cli_argv() -> list[str]:
    from pgharness import CLI

    return [str(CLI)]


def _env(extra: dict[str, str]) -> dict[str, str]:
    from pgharness import cli_env

    return cli_env(extra)


def test_status_of_all_reports_the_reachable_database_then_fails_naming_the_other(
    module_pg: PgCluster,
) -> None:
    env = fresh_dbs(module_pg)
    dead = "host=127.0.0.1 port=1 dbname=gone user=u password=hunter2 connect_timeout=2"
    proc = run_cli(
        "schema", "status", "--db", "all",
        env={"CHAINLENS_SUPABASE_DSN": env["CHAINLENS_SUPABASE_DSN"],
             "CHAINLENS_MICROSERVICES_DSN": dead},
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert "supabase" in proc.stdout and "pending" in proc.stdout  # reported first
    line = one_line_error(proc)
    assert "cannot connect to the microservices database" in line and "hunter2" not in line
