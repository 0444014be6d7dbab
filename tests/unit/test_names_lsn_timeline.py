"""WAL names and LSNs as PostgreSQL writes them, and the recoverable window drawn as text."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chainlens_ops.cli.timeline import LIGHT, MAX_LABELS, SOLID, draw_window
from chainlens_ops.core.errors import UsageError
from chainlens_ops.pg.walnames import (
    MAX_SEG_SIZE,
    MIN_SEG_SIZE,
    SEGMENT,
    lsn_to_segno,
    parse_lsn,
    parse_wal_name,
    segment_name,
    segments_per_log,
)
from chainlens_ops.restore.window import BaseMark, PointLabel, RecoverableWindow, Span, WalRun

MB = 1024 * 1024
SIZES = [MIN_SEG_SIZE, 16 * MB, 64 * MB, MAX_SEG_SIZE]


@pytest.mark.parametrize(
    ("text", "value"),
    [("0/0", 0), ("0/3000148", 0x3000148), ("16/B374D848", (0x16 << 32) | 0xB374D848),
     ("FFFFFFFF/FFFFFFFF", 2**64 - 1), (" 1/0 ", 1 << 32), ("a/b", (0xA << 32) | 0xB)],
)  # fmt: skip
def test_lsns_read_as_postgresql_prints_them(text: str, value: int) -> None:
    assert parse_lsn(text) == value


@pytest.mark.parametrize("text", ["", "3000148", "0/xyz", "g/0", "/"])
def test_malformed_lsns_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_lsn(text)


@pytest.mark.parametrize("seg_size", SIZES)
def test_segments_per_log_id_follow_the_segment_size(seg_size: int) -> None:
    assert segments_per_log(seg_size) * seg_size == 2**32


@given(
    tli=st.integers(1, 0xFFFFFFFF),
    segno=st.integers(0, 2**34 - 1),  # log ids stay below 2**32 at every size
    seg_size=st.sampled_from(SIZES),
)
def test_segment_names_round_trip(tli: int, segno: int, seg_size: int) -> None:
    name = segment_name(tli, segno, seg_size)
    parsed = parse_wal_name(name)
    assert len(name) == 24 and name == name.upper()
    assert (parsed.kind, parsed.tli, parsed.segno(seg_size)) == (SEGMENT, tli, segno)
    assert parsed.segment_name == name and parsed.has_header


@given(lsn=st.integers(0, 2**64 - 1), seg_size=st.sampled_from(SIZES))
def test_the_segment_holding_an_lsn(lsn: int, seg_size: int) -> None:
    segno = lsn_to_segno(lsn, seg_size)
    assert segno * seg_size <= lsn < (segno + 1) * seg_size


def test_lsn_0_3000148_is_in_segment_3_of_16mb_and_48_of_1mb() -> None:
    lsn = parse_lsn("0/3000148")
    assert segment_name(1, lsn_to_segno(lsn, 16 * MB), 16 * MB) == "000000010000000000000003"
    assert segment_name(1, lsn_to_segno(lsn, MB), MB) == "000000010000000000000030"


@pytest.mark.parametrize(
    "name",
    ["000000010000000a00000001", "0000000100000000000000001", "00000001.HISTORY",
     "00000001000000000000000.partial", "000000010000000000000001.0000002.backup",
     "000000010000000000000001.backup", "archive_status", "00000001.history.tmp"],
)  # fmt: skip
def test_names_postgresql_never_archives_are_refused(name: str) -> None:
    with pytest.raises(UsageError, match="is not a WAL file name"):
        parse_wal_name(name)


def test_history_files_have_no_segment_part() -> None:
    history = parse_wal_name("0000000A.history")
    assert (history.tli, history.segment_name, history.has_header) == (10, "", False)


# -- the timeline drawing --------------------------------------------------------------------

NOW = datetime(2026, 11, 28, 20, 0, tzinfo=UTC)


def _window(*, gap: bool = False, points: int = 1, restorable: bool = True) -> RecoverableWindow:
    start = NOW - timedelta(hours=2)
    runs = [WalRun("a", "b", 10, start, NOW - timedelta(minutes=70))]
    if gap:
        runs.append(WalRun("c", "d", 5, NOW - timedelta(minutes=40), NOW - timedelta(minutes=10)))
    else:
        runs = [WalRun("a", "d", 20, start, NOW - timedelta(minutes=10))]
    base = BaseMark("b1", start + timedelta(minutes=20), start + timedelta(minutes=30), "x",
                    restorable)  # fmt: skip
    spans = [Span(base.finished_at, runs[0].end)] if restorable else []
    labels = [
        PointLabel(f"point-{i}", start + timedelta(minutes=35 + i), "0/1") for i in range(points)
    ]
    return RecoverableWindow("file:///r", spans, [base], runs, [], labels, "d", None)


def test_an_empty_window_says_so() -> None:
    empty = RecoverableWindow("file:///r", [], [], [], [], [], None, None)
    assert draw_window(empty, NOW, 80) == ["(nothing archived and no base backup yet)"]


@pytest.mark.parametrize("width", [40, 60, 80, 120])  # (at 30 the heading overflows)
def test_every_line_fits_the_width(width: int) -> None:
    lines = draw_window(_window(gap=True, points=3), NOW, width)
    assert max(len(line) for line in lines) <= width, lines


def test_base_backup_bar_and_now_edge() -> None:
    lines = draw_window(_window(), NOW, 80)
    assert lines[0].startswith("2026-11-28 18:00:00 UTC") and lines[0].endswith("now 20:00:00")
    marks, bar = lines[1], lines[2]
    assert marks.count("B") == 1 and marks.endswith("|") and bar.endswith("|")
    assert SOLID in bar and LIGHT in bar  # WAL before the base backup cannot be replayed
    assert bar.index(LIGHT) < bar.index(SOLID)
    assert any("^ point-0" in line for line in lines)


def test_a_gap_shows_as_blank_columns_inside_the_bar() -> None:
    bar = draw_window(_window(gap=True), NOW, 80)[2].rstrip("|")
    inner = bar.strip()
    assert " " in inner  # the gap between the two runs


def test_a_base_backup_missing_wal_is_marked_x_and_explained() -> None:
    lines = draw_window(_window(restorable=False), NOW, 80)
    assert "x" in lines[1] and "B" not in lines[1]
    assert any("x base backup missing WAL" in line for line in lines)


def test_only_the_newest_restore_points_are_labelled() -> None:
    lines = draw_window(_window(points=MAX_LABELS + 2), NOW, 100)
    labelled = [line for line in lines if "point-" in line]
    assert len(labelled) == MAX_LABELS
    assert "point-0 " not in "\n".join(labelled)  # the oldest are left out...
    assert any("2 older restore point(s)" in line for line in lines)  # ...and counted
