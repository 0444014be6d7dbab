"""`chainlens-ops daemon` against a real microservices database: runs, history, failures,
timeouts, two replicas, SIGTERM, bad configs."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pgharness import CLI, PgCluster, cli_env, run_cli, wait_for
from test_cache import add_cache_rows, micro_db

from chainlens_ops.core.atomicfile import write_bytes_atomic
from chainlens_ops.daemon import history
from chainlens_ops.settings.config import DatabaseTarget

RUNS = "SELECT job_name, scheduled_for, status, error, host FROM chainlens_ops.job_runs"
SECRET = "hunter2-not-for-logs"
FAILS_FAST = "cache stats --dsn 'host=127.0.0.1 port=1 dbname=x'"


class DaemonProc:
    """A daemon started in the background, its stderr in a file."""

    def __init__(
        self,
        config: Path,
        *extra: str,
        name: str = "daemon",
        env: dict[str, str] | None = None,
    ) -> None:
        self.log = config.parent / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self.out = self.log.open("w")
        # Started in a folder holding a decoy `chainlens_ops` package that fails: jobs
        # must run the installed code, whatever the daemon's working folder holds.
        decoy = config.parent / "decoy"
        (decoy / "chainlens_ops").mkdir(parents=True, exist_ok=True)
        (decoy / "chainlens_ops" / "__init__.py").write_text("")
        (decoy / "chainlens_ops" / "__main__.py").write_text("raise SystemExit(42)\n")
        self.proc = subprocess.Popen(
            [str(CLI), "--config", str(config), "daemon", *extra],
            env=cli_env(env),
            stdout=self.out,
            stderr=subprocess.STDOUT,
            cwd=decoy,
        )

    def text(self) -> str:
        return self.log.read_text()

    def stop(self, timeout: float = 15) -> tuple[int, float]:
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self.out.close()
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.out.close()


def write_config(folder: Path, dsn: str, body: str) -> Path:
    path = folder / f"config-{uuid.uuid4().hex[:6]}.toml"
    path.write_text(f'[databases.microservices]\ndsn = "{dsn}"\n\n{body}')
    return path


@pytest.fixture
def micro(module_pg: PgCluster) -> dict[str, str]:
    return micro_db(module_pg)


@pytest.fixture
def folder(make_cluster: object) -> Path:
    return make_cluster.dir("daemon")  # type: ignore[attr-defined,no-any-return]


@pytest.fixture
def daemons() -> Iterator[list[DaemonProc]]:
    started: list[DaemonProc] = []
    yield started
    for d in started:
        d.kill()


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers: a job connecting there hangs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def test_daemon_runs_jobs_records_history_and_survives_failures_and_hangs(
    module_pg: PgCluster,
    micro: dict[str, str],
    folder: Path,
    daemons: list[DaemonProc],
    silent_server: int,
) -> None:
    db = micro["micro"]
    metrics = folder / "chainlens.prom"
    config = write_config(
        folder,
        micro["CHAINLENS_MICROSERVICES_DSN"],
        f"""
[[jobs]]
name = "cache-cleanup"
command = "cache cleanup --batch-size 50"
every = "2s"

[[jobs]]
name = "always-fails"
command = "{FAILS_FAST}"
every = "2s"

