"""The process layer with a real pg_dump: a dump that fails, however late, is never stored.

Two ways a dump fails after writing output: killed mid-stream (after its first 7 MiB, a
point every run reaches), and exiting non-zero after writing its complete output (a real
pg_dump run through `sh -c '... ; exit 1'`). Both are put into the local and the S3
backend, which must then hold nothing under the key, and no temp file or open upload.
"""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
from conftest import MotoServer
from pgharness import SCRAM_PASSWORD, SCRAM_USER, PgCluster

from chainlens_ops.core.errors import PgCommandError
from chainlens_ops.pg.binaries import connection_for_binary, find_binary
from chainlens_ops.pg.process import PgCancelled, PgStream, run_pg
from chainlens_ops.storage import NotFound, open_storage
from chainlens_ops.storage.protocol import Storage
from chainlens_ops.storage.s3 import S3Settings, S3Storage

MiB = 1024 * 1024
PG_DUMP = find_binary("pg_dump", 15)
KEY = "backups/x/dump.pgc"


@pytest.fixture(scope="module")
def dump_db(module_pg: PgCluster) -> tuple[PgCluster, str]:
    """A database whose uncompressed dump is ~15 MiB (three S3 parts of 5 MiB)."""
    module_pg.createdb("dumpme")
    module_pg.execute(
        "CREATE TABLE t AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS v "
        "FROM generate_series(1, 200000) g",
        dbname="dumpme",
    )
    return module_pg, module_pg.conninfo("dumpme")


@pytest.fixture(params=["local", "s3"])
def storage(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Storage]:
    if request.param == "local":  # this process (root) writes it
        yield open_storage(f"file://{tmp_path / 'repo'}")
        return
    server: MotoServer = request.getfixturevalue("moto_server")
    bucket = request.getfixturevalue("s3_bucket")
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    s3 = open_storage(f"s3://{bucket}/repo", S3Settings(max_attempts=2))
    assert isinstance(s3, S3Storage)
    s3.part_size = (
        5 * MiB
    )  # S3's minimum; the dump spans several parts: a multipart upload to abort
    yield s3


def nothing_published(storage: Storage) -> None:
    assert list(storage.list("")) == []
    with pytest.raises(NotFound):
        storage.stat(KEY)
    if isinstance(storage, S3Storage):
        uploads = storage._client.list_multipart_uploads(Bucket=storage.bucket)
        assert not uploads.get("Uploads"), "an aborted upload was left open"
    else:
        root = Path(storage.url.removeprefix("file://"))
        assert not [p for p in root.rglob("*") if p.is_file()], "a temp file was left"


class KillAfter(io.RawIOBase):
    """Reads `stream`, and SIGKILLs its process once `after` bytes went through."""

    def __init__(self, stream: PgStream, after: int) -> None:
        super().__init__()
        self.stream = stream
        self.after = after

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self.stream.bytes_read >= self.after and self.stream._proc.poll() is None:
            os.kill(self.stream.pid, signal.SIGKILL)
            self.stream._proc.wait()
        return self.stream.readinto(buffer)


def test_a_complete_dump_is_stored(dump_db: tuple[PgCluster, str], storage: Storage) -> None:
    _cluster, conninfo = dump_db
    with PgStream([PG_DUMP, "-Fc", "-Z0", "-d", conninfo]) as stream:
        info = storage.put(KEY, stream)  # type: ignore[arg-type]
    assert info.size > 12 * MiB
    with storage.open(KEY) as fh:
        assert fh.read(5) == b"PGDMP"


def test_a_dump_killed_mid_stream_is_never_published(
    dump_db: tuple[PgCluster, str], storage: Storage
) -> None:
    _cluster, conninfo = dump_db
    with PgStream([PG_DUMP, "-Fc", "-Z0", "-d", conninfo]) as stream:
        source: BinaryIO = KillAfter(stream, 7 * MiB)  # type: ignore[assignment]
        with pytest.raises(PgCommandError) as caught:
            storage.put(KEY, source)
    assert caught.value.returncode == -signal.SIGKILL
    assert "pg_dump exited with code -9: killed by signal 9" in caught.value.one_line()
    nothing_published(storage)


