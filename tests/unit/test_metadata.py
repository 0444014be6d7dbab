"""The metadata layer: every field of every repository record, garbled, is one
DamagedMetadata naming the object and the field; never a traceback, never a pass.

Kinds: backup manifests (and each object in them), verify/drill proofs, restore-point
catalog entries, the restore-point WAL scan cache, the repository marker. Pure Python:
records are parsed from bytes, or read from a local repository in a temporary folder.
"""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from chainlens_ops.backup.manifest import (
    BackupManifest,
    BackupObject,
    manifest_key,
    parse_manifest,
    read_catalog,
)
from chainlens_ops.backup.proofs import DRILL, VERIFY, latest_proofs, record_proof
from chainlens_ops.core.errors import ChainlensError, OperationFailed
from chainlens_ops.core.metadata import DamagedMetadata, load_json
from chainlens_ops.repository import Repository
from chainlens_ops.repository.marker import parse_marker
from chainlens_ops.restore.points import (
    DAMAGED,
    SCAN_FORMAT,
    catalog_entry,
    catalog_key,
    parse_entry,
    parse_scanned,
)

WHERE = "file:///r: the-object.json"
SHA = "ab" * 32


def manifest(**changes: Any) -> BackupManifest:
    values: dict[str, Any] = dict(
        id="20261206T100000Z-base-supabase", kind="base", target="supabase",
        database="supabase", server="127.0.0.1:5432", server_version=150010,
        system_identifier="7712345678901234567", started_at="2026-12-06T10:00:00.000000Z",
        finished_at="2026-12-06T10:00:05.500000Z",
        objects=[BackupObject("backups/x/base.tar.zst", 100, SHA, 400)],
        tool_version="0.1.0", timeline=1, start_lsn="0/2000028", stop_lsn="0/2000100",
        start_wal="000000010000000000000002", stop_wal="000000010000000000000002",
        backup_label="START WAL LOCATION: 0/2000028", notes=["one note"],
    )  # fmt: skip
    values.update(changes)
    return BackupManifest(**values)


def garbles(value: Any) -> Iterator[Any]:
    """Values of the wrong type (or out of range) for a field holding `value`."""
    if isinstance(value, bool):
        yield from ("true", 1, None)
    elif isinstance(value, int):
        yield from (str(value), 1.5, True, -1, [value])
    elif isinstance(value, str):
        yield from (12345, ["x"], {"a": 1}, True)
    elif isinstance(value, list):
        yield from ("x", {"a": 1}, 3, [7])
    elif value is None:
        yield from (12345, ["x"])


# Strings that must parse as something: a garbled one is damage too.
PARSED = {"kind", "started_at", "finished_at", "start_lsn", "stop_lsn", "start_wal",
          "stop_wal", "system_identifier", "sha256", "lsn", "segment", "time", "name",
          "state", "source"}  # fmt: skip
GARBLED_TEXT = "2026-13-45T99:99:99 garbled"
# Fields whose absence is damage (the others have defaults).
REQUIRED_MANIFEST = {"id", "kind", "target", "database", "server", "server_version",
                     "started_at", "finished_at", "objects", "tool_version"}  # fmt: skip


