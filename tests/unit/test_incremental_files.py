"""The files layout of physical backups without a server: the file map round trip and
its damage, bundle framing round trip and damaged streams, the data folder walk's
exclusions, and the block chooser on synthetic pages (old and new LSNs, zero pages,
files grown, shrunk and new, forks and other files copied whole)."""

from __future__ import annotations

import io
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from chainlens_ops.backup.blockcopy import Copier, DataFolder, choose_parent, max_ranges
from chainlens_ops.backup.chaincheck import check_chain
from chainlens_ops.backup.files import (
    BUNDLE_MAGIC,
    MAP_NAME,
    BundleStream,
    DamagedBundle,
    DirEntry,
    FileEntry,
    FileMap,
    Pending,
    Record,
    bundle_group,
    bundle_name,
    group_of,
    parse_file_map,
    read_bundle,
    read_file_map,
    record_header,
)
from chainlens_ops.backup.manifest import (
    FILES_LAYOUT,
    BackupKind,
    BackupManifest,
    backup_prefix,
    read_catalog,
    write_manifest,
)
from chainlens_ops.backup.retention import RetentionPolicy, select_retained
from chainlens_ops.core.errors import OperationFailed, UsageError
from chainlens_ops.core.metadata import DamagedMetadata
from chainlens_ops.pg.datadir import BLOCK_SIZE, Entry, page_changed, walk
from chainlens_ops.repository import Repository
from chainlens_ops.repository.datacodec import store_compressed
from chainlens_ops.restore.assemble import assemble, needed_objects
from chainlens_ops.restore.plan import LATEST, Target, make_plan, parse_target_lsn
from chainlens_ops.restore.selective import Selection

from . import support

B = BLOCK_SIZE
WHERE = "file:///repo: backups/x/files.json.zst"


def page(lsn: int, *, upper: int = 8000, lower: int = 40, fill: int = 1) -> bytes:
    header = struct.pack("=IIHHHH", lsn >> 32, lsn & 0xFFFFFFFF, 0, 0, lower, upper)
    return header + bytes([fill]) * (B - len(header))


def a_map() -> FileMap:
    return FileMap(
        start_lsn="0/5000028",
        backup_label="START WAL LOCATION: 0/5000028 (file 000000010000000000000005)\n",
        dirs=[DirEntry("base", 0o700), DirEntry("base/5", 0o700)],
        files=[
            FileEntry("PG_VERSION", 3, 0o600, 1, whole="full"),
            FileEntry("base/5/16384", 3 * B, 0o600, 2, ranges=[(0, 2, "full"), (2, 1, "incr")]),
        ],
    )


def test_file_map_round_trip() -> None:
    fmap = a_map()
    again = parse_file_map(fmap.to_bytes(), WHERE)
    assert again == fmap
    assert again.by_path()["base/5/16384"].owners() == {"full", "incr"}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d.pop("start_lsn"), "start_lsn"),
        (lambda d: d["files"][1].update(ranges=[[0, 2, "full"], [3, 1, "incr"]]), "ranges"),
        (lambda d: d["files"][1].update(ranges=[[0, 2, "full"]]), "ranges"),
        (lambda d: d["files"][1].update(size=3 * B + 1), "ranges"),
        (lambda d: d["files"][0].update(ranges=[]), "ranges"),
        (lambda d: d["files"][0].update(path="../etc/passwd"), "path"),
        (lambda d: d["files"][0].update(size="3"), "size"),
        (lambda d: d["dirs"][0].update(path="/abs"), "path"),
        (lambda d: d.update(block_size=4096), "block_size"),
    ],
)
def test_a_damaged_file_map_is_one_line_naming_the_field(change: object, field: str) -> None:
    import json

    data = json.loads(a_map().to_bytes())
    change(data)  # type: ignore[operator]
    with pytest.raises(DamagedMetadata) as exc:
        parse_file_map(json.dumps(data).encode(), WHERE)
    assert WHERE in exc.value.one_line() and repr(field)[1:-1] in exc.value.one_line()
    assert "\n" not in exc.value.one_line()


def test_a_truncated_file_map_is_damaged() -> None:
    with pytest.raises(DamagedMetadata, match="truncated JSON"):
        parse_file_map(a_map().to_bytes()[:-10], WHERE)


