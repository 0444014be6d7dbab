"""One contract for every repository backend: the same tests on a local folder and on S3
(moto's server over real HTTP). The WAL archive relies on exactly these behaviours."""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import MotoServer
from storage_support import MiB, PatternStream, pattern_digest, stream_digest

from chainlens_ops.storage import (
    AlreadyExists,
    InvalidKey,
    NotFound,
    ObjectInfo,
    Storage,
    StorageError,
    open_storage,
)
from chainlens_ops.storage.local import LocalStorage
from chainlens_ops.storage.s3 import S3Settings, S3Storage


@pytest.fixture(params=["local", "s3"])
def storage(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Storage]:
    if request.param == "local":
        yield open_storage(f"file://{tmp_path}/repo")
        return
    server: MotoServer = request.getfixturevalue("moto_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    yield open_storage(f"s3://{bucket}/repo", S3Settings())


def read_all(storage: Storage, key: str) -> bytes:
    with storage.open(key) as fh:
        return fh.read()


def put_bytes(storage: Storage, key: str, data: bytes, **kwargs: bool) -> ObjectInfo:
    return storage.put(key, io.BytesIO(data), **kwargs)


def leave_partial_upload(storage: Storage, key: str) -> None:
    """What a writer killed mid-upload leaves behind on this backend."""
    if isinstance(storage, LocalStorage):
        folder = Path(storage.root, *key.split("/")[:-1])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f".{key.rsplit('/', 1)[-1]}.999-dead.tmp").write_bytes(b"partial")
    else:
        assert isinstance(storage, S3Storage)
        client = storage._client
        upload = client.create_multipart_upload(Bucket=storage.bucket, Key=storage.prefix + key)
        client.upload_part(
            Bucket=storage.bucket,
            Key=storage.prefix + key,
            UploadId=upload["UploadId"],
            PartNumber=1,
            Body=b"partial",
        )


def leftovers(storage: Storage) -> list[str]:
    """Unfinished writes still lying around (temp files / open multipart uploads)."""
    if isinstance(storage, LocalStorage):
        return [
            name
            for _dir, _sub, files in os.walk(storage.root)
            for name in files
            if name.startswith(".")
        ]
    assert isinstance(storage, S3Storage)
    uploads = storage._client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads", [])
    return [u["Key"] for u in uploads]


# -- round trips -----------------------------------------------------------------------


def test_roundtrip_binary_and_empty(storage: Storage) -> None:
    data = bytes(range(256)) * 7 + b"\r\n\x00"
    info = put_bytes(storage, "a/b/binary", data)
    assert info == ObjectInfo("a/b/binary", len(data), info.mtime)
    assert read_all(storage, "a/b/binary") == data

    put_bytes(storage, "empty", b"")
    assert read_all(storage, "empty") == b""
    assert storage.stat("empty").size == 0


def test_large_object_streams_both_ways(storage: Storage) -> None:
    size = 20 * MiB + 123  # several parts on S3, many chunks locally
    info = storage.put("big/object", PatternStream(size, seed=1, max_read=300_000))
    assert info.size == size
    with storage.open("big/object") as fh:
        assert stream_digest(fh, chunk=777_777) == pattern_digest(size, seed=1)
    assert storage.stat("big/object").size == size


