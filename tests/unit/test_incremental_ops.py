"""Incremental backups around the core: which kind `--kind auto` takes, retention and
prune on chains (the WAL floor, claims), the `chain` column of `backup list`, the
`[backup] full_every` key. Pure logic on repositories in tmp_path."""

from __future__ import annotations

import io
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from chainlens_ops.backup.choice import choose_physical, duration_text
from chainlens_ops.backup.manifest import (
    BASE,
    FILES_LAYOUT,
    INCR,
    LOGICAL,
    TAR_LAYOUT,
    BackupManifest,
    Catalog,
    manifest_key,
    read_catalog,
)
from chainlens_ops.backup.prune import prune_backups
from chainlens_ops.backup.retention import (
    IN_USE,
    LAST,
    PARENT,
    RetentionPolicy,
    own_right,
    select_retained,
)
from chainlens_ops.cli.backup import _chain_texts
from chainlens_ops.core.errors import ConfigError, OperationFailed
from chainlens_ops.repository import Repository
from chainlens_ops.restore.plan import LATEST, Target, make_plan
from chainlens_ops.settings.config import load_settings

from .support import T0, make_repo, manifest, store_segments, write_backup

DAY = timedelta(days=1)
WEEK_S = 7 * 86_400.0


def full(backup_id: str, days_ago: float, segno: int) -> BackupManifest:
    return replace(manifest(backup_id, at=T0 - days_ago * DAY, start_segno=segno),
                   layout=FILES_LAYOUT)  # fmt: skip


def incr(backup_id: str, parent: BackupManifest, days_ago: float, segno: int) -> BackupManifest:
    return replace(full(backup_id, days_ago, segno), kind=INCR, parent=parent.id,
                   chain_depth=parent.chain_depth + 1)  # fmt: skip


# -- `--kind auto` on a cluster that archives here -------------------------------------


def test_auto_takes_pg_basebackup_where_the_data_folder_is_not_here() -> None:
    chosen = choose_physical(not_local="data folder /srv/pg is not on this host",
                             chain=None, full_every_s=WEEK_S, now=T0)  # fmt: skip
    assert (chosen.kind, chosen.layout, chosen.parent) == (BASE, TAR_LAYOUT, None)
    assert chosen.reason.startswith("base backup (pg_basebackup): the cluster archives")
    assert "/srv/pg is not on this host" in chosen.reason


