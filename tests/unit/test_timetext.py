"""The one time parser: every form a DBA copies from a server log, psql or a ticket."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chainlens_ops.core.errors import UsageError
from chainlens_ops.core.timetext import parse_time_text
from chainlens_ops.restore.plan import parse_target_time

AT = datetime(2026, 12, 6, 9, 6, 27, 123000, tzinfo=UTC)

FORMS = {
    # the server log's %m prefix (log_timezone UTC)
    "2026-12-06 09:06:27.123 UTC": AT,
    "2026-12-06 09:06:27.123 GMT": AT,
    # psql's now()
    "2026-12-06 09:06:27.123000+00": AT,
    "2026-12-06 09:06:27.123+00:00": AT,
    # offsets given by the hour, hour:minute, or compact
    "2026-12-06 16:06:27.123+07": AT,
    "2026-12-06 16:06:27.123 +07": AT,
    "2026-12-06 14:36:27.123+05:30": AT,
    "2026-12-06 14:36:27.123+0530": AT,
    "2026-12-06 05:36:27.123-03:30": AT,
    # ISO 8601 with T and Z, either case
    "2026-12-06T09:06:27.123Z": AT,
    "2026-12-06T09:06:27.123z": AT,
    "2026-12-06T09:06:27.123+00:00": AT,
    # a zone name the tz database knows
    "2026-12-06 10:06:27.123 Europe/Berlin": AT,
    "2026-12-06 10:06:27.123 CET": AT,
    # fractional digits: comma, and past microseconds cut off
    "2026-12-06 09:06:27,123 UTC": AT,
    "2026-12-06 09:06:27.123000999Z": AT,
    # surrounding blanks (copied with the line)
    "  2026-12-06 09:06:27.123 UTC\n": AT,
}


@pytest.mark.parametrize("text", FORMS, ids=list(FORMS))
def test_every_copied_form_is_the_same_instant(text: str) -> None:
    parsed = parse_time_text(text, "target time")
    assert parsed.when == FORMS[text]
    assert parsed.when.tzinfo is not None
    assert not parsed.assumed_utc


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-06 09:06:27.123", AT),
        ("2026-12-06T09:06:27.123", AT),
        ("2026-12-06 09:06", AT.replace(second=0, microsecond=0)),
        ("2026-12-06", AT.replace(hour=0, minute=0, second=0, microsecond=0)),
        ("2026-12-06 9:06:27.123", AT),
    ],
)
def test_no_offset_is_utc_and_says_so(text: str, expected: datetime) -> None:
    parsed = parse_time_text(text)
    assert parsed.when == expected
    assert parsed.assumed_utc


@pytest.mark.parametrize(
    "text",
    [
        "",
        "notatime",
        "yesterday at noon",
        "2026-13-01 00:00:00",
        "2026-02-30 00:00:00",
        "2026-12-06 25:00:00",
        "2026-12-06 09:61:00",
        "2026-12-06 09:06:27+25",
        "2026-12-06 09:06:27+05:75",
        "06/12/2026 09:06",
        "2026-12-06 09:06:27.123 UTC [1234] LOG:",
    ],
)
def test_unreadable_times_are_a_usage_error_with_examples(text: str) -> None:
    with pytest.raises(UsageError) as raised:
        parse_time_text(text, "target time")
    line = raised.value.one_line()
    assert "cannot read the target time" in line
    assert "UTC" in line and "+00" in line  # the hint shows forms that work


def test_unknown_zone_names_the_zone() -> None:
    with pytest.raises(UsageError, match="unknown time zone 'Mars/Olympus'"):
        parse_time_text("2026-12-06 09:06:27 Mars/Olympus")


def test_restore_target_uses_the_same_parser() -> None:
    target = parse_target_time("2026-12-06 09:06:27.123 UTC")
    assert target.time == AT and not target.assumed_utc
    assert parse_target_time("2026-12-06 09:06:27.123").assumed_utc


@given(
    st.datetimes(
        min_value=datetime(1000, 1, 1), max_value=datetime(9999, 12, 30), timezones=st.none()
    ),
    st.integers(-14 * 60, 14 * 60),
)
def test_isoformat_and_psql_forms_round_trip(naive: datetime, offset_minutes: int) -> None:
    zone = timezone(timedelta(minutes=offset_minutes))
    when = naive.replace(tzinfo=zone)
    assert parse_time_text(when.isoformat()).when == when
    assert parse_time_text(when.isoformat(sep=" ")).when == when
    utc = when.astimezone(UTC) if 1000 < when.astimezone(UTC).year < 9999 else None
    if utc is not None:
        psql = utc.strftime("%Y-%m-%d %H:%M:%S.%f+00")
        assert parse_time_text(psql).when == when
