"""Named crash points: deterministic fault injection for tests.

`crash_point(name)` kills the process with SIGKILL when the environment variable
CHAINLENS_CRASH_AT equals `name`. Code calls it at the places where a crash matters
(after a temp write, after a link, before a folder fsync, mid-upload, ...); a test sets
the variable and the process dies there on every run, on any machine, instead of at a
moment a random-timing kill happens to hit. Costs one dict lookup when unset, and
imports nothing beyond `os` (it is on the `wal push` path).

CHAINLENS_CRASH_SIGNAL chooses what happens there instead of SIGKILL: `TERM` sends
SIGTERM (the process's own handler runs, as when the daemon stops a job), `HANG` stops
the process there for good (a test then kills or times it out while it sits exactly at
that point).
"""

from __future__ import annotations

import os

ENV = "CHAINLENS_CRASH_AT"
SIGNAL_ENV = "CHAINLENS_CRASH_SIGNAL"
_SIGKILL = 9  # signal.SIGKILL; the `signal` module is not imported on the hot path
_SIGTERM = 15


def crash_point(name: str) -> None:
    """SIGKILL this process if CHAINLENS_CRASH_AT names this point."""
    if os.environ.get(ENV) == name:
        how = os.environ.get(SIGNAL_ENV, "KILL")
        if how == "HANG":
            import time

            while True:
                time.sleep(3600)
        os.kill(os.getpid(), _SIGTERM if how == "TERM" else _SIGKILL)
