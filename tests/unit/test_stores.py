"""The typed stores (chainlens_ops.repository.stores): the keys of layout.py, and
listings that pick only their own objects."""

from __future__ import annotations

from pathlib import Path

import pytest

from chainlens_ops.repository import layout
from chainlens_ops.storage import AlreadyExists, NotFound

from .support import make_repo


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
