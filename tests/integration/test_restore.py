"""`chainlens-ops restore` as the on-call runbook: the incident scenario (base backup;
rows A; restore point; rows B; time T; rows C; WAL switch) restored to T, to the
restore point and to the end of the archive, on a local and an S3 repository; every
refusal leaves the target folder as it was; a logical backup round trip."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import ClusterFactory, MotoServer
from pgharness import PgCluster, free_port, run_cli
from test_backup import backup, counts, fill
from test_wal import PUSH, switch_and_wait
from test_wal_s3 import S3Setup, s3_archiving

__all__ = ["s3_archiving"]

Proc = subprocess.CompletedProcess[str]
ROWS = {"A": 100, "B": 20, "C": 3}


@dataclass
class Incident:
    source: PgCluster
    repo: Path
    backup_id: str
    time_t: str  # now() as psql prints it, between B and C
    factory: ClusterFactory


def write_rows(cluster: PgCluster, tag: str) -> None:
    cluster.execute(f"INSERT INTO t SELECT g, '{tag}' FROM generate_series(1, {ROWS[tag]}) g")


def tags(cluster: PgCluster) -> dict[str, int]:
    return {
        str(tag): int(n) for tag, n in cluster.execute("SELECT tag, count(*) FROM t GROUP BY 1")
    }


def expected(*which: str) -> dict[str, int]:
    return {tag: ROWS[tag] for tag in which}


@pytest.fixture(scope="module")
def incident(pg_template: Path, scratch: Path) -> Iterator[Incident]:
    factory = ClusterFactory(pg_template, scratch)
    repo = factory.dir("repo")
    source = factory(
        start=False, archive_mode="on", archive_command=f"{PUSH} --repo file://{repo} %p"
    )
    source.start()
    source.execute("CREATE TABLE t (n int, tag text)")
    switch_and_wait(source)
    made = backup(repo, source.conninfo(), "--kind", "base", "--quiet")
    assert made.returncode == 0, made.stderr
    write_rows(source, "A")
    source.execute("SELECT pg_create_restore_point('before-b')")
    write_rows(source, "B")
    time_t = str(source.scalar("SELECT now()::text"))  # psql style: '... 10:33:00.99+00'
    time.sleep(0.3)
    write_rows(source, "C")
    switch_and_wait(source)
    switch_and_wait(source)  # one more: a segment between the backup and the newest
    yield Incident(source, repo, made.stdout.strip(), time_t, factory)
    factory.cleanup()


def restore(repo: str | Path, *args: str, **kw: Any) -> Proc:
    sub = ["drill"] if args[:1] == ("drill",) else []
    rest = args[len(sub) :]
    return run_cli("restore", *sub, "--repo", str(repo), *rest, user="postgres", **kw)


def restored(incident: Incident, *target: str, pgdata: Path | None = None) -> PgCluster:
    """Restore with --start into a fresh folder; the running server, registered for cleanup."""
    pgdata = pgdata or incident.factory.dir("restore") / "data"
    port = free_port()
    proc = restore(incident.repo, *target, "--pgdata", str(pgdata), "--start", "--port", str(port))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cluster = PgCluster(pgdata, port)
    incident.factory.made.append(cluster)
    assert "promoted" in proc.stdout, proc.stdout
    return cluster


def snapshot(path: Path) -> list[tuple[str, int]] | None:
    if not path.exists():
        return None
    return sorted((str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*"))


def test_restore_to_time_restore_point_and_latest(incident: Incident) -> None:
    to_t = restored(incident, "--target-time", incident.time_t)
    assert tags(to_t) == expected("A", "B")
    assert not to_t.scalar("SELECT pg_is_in_recovery()")
    # The restored copy never archives into the production repository.
    assert to_t.scalar("SHOW archive_mode") == "off"
    conf = (to_t.data / "postgresql.auto.conf").read_text()
    assert "recovery_target_time = '" in conf and "+00'" in conf
    assert "wal fetch --repo" in conf and "recovery_target_timeline = 'latest'" in conf
    assert oct(to_t.data.stat().st_mode & 0o777) == "0o700"
    to_t.stop()

    # --force: a non-empty folder's contents are moved aside, never deleted.
    pgdata = incident.factory.dir("restore") / "data"
    pgdata.mkdir()
    (pgdata / "keep.txt").write_text("old")
    os.chown(pgdata, *_pg_ids())
    proc = restore(incident.repo, "--target-name", "before-b", "--pgdata", str(pgdata))
    assert proc.returncode == 2 and "is not empty" in proc.stderr, proc.stderr
    to_point = restored(incident, "--target-name", "before-b", "--force", pgdata=pgdata)
    assert tags(to_point) == expected("A")
    aside = list(pgdata.parent.glob("data.before-restore-*"))
    assert len(aside) == 1 and (aside[0] / "keep.txt").read_text() == "old"
    to_point.stop()

    latest = restored(incident, "--latest")
    assert tags(latest) == expected("A", "B", "C")
    latest.stop()


def _pg_ids() -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


def test_refusals_leave_the_folder_as_it_was(incident: Incident) -> None:
    fresh = incident.factory.dir("refused") / "data"
    nonempty = incident.factory.dir("refused-full")
    (nonempty / "PG_VERSION").write_text("15\n")
    live = incident.factory.dir("refused-live")  # a pid file naming a live process (ours)
    (live / "postmaster.pid").write_text(f"{os.getpid()}\n{live}\n")
    cases: list[tuple[Path, list[str], str]] = [
        (nonempty, ["--latest"], "is not empty"),
        (live, ["--latest", "--force"], "running server"),
        (fresh, ["--target-time", "2001-01-01 00:00:00+00"], "recoverable window"),
        (fresh, ["--target-name", "no-such-point"], "unknown restore point"),
        (fresh, ["--target-time", "yesterday at noon"], "cannot read the target time"),
        (fresh, ["--target-time", "2099-01-01T00:00:00Z"], "later than the newest archived WAL"),
        (fresh, ["--target-time", "2026-11-27", "--latest"], "exactly one of"),
        (fresh, ["--target-lsn", "FF/0"], "later than the newest archived WAL"),
        (fresh, ["--target-lsn", "not-an-lsn"], "is not an LSN"),
        (fresh, ["--latest", "--backup", "nope"], "no backup 'nope' in repository"),
    ]
    closed = incident.factory.dir("refused-perm")  # root's: postgres cannot create in it
    os.chown(closed, 0, 0)
    closed.chmod(0o755)
    cases.append((closed / "data", ["--latest"], "postgres (the OS user running this restore"))
    taken = socket.socket()  # a port someone else listens on
    taken.bind(("127.0.0.1", free_port()))
    taken.listen()
    busy = str(taken.getsockname()[1])
    cases += [
        (fresh, ["--latest", "--start", "--port", busy], f"port {busy} is already in use"),
        (nonempty, ["--latest", "--force", "--start", "--port", busy], f"port {busy}"),
    ]
    with taken:
        for pgdata, args, message in cases:
            before = snapshot(pgdata)
            proc = restore(incident.repo, *args, "--pgdata", str(pgdata))
            assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
            lines = proc.stderr.strip().splitlines()
            assert message in lines[-1] and lines[-1].startswith("chainlens-ops"), (
                args, proc.stderr)  # fmt: skip
            assert snapshot(pgdata) == before, args
            if pgdata.parent == closed:  # which user, who owns it, and the fix
                assert f"cannot write into {closed} (owned by root, mode 755)" in lines[-1]
                assert f"install -d -o postgres -m 700 {pgdata}" in lines[-1]
            if "--port" in args:  # refused before the plan: nothing read, nothing written
                assert "--port N" in lines[-1] and "restore plan" not in proc.stderr
            if "later than the newest archived WAL" in message:
                # The cause is WAL not archived yet; --latest would replay the damage.
                assert "pg_switch_wal()" in lines[-1] and "use --latest" not in lines[-1]

    # --dry-run prints the plan (backup, WAL range, target, timezone) and writes nothing.
    proc = restore(incident.repo, "--target-time", "2026-11-27 10:33", "--dry-run",
                   "--pgdata", str(fresh))  # fmt: skip
    assert proc.returncode == 2 and "recoverable window" in proc.stderr  # before any backup
    proc = restore(incident.repo, "--target-time", incident.time_t.split("+")[0], "--dry-run",
                   "--pgdata", str(fresh))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert incident.backup_id in proc.stderr and "WAL:" in proc.stderr
    assert "UTC (the time had no offset" in proc.stderr
    assert not fresh.exists()
    # The server log's own form of the same time (`%m`: '... 10:33:00.990 UTC').
    log_form = incident.time_t.split("+")[0] + " UTC"
    proc = restore(incident.repo, "--target-time", log_form, "--dry-run", "--pgdata", str(fresh))
    assert proc.returncode == 0, proc.stderr
    assert "offset given" in proc.stderr and not fresh.exists()

    # A missing segment between the backup and the target is named, before any write.
    start_wal = next(incident.repo.glob(f"backups/{incident.backup_id}/manifest.json"))
    start = json.loads(start_wal.read_text())["start_wal"]
    victim = next(p for p in sorted((incident.repo / "wal").rglob("0000000100000000000000??"))
                  if p.name > start)  # fmt: skip
    hidden = victim.with_name("hidden")
    victim.rename(hidden)
    try:
        proc = restore(incident.repo, "--latest", "--pgdata", str(fresh))
        assert proc.returncode == 1, proc.stderr
        assert f"WAL segment {victim.name} is missing" in proc.stderr, proc.stderr
        assert not fresh.exists()
    finally:
        hidden.rename(victim)


def test_restore_to_time_from_s3(
    s3_archiving: tuple[PgCluster, str, S3Setup], make_cluster: ClusterFactory
) -> None:
    cluster, repo, setup = s3_archiving
    cluster.execute("CREATE TABLE t (n int, tag text)")
    switch_and_wait(cluster)
    made = setup.cli("backup", "--repo", repo, "--dsn", cluster.conninfo(), "--kind", "base")
    assert made.returncode == 0, made.stderr
    write_rows(cluster, "A")
    time_t = str(cluster.scalar("SELECT now()::text"))
    time.sleep(0.3)
    write_rows(cluster, "B")
    switch_and_wait(cluster)
    pgdata = make_cluster.dir("s3restore") / "data"
    port = free_port()
    proc = setup.cli("restore", "--repo", repo, "--target-time", time_t, "--pgdata", str(pgdata),
                     "--start", "--port", str(port))  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    copy = PgCluster(pgdata, port)
    make_cluster.made.append(copy)
    assert tags(copy) == expected("A")


def test_logical_restore_round_trip(
    incident: Incident, make_cluster: ClusterFactory, moto_server: MotoServer
) -> None:
    source = incident.source
    fill(source, "shop")
    made = backup(incident.repo, source.conninfo("shop"), "--kind", "logical", "--quiet")
    assert made.returncode == 0, made.stderr
    backup_id = made.stdout.strip()
    dsn = source.conninfo()
    for name, extra in (("shop_copy", []), ("shop_jobs", ["--jobs", "2"])):
        proc = restore(incident.repo, "--backup", backup_id, "--dbname", name, "--dsn", dsn, *extra)
        assert proc.returncode == 0, proc.stderr
        assert counts(source, name) == counts(source, "shop")
    again = restore(incident.repo, "--backup", backup_id, "--dbname", "shop_copy", "--dsn", dsn)
    assert again.returncode == 2 and "already holds" in again.stderr, again.stderr
    clean = restore(incident.repo, "--backup", backup_id, "--dbname", "shop_copy", "--dsn", dsn,
                    "--clean")  # fmt: skip
    assert clean.returncode == 0, clean.stderr
    assert counts(source, "shop_copy") == counts(source, "shop")


def test_promoted_restore_backed_up_and_restored_again_on_timeline_2(incident: Incident) -> None:
    """A real failover: the restored copy keeps archiving (--archive-mode preserve) into
    the same repository on timeline 2; its own base backup restores on timeline 2."""
    first = restored(incident, "--latest", "--archive-mode", "preserve")
    assert first.scalar("SHOW archive_mode") == "on"
    assert tags(first) == expected("A", "B", "C")
    assert first.scalar("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)") == (
        "00000002"
    )
    first.execute("INSERT INTO t SELECT g, 'D' FROM generate_series(1, 7) g")
    switch_and_wait(first)
    made = backup(incident.repo, first.conninfo(), "--kind", "base", "--quiet")
    assert made.returncode == 0, made.stderr
    first.execute("INSERT INTO t SELECT g, 'E' FROM generate_series(1, 5) g")
    switch_and_wait(first)
    assert (incident.repo / "wal" / "history" / "00000002.history").exists()
    again = restored(incident, "--latest", "--backup", made.stdout.strip())
    assert tags(again) == {**expected("A", "B", "C"), "D": 7, "E": 5}
    first.stop()
    again.stop()


def test_drill_passes_on_a_good_repository_and_fails_on_a_corrupted_object(
    incident: Incident,
) -> None:
    tmp = incident.factory.dir("tmp")  # its own TMPDIR: other runs' drills use /tmp
    proc = restore(incident.repo, "drill", "--backup", incident.backup_id, "--json",
                   env={"TMPDIR": str(tmp)})  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"] and result["rto_seconds"] > 0 and result["rpo_seconds"] is not None
    assert result["row_counts"]["postgres.public.t"] >= sum(ROWS.values())
    recorded = incident.repo / result["record_key"]
    assert json.loads(recorded.read_text())["ok"] is True
    assert not list(tmp.glob("chainlens-drill-*"))  # scratch removed
    assert drilled(incident)["ok"] is True

    obj = incident.repo / "backups" / incident.backup_id / "base.tar.zst"
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0xFF
    original = obj.read_bytes()
    obj.write_bytes(bytes(data))
    fresh = incident.factory.dir("corrupt") / "data"
    try:
        bad = restore(incident.repo, "drill", "--backup", incident.backup_id)
        # A plain restore of the damaged object removes what it extracted.
        broken = restore(incident.repo, "--latest", "--backup", incident.backup_id,
                         "--pgdata", str(fresh))  # fmt: skip
        assert broken.returncode == 1 and "base.tar.zst is damaged" in broken.stderr, broken.stderr
        assert not fresh.exists()
    finally:
        obj.write_bytes(original)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "failed" in bad.stderr and "base.tar.zst" in bad.stderr, bad.stderr
    records = sorted((incident.repo / "backups" / incident.backup_id).glob("drill-*.json"))
    assert [json.loads(r.read_text())["ok"] for r in records] == [True, False]
    assert drilled(incident)["ok"] is False  # `backup list` shows the latest drill


def drilled(incident: Incident) -> dict[str, Any]:
    """The drill proof `backup list --json` shows for the incident's backup."""
    proc = run_cli("backup", "list", "--repo", str(incident.repo), "--json", user="postgres")
    assert proc.returncode == 0, proc.stderr
    listed = {b["id"]: b for b in json.loads(proc.stdout)}
    proof: dict[str, Any] = listed[incident.backup_id]["drilled"]
    return proof


