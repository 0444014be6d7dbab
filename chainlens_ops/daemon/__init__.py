"""The scheduling daemon: runs the config file's `[[jobs]]`, each slot exactly once across
replicas (claimed in `chainlens_ops.job_runs`), each run in its own child process."""

from chainlens_ops.daemon.jobs import DaemonConfig, JobSpec, read_daemon_config
from chainlens_ops.daemon.report import JobStatus, daemon_status
from chainlens_ops.daemon.scheduler import Daemon, DaemonResult

__all__ = [
    "Daemon",
    "DaemonConfig",
    "DaemonResult",
    "JobSpec",
    "JobStatus",
    "daemon_status",
    "read_daemon_config",
]
