"""`chainlens-ops check`: passes on a well-wired cluster, names the broken step otherwise."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import ClusterFactory
from pgharness import CLI, PgCluster, run_cli
from test_wal import write


def check(cluster: PgCluster, repo: Path, *extra: str) -> tuple[int, dict[str, object], str]:
    proc = run_cli(
        "check", "--dsn", cluster.conninfo(), "--repo", str(repo), "--json", *extra,
        user="postgres",
    )  # fmt: skip
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def statuses(report: dict[str, object]) -> dict[str, str]:
    steps = report["steps"]
    assert isinstance(steps, list)
    return {step["name"]: step["status"] for step in steps}


def test_check_passes_on_a_well_wired_cluster_then_names_broken_steps(
    make_cluster: ClusterFactory,
) -> None:
    repo = make_cluster.dir("repo")
    cluster = make_cluster(
        archive_mode="on", archive_command=f"{CLI} wal push --repo file://{repo} %p"
    )
    code, report, stderr = check(cluster, repo, "--timeout", "30")
    assert code == 0, (report, stderr)
    assert report["ok"] is True and set(statuses(report).values()) == {"ok"}
    assert report["segment"]

    # The table form says the same, one row per step.
    proc = run_cli("check", "--dsn", cluster.conninfo(), "--repo", str(repo), user="postgres")
    assert proc.returncode == 0 and "restorable" in proc.stdout

    # archive_command archiving into another repository.
    other = make_cluster.dir("other")
    cluster.configure(archive_command=f"{CLI} wal push --repo {other} %p")
    cluster.reload()
    code, report, stderr = check(cluster, repo)
    assert code == 1 and statuses(report)["archive_command"] == "FAILED"
    assert statuses(report)["switch"] == "skipped"
    assert "check failed at archive_command" in stderr and str(other) in stderr

    # Not chainlens-ops at all.
    cluster.configure(archive_command="cp %p /tmp/%f")
    cluster.reload()
    code, report, stderr = check(cluster, repo)
    assert code == 1 and "archive_command" in stderr and "cp %p" in stderr

    # What check echoes of archive_command never shows a secret it carries.
    cluster.configure(
        archive_command="AWS_SECRET_ACCESS_KEY=topsecret1 PGPASSWORD='top secret2' "
        "AWS_REGION=eu-west-1 /usr/bin/env CHAINLENS_SUPABASE_DSN='host=h password=topsecret3' "
        "cp %p /tmp/%f"
    )
    cluster.reload()
    code, report, stderr = check(cluster, repo)
    shown = stderr + json.dumps(report)
    assert code == 1 and "AWS_SECRET_ACCESS_KEY=***" in shown and "AWS_REGION=eu-west-1" in shown
    assert "topsecret" not in shown and "top secret" not in shown

    # As a role without the privileges: the failing step says which grant is missing,
    # and neither --json nor -v shows the role's password.
    cluster.configure(archive_command=f"{CLI} wal push --repo file://{repo} %p")
    cluster.reload()
    cluster.execute("CREATE ROLE ops LOGIN PASSWORD 'hunter2'")
    dsn = cluster.conninfo(user="ops", password="hunter2")
    proc = run_cli("check", "-v", "--json", "--dsn", dsn, "--repo", str(repo), user="postgres")
    assert proc.returncode == 1, proc.stderr
    assert "check failed at switch" in proc.stderr
    assert "GRANT EXECUTE ON FUNCTION pg_" in proc.stderr
    assert "hunter2" not in proc.stdout + proc.stderr

    # Ours, but its repository comes from a config file that points elsewhere: only the
    # round trip can tell, and it names the step.
    config = write(make_cluster.dir("conf") / "config.toml", f'repo = "{other}"\n'.encode())
    cluster.configure(archive_command=f"{CLI} --config {config} wal push %p")
    cluster.reload()
    code, report, stderr = check(cluster, repo, "--timeout", "3")
    assert code == 1 and statuses(report)["archived"] == "FAILED", report
    assert "did not reach the repository" in stderr


def test_check_names_archive_mode_off(pg: PgCluster, make_cluster: ClusterFactory) -> None:
    code, report, stderr = check(pg, make_cluster.dir("repo"))
    assert code == 1 and statuses(report)["archive_mode"] == "FAILED"
    assert "archive_mode is off" in stderr


def test_check_names_an_unreachable_database(make_cluster: ClusterFactory) -> None:
    repo = make_cluster.dir("repo")
    proc = run_cli(
        "check", "--dsn", "host=127.0.0.1 port=1 user=postgres connect_timeout=2",
        "--repo", str(repo), user="postgres",
    )  # fmt: skip
    assert proc.returncode == 3 and "check failed at connect" in proc.stderr
