"""Retention selection (`backup prune`'s policy) and the archive backlog's stages: pure
logic, no repository or server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from chainlens_ops.backup.manifest import BASE, LOGICAL, BackupManifest, format_time
from chainlens_ops.backup.retention import (
    DAILY,
    LAST,
    MONTHLY,
    NEWEST,
    NEWEST_PITR,
    PINNED,
    WEEKLY,
    RetentionPolicy,
    select_retained,
)
from chainlens_ops.core.errors import UsageError
from chainlens_ops.pg.backlog import CRITICAL, OK, WARN, Backlog, backlog_level
from chainlens_ops.settings.config import BackupSettings, StatusSettings

NOW = datetime(2026, 11, 28, 12, tzinfo=UTC)


def made(
    backup_id: str, when: datetime, *, kind: str = BASE, target: str = "microservices"
) -> BackupManifest:
    stamp = format_time(when)
    return BackupManifest(
        id=backup_id, kind=kind, target=target, database="d", server="s",
        server_version=150000, system_identifier="1", started_at=stamp, finished_at=stamp,
        objects=[], tool_version="t",
        start_wal="000000010000000000000002" if kind == BASE else None,
    )  # fmt: skip


def kept(backups: list[BackupManifest], policy: RetentionPolicy, **kw: object) -> set[str]:
    return set(select_retained(backups, policy, NOW, **kw))  # type: ignore[arg-type]


def test_keep_last_applies_per_target_database() -> None:
    """One repository may hold both databases' backups: N of each are kept."""
    valid = [made(f"{i}-m", NOW - timedelta(days=i), kind=LOGICAL) for i in range(4)]
    valid += [made(f"{10 + i}-s", NOW - timedelta(days=10 + i), kind=LOGICAL, target="supabase")
              for i in range(3)]  # fmt: skip
    assert kept(valid, RetentionPolicy(keep_last=2)) == {"0-m", "1-m", "10-s", "11-s"}
    assert kept(valid, RetentionPolicy(keep_days=0)) == {"0-m", "10-s"}
    assert kept(valid, RetentionPolicy(keep_last=1, keep_days=2.5)) == {"0-m", "1-m", "2-m", "10-s"}


def test_keep_last_counts_each_kind_on_its_own() -> None:
    """Ad-hoc logical dumps after the nightly base never push the base out."""
    valid = [made("base", NOW - timedelta(hours=10))]
    valid += [made(f"logical-{i}", NOW - timedelta(hours=i), kind=LOGICAL) for i in range(3)]
    reasons = select_retained(valid, RetentionPolicy(keep_last=1), NOW)
    assert set(reasons) == {"base", "logical-0"}
    assert LAST in reasons["base"] and NEWEST_PITR in reasons["base"]


def test_newest_point_in_time_base_is_kept_even_when_the_policy_would_drop_it() -> None:
    valid = [made("old-base", NOW - timedelta(days=40))]
    valid += [made(f"l{i}", NOW - timedelta(days=i), kind=LOGICAL) for i in range(3)]
    reasons = select_retained(valid, RetentionPolicy(keep_days=1), NOW)
    assert reasons["old-base"] == [NEWEST_PITR]
    assert reasons["l0"][0] == NEWEST


def test_a_base_without_its_start_wal_cannot_start_a_point_in_time_restore() -> None:
    odd = made("no-wal", NOW)
    odd = BackupManifest(**{**odd.__dict__, "start_wal": None})
    good = made("good", NOW - timedelta(days=3))
    reasons = select_retained([odd, good], RetentionPolicy(keep_last=1), NOW)
    assert NEWEST_PITR in reasons["good"] and set(reasons) == {"no-wal", "good"}


def test_pinned_backups_are_kept_and_say_so() -> None:
    valid = [made(f"b{i}", NOW - timedelta(days=i)) for i in range(4)]
    reasons = select_retained(valid, RetentionPolicy(keep_last=1), NOW, pinned=["b3", "gone"])
    assert set(reasons) == {"b0", "b3"} and reasons["b3"] == [PINNED]


def test_order_is_by_backup_time_never_by_id() -> None:
    """An id that sorts last but was taken first is the oldest."""
    valid = [
        made("zzz-first", NOW - timedelta(days=2)),
        made("aaa-second", NOW - timedelta(days=1)),
    ]
    assert kept(valid, RetentionPolicy(keep_last=1)) == {"aaa-second"}