def test_pause_at_a_restore_point_and_a_failed_start_shows_the_log(incident: Incident) -> None:
    pgdata = incident.factory.dir("paused") / "data"
    port = free_port()
    proc = restore(incident.repo, "--target-name", "before-b", "--target-action", "pause",
                   "--pgdata", str(pgdata), "--start", "--port", str(port))  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    paused = PgCluster(pgdata, port)
    incident.factory.made.append(paused)
    assert "paused" in proc.stdout and "from the archived WAL" in proc.stderr, proc.stderr
    assert paused.scalar("SELECT pg_is_in_recovery()") is True
    assert tags(paused) == expected("A")
    paused.stop()

    # The port is taken (by the source): refused before anything is extracted (it used
    # to fail only once the server tried to bind, after the extraction).
    busy = incident.factory.dir("busy") / "data"
    proc = restore(incident.repo, "--latest", "--pgdata", str(busy), "--start",
                   "--port", str(incident.source.port))  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"port {incident.source.port} is already in use" in proc.stderr
    assert not busy.exists() and "restore plan" not in proc.stderr


def test_latest_recovery_with_s3_gone_stops_instead_of_promoting(
    make_cluster: ClusterFactory,
) -> None:
    """The settings `restore` writes make S3 trouble fatal to recovery: the restored
    server never promotes short of the archive's end."""
    server = MotoServer()
    server.start()
    try:
        setup = S3Setup(make_cluster.dir("s3conf"), server, attempts=2)
        server.create_bucket("gone")
        repo = "s3://gone/cluster"
        push = f"AWS_SHARED_CREDENTIALS_FILE={setup.credentials} {PUSH.split()[0]} " + (
            f"--config {setup.config} wal push --repo {repo} %p"
        )
        source = make_cluster(start=False, archive_mode="on", archive_command=push)
        source.start()
        source.execute("CREATE TABLE t (n int, tag text)")
        switch_and_wait(source)
        made = setup.cli("backup", "--repo", repo, "--dsn", source.conninfo(), "--kind", "base")
        assert made.returncode == 0, made.stderr
        write_rows(source, "A")
        switch_and_wait(source)
        source.stop()
        pgdata = make_cluster.dir("s3gone") / "data"
        proc = setup.cli("restore", "--repo", repo, "--latest", "--pgdata", str(pgdata))
        assert proc.returncode == 0, proc.stdout + proc.stderr
    finally:
        server.stop()
    copy = PgCluster(pgdata, free_port())
    make_cluster.made.append(copy)
    with pytest.raises(RuntimeError):
        copy.start(timeout=60)
    log = copy.read_log()
    assert "exit code 255" in log, log[-3000:]
    assert "database system is ready to accept connections" not in log
    assert not list((pgdata / "pg_wal").glob("*.history"))  # never promoted


