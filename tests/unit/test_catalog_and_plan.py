"""Manifests, the catalog, retention selection and the restore planner, on repositories
built in tmp_path with the local backend (no server: targets that need no WAL reading)."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from chainlens_ops.backup.manifest import (
    BASE,
    LOGICAL,
    MANIFEST_FORMAT,
    BackupKind,
    manifest_key,
    new_backup_id,
    parse_manifest,
    read_catalog,
    read_manifest,
)
from chainlens_ops.backup.prune import prune_backups
from chainlens_ops.backup.retention import RetentionPolicy, select_retained
from chainlens_ops.backup.take import KINDS
from chainlens_ops.core.errors import OperationFailed, UsageError
from chainlens_ops.restore.plan import (
    LATEST,
    LSN,
    NAME,
    TIME,
    Target,
    make_plan,
    parse_target_lsn,
    parse_target_time,
    postgres_time,
)

from .support import (
    MB,
    T0,
    make_repo,
    manifest,
    store_segments,
    write_backup,
    write_restore_point,
)

# -- kinds and manifests ----------------------------------------------------------------


def test_backup_kinds_are_one_enum_and_the_cli_choices_follow_it() -> None:
    assert [k.value for k in BackupKind] == ["base", "incr", "logical"]
    assert BASE is BackupKind.BASE and LOGICAL is BackupKind.LOGICAL
    assert KINDS == ("auto", "base", "incr", "logical")
    assert BackupKind("base") == "base"  # a StrEnum: JSON and ids carry the plain word


def test_a_manifest_round_trips_through_its_bytes_with_its_kind(tmp_path: Path) -> None:
    m = manifest("20261128T120000Z-logical-microservices", BackupKind.LOGICAL)
    back = parse_manifest(m.to_bytes(), "test")
    assert back == m
    assert back.kind is BackupKind.LOGICAL
    assert json.loads(m.to_bytes())["kind"] == "logical"
    assert back.size_bytes == 100 and back.raw_bytes == 300


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"{}", b'{"objects": []}', b"[1, 2]"],
    ids=["text", "empty", "fields missing", "a list"],
)
def test_a_damaged_manifest_is_one_clear_error(raw: bytes) -> None:
    with pytest.raises(OperationFailed, match=r"manifest\.json is damaged"):
        parse_manifest(raw, "repo: backups/x/manifest.json")


def test_an_unknown_kind_is_a_damaged_manifest() -> None:
    data = json.loads(manifest("x").to_bytes())
    data["kind"] = "incremental"
    with pytest.raises(OperationFailed, match="damaged"):
        parse_manifest(json.dumps(data).encode(), "where")


def test_a_newer_manifest_format_asks_for_an_upgrade() -> None:
    data = json.loads(manifest("x").to_bytes())
    data["format"] = MANIFEST_FORMAT + 1
    with pytest.raises(OperationFailed, match="has format") as error:
        parse_manifest(json.dumps(data).encode(), "where")
    assert error.value.hint == "upgrade chainlens-ops"


def test_reading_a_missing_backup_names_it(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    with pytest.raises(UsageError, match="no backup 'nope' in repository"):
        read_manifest(repo, "nope")  # a mistyped id is the user's mistake: exit 2


def test_backup_ids_sort_by_time_and_never_reuse_a_folder(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    first = new_backup_id(repo, T0, BackupKind.BASE, "microservices")
    assert first == "20261128T120000Z-base-microservices"
    repo.storage.put(f"backups/{first}/base.tar.zst", io.BytesIO(b"x"))
    second = new_backup_id(repo, T0, BackupKind.BASE, "microservices")
    assert second == f"{first}-2"
    later = new_backup_id(repo, T0 + timedelta(seconds=1), BackupKind.LOGICAL, "supabase")
    assert sorted([later, first]) == [first, later]


# -- the catalog --------------------------------------------------------------------------


def _catalog_repo(tmp_path: Path):  # type: ignore[no-untyped-def]
    repo = make_repo(tmp_path)
    write_backup(repo, manifest("b1", at=T0))
    write_backup(repo, manifest("l1", BackupKind.LOGICAL, at=T0 + timedelta(hours=1)))
    write_backup(repo, manifest("b2", at=T0 + timedelta(hours=2), start_segno=5))
    write_backup(repo, manifest("bad", at=T0 + timedelta(hours=3), status="failed"))
    write_backup(repo, manifest("nowal", at=T0 + timedelta(hours=4), start_segno=None))
    repo.storage.put("backups/running/base.tar.zst", io.BytesIO(b"partial"))
    repo.storage.put(manifest_key("broken"), io.BytesIO(b"{not json"))
    return repo


def test_the_catalog_is_newest_first_and_names_leftovers_and_damage(tmp_path: Path) -> None:
    catalog = read_catalog(_catalog_repo(tmp_path))
    # A base backup's manifest without its start segment is damaged metadata: listed as
    # damaged (with the one line), never a backup a restore could pick.
    assert [b.id for b in catalog.backups] == ["bad", "b2", "l1", "b1"]
    assert [b.id for b in catalog.valid] == ["b2", "l1", "b1"]
    assert catalog.without_manifest == ["running"]
    assert sorted(catalog.damaged) == ["broken", "nowal"]


def test_pitr_starts_are_the_valid_base_backups_that_name_their_wal(tmp_path: Path) -> None:
    catalog = read_catalog(_catalog_repo(tmp_path))
    assert [b.id for b in catalog.pitr_starts()] == ["b2", "b1"]  # newest first


def test_an_empty_repository_has_an_empty_catalog(tmp_path: Path) -> None:
    catalog = read_catalog(make_repo(tmp_path))
    assert (catalog.backups, catalog.without_manifest, catalog.damaged) == ([], [], [])
    assert catalog.pitr_starts() == []


# -- retention selection -----------------------------------------------------------------


def retained(
    valid: list, keep_last: int | None, keep_days: float | None, now: datetime
) -> set[str]:  # type: ignore[type-arg]
    """The ids a keep-last / keep-days policy keeps."""
    return set(select_retained(valid, RetentionPolicy(keep_last, keep_days), now))


def _history(n: int, target: str = "microservices") -> list:  # type: ignore[type-arg]
    """`n` daily backups of `target`, newest first."""
    return [manifest(f"{target}-{i}", at=T0 - timedelta(days=i), target=target) for i in range(n)]


def test_keep_last_keeps_the_newest_n() -> None:
    valid = _history(5)
    assert retained(valid, 2, None, T0) == {"microservices-0", "microservices-1"}


def test_keep_days_keeps_what_started_within_the_window() -> None:
    valid = _history(5)
    kept = retained(valid, None, 2.5, T0)
    assert kept == {"microservices-0", "microservices-1", "microservices-2"}


def test_both_rules_keep_the_union() -> None:
    valid = _history(6)
    assert retained(valid, 4, 0.5, T0) == retained(valid, 4, None, T0)
    assert retained(valid, 1, 3.5, T0) == retained(valid, None, 3.5, T0)
    assert len(retained(valid, 2, 2.5, T0)) == 3


def test_the_newest_backup_of_each_target_is_always_kept() -> None:
    valid = sorted(_history(3) + _history(2, "supabase"), key=lambda b: b.started_at)[::-1]
    kept = retained(valid, None, 0, T0 + timedelta(days=30))
    assert kept == {"microservices-0", "supabase-0"}


def test_keep_last_applies_per_target() -> None:
    valid = sorted(_history(3) + _history(3, "supabase"), key=lambda b: b.started_at)[::-1]
    assert retained(valid, 2, None, T0) == {
        "microservices-0", "microservices-1", "supabase-0", "supabase-1",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("keep_last", "keep_days", "message"),
    [(None, None, "say what to keep"), (0, None, "at least 1"), (None, -1, "not be negative")],
)
def test_prune_refuses_a_rule_that_keeps_nothing_sensible(
    tmp_path: Path, keep_last: int | None, keep_days: float | None, message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        prune_backups(make_repo(tmp_path), policy=RetentionPolicy(keep_last, keep_days))


def test_prune_dry_run_plans_backups_and_wal_before_the_oldest_kept_base(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    store_segments(repo, 1, range(1, 9))
    write_backup(repo, manifest("old", at=T0 - timedelta(days=2), start_segno=2))
    write_backup(repo, manifest("new", at=T0, start_segno=5))
    result = prune_backups(repo, policy=RetentionPolicy(keep_last=1), dry_run=True, now=T0)
    assert (result.kept, result.removed) == (["new"], ["old"])
    assert result.wal_before == "000000010000000000000005"
    assert result.wal_removed == 4  # segments 1..4
    assert [b.id for b in read_catalog(repo).valid] == ["new", "old"]  # nothing removed
    done = prune_backups(repo, policy=RetentionPolicy(keep_last=1), now=T0)
    assert done.removed == ["old"] and [b.id for b in read_catalog(repo).valid] == ["new"]


# -- restore targets ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "iso", "assumed"),
    [
        ("2026-11-27T10:33:00+00:00", "2026-11-27T10:33:00+00:00", False),
        ("2026-11-27 10:33:00.99+00", "2026-11-27T10:33:00.990000+00:00", False),
        ("2026-11-27T10:33:00Z", "2026-11-27T10:33:00+00:00", False),
        ("2026-11-27T11:33:00+01:00", "2026-11-27T11:33:00+01:00", False),
        ("2026-11-27 10:33", "2026-11-27T10:33:00+00:00", True),
    ],
)
def test_target_times_read_iso_and_psql_forms(text: str, iso: str, assumed: bool) -> None:
    target = parse_target_time(text)
    assert target.kind == TIME and target.time is not None
    assert target.time.isoformat() == iso
    assert target.assumed_utc is assumed
    assert ("read as UTC" in target.timezone_note) is assumed


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01", "", "10:33"])
def test_an_unreadable_target_time_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match="cannot read the target time"):
        parse_target_time(text)


def test_target_lsns() -> None:
    assert parse_target_lsn("0/3000148").lsn == 0x3000148
    assert parse_target_lsn("16/B374D848").kind == LSN
    for bad in ("3000148", "0/xyz", "1/2/3", ""):
        with pytest.raises(UsageError, match="is not an LSN"):
            parse_target_lsn(bad)


def test_postgres_time_always_carries_an_explicit_utc_offset() -> None:
    when = parse_target_time("2026-11-27T11:33:00.5+01:00").time
    assert when is not None
    assert postgres_time(when) == "2026-11-27 10:33:00.500000+00"


# -- the planner --------------------------------------------------------------------------


def _planned_repo(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Two base backups (starting in segments 2 and 5) and segments 1..8 archived."""
    repo = make_repo(tmp_path)
    store_segments(repo, 1, range(1, 9))
    write_backup(repo, manifest("b-old", at=T0, start_segno=2))
    write_backup(repo, manifest("l-mid", BackupKind.LOGICAL, at=T0 + timedelta(minutes=30)))
    write_backup(repo, manifest("b-new", at=T0 + timedelta(hours=1), start_segno=5))
    return repo


