"""`daemon status`: each job's schedule and next fire time (config) with its last run and
last success (chainlens_ops.job_runs, so runs of every replica count), and the one
verdict `daemon status` and `status` share: a job whose last run failed, a slot missed
by more than DAEMON_GRACE (the daemon is not running), or no job ever run."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from chainlens_ops.daemon.history import JobRun, last_runs
from chainlens_ops.daemon.jobs import DaemonConfig, JobSpec
from chainlens_ops.settings.config import Settings

DAEMON_GRACE = timedelta(minutes=5)
DAEMON_UNIT = "chainlens-ops-daemon"  # scripts/chainlens-ops-daemon.service
UNIT_DIRS = ("/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")


@dataclass(frozen=True)
class JobStatus:
    name: str
    command: str
    schedule: str
    timeout_s: int
    next_fire: datetime | None
    last_run: JobRun | None
    last_success: JobRun | None
    overdue: bool = False  # a slot came and went (by DAEMON_GRACE) with no run claiming it
    last_finished: JobRun | None = None  # the latest run that is not running any more

    @property
    def last_status(self) -> str | None:
        return self.last_run.status if self.last_run else None

    @property
    def failed(self) -> bool:
        """The latest finished run failed (a run in progress does not hide it)."""
        return self.last_finished is not None and self.last_finished.status == "failed"


def daemon_status(
    settings: Settings, config: DaemonConfig, now: datetime | None = None
) -> list[JobStatus]:
    runs = last_runs(settings.target("microservices"))
    now = now or datetime.now(UTC)
    return [
        JobStatus(
            name=job.name,
            command=job.display,
            schedule=job.schedule,
            timeout_s=job.timeout_s,
            next_fire=job.next_fire(now),
            last_run=runs.latest.get(job.name),
            last_success=runs.succeeded.get(job.name),
            overdue=is_overdue(job, runs.latest.get(job.name), now),
            last_finished=runs.finished.get(job.name),
        )
        for job in config.jobs
    ]


def is_overdue(job: JobSpec, last: JobRun | None, now: datetime) -> bool:
    """A slot came and went (by DAEMON_GRACE) with no run claiming it."""
    if last is None or last.status == "running":
        return False
    due = job.next_fire(last.finished_at or last.started_at)
    return due is not None and due <= now - DAEMON_GRACE


def needs_action(jobs: list[JobStatus]) -> bool:
    """The verdict: exit 1 for `daemon status`, ✗ for `status`."""
    return any(j.failed or j.overdue for j in jobs) or (
        bool(jobs) and not any(j.last_run for j in jobs)
    )


def daemon_fix(settings: Settings) -> str:
    """How to start the daemon here: systemctl where its unit is installed, else the
    command itself (a sandbox or a fresh host has no unit)."""
    if any(os.path.exists(f"{d}/{DAEMON_UNIT}.service") for d in UNIT_DIRS):
        return f"sudo systemctl start {DAEMON_UNIT} (is the daemon running?)"
    config = f" --config {settings.config_file}" if settings.config_file else ""
    return (
        f"chainlens-ops{config} daemon (is the daemon running? no systemd unit "
        f"{DAEMON_UNIT} is installed here: README, 'the daemon under systemd')"
    )
