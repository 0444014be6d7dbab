"""Benchmark: what an idle `chainlens-ops daemon` costs (target: < 1% of a core, < 150 MB RSS).

A throwaway cluster holds the microservices database; the daemon runs a typical config
(hourly cache cleanup, nightly partition ensure, nightly base backup slot) whose next
fire times are far away, so it is idle for the whole window. Measured from /proc: CPU
(utime + stime of the daemon process itself) over the window as a share of one core,
resident memory at the end (VmRSS) and its peak (VmHWM).

Anchors, measured in the same run:
  python-sleep     a bare /usr/bin/python3 sleeping (the interpreter's floor)
  apscheduler      APScheduler 3's own BlockingScheduler with the same triggers, in a
                   python process that imports nothing else (what one would write by hand)

A second phase runs a job every 2 s and reports the daemon's own CPU per run (the job's
child processes excluded: they are the job's cost, not the scheduler's).

    /opt/chainlens-ops/venv/bin/python bench/bench_daemon.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))
# The tool measured is the one installed beside the python running this script.
os.environ.setdefault("CHAINLENS_TEST_VENV", str(Path(sys.executable).parent.parent))

from pgharness import (  # noqa: E402
    CLI,
    SCRATCH_ROOT,
    cli_env,
    clone_cluster,
    create_template,
    make_shared_dir,
    remove_tree,
)

TICKS = os.sysconf("SC_CLK_TCK")
IDLE_JOBS = """
[[jobs]]
name = "cache-cleanup"
command = "cache cleanup"
cron = "0 4 * * *"

[[jobs]]
name = "partitions"
command = "partition ensure"
cron = "30 2 * * *"

[[jobs]]
name = "weekly"
command = "cache stats"
cron = "0 3 * * 0"
"""
BUSY_JOBS = """
[[jobs]]
name = "tick"
command = "cache stats"
every = "2s"
"""
APSCHEDULER_SCRIPT = """
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
s = BlockingScheduler(timezone="UTC")
for expr in ("0 4 * * *", "30 2 * * *", "0 3 * * 0"):
    s.add_job(print, CronTrigger.from_crontab(expr, timezone="UTC"))
s.start()
"""


@dataclass
class Usage:
    name: str
    cpu_percent: float
    rss_mb: float
    peak_rss_mb: float


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def memory_mb(pid: int) -> tuple[float, float]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def measure(name: str, argv: list[str], seconds: float, env: dict[str, str], log: Path) -> Usage:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        time.sleep(3)  # start-up (imports, config, table check) is not idle time
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited: {log.read_text()}")
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(seconds)
        cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
        rss, peak = memory_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return Usage(name, 100 * (cpu1 - cpu0) / (t1 - t0), rss, peak)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="idle window per process")
    args = parser.parse_args()

    make_shared_dir(SCRATCH_ROOT, owner_postgres=False, mode=0o755)
    base = SCRATCH_ROOT / f"bench-daemon-{os.getpid()}"
    remove_tree(base)
    make_shared_dir(base, owner_postgres=False, mode=0o755)
    cluster = clone_cluster(create_template(base / "template"), base / "cluster")
    cluster.start()
    try:
        db = f"micro_{uuid.uuid4().hex[:6]}"
        cluster.createdb(db)
        dsn = cluster.conninfo(db)
        env = cli_env({"CHAINLENS_MICROSERVICES_DSN": dsn})
        applied = subprocess.run(
            [str(CLI), "schema", "apply", "--db", "microservices"], env=env, capture_output=True
        )
        if applied.returncode != 0:
            raise RuntimeError(applied.stderr.decode())
        idle_cfg, busy_cfg = base / "idle.toml", base / "busy.toml"
        idle_cfg.write_text(IDLE_JOBS)
        busy_cfg.write_text(BUSY_JOBS)
        python = str(Path(CLI).parent / "python")
        results = [
            measure(
                "chainlens-ops daemon",
                [str(CLI), "--config", str(idle_cfg), "daemon"],
                args.seconds,
                env,
                base / "idle.log",
            ),
            measure(
                "python-sleep",
                ["/usr/bin/python3", "-c", "import time; time.sleep(1e6)"],
                args.seconds,
                env,
                base / "sleep.log",
            ),
            measure(
                "apscheduler",
                [python, "-c", APSCHEDULER_SCRIPT],
                args.seconds,
                env,
                base / "aps.log",
            ),
        ]
        busy = measure(
            "daemon, job every 2 s",
            [str(CLI), "--config", str(busy_cfg), "daemon"],
            max(20.0, args.seconds / 3),
            env,
            base / "busy.log",
        )
    finally:
        cluster.stop(mode="immediate")
        remove_tree(base)

    ours = results[0]
    print(f"idle window {args.seconds:.0f} s per process, {os.cpu_count()} cores\n")
    print(
        f"{'process':<24}{'CPU % of a core':>16}{'RSS MB':>10}{'peak RSS MB':>13}{'RSS ratio':>11}"
    )
    for r in results:
        print(
            f"{r.name:<24}{r.cpu_percent:>16.3f}{r.rss_mb:>10.1f}{r.peak_rss_mb:>13.1f}"
            f"{ours.rss_mb / r.rss_mb:>11.2f}"
        )
    tick = 100 / TICKS / args.seconds
    print(f"(CPU resolution: one {1000 // TICKS} ms clock tick in the window = {tick:.3f}%)")
    print(
        f"\n{busy.name}: daemon's own CPU {busy.cpu_percent:.2f}% of a core "
        f"(job children excluded), RSS {busy.rss_mb:.1f} MB, peak {busy.peak_rss_mb:.1f} MB"
    )
    ok = ours.cpu_percent < 1.0 and ours.rss_mb < 150 and ours.peak_rss_mb < 150
    print(f"\ntarget (idle < 1% of a core, < 150 MB resident): {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
