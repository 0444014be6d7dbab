"""One wrapper for running PostgreSQL's binaries (pg_dump, pg_basebackup, pg_restore, ...).

- argv lists, never a shell; the caller's environment plus `env` (PGPASSWORD goes there,
  see `binaries.connection_for_binary`), never a password in argv;
- stdout is a stream of bytes read in fixed chunks (`PgStream`), so a dump of any size
  passes through in bounded memory; stderr is drained by a thread that keeps only its
  last STDERR_TAIL_BYTES for the error line;
- the end of the stream is where success is decided: when the process has closed its
  stdout, the stream waits for its exit, and a non-zero exit (or a death by signal, a
  timeout, a cancellation) raises there. A storage `put` reading the stream therefore
  fails instead of publishing the output of a process that failed, even one that wrote
  all of its output and then exited non-zero;
- a timeout (whole run) and a cancel event (for the daemon) kill the process; `close()`
  kills it too if the reader gives up early, so no child outlives its stream;
- and none outlives this process: every child gets a parent-death signal (SIGKILL, see
  `die_with_parent`), so a `kill -9` of a command takes its pg_dump/pg_restore with it.
"""

from __future__ import annotations

import ctypes
import io
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from chainlens_ops.core.errors import OperationFailed, PgCommandError

STDERR_TAIL_BYTES = 8192
MAX_CAPTURED_STDOUT = 4 * 1024 * 1024  # run_pg: output meant for humans, not dumps
_KILL_GRACE_S = 5.0


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_libc: ctypes.CDLL | None = None


