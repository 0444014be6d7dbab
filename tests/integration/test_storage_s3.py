"""The S3 backend beyond the contract: failures, timeouts, checksums, SSE, prefixes.

moto's server honours `If-None-Match: *` on PutObject and CompleteMultipartUpload, but
its check-then-write is not atomic across concurrent requests: two multipart uploads
completing at the same instant may both "win" there (real S3 decides atomically). The
contract suite therefore races small objects; here multipart uploads overlap fully while
their completions are ordered, which moto does decide correctly.
"""

from __future__ import annotations

import base64
import hashlib
import io
import socket
import threading
import time
from collections.abc import Callable

import pytest
from conftest import MotoServer
from storage_support import MiB, PatternStream, pattern_digest, stream_digest

from chainlens_ops.storage import AlreadyExists, NotFound, StorageError
from chainlens_ops.storage.s3 import S3Settings, S3Storage

FAST_FAIL = S3Settings(connect_timeout=1.0, read_timeout=2.0, max_attempts=2)


@pytest.fixture
def aws_env(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    for name, value in moto_server.env().items():
        monkeypatch.setenv(name, value)
    return moto_server


def sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def expect_storage_error(operation: Callable[[], object], *words: str) -> float:
    """Run `operation`, which must fail with a StorageError (never NotFound) naming `words`;
    returns how long it took."""
    start = time.monotonic()
    with pytest.raises(StorageError) as caught:
        operation()
    assert not isinstance(caught.value, NotFound)
    for word in words:
        assert word in caught.value.one_line()
    return time.monotonic() - start


# -- an unreachable or stalled endpoint --------------------------------------------------


def test_endpoint_down_is_a_storage_error_in_bounded_time(monkeypatch: pytest.MonkeyPatch) -> None:
    server = MotoServer()  # our own: stopping the session's would break other tests
    server.start()
    try:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        server.create_bucket("down")
        storage = S3Storage("s3://down/repo", FAST_FAIL)
        storage.put("wal/seg", io.BytesIO(b"x"))
        storage.put("big", PatternStream(24 * MiB))
        reader = storage.open("big")
        assert len(reader.read(MiB)) == MiB
    finally:
        server.stop()

    # A body cut off mid-stream fails the read; it never looks like a short object.
    with pytest.raises(StorageError, match="s3://down/repo/big"):
        while reader.read(MiB):
            pass
    reader.close()

    operations: list[Callable[[], object]] = [
        lambda: storage.stat("wal/seg"),
        lambda: storage.stat("wal/missing"),
        lambda: storage.open("wal/seg"),
        lambda: storage.put("wal/new", io.BytesIO(b"y"), if_absent=True),
        lambda: storage.put("wal/large", PatternStream(9 * MiB)),
        lambda: list(storage.list("wal/")),
        lambda: storage.delete("wal/seg"),
    ]
    for operation in operations:
        elapsed = expect_storage_error(operation, "s3://down/repo/")
        assert elapsed < 10, "retries are bounded"


def test_stalled_endpoint_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that accepts connections and never answers: the read timeout ends it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        settings = S3Settings(
            endpoint_url=f"http://127.0.0.1:{listener.getsockname()[1]}",
            region="us-east-1",
            read_timeout=0.3,
            max_attempts=1,  # retries are bounded too: see the test above
        )
        storage = S3Storage("s3://stalled/repo", settings)
        for operation in (
            lambda: storage.stat("k"),
            lambda: storage.put("k", io.BytesIO(b"x")),
        ):
            assert expect_storage_error(operation, "s3://stalled/repo/k") < 8
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


def test_missing_bucket_is_named(aws_env: MotoServer) -> None:
    storage = S3Storage("s3://no-such-bucket/repo", FAST_FAIL)
    for operation in (
        lambda: storage.stat("k"),
        lambda: storage.open("k"),
        lambda: storage.put("k", io.BytesIO(b"x")),
        lambda: storage.put("k", PatternStream(9 * MiB)),
        lambda: list(storage.list("")),
        lambda: storage.delete("k"),
    ):
        expect_storage_error(operation, "bucket no-such-bucket does not exist")


def test_settings_override_the_environment(
    aws_env: MotoServer, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    storage = S3Storage(f"s3://{s3_bucket}", S3Settings(endpoint_url=aws_env.endpoint))
    storage.put("k", io.BytesIO(b"x"))
    assert storage.endpoint == aws_env.endpoint
    assert storage.stat("k").size == 1


# -- what lands in the bucket ----------------------------------------------------------


def test_uploads_carry_verified_sha256(aws_env: MotoServer, s3_bucket: str) -> None:
    storage = S3Storage(f"s3://{s3_bucket}/repo")
    client = storage._client
    storage.put("small", io.BytesIO(b"payload"))
    head = client.head_object(Bucket=s3_bucket, Key="repo/small", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == sha256_b64(b"payload")

    size = 17 * MiB  # parts of 8, 8 and 1 MiB
    storage.put("large", PatternStream(size, seed=3))
    source = PatternStream(size, seed=3)
    data = b"".join(iter(lambda: source.read(MiB) or b"", b""))
    digests = [hashlib.sha256(data[i : i + 8 * MiB]).digest() for i in range(0, size, 8 * MiB)]
    head = client.head_object(Bucket=s3_bucket, Key="repo/large", ChecksumMode="ENABLED")
    # S3 says "<composite>-3"; moto leaves the part count out.
    assert head["ChecksumSHA256"].removesuffix("-3") == sha256_b64(b"".join(digests))


def test_keys_live_under_the_prefix(aws_env: MotoServer, s3_bucket: str) -> None:
    storage = S3Storage(f"s3://{s3_bucket}/team/repo/")
    assert storage.prefix == "team/repo/"
    storage.put("wal/seg", io.BytesIO(b"x"))
    client = storage._client
    client.put_object(Bucket=s3_bucket, Key="team/repo/wal/", Body=b"")  # a console's folder
    client.put_object(Bucket=s3_bucket, Key="team/repo-other/k", Body=b"")
    client.put_object(Bucket=s3_bucket, Key="elsewhere", Body=b"")
    listed = client.list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert "team/repo/wal/seg" in [o["Key"] for o in listed]
    assert [i.key for i in storage.list("")] == ["wal/seg"]
    assert [i.key for i in S3Storage(f"s3://{s3_bucket}").list("team/")] == [
        "team/repo-other/k",
        "team/repo/wal/seg",
    ]


@pytest.mark.parametrize("size", [100, 9 * MiB], ids=["single", "multipart"])
def test_server_side_encryption(aws_env: MotoServer, s3_bucket: str, size: int) -> None:
    storage = S3Storage(f"s3://{s3_bucket}", S3Settings(sse="AES256"))
    storage.put("aes", PatternStream(size))
    head = storage._client.head_object(Bucket=s3_bucket, Key="aes")
    assert head["ServerSideEncryption"] == "AES256"

    kms = S3Storage(f"s3://{s3_bucket}", S3Settings(sse="aws:kms", sse_kms_key_id="alias/wal"))
    kms.put("kms", PatternStream(size))
    head = kms._client.head_object(Bucket=s3_bucket, Key="kms")
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"].endswith("alias/wal")
    with kms.open("kms") as fh:
        assert stream_digest(fh) == pattern_digest(size)


# -- conditional multipart uploads -----------------------------------------------------


class GatedStream(PatternStream):
    """Serves its bytes, then waits for `gate` before reporting the end of the stream."""

    def __init__(self, size: int, seed: int, gate: threading.Event, reached: threading.Event):
        super().__init__(size, seed)
        self.gate = gate
        self.reached = reached

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = super().readinto(buffer)
        if n == 0:
            self.reached.set()
            assert self.gate.wait(30)
        return n


def test_overlapping_multipart_if_absent_uploads(aws_env: MotoServer, s3_bucket: str) -> None:
    storage = S3Storage(f"s3://{s3_bucket}/repo")
    size = 9 * MiB
    gates = [threading.Event(), threading.Event()]
    reached = [threading.Event(), threading.Event()]
    outcome: dict[int, str] = {}

    def push(n: int) -> None:
        try:
            storage.put("wal/seg", GatedStream(size, n, gates[n], reached[n]), if_absent=True)
            outcome[n] = "won"
        except AlreadyExists:
            outcome[n] = "refused"

    threads = [threading.Thread(target=push, args=(n,)) for n in (0, 1)]
    for thread in threads:
        thread.start()
    assert all(event.wait(30) for event in reached)  # both uploads have their parts in
    gates[1].set()
    threads[1].join()
    gates[0].set()
    threads[0].join()
    assert outcome == {1: "won", 0: "refused"}
    with storage.open("wal/seg") as fh:
        assert stream_digest(fh) == pattern_digest(size, seed=1)
    assert storage._client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_list_follows_pages(aws_env: MotoServer, s3_bucket: str) -> None:
    storage = S3Storage(f"s3://{s3_bucket}/p")
    storage.list_page_size = 7
    for n in range(30):
        storage._client.put_object(Bucket=s3_bucket, Key=f"p/k/{n:05d}", Body=b"")
    assert [info.key for info in storage.list("k/")] == [f"k/{n:05d}" for n in range(30)]
    assert [info.key for info in storage.list("k/0001")] == [f"k/{n:05d}" for n in range(10, 20)]
