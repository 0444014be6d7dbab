"""`chainlens-ops status` against real clusters: each area flags what needs action with the
command that fixes it, the command as printed fixes it, and the exit code is 0 only when
nothing needs action. Assertions read --json; human output is checked for short tokens
only (COLUMNS=80)."""

from __future__ import annotations

import json
import shlex
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import ClusterFactory
from pgharness import PgCluster, run_cli, wait_for
from test_cache import add_cache_rows
from test_daemon import FAILS_FAST, DaemonProc
from test_wal import PUSH, switch_and_wait

from chainlens_ops.backup.proofs import latest_proofs
from chainlens_ops.cli.timeline import draw_window
from chainlens_ops.daemon.history import ensure_table
from chainlens_ops.daemon.report import daemon_fix
from chainlens_ops.health.overview import collect_status
from chainlens_ops.repository import Repository
from chainlens_ops.restore.window import BaseMark, PointLabel, RecoverableWindow, Span, WalRun
from chainlens_ops.settings.config import load_settings

Proc = subprocess.CompletedProcess[str]
NARROW = {"COLUMNS": "80"}


@dataclass
class Ops:
    """One archiving cluster holding both databases, a repository and a config file."""

    cluster: PgCluster
    repo: Path
    config: Path
    factory: ClusterFactory

    def cli(self, *args: str, env: dict[str, str] | None = None) -> Proc:
        return run_cli("--config", str(self.config), *args, user="postgres", env=env,
                       timeout=300)  # fmt: skip

    def status(self, *args: str) -> tuple[int, dict[str, Any]]:
        proc = self.cli("status", "--json", *args)
        assert proc.returncode in (0, 1), proc.stdout + proc.stderr
        return proc.returncode, json.loads(proc.stdout)

    def check(self, area: str, db: str = "microservices") -> dict[str, Any]:
        _, report = self.status()
        return next(c for c in report["checks"] if (c["area"], c["database"]) == (area, db))

    def fix(self, command: str) -> Proc:
        """Run a fix exactly as status printed it (less a parenthesised remark)."""
        words = shlex.split(command.split(" (")[0])
        assert words[0] == "chainlens-ops", command
        proc = self.cli(*words[1:])
        assert proc.returncode == 0, f"{command}: {proc.stdout}{proc.stderr}"
        return proc

    def settings_now(self, later: timedelta) -> Any:
        settings = load_settings(self.config, env={})
        return collect_status(settings, None, lambda argv: None,
                              now=datetime.now(UTC) + later)  # fmt: skip


def make_ops(factory: ClusterFactory, jobs: str = "") -> Ops:
    repo = factory.dir("repo")
    cluster = factory(start=False, archive_mode="on",
                      archive_command=f"{PUSH} --repo file://{repo} %p")  # fmt: skip
    cluster.start()
    for db in ("supabase", "microservices"):
        cluster.createdb(db)
    config = factory.dir("config") / "chainlens-ops.toml"
    lines = [f'repo = "{repo}"']
    for db in ("supabase", "microservices"):
        lines += [f"[databases.{db}]", f'dsn = "{cluster.conninfo(db)}"']
    config.write_text("\n".join(lines) + "\n" + jobs)
    ops = Ops(cluster, repo, config, factory)
    assert ops.cli("schema", "apply").returncode == 0
    return ops


@pytest.fixture
def ops(make_cluster: ClusterFactory) -> Iterator[Ops]:
    yield make_ops(make_cluster)


