"""Named crash points for fault tests (as pgBackRest's tests use them).

A test sets CHAINLENS_CRASH_AT=<name>; the process kills itself with SIGKILL when it
reaches `crash_point(<name>)`. Every point is reached on every run of its command, so a
fault test never depends on timing. Unset (always, outside tests) it costs one lookup.
"""

from __future__ import annotations

import os
import signal

CRASH_ENV = "CHAINLENS_CRASH_AT"


def crash_point(name: str) -> None:
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
