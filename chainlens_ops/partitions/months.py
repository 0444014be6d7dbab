"""Calendar months in UTC: parsing `YYYY-MM`, arithmetic, bounds and partition names.

Pure code with no database in sight, so the daemon, the CLI and property tests share it.
A month's partition holds [first instant of the month, first instant of the next) in UTC;
bounds are written with an explicit `+00` so the session's TimeZone never moves them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime

from chainlens_ops.core.errors import UsageError

# A partition for December needs January of the next year as its upper bound, and
# Python's datetime stops at year 9999: the last month we can name is 9998-12.
MIN_YEAR = 1
MAX_YEAR = 9998

_MONTH_RE = re.compile(r"(\d{4})-(\d{2})")
_SUFFIX_RE = re.compile(r"_y(\d{4})m(\d{2})")


@dataclass(frozen=True, order=True)
class Month:
    """One calendar month (ordering is chronological)."""

    year: int
    month: int

    def __post_init__(self) -> None:
        if not 1 <= self.month <= 12:
            raise ValueError(f"month must be 1..12, not {self.month}")
        if not MIN_YEAR <= self.year <= MAX_YEAR:
            raise ValueError(f"year must be {MIN_YEAR}..{MAX_YEAR}, not {self.year}")

    @classmethod
    def of(cls, moment: date | datetime) -> Month:
        """The month holding `moment` (an aware datetime is read in UTC)."""
        if isinstance(moment, datetime) and moment.tzinfo is not None:
            moment = moment.astimezone(UTC)
        return cls(moment.year, moment.month)

    @classmethod
    def current(cls, now: datetime | None = None) -> Month:
        return cls.of(now or datetime.now(UTC))

    @property
    def index(self) -> int:
        """Months since year 0, so arithmetic is plain integer arithmetic."""
        return self.year * 12 + (self.month - 1)

    @classmethod
    def from_index(cls, index: int) -> Month:
        year, month0 = divmod(index, 12)
        return cls(year, month0 + 1)

    def plus(self, months: int) -> Month:
        return Month.from_index(self.index + months)

    def next(self) -> Month:
        return self.plus(1)

    def months_since(self, other: Month) -> int:
        return self.index - other.index

    @property
    def start(self) -> datetime:
        """First instant of the month, UTC."""
        return datetime(self.year, self.month, 1, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        """First instant of the next month, UTC (exclusive upper bound)."""
        # Not self.next().start: the upper bound of the last nameable month lies in a year
        # no Month may hold.
        year, month0 = divmod(self.index + 1, 12)
        return datetime(year, month0 + 1, 1, tzinfo=UTC)

    @property
    def bound_literal(self) -> str:
        """The lower bound as PostgreSQL reads it, with an explicit UTC offset."""
        return f"{self.year:04d}-{self.month:02d}-01 00:00+00"

    @property
    def end_literal(self) -> str:
        """The upper bound as PostgreSQL reads it, with an explicit UTC offset."""
        return f"{self.end.year:04d}-{self.end.month:02d}-01 00:00+00"

    @property
    def suffix(self) -> str:
        return f"y{self.year:04d}m{self.month:02d}"

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


def parse_month(text: str) -> Month:
    """`YYYY-MM` -> Month; anything else is a UsageError naming the expected form."""
    match = _MONTH_RE.fullmatch(text.strip())
    if not match:
        raise UsageError(f"month {text!r} is not in the form YYYY-MM (for example 2025-03)")
    year, month = int(match.group(1)), int(match.group(2))
    try:
        return Month(year, month)
    except ValueError as exc:
        raise UsageError(f"month {text!r} is not a calendar month: {exc}") from None


def partition_name(table: str, month: Month) -> str:
    """`usage_events` + 2025-03 -> `usage_events_y2025m03` (the seed's naming)."""
    return f"{table}_{month.suffix}"


def month_of_partition(table: str, name: str) -> Month | None:
    """The month a partition called `name` is named for, or None if not our naming."""
    if not name.startswith(table):
        return None
    match = _SUFFIX_RE.fullmatch(name[len(table) :])
    if not match:
        return None
    try:
        return Month(int(match.group(1)), int(match.group(2)))
    except ValueError:
        return None
