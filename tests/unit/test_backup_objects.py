"""Backup objects through their public doors: stored compressed with `store_compressed`,
read back with `CheckedReader`, which refuses any byte that does not match the manifest
(on the local backend in tmp_path)."""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import replace
from pathlib import Path

import pytest

from chainlens_ops.backup.manifest import BackupObject
from chainlens_ops.repository.datacodec import (
    LOGICAL_WINDOW_LOG,
    ZSTD_LEVEL_BASE,
    CheckedReader,
    CorruptBackupObject,
    store_compressed,
)
from chainlens_ops.storage import open_storage
from chainlens_ops.storage.protocol import Storage

KEY = "backups/b1/dump.pgc.zst"


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return open_storage(f"file://{tmp_path}/repo")


def read_back(storage: Storage, obj: BackupObject) -> bytes:
    with CheckedReader(storage, obj) as reader:
        return reader.read()


@pytest.mark.parametrize(
    "content",
    [b"", b"a" * 10, os.urandom(300_000), bytes(3 * 1024 * 1024)],
    ids=["empty", "tiny", "random", "zeros"],
)
@pytest.mark.parametrize("window", [None, LOGICAL_WINDOW_LOG], ids=["base", "logical"])
def test_round_trip_with_size_and_sha256_as_stored(
    storage: Storage, content: bytes, window: int | None
) -> None:
    obj = store_compressed(
        storage, KEY, io.BytesIO(content), level=ZSTD_LEVEL_BASE, window_log=window
    )
    stored = (Path(storage.root) / KEY).read_bytes()  # type: ignore[attr-defined]
    assert (obj.key, obj.size, obj.raw_size) == (KEY, len(stored), len(content))
    assert obj.sha256 == hashlib.sha256(stored).hexdigest()
    assert read_back(storage, obj) == content


def test_progress_and_tap_see_every_source_byte(storage: Storage) -> None:
    content = os.urandom(2_500_000)
    seen: list[int] = []
    tapped = bytearray()
    store_compressed(
        storage, KEY, io.BytesIO(content), level=1, progress=seen.append, tap=tapped.extend
    )
    assert sum(seen) == len(content) and bytes(tapped) == content


def test_an_object_is_never_stored_twice(storage: Storage) -> None:
    store_compressed(storage, KEY, io.BytesIO(b"first"), level=1)
    with pytest.raises(Exception, match="exists"):
        store_compressed(storage, KEY, io.BytesIO(b"second"), level=1)


def _stored(storage: Storage, content: bytes = b"payload" * 10_000) -> tuple[BackupObject, Path]:
    obj = store_compressed(storage, KEY, io.BytesIO(content), level=3)
    return obj, Path(storage.root) / KEY  # type: ignore[attr-defined]


def test_a_flipped_byte_is_refused(storage: Storage) -> None:
    obj, path = _stored(storage)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.chmod(0o600)
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptBackupObject):
        read_back(storage, obj)


def test_bytes_after_the_last_frame_are_refused(storage: Storage) -> None:
    obj, path = _stored(storage)
    path.chmod(0o600)
    path.write_bytes(path.read_bytes() + b"trailing")
    with pytest.raises(CorruptBackupObject, match=r"is damaged|the manifest says"):
        read_back(storage, obj)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"size": 1}, "the manifest says 1"),
        ({"sha256": "0" * 64}, "does not match its sha256"),
        ({"raw_size": 3}, "decompresses to"),
    ],
    ids=["size", "sha256", "raw size"],
)
def test_a_manifest_that_disagrees_is_refused(
    storage: Storage, change: dict[str, object], message: str
) -> None:
    obj, _ = _stored(storage)
    with pytest.raises(CorruptBackupObject, match=message):
        read_back(storage, replace(obj, **change))  # type: ignore[arg-type]


def test_a_missing_object_is_named(storage: Storage) -> None:
    with pytest.raises(CorruptBackupObject, match="missing from the repository"):
        CheckedReader(storage, BackupObject("backups/none/x.zst", 1, "0" * 64))


def test_a_failed_read_never_looks_like_a_clean_end_when_retried(storage: Storage) -> None:
    obj, _ = _stored(storage)
    reader = CheckedReader(storage, replace(obj, sha256="0" * 64))
    with pytest.raises(CorruptBackupObject):
        reader.drain()
    with pytest.raises(CorruptBackupObject):
        reader.read(10)
    reader.close()