[[jobs]]
name = "hangs"
command = "cache stats --dsn 'host=127.0.0.1 port={silent_server} dbname=x connect_timeout=60'"
every = "2s"
timeout = "1s"
""",
    )
    daemon = DaemonProc(config, "--metrics-file", str(metrics))
    daemons.append(daemon)

    def runs(job: str, status: str) -> list[tuple[object, ...]]:
        if module_pg.scalar("SELECT to_regclass('chainlens_ops.job_runs')", db) is None:
            return []
        return [r for r in module_pg.execute(RUNS, db) if r[0] == job and r[2] == status]

    wait_for(lambda: runs("cache-cleanup", "succeeded"), timeout=20)
    add_cache_rows(module_pg, db, 300, "-1 minute")  # expired rows arrive while it runs
    add_cache_rows(module_pg, db, 5, "1 hour")
    wait_for(
        lambda: module_pg.scalar("SELECT count(*) FROM shared_cache.analysis_cache", db) == 5,
        timeout=15,
    )
    wait_for(lambda: len(runs("always-fails", "failed")) >= 3, timeout=15)
    wait_for(lambda: len(runs("hangs", "failed")) >= 2, timeout=15)
    wait_for(lambda: len(runs("cache-cleanup", "succeeded")) >= 3, timeout=15)
    assert daemon.proc.poll() is None, daemon.text()

    all_runs = module_pg.execute(RUNS + " ORDER BY scheduled_for", db)
    by_job: dict[str, list[tuple[object, ...]]] = {}
    for row in all_runs:
        by_job.setdefault(str(row[0]), []).append(row)
    # every run of the failing job is recorded failed, with the child's one-line error
    done = [r for r in by_job["always-fails"] if r[2] != "running"]
    assert done and all(r[2] == "failed" for r in done)
    assert all("exit code 3" in str(r[3]) and "cannot connect" in str(r[3]) for r in done)
    hung = [r for r in by_job["hangs"] if r[2] != "running"]
    assert all(r[2] == "failed" and r[3] == "timed out after 1s" for r in hung)
    # ... while the cleanup job kept succeeding, on clock-aligned 2 s slots
    cleanup = [r for r in by_job["cache-cleanup"] if r[2] != "running"]
    assert len(cleanup) >= 3 and all(r[2] == "succeeded" for r in cleanup)
    for row in all_runs:
        slot = row[1]
        assert isinstance(slot, datetime)
        assert slot.timestamp() % 2 == 0 and row[4] == socket.gethostname()

    status = run_cli("--config", str(config), "daemon", "status", "--json")
    assert status.returncode == 1, status.stderr  # jobs whose last run failed: as `status`
    jobs = {j["name"]: j for j in json.loads(status.stdout)}
    assert jobs["always-fails"]["last_status"] in ("failed", "running")
    assert jobs["cache-cleanup"]["last_success"]["status"] == "succeeded"
    next_fire = datetime.fromisoformat(jobs["cache-cleanup"]["next_fire"])
    assert next_fire.timestamp() % 2 == 0
    assert abs(next_fire - datetime.now(UTC)) <= timedelta(seconds=2)

    # At 80 columns: every job has a last run; only the two that always fail have never
    # succeeded; names and schedules are whole, the errors below the table.
    table = run_cli("--config", str(config), "daemon", "status", env={"COLUMNS": "80"})
    shown = table.stdout
    assert table.returncode == 1 and shown.count("never") == 2, shown
    assert all(n in shown for n in ("cache-cleanup", "always-fails", "every 2s")), shown
    rows = [line for line in shown.splitlines() if not line.startswith(("always-fails:", "hangs:"))]
    assert max(len(line) for line in rows) <= 80, shown

    prom = metrics.read_text()
    assert 'chainlens_ops_job_last_success_timestamp_seconds{job="cache-cleanup"}' in prom
    assert 'chainlens_ops_job_last_run_succeeded{job="always-fails"} 0' in prom
    assert 'chainlens_ops_wal_archive_failed_total{db="microservices"}' in prom

    code, seconds = daemon.stop()
    assert code == 0 and seconds < 15, daemon.text()
    assert "Traceback" not in daemon.text()


def test_two_daemons_run_each_slot_exactly_once(
    module_pg: PgCluster, micro: dict[str, str], folder: Path, daemons: list[DaemonProc]
) -> None:
    config = write_config(
        folder,
        micro["CHAINLENS_MICROSERVICES_DSN"],
        '[[jobs]]\nname = "tick"\ncommand = "cache cleanup"\nevery = "1s"\n',
    )
    daemons += [DaemonProc(config, name="a"), DaemonProc(config, name="b")]
    time.sleep(10)
    for d in daemons:
        code, _ = d.stop()
        assert code == 0, d.text()
    rows = module_pg.execute(RUNS, micro["micro"])
    started = sum(d.text().count(" started on ") for d in daemons)
    slots = {r[1] for r in rows}
    assert len(rows) >= 3, rows  # the job did run
    # runs started (both replicas) == rows == distinct slots: no slot ran twice
    assert started == len(rows) == len(slots)
    assert all(r[2] == "succeeded" for r in rows), rows
    # both replicas competed for the same slots: the losers said so
    assert sum(d.text().count("taken by another replica") for d in daemons) >= 1


BAD_CONFIGS = {
    "unknown command": ('command = "cache sweep"\nevery = "1m"', "unknown command 'sweep'"),
    "bad option": ('command = "cache cleanup --bogus"\nevery = "1m"', "--bogus"),
    "bad cron": ('command = "cache cleanup"\ncron = "61 * * * *"', "cron"),
    "six-field cron": ('command = "cache cleanup"\ncron = "0 0 * * * *"', "5-field"),
    "both": ('command = "cache cleanup"\ncron = "0 * * * *"\nevery = "1h"', "exactly one"),
    "neither": ('command = "cache cleanup"', "exactly one"),
    "bad duration": ('command = "cache cleanup"\nevery = "5 minutes"', "every"),
    "bad timeout": ('command = "cache cleanup"\nevery = "1h"\ntimeout = "0s"', "timeout"),
    "unknown key": ('command = "cache cleanup"\nevery = "1h"\nretries = 3', "retries"),
    "bad timezone": (
        'command = "cache cleanup"\ncron = "0 2 * * *"\ntimezone = "Mars/Base"',
        "Mars/Base",
    ),
    "runs the daemon": ('command = "daemon"\nevery = "1h"', "daemon"),
    "password in argv": (
        f'command = "cache stats --dsn \'host=x password={SECRET}\'"\nevery = "1h"',
        "carries a password",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_is_refused_before_anything_runs(
    module_pg: PgCluster, folder: Path, case: str
) -> None:
    name = f"bad_{uuid.uuid4().hex[:8]}"
    module_pg.createdb(name)
    body, expected = BAD_CONFIGS[case]
    job = (
        f'[[jobs]]\nname = "good"\ncommand = "cache stats"\nevery = "1s"\n\n'
        f'[[jobs]]\nname = "broken"\n{body}\n'
    )
    config = write_config(folder, module_pg.conninfo(name), job)
    proc = run_cli("--config", str(config), "daemon", timeout=30)
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "job 'broken'" in lines[0] and expected in lines[0], lines
    assert SECRET not in proc.stderr + proc.stdout
    # refused before anything ran: not even the history table was made
    assert module_pg.scalar("SELECT to_regclass('chainlens_ops.job_runs')", name) is None


def test_duplicate_names_and_wrong_dsn_are_refused(folder: Path) -> None:
    job = '[[jobs]]\nname = "twice"\ncommand = "cache stats"\nevery = "1h"\n'
    config = write_config(folder, "host=127.0.0.1 port=1 dbname=x", job + "\n" + job)
    proc = run_cli("daemon", "--config", str(config))
    assert proc.returncode == 3 and "job 'twice': the name is used by another job" in proc.stderr
    config = write_config(folder, "host=127.0.0.1 port=1 dbname=x", job)
    proc = run_cli("--config", str(config), "daemon", "--metrics-file", "/nonexistent/m.prom")
    assert proc.returncode == 3 and "cannot write in /nonexistent" in proc.stderr
    config = write_config(folder, "host=127.0.0.1 port=1 dbname=x connect_timeout=3", job)
    proc = run_cli("--config", str(config), "daemon")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 3 and len(lines) == 1 and "cannot connect" in lines[0], lines


def test_sigterm_lets_a_running_job_finish_and_stops_one_that_overstays(
    module_pg: PgCluster, folder: Path, daemons: list[DaemonProc], silent_server: int
) -> None:
    name = f"term_{uuid.uuid4().hex[:8]}"
    module_pg.createdb(name)
    hang = f"cache stats --dsn 'host=127.0.0.1 port={silent_server} dbname=x connect_timeout="
    config = write_config(
        folder,
        module_pg.conninfo(name),
        f"""