def test_restore_progress_on_a_terminal_and_none_when_piped_or_quiet(
    incident: Incident,
) -> None:
    from pgharness import CLI, cli_env
    from test_backup_parallel import run_in_pty

    env = cli_env({"TERM": "xterm-256color", "COLUMNS": "80", "LINES": "24"})
    extracted = re.compile(r"extracting .*\d+\.\d (KiB|MiB) of \d+\.\d MiB")
    replay = re.compile(r"WAL replay .*segment (\d+) of (\d+)")
    for extra in ([], ["--quiet"]):
        pgdata = incident.factory.dir("progress") / "data"
        port = free_port()
        argv = ["runuser", "-u", "postgres", "--", str(CLI), "restore", "--repo",
                str(incident.repo), "--latest", "--pgdata", str(pgdata), "--start",
                "--port", str(port), *extra]  # fmt: skip
        code, shown = run_in_pty(argv, env)
        incident.factory.made.append(PgCluster(pgdata, port))
        assert code == 0, shown
        assert "promoted" in shown, shown
        if extra:
            assert not extracted.search(shown) and not replay.search(shown), shown
            continue
        assert extracted.search(shown), shown
        steps = [(int(n), int(m)) for n, m in replay.findall(shown)]
        # Every segment from the backup's start to the newest archived one, counted.
        assert steps and steps[-1][0] == steps[-1][1] >= 1, shown
        assert all(line.rstrip() == line for line in shown.splitlines() if "segment" in line)
        PgCluster(pgdata, port).stop()

    pgdata = incident.factory.dir("progress-piped") / "data"
    port = free_port()
    piped = restore(incident.repo, "--latest", "--pgdata", str(pgdata), "--start",
                    "--port", str(port), env={"TERM": "xterm"})  # fmt: skip
    incident.factory.made.append(PgCluster(pgdata, port))
    assert piped.returncode == 0, piped.stderr
    assert "\x1b" not in piped.stderr + piped.stdout
    assert not extracted.search(piped.stderr) and not replay.search(piped.stderr), piped.stderr
    assert "restore plan" in piped.stderr and "promoted" in piped.stdout
    PgCluster(pgdata, port).stop()


