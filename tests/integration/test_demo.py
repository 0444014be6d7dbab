"""`chainlens-ops demo` end to end: the restore shows the pre-incident data; --down
removes everything."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from pgharness import CLI

pytestmark = pytest.mark.slow


@pytest.fixture
def demo_cwd() -> Iterator[Path]:
    # /tmp/pytest-of-root is closed to postgres; the sandbox must be reachable by it.
    folder = Path(tempfile.mkdtemp(prefix="chainlens-demo-test-", dir="/var/tmp"))
    os.chmod(folder, 0o755)
    try:
        yield folder
    finally:
        if (folder / ".demo").exists():
            subprocess.run([str(CLI), "demo", "--down"], cwd=folder, check=False)
        shutil.rmtree(folder, ignore_errors=True)


def _count(port: int, statement: str) -> int:
    conninfo = f"host=127.0.0.1 port={port} dbname=supabase user=postgres connect_timeout=5"
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(statement).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return int(row[0])


def test_demo_restores_pre_incident_data_and_down_removes_it(demo_cwd: Path) -> None:
    # The demo records its sandbox per user (XDG_STATE_HOME): this test's own record.
    state = {"XDG_STATE_HOME": str(demo_cwd / "state")}
    done = subprocess.run(
        [str(CLI), "demo", "--daemon-seconds", "3"],
        cwd=demo_cwd, capture_output=True, text=True, timeout=300,
        env={**os.environ, "COLUMNS": "200", **state},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    primary = int(re.search(r"PostgreSQL 15 on 127\.0\.0\.1:(\d+)", done.stdout).group(1))  # type: ignore[union-attr]
    schema = re.search(r"into schema (restored_\w+)", done.stdout).group(1)  # type: ignore[union-attr]
    paid = "SELECT count(*) FROM public.user_profiles WHERE tier <> 'free'"
    active = "SELECT count(*) FROM public.subscriptions WHERE status = 'active'"
    # The incident damaged the live tables; `restore table` brought them back, as they
    # were just before it, into a new schema beside them (the live ones stay damaged).
    assert _count(primary, paid) == 0 and _count(primary, active) == 0
    back = {q: q.replace("public.", f"{schema}.") for q in (paid, active)}
    assert _count(primary, back[paid]) > 0 and _count(primary, back[active]) > 0
    assert _count(primary, f"SELECT count(*) FROM {schema}.usage_events") == 6000
    assert not list((demo_cwd / ".demo").glob("chainlens-table-*"))  # the scratch is gone
    assert "Summary" in done.stdout and "demo --down" in done.stdout

    # `status` on the sandbox: the demo's older months wait in the default partitions,
    # so it flags them (exit 1) with the fixing command; the rest is healthy.
    config = demo_cwd / ".demo" / "chainlens-ops.toml"
    status = subprocess.run(
        ["runuser", "-u", "postgres", "--", str(CLI), "--config", str(config), "status",
         "--json"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert status.returncode == 1, status.stderr
    report = json.loads(status.stdout)
    checks = {(c["area"], c["database"]): c for c in report["checks"]}
    for key in (("schema", "supabase"), ("backups", "supabase"), ("wal archive", "supabase"),
                ("backups", "microservices"), ("cache", "microservices")):  # fmt: skip
        assert checks[key]["ok"], checks[key]
    flagged = checks[("partitions", "supabase")]
    assert not flagged["ok"]
    months = flagged["facts"][0]["default_months"]
    assert months and flagged["fixes"] == [
        f"chainlens-ops partition create-month public.usage_events {m}" for m in months
    ]
    # The demo drilled its base backup and set a restore point inside the window.
    newest = {b["kind"]: b for b in checks[("backups", "supabase")]["facts"]}
    assert newest["base"]["drilled"]["ok"] is True
    (window,) = report["windows"]
    assert [p["name"] for p in window["window"]["restore_points"]] == ["demo-before-incident"]
    assert window["databases"] == ["supabase", "microservices"]

    # `--down` from another folder finds the sandbox the demo recorded and stops both
    # servers; run again, it says there is nothing to stop.
    elsewhere = demo_cwd / "elsewhere"
    elsewhere.mkdir()
    elsewhere.chmod(0o755)
    down = subprocess.run([str(CLI), "demo", "--down"], cwd=elsewhere, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **state})  # fmt: skip
    assert down.returncode == 0, down.stderr
    assert f"the one the demo recorded, {demo_cwd / '.demo'}, stopped and removed" in (
        " ".join(down.stdout.split())
    ), down.stdout
    assert not (demo_cwd / ".demo").exists()
    with pytest.raises(psycopg.OperationalError):
        _count(primary, "SELECT 1")
    again = subprocess.run([str(CLI), "demo", "--down"], cwd=elsewhere, capture_output=True,
                           text=True, timeout=120, env={**os.environ, **state})  # fmt: skip
    assert again.returncode == 0 and "nothing to stop" in again.stdout, again.stdout