def test_a_dump_that_exits_non_zero_after_complete_output_is_never_published(
    dump_db: tuple[PgCluster, str], storage: Storage
) -> None:
    _cluster, conninfo = dump_db
    argv = ["/bin/sh", "-c", '"$0" "$@" && echo "dump done, then failing" >&2; exit 1',
            PG_DUMP, "-Fc", "-Z0", "-d", conninfo]  # fmt: skip
    with PgStream(argv) as stream, pytest.raises(PgCommandError) as caught:
        storage.put(KEY, stream)  # type: ignore[arg-type]
    # pg_dump wrote everything (it reached `echo`), and still nothing is stored.
    assert stream.bytes_read > 12 * MiB
    assert caught.value.returncode == 1 and "dump done, then failing" in caught.value.one_line()
    nothing_published(storage)


def test_password_travels_in_the_environment_never_argv(module_pg: PgCluster) -> None:
    conninfo, env = connection_for_binary(
        module_pg.conninfo(user=SCRAM_USER, password=SCRAM_PASSWORD)
    )
    assert SCRAM_PASSWORD not in conninfo and env == {"PGPASSWORD": SCRAM_PASSWORD}
    uri, uri_env = connection_for_binary(f"postgresql://u:{SCRAM_PASSWORD}@127.0.0.1:5/db")
    assert SCRAM_PASSWORD not in uri and uri_env == {"PGPASSWORD": SCRAM_PASSWORD}
    # pg_sleep keeps the client alive long enough to read its argv from /proc.
    argv = [find_binary("psql", 15), "-d", conninfo, "-Atc", "SELECT 'ok' FROM pg_sleep(1)"]
    with PgStream(argv, env=env) as stream:
        cmdline = Path(f"/proc/{stream.pid}/cmdline").read_bytes()
        assert SCRAM_PASSWORD.encode() not in cmdline
        assert stream.read() == b"ok\n"
    # Without the environment, the scram role is refused: the password did the work.
    result = run_pg(argv, env={"PGPASSWORD": "wrong"}, check=False)
    assert result.returncode == 2 and "password authentication failed" in result.stderr


def test_timeout_and_cancel_kill_the_process() -> None:
    started = time.monotonic()
    with pytest.raises(PgCancelled, match=r"timed out after 0\.5s"):
        run_pg(["/bin/sleep", "30"], timeout=0.5)
    assert time.monotonic() - started < 5

    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    with PgStream(["/bin/sleep", "30"], cancel=cancel) as stream, pytest.raises(PgCancelled):
        stream.read()
    assert stream._proc.returncode == -signal.SIGKILL

    # Silent too long (e.g. a server waiting on a failing archive_command): stopped.
    argv = ["/bin/sh", "-c", "echo started; sleep 30"]
    with PgStream(argv, idle_timeout=0.5) as stream, pytest.raises(PgCancelled) as caught:
        assert stream.read(100) == b"started\n"
        stream.read(100)
    assert "produced no output for 0.5s" in caught.value.one_line()


def test_stderr_is_kept_as_a_bounded_tail() -> None:
    script = "head -c 3000000 /dev/zero | tr '\\0' x >&2; echo; echo 'the real reason' >&2; exit 4"
    with pytest.raises(PgCommandError) as caught:
        run_pg(["/bin/sh", "-c", script])
    assert caught.value.returncode == 4
    assert len(caught.value.stderr_tail) <= 8192
    assert caught.value.one_line().endswith("the real reason")

    # A reader that retries after the failure gets it again, never a clean end.
    with PgStream(["/bin/sh", "-c", "echo out; exit 3"]) as stream:
        assert stream.read(100) == b"out\n"
        for _ in range(2):
            with pytest.raises(PgCommandError):
                stream.read(100)


def test_leaving_the_stream_early_kills_the_process() -> None:
    with PgStream(["/bin/sh", "-c", "yes"]) as stream:
        assert stream.read(10)
        pid = stream.pid
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_binaries_of_the_servers_major_version() -> None:
    assert find_binary("pg_dump", 15) == "/usr/lib/postgresql/15/bin/pg_dump"
    assert find_binary("pg_basebackup", 15).startswith("/usr/lib/postgresql/15/bin/")
