"""Retention you can plan and pin (`backup pin/unpin`, calendar policy, per-kind counts,
the window a prune leaves) and the archive backlog in `status` and the metrics file,
against real clusters and the installed tool."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from conftest import ClusterFactory
from pgharness import VENV, PgCluster, cli_env, run_cli, wait_for
from test_backup import backup, cli, listing
from test_wal import PUSH, switch_and_wait

from chainlens_ops.daemon.metrics import write_metrics
from chainlens_ops.settings.config import load_settings

Proc = subprocess.CompletedProcess[str]


def archiving_cluster(make_cluster: ClusterFactory) -> tuple[PgCluster, Path]:
    repo = make_cluster.dir("repo")
    cluster = make_cluster(
        start=False, archive_mode="on", archive_command=f"{PUSH} --repo file://{repo} %p"
    )
    cluster.start()
    cluster.execute("CREATE TABLE t (n int)")
    switch_and_wait(cluster)
    return cluster, repo


def base_backup(cluster: PgCluster, repo: Path) -> str:
    cluster.execute("INSERT INTO t SELECT generate_series(1, 100)")
    made = backup(repo, cluster.conninfo(), "--kind", "base", "--quiet")
    assert made.returncode == 0, made.stderr
    switch_and_wait(cluster)
    return made.stdout.strip()


def prune(repo: Path, *args: str) -> Proc:
    return cli(repo, "prune", *args)


def test_pinned_backup_survives_prune_passes_a_drill_and_goes_after_unpin(
    make_cluster: ClusterFactory,
) -> None:
    cluster, repo = archiving_cluster(make_cluster)
    ids = [base_backup(cluster, repo) for _ in range(4)]
    oldest, newest = ids[0], ids[-1]

    # A mistyped id writes nothing and names `backup list`.
    before = sorted(p.relative_to(repo) for p in repo.rglob("*"))
    typo = cli(repo, "pin", "nope")
    assert typo.returncode == 2 and "backup list" in typo.stderr, typo.stderr
    assert sorted(p.relative_to(repo) for p in repo.rglob("*")) == before

    pinned = cli(repo, "pin", oldest, "--note", "audit 2026-Q4")
    assert pinned.returncode == 0, pinned.stderr
    shown = {b["id"]: b["pinned"] for b in listing(repo)}
    assert shown[oldest]["note"] == "audit 2026-Q4" and shown[newest] is None
    assert "audit 2026-Q4" in cli(repo, "list").stdout

    done = prune(repo, "--keep-last", "1", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result["kept"]) == {oldest, newest}
    assert set(result["removed"]) == set(ids[1:3])
    assert "pinned" in result["reasons"][oldest]
    # The pinned backup's WAL stays: it still restores (a drill replays it).
    drill = run_cli("restore", "drill", "--repo", str(repo), "--backup", oldest, "--json",
                    user="postgres")  # fmt: skip
    assert drill.returncode == 0, drill.stdout + drill.stderr

    assert cli(repo, "unpin", oldest).returncode == 0
    again = json.loads(prune(repo, "--keep-last", "1", "--json").stdout)
    assert again["removed"] == [oldest] and again["kept"] == [newest]
    assert [b["id"] for b in listing(repo)] == [newest]


def test_keep_last_counts_kinds_apart_so_logical_dumps_never_drop_the_base(
    make_cluster: ClusterFactory,
) -> None:
    cluster, repo = archiving_cluster(make_cluster)
    base = base_backup(cluster, repo)
    logical = []
    for _ in range(3):
        made = backup(repo, cluster.conninfo(), "--kind", "logical", "--quiet")
        assert made.returncode == 0, made.stderr
        logical.append(made.stdout.strip())
    result = json.loads(prune(repo, "--keep-last", "1", "--json").stdout)
    assert set(result["kept"]) == {base, logical[-1]}
    assert result["window_after"]["restorable_bases"] == [base]


_WRITE_MANIFESTS = """
import json, sys
from datetime import datetime
from chainlens_ops.backup.manifest import LOGICAL, BackupManifest, format_time, write_manifest
from chainlens_ops.repository import Repository
repo = Repository(sys.argv[1])
for backup_id, when in json.load(sys.stdin).items():
    stamp = format_time(datetime.fromisoformat(when))
    write_manifest(repo, BackupManifest(
        id=backup_id, kind=LOGICAL, target="microservices", database="postgres",
        server="127.0.0.1:1", server_version=150000, system_identifier=None,
        started_at=stamp, finished_at=stamp, objects=[], tool_version="test"))