def test_auto_starts_a_chain_with_a_full_and_extends_it_until_full_every() -> None:
    first = choose_physical(not_local=None, chain=[], full_every_s=WEEK_S, now=T0)
    assert (first.kind, first.layout) == (BASE, FILES_LAYOUT)
    assert "no full backup of this cluster and timeline" in first.reason

    f = full("f", 6.9, 2)
    i1 = incr("i1", f, 5, 4)
    chosen = choose_physical(not_local=None, chain=[f, i1], full_every_s=WEEK_S, now=T0)
    assert (chosen.kind, chosen.layout, chosen.parent) == (INCR, FILES_LAYOUT, i1)
    assert chosen.reason == (
        "incremental backup on i1 (chain depth 2): the newest full f is 6.9d old "
        "(backup.full_every is 7d)"
    )
    old = choose_physical(not_local=None, chain=[full("f", 7, 2), i1], full_every_s=WEEK_S,
                          now=T0)  # fmt: skip
    assert (old.kind, old.layout, old.parent) == (BASE, FILES_LAYOUT, None)
    assert old.reason == "full backup: the newest full f is 7d old (backup.full_every is 7d)"
    hourly = choose_physical(not_local=None, chain=[f], full_every_s=3600, now=T0)
    assert hourly.kind == BASE and hourly.reason.endswith("6.9d old (backup.full_every is 1h)")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59, "59s"), (90, "1.5m"), (3600, "1h"), (5400, "1.5h"), (86_400 * 12, "12d")],
)
def test_ages_in_notices_are_short(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text


def test_full_every_is_a_duration_of_the_backup_section(tmp_path: Path) -> None:
    config = tmp_path / "ops.toml"
    assert load_settings(None, env={}).backup.full_every_s == WEEK_S
    config.write_text('[backup]\nfull_every = "36h"\n')
    assert load_settings(config, env={}).backup.full_every_s == 36 * 3600
    config.write_text('[backup]\nfull_every = "soon"\n')
    with pytest.raises(ConfigError, match=r"backup\.full_every must be a duration"):
        load_settings(config, env={})


# -- retention and prune on chains -----------------------------------------------------


def test_keep_last_counts_full_and_incremental_backups_together() -> None:
    """An incremental is a physical backup like its full: `--keep-last 1` keeps the newest
    physical backup and the chain it needs, not also the newest full of its own."""
    f1 = full("f1", 9, 2)
    i1 = incr("i1", f1, 8, 3)
    f2 = full("f2", 2, 5)
    i2 = incr("i2", f2, 1, 6)
    i3 = incr("i3", i2, 0, 7)
    dump = replace(manifest("dump", LOGICAL, at=T0), layout=TAR_LAYOUT)
    reasons = select_retained([dump, i3, i2, f2, i1, f1], RetentionPolicy(keep_last=1), T0)
    assert set(reasons) == {"dump", "i3", "i2", "f2"}
    assert LAST in reasons["i3"] and reasons["i2"] == [PARENT] and reasons["f2"] == [PARENT]
    assert own_right(reasons) == {"dump", "i3"}
    two = select_retained([i3, i2, f2, i1, f1], RetentionPolicy(keep_last=2), T0)
    assert set(two) == {"i3", "i2", "f2"} and own_right(two) == {"i3", "i2"}


def _chain_repo(tmp_path: Path) -> tuple[Repository, list[BackupManifest]]:
    repo = make_repo(tmp_path)
    store_segments(repo, 1, range(1, 13))
    f = write_backup(repo, full("f", 3, 2))
    i1 = write_backup(repo, incr("i1", f, 2, 5))
    i2 = write_backup(repo, incr("i2", i1, 1, 8))
    return repo, [f, i1, i2]


def test_prune_keeps_the_newest_chain_and_only_the_wal_its_newest_replays(
    tmp_path: Path,
) -> None:
    repo, (_f, _i1, i2) = _chain_repo(tmp_path)
    done = prune_backups(repo, policy=RetentionPolicy(keep_last=1), now=T0)
    assert done.removed == [] and set(done.kept) == {"f", "i1", "i2"}
    assert done.reasons["f"] == [PARENT] and done.reasons["i1"] == [PARENT]
    # i2 replays from its own start segment: the WAL before it serves no kept backup.
    assert done.wal_before == i2.start_wal == "000000010000000000000008"
    assert done.wal_removed == 7  # segments 1..7
    catalog = read_catalog(repo)
    assert [b.id for b in catalog.valid] == ["i2", "i1", "f"]
    assert [b.id for b in catalog.chain(catalog.valid[0])] == ["f", "i1", "i2"]
    assert done.window_after is not None
    assert [m.id for m in done.window_after.base_backups] == ["i2"]


def test_a_claimed_incremental_keeps_its_chain_and_its_wal(tmp_path: Path) -> None:
    repo, (_f, i1, _i2) = _chain_repo(tmp_path)
    store_segments(repo, 1, range(13, 16))
    write_backup(repo, full("f2", 0.5, 14))
    with repo.locks.claim("restore", wait_s=1).hold() as claim:
        claim.scope("i1")
        lines: list[str] = []
        done = prune_backups(repo, policy=RetentionPolicy(keep_last=1), now=T0,
                             notify=lines.append)  # fmt: skip
    assert done.removed == ["i2"]
    assert set(done.kept) == {"f2", "i1", "f"}
    assert IN_USE in done.reasons["i1"] and done.reasons["f"] == [PARENT]
    assert done.wal_before == i1.start_wal and done.wal_removed == 4  # segments 1..4
    assert any("kept backup i1 and its WAL (with the chain it builds on)" in line for line in lines)
    # Once the restore is over, the chain goes with the next prune.
    again = prune_backups(repo, policy=RetentionPolicy(keep_last=1), now=T0)
    assert set(again.removed) == {"i1", "f"} and again.kept == ["f2"]


# -- `backup list`: the chain column ----------------------------------------------------


def test_the_chain_column_names_a_parent_only_where_it_is_not_the_row_below() -> None:
    f = full("f", 3, 2)
    i1 = incr("i1", f, 2, 3)
    i2 = incr("i2", i1, 1, 4)
    branch = incr("b1", f, 0.5, 5)  # `--from f`: a second branch of the chain
    tar = manifest("tar", at=T0 - 4 * DAY)
    dump = manifest("dump", LOGICAL, at=T0)
    catalog = Catalog([dump, branch, i2, i1, f, tar], [], [])
    assert _chain_texts(catalog) == {"dump": "-", "b1": "+1 on f", "i2": "+2", "i1": "+1",
                                     "f": "full", "tar": "-"}  # fmt: skip
    gone = Catalog([dump, branch, i2, tar], [], [])  # f and i1 deleted by hand
    assert _chain_texts(gone) == {"dump": "-", "b1": "+1 BROKEN", "i2": "+2 BROKEN", "tar": "-"}


# -- a chain that cannot be read --------------------------------------------------------


def test_an_incremental_whose_full_is_damaged_starts_no_restore(tmp_path: Path) -> None:
    """The planner, the window and status pass over an incremental whose chain cannot be
    read, as they pass over a damaged manifest; naming it says why."""
    repo, (f, _i1, i2) = _chain_repo(tmp_path)
    catalog = read_catalog(repo)
    assert [b.id for b in catalog.pitr_starts()] == ["i2", "i1", "f"]
    assert make_plan(repo, Target(LATEST, "latest")).backup.id == "i2"
    key = manifest_key(f.id)
    repo.storage.put(key, io.BytesIO(b'{"id": "f", "kind": "base"'))  # truncated
    catalog = read_catalog(repo)
    assert catalog.pitr_starts() == [] and catalog.damaged == ["f"]
    assert "builds on f, which is damaged" in str(catalog.chain_problem(catalog.valid[0]))
    with pytest.raises(OperationFailed, match="backup i2 builds on f, which is damaged"):
        make_plan(repo, Target(LATEST, "latest"), backup_id=i2.id)
    with pytest.raises(OperationFailed, match="holds no base backup"):
        make_plan(repo, Target(LATEST, "latest"))
