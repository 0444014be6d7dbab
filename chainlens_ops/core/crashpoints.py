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
PAUSE_ENV = "CHAINLENS_PAUSE_AT"
PAUSE_DIR_ENV = "CHAINLENS_PAUSE_DIR"
PAUSE_MAX_S = 300.0
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


def pause_point(name: str) -> None:
    """Hold a process that reaches this point until a test lets it go (or signals it).

    When CHAINLENS_PAUSE_AT names this point, say so on stderr (`paused at NAME (pid N)`,
    for a test that signals the process there, e.g. a SIGTERM while a scratch server is
    recovering). With CHAINLENS_PAUSE_DIR set too, only the first process to get there
    pauses (it creates `<dir>/<name>.reached` exclusively) and it waits until `<name>.go`
    exists: so a race test lands its move at an exact place on every run, e.g. a prune
    while a restore's server replays. Either way it waits at most PAUSE_MAX_S.
    """
    if os.environ.get(PAUSE_ENV) != name:
        return
    import sys
    import time

    folder = os.environ.get(PAUSE_DIR_ENV)
    if folder:
        try:
            flags = os.O_CREAT | os.O_EXCL
            os.close(os.open(os.path.join(folder, name + ".reached"), flags, 0o666))
        except OSError:
            return  # another process paused here already (or the folder is unusable)
    sys.stderr.write(f"chainlens-ops: paused at {name} (pid {os.getpid()})\n")
    sys.stderr.flush()
    deadline = time.monotonic() + PAUSE_MAX_S
    while time.monotonic() < deadline:
        if folder and os.path.exists(os.path.join(folder, name + ".go")):
            return
        time.sleep(0.05)
