"""The local backend beyond the contract: crash safety, modes, ownership, start-up cost."""

from __future__ import annotations

import io
import os
import shutil
import signal
import stat
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pgharness import VENV, as_postgres, make_shared_dir, pg_uid_gid
from storage_support import MiB, pattern_digest, stream_digest

from chainlens_ops.core.errors import UsageError
from chainlens_ops.storage import AlreadyExists, StorageError, open_storage
from chainlens_ops.storage.local import LocalStorage
from chainlens_ops.storage.s3 import S3Storage

TESTS = Path(__file__).parent
PYTHON = str(VENV / "bin" / "python")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if p.is_file()]


# -- URLs ------------------------------------------------------------------------------


def test_open_storage_picks_the_backend_by_url(tmp_path: Path) -> None:
    for url in (f"file://{tmp_path}/r", f"{tmp_path}/r", f"file://{tmp_path}/r/"):
        backend = open_storage(url)
        assert isinstance(backend, LocalStorage)
        assert backend.root == f"{tmp_path}/r"
        assert backend.url == url
    assert isinstance(open_storage("s3://bucket/prefix"), S3Storage)
    # A bad repository URL is a usage error (exit 2) everywhere, not a config error.
    for bad in ("relative/path", "ftp://x/y", "file://relative", "s3://"):
        with pytest.raises(UsageError):
            open_storage(bad)


def test_constructor_touches_nothing(tmp_path: Path) -> None:
    LocalStorage(str(tmp_path / "repo"))
    assert not (tmp_path / "repo").exists()


# -- files and folders -----------------------------------------------------------------


def test_files_are_owner_only_and_folders_are_made(tmp_path: Path) -> None:
    old = os.umask(0)  # the modes must not depend on a permissive umask
    try:
        storage = LocalStorage(str(tmp_path / "a" / "repo"))
        storage.put("wal/0001/seg", io.BytesIO(b"x"))
    finally:
        os.umask(old)
    for folder in ("a", "a/repo", "a/repo/wal", "a/repo/wal/0001"):
        assert mode(tmp_path / folder) == 0o700, folder
    assert mode(tmp_path / "a/repo/wal/0001/seg") == 0o600
    assert temp_files(tmp_path) == []


def test_repository_path_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "repo").write_text("not a folder")
    with pytest.raises(StorageError, match="not a folder"):
        LocalStorage(str(tmp_path / "repo")).put("k", io.BytesIO(b"x"))


def test_key_below_an_object_is_a_storage_error(tmp_path: Path) -> None:
    storage = LocalStorage(str(tmp_path))
    storage.put("a", io.BytesIO(b"x"))
    with pytest.raises(StorageError, match="a file has that name"):
        storage.put("a/b", io.BytesIO(b"y"))


def test_remove_stale_temp_keeps_fresh_ones(tmp_path: Path) -> None:
    storage = LocalStorage(str(tmp_path))
    storage.put("wal/seg", io.BytesIO(b"x"))
    old = tmp_path / "wal" / ".seg.1-dead.tmp"
    fresh = tmp_path / "wal" / ".seg.2-live.tmp"
    old.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert storage.remove_stale_temp(older_than_s=3600) == 1
    assert not old.exists() and fresh.exists()
    assert storage.remove_stale_temp(older_than_s=0) == 1
    assert temp_files(tmp_path) == []
    assert [i.key for i in storage.list("")] == ["wal/seg"]


