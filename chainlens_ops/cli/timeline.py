"""The recoverable window drawn in text: base backups as marks, archived WAL as a bar,
restore points as labels, on one time axis that ends now. From `status`:

    2026-11-28 19:45:26 UTC                                         now 19:46:18
      B                                                                        |
    ░░█████████████████████████████████                                        |
      ^ demo-before-incident 19:45:27
    B base backup  █ recoverable  ░ archived WAL no base backup can replay

Blank columns are gaps in the archive, or the time since the newest archived segment.
Plain strings of at most `width` columns: rich never has to fold them.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from chainlens_ops.restore.window import RecoverableWindow

SOLID, LIGHT = "█", "░"
MAX_LABELS = 6


def _fmt(when: datetime, span: timedelta) -> str:
    return f"{when:%H:%M:%S}" if span < timedelta(days=1) else f"{when:%m-%d %H:%M}"


def draw_window(window: RecoverableWindow, now: datetime, width: int) -> list[str]:
    """The timeline's lines (`width` >= 30), then its legend."""
    times = [m.started_at for m in window.base_backups]
    times += [r.start for r in window.wal] + [p.time for p in window.restore_points if p.time]
    if not times:
        return ["(nothing archived and no base backup yet)"]
    start = min(times)
    end = max(now, max(times))
    span = max(end - start, timedelta(seconds=1))
    cols = max(width, 30) - 1  # the last column is the "now" edge

    def col(when: datetime) -> int:
        return min(cols - 1, max(0, round((when - start) / span * (cols - 1))))

    left, right = f"{start:%Y-%m-%d %H:%M:%S} UTC", f"now {_fmt(end, span)}"
    lines = [left + right.rjust(cols + 1 - len(left))]
    marks = [" "] * cols
    for m in window.base_backups:
        marks[col(m.finished_at)] = "B" if m.restorable else "x"
    lines.append("".join(marks) + "|")
    bar = [" "] * cols
    for run in window.wal:
        for c in range(col(run.start), col(run.end) + 1):
            bar[c] = LIGHT
    for s in window.recoverable:
        for c in range(col(s.start), col(s.end) + 1):
            bar[c] = SOLID
    lines.append("".join(bar) + "|")
    points = [p for p in window.restore_points if p.time]
    for p in points[-MAX_LABELS:]:
        assert p.time is not None
        at, text = col(p.time), f"{p.name} {_fmt(p.time, span)}"
        lines.append(" " * at + "^ " + text if at + 2 + len(text) <= cols else
                     (text + " ^").rjust(at + 1))  # fmt: skip
    hidden = len(points) - MAX_LABELS
    if hidden > 0:
        lines.append(f"({hidden} older restore point(s): `chainlens-ops restore-point list`)")
    legend = [f"B base backup  {SOLID} recoverable"]
    if any(c == LIGHT for c in bar):
        legend.append(f"{LIGHT} archived WAL no base backup can replay")
    if any(not m.restorable for m in window.base_backups):
        legend.append("x base backup missing WAL")
    lines += _wrap(legend, cols + 1)
    return lines


def _wrap(parts: list[str], width: int) -> list[str]:
    lines = [""]
    for part in parts:
        joined = f"{lines[-1]}  {part}" if lines[-1] else part
        if len(joined) <= width or not lines[-1]:
            lines[-1] = joined
        else:
            lines.append(part)
    return lines