def healthy(ops: Ops) -> str:
    """Partitions ahead, WAL archived, a fresh base backup: the id."""
    assert ops.cli("partition", "ensure").returncode == 0
    switch_and_wait(ops.cluster)
    made = ops.cli("backup", "--kind", "base", "--quiet")
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def test_healthy_is_exit_0_and_schema_partition_cache_problems_name_their_fix(ops: Ops) -> None:
    healthy(ops)
    code, report = ops.status()
    assert code == 0 and report["ok"], [c for c in report["checks"] if not c["ok"]]
    areas = {(c["area"], c["database"]) for c in report["checks"]}
    assert areas == {
        (a, db)
        for a in ("schema", "partitions", "wal archive", "wal backlog", "backups")
        for db in ("supabase", "microservices")
    } | {("cache", "microservices")}
    human = ops.cli("status", env=NARROW)
    assert human.returncode == 0 and "all ok" in human.stdout, human.stdout

    # Schema: a file not recorded as applied is pending; a changed checksum is drift.
    saved = ops.cluster.execute("SELECT version, checksum FROM chainlens_ops.schema_migrations "
                                "ORDER BY version DESC LIMIT 1", dbname="supabase")[0]  # fmt: skip
    ops.cluster.execute(f"UPDATE chainlens_ops.schema_migrations SET checksum = 'x' "
                        f"WHERE version = '{saved[0]}'", dbname="supabase")  # fmt: skip
    schema = ops.check("schema", "supabase")
    assert not schema["ok"] and schema["facts"]["drifted"]
    assert "schema status --db supabase" in schema["fixes"][0]
    ops.cluster.execute(f"UPDATE chainlens_ops.schema_migrations SET checksum = '{saved[1]}' "
                        f"WHERE version = '{saved[0]}'", dbname="supabase")  # fmt: skip
    assert ops.check("schema", "supabase")["ok"]

    # Partitions: rows of an old month wait in the default partition; the next month gone.
    ops.cluster.execute("INSERT INTO onchain_analysis.price_history (project_id, price, "
                        "\"timestamp\") VALUES ('p', 1, '2020-03-15 12:00+00')",
                        dbname="microservices")  # fmt: skip
    nxt = (datetime.now(UTC).replace(day=1) + timedelta(days=32)).strftime("y%Ym%m")
    ops.cluster.execute(f"DROP TABLE onchain_analysis.price_history_{nxt}",
                        dbname="microservices")  # fmt: skip
    parts = ops.check("partitions")
    assert not parts["ok"]
    assert parts["facts"][0]["default_rows"] == 1 and parts["facts"][0]["months_ahead"] == 0
    assert sorted(parts["fixes"]) == [
        "chainlens-ops partition create-month onchain_analysis.price_history 2020-03",
        "chainlens-ops partition ensure --table onchain_analysis.price_history",
    ]
    for fix in parts["fixes"]:
        ops.fix(fix)
    parts = ops.check("partitions")
    assert parts["ok"] and parts["facts"][0]["default_rows"] == 0, parts

    # Cache: rows expired a minute ago are the hourly cleanup's normal backlog; rows
    # expired three hours ago mean it is not running.
    add_cache_rows(ops.cluster, "microservices", 5, "-1 minute")
    cache = ops.check("cache")
    assert cache["ok"] and cache["facts"]["expired_rows"] == 5
    add_cache_rows(ops.cluster, "microservices", 3, "-3 hours")
    cache = ops.check("cache")
    assert not cache["ok"] and cache["fixes"] == ["chainlens-ops cache cleanup"]
    ops.fix(cache["fixes"][0])
    cache = ops.check("cache")
    assert cache["ok"] and cache["facts"]["expired_rows"] == 0

    human = ops.cli("status", env=NARROW)
    assert human.returncode == 0, human.stdout + human.stderr