keys_strategy = st.lists(
    st.lists(
        st.sampled_from(["a", "b", "a-b", "a.b", "a!", "ab", "b0", "~"]), min_size=1, max_size=3
    ).map("/".join),
    max_size=12,
    unique=True,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(keys=keys_strategy)
def test_list_order_is_plain_string_order(
    tmp_path_factory: pytest.TempPathFactory, keys: list[str]
) -> None:
    # A key cannot also be a folder on disk: keep only keys that are nobody's folder.
    keys = [k for k in keys if not any(other.startswith(k + "/") for other in keys)]
    storage = LocalStorage(str(tmp_path_factory.mktemp("order")))
    for key in keys:
        storage.put(key, io.BytesIO(key.encode()))
    for prefix in ("", "a", "a/", "a-", "a/b", "b"):
        assert [i.key for i in storage.list(prefix)] == sorted(
            k for k in keys if k.startswith(prefix)
        )


# -- crash safety ----------------------------------------------------------------------

CHILD = """
import sys
sys.path.insert(0, {tests!r})
from storage_support import PatternStream
from chainlens_ops.storage import AlreadyExists
from chainlens_ops.storage.local import LocalStorage
try:
    LocalStorage({root!r}).put("wal/seg", PatternStream({size}, seed=7), if_absent={if_absent})
    print("stored")
except AlreadyExists:
    print("exists")
"""


def put_in_child(
    root: str,
    *,
    crash_at: str = "",
    if_absent: bool = True,
    size: int = 3 * MiB,
    trace: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """A put in a process of its own, killed at the named crash point `crash_at`;
    `trace` records its fsync calls (with the paths of their descriptors) via strace."""
    env = {k: v for k, v in os.environ.items() if k != "CHAINLENS_CRASH_AT"}
    if crash_at:
        env["CHAINLENS_CRASH_AT"] = crash_at
    argv = [PYTHON, "-c", CHILD.format(tests=str(TESTS), root=root, size=size, if_absent=if_absent)]
    if trace is not None:
        argv = [
            "strace",
            "-f",
            "-y",
            "-qq",
            "-e",
            "trace=fsync,fdatasync,link",
            "-o",
            str(trace),
            *argv,
        ]
    return subprocess.run(argv, cwd="/", env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("point", ["after-temp-write", "mid-upload", "after-link"])
@pytest.mark.parametrize("if_absent", [True, False])
def test_killed_at_each_crash_point_then_retried_ends_durable_and_identical(
    tmp_path: Path, point: str, if_absent: bool
) -> None:
    """Each named point is reached on every run; the object is never partial, and the
    retry (as PostgreSQL retries archive_command) ends with the whole object."""
    storage = LocalStorage(str(tmp_path / "repo"))
    storage.put("wal/old", io.BytesIO(b"unrelated"))
    killed = put_in_child(storage.root, crash_at=point, if_absent=if_absent)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    published = point == "after-link"
    assert [i.key for i in storage.list("wal/")] == (
        ["wal/old", "wal/seg"] if published else ["wal/old"]
    )
    retry = put_in_child(storage.root, if_absent=if_absent)
    assert retry.returncode == 0, retry.stderr
    assert retry.stdout.strip() == ("exists" if published and if_absent else "stored")
    with storage.open("wal/seg") as fh:
        assert stream_digest(fh) == pattern_digest(3 * MiB, seed=7)
    storage.remove_stale_temp(older_than_s=0)
    assert temp_files(tmp_path) == []


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_already_exists_is_answered_only_after_syncing_the_stored_copy(tmp_path: Path) -> None:
    """The repeated-push durability hole: a writer killed after its link and before the
    folder fsync leaves an entry that may not survive an OS crash. The retry must fsync
    the existing file and its folder before it answers "already exists"."""
    storage = LocalStorage(str(tmp_path / "repo"))
    storage.put("wal/old", io.BytesIO(b"unrelated"))
    assert put_in_child(storage.root, crash_at="after-link").returncode == -signal.SIGKILL
    trace = tmp_path / "trace"
    retry = put_in_child(storage.root, trace=trace)
    assert retry.stdout.strip() == "exists", retry.stderr
    calls = trace.read_text().splitlines()
    final, folder = f"{storage.root}/wal/seg", f"{storage.root}/wal"
    link = next(
        i for i, c in enumerate(calls) if c.split()[1].startswith("link(") and "EEXIST" in c
    )
    after = calls[link:]
    assert any("fsync(" in c and f"<{final}>" in c for c in after), calls
    assert any("fsync(" in c and f"<{folder}>" in c for c in after), calls
    # Killed on the "already exists" path before syncing: the next retry still answers
    # only after syncing (nothing was cached in between).
    assert put_in_child(storage.root, crash_at="exists-before-sync").returncode == -signal.SIGKILL


def pattern_digest_of(data: bytes) -> str:
    return stream_digest(io.BytesIO(data))


def test_concurrent_if_absent_processes_have_one_winner(tmp_path: Path) -> None:
    """Big objects from separate processes: os.link publishes exactly one of them."""
    script = textwrap.dedent(
        """
        import sys, time
        sys.path.insert(0, {tests!r})
        from storage_support import PatternStream
        from chainlens_ops.storage import AlreadyExists
        from chainlens_ops.storage.local import LocalStorage
        storage = LocalStorage({root!r})
        while time.time() < {start}:
            time.sleep(0.001)
        try:
            storage.put("wal/seg", PatternStream(8 * 1024 * 1024, seed=int(sys.argv[1])),
                        if_absent=True)
        except AlreadyExists:
            sys.exit(3)
        """
    )
    root = tmp_path / "repo"
    code = script.format(tests=str(TESTS), root=str(root), start=time.time() + 1.0)
    children = [subprocess.Popen([PYTHON, "-c", code, str(n)], cwd="/") for n in range(4)]
    codes = sorted(child.wait() for child in children)
    assert codes == [0, 3, 3, 3]
    with LocalStorage(str(root)).open("wal/seg") as fh:
        digest = stream_digest(fh)
    assert digest in {pattern_digest(8 * MiB, seed=n) for n in range(4)}
    assert temp_files(root) == []


# -- ownership ---------------------------------------------------------------------------


def test_root_refuses_to_write_a_repository_owned_by_postgres(scratch: Path) -> None:
    repo = make_shared_dir(scratch / f"owned-{time.monotonic_ns()}", mode=0o700)
    storage = LocalStorage(str(repo))
    with pytest.raises(StorageError) as caught:
        storage.put("wal/seg", io.BytesIO(b"x"))
    message = caught.value.one_line()
    assert f"repository {repo} is owned by postgres" in message
    assert "sudo -u postgres" in message
    with pytest.raises(StorageError, match="owned by postgres"):
        storage.delete("wal/seg")
    with pytest.raises(StorageError, match="owned by postgres"):
        storage.check_writable()
    assert list(repo.iterdir()) == []  # nothing created

    # The database's OS user writes it; root may still read it.
    code = (
        "import io\n"
        "from chainlens_ops.storage.local import LocalStorage\n"
        f"LocalStorage({str(repo)!r}).put('wal/seg', io.BytesIO(b'from postgres'))\n"
    )
    subprocess.run(as_postgres([PYTHON, "-c", code]), check=True, cwd="/")
    uid, _gid = pg_uid_gid()
    assert (repo / "wal" / "seg").stat().st_uid == uid
    assert mode(repo / "wal") == 0o700 and mode(repo / "wal" / "seg") == 0o600
    assert storage.stat("wal/seg").size == len(b"from postgres")
    with storage.open("wal/seg") as fh:
        assert fh.read() == b"from postgres"
    assert [i.key for i in storage.list("")] == ["wal/seg"]


def test_other_user_cannot_write_a_root_repository(scratch: Path) -> None:
    repo = make_shared_dir(scratch / f"rootrepo-{time.monotonic_ns()}", owner_postgres=False)
    code = (
        "import io, sys\n"
        "from chainlens_ops.storage import StorageError\n"
        "from chainlens_ops.storage.local import LocalStorage\n"
        "try:\n"
        f"    LocalStorage({str(repo)!r}).put('k', io.BytesIO(b'x'))\n"
        "except StorageError as exc:\n"
        "    print(exc.one_line()); sys.exit(1)\n"
    )
    result = subprocess.run(
        as_postgres([PYTHON, "-c", code]), capture_output=True, text=True, cwd="/"
    )
    assert result.returncode == 1, result.stderr
    assert "not writable by postgres (owned by root)" in result.stdout


def test_root_may_create_a_missing_repository(tmp_path: Path) -> None:
    storage = LocalStorage(str(tmp_path / "new" / "repo"))
    storage.check_writable()
    assert mode(tmp_path / "new" / "repo") == 0o700
    storage.put("k", io.BytesIO(b"x"), if_absent=True)
    with pytest.raises(AlreadyExists):
        storage.put("k", io.BytesIO(b"y"), if_absent=True)


# -- start-up cost -----------------------------------------------------------------------


def test_local_backend_imports_no_heavy_modules() -> None:
    code = (
        "import sys\n"
        "from chainlens_ops.storage import open_storage\n"
        "open_storage('/nonexistent/repo')\n"
        "heavy = {'boto3', 'botocore', 'psycopg', 'typer', 'rich', 'click', 'urllib3'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    result = subprocess.run(
        [PYTHON, "-c", code], capture_output=True, text=True, check=True, cwd="/"
    )
    assert result.stdout.strip() == "[]"
