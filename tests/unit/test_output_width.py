"""Output that fits 80 columns: prose wraps at spaces only (identifiers whole), piped
output carries no padding, restore point names and times are never cut."""

from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console
from rich.table import Table

from chainlens_ops.cli.common import PROSE_WIDTH, _NoTrailingSpaces, prose
from chainlens_ops.cli.restore_point import point_rows, print_points
from chainlens_ops.restore.points import RestorePoint

SEGMENT = "000000010000000000000003"
BACKUP = "20261128T194526Z-base-supabase"


def piped(width: int = 200) -> tuple[Console, io.StringIO]:
    sink = io.StringIO()
    out = Console(file=_NoTrailingSpaces(sink), width=width, highlight=False, soft_wrap=True)  # type: ignore[arg-type]
    return out, sink


def terminal(width: int = 80) -> tuple[Console, io.StringIO]:
    sink = io.StringIO()
    out = Console(file=sink, width=width, force_terminal=True, color_system=None,
                  highlight=False, soft_wrap=True)  # fmt: skip
    return out, sink


def test_piped_lines_keep_no_trailing_spaces_across_chunks() -> None:
    sink = io.StringIO()
    stream = _NoTrailingSpaces(sink)
    for chunk in ("ab  ", "  \ncd ", " e", "   ", "\n", "  x\n"):
        stream.write(chunk)
    assert sink.getvalue() == "ab\ncd  e\n  x\n"  # inner and leading spaces stay


def test_a_piped_table_is_not_padded_to_200_columns() -> None:
    out, sink = piped()
    table = Table()
    for heading in ("id", "took", "size"):
        table.add_column(heading)
    table.add_row(BACKUP, "1s", "5.2 MiB")
    table.add_row("x", "10s", "1 B")
    out.print(table)
    lines = sink.getvalue().splitlines()
    assert lines and all(line == line.rstrip() for line in lines)
    assert max(len(line) for line in lines) < 60


words = st.lists(
    st.sampled_from([SEGMENT, BACKUP, "..", "newest", "archived", "WAL", "(timeline", "1)",
                     "/var/lib/postgresql/15/a-rather-long/path/to/a/data/folder", "at"]),
    min_size=1, max_size=40,
)  # fmt: skip


@given(words, st.sampled_from([40, 80, 132]))
def test_prose_wraps_at_spaces_and_never_cuts_a_word(text: list[str], width: int) -> None:
    sentence = " ".join(text)
    for out, sink in (terminal(width), piped()):
        prose(sentence, indent="  ", to=out)
        lines = sink.getvalue().splitlines()
        limit = min(width, PROSE_WIDTH) if out.is_terminal else PROSE_WIDTH
        for line in lines:
            assert len(line) <= limit or " " not in line.strip(), line
            assert line == line.rstrip()
        assert " ".join(" ".join(lines).split()) == sentence  # every word, whole, in order


def point(name: str) -> RestorePoint:
    return RestorePoint(name, "0/400A9D8", 1, "2026-11-28T19:45:27.939717+00:00", "catalog")


def test_restore_points_fit_80_columns_on_a_terminal_whole() -> None:
    out, sink = terminal(80)
    print_points(point_rows([point("demo-before-incident"), point("before-b")]), out)
    lines = sink.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80, lines
    assert "demo-before-incident" in lines[1] and "2026-11-28 19:45:27.939717" in lines[1]
    assert "time (UTC)" in lines[0]


@pytest.mark.parametrize("width", [40, 60, 80])
def test_long_names_never_break_they_move_to_their_own_line(width: int) -> None:
    long = "before-the-quarterly-migration-of-usage-events-2026"  # 51 characters
    out, sink = terminal(width)
    print_points(point_rows([point(long), point("b")]), out)
    lines = sink.getvalue().splitlines()
    assert long in lines  # whole, alone on its line: copy it into --target-name
    assert "b" in lines
    assert any("2026-11-28 19:45:27.939717 UTC" in line for line in lines)


def test_piped_restore_points_are_one_row_each_without_padding() -> None:
    long = "x" * 63
    out, sink = piped()
    print_points(point_rows([point(long)]), out)
    lines = sink.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].startswith(long + "  ")
    assert all(line == line.rstrip() for line in lines)


def test_the_time_shown_is_utc_whatever_offset_it_was_stored_with() -> None:
    shifted = RestorePoint("p", "0/1", 1, "2026-11-29T02:45:27.5+07:00", "catalog")
    assert point_rows([shifted])[0][3] == "2026-11-28 19:45:27.500000"
    found_in_wal = RestorePoint("p", "0/1", 1, None, "archived WAL")
    assert point_rows([found_in_wal])[0][3] == "-"
