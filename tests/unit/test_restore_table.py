"""Pure logic of `restore table`: which tar members a selective extraction skips, the
placeholders it writes, table and schema names, and the put-back sketch."""

from __future__ import annotations

import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from chainlens_ops.core.errors import UsageError
from chainlens_ops.restore.plan import LSN, Target, parse_target_time
from chainlens_ops.restore.selective import (
    Selection,
    placeholders,
    skipped_database,
    write_placeholder,
)
from chainlens_ops.restore.table import (
    _Shape,
    check_schema_name,
    default_schema,
    parse_table_name,
    put_back_sql,
)

KEEP = frozenset({5, 16384})


@pytest.mark.parametrize(
    ("name", "skipped"),
    [
        ("base/16390/16401", True),  # a relation file of another database
        ("base/16390/16401_fsm", True),
        ("base/16390/PG_VERSION", True),  # left out: connections then fail cleanly
        ("base/16390/pg_filenode.map", False),  # kept: 512 bytes, rewritten whole by WAL
        ("base/16384/16401", False),  # the kept database
        ("base/5/1259", False),  # postgres
        ("global/1262", False),  # cluster catalogs
        ("pg_xact/0000", False),
        ("base/16390", False),  # the folder itself
        ("backup_label", False),
    ],
)
def test_which_members_a_selection_skips(name: str, skipped: bool) -> None:
    assert skipped_database(name, KEEP) is skipped


def test_a_folder_member_is_never_skipped() -> None:
    member = tarfile.TarInfo("base/16390/16401")
    member.type = tarfile.DIRTYPE
    assert not Selection(KEEP).skips(member)
    member.type = tarfile.REGTYPE
    assert Selection(KEEP).skips(member)


def test_placeholders_are_sparse_files_of_the_right_size(tmp_path: Path) -> None:
    member = tarfile.TarInfo("base/16390/16401")
    member.size = 64 * 1024 * 1024
    write_placeholder(member, tmp_path)
    written = tmp_path / "base" / "16390" / "16401"
    assert written.stat().st_size == member.size
    assert written.stat().st_blocks * 512 < 1024 * 1024  # sparse: no data blocks
    assert oct(written.stat().st_mode & 0o777) == "0o600"
    version = tarfile.TarInfo("base/16390/PG_VERSION")
    version.size = 3
    write_placeholder(version, tmp_path)
    assert not (tmp_path / "base" / "16390" / "PG_VERSION").exists()


def test_placeholders_in_bulk_match_one_by_one(tmp_path: Path) -> None:
    files = [("base/16390/16401", 3 * 8192), ("base/16390/16401_fsm", 0),
             ("base/16390/PG_VERSION", 3), ("base/16391/2619", 1 << 30),
             ("base/16390/1259", 8192)]  # fmt: skip
    assert placeholders(tmp_path, iter(files)) == sum(size for _name, size in files)
    for name, size in files:
        path = tmp_path / name
        if name.endswith("PG_VERSION"):
            assert not path.exists()  # left out, as one by one
            continue
        assert path.stat().st_size == size
        assert path.stat().st_blocks == 0  # sparse
        assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "base" / "16391").stat().st_mode & 0o777) == "0o700"
    assert placeholders(tmp_path / "none", []) == 0
    assert not (tmp_path / "none").exists()


def test_table_names() -> None:
    assert parse_table_name("public.user_profiles") == ("public", "user_profiles")
    assert parse_table_name("usage_events") == ("public", "usage_events")
    for bad in ("a.b.c", ".x", "x.", ""):
        with pytest.raises(UsageError):
            parse_table_name(bad)


def test_default_schema_is_the_target_time_in_utc() -> None:
    target = parse_target_time("2026-11-28 20:45:28.9+01:00")
    assert default_schema(target) == "restored_20261128t194528"
    lsn = Target(LSN, "0/3000148", lsn=0x3000148)
    now = datetime(2026, 12, 1, 8, 0, 1, tzinfo=UTC)
    assert default_schema(lsn, now) == "restored_20261201t080001"
    check_schema_name(default_schema(target))


@pytest.mark.parametrize("bad", ["pg_temp_x", "has space", "1abc", "a" * 64, "x;drop"])
def test_bad_schema_names_are_refused(bad: str) -> None:
    with pytest.raises(UsageError):
        check_schema_name(bad)


def _shape(key: list[str]) -> _Shape:
    columns = [("id", "integer", True), ("tier", "text", True), ("Note", "text", False)]
    return _Shape(("public", "user_profiles"), 1, False, 0, columns, key)


def test_put_back_sketch_with_a_primary_key() -> None:
    sketch = put_back_sql(_shape(["id"]), "pit", ["id", "tier", "Note"])
    assert "INSERT INTO public.user_profiles SELECT r.* FROM pit.user_profiles r" in sketch
    assert "WHERE NOT EXISTS (SELECT FROM public.user_profiles l WHERE l.id = r.id)" in sketch
    assert 'SET (tier, "Note")\n  = ROW(r.tier, r."Note")' in sketch


def test_put_back_sketch_names_columns_when_the_live_table_changed() -> None:
    sketch = put_back_sql(_shape(["id"]), "pit", ["id", "tier", "Note", "added_later"])
    assert 'INSERT INTO public.user_profiles (id, tier, "Note") SELECT r.id' in sketch


def test_put_back_sketch_without_a_key_or_a_live_table() -> None:
    sketch = put_back_sql(_shape([]), "pit", ["id", "tier", "Note"])
    assert "EXCEPT ALL SELECT l.* FROM public.user_profiles l" in sketch
    assert "UPDATE" not in sketch
    assert put_back_sql(_shape(["id"]), "pit", None) == (
        "ALTER TABLE pit.user_profiles SET SCHEMA public;"
    )
