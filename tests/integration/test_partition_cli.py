"""`chainlens-ops partition` as a DBA runs it: the installed tool, real PostgreSQL."""

from __future__ import annotations

import io
import json
import time
import uuid

import pytest
from pgharness import PgCluster, free_port, run_cli
from rich.console import Console

from chainlens_ops.schema.migrate import apply_schema
from chainlens_ops.settings.config import DatabaseTarget

USER = uuid.UUID("00000000-0000-0000-0000-0000000000bb")


@pytest.fixture(scope="module")
def env(module_pg: PgCluster) -> dict[str, str]:
    """Both databases, schema applied, with 40 rows of 2024-05 in the default partition.

    Tests may run on different xdist workers (each has its own copy), so none relies on
    another having run."""
    supa, micro = f"cli_supa_{time.monotonic_ns()}", f"cli_micro_{time.monotonic_ns()}"
    for name, db in (("supabase", supa), ("microservices", micro)):
        module_pg.createdb(db)
        apply_schema(DatabaseTarget(name, module_pg.conninfo(db)))
    with module_pg.connect(supa) as conn:
        conn.execute("INSERT INTO auth.users (id) VALUES (%s)", (USER,))
        conn.execute("INSERT INTO user_profiles (id, email) VALUES (%s, 'b@example.com')", (USER,))
        conn.execute(
            "INSERT INTO usage_events (user_id, event_type, created_at) "
            "SELECT %s, 'x', '2024-05-03 00:00+00'::timestamptz + g * interval '1 hour' "
            "FROM generate_series(1, 40) g",
            (USER,),
        )
    return {
        "CHAINLENS_SUPABASE_DSN": module_pg.conninfo(supa),
        "CHAINLENS_MICROSERVICES_DSN": module_pg.conninfo(micro),
    }


