"""Named crash points for fault tests: `CHAINLENS_CRASH_POINT=<name>` makes the process
kill itself (SIGKILL: no cleanup, no finally blocks) when it reaches that point, a place
it passes on every run. Tests prove recovery from exactly there, never by a lucky kill."""

import os
import signal

ENV = "CHAINLENS_CRASH_POINT"


def crash_point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