def die_with_parent() -> Callable[[], None]:
    """A `preexec_fn` making the child receive SIGKILL when its parent dies.

    The child runs in its own session (a Ctrl-C is delivered once, by us), so nothing
    else would reach it: without this a `kill -9` of the command leaves pg_dump running
    the whole job to the end. Linux sends the signal when the *thread* that started the
    child exits, so children are started from threads that outlive them (the caller's,
    which waits for them). libc is loaded here, before the fork: the hook itself only
    calls prctl and getppid (async-signal-safe), and kills the child at once if the
    parent died before the setting took effect."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    prctl = _libc.prctl
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


class PgCancelled(OperationFailed):
    """A PostgreSQL binary was stopped by its timeout or a cancellation."""


@dataclass(frozen=True)
class PgResult:
    returncode: int
    stdout: str
    stderr: str


class PgStream(io.RawIOBase):
    """The stdout of a running PostgreSQL binary, as a readable raw byte stream.

    Reading returns b"" only after the process exited with code 0; otherwise the read
    that meets the end raises PgCommandError (or PgCancelled). Use as a context manager:
    leaving it early kills the process.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdin: BinaryIO | None = None,
        timeout: float | None = None,
        idle_timeout: float | None = None,
        cancel: threading.Event | None = None,
        on_stderr_line: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__()
        self.argv = [str(a) for a in argv]
        self.name = Path(self.argv[0]).name
        self.bytes_read = 0
        self._timeout = timeout
        self._idle_timeout = idle_timeout
        self._waiting_since: float | None = None
        self._on_line = on_stderr_line
        self._stopped_why: str | None = None
        self._finished = False
        self._feed_error: BaseException | None = None
        self._error: BaseException | None = None
        self._tail = bytearray()
        self._tail_lock = threading.Lock()
        self._started = time.monotonic()
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=full_env,
                bufsize=0,
                start_new_session=True,  # a Ctrl-C of ours is delivered once, by us
                preexec_fn=die_with_parent(),
            )
        except OSError as exc:
            raise OperationFailed(f"cannot run {self.name}: {exc.strerror or exc}") from exc
        self.pid = self._proc.pid
        self._threads = [threading.Thread(target=self._drain_stderr, daemon=True)]
        if stdin is not None:
            self._threads.append(threading.Thread(target=self._feed, args=(stdin,), daemon=True))
        self._done = threading.Event()
        self._threads.append(
            threading.Thread(target=self._watch, args=(cancel,), daemon=True),
        )
        for thread in self._threads:
            thread.start()

    # -- reading ----------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        assert self._proc.stdout is not None
        if self._finished:
            if self._error is not None:
                raise self._error  # again: a retried read must never look like a clean end
            return 0
        self._waiting_since = time.monotonic()
        try:
            n: int = self._proc.stdout.readinto(buffer)  # type: ignore[attr-defined]
        finally:
            self._waiting_since = None
        if n:
            self.bytes_read += n
            return n
        try:
            self._finish()
        except BaseException as exc:
            self._error = exc
            raise
        return 0

    def stderr_tail(self) -> str:
        with self._tail_lock:
            return self._tail.decode("utf-8", "replace")

    # -- stopping ---------------------------------------------------------------------

    def stop(self, why: str) -> None:
        """Kill the process (timeout, cancellation, or a reader that gave up)."""
        if self._stopped_why is None:
            self._stopped_why = why
        _kill(self._proc)

    def close(self) -> None:
        if not self.closed and not hasattr(self, "_proc"):  # Popen itself failed
            super().close()
        if not self.closed:
            try:
                if self._proc.poll() is None:
                    self.stop("the reader stopped early")
                    self._wait(_KILL_GRACE_S)
                self._done.set()
                for stream in (self._proc.stdout, self._proc.stdin):
                    if stream is not None:
                        stream.close()
            finally:
                super().close()

    def wait(self) -> int:
        """Read and discard the rest of stdout, then check the exit like a reader would."""
        while self.read(1024 * 1024):
            pass
        return self._proc.returncode

    # -- internals --------------------------------------------------------------------

    def _finish(self) -> None:
        remaining = None
        if self._timeout is not None:
            remaining = max(0.1, self._timeout - (time.monotonic() - self._started))
        self._wait(remaining)
        self._done.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=_KILL_GRACE_S)
        self._finished = True
        code = self._proc.returncode
        if self._feed_error is not None:
            raise self._feed_error  # the input failed (e.g. a damaged object): say that
        if self._stopped_why is not None:
            raise PgCancelled(f"{self.name} {self._stopped_why} (killed)")
        if code != 0:
            tail = self.stderr_tail()
            if code < 0 and not tail.strip():
                tail = f"killed by signal {-code}"
            raise PgCommandError(self.name, code, tail)

    def _wait(self, timeout: float | None) -> None:
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(f"timed out after {self._timeout:g}s")
            self._proc.wait()

    def _watch(self, cancel: threading.Event | None) -> None:
        """Kill the process at its deadline, when `cancel` is set, or when a reader has
        waited `idle_timeout` for its next byte (time the reader spends elsewhere, e.g.
        uploading, does not count)."""
        start = self._started
        while not self._done.is_set():
            now = time.monotonic()
            if cancel is not None and cancel.is_set():
                self.stop("was cancelled")
                return
            if self._timeout is not None and now - start > self._timeout:
                self.stop(f"timed out after {self._timeout:g}s")
                return
            waiting = self._waiting_since
            if self._idle_timeout is not None and waiting and now - waiting > self._idle_timeout:
                self.stop(f"produced no output for {self._idle_timeout:g}s")
                return
            if self._done.wait(0.2) or self._proc.poll() is not None:
                return

    def _drain_stderr(self) -> None:
        assert self._proc.stderr is not None
        pending = b""
        while True:
            chunk = self._proc.stderr.read(4096)
            if not chunk:
                if self._on_line is not None and pending:
                    self._on_line(pending.decode("utf-8", "replace"))
                return
            if self._on_line is not None:
                *lines, pending = (pending + chunk).split(b"\n")
                pending = pending[-STDERR_TAIL_BYTES:]
                for line in lines:
                    self._on_line(line.decode("utf-8", "replace"))
            with self._tail_lock:
                self._tail += chunk
                if len(self._tail) > STDERR_TAIL_BYTES:
                    del self._tail[: len(self._tail) - STDERR_TAIL_BYTES]

    def _feed(self, source: BinaryIO) -> None:
        """Write `source` to the process's stdin. A process that stops reading early
        (pg_restore --list reads only the table of contents) is not an error here: its
        exit code says whether it got what it needed. A failing source is kept, and
        raised by the stream's final read."""
        stdin = self._proc.stdin
        assert stdin is not None
        try:
            while True:
                chunk = source.read(1024 * 1024)
                if not chunk:
                    break
                stdin.write(chunk)
        except (BrokenPipeError, ValueError):
            pass
        except BaseException as exc:
            self._feed_error = exc
        finally:
            try:  # noqa: SIM105
                stdin.close()
            except OSError:
                pass


def run_pg(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdin: BinaryIO | None = None,
    timeout: float | None = None,
    check: bool = True,
) -> PgResult:
    """Run a binary whose output is small (pg_verifybackup, pg_restore --list, pg_ctl);
    PgCommandError on a non-zero exit when `check`."""
    with PgStream(argv, env=env, stdin=stdin, timeout=timeout) as stream:
        chunks: list[bytes] = []
        size = 0
        code = 0
        try:
            while chunk := stream.read(64 * 1024):
                size += len(chunk)
                if size > MAX_CAPTURED_STDOUT:
                    raise OperationFailed(f"{stream.name} wrote more output than expected")
                chunks.append(chunk)
        except PgCommandError as exc:
            if check:
                raise
            code = exc.returncode
        out = b"".join(chunks).decode("utf-8", "replace")
        return PgResult(code, out, stream.stderr_tail())


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:  # noqa: SIM105
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