def test_wal_gaps_and_a_failing_archiver_are_flagged_and_the_window_shows_them(ops: Ops) -> None:
    first = healthy(ops)
    # A span of the window ends at the newest transaction end after its backup.
    ops.cluster.execute("CREATE TABLE after_first_base (n int)")
    assert ops.cli("restore-point", "create", "rp-one").returncode == 0
    segments = [switch_and_wait(ops.cluster) for _ in range(3)]
    window = ops.status()[1]["windows"][0]["window"]
    assert len(window["wal"]) == 1 and len(window["recoverable"]) == 1
    assert [p["name"] for p in window["restore_points"]] == ["rp-one"]
    assert [b["id"] for b in window["base_backups"]] == [first]

    # A segment after the newest base backup vanishes: a restore to now is impossible.
    gone = ops.repo / "wal" / segments[1][:16] / segments[1]
    gone.unlink()
    archive = ops.check("wal archive")
    assert not archive["ok"]
    wal_check = json.loads(ops.cli("wal", "check", "--json").stdout)
    assert archive["facts"]["gaps"] == wal_check["gaps"]  # wal check's own walk
    assert [g["first"] for g in archive["facts"]["gaps"]] == [segments[1]]
    assert "chainlens-ops backup --db microservices (WAL gaps" in archive["fixes"][0]
    window = ops.status()[1]["windows"][0]["window"]
    assert len(window["wal"]) == 2 and len(window["recoverable"]) == 1

    # A new base backup mends a restore to now; the old gap stays counted, not flagged.
    ops.fix(archive["fixes"][0])
    ops.cluster.execute("CREATE TABLE after_second_base (n int)")
    switch_and_wait(ops.cluster)
    archive = ops.check("wal archive")
    assert archive["ok"] and "1 gap" in archive["detail"], archive
    window = ops.status()[1]["windows"][0]["window"]
    assert len(window["base_backups"]) == 2 and len(window["recoverable"]) == 2
    assert all(b["restorable"] for b in window["base_backups"])
    human = ops.cli("status", env=NARROW)
    assert "rp-one" in human.stdout and "recoverable window" in human.stdout
    assert all(len(line) <= 80 for line in human.stdout.splitlines()), human.stdout

    # The archiver fails: flagged until it succeeds again.
    ops.cluster.execute("ALTER SYSTEM SET archive_command = 'false'")
    ops.cluster.reload()
    ops.cluster.execute("SELECT pg_logical_emit_message(false, 't', 'x')")
    ops.cluster.execute("SELECT pg_switch_wal()")
    wait_for(lambda: ops.cluster.scalar("SELECT failed_count FROM pg_stat_archiver") > 0)
    archive = ops.check("wal archive")
    assert not archive["ok"] and archive["facts"]["failing_now"]
    assert archive["fixes"][0].startswith("chainlens-ops check --db microservices")
    ops.cluster.execute("ALTER SYSTEM RESET archive_command")
    ops.cluster.reload()
    switch_and_wait_after_failure(ops.cluster)
    assert ops.check("wal archive")["ok"]


def switch_and_wait_after_failure(cluster: PgCluster) -> None:
    def archived() -> bool:
        row = cluster.execute("SELECT last_archived_time > last_failed_time FROM pg_stat_archiver")
        return bool(row[0][0])

    cluster.execute("SELECT pg_logical_emit_message(false, 't', 'y')")
    cluster.execute("SELECT pg_switch_wal()")
    wait_for(archived, timeout=60)


def test_backups_none_stale_drilled_and_failed_proofs(ops: Ops) -> None:
    assert ops.cli("partition", "ensure").returncode == 0
    switch_and_wait(ops.cluster)
    backups = ops.check("backups")
    assert not backups["ok"] and backups["fixes"] == [
        "chainlens-ops backup --db microservices (WAL but no base backup)",
    ]
    ops.fix(backups["fixes"][0])  # auto: this cluster archives here, so a base backup
    backups = ops.check("backups")
    assert backups["ok"] and [b["kind"] for b in backups["facts"]] == ["base"]
    base_id = backups["facts"][0]["id"]
    assert backups["facts"][0]["drilled"] is None and "never drilled" in backups["detail"]

    # The same backup, a day and more later: too old.
    later = ops.settings_now(timedelta(hours=27))
    aged = next(c for c in later.checks if (c.area, c.database) == ("backups", "microservices"))
    assert not aged.ok and "over 26 h" in aged.fixes[0]

    # A drill proves it; a drill of a damaged copy is a failed proof until the next one.
    assert ops.cli("restore", "drill").returncode == 0
    backups = ops.check("backups")
    assert backups["ok"] and backups["facts"][0]["drilled"]["ok"] is True
    # (auto on the database host took a files-layout full: damage its biggest object)
    manifest = json.loads((ops.repo / "backups" / base_id / "manifest.json").read_text())
    obj = ops.repo / max(manifest["objects"], key=lambda o: o["size"])["key"]
    original = obj.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0xFF
    obj.write_bytes(bytes(damaged))
    try:
        assert ops.cli("restore", "drill").returncode == 1
    finally:
        obj.write_bytes(original)
    backups = ops.check("backups")
    assert not backups["ok"] and backups["facts"][0]["drilled"]["ok"] is False
    assert backups["fixes"] == [f"chainlens-ops restore drill --backup {base_id}"]
    ops.fix(backups["fixes"][0])
    assert ops.check("backups")["ok"]

    # A verify record that cannot be read never counts as a pass.
    record = ops.repo / "backups" / base_id / "verify-20991231T000000Z.json"
    record.write_text("{not json")
    proofs = latest_proofs(Repository(str(ops.repo)), base_id)
    assert proofs["verify"].ok is False and "damaged" in proofs["verify"].detail
    backups = ops.check("backups")
    assert backups["fixes"] == [f"chainlens-ops backup verify {base_id}"]
    record.unlink()