def records_of(*items: tuple[str, int, bytes]) -> Pending:
    def one(path: str, offset: int, data: bytes) -> object:
        yield record_header(Record(path, offset, len(data)))
        yield data[:5]
        yield b""  # an empty chunk is not the end of a record
        yield data[5:]

    return Pending(iter([one(*item) for item in items]))  # type: ignore[misc]


def read_all(raw: bytes) -> dict[tuple[str, int], bytes]:
    got: dict[tuple[str, int], bytes] = {}

    def write(record: Record, done: int, chunk: bytes) -> None:
        key = (record.path, record.offset)
        got[key] = got.get(key, b"") + chunk

    read_bundle(io.BytesIO(raw), "bundle", write)
    return got


def test_bundle_round_trip_and_parts() -> None:
    items = [("base/5/1", 0, b"a" * 100), ("base/5/1", 8192, b"b" * 30), ("x", 0, b"hello!")]
    raw = BundleStream(records_of(*items)).read()
    assert raw.startswith(BUNDLE_MAGIC) and raw.endswith(b"\0\0\0\0")
    assert read_all(raw) == {(p, o): d for p, o, d in items}
    # A small part limit: a new part after each record that passes it, none lost.
    pending = records_of(*items)
    parts = []
    while pending.has_more():
        parts.append(read_all(BundleStream(pending, limit=50).read()))
    assert len(parts) == 3 and [len(p) for p in parts] == [1, 1, 1]


def test_damaged_bundles_are_named() -> None:
    raw = BundleStream(records_of(("base/5/1", 0, b"a" * 100))).read()
    for bad, why in (
        (raw[:-10], "truncated"),
        (raw[:-4], "truncated"),
        (raw + b"x", "follow its end mark"),
        (b"NOTABUNDLE" + raw[10:], "does not start"),
        (raw[:10] + struct.pack(">I", 5) + b"{bad}" + b"\0\0\0\0", "garbled header"),
        (raw[:10] + struct.pack(">I", 40) + b'{"path":"../x","offset":0,"length":0}  ', "garbled"),
    ):
        with pytest.raises(DamagedBundle, match=why):
            read_all(bad)


def test_groups_and_bundle_names() -> None:
    assert group_of("base/16384/2619") == "db16384"
    assert group_of("base/16384/PG_VERSION") == "db16384"
    assert group_of("base/16384/pg_filenode.map") == "cluster"  # kept by a selective restore
    assert group_of("global/1262") == "cluster" and group_of("pg_xact/0000") == "cluster"
    assert bundle_name("db5", 0) == "data/db5-000.blk.zst"
    assert bundle_group("backups/x/data/db5-000.blk.zst") == "db5"
    assert bundle_group("backups/x/files.json.zst") is None


def test_the_walk_leaves_out_what_pg_basebackup_leaves_out(tmp_path: Path) -> None:
    keep = ["PG_VERSION", "global/pg_control", "base/5/16384", "base/5/16384_vm",
            "base/5/16390_init", "pg_xact/0000", "postgresql.conf"]  # fmt: skip
    drop = ["postmaster.pid", "postmaster.opts", "backup_label", "tablespace_map",
            "pg_wal/000000010000000000000001", "pg_wal/archive_status/x.done",
            "pg_replslot/s/state", "pg_stat_tmp/x", "pg_subtrans/0000", "base/5/t3_16400",
            "base/5/pgsql_tmp/x", "base/pgsql_tmp/pgsql_tmp1.0", "global/pg_internal.init",
            "base/5/pg_internal.init.123", "base/5/16390", "base/5/16390_fsm"]  # fmt: skip
    for name in keep + drop:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = {e.path: e for e in walk(tmp_path)}
    assert {p for p, e in found.items() if not e.is_dir} == set(keep)
    for folder in ("pg_wal", "pg_wal/archive_status", "pg_replslot", "pg_stat_tmp"):
        assert found[folder].is_dir  # kept, empty


def test_page_changed() -> None:
    since, insert = 0x5000000, 0x9000000
    assert not page_changed(page(0x4000000), since, insert)  # older than the parent's start
    assert page_changed(page(0x5000000), since, insert)  # at the start: changed
    assert page_changed(page(0x6000000), since, insert)
    assert page_changed(bytes(B), since, insert)  # a zero page
    assert page_changed(page(0x4000000, upper=0), since, insert)  # new (pd_upper 0)
    assert page_changed(page(0xA000000), since, insert)  # from the future: not trusted
    assert page_changed(page(0x4000000, upper=9000), since, insert)  # implausible header
    assert page_changed(page(0x4000000, lower=100, upper=50), since, insert)