[daemon]
stop_timeout = "8s"

[[jobs]]
name = "finishes"
command = "{hang}3'"
every = "1s"

[[jobs]]
name = "overstays"
command = "{hang}120'"
every = "1s"
""",
    )
    daemon = DaemonProc(config)
    daemons.append(daemon)
    wait_for(lambda: daemon.text().count(" started on ") >= 2, timeout=20)
    # a job never overlaps itself: the next slot is skipped while the run goes on
    skipped = re.compile(r"job overstays: slot \S+ skipped: the previous run is still going")
    wait_for(lambda: skipped.search(daemon.text()), timeout=10)
    code, seconds = daemon.stop()
    assert code == 0 and seconds < 15, daemon.text()
    rows = {r[0]: r for r in module_pg.execute(RUNS, name)}
    # the job that could finish within stop_timeout did, with its own result...
    assert rows["finishes"][2] == "failed" and "exit code 3" in rows["finishes"][3]
    # ...the one that could not was stopped (its process group killed) and recorded so
    assert rows["overstays"][3] == "stopped: daemon shut down (SIGTERM)"
    assert all(r[2] != "running" for r in module_pg.execute(RUNS, name))
    assert [r[0] for r in module_pg.execute(RUNS, name)].count("overstays") == 1
    assert "Traceback" not in daemon.text()


def test_a_run_left_by_a_dead_daemon_is_marked_abandoned_by_the_next_one(
    module_pg: PgCluster, micro: dict[str, str], folder: Path, daemons: list[DaemonProc]
) -> None:
    db = micro["micro"]
    config = write_config(
        folder,
        micro["CHAINLENS_MICROSERVICES_DSN"],
        # A short lease: the run its daemon left is abandoned 6 s on, not 30.
        '[daemon]\nrun_lease = "6s"\n\n'
        '[[jobs]]\nname = "tick"\ncommand = "cache cleanup"\nevery = "1s"\n',
    )
    first = DaemonProc(config, name="dies", env={"CHAINLENS_CRASH_AT": "daemon-after-claim"})
    daemons.append(first)
    assert first.proc.wait(timeout=20) == -signal.SIGKILL
    (left,) = module_pg.execute(RUNS, db)
    assert left[2] == "running"  # claimed, never finished: its daemon died

    daemons.append(DaemonProc(config, name="next"))
    # once the dead run's lease ([daemon] run_lease) has run out
    wait_for(lambda: any(r[2] == "succeeded" for r in module_pg.execute(RUNS, db)), timeout=60)
    rows = {r[1]: r for r in module_pg.execute(RUNS, db)}
    assert rows[left[1]][2:4] == (
        "failed",
        "abandoned: the daemon running it stopped before the run finished",
    )


def test_a_slot_claimed_as_the_daemon_stops_is_given_back_not_failed(
    module_pg: PgCluster, micro: dict[str, str], folder: Path, daemons: list[DaemonProc]
) -> None:
    """SIGTERM lands between claiming a slot and starting its job: the job is not
    started and the slot's row goes, so history shows no failed run (`daemon status`
    would report one as the job's last run, failed)."""
    db = micro["micro"]
    config = write_config(
        folder,
        micro["CHAINLENS_MICROSERVICES_DSN"],
        '[[jobs]]\nname = "tick"\ncommand = "cache cleanup"\nevery = "1s"\n',
    )
    pause = folder / "pause"
    pause.mkdir()
    env = {"CHAINLENS_PAUSE_AT": "daemon-after-claim", "CHAINLENS_PAUSE_DIR": str(pause)}
    daemon = DaemonProc(config, name="stops", env=env)
    daemons.append(daemon)
    wait_for((pause / "daemon-after-claim.reached").exists, timeout=20)
    (claimed,) = module_pg.execute(RUNS, db)
    assert claimed[2] == "running"
    daemon.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "no new runs" in daemon.text(), timeout=10)
    (pause / "daemon-after-claim.go").touch()
    assert daemon.proc.wait(timeout=15) == 0, daemon.text()
    daemon.out.close()
    assert " started on " not in daemon.text()
    assert "not started: the daemon is stopping" in daemon.text()
    assert module_pg.execute(RUNS, db) == []
    (job,) = json.loads(run_cli("--config", str(config), "daemon", "status", "--json").stdout)
    assert job["last_run"] is None and job["last_status"] is None, job


