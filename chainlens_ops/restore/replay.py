"""WAL replay progress of a restored server: segment n of m, read from its log.

With `restore_command` set, the startup process logs `restored log file "X" from
archive` for every segment it fetches, from the first one (before the server accepts
connections) to the last; n counts from the plan's first segment to its last one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from chainlens_ops.core.errors import UsageError
from chainlens_ops.pg.walnames import parse_wal_name
from chainlens_ops.restore.plan import RestorePlan

RESTORED = re.compile(r'restored log file "([0-9A-F]{24})" from archive')
READ_MAX = 1024 * 1024


class ReplayWatch:
    """Call `poll()` now and then: `report(n, m)` runs when a later segment was restored."""

    def __init__(self, log: Path, plan: RestorePlan, report: Callable[[int, int], None]):
        self._log = log
        self._report = report
        self._first = parse_wal_name(plan.wal_first).segno(plan.seg_size)
        self._seg_size = plan.seg_size
        self.total = max(1, parse_wal_name(plan.wal_last).segno(plan.seg_size) - self._first + 1)
        self.done = 0
        self._offset = 0
        self._partial = ""

    def poll(self) -> None:
        try:
            with self._log.open("rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read(READ_MAX)
        except OSError:
            return
        self._offset += len(chunk)
        text = self._partial + chunk.decode("utf-8", "replace")
        lines = text.split("\n")
        self._partial = lines.pop()  # an unfinished last line waits for the next poll
        best = self.done
        for line in lines:
            found = RESTORED.search(line)
            if found is None:
                continue
            try:
                segno = parse_wal_name(found.group(1)).segno(self._seg_size)
            except UsageError:
                continue
            best = max(best, min(self.total, segno - self._first + 1))
        if best > self.done:
            self.done = best
            self._report(best, self.total)