def copy(folder: Path, parent: FileMap | None, backup_id: str) -> tuple[FileMap, list[Record]]:
    """The records and map entries a copy of `folder` makes (nothing stored)."""
    since = 0x5000000 if parent is not None else None
    copier = Copier(folder, backup_id, parent, since, 0x9000000, None)
    records = []
    for chunks in copier.records([e for e in walk(folder) if not e.is_dir]):
        parts = list(chunks)
        length = struct.unpack(">I", parts[0][:4])[0]
        import json

        head = json.loads(parts[0][4 : 4 + length])
        assert sum(len(p) for p in parts[1:]) == head["length"]
        records.append(Record(head["path"], head["offset"], head["length"]))
    fmap = FileMap("0/9000000", "label", files=sorted(copier.files, key=lambda f: f.path))
    return fmap, records


def test_the_block_chooser_on_a_changing_relation(tmp_path: Path) -> None:
    rel, vm, other = tmp_path / "base/5/16384", tmp_path / "base/5/16384_vm", tmp_path / "pg_xact"
    rel.parent.mkdir(parents=True)
    old = page(0x4000000)
    rel.write_bytes(old * 4)
    vm.write_bytes(old)
    other.mkdir()
    (other / "0000").write_bytes(b"x" * 100)
    full, records = copy(tmp_path, None, "full")
    files = full.by_path()
    assert files["base/5/16384"].ranges == [(0, 4, "full")]
    assert files["base/5/16384_vm"].whole == "full" and files["pg_xact/0000"].whole == "full"

    # Block 1 changed, block 2 zeroed, the file grew by one old-looking block; the VM's
    # page looks old but is copied whole anyway; a new relation file is stored fully.
    rel.write_bytes(old + page(0x6000000) + bytes(B) + old + old)
    (tmp_path / "base/5/16390").write_bytes(old * 2)
    incr, records = copy(tmp_path, full, "incr")
    files = incr.by_path()
    assert files["base/5/16384"].ranges == [
        (0, 1, "full"), (1, 2, "incr"), (3, 1, "full"), (4, 1, "incr"),
    ]  # fmt: skip
    assert files["base/5/16384_vm"].whole == "incr"
    assert files["base/5/16390"].ranges == [(0, 2, "incr")]
    stored = {(r.path, r.offset, r.length) for r in records}
    assert ("base/5/16384", B, 2 * B) in stored and ("base/5/16384", 4 * B, B) in stored
    assert not any(r.path == "base/5/16384" and r.offset == 0 for r in records)

    # Shrunk (VACUUM truncation) and a dropped file: the map follows the folder.
    rel.write_bytes(old * 2)
    (tmp_path / "base/5/16390").unlink()
    shrunk, _ = copy(tmp_path, incr, "incr2")
    files = shrunk.by_path()
    assert files["base/5/16384"].ranges == [(0, 1, "full"), (1, 1, "incr")]
    assert "base/5/16390" not in files
    # A file that is not whole blocks is copied whole.
    rel.write_bytes(old + b"x")
    odd, _ = copy(tmp_path, shrunk, "incr3")
    assert odd.by_path()["base/5/16384"].whole == "incr3"


