"""One job run = one child process running the same CLI code (`python -m chainlens_ops`).

A crash, a leak or a hang in a job cannot take the daemon down: the child has its own
process group (and session), so a timeout or a shutdown kills it and anything it started
(pg_dump, pg_basebackup) together. Nor can a job outlive its daemon: the child gets a
parent-death SIGKILL (as pg_dump gets one from it), so when a replica is killed its job
dies with it instead of running on while the slot's advisory lock, gone with the
daemon's connection, lets another replica start the same job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO

from chainlens_ops.pg.process import die_with_parent

log = logging.getLogger("chainlens_ops.daemon")

KILL_GRACE_S = 3.0  # between SIGTERM and SIGKILL of a child's process group


@dataclass(frozen=True)
class RunOutcome:
    succeeded: bool
    exit_code: int | None
    duration_s: float
    error: str | None


def child_argv(config_file: str | None, argv: Sequence[str]) -> list[str]:
    config = ["--config", config_file] if config_file else []
    # -P: `-m` would otherwise put the working folder first on sys.path, and a folder
    # holding a `chainlens_ops` (a checkout, say) would run instead of the installed code.
    return [sys.executable, "-P", "-m", "chainlens_ops", *config, *argv]


class JobProcess:
    """A running child; `wait()` enforces the timeout, `terminate()` is for shutdown."""

    def __init__(self, job_name: str, argv: list[str]) -> None:
        self.job_name = job_name
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=die_with_parent(),  # started by the job's thread, which waits for it
        )
        # stdout and stderr apart: the error line comes from stderr, where the CLI says
        # what failed; stdout may be a JSON document whose last line is "}".
        self._tail: deque[str] = deque(maxlen=20)
        self._err_tail: deque[str] = deque(maxlen=20)
        self._first_out: str | None = None
        self._readers = [
            threading.Thread(
                target=self._read_output, args=(stream, tail), name=f"out-{job_name}", daemon=True
            )
            for stream, tail in ((self.proc.stdout, self._tail), (self.proc.stderr, self._err_tail))
        ]
        for reader in self._readers:
            reader.start()
        self._stopped_by: str | None = None

    def _read_output(self, stream: IO[bytes] | None, tail: deque[str]) -> None:
        assert stream is not None
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                if tail is self._tail and self._first_out is None:
                    self._first_out = line
                tail.append(line)
                log.info("[%s] %s", self.job_name, line)

    def wait(
        self, timeout_s: float, *, tick: Callable[[], None] | None = None, tick_s: float = 2.0
    ) -> RunOutcome:
        """Wait for the child, killing it after `timeout_s`; `tick` is called every
        `tick_s` meanwhile (the daemon renews the run's lease)."""
        deadline = self.started + timeout_s
        while True:
            left = deadline - time.monotonic()
            try:
                code = self.proc.wait(timeout=max(0.0, min(left, tick_s) if tick else left))
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() < deadline and tick is not None:
                    tick()
                    continue
            self._stopped_by = self._stopped_by or f"timed out after {timeout_s:g}s"
            self.kill_group()
            code = self.proc.wait()
            break
        for reader in self._readers:
            reader.join(timeout=5)
        duration = time.monotonic() - self.started
        if code == 0 and self._stopped_by is None:
            return RunOutcome(True, 0, duration, None)
        return RunOutcome(False, code, duration, self._error(code))

    def terminate(self, why: str) -> None:
        """Ask the child to stop (shutdown); `wait()` then records `why` as the error."""
        self._stopped_by = why
        self.kill_group()

    def kill_group(self) -> None:
        """SIGTERM the child's process group, SIGKILL it if still there after a grace."""
        if not self._signal(signal.SIGTERM):
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=KILL_GRACE_S)
        self._signal(signal.SIGKILL)

    def _signal(self, sig: signal.Signals) -> bool:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def _error(self, code: int) -> str:
        if self._stopped_by:
            return self._stopped_by
        if code < 0:
            return f"killed by signal {signal.Signals(-code).name}"
        json_out = (self._first_out or "").startswith(("{", "["))
        return f"exit code {code}: {error_line(self._err_tail, self._tail, json_out)}"


def error_line(stderr: Sequence[str], stdout: Sequence[str], stdout_is_json: bool) -> str:
    """What a failed run said: its last `chainlens-ops:` line on stderr, else its last
    stderr line, else its last stdout line, unless stdout is a JSON document (whose
    last line is "}")."""
    errors = [line for line in stderr if line.startswith("chainlens-ops:")]
    if errors:
        return errors[-1]
    if stderr:
        return stderr[-1]
    if stdout and not stdout_is_json:
        return stdout[-1]
    return "no error line on stderr (its output is in the daemon's log)"