def test_listings_and_the_plan_fit_80_columns_piped_without_padding(
    incident: Incident,
) -> None:
    """What cron mails: prose wrapped at 80 columns at spaces (identifiers whole), no
    line padded with trailing spaces; restore point names and times whole."""
    repo = str(incident.repo)
    runs = {
        "backup list": run_cli("backup", "list", "--repo", repo, user="postgres"),
        "wal check": run_cli("wal", "check", "--repo", repo, user="postgres"),
        "wal list": run_cli("wal", "list", "--repo", repo, user="postgres"),
        "restore-point list": run_cli("restore-point", "list", "--repo", repo, user="postgres"),
        "restore plan": restore(repo, "--latest", "--dry-run", "--pgdata",
                                str(incident.factory.dir("plan") / "data")),
    }  # fmt: skip
    for what, proc in runs.items():
        assert proc.returncode == 0, (what, proc.stderr)
        lines = (proc.stdout + proc.stderr).splitlines()
        assert all(line == line.rstrip() for line in lines), (what, lines)
        # Piped, `wal list`'s table keeps room for whole identifiers (200 columns);
        # every other command's lines fit 80, but for an identifier longer than a line on
        # a line of its own (a deep --pgdata path: never cut).
        if what != "wal list":
            too_wide = [line for line in lines if len(line) > 80 and len(line.split()) > 1]
            assert not too_wide, (what, too_wide)
    points = runs["restore-point list"].stdout.splitlines()
    assert points[0].split() == ["name", "lsn", "tli", "time", "(UTC)", "source"]
    assert points[1].startswith("before-b  ")
    assert incident.backup_id in runs["backup list"].stdout
    plan = runs["restore plan"].stderr
    assert "\n  WAL:      " in plan and "\n  backup:   " in plan


def test_a_mistyped_backup_id_writes_nothing_into_the_repository(incident: Incident) -> None:
    before = snapshot(incident.repo)
    for args in (("drill", "--backup", "nope"), ("--backup", "nope", "--dbname", "copy")):
        proc = restore(incident.repo, *args)
        assert proc.returncode == 2, (args, proc.stderr)
        line = proc.stderr.strip().splitlines()[-1]
        assert "no backup 'nope' in repository" in line and "backup list" in line, line
    assert not (incident.repo / "backups" / "nope").exists()
    assert snapshot(incident.repo) == before
    listed = run_cli("backup", "list", "--repo", str(incident.repo), user="postgres")
    assert "incomplete" not in listed.stdout, listed.stdout
