"""Named crash points: deterministic fault injection for tests.

`crash_point(name)` kills the process with SIGKILL when the environment variable
CHAINLENS_CRASH_AT equals `name`. Code calls it at the places where a crash matters
(after a temp write, after a link, before a folder fsync, mid-upload, ...); a test sets
the variable and the process dies there on every run, on any machine, instead of at a
moment a random-timing kill happens to hit. Costs one dict lookup when unset, and
imports nothing beyond `os` (it is on the `wal push` path).
"""

from __future__ import annotations

import os

ENV = "CHAINLENS_CRASH_AT"
_SIGKILL = 9  # signal.SIGKILL; the `signal` module is not imported on the hot path


def crash_point(name: str) -> None:
    """SIGKILL this process if CHAINLENS_CRASH_AT names this point."""
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), _SIGKILL)


PAUSE_ENV = "CHAINLENS_PAUSE_AT"
PAUSE_LIMIT_S = 600.0


def pause_point(name: str) -> None:
    """Wait here (up to PAUSE_LIMIT_S) if CHAINLENS_PAUSE_AT names this point, after
    saying so on stderr: a test then signals the process at an exact place (a SIGTERM
    while a scratch server is recovering) instead of at a moment chance picks."""
    if os.environ.get(PAUSE_ENV) != name:
        return
    import sys
    import time

    sys.stderr.write(f"chainlens-ops: paused at {name} (pid {os.getpid()})\n")
    sys.stderr.flush()
    deadline = time.monotonic() + PAUSE_LIMIT_S
    while time.monotonic() < deadline:
        time.sleep(0.1)