def test_calendar_policy_keeps_the_newest_of_each_recent_period() -> None:
    times = {
        "d0-late": datetime(2026, 11, 28, 9, tzinfo=UTC),
        "d0-early": datetime(2026, 11, 28, 1, tzinfo=UTC),
        "d1": datetime(2026, 11, 27, 23, tzinfo=UTC),
        "d2": datetime(2026, 11, 26, 5, tzinfo=UTC),
        "w-prev": datetime(2026, 11, 20, 5, tzinfo=UTC),  # ISO week 47
        "w-prev2": datetime(2026, 11, 12, 5, tzinfo=UTC),  # ISO week 46
        "oct": datetime(2026, 10, 15, 5, tzinfo=UTC),
        "sep": datetime(2026, 9, 15, 5, tzinfo=UTC),
        "aug": datetime(2026, 8, 15, 5, tzinfo=UTC),
    }
    valid = [made(i, t, kind=LOGICAL) for i, t in times.items()]
    assert kept(valid, RetentionPolicy(keep_daily=2)) == {"d0-late", "d1"}
    # Weeks (ISO, UTC): 48 holds d0-late (Sat 28th) .. d2 (Thu 26th); 47 holds w-prev.
    assert kept(valid, RetentionPolicy(keep_weekly=2)) == {"d0-late", "w-prev"}
    assert kept(valid, RetentionPolicy(keep_monthly=3)) == {"d0-late", "oct", "sep"}
    reasons = select_retained(
        valid, RetentionPolicy(keep_daily=3, keep_weekly=3, keep_monthly=4), NOW
    )
    assert set(reasons) == {"d0-late", "d1", "d2", "w-prev", "w-prev2", "oct", "sep", "aug"}
    assert reasons["d0-late"][:1] == [NEWEST] and DAILY in reasons["d0-late"]
    assert reasons["w-prev"] == [WEEKLY] and reasons["aug"] == [MONTHLY]


def test_calendar_periods_are_utc() -> None:
    """23:30 at +02:00 on the 2nd is 21:30 UTC on the 2nd; 01:30 at +02:00 on the 3rd is
    23:30 UTC on the 2nd: the same UTC day, so only the newer is kept daily."""
    plus2 = timezone(timedelta(hours=2))
    a = made("a", datetime(2026, 11, 2, 23, 30, tzinfo=plus2), kind=LOGICAL)
    b = made("b", datetime(2026, 11, 3, 1, 30, tzinfo=plus2), kind=LOGICAL)
    assert kept([a, b], RetentionPolicy(keep_daily=1)) == {"b"}


def test_a_kept_incremental_keeps_its_whole_chain() -> None:
    full = made("full", NOW - timedelta(days=3))
    chain = [full]
    for i in range(1, 4):
        inc = made(f"inc{i}", NOW - timedelta(days=3 - i))
        object.__setattr__(inc, "parent", chain[-1].id)  # incremental manifests name a parent
        chain.append(inc)
    assert kept(list(reversed(chain)), RetentionPolicy(keep_last=1)) == {
        "full", "inc1", "inc2", "inc3"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (RetentionPolicy(), "say what to keep"),
        (RetentionPolicy(keep_last=0), "--keep-last must be at least 1"),
        (RetentionPolicy(keep_daily=0), "--keep-daily must be at least 1"),
        (RetentionPolicy(keep_weekly=-1), "--keep-weekly must be at least 1"),
        (RetentionPolicy(keep_monthly=0), "--keep-monthly must be at least 1"),
        (RetentionPolicy(keep_days=-1), "--keep-days must not be negative"),
    ],
)
def test_bad_policies_are_usage_errors(policy: RetentionPolicy, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        policy.check()


def test_flags_win_over_the_configured_policy() -> None:
    configured = BackupSettings(keep_daily=7, keep_monthly=12)
    assert RetentionPolicy().or_configured(configured) == RetentionPolicy(
        keep_daily=7, keep_monthly=12
    )
    assert RetentionPolicy(keep_last=2).or_configured(configured) == RetentionPolicy(keep_last=2)


@pytest.mark.parametrize(
    ("segments", "age", "level"),
    [
        (0, None, OK),
        (3, 10.0, OK),
        (8, 10.0, WARN),
        (1, 301.0, WARN),
        (64, 1.0, CRITICAL),
        (2, 1801.0, CRITICAL),
    ],
)
def test_backlog_is_staged_by_count_and_by_the_oldest_age(
    segments: int, age: float | None, level: str
) -> None:
    backlog = Backlog(segments, segments * 16 * 1024**2, None, age)
    assert backlog_level(backlog, StatusSettings()) == level


def test_backlog_thresholds_come_from_status_settings() -> None:
    limits = StatusSettings(backlog_warn_segments=3, backlog_critical_segments=5)
    assert backlog_level(Backlog(3, 0, None, 1.0), limits) == WARN
    assert backlog_level(Backlog(5, 0, None, 1.0), limits) == CRITICAL