def test_old_history_is_pruned_and_recent_kept(module_pg: PgCluster) -> None:
    name = f"prune_{uuid.uuid4().hex[:8]}"
    module_pg.createdb(name)
    target = DatabaseTarget(name="microservices", conninfo=module_pg.conninfo(name))
    history.ensure_table(target)
    history.ensure_table(target)  # idempotent
    module_pg.execute(
        "INSERT INTO chainlens_ops.job_runs (job_name, scheduled_for, status, host) VALUES "
        "('j', now() - interval '40 days', 'succeeded', 'h'), "
        "('j', now() - interval '20 days', 'failed', 'h'), "
        "('j', now() - interval '1 minute', 'succeeded', 'h')",
        name,
    )
    assert history.prune(target, 30) == 1
    assert module_pg.scalar("SELECT count(*) FROM chainlens_ops.job_runs", name) == 2


def test_daemon_rides_out_a_database_outage(
    pg: PgCluster, folder: Path, daemons: list[DaemonProc]
) -> None:
    env = micro_db(pg)
    config = write_config(
        folder,
        env["CHAINLENS_MICROSERVICES_DSN"] + " connect_timeout=2",
        '[[jobs]]\nname = "tick"\ncommand = "cache cleanup"\nevery = "1s"\n',
    )
    daemon = DaemonProc(config)
    daemons.append(daemon)
    wait_for(lambda: " succeeded in " in daemon.text(), timeout=20)
    pg.stop()
    wait_for(lambda: "not run: cannot claim it" in daemon.text(), timeout=20)
    assert daemon.proc.poll() is None
    pg.start()
    before = daemon.text().count(" succeeded in ")
    wait_for(lambda: daemon.text().count(" succeeded in ") > before, timeout=20)
    code, _ = daemon.stop()
    assert code == 0 and "Traceback" not in daemon.text()
    rows = pg.execute(RUNS, env["micro"])
    assert rows and all(r[2] in ("succeeded", "failed") for r in rows)


