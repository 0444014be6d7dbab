"""`daemon status`: each job's schedule and next fire time (config) with its last run and
last success (chainlens_ops.job_runs, so runs of every replica count)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from chainlens_ops.config import Settings
from chainlens_ops.daemon.history import JobRun, last_runs
from chainlens_ops.daemon.jobs import DaemonConfig


@dataclass(frozen=True)
class JobStatus:
    name: str
    command: str
    schedule: str
    timeout_s: int
    next_fire: datetime | None
    last_run: JobRun | None
    last_success: JobRun | None

    @property
    def last_status(self) -> str | None:
        return self.last_run.status if self.last_run else None


def daemon_status(settings: Settings, config: DaemonConfig) -> list[JobStatus]:
    runs = last_runs(settings.target("microservices"))
    now = datetime.now(UTC)
    return [
        JobStatus(
            name=job.name,
            command=job.display,
            schedule=job.schedule,
            timeout_s=job.timeout_s,
            next_fire=job.next_fire(now),
            last_run=runs.latest.get(job.name),
            last_success=runs.succeeded.get(job.name),
        )
        for job in config.jobs
    ]
