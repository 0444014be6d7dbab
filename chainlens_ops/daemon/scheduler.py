"""The scheduling loop: fire times from APScheduler 3's triggers, runs claimed in PostgreSQL.

Why not APScheduler's own scheduler: it does not hand a job its scheduled fire time (the
slot we must claim), and its job stores cannot be shared between processes. Its
triggers compute the fire times (5-field crontab with a timezone; intervals aligned to
the Unix epoch, so every replica computes the same slots); this loop does the rest:

- missed slots coalesce into the latest one (a suspended host does not replay a backlog);
- a job never overlaps itself: a slot that comes while its previous run is still going
  is skipped here, and across replicas by the job's advisory lock (history.py);
- each run claims (job, slot) before it starts, then runs in its own child process;
- SIGTERM/SIGINT: no new runs; running ones get `stop_timeout` to finish, then their
  process groups are stopped and the runs recorded as failed; the loop returns.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType

from chainlens_ops.core.crashpoints import crash_point, pause_point
from chainlens_ops.core.errors import ChainlensError, ConfigError
from chainlens_ops.daemon import history
from chainlens_ops.daemon.jobs import DaemonConfig, JobSpec
from chainlens_ops.daemon.metrics import write_metrics
from chainlens_ops.daemon.runner import JobProcess, RunOutcome, child_argv
from chainlens_ops.settings.config import Settings

log = logging.getLogger("chainlens_ops.daemon")

MAX_SLEEP_S = 30.0  # re-read the clock at least this often (clock steps, suspend)
PRUNE_EVERY_S = 3600.0


@dataclass(frozen=True)
class DaemonResult:
    runs_started: int
    stopped_by: str


def utcnow() -> datetime:
    return datetime.now(UTC)


class Daemon:
    def __init__(
        self, settings: Settings, config: DaemonConfig, *, metrics_file: str | None = None
    ) -> None:
        self.settings = settings
        self.config = config
        self.target = settings.target("microservices")
        self.metrics_file = metrics_file or config.metrics_file
        self.stop = threading.Event()
        self._stopped_by = "stop requested"
        self._threads: dict[str, threading.Thread] = {}
        self._procs: dict[str, JobProcess] = {}
        self._lock = threading.Lock()
        self._last_prune = 0.0
        self._runs_started = 0
        self._metrics_due = threading.Event()

    def run(self) -> DaemonResult:
        """Run until SIGTERM/SIGINT (or `stop` is set). Raises only before the first run."""
        if self.metrics_file:
            folder = os.path.dirname(os.path.abspath(self.metrics_file))
            if not os.access(folder, os.W_OK | os.X_OK):
                raise ConfigError(f"metrics file {self.metrics_file}: cannot write in {folder}")
        self._install_signal_handlers()
        history.ensure_table(self.target)  # a wrong DSN stops us here, before any run
        if self.metrics_file:
            threading.Thread(
                target=self._metrics_loop, args=(self.metrics_file,), name="metrics", daemon=True
            ).start()
        now = utcnow()
        next_due = {job.name: job.next_fire(now) for job in self.config.jobs}
        for job in self.config.jobs:
            log.info(
                "job %s: %s, next %s: %s", job.name, job.schedule, next_due[job.name], job.display
            )
        while not self.stop.is_set():
            now = utcnow()
            for job in self.config.jobs:
                due = next_due[job.name]
                if due is None or due > now:
                    continue
                slot = job.latest_due(due, now)
                next_due[job.name] = job.next_fire(slot)
                self._fire(job, slot)
            pending = [d for d in next_due.values() if d is not None]
            wait = (min(pending) - utcnow()).total_seconds() if pending else MAX_SLEEP_S
            self.stop.wait(min(max(wait, 0.0), MAX_SLEEP_S))
        self._shutdown()
        return DaemonResult(self._runs_started, self._stopped_by)

    def _fire(self, job: JobSpec, slot: datetime) -> None:
        with self._lock:
            running = self._threads.get(job.name)
            if running is not None and running.is_alive():
                log.warning(
                    "job %s: slot %s skipped: the previous run is still going",
                    job.name,
                    slot.isoformat(),
                )
                return
            thread = threading.Thread(
                target=self._run_slot, args=(job, slot), name=f"job-{job.name}", daemon=True
            )
            self._threads[job.name] = thread
        thread.start()

    def _run_slot(self, job: JobSpec, slot: datetime) -> None:
        if self.stop.is_set():
            return
        try:
            claim = history.claim_slot(self.target, job.name, slot, self.config.run_lease_s)
        except ChainlensError as exc:
            log.error(
                "job %s: slot %s not run: cannot claim it: %s",
                job.name,
                slot.isoformat(),
                exc.one_line(),
            )
            return
        if claim is None:
            log.info(
                "job %s: slot %s taken by another replica (or the job is running there)",
                job.name,
                slot.isoformat(),
            )
            return
        crash_point("daemon-after-claim")
        pause_point("daemon-after-claim")
        if self.stop.is_set():
            claim.release()  # stopping: the slot was not started, so it is not a run
            log.info(
                "job %s: slot %s not started: the daemon is stopping", job.name, slot.isoformat()
            )
            return
        outcome: RunOutcome | None = None
        try:
            outcome = self._execute(job, slot, claim)
        finally:
            self._finish(claim, outcome)
        if outcome.succeeded:
            log.info(
                "job %s: slot %s succeeded in %.1fs", job.name, slot.isoformat(), outcome.duration_s
            )
        else:
            log.error(
                "job %s: slot %s failed after %.1fs: %s",
                job.name,
                slot.isoformat(),
                outcome.duration_s,
                outcome.error,
            )
        self._after_run()

    def _execute(self, job: JobSpec, slot: datetime, claim: history.Claim) -> RunOutcome:
        log.info(
            "job %s: slot %s started on %s: %s",
            job.name,
            slot.isoformat(),
            history.host_name(),
            job.display,
        )
        started = time.monotonic()
        try:
            proc = JobProcess(job.name, child_argv(self.config.config_file, job.argv))
        except OSError as exc:
            return RunOutcome(False, None, time.monotonic() - started, f"cannot start: {exc}")
        with self._lock:
            self._procs[job.name] = proc
            self._runs_started += 1
        try:
            return proc.wait(
                job.timeout_s, tick=lambda: claim.renew(self.target), tick_s=claim.renew_every_s
            )
        finally:
            with self._lock:
                self._procs.pop(job.name, None)

    def _finish(self, claim: history.Claim, outcome: RunOutcome | None) -> None:
        succeeded = outcome.succeeded if outcome else False
        error = outcome.error if outcome else "the daemon failed while running the job"
        try:
            claim.finish(self.target, succeeded, error)
        except ChainlensError as exc:
            log.error(
                "job %s: cannot record the end of slot %s: %s",
                claim.job_name,
                claim.scheduled_for.isoformat(),
                exc.one_line(),
            )
        finally:
            claim.close()

    def _after_run(self) -> None:
        if time.monotonic() - self._last_prune > PRUNE_EVERY_S:
            self._last_prune = time.monotonic()
            try:
                pruned = history.prune(self.target, self.config.history_days)
                if pruned:
                    log.info(
                        "pruned %d job_runs rows older than %d days",
                        pruned,
                        self.config.history_days,
                    )
            except ChainlensError as exc:
                log.warning("cannot prune job history: %s", exc.one_line())
        self._metrics_due.set()

    def _metrics_loop(self, path: str) -> None:
        """Rewrites the metrics file after runs, in its own thread: reaching a database
        that is down must not hold up the job's thread (it would skip the next slot)."""
        names = [j.name for j in self.config.jobs]
        while not self.stop.is_set():
            self._metrics_due.wait()
            self._metrics_due.clear()
            if self.stop.is_set():
                return
            try:
                write_metrics(path, self.settings, names)
            except (ChainlensError, OSError) as exc:
                log.warning("cannot write metrics file %s: %s", path, exc)

    def _install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: FrameType | None) -> None:
            name = signal.Signals(signum).name
            if self.stop.is_set():
                return
            self._stopped_by = name
            log.info(
                "%s: no new runs; waiting up to %ss for running jobs",
                name,
                self.config.stop_timeout_s,
            )
            self.stop.set()
            self._metrics_due.set()  # wakes the metrics thread, which sees `stop` and ends

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def _shutdown(self) -> None:
        deadline = time.monotonic() + self.config.stop_timeout_s
        with self._lock:
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        with self._lock:
            procs = list(self._procs.values())
        for proc in procs:
            log.warning(
                "job %s: still running after %ss: stopping it",
                proc.job_name,
                self.config.stop_timeout_s,
            )
            proc.terminate(f"stopped: daemon shut down ({self._stopped_by})")
        for thread in threads:
            thread.join(timeout=10)
        log.info("daemon stopped (%s)", self._stopped_by)
