"""Which physical backup `backup --kind auto` takes on a cluster that archives into the
repository: pure choice, the facts gathered by `backup.take`.

- The data folder is not on this host (another host, or no read access to it): a base
  backup through `pg_basebackup` (the tar layout), as before incremental backups.
- It is local and no files-layout backup of this cluster and timeline exists to build
  on: a full backup in the files layout (the start of a chain).
- It is local and the full at the root of the chain an incremental would build on
  started `full_every` ago or more (`[backup] full_every`, default 7 days): a new full,
  so chains stay short (each restore reads every backup of its chain) and old chains can
  be pruned away.
- Otherwise: an incremental backup on the newest backup of that chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from chainlens_ops.backup.manifest import (
    BASE,
    FILES_LAYOUT,
    INCR,
    TAR_LAYOUT,
    BackupKind,
    BackupManifest,
)

ARCHIVES_HERE = "the cluster archives its WAL into this repository"


@dataclass(frozen=True)
class PhysicalChoice:
    kind: BackupKind  # BASE (a full, either layout) or INCR
    layout: str  # TAR_LAYOUT (pg_basebackup) or FILES_LAYOUT (read from the data folder)
    reason: str  # the one notice line: which and why
    parent: BackupManifest | None = None  # INCR: the backup it builds on


def choose_physical(
    *,
    not_local: str | None,
    chain: list[BackupManifest] | None,
    full_every_s: float,
    now: datetime,
) -> PhysicalChoice:
    """`not_local`: why the data folder cannot be read here (None: it can). `chain`: the
    chain an incremental would extend, oldest (its full) first (None or empty: none)."""
    if not_local is not None:
        return PhysicalChoice(
            BASE, TAR_LAYOUT,
            f"base backup (pg_basebackup): {ARCHIVES_HERE}, and its data folder cannot be "
            f"read here ({not_local})",
        )  # fmt: skip
    if not chain:
        return PhysicalChoice(
            BASE, FILES_LAYOUT,
            f"full backup: {ARCHIVES_HERE}, its data folder is on this host, and no full "
            "backup of this cluster and timeline is there to build on",
        )  # fmt: skip
    full, newest = chain[0], chain[-1]
    age_s = (now - full.started()).total_seconds()
    every = f"backup.full_every is {duration_text(full_every_s)}"
    if age_s >= full_every_s:
        return PhysicalChoice(
            BASE, FILES_LAYOUT,
            f"full backup: the newest full {full.id} is {duration_text(age_s)} old ({every})",
        )  # fmt: skip
    return PhysicalChoice(
        INCR, FILES_LAYOUT,
        f"incremental backup on {newest.id} (chain depth {newest.chain_depth + 1}): the "
        f"newest full {full.id} is {duration_text(age_s)} old ({every})",
        parent=newest,
    )  # fmt: skip


def duration_text(seconds: float) -> str:
    """604800 -> "7d", 5400 -> "1.5h", 90 -> "1.5m": an age for a notice line."""
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            value = seconds / size
            whole = value >= 10 or value == int(value)
            return f"{value:.0f}{unit}" if whole else f"{value:.1f}{unit}"
    return f"{max(seconds, 0):.0f}s"