def take_files(
    repo: Repository, folder: Path, backup_id: str, parent: BackupManifest | None, at: int
) -> BackupManifest:
    """What `backup --kind incr` stores, without a server: bundles, file map, manifest."""
    fmap = read_file_map(repo, parent) if parent is not None else None
    copier = Copier(folder, backup_id, fmap, 0x5000000 if parent else None, 0x9000000, None)
    objects = copier.store(repo)
    mine = FileMap("0/5000000", "START WAL LOCATION: 0/5000000\n", dirs=copier.dirs,
                   files=sorted(copier.files, key=lambda f: f.path))  # fmt: skip
    key = backup_prefix(backup_id) + MAP_NAME
    objects.append(store_compressed(repo.storage, key, io.BytesIO(mine.to_bytes()), level=3))
    made = replace(
        support.manifest(backup_id, at=support.T0 + timedelta(hours=at)), objects=objects,
        layout=FILES_LAYOUT, parent=parent.id if parent else None,
        kind=BackupKind.INCR if parent else BackupKind.BASE,
        chain_depth=parent.chain_depth + 1 if parent else 0,
    )  # fmt: skip
    write_manifest(repo, made)
    return made


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_chain_restores_and_verifies(tmp_path: Path) -> None:
    repo = support.make_repo(tmp_path)
    src = tmp_path / "src"
    old = page(0x4000000)
    for name, data in (("base/5/16384", old * 4), ("base/6/16384", old * 2),
                       ("base/6/pg_filenode.map", b"map"), ("base/6/PG_VERSION", b"15\n"),
                       ("global/pg_control", b"c" * 100), ("pg_wal/x", b"wal")):  # fmt: skip
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    full = take_files(repo, src, "full", None, 0)
    (src / "base/5/16384").write_bytes(old + page(0x6000000) + old + old + page(0x7000000))
    (src / "base/6/16384").write_bytes(old)
    mid = take_files(repo, src, "mid", full, 1)
    (src / "base/5/16384").write_bytes(old + page(0x6000000) + page(0x8000000) + old)
    newest = take_files(repo, src, "newest", mid, 2)
    chain = read_catalog(repo).chain(newest)
    assert [b.id for b in chain] == ["full", "mid", "newest"]

    out = tmp_path / "out"
    done = assemble(repo, chain, out)
    want = {k: v for k, v in tree(src).items() if not k.startswith("pg_wal/")}
    assert tree(out) == want | {"backup_label": b"START WAL LOCATION: 0/5000000\n"}
    assert (out / "pg_wal").is_dir() and done.skipped == 0

    # --db-only 5: database 6 becomes placeholders and its bundles are never read.
    keep = Selection(frozenset({5}))
    assert not any(
        "db6" in o.key for _b, o in needed_objects(chain, read_file_map(repo, newest), keep)
    )
    out2 = tmp_path / "out2"
    assemble(repo, chain, out2, selection=keep)
    assert (out2 / "base/5/16384").read_bytes() == want["base/5/16384"]
    assert (out2 / "base/6/pg_filenode.map").read_bytes() == b"map"
    assert not (out2 / "base/6/PG_VERSION").exists()
    assert (out2 / "base/6/16384").read_bytes() == bytes(B)

    assert all(c.ok for c in check_chain(repo, newest)), check_chain(repo, newest)
    bundle = next(o for o in full.objects if "db5" in o.key)
    path = tmp_path / "repo" / bundle.key
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 1
    path.write_bytes(bytes(raw))
    bad = [c for c in check_chain(repo, newest) if not c.ok]
    assert [c.key for c in bad] == [bundle.key]
    with pytest.raises(OperationFailed, match=re.escape(bundle.key)):
        assemble(repo, chain, tmp_path / "out3")


def files_backup(
    backup_id: str, start_segno: int, hours: int, parent: BackupManifest | None
) -> BackupManifest:
    at = support.T0 + timedelta(hours=hours)
    return replace(
        support.manifest(backup_id, at=at, start_segno=start_segno),
        layout=FILES_LAYOUT, parent=parent.id if parent else None,
        kind=BackupKind.INCR if parent else BackupKind.BASE,
        chain_depth=parent.chain_depth + 1 if parent else 0,
    )  # fmt: skip


def test_the_planner_starts_from_an_incremental_and_a_claim_keeps_its_chain(
    tmp_path: Path,
) -> None:
    repo = support.make_repo(tmp_path)
    support.store_segments(repo, 1, range(1, 12))
    a = files_backup("a", 2, 0, None)
    a1 = files_backup("a1", 4, 1, a)
    b = files_backup("b", 6, 2, None)
    b1 = files_backup("b1", 8, 3, b)
    for m in (a, a1, b, b1):
        support.write_backup(repo, m)
    assert make_plan(repo, Target(LATEST, "latest")).backup.id == "b1"
    assert make_plan(repo, parse_target_lsn(f"0/{5 * support.MB:X}")).backup.id == "a1"
    valid = read_catalog(repo).valid
    kept = select_retained(valid, RetentionPolicy(keep_last=1), support.T0 + timedelta(days=1))
    assert set(kept) == {"b1", "b"}
    claimed = select_retained(valid, RetentionPolicy(keep_last=1),
                              support.T0 + timedelta(days=1), in_use=["a1"])  # fmt: skip
    assert set(claimed) == {"b1", "b", "a1", "a"}