def test_metrics_file_is_replaced_whole_and_leaves_no_temp_files(folder: Path) -> None:
    path = folder / "metrics.prom"
    path.write_text("old\n")
    write_bytes_atomic(str(path), b"new\n", mode=0o644)
    assert path.read_text() == "new\n" and oct(path.stat().st_mode & 0o777) == "0o644"
    with pytest.raises(FileNotFoundError):
        write_bytes_atomic(str(folder / "missing" / "m.prom"), b"x")
    assert sorted(p.name for p in folder.iterdir()) == ["metrics.prom"]


def _children(pid: int) -> list[int]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_a_killed_replicas_job_dies_with_it_and_never_overlaps_the_next_run(
    module_pg: PgCluster, micro: dict[str, str], folder: Path, daemons: list[DaemonProc]
) -> None:
    """Two replicas, one job (a backup whose pg_dump waits for a lock the test holds);
    kill -9 the replica running it. Its job and pg_dump die with it, so the other
    replica's run of the job starts only once they are gone, and finishes."""
    db = micro["micro"]
    port = f"port={module_pg.port} "
    module_pg.execute("CREATE TABLE hold (x int)", db)
    repo = folder / f"repo-{uuid.uuid4().hex[:6]}"  # created by the daemon (root)
    config = write_config(
        folder,
        micro["CHAINLENS_MICROSERVICES_DSN"],
        '[daemon]\nrun_lease = "6s"\n\n'  # the killed run's lease runs out 6 s on
        f'[[jobs]]\nname = "dump"\ncommand = "backup --kind logical --repo {repo} --quiet"\n'
        'every = "1s"\n',
    )
    from test_killed_commands import processes

    with module_pg.connect(db, autocommit=False) as conn:
        conn.execute("LOCK TABLE hold IN ACCESS EXCLUSIVE MODE")
        # The killed run's repository lock must expire before the next run may dump.
        ttl = {"CHAINLENS_REPO_LOCK_TTL": "5"}
        daemons += [DaemonProc(config, name=n, env=ttl) for n in ("a", "b")]
        (first_dump,) = wait_for(lambda: processes("pg_dump", port), timeout=30)
        running = next(d for d in daemons if _children(d.proc.pid))
        other = next(d for d in daemons if d is not running)
        (job,) = _children(running.proc.pid)
        running.proc.kill()
        running.proc.wait()
        # The other replica starts the job again (its own pg_dump waits too): by then the
        # killed replica's job and pg_dump are gone, though the lock still holds them.
        wait_for(lambda: _children(other.proc.pid), timeout=60)  # the lease ran out
        assert not _alive(job) and not _alive(first_dump)
        (again,) = wait_for(lambda: processes("pg_dump", port), timeout=30)
        assert again != first_dump and not _alive(job)
        conn.rollback()
    wait_for(lambda: any(r[2] == "succeeded" for r in module_pg.execute(RUNS, db)), timeout=60)
    code, _ = other.stop(timeout=60)
    assert code == 0, other.text()
    rows = module_pg.execute(RUNS + " ORDER BY scheduled_for", db)
    assert rows[0][2:4] == (
        "failed",
        "abandoned: the daemon running it stopped before the run finished",
    ), rows
    assert all(r[2] == "succeeded" for r in rows[1:]) and rows[1:], rows
    assert not processes("pg_dump", port)