def cases(
    record: dict[str, Any], required: set[str], nested: str | None = None
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(field, garbled copy) for every field of `record` (and of each object in its
    `nested` list): wrong types, garbled text, missing when required."""
    for name, value in record.items():
        for bad in garbles(value):
            if value is None and bad is None:
                continue
            yield name, {**copy.deepcopy(record), name: bad}
        if isinstance(value, str) and name in PARSED:
            yield name, {**copy.deepcopy(record), name: GARBLED_TEXT}
        if name in required:
            yield name, {k: v for k, v in copy.deepcopy(record).items() if k != name}
    if nested:
        for i, item in enumerate(record[nested]):
            for name, bad_item in cases(item, {"key", "size", "sha256"}):
                garbled = copy.deepcopy(record)
                garbled[nested][i] = bad_item
                yield f"{nested}[{i}].{name}", garbled


def assert_damaged(parse: Callable[[bytes], object], data: dict[str, Any], field: str) -> None:
    with pytest.raises(DamagedMetadata) as raised:
        parse(json.dumps(data).encode())
    line = raised.value.one_line()
    assert WHERE in line and f"'{field}" in line and "\n" not in line, (field, line)


def test_a_sound_manifest_reads_back_equal() -> None:
    original = manifest()
    assert parse_manifest(original.to_bytes(), WHERE) == original


def test_every_manifest_field_garbled_is_damage_naming_the_field() -> None:
    record = manifest().to_dict()
    record.pop("size_bytes")
    record.pop("raw_bytes")
    seen = set()
    for field, garbled in cases(record, REQUIRED_MANIFEST, nested="objects"):
        if field in ("size_bytes", "raw_bytes"):
            continue
        seen.add(field)
        assert_damaged(lambda raw: parse_manifest(raw, WHERE), garbled, field)
    assert seen >= set(BackupManifest.__dataclass_fields__) - {"format"} | {
        "objects[0].key", "objects[0].size", "objects[0].sha256", "objects[0].raw_size"
    }  # fmt: skip


def test_manifest_size_as_text_totals_unknown_fields_and_truncation() -> None:
    good = manifest().to_dict()
    assert_damaged(lambda raw: parse_manifest(raw, WHERE), {**good, "size_bytes": 99}, "size_bytes")
    assert_damaged(lambda raw: parse_manifest(raw, WHERE), {**good, "colour": "red"}, "colour")
    bad = copy.deepcopy(good)
    bad["objects"][0]["size"] = "100"
    assert_damaged(lambda raw: parse_manifest(raw, WHERE), bad, "objects[0].size")
    raw = manifest().to_bytes()
    for cut in (1, 10, len(raw) // 2, len(raw) - 3):
        with pytest.raises(DamagedMetadata, match="truncated JSON"):
            parse_manifest(raw[:cut], WHERE)
    for not_an_object in (b"[]", b"17", b'"manifest"', b"null"):
        with pytest.raises(DamagedMetadata, match="not a JSON object"):
            parse_manifest(not_an_object, WHERE)
    with pytest.raises(DamagedMetadata, match="start_wal"):  # a base backup needs it
        parse_manifest(manifest(start_wal=None).to_bytes(), WHERE)
    newer = {**good, "format": 99}
    with pytest.raises(OperationFailed, match="has format 99"):
        parse_manifest(json.dumps(newer).encode(), WHERE)


def entry(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "before-migration", "lsn": "0/3000148", "timeline": 1,
        "time": "2026-12-06T10:33:00.123456+00:00", "database": "supabase",
        "system_identifier": "7712345678901234567", "segment": "000000010000000000000003",
        "state": "complete", "archived": True, "created_by": "chainlens-ops 0.1.0",
    }  # fmt: skip
    data.update(changes)
    return data


def test_every_restore_point_entry_field_garbled_is_damage_naming_the_field() -> None:
    def parse(raw: bytes) -> object:
        return parse_entry(raw, WHERE, "before-migration")

    point = parse(json.dumps(entry()).encode())
    assert point.lsn == "0/3000148" and point.source == "catalog"  # type: ignore[attr-defined]
    seen = set()
    for field, garbled in cases(entry(), {"name", "lsn", "timeline"}):
        seen.add(field)
        assert_damaged(parse, garbled, field)
    assert seen == set(entry())
    assert_damaged(parse, entry(name="other-name"), "name")  # not its own key
    assert_damaged(parse, entry(extra=1), "extra")
    assert_damaged(parse, entry(lsn=""), "lsn")  # a complete entry needs its LSN
    pending = entry(state="pending", lsn="", timeline=0, time=None, segment=None)
    assert parse(json.dumps(pending).encode()).state == "pending"  # type: ignore[attr-defined]
    with pytest.raises(DamagedMetadata, match="truncated JSON"):
        parse(json.dumps(entry()).encode()[:40])


def scanned(**point_changes: Any) -> dict[str, Any]:
    point = {"name": "made-in-sql", "lsn": "0/30001B0", "timeline": 1, "time": None,
             "source": "wal", "database": None, "system_identifier": None,
             "segment": "000000010000000000000003", "state": "complete",
             "archived": True}  # fmt: skip
    point.update(point_changes)
    return {"format": SCAN_FORMAT, "points": [point]}


def test_every_scan_cache_field_garbled_is_damage_naming_the_field() -> None:
    def parse(raw: bytes) -> object:
        return parse_scanned(raw, WHERE)

    assert [p.name for p in parse_scanned(json.dumps(scanned()).encode(), WHERE)] == ["made-in-sql"]
    point = scanned()["points"][0]
    seen = set()
    for field, garbled in cases(scanned(), {"format", "points"}, nested="points"):
        seen.add(field)
        assert_damaged(parse, garbled, field)
    assert seen >= {"format", "points"} | {f"points[0].{name}" for name in point}
    bad = scanned()
    bad["points"][0]["colour"] = "red"  # an unknown field: a foreign or newer writer
    assert_damaged(parse, bad, "points[0].colour")
    assert_damaged(parse, {**scanned(), "format": SCAN_FORMAT + 1}, "format")


def local_repo(tmp_path: Path) -> Repository:
    return Repository(f"file://{tmp_path}")


def put(repo: Repository, key: str, raw: bytes) -> None:
    repo.storage.put(key, io.BytesIO(raw))


def test_proof_fields_garbled_read_as_failed_proofs_naming_the_field(tmp_path: Path) -> None:
    repo = local_repo(tmp_path)
    when = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)
    body = {"ok": True, "error": None, "rto_seconds": 12.5}
    for field, garbled in cases(body, {"ok"}):
        backup_id = f"b-{abs(hash(json.dumps(garbled, sort_keys=True)))}"
        record_proof(repo, backup_id, DRILL, when, garbled)
        proof = latest_proofs(repo, backup_id)[DRILL]
        assert not proof.ok and "is damaged" in proof.detail and repr(field) in proof.detail
    record_proof(repo, "good", DRILL, when, body)
    assert latest_proofs(repo, "good")[DRILL].detail == "restored and promoted; RTO 12s"
    key = record_proof(repo, "cut", VERIFY, when, {"ok": True})
    put(repo, key, b'{"ok": tr')
    proof = latest_proofs(repo, "cut")[VERIFY]
    assert not proof.ok and "truncated JSON" in proof.detail


def test_the_catalog_lists_damaged_manifests_beside_the_sound_ones(tmp_path: Path) -> None:
    repo = local_repo(tmp_path)
    ids = ["20261206T100000Z-base-supabase", "20261206T110000Z-base-supabase",
           "20261206T120000Z-base-supabase"]  # fmt: skip
    for backup_id in ids:
        put(repo, manifest_key(backup_id), manifest(id=backup_id).to_bytes())
    put(repo, manifest_key(ids[2]), manifest(id=ids[2]).to_bytes()[:200])  # the newest
    garbled = manifest(id=ids[0]).to_dict()
    garbled["finished_at"] = "yesterday-ish"
    put(repo, manifest_key(ids[0]), json.dumps(garbled).encode())
    catalog = read_catalog(repo)
    assert [b.id for b in catalog.valid] == [ids[1]]
    assert catalog.damaged == [ids[2], ids[0]]  # newest first
    assert "truncated JSON" in catalog.problems[ids[2]]
    assert "'finished_at'" in catalog.problems[ids[0]] and ids[0] in catalog.problems[ids[0]]


def test_damaged_restore_point_entries_are_one_line_or_listed_as_damaged(tmp_path: Path) -> None:
    from chainlens_ops.restore.points import _catalog

    repo = local_repo(tmp_path)
    put(repo, catalog_key("good"), json.dumps(entry(name="good")).encode())
    put(repo, catalog_key("cut"), json.dumps(entry(name="cut")).encode()[:30])
    assert catalog_entry(repo, "good") is not None and catalog_entry(repo, "none") is None
    with pytest.raises(DamagedMetadata, match=r"restore-points/cut\.json is damaged"):
        catalog_entry(repo, "cut")
    listed = {p.name: p for p in _catalog(repo)}
    assert listed["good"].state == "complete"
    assert listed["cut"].state == DAMAGED and "truncated JSON" in str(listed["cut"].problem)


def test_every_marker_field_garbled_is_one_line() -> None:
    good = {"format": "1", "system_identifier": '"7712345678901234567"',
            "wal_segment_size": "16777216", "pg_version": "15"}  # fmt: skip
    for name in good:
        for bad in ('"x"', "", "1.5"):
            text = "".join(f"{k} = {bad if k == name else v}\n" for k, v in good.items())
            with pytest.raises(ChainlensError, match=r"chainlens-repo\.toml is damaged"):
                parse_marker(text.encode(), "file:///r")
        missing = "".join(f"{k} = {v}\n" for k, v in good.items() if k != name)
        if name != "pg_version":
            with pytest.raises(ChainlensError, match="is damaged"):
                parse_marker(missing.encode(), "file:///r")
    with pytest.raises(ChainlensError, match="is damaged"):
        parse_marker(b"format = 1\nsystem_identifier", "file:///r")  # truncated
    odd = "".join(f"{k} = {'3000000' if k == 'wal_segment_size' else v}\n" for k, v in good.items())
    with pytest.raises(ChainlensError, match="'wal_segment_size' is not a power of two"):
        parse_marker(odd.encode(), "file:///r")
    sound = "".join(f"{k} = {v}\n" for k, v in good.items())
    marker = parse_marker(sound.encode(), "file:///r")
    assert (marker.system_identifier, marker.wal_segment_size) == (7712345678901234567, 1 << 24)


def test_load_json_refuses_what_is_not_an_object_or_not_json() -> None:
    with pytest.raises(DamagedMetadata, match="not JSON"):
        load_json(b"\xff\xfe garbage }", WHERE)
    with pytest.raises(DamagedMetadata, match="truncated JSON"):
        load_json(b"", WHERE)
    assert load_json(b'{"a": 1}', WHERE).integer("a") == 1
