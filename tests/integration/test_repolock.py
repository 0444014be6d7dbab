"""The repository lock across processes, on both backends: writers never interleave; a
lock left by a killed process of another host is taken over once it expired, and one of
this host at once (its process is gone), naming the dead owner."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import MotoServer
from pgharness import VENV

from chainlens_ops.repository.lock import LOCK_KEY, LockLost, RepositoryLock, RepositoryLocked
from chainlens_ops.storage import open_storage
from chainlens_ops.storage.protocol import Storage
from chainlens_ops.storage.s3 import S3Settings

# One writer: takes the lock, logs start/end around a short critical section, N times.
WRITER = r"""
import json, os, sys, time
from chainlens_ops.core.crashpoints import crash_point
from chainlens_ops.repository.lock import RepositoryLock
from chainlens_ops.storage import open_storage
url, log, rounds, ttl = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
lock = RepositoryLock(open_storage(url), "test-writer", ttl_s=ttl, wait_s=60)
for i in range(rounds):
    with lock.hold():
        with open(log, "a") as fh:
            fh.write(f"start {os.getpid()}\n")
        crash_point("repo-lock-held")
        time.sleep(0.15)
        with open(log, "a") as fh:
            fh.write(f"end {os.getpid()}\n")
    if lock.takeover_notice:
        print(lock.takeover_notice, flush=True)
"""


@pytest.fixture(params=["local", "s3"])
def repo_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    if request.param == "local":
        yield f"file://{tmp_path / 'repo'}"
        return
    server: MotoServer = request.getfixturevalue("moto_server")
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    yield f"s3://{request.getfixturevalue('s3_bucket')}/repo"


def writer(url: str, log: Path, rounds: int, ttl: float, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(VENV / "bin" / "python"), "-c", WRITER, url, str(log), str(rounds), str(ttl)],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def storage_of(url: str) -> Storage:
    return open_storage(url, S3Settings())


def test_two_processes_never_interleave(repo_url: str, tmp_path: Path) -> None:
    log = tmp_path / "log"
    procs = [writer(repo_url, log, 4, 30) for _ in range(2)]
    for proc in procs:
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    lines = log.read_text().split()
    events = list(zip(lines[0::2], lines[1::2], strict=True))
    assert len(events) == 16 and {pid for _, pid in events} == {str(p.pid) for p in procs}
    # Every start is followed by the end of the same writer: no overlap, ever.
    for (kind1, pid1), (kind2, pid2) in zip(events[0::2], events[1::2], strict=True):
        assert (kind1, kind2) == ("start", "end") and pid1 == pid2, events
    # Released at the end: nothing holds it.
    assert not [o for o in storage_of(repo_url).list("locks/") if o.key == LOCK_KEY]


def test_a_killed_holders_lock_is_taken_over_after_expiry(repo_url: str, tmp_path: Path) -> None:
    log = tmp_path / "log"
    dead = writer(repo_url, log, 1, 3, CHAINLENS_CRASH_AT="repo-lock-held")
    dead.wait(timeout=60)
    assert dead.returncode == -9 and log.read_text() == f"start {dead.pid}\n"
    storage = storage_of(repo_url)
    with storage.open(LOCK_KEY) as fh:
        left = json.loads(fh.read())
    assert left["pid"] == dead.pid and left["command"] == "test-writer"
    # As if it had run on another host: there, only the expiry tells that it died.
    left["host"] = "another-host"
    storage.put(LOCK_KEY, io.BytesIO(json.dumps(left).encode()))

    # Before it expires, a writer that will not wait is refused, naming the owner.
    impatient = RepositoryLock(storage, "backup", wait_s=0)
    with pytest.raises(RepositoryLocked) as caught:
        impatient.acquire()
    assert f"locked by `test-writer` (pid {dead.pid} on" in caught.value.one_line()

    # A patient writer takes it over once expired, and says whose it was.
    started = time.monotonic()
    heir = writer(repo_url, log, 1, 30)
    out, err = heir.communicate(timeout=60)
    assert heir.returncode == 0, err
    assert f"took over the repository lock of `test-writer` (pid {dead.pid} on" in out
    assert "without being refreshed" in out
    assert time.monotonic() - started < 30
    assert log.read_text().split()[-2:] == ["end", str(heir.pid)]


def test_a_killed_holder_of_this_host_is_taken_over_at_once(repo_url: str, tmp_path: Path) -> None:
    """kill -9 at the crash point `repo-lock-acquired` with a 120 s ttl: the next taker
    does not wait for the expiry, since the owner's process is gone from this host."""
    log = tmp_path / "log"
    dead = writer(repo_url, log, 1, 120, CHAINLENS_CRASH_AT="repo-lock-acquired")
    dead.wait(timeout=60)
    assert dead.returncode == -9 and not log.exists()  # killed right after taking it
    with storage_of(repo_url).open(LOCK_KEY) as fh:
        left = json.loads(fh.read())
    assert left["pid"] == dead.pid and left["expires_at"] > time.time() + 60
    started = time.monotonic()
    heir = writer(repo_url, log, 1, 120)
    out, err = heir.communicate(timeout=60)
    assert heir.returncode == 0, err
    assert f"took over the repository lock of `test-writer` (pid {dead.pid} on" in out
    assert "no longer exists on this host" in out
    assert time.monotonic() - started < 15
    assert log.read_text().split() == ["start", str(heir.pid), "end", str(heir.pid)]


def test_the_heartbeat_keeps_a_long_hold_and_a_stalled_holder_loses_it(repo_url: str) -> None:
    storage = storage_of(repo_url)
    holder = RepositoryLock(storage, "backup", ttl_s=1.5)
    holder.acquire()
    time.sleep(2.5)  # longer than the ttl: only the heartbeat keeps it
    with pytest.raises(RepositoryLocked):
        RepositoryLock(storage, "prune", wait_s=0.5).acquire()
    holder.check()

    # A holder that stalls (its heartbeat stops) past the expiry loses the lock.
    assert holder._heartbeat is not None
    holder._heartbeat.stop()
    other = RepositoryLock(storage, "prune", ttl_s=30, wait_s=10)
    other.acquire()
    assert other.takeover_notice and "`backup`" in other.takeover_notice
    with pytest.raises(LockLost):
        holder.check()
    holder.release()  # must not delete the new owner's lock
    with pytest.raises(RepositoryLocked):
        RepositoryLock(storage, "backup", wait_s=0).acquire()
    other.release()
    with RepositoryLock(storage, "backup", wait_s=0).hold():
        pass