def test_a_failed_json_job_records_its_error_line_not_the_end_of_its_json(
    module_pg: PgCluster, micro: dict[str, str], folder: Path, daemons: list[DaemonProc]
) -> None:
    db = micro["micro"]
    config = write_config(
        folder,
        micro["CHAINLENS_MICROSERVICES_DSN"],
        '[[jobs]]\nname = "health"\ncommand = "status --json"\nevery = "1s"\n',
    )
    daemon = DaemonProc(config, name="json")
    daemons.append(daemon)
    made = "SELECT to_regclass('chainlens_ops.job_runs') IS NOT NULL"
    wait_for(lambda: module_pg.scalar(made, db), timeout=30)
    (failed, *_) = wait_for(lambda: [r for r in module_pg.execute(RUNS, db) if r[2] == "failed"])
    daemon.stop()
    # status exits 1 when something needs action (here: no backups, no WAL archive)
    assert failed[3].startswith("exit code 1: chainlens-ops: needs action: "), failed
    assert "backups" in failed[3], failed
    assert '"checks"' in daemon.text()  # the JSON itself is in the log


def test_a_run_whose_claim_lost_its_connection_is_not_started_twice(
    pg: PgCluster, folder: Path, daemons: list[DaemonProc], silent_server: int
) -> None:
    """The database restarts while a long job runs: the job's advisory lock goes with
    its daemon's connection, but the run's lease keeps the other replica from starting
    the same job until the run really ended."""
    env = micro_db(pg)
    hangs = f"cache stats --dsn 'host=127.0.0.1 port={silent_server} dbname=x connect_timeout=60'"
    config = write_config(
        folder,
        env["CHAINLENS_MICROSERVICES_DSN"] + " connect_timeout=2",
        f'[[jobs]]\nname = "long"\ncommand = "{hangs}"\nevery = "1s"\n',
    )
    daemons += [DaemonProc(config, name=n) for n in ("a", "b")]

    def jobs_running() -> int:
        return sum(len(_children(d.proc.pid)) for d in daemons)

    def skipped() -> int:
        return sum(d.text().count("taken by another replica") for d in daemons)

    wait_for(lambda: jobs_running() == 1, timeout=30)
    pg.restart()
    # Both replicas are connected again and keep firing; neither starts a second run.
    before = skipped()
    wait_for(lambda: skipped() >= before + 3, timeout=30)
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        assert jobs_running() <= 1
        time.sleep(0.1)
    rows = pg.execute(RUNS, env["micro"])
    assert [r[2] for r in rows] == ["running"], rows
    assert sum(d.text().count(" started on ") for d in daemons) == 1
