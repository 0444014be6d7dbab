"""Which backups retention keeps, and why: pure selection, no repository in sight.

Rules, applied to each target database's valid backups, and to physical and logical
backups apart (full and incremental backups are counted together, as either starts a
point-in-time restore; a few ad-hoc logical dumps never push the nightly base backup out
of `--keep-last`):

- `keep_last N`: the newest N physical, and the newest N logical.
- `keep_days D`: every backup started within the last D days.
- `keep_daily N` / `keep_weekly N` / `keep_monthly N`: the newest backup of each of the
  N most recent UTC days / ISO weeks / months that hold a backup of the kind.
- A pinned backup is always kept, and so is one a running restore or drill uses.
- Whatever the policy: each target's newest valid backup, and its newest backup a
  point-in-time restore can start from, are kept.
- A backup that a kept backup depends on (an incremental's parent, and so up its chain)
  is kept. Kept only for that, its data stays but not its WAL: an incremental restores
  from its own start segment, so the WAL between its full and it serves no kept backup
  (`own_right`).

Order is by backup time (`started_at`, then id), never by name or timeline.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from chainlens_ops.backup.manifest import BackupManifest, can_start_pitr
from chainlens_ops.core.errors import UsageError
from chainlens_ops.settings.config import BackupSettings

NEWEST = "newest"
NEWEST_PITR = "newest point-in-time base"
PINNED = "pinned"
IN_USE = "in use by a running restore"
PARENT = "needed by a kept incremental"
LAST = "keep-last"
DAYS = "keep-days"
DAILY = "daily"
WEEKLY = "weekly"
MONTHLY = "monthly"


@dataclass(frozen=True)
class RetentionPolicy:
    keep_last: int | None = None
    keep_days: float | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None

    @property
    def empty(self) -> bool:
        return all(
            v is None
            for v in (self.keep_last, self.keep_days, self.keep_daily, self.keep_weekly,
                      self.keep_monthly)
        )  # fmt: skip

    def check(self) -> None:
        """A usage error for a policy that keeps nothing or has a negative count."""
        if self.empty:
            raise UsageError(
                "say what to keep: --keep-last, --keep-days, --keep-daily, --keep-weekly "
                "or --keep-monthly (or `keep_*` in [backup])"
            )
        for flag, value in (("--keep-last", self.keep_last), ("--keep-daily", self.keep_daily),
                            ("--keep-weekly", self.keep_weekly),
                            ("--keep-monthly", self.keep_monthly)):  # fmt: skip
            if value is not None and value < 1:
                raise UsageError(f"{flag} must be at least 1")
        if self.keep_days is not None and not self.keep_days >= 0:
            raise UsageError("--keep-days must not be negative")

    def or_configured(self, backup: BackupSettings) -> RetentionPolicy:
        """This policy when it says anything (flags), else the `[backup]` keep_* keys."""
        if not self.empty:
            return self
        return RetentionPolicy(backup.keep_last, backup.keep_days, backup.keep_daily,
                               backup.keep_weekly, backup.keep_monthly)  # fmt: skip


def _order(backup: BackupManifest) -> tuple[str, str]:
    return (backup.started_at, backup.id)


def _family(backup: BackupManifest) -> str:
    """What the count-based rules count together: full and incremental backups are both
    physical (each is a point-in-time start), logical dumps apart."""
    return "physical" if backup.physical else str(backup.kind)


def own_right(reasons: Mapping[str, list[str]]) -> set[str]:
    """The kept ids kept for themselves, not only because a kept incremental builds on
    them: the backups whose own WAL must stay (prune's WAL floor, the window after it)."""
    return {i for i, why in reasons.items() if any(w != PARENT for w in why)}


def _period(when: datetime, unit: str) -> tuple[int, ...]:
    if unit == DAILY:
        return (when.year, when.month, when.day)
    if unit == WEEKLY:
        iso = when.isocalendar()
        return (iso.year, iso.week)
    return (when.year, when.month)


def _calendar(mine: list[BackupManifest], unit: str, count: int) -> set[str]:
    """The newest backup of each of the `count` most recent periods holding one."""
    newest_of: dict[tuple[int, ...], BackupManifest] = {}
    for b in mine:  # newest first: the first seen of a period is its newest
        newest_of.setdefault(_period(b.started(), unit), b)
    periods = sorted(newest_of, reverse=True)[:count]
    return {newest_of[p].id for p in periods}


def select_retained(
    valid: Iterable[BackupManifest],
    policy: RetentionPolicy,
    now: datetime,
    pinned: Iterable[str] = (),
    in_use: Iterable[str] = (),
) -> dict[str, list[str]]:
    """The ids kept, each with the reasons it is kept (the rest go)."""
    backups = sorted(valid, key=_order, reverse=True)
    by_id = {b.id: b for b in backups}
    reasons: dict[str, list[str]] = {}

    def keep(ids: Iterable[str], why: str) -> None:
        for backup_id in ids:
            reasons.setdefault(backup_id, [])
            if why not in reasons[backup_id]:
                reasons[backup_id].append(why)

    keep((i for i in pinned if i in by_id), PINNED)
    keep((i for i in in_use if i in by_id), IN_USE)
    for target in sorted({b.target for b in backups}):
        ours = [b for b in backups if b.target == target]
        keep([ours[0].id], NEWEST)
        keep([b.id for b in ours if can_start_pitr(b)][:1], NEWEST_PITR)
        for family in sorted({_family(b) for b in ours}):
            mine = [b for b in ours if _family(b) == family]
            if policy.keep_last is not None:
                keep([b.id for b in mine[: policy.keep_last]], LAST)
            if policy.keep_days is not None:
                cutoff = now - timedelta(days=policy.keep_days)
                keep([b.id for b in mine if b.started() >= cutoff], DAYS)
            for unit, count in ((DAILY, policy.keep_daily), (WEEKLY, policy.keep_weekly),
                                (MONTHLY, policy.keep_monthly)):  # fmt: skip
                if count is not None:
                    keep(_calendar(mine, unit, count), unit)
    _keep_ancestors(reasons, by_id)
    return reasons


def _keep_ancestors(reasons: dict[str, list[str]], by_id: Mapping[str, BackupManifest]) -> None:
    """Incremental backups name their parent (`parent`); a kept one keeps its chain."""
    for backup_id in list(reasons):
        seen: set[str] = set()
        parent = getattr(by_id.get(backup_id), "parent", None)
        while isinstance(parent, str) and parent in by_id and parent not in seen:
            seen.add(parent)
            reasons.setdefault(parent, [])
            if PARENT not in reasons[parent]:
                reasons[parent].append(PARENT)
            parent = getattr(by_id[parent], "parent", None)