class ReadOnlyStream(io.RawIOBase):
    """A source that implements read() only (no readinto), in short pieces."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.data = data

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = min(size if size >= 0 else len(self.data), 1000)
        piece, self.data = self.data[:size], self.data[size:]
        return piece


def test_sources_with_only_read(storage: Storage) -> None:
    data = os.urandom(50_000)
    assert storage.put("r", ReadOnlyStream(data)).size == len(data)
    assert read_all(storage, "r") == data


def test_open_is_a_context_managed_stream(storage: Storage) -> None:
    put_bytes(storage, "s", b"0123456789")
    with storage.open("s") as fh:
        assert fh.read(3) == b"012"
        assert fh.read() == b"3456789"
        assert fh.read() == b""
    assert fh.closed


def test_stat_reports_size_and_mtime(storage: Storage) -> None:
    before = time.time()
    info = put_bytes(storage, "x/y", b"12345")
    stat = storage.stat("x/y")
    assert stat.key == "x/y" and stat.size == 5
    # S3 times have one-second resolution: allow for it and for clock rounding.
    assert before - 2 <= stat.mtime <= time.time() + 2
    assert abs(info.mtime - stat.mtime) <= 2


# -- listing ---------------------------------------------------------------------------

KEYS = [
    "base/20240101/data",
    "wal/0001/000000010000000000000001",
    "wal/0001/000000010000000000000002.zst",
    "wal/0001-x",
    "wal/0002/00000002.history",
    "wal-z",
    "walz",
    "w!",
]


def test_list_prefixes_in_key_order(storage: Storage) -> None:
    for key in reversed(KEYS):
        put_bytes(storage, key, key.encode())

    def keys(prefix: str) -> list[str]:
        return [info.key for info in storage.list(prefix)]

    assert keys("") == sorted(KEYS)
    assert keys("wal") == sorted(k for k in KEYS if k.startswith("wal"))
    assert keys("wal/") == sorted(k for k in KEYS if k.startswith("wal/"))
    assert keys("wal/0001") == [
        "wal/0001-x",
        "wal/0001/000000010000000000000001",
        "wal/0001/000000010000000000000002.zst",
    ]
    assert keys("wal/0001/00000001000000000000000") == keys("wal/0001/")
    assert keys("wal/0001/000000010000000000000001") == ["wal/0001/000000010000000000000001"]
    assert keys("nothing/") == [] and keys("wal/0003") == []
    sizes = {info.key: info.size for info in storage.list("")}
    assert sizes == {key: len(key) for key in KEYS}


def test_list_of_an_empty_or_missing_repository(storage: Storage) -> None:
    assert list(storage.list("")) == []
    assert list(storage.list("wal/")) == []


def test_unfinished_writes_are_invisible_and_do_not_block(storage: Storage) -> None:
    leave_partial_upload(storage, "wal/seg")
    assert list(storage.list("")) == []
    assert list(storage.list("wal/")) == []
    with pytest.raises(NotFound):
        storage.stat("wal/seg")
    put_bytes(storage, "wal/seg", b"complete", if_absent=True)
    assert read_all(storage, "wal/seg") == b"complete"
    assert [i.key for i in storage.list("wal/")] == ["wal/seg"]


# -- missing keys and deletes ----------------------------------------------------------


def test_missing_keys_are_not_found(storage: Storage) -> None:
    put_bytes(storage, "dir/present", b"1")
    for key in ("absent", "dir/absent", "no/such/dir/key", "dir/present/below"):
        with pytest.raises(NotFound):
            storage.stat(key)
        with pytest.raises(NotFound):
            storage.open(key)
    with pytest.raises(NotFound):
        storage.stat("dir")  # a folder is not an object


def test_delete_is_idempotent(storage: Storage) -> None:
    put_bytes(storage, "d/k", b"1")
    put_bytes(storage, "d/other", b"2")
    storage.delete("d/k")
    storage.delete("d/k")
    storage.delete("never/there")
    with pytest.raises(NotFound):
        storage.stat("d/k")
    assert [i.key for i in storage.list("")] == ["d/other"]


# -- overwrite and conditional put -----------------------------------------------------


def test_put_overwrites_without_if_absent(storage: Storage) -> None:
    put_bytes(storage, "k", b"first version")
    put_bytes(storage, "k", b"second")
    assert read_all(storage, "k") == b"second"
    assert storage.stat("k").size == 6


@pytest.mark.parametrize("size", [10, 9 * MiB], ids=["small", "multipart"])
def test_if_absent_refuses_and_keeps_the_original(storage: Storage, size: int) -> None:
    storage.put("wal/seg", PatternStream(size, seed=1), if_absent=True)
    with pytest.raises(AlreadyExists) as caught:
        storage.put("wal/seg", PatternStream(size, seed=2), if_absent=True)
    assert isinstance(caught.value, StorageError)
    assert "wal/seg" in str(caught.value)
    with storage.open("wal/seg") as fh:
        assert stream_digest(fh) == pattern_digest(size, seed=1)
    assert leftovers(storage) == []


def race_if_absent(storage: Storage, key: str, writers: int) -> tuple[list[int], list[int]]:
    """`writers` threads put `key` with if_absent at once: (winners, losers)."""
    start = threading.Barrier(writers)
    winners: list[int] = []
    losers: list[int] = []
    errors: list[BaseException] = []

    def push(n: int) -> None:
        start.wait()
        try:
            put_bytes(storage, key, bytes([n]) * 1000, if_absent=True)
            winners.append(n)
        except AlreadyExists:
            losers.append(n)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=push, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return winners, losers


def test_concurrent_if_absent_puts_have_one_winner(storage: Storage) -> None:
    """Small objects: one conditional PutObject each (see test_storage_s3 for multipart)."""
    for round_ in range(5):
        winners, losers = race_if_absent(storage, f"race/{round_}", 6)
        assert len(winners) == 1 and len(losers) == 5
        assert read_all(storage, f"race/{round_}") == bytes([winners[0]]) * 1000
    assert leftovers(storage) == []


def test_parallel_puts_from_threads_share_one_storage(storage: Storage) -> None:
    def push(n: int) -> None:
        storage.put(f"wal/{n:04d}", PatternStream(300_000 + n, seed=n))

    threads = [threading.Thread(target=push, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    infos = list(storage.list("wal/"))
    assert [i.key for i in infos] == [f"wal/{n:04d}" for n in range(8)]
    for n in range(8):
        with storage.open(f"wal/{n:04d}") as fh:
            assert stream_digest(fh) == pattern_digest(300_000 + n, seed=n)


@pytest.mark.parametrize("size", [3 * MiB, 20 * MiB], ids=["single", "multipart"])
def test_a_failing_source_leaves_nothing(storage: Storage, size: int) -> None:
    put_bytes(storage, "wal/seg", b"old")
    with pytest.raises(OSError, match="source broke"):
        storage.put("wal/seg", PatternStream(size, fail_after=size - MiB))
    with pytest.raises(OSError, match="source broke"):
        storage.put("wal/new", PatternStream(size, fail_after=size - MiB), if_absent=True)
    assert read_all(storage, "wal/seg") == b"old"
    assert [i.key for i in storage.list("")] == ["wal/seg"]
    assert leftovers(storage) == []


# -- keys --------------------------------------------------------------------------------

BAD_KEYS = ["", "/abs", "a//b", "a/", "../x", "a/../b", "a/./b", ".hidden", "a/.tmp", "a\x00b"]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_are_refused(storage: Storage, key: str) -> None:
    operations: list[Callable[[], object]] = [
        lambda: put_bytes(storage, key, b"x"),
        lambda: storage.open(key),
        lambda: storage.stat(key),
        lambda: storage.delete(key),
    ]
    for operation in operations:
        with pytest.raises(InvalidKey) as caught:
            operation()
        assert isinstance(caught.value, ValueError)
        assert caught.value.exit_code == 2
    assert list(storage.list("")) == []


@pytest.mark.parametrize("prefix", ["/a", "a//", "../", "a/../", ".x/"])
def test_bad_prefixes_are_refused(storage: Storage, prefix: str) -> None:
    with pytest.raises(InvalidKey):
        list(storage.list(prefix))


def test_every_registered_backend_is_in_this_suite() -> None:
    """Adding a backend is one module, one entry in storage.BACKENDS and one param above."""
    from chainlens_ops.storage import BACKENDS

    assert set(BACKENDS) == {"file", "s3"}  # the `storage` fixture's params, by scheme


def test_each_backend_answers_what_it_is_and_its_housekeeping(storage: Storage) -> None:
    from chainlens_ops.storage import backend_for

    declared = backend_for(storage.url)
    put_bytes(storage, "wal/x", b"x")  # a local root exists once something is stored
    assert storage.exists()
    leftovers = storage.stale_leftovers()
    assert isinstance(leftovers, tuple)
    assert storage.remove_stale_leftovers() >= 0
    storage.housekeep_now_and_then(None)  # never raises
    if not declared.housekeeping:
        assert leftovers == ()
