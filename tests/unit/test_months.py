"""Month arithmetic and partition naming: properties over the whole calendar."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chainlens_ops.core.errors import UsageError
from chainlens_ops.partitions.months import (
    MAX_YEAR,
    MIN_YEAR,
    Month,
    month_of_partition,
    parse_month,
    partition_name,
)

# Four-digit years, as `YYYY-MM` names them.
months = st.builds(Month, st.integers(1000, MAX_YEAR), st.integers(1, 12))
any_months = st.builds(Month, st.integers(MIN_YEAR, MAX_YEAR), st.integers(1, 12))


@given(months)
def test_text_round_trips(m: Month) -> None:
    assert parse_month(str(m)) == m
    assert str(m) == m.start.strftime("%Y-%m")


@given(any_months, st.integers(-2000, 2000))
def test_plus_is_invertible_and_counts_months(m: Month, n: int) -> None:
    try:
        moved = m.plus(n)
    except ValueError:
        return  # outside the calendar we can name
    assert moved.plus(-n) == m
    assert moved.months_since(m) == n
    assert (moved > m) == (n > 0)


@given(any_months)
def test_bounds_cover_exactly_one_month_in_utc(m: Month) -> None:
    assert m.start.tzinfo is UTC and m.start.day == 1 and m.start.hour == 0
    assert datetime.fromisoformat(m.end_literal) == m.end
    assert 28 <= (m.end - m.start).days <= 31
    assert Month.of(m.start) == m
    assert Month.of(m.end - timedelta(microseconds=1)) == m
    if m.year < MAX_YEAR or m.month < 12:  # the last nameable month has no successor
        assert m.end == m.next().start
        assert Month.of(m.end) == m.next()


@given(any_months, any_months)
def test_order_is_chronological(a: Month, b: Month) -> None:
    assert (a < b) == (a.start < b.start)
    assert (a == b) == (a.start == b.start)


@given(months)
def test_bound_literal_is_the_start_with_explicit_utc(m: Month) -> None:
    literal = m.bound_literal
    assert literal.endswith(" 00:00+00")
    assert datetime.fromisoformat(literal) == m.start


@given(months, st.sampled_from(["usage_events", "price_history", "t"]))
def test_partition_names_round_trip(m: Month, table: str) -> None:
    name = partition_name(table, m)
    assert name == f"{table}_y{m.year:04d}m{m.month:02d}"
    assert month_of_partition(table, name) == m
    assert month_of_partition(table, f"{table}_default") is None
    assert len(name) <= 63  # PostgreSQL's identifier limit


@given(months, st.integers(0, 23), st.integers(-14, 14))
def test_of_reads_aware_datetimes_in_utc(m: Month, hour: int, offset: int) -> None:
    moment = m.start.replace(hour=hour).astimezone(timezone(timedelta(hours=offset)))
    assert Month.of(moment) == m


def test_year_boundary() -> None:
    dec = parse_month("2025-12")
    assert dec.next() == Month(2026, 1)
    assert dec.end == datetime(2026, 1, 1, tzinfo=UTC)
    assert Month(2026, 1).plus(-1) == dec


@pytest.mark.parametrize(
    "text",
    ["2031-13", "2031-00", "31-01", "2025-1", "2025/01", "202501", "", "2025-01; --", "9999-12"],
)
def test_bad_months_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_month(text)
    assert "\n" not in info.value.one_line()


@given(st.text(max_size=12))
def test_parse_accepts_only_yyyy_mm(text: str) -> None:
    try:
        m = parse_month(text)
    except UsageError:
        return
    assert text.strip() == str(m)
