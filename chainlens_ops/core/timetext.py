"""Reading a point in time a DBA typed or copied: the one parser every option that takes
a time uses (`restore --target-time`, and any later `--since`/`--until`).

Accepted, as they are copied from the places an incident is investigated:

- ISO 8601, `T` or a space between date and time: `2026-12-06T09:06:27`;
- psql's `now()` / timestamptz output: `2026-12-06 09:06:27.123456+00`, `+05:30`, `-0330`;
- a trailing `Z`: `2026-12-06T09:06:27.123Z`;
- the server log's `%m` prefix: `2026-12-06 09:06:27.123 UTC`, or any zone name the
  system's time zone database knows (`Europe/Berlin`, `CET`, `GMT`);
- minutes without seconds, any number of fractional digits (past microseconds cut off),
  or a date alone (its midnight).

A time with no offset and no zone is read as UTC, and the caller is told so (`assumed_utc`),
because the server's own time zone is not known here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from chainlens_ops.core.errors import UsageError

_TIME = re.compile(
    r"""^(?P<date>\d{4}-\d{2}-\d{2})
    (?:[T\s]+(?P<hour>\d{1,2}):(?P<minute>\d{2})
        (?::(?P<second>\d{2})(?:[.,](?P<fraction>\d+))?)?)?
    \s*(?:(?P<z>[Zz])
         |(?P<sign>[+-])(?P<oh>\d{2})(?::?(?P<om>\d{2})(?::?(?P<os>\d{2}))?)?
         |(?P<zone>[A-Za-z][A-Za-z0-9_/+-]*))?$""",
    re.VERBOSE,
)
EXAMPLES = "e.g. '2026-12-06 09:06:27.123+00', '2026-12-06 09:06:27 UTC' or 2026-12-06T09:06:27Z"


@dataclass(frozen=True)
class ParsedTime:
    when: datetime  # always aware
    assumed_utc: bool  # no offset or zone was given: read as UTC


def parse_time_text(text: str, what: str = "time") -> ParsedTime:
    """`text` as an aware datetime; UsageError naming `what` and the accepted forms."""
    m = _TIME.match(text.strip())
    if m is None:
        raise _bad(text, what)
    fraction = (m["fraction"] or "")[:6].ljust(6, "0")
    try:
        naive = datetime.fromisoformat(m["date"]).replace(
            hour=int(m["hour"] or 0),
            minute=int(m["minute"] or 0),
            second=int(m["second"] or 0),
            microsecond=int(fraction),
        )
    except ValueError:
        raise _bad(text, what) from None
    zone = _zone(m, text, what)
    if zone is None:
        return ParsedTime(naive.replace(tzinfo=UTC), assumed_utc=True)
    return ParsedTime(naive.replace(tzinfo=zone), assumed_utc=False)


def _zone(m: re.Match[str], text: str, what: str) -> tzinfo | None:
    if m["z"]:
        return UTC
    if m["sign"]:
        offset = timedelta(hours=int(m["oh"]), minutes=int(m["om"] or 0), seconds=int(m["os"] or 0))
        if offset >= timedelta(hours=24) or int(m["om"] or 0) >= 60:
            raise _bad(text, what)
        return timezone(-offset if m["sign"] == "-" else offset)
    if m["zone"]:
        name = m["zone"]
        if name.upper() in ("UTC", "GMT", "UT", "Z"):
            return UTC
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise UsageError(
                f"cannot read the {what} {text!r}: unknown time zone {name!r}",
                hint=f"give a numeric offset instead, {EXAMPLES}",
            ) from None
    return None


def _bad(text: str, what: str) -> UsageError:
    return UsageError(f"cannot read the {what} {text!r}", hint=EXAMPLES)