def test_daemon_jobs_last_run_result_next_run_and_overdue(make_cluster: ClusterFactory) -> None:
    jobs = ('\n[[jobs]]\nname = "good"\ncommand = "cache stats"\nevery = "2s"\n'
            f'\n[[jobs]]\nname = "bad"\ncommand = "{FAILS_FAST}"\nevery = "2s"\n')  # fmt: skip
    ops = make_ops(make_cluster, jobs)
    fix = daemon_fix(load_settings(ops.config, env={}))
    daemon = ops.check("daemon")
    assert not daemon["ok"] and daemon["fixes"] == [fix]  # no job ever ran
    assert all(j["next_run"] and j["last_run"] is None for j in daemon["facts"])

    proc = DaemonProc(ops.config, name=f"status-{uuid.uuid4().hex[:6]}")
    try:
        finished = ("SELECT count(DISTINCT job_name) FROM chainlens_ops.job_runs "
                    "WHERE status <> 'running'")  # fmt: skip
        table = "SELECT to_regclass('chainlens_ops.job_runs') IS NOT NULL"
        wait_for(lambda: ops.cluster.scalar(table, dbname="microservices"), timeout=60)
        wait_for(lambda: ops.cluster.scalar(finished, dbname="microservices") == 2, timeout=60)
    finally:
        proc.stop()
    code, report = ops.status()
    assert code == 1
    jobs_by_name = {j["name"]: j for j in report["jobs"]}
    assert jobs_by_name["good"]["last_run"]["status"] == "succeeded"
    assert jobs_by_name["bad"]["last_run"]["status"] == "failed"
    assert all(j["next_run"] > report["checked_at"] for j in report["jobs"])
    daemon = next(c for c in report["checks"] if c["area"] == "daemon")
    assert daemon["fixes"][0] == "chainlens-ops daemon status (failed: bad)"
    human = ops.cli("status", env=NARROW)
    assert "daemon jobs" in human.stdout and "good" in human.stdout

    # An hour on, no run claimed the slots since: the daemon is not running.
    later = ops.settings_now(timedelta(hours=1))
    assert all(j.overdue for j in later.jobs)
    assert fix in next(c for c in later.checks if c.area == "daemon").fixes