def test_latest_starts_from_the_newest_base_and_replays_all_archived_wal(tmp_path: Path) -> None:
    plan = make_plan(_planned_repo(tmp_path), Target(LATEST, "latest"))
    assert plan.backup.id == "b-new"
    assert (plan.wal_first, plan.wal_last) == (
        "000000010000000000000005", "000000010000000000000008",
    )  # fmt: skip
    assert plan.recovery_target is None and plan.seg_size == MB


def test_an_lsn_target_picks_the_newest_base_that_ended_before_it(tmp_path: Path) -> None:
    repo = _planned_repo(tmp_path)
    early = make_plan(repo, parse_target_lsn(f"0/{3 * MB + 0x10:X}"))
    assert early.backup.id == "b-old"
    assert early.wal_last == "000000010000000000000003"
    assert early.recovery_target == f"0/{3 * MB + 0x10:X}"
    late = make_plan(repo, parse_target_lsn(f"0/{7 * MB:X}"))
    assert late.backup.id == "b-new"


def test_an_lsn_past_the_archive_or_before_every_base_is_refused(tmp_path: Path) -> None:
    repo = _planned_repo(tmp_path)
    with pytest.raises(UsageError, match="later than the newest archived WAL"):
        make_plan(repo, parse_target_lsn(f"0/{20 * MB:X}"))
    with pytest.raises(UsageError, match="earlier than the end of the earliest base backup"):
        make_plan(repo, parse_target_lsn("0/100"))