"""


def write_synthetic(repo: Path, spread: dict[str, datetime]) -> None:
    """Logical backups' manifests at the given times, through the catalog's own writer,
    as the repository's owner (the server's OS user)."""
    subprocess.run(
        ["runuser", "-u", "postgres", "--", str(VENV / "bin" / "python"), "-c",
         _WRITE_MANIFESTS, f"file://{repo}"],
        input=json.dumps({k: v.isoformat() for k, v in spread.items()}), text=True, check=True,
        env=cli_env(),
    )  # fmt: skip


def test_calendar_policy_keeps_exactly_the_newest_of_each_period(
    make_cluster: ClusterFactory,
) -> None:
    cluster, repo = archiving_cluster(make_cluster)
    base = base_backup(cluster, repo)  # the newest: kept whatever the policy says
    now = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    spread = {
        "a-today-early": now - timedelta(hours=11),
        "b-yesterday": now - timedelta(days=1),
        "c-yesterday-early": now - timedelta(days=1, hours=10),
        "d-2-days": now - timedelta(days=2),
        "e-9-days": now - timedelta(days=9),
        "f-16-days": now - timedelta(days=16),
        "g-45-days": now - timedelta(days=45),
        "h-75-days": now - timedelta(days=75),
        "i-400-days": now - timedelta(days=400),
    }
    write_synthetic(repo, spread)
    done = prune(repo, "--keep-daily", "3", "--keep-weekly", "3", "--keep-monthly", "3",
                 "--json", "--dry-run")  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)

    # The expected set, computed here from the calendar (UTC) the way the policy reads it.
    logical = sorted(spread.items(), key=lambda kv: kv[1], reverse=True)

    def newest_per(key: Any, count: int) -> set[str]:
        seen: dict[Any, str] = {}
        for backup_id, when in logical:
            seen.setdefault(key(when), backup_id)
        return {seen[k] for k in sorted(seen, reverse=True)[:count]}

    expected = newest_per(lambda t: t.date(), 3)
    expected |= newest_per(lambda t: tuple(t.isocalendar())[:2], 3)
    expected |= newest_per(lambda t: (t.year, t.month), 3)
    assert set(result["kept"]) == expected | {base}
    assert set(result["removed"]) == set(spread) - expected
    assert "i-400-days" in result["removed"]
    assert next(b["id"] for b in listing(repo)) == base  # a dry run removed nothing
    assert len(listing(repo)) == len(spread) + 1


def test_prune_dry_run_shows_the_window_left_and_refuses_to_leave_none(
    make_cluster: ClusterFactory,
) -> None:
    cluster, repo = archiving_cluster(make_cluster)
    first = base_backup(cluster, repo)
    plan = prune(repo, "--keep-last", "1", "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert "recoverable window after it (UTC):" in plan.stdout, plan.stdout

    # A newer base backup whose own WAL is gone cannot start a restore: pruning the
    # older, restorable one would leave no point-in-time restore at all.
    second = base_backup(cluster, repo)
    manifest = json.loads((repo / "backups" / second / "manifest.json").read_text())
    stop = manifest["stop_wal"][:24]
    for segment in (repo / "wal").rglob(f"{stop}*"):
        segment.unlink()
    refused = prune(repo, "--keep-last", "1")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "no base backup a point-in-time restore can start from" in refused.stderr
    assert {b["id"] for b in listing(repo)} == {first, second}


def test_status_and_metrics_show_the_archive_backlog(make_cluster: ClusterFactory) -> None:
    folder = make_cluster.dir("status")
    cluster = make_cluster(start=False, archive_mode="on", archive_command="false")
    cluster.start()
    cluster.execute("CREATE TABLE t (n int)")
    for _ in range(3):
        cluster.execute("INSERT INTO t VALUES (1)")
        cluster.execute("SELECT pg_switch_wal()")
    wait_for(lambda: int(cluster.scalar("SELECT failed_count FROM pg_stat_archiver")) > 0)
    config = folder / "ops.toml"
    config.write_text(
        f'[databases.microservices]\ndsn = "{cluster.conninfo()}"\n'
        f'[databases.supabase]\ndsn = "{cluster.conninfo()}"\n'
        "[status]\nbacklog_warn_segments = 3\nbacklog_critical_segments = 10\n"
    )
    config.chmod(0o644)
    proc = run_cli("--config", str(config), "status", "--db", "microservices", "--json",
                   user="postgres")  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    (backlog,) = [c for c in report["checks"] if c["area"] == "wal backlog"]
    assert backlog["facts"], backlog
    assert backlog["ok"] is False and backlog["facts"]["level"] == "warn"
    assert backlog["facts"]["backlog"]["segments"] == 3
    assert backlog["facts"]["backlog"]["bytes"] == 3 * 1024 * 1024  # 1 MB test segments
    assert "chainlens-ops check" in backlog["fixes"][0]
    text = run_cli("--config", str(config), "status", "--db", "microservices", user="postgres")
    assert "WARN: 3 segment(s) waiting" in text.stdout, text.stdout

    metrics = folder / "ops.prom"
    write_metrics(str(metrics), load_settings(str(config), env={}), [])
    lines = metrics.read_text().splitlines()
    assert 'chainlens_ops_wal_ready_segments{db="microservices"} 3.0' in lines
    age = [x for x in lines if x.startswith('chainlens_ops_wal_ready_oldest_age_seconds{db="micro')]
    assert age and float(age[0].split()[-1]) >= 0
