"""The typed stores (chainlens_ops.repository.stores): the keys of layout.py, and
listings that pick only their own objects."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from chainlens_ops.pg.walnames import parse_wal_name
from chainlens_ops.repository import layout
from chainlens_ops.repository.lock import RepositoryLocked
from chainlens_ops.storage import AlreadyExists, NotFound

from .support import make_repo, store_wal


def test_points_use_layout_keys_and_list_only_catalog_entries(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    points = repo.points
    points.put("before", b"{}", if_absent=True)
    with pytest.raises(AlreadyExists):
        points.put("before", b"{}", if_absent=True)
    points.put_scanned("000000010000000000000003", b"[]")
    assert repo.storage.stat(layout.restore_point_key("before"))
    assert repo.storage.stat(layout.scan_state_key("000000010000000000000003"))
    assert list(points.names()) == ["before"]
    assert points.scanned() == {"000000010000000000000003"}
    with points.open_scanned("000000010000000000000003") as fh:
        assert fh.read() == b"[]"
    points.delete("before")
    with pytest.raises(NotFound):
        points.open("before")


def test_proofs_and_pins_use_layout_keys(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    proofs = repo.proofs
    key = proofs.put("b1", "verify", "20261206T150000", b"{}")
    assert key == layout.proof_key("b1", "verify", "20261206T150000")
    proofs.put_pin("b1", b"{}")
    assert repo.storage.stat(layout.pin_key("b1"))
    assert sorted(repo.backups.objects("b1")) == [
        ("pin.json", layout.pin_key("b1")),
        ("verify-20261206T150000Z.json", key),
    ]
    assert list(proofs.pinned()) == ["b1"]
    with proofs.open(key) as fh:
        assert fh.read() == b"{}"
    proofs.delete_pin("b1")
    assert list(proofs.pinned()) == []
    with pytest.raises(NotFound):
        proofs.open_pin("b1")


def test_wal_uses_layout_keys_and_lists_a_timeline_or_everything(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    store_wal(repo, "000000010000000000000003")
    store_wal(repo, "000000020000000000000004")
    store_wal(repo, "00000002.history")
    seg = parse_wal_name("000000020000000000000004")
    assert repo.wal.stat(seg).key == layout.wal_key(seg)
    assert [i.key.rsplit("/", 1)[1] for i in repo.wal.list(2)] == ["000000020000000000000004"]
    assert len(list(repo.wal.list())) == 3  # histories included
    with pytest.raises(NotFound):
        repo.wal.open(parse_wal_name("000000010000000000000009"))
    repo.wal.delete(layout.wal_key(seg))
    with pytest.raises(NotFound):
        repo.wal.stat(seg)


def test_backups_use_layout_keys_and_publish_a_manifest_once(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    backups = repo.backups
    key = backups.object_key("b1", layout.DUMP_NAME)
    assert key == layout.backup_object_key("b1", "dump.pgc.zst") == "backups/b1/dump.pgc.zst"
    assert backups.object_key("b1", layout.DUMP_FOLDER + "toc.dat.zst") == (
        "backups/b1/dump.d/toc.dat.zst"
    )
    assert not backups.holds_anything("b1")
    backups.put(key, io.BytesIO(b"dump"), if_absent=True)
    with pytest.raises(AlreadyExists):
        backups.put(key, io.BytesIO(b"other"), if_absent=True)
    assert backups.holds_anything("b1") and not backups.holds_anything("b")  # not a prefix
    with pytest.raises(NotFound):
        backups.stat_manifest("b1")
    backups.put_manifest("b1", b"{}")
    with pytest.raises(AlreadyExists):
        backups.put_manifest("b1", b"{}")
    assert backups.manifest_key("b1") == layout.manifest_key("b1")
    assert repo.storage.stat(layout.manifest_key("b1")).size == 2
    assert backups.stat_manifest("b1").key == "backups/b1/manifest.json"
    with backups.open_manifest("b1") as fh, backups.open(key) as data:
        assert (fh.read(), data.read()) == (b"{}", b"dump")
    with pytest.raises(NotFound):
        backups.open_manifest("b2")


def test_backup_listings_name_each_backup_and_object(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    backups = repo.backups
    backups.put(backups.object_key("b1", layout.BASE_TAR_NAME), io.BytesIO(b"x"))
    backups.put_manifest("b1", b"{}")
    repo.proofs.put_pin("b1", b"{}")
    backups.put(backups.object_key("b2", layout.DATA_FOLDER + "g1-000.bundle"), io.BytesIO(b"y"))
    repo.points.put("p", b"{}")  # outside backups/: in no listing
    assert [(i, n, info.key) for i, n, info in backups.contents()] == [
        ("b1", "base.tar.zst", "backups/b1/base.tar.zst"),
        ("b1", "manifest.json", "backups/b1/manifest.json"),
        ("b1", "pin.json", "backups/b1/pin.json"),
        ("b2", "data/g1-000.bundle", "backups/b2/data/g1-000.bundle"),
    ]
    assert [n for n, _ in backups.objects("b2")] == ["data/g1-000.bundle"]
    assert [n for _, n, _ in backups.contents() if backups.is_manifest(n)] == ["manifest.json"]
    assert backups.backup_of("backups/b2/data/x") == "b2"
    assert backups.backup_of("backups/") == ""  # the folder itself, left empty
    assert backups.backup_of("wal/0000000100000000/x") is None


def test_deleting_a_backup_removes_its_manifest_first_then_its_folder(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    backups = repo.backups
    for backup_id in ("b1", "b10"):
        backups.put(backups.object_key(backup_id, layout.DUMP_NAME), io.BytesIO(b"x"))
        backups.put_manifest(backup_id, b"{}")
    repo.proofs.put_pin("b1", b"{}")
    deleted: list[str] = []
    real_delete = repo.storage.delete

    class Recording:
        """The codec door, recording deletes in order."""

        def __getattr__(self, name: str) -> object:
            return getattr(repo.storage, name)

        def delete(self, key: str) -> None:
            deleted.append(key)
            real_delete(key)

    type(backups)(Recording()).delete("b1")  # type: ignore[arg-type]
    assert deleted[0] == "backups/b1/manifest.json"
    assert sorted(deleted[1:]) == ["backups/b1/dump.pgc.zst", "backups/b1/pin.json"]
    assert not backups.holds_anything("b1")
    assert [n for n, _ in backups.objects("b10")] == ["dump.pgc.zst", "manifest.json"]
    backups.delete("b1")  # nothing left: no error


def test_locks_and_claims_come_from_the_repository_under_locks(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)

    def lock_keys() -> list[str]:
        return [i.key for i in repo.storage.list(layout.LOCKS_PREFIX)]

    with repo.locks.lock("backup", wait_s=0).hold():
        assert lock_keys() == [layout.LOCK_KEY]
        with pytest.raises(RepositoryLocked) as caught:
            repo.locks.lock("backup prune", wait_s=0).acquire()
        assert "is locked by `backup`" in caught.value.message
    assert lock_keys() == []
    with repo.locks.claim("restore", wait_s=1).hold() as claim:
        claim.scope("b1")
        (key,) = lock_keys()
        assert key.startswith(layout.CLAIMS_PREFIX) and key.endswith(".json")
        (live,) = repo.locks.live_claims()
        assert live.backup_id == "b1" and live.owner.command == "restore"
    assert repo.locks.live_claims() == [] and lock_keys() == []


def test_housekeeping_goes_through_the_repository(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    assert repo.stale_leftovers() == () and repo.remove_stale_leftovers() == 0
    assert repo.remove_incomplete(lambda info: True, dry_run=True) == []
    repo.housekeep_now_and_then(None)  # never raises
