"""The typed stores (chainlens_ops.repository.stores): the keys of layout.py, and
listings that pick only their own objects."""

from __future__ import annotations

from pathlib import Path

import pytest

from chainlens_ops.pg.walnames import parse_wal_name
from chainlens_ops.repository import layout
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
    assert sorted(proofs.objects("b1")) == [
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
