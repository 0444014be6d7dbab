"""The recoverable window's pure computation (chainlens_ops.restore.window), and the restore
planner's choice of a base backup for a time, which must accept exactly the times the
window shows. No repository, no PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chainlens_ops.backup.manifest import BackupManifest, format_time
from chainlens_ops.core.errors import UsageError
from chainlens_ops.restore.plan import _choose, parse_target_time
from chainlens_ops.restore.window import (
    BaseMark,
    BaseOnAxis,
    RecoverableWindow,
    Span,
    contiguous_runs,
    merge_spans,
    recoverable_spans,
    run_holding,
    span_lines,
    target_time_text,
    window_text,
)

T0 = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_runs_are_the_contiguous_present_segments() -> None:
    present = {s: s not in (4, 5, 9) for s in range(2, 12)}
    assert contiguous_runs(present) == [(2, 3), (6, 8), (10, 11)]
    assert contiguous_runs({3: False}) == []
    assert contiguous_runs({}) == []
    assert contiguous_runs({7: True}) == [(7, 7)]


def test_a_base_backup_needs_a_run_holding_all_its_own_wal() -> None:
    runs = [(2, 3), (6, 8)]
    assert run_holding(BaseOnAxis("a", at(0), 2, 3), runs) == (2, 3)
    assert run_holding(BaseOnAxis("b", at(0), 3, 6), runs) is None  # its WAL crosses a gap
    assert run_holding(BaseOnAxis("c", at(0), 4, 4), runs) is None  # its WAL is gone
    assert run_holding(BaseOnAxis("d", at(0), None, None), runs) is None


def test_a_gap_cuts_the_window_into_the_runs_that_hold_a_base_backup() -> None:
    runs = [(2, 5), (7, 12)]
    reach = {(2, 5): at(30), (7, 12): at(90)}
    asked: list[tuple[int, int]] = []

    def newest_tx(run: tuple[int, int]) -> datetime | None:
        asked.append(run)
        return reach[run]

    bases = [
        BaseOnAxis("b1", at(10), 2, 2),
        BaseOnAxis("b1bis", at(20), 3, 3),  # same run: one read of its WAL
        BaseOnAxis("b2", at(70), 8, 8),
        BaseOnAxis("broken", at(50), 5, 7),  # crosses the gap: gives nothing
    ]
    spans = recoverable_spans(bases, runs, newest_tx)
    assert spans == [Span(at(10), at(30)), Span(at(70), at(90))]
    assert sorted(asked) == [(2, 5), (7, 12)]


def test_no_span_without_a_transaction_after_the_backup() -> None:
    runs = [(2, 5)]
    assert recoverable_spans([BaseOnAxis("b", at(10), 2, 2)], runs, lambda r: None) == []
    assert recoverable_spans([BaseOnAxis("b", at(10), 2, 2)], runs, lambda r: at(10)) == []
    assert recoverable_spans([BaseOnAxis("b", at(10), 2, 2)], runs, lambda r: at(11)) == [
        Span(at(10), at(11))
    ]


def test_spans_merge_and_hold_their_start_but_not_their_end() -> None:
    assert merge_spans([Span(at(5), at(9)), Span(at(0), at(6)), Span(at(20), at(30))]) == [
        Span(at(0), at(9)),
        Span(at(20), at(30)),
    ]
    span = Span(at(0), at(10))
    assert span.holds(at(0)) and span.holds(at(9.99)) and not span.holds(at(10))
    mark = BaseMark("b", at(-1), at(0), "x", True, "y", at(10))
    assert mark.reaches(at(0)) and not mark.reaches(at(10)) and not mark.reaches(at(-0.5))
    assert not BaseMark("b", at(-1), at(0), "x", False).reaches(at(5))


def test_every_command_prints_the_window_the_same_way() -> None:
    spans = [Span(at(0), at(10.5)), Span(at(60), at(61))]
    assert span_lines(spans) == [
        "2026-12-06 10:00:00.000000+00 .. 2026-12-06 10:10:30.000000+00",
        "2026-12-06 11:00:00.000000+00 .. 2026-12-06 11:01:00.000000+00",
    ]
    assert window_text(spans) == ", ".join(span_lines(spans))
    assert span_lines([])[0].startswith("none")
    # What is printed is what --target-time reads back.
    assert parse_target_time(target_time_text(at(10.5))).time == at(10.5)


def manifest(backup_id: str, finished: datetime) -> BackupManifest:
    return BackupManifest(
        backup_id, "base", "supabase", "supabase", "h:1", 150000, "1",
        format_time(finished - timedelta(seconds=5)), format_time(finished), [], "0",
        start_wal="000000010000000000000002",
    )  # fmt: skip


def window_of(marks: list[BaseMark], spans: list[Span]) -> RecoverableWindow:
    return RecoverableWindow("/r", spans, marks, [], [], [], None, None)


minutes = st.integers(min_value=0, max_value=200)


@settings(max_examples=200, deadline=None)
@given(
    bases=st.lists(st.tuples(minutes, st.integers(0, 60), st.booleans()), min_size=1, max_size=4),
    probe=st.integers(min_value=-10, max_value=270),
)
def test_the_planner_accepts_a_time_exactly_when_the_window_holds_it(
    bases: list[tuple[int, int, bool]], probe: int
) -> None:
    """Any base backups (end, how long its run reaches after it, restorable): the
    planner chooses a backup for --target-time T iff T lies in a span of the window,
    and the backup it chooses reaches T."""
    marks, manifests = [], []
    for i, (end, length, restorable) in enumerate(sorted(bases)):
        reach = at(end + length) if restorable else None
        marks.append(BaseMark(f"b{i}", at(end - 1), at(end), "x", restorable, "y", reach))
        manifests.append(manifest(f"b{i}", at(end)))
    spans = merge_spans([Span(m.finished_at, m.reach) for m in marks
                         if m.reach is not None and m.reach > m.finished_at])  # fmt: skip
    window = window_of(marks, spans)
    target = parse_target_time(target_time_text(at(probe)))
    newest_first = manifests[::-1]
    shown = window_text(spans)
    if any(s.holds(at(probe)) for s in spans):
        chosen = _choose(newest_first, target, None, None, shown, window)
        mark = window.mark(chosen.id)
        assert mark is not None and mark.reaches(at(probe))
        # the newest that reaches it
        assert not any(m.reaches(at(probe)) and m.finished_at > mark.finished_at for m in marks)
    else:
        with pytest.raises(UsageError, match="recoverable window"):
            _choose(newest_first, target, None, None, shown, window)