def test_a_file_settled_before_the_parent_began_is_not_read_again(tmp_path: Path) -> None:
    old = page(0x4000000)
    for name in ("base/5/1", "base/5/2", "base/5/3_vm"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(old * 2)
    long_ago = 1_000_000_000 * 10**9
    for name in ("base/5/1", "base/5/3_vm"):
        os.utime(tmp_path / name, ns=(long_ago, long_ago))
    full, _ = copy(tmp_path, None, "full")
    settled = long_ago + 10**9  # the parent began after these files were last written

    def records(backup_id: str) -> tuple[dict[str, FileEntry], set[str], int]:
        read = [0]

        def progress(n: int) -> None:
            read[0] += n

        copier = Copier(tmp_path, backup_id, full, 0x5000000, 0x9000000, progress, settled)
        stored = {r.path for r in _heads(copier.records(sorted_files(tmp_path)))}
        return {f.path: f for f in copier.files}, stored, read[0]

    # base/5/2 was written after the margin: read (its pages are still the parent's).
    files, stored, read = records("incr")
    assert stored == set() and read == 2 * B
    assert files["base/5/1"].ranges == [(0, 2, "full")] and files["base/5/3_vm"].whole == "full"
    assert files["base/5/2"].ranges == [(0, 2, "full")]
    # Same mtime but another size, or a newer mtime: read again.
    (tmp_path / "base/5/3_vm").write_bytes(old * 3)
    os.utime(tmp_path / "base/5/3_vm", ns=(long_ago, long_ago))
    os.utime(tmp_path / "base/5/1", ns=(settled + 1, settled + 1))
    files, stored, read = records("incr2")
    assert stored == {"base/5/3_vm"} and read == 7 * B
    assert files["base/5/3_vm"].whole == "incr2" and files["base/5/1"].ranges == [(0, 2, "full")]


def sorted_files(folder: Path) -> list[Entry]:
    return [e for e in walk(folder) if not e.is_dir]


def _heads(records: Iterator[Iterator[bytes]]) -> Iterator[Record]:
    import json

    for chunks in records:
        parts = list(chunks)
        (length,) = struct.unpack(">I", parts[0][:4])
        head = json.loads(parts[0][4 : 4 + length])
        yield Record(head["path"], head["offset"], head["length"])


def test_the_parent_is_the_newest_files_backup_of_this_cluster_and_timeline(
    tmp_path: Path,
) -> None:
    repo = support.make_repo(tmp_path)
    mine = files_backup("mine", 2, 0, None)
    child = files_backup("child", 3, 1, mine)
    tar = replace(files_backup("tar", 4, 2, None), layout="tar")
    other = replace(files_backup("other", 5, 3, None), system_identifier="8")
    later_tli = replace(files_backup("tli2", 6, 4, None), timeline=2)
    dump = support.manifest("dump", BackupKind.LOGICAL, at=support.T0 + timedelta(hours=5))
    for m in (mine, child, tar, other, later_tli, dump):
        support.write_backup(repo, m)
    catalog = read_catalog(repo)
    here = DataFolder(None, tmp_path, 7, 1)  # type: ignore[arg-type]
    assert choose_parent(catalog, here, None) == child  # newest of this cluster and timeline
    assert choose_parent(catalog, here, "mine") == mine
    assert choose_parent(catalog, replace(here, timeline=3), None) is None  # a full, then
    for wanted, why in (("tar", "tar"), ("other", "another cluster"), ("tli2", "timeline 2"),
                        ("dump", "logical")):  # fmt: skip
        with pytest.raises(UsageError, match=why) as exc:
            choose_parent(catalog, here, wanted)
        assert exc.value.exit_code == 2
    with pytest.raises(UsageError, match="no complete backup 'nope'"):
        choose_parent(catalog, here, "nope")


def test_a_file_fragmented_over_a_chain_is_stored_whole_again(tmp_path: Path) -> None:
    rel = tmp_path / "base/5/16384"
    rel.parent.mkdir(parents=True)
    old, new = page(0x4000000), page(0x6000000)
    rel.write_bytes(old * 256)
    full, _ = copy(tmp_path, None, "full")
    rel.write_bytes((old + new) * 128)  # every other block changed: 256 ranges
    scattered, _ = copy(tmp_path, full, "scattered")
    assert len(scattered.by_path()["base/5/16384"].ranges or []) == 256 > max_ranges(256)
    again, records = copy(tmp_path, scattered, "again")
    assert again.by_path()["base/5/16384"].ranges == [(0, 256, "again")]
    assert sum(r.length for r in records if r.path == "base/5/16384") == 256 * B