def relation_count(pg: PgCluster, env: dict[str, str]) -> tuple[int, int]:
    counts = []
    for key in ("CHAINLENS_SUPABASE_DSN", "CHAINLENS_MICROSERVICES_DSN"):
        dbname = env[key].split("dbname=")[1].split()[0]
        counts.append(int(pg.scalar("SELECT count(*) FROM pg_class", dbname)))
    return counts[0], counts[1]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["usage_events", "2031-13"], "not a calendar month"),
        (["usage_events", "31-01"], "not in the form YYYY-MM"),
        (["user_profiles", "2025-03"], "not a managed partitioned table"),
        (["usage_events;DROP TABLE user_profiles", "2025-03"], "not a managed partitioned table"),
        (['usage_events" CASCADE; --', "2025-03"], "not a managed partitioned table"),
    ],
)
def test_user_mistakes_are_one_line_exit_2_and_create_nothing(
    module_pg: PgCluster, env: dict[str, str], args: list[str], needle: str
) -> None:
    before = relation_count(module_pg, env)
    proc = run_cli("partition", "create-month", *args, env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and needle in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert relation_count(module_pg, env) == before


def test_bad_options_are_usage_errors(env: dict[str, str]) -> None:
    for argv in (
        ["partition", "ensure", "--ahead", "-1"],
        ["partition", "ensure", "--table", "users"],
        ["partition", "retain", "--keep-months", "0"],
        ["partition", "list", "--dsn", "host=127.0.0.1"],  # --dsn needs --table
    ):
        proc = run_cli(*argv, env=env)
        assert proc.returncode == 2, (argv, proc.stderr)
        assert proc.stderr.count("\n") == 1, proc.stderr


def test_unreachable_database_is_exit_3_one_line() -> None:
    dead = f"host=127.0.0.1 port={free_port()} dbname=x user=postgres password=s3cret-pw"
    proc = run_cli("partition", "create-month", "usage_events", "2025-03", "--dsn", dead)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.count("\n") == 1 and "cannot connect to the supabase database" in proc.stderr
    assert "s3cret-pw" not in proc.stderr + proc.stdout


def test_create_month_rescues_rows_and_repeats_as_a_noop(
    module_pg: PgCluster, env: dict[str, str]
) -> None:
    proc = run_cli("partition", "create-month", "public.usage_events", "2024-05", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "created public.usage_events_y2024m05" in proc.stdout
    assert "moved 40 rows" in proc.stdout
    again = run_cli("partition", "create-month", "usage_events", "2024-05", "--json", env=env)
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    assert doc["created"] is False and doc["partition"] == "public.usage_events_y2024m05"

    # --dsn reaches the table's own database (price_history lives in microservices).
    micro = env["CHAINLENS_MICROSERVICES_DSN"]
    proc = run_cli("partition", "create-month", "price_history", "2024-05", "--dsn", micro)
    assert proc.returncode == 0, proc.stderr
    assert "onchain_analysis.price_history_y2024m05" in proc.stdout


def test_ensure_then_list_json(env: dict[str, str]) -> None:
    proc = run_cli("partition", "ensure", "--ahead", "2", env=env)
    assert proc.returncode == 0, proc.stderr
    listed = run_cli("partition", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    tables = {t["table"]: t for t in json.loads(listed.stdout)}
    assert set(tables) == {"public.usage_events", "onchain_analysis.price_history"}
    for t in tables.values():
        names = [p["name"] for p in t["partitions"]]
        assert names[-1].endswith("_default") and isinstance(t["default_rows"], int)
        bases = {p["lower"][:7] for p in t["partitions"] if not p["is_default"]}
        assert len(bases) >= 3  # current month and two ahead, plus the seed's
    human = run_cli("partition", "list", "--table", "usage_events", env=env)
    assert human.returncode == 0 and "usage_events_default" in human.stdout


def test_list_flags_rows_in_the_default(module_pg: PgCluster, env: dict[str, str]) -> None:
    dbname = env["CHAINLENS_SUPABASE_DSN"].split("dbname=")[1].split()[0]
    module_pg.execute(
        f"INSERT INTO usage_events (user_id, event_type, created_at) "
        f"VALUES ('{USER}', 'x', '2019-02-02 00:00+00')",
        dbname,
    )
    proc = run_cli("partition", "list", "--table", "usage_events", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "rows sit in the default partition (months 2019-02" in proc.stderr
    proc = run_cli("partition", "create-month", "usage_events", "2019-02", env=env)
    assert proc.returncode == 0 and "moved 1 rows" in proc.stdout


def test_retain_dry_run_then_detach(module_pg: PgCluster, env: dict[str, str]) -> None:
    plan = run_cli(
        "partition",
        "retain",
        "--keep-months",
        "6",
        "--table",
        "usage_events",
        "--dry-run",
        "--json",
        env=env,
    )
    assert plan.returncode == 0, plan.stderr
    actions = json.loads(plan.stdout)[0]["actions"]
    names = [a["partition"] for a in actions]
    assert "usage_events_y2025m01" in names and "usage_events_y2025m02" in names
    assert not any(a["done"] for a in actions)
    listed = json.loads(
        run_cli("partition", "list", "--json", "--table", "usage_events", env=env).stdout
    )
    assert {p["name"] for p in listed[0]["partitions"]} >= set(names)

    done = run_cli("partition", "retain", "--keep-months", "6", "--table", "usage_events", env=env)
    assert done.returncode == 0, done.stderr
    assert "detached partition usage_events_y2025m01 [2025-01-01, 2025-02-01)" in done.stdout
    listed = json.loads(
        run_cli("partition", "list", "--json", "--table", "usage_events", env=env).stdout
    )
    assert not {p["name"] for p in listed[0]["partitions"]} & set(names)
    # The detached tables are still there, holding their rows: list shows them.
    assert {p["name"] for p in listed[0]["detached"]} >= set(names)
    human = run_cli("partition", "list", "--table", "usage_events", env=env)
    line = next(x for x in human.stdout.splitlines() if "usage_events_y2025m01" in x)
    assert line.split()[-1] == "detached" and " 2025-01 " in line

    # Creating that month again says what to do instead of a bare clash.
    again = run_cli("partition", "create-month", "usage_events", "2025-01", env=env)
    errors = [line for line in again.stderr.splitlines() if ": acting on " not in line]
    assert again.returncode == 1 and len(errors) == 1, again.stderr
    assert (
        "public.usage_events_y2025m01 is the 2025-01 partition that `partition retain` detached"
        in again.stderr
    )
    assert "ATTACH PARTITION public.usage_events_y2025m01 FOR VALUES FROM" in again.stderr

    # --drop removes detached tables past the window (a dry run first changes nothing).
    argv = ["partition", "retain", "--keep-months", "6", "--table", "usage_events", "--drop"]
    dry = run_cli(*argv, "--dry-run", env=env)
    assert "would drop detached table usage_events_y2025m01" in dry.stdout, dry.stdout
    gone = run_cli(*argv, env=env)
    assert gone.returncode == 0, gone.stderr
    assert "dropped detached table usage_events_y2025m01" in gone.stdout
    dbname = env["CHAINLENS_SUPABASE_DSN"].split("dbname=")[1].split()[0]
    for name in names:
        assert module_pg.scalar(f"SELECT to_regclass('public.{name}')", dbname) is None
    listed = json.loads(
        run_cli("partition", "list", "--json", "--table", "usage_events", env=env).stdout
    )
    assert listed[0]["detached"] == []


@pytest.mark.parametrize("width", [80, 60])
def test_list_table_keeps_names_whole_in_narrow_terminals(env: dict[str, str], width: int) -> None:
    """Rendered as at a terminal `width` columns wide: every partition name appears whole
    on one line, nothing runs past the edge, dates are short."""
    from chainlens_ops.cli.partition import partition_table
    from chainlens_ops.partitions import list_partitions
    from chainlens_ops.settings.config import DatabaseTarget, Settings

    settings = Settings(
        databases={
            "supabase": DatabaseTarget("supabase", env["CHAINLENS_SUPABASE_DSN"]),
            "microservices": DatabaseTarget("microservices", env["CHAINLENS_MICROSERVICES_DSN"]),
        }
    )
    for listing in list_partitions(settings):
        console = Console(width=width, file=io.StringIO(), color_system=None)
        console.print(partition_table(listing, width))
        text = console.file.getvalue()  # type: ignore[attr-defined]
        lines = text.splitlines()
        assert max(map(len, lines)) <= width
        assert "…" not in text
        for p in [*listing.partitions, *listing.detached]:
            assert any(p.name in x.split() for x in lines), (p.name, text)
            if p.lower is not None:
                line = next(x for x in lines if p.name in x.split())
                assert f" {p.lower:%Y-%m} " in line and "00:00" not in text


@pytest.mark.parametrize(
    "lock,needle",
    [
        # The parent alone: the tool's own lock waits, backs off, retries, gives up.
        ("LOCK TABLE ONLY onchain_analysis.price_history", "lock_timeout (100 ms) in 2 attempts"),
        # The whole tree: even reading the partitions' bounds waits, and gives up too.
        ("LOCK TABLE onchain_analysis.price_history", "reading the catalog waited over"),
    ],
)
def test_lock_timeout_is_exit_1_one_line(
    module_pg: PgCluster, env: dict[str, str], lock: str, needle: str
) -> None:
    dbname = env["CHAINLENS_MICROSERVICES_DSN"].split("dbname=")[1].split()[0]
    with module_pg.connect(dbname, autocommit=False) as holder:
        holder.execute(f"{lock} IN ACCESS EXCLUSIVE MODE")  # type: ignore[arg-type]
        started = time.monotonic()
        proc = run_cli(
            "partition",
            "create-month",
            "price_history",
            "2023-01",
            env={**env, "CHAINLENS_LOCK_TIMEOUT": "100ms", "CHAINLENS_LOCK_RETRIES": "1"},
            timeout=30,
        )
        elapsed = time.monotonic() - started
        holder.rollback()
    assert proc.returncode == 1, proc.stderr
    # One error line, after the line that says where the command acted.
    errors = [line for line in proc.stderr.splitlines() if line.startswith("chainlens-ops:")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr
    assert f"microservices: acting on user=postgres dbname={dbname} host=127.0.0.1" in proc.stderr
    assert elapsed < 10
    assert (
        module_pg.scalar("SELECT to_regclass('onchain_analysis.price_history_y2023m01')", dbname)
        is None
    )