def test_daemon_status_and_status_agree_on_overdue_and_a_broken_job(
    make_cluster: ClusterFactory,
) -> None:
    """No daemon running and a slot long past: both commands say overdue and exit 1; a
    broken [[jobs]] entry is reported by both (status no longer drops the rows)."""
    jobs = '\n[[jobs]]\nname = "stats"\ncommand = "cache stats"\nevery = "1m"\n'
    ops = make_ops(make_cluster, jobs)
    settings = load_settings(ops.config, env={})
    ensure_table(settings.target("microservices"))
    ops.cluster.execute(
        "INSERT INTO chainlens_ops.job_runs (job_name, scheduled_for, started_at, finished_at, "
        "status, host) VALUES ('stats', now() - interval '1 hour', now() - interval '1 hour', "
        "now() - interval '1 hour', 'succeeded', 'elsewhere')",
        dbname="microservices",
    )
    shown = ops.cli("daemon", "status")
    assert shown.returncode == 1, shown.stdout + shown.stderr
    assert "succeeded, overdue" in shown.stdout, shown.stdout
    assert "overdue: stats (a slot passed more than 5 min ago" in shown.stdout
    # No unit here (a sandbox): the command that starts it, not systemctl.
    assert f"start it: {daemon_fix(settings)}" in " ".join(shown.stdout.split())
    as_json = ops.cli("daemon", "status", "--json")
    assert as_json.returncode == 1 and json.loads(as_json.stdout)[0]["overdue"] is True
    code, report = ops.status()
    daemon = next(c for c in report["checks"] if c["area"] == "daemon")
    assert code == 1 and not daemon["ok"] and "stats: succeeded, overdue" in daemon["detail"]
    assert daemon["fixes"] == [daemon_fix(settings)]
    if not any(
        Path(d, "chainlens-ops-daemon.service").exists()
        for d in ("/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")
    ):
        assert "systemctl" not in daemon["fixes"][0]
        assert daemon["fixes"][0].startswith(f"chainlens-ops --config {ops.config} daemon")

    # A broken entry: daemon status refuses (3); status reports it and exits 1.
    ops.config.write_text(ops.config.read_text() + '\n[[jobs]]\nname = "typo"\n'
                          'command = "cache statz"\nevery = "1h"\n')  # fmt: skip
    broken = ops.cli("daemon", "status")
    assert broken.returncode == 3 and "statz" in broken.stderr, broken.stderr
    code, report = ops.status()
    daemon = next(c for c in report["checks"] if c["area"] == "daemon")
    assert code == 1 and not daemon["ok"], daemon
    assert daemon["detail"].startswith("cannot check") and "statz" in daemon["detail"]
    human = ops.cli("status")
    assert human.returncode == 1 and "statz" in human.stdout


def test_unreachable_databases_need_action_and_say_why(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        '[databases.supabase]\ndsn = "host=127.0.0.1 port=1 dbname=x"\n'
        '[databases.microservices]\ndsn = "host=127.0.0.1 port=1 dbname=y"\n'
    )
    proc = run_cli("--config", str(config), "status", "--json")
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert not report["ok"] and report["windows"] == []
    assert all(not c["ok"] and c["detail"].startswith("cannot check") for c in report["checks"])


def test_timeline_fits_its_width_and_places_marks_bars_and_labels() -> None:
    t0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)

    def at(minutes: float) -> datetime:
        return t0 + timedelta(minutes=minutes)

    window = RecoverableWindow(
        repo="/r",
        recoverable=[Span(at(10), at(40)), Span(at(70), at(90))],
        base_backups=[
            BaseMark("b1", at(8), at(10), "x", True),
            BaseMark("b2", at(68), at(70), "y", True),
        ],
        wal=[WalRun("a", "b", 20, at(0), at(40)), WalRun("c", "d", 10, at(50), at(90))],
        gaps=[],
        restore_points=[PointLabel("before-migration", at(30), "0/1")],
        newest_archived="d",
        newest_archived_at=at(90),
    )
    lines = draw_window(window, at(100), 60)
    assert all(len(line) <= 60 for line in lines), lines
    assert lines[0].startswith("2026-11-28 10:00:00 UTC") and lines[0].endswith("now 11:40:00")
    marks, bar = lines[1], lines[2]
    assert marks.count("B") == 2 and marks.index("B") < marks.rindex("B")
    assert bar[marks.index("B")] == "█" and bar[0] == "░"  # WAL before the first backup
    gap = round(45 / 100 * 58)
    assert bar[gap] == " "  # between the two runs nothing is archived
    assert bar[-2] == " " and bar[-1] == "|"  # nothing archived in the last ten minutes
    label = next(line for line in lines if "before-migration" in line)
    assert label.index("^") == round(30 / 100 * 58)