def test_backup_choice_by_id_must_exist_and_end_before_the_target(tmp_path: Path) -> None:
    repo = _planned_repo(tmp_path)
    assert make_plan(repo, Target(LATEST, "latest"), "b-old").backup.id == "b-old"
    with pytest.raises(UsageError, match="no valid base backup l-mid"):
        make_plan(repo, Target(LATEST, "latest"), "l-mid")  # a logical one cannot start PITR
    with pytest.raises(UsageError, match="cannot reach the target"):
        make_plan(repo, parse_target_lsn(f"0/{3 * MB:X}"), "b-new")


def test_a_restore_point_from_the_catalog_bounds_the_wal(tmp_path: Path) -> None:
    repo = _planned_repo(tmp_path)
    write_restore_point(repo, "before-deploy", f"0/{6 * MB + 0x28:X}")
    plan = make_plan(repo, Target(NAME, "before-deploy"))
    assert plan.backup.id == "b-new"
    assert plan.recovery_target == "before-deploy"
    assert (plan.restore_point_source, plan.wal_last) == ("catalog", "000000010000000000000006")


def test_a_gap_the_restore_needs_names_the_first_missing_segment(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    store_segments(repo, 1, [1, 2, 3, 5, 6])
    write_backup(repo, manifest("b", at=T0, start_segno=2))
    with pytest.raises(OperationFailed, match="000000010000000000000004 is missing"):
        make_plan(repo, Target(LATEST, "latest"))
    # a target before the gap needs none of it
    assert make_plan(repo, parse_target_lsn(f"0/{3 * MB:X}")).wal_last.endswith("03")


def test_no_base_backup_means_no_point_in_time_restore(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    store_segments(repo, 1, range(1, 4))
    write_backup(repo, manifest("only-logical", BackupKind.LOGICAL))
    with pytest.raises(OperationFailed, match="holds no base backup") as error:
        make_plan(repo, Target(LATEST, "latest"))
    assert "--kind base" in (error.value.hint or "")


def test_a_base_backup_without_its_start_segment_cannot_start_a_restore(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    store_segments(repo, 1, range(1, 4))
    write_backup(repo, replace(manifest("b"), start_wal=None))
    with pytest.raises(OperationFailed, match="holds no base backup"):
        make_plan(repo, Target(LATEST, "latest"))
