"""The repository lock: backup, prune and catalog writes of one repository never interleave.

One protocol for every backend, over the storage abstraction, so it holds across
processes *and hosts* (an S3 bucket, or a folder on shared storage):

- the lock is the object `locks/repository.lock`, created with a conditional put
  (`if_absent`: `If-None-Match: *` on S3, `link()` locally), so exactly one taker wins;
- it names its owner (host, pid, command, time) and carries an expiry; while held, a
  heartbeat thread rewrites it every ttl/3 with a later expiry, so long work keeps it;
- a waiter that finds the lock expired takes it over, and so does one that finds it held
  by a process *of this host* that no longer exists (pid and process start time, so a
  reused pid is not mistaken for the owner): a killed backup does not block the next one
  for a ttl. For another host's owner only the expiry counts. Hosts are told apart by
  hostname: two hosts sharing a repository must not share one;
- the takeover happens only after winning a conditional put of
  `locks/takeover-<token of the dead lock>` (only one waiter can win that for a given
  dead lock) and re-reading that the dead lock is still the one in place; the takeover
  is reported in one line naming the dead owner;
- the heartbeat notices when the lock is no longer ours (taken over after we stalled
  past the expiry); `check()` then raises LockLost, and the work stops before
  publishing anything more.

Why not flock(2): it does not reach across hosts (S3 has none; NFS's is unreliable) and
leaves no owner to name. The cost of one protocol: expiry compares the holder's clock
with the waiter's, so hosts' clocks must agree to well within the ttl (NTP does).

The WAL hooks (`wal push`/`wal fetch`) never take this lock: they write only WAL, whose
rules (conditional puts, same bytes or refuse) need no lock, and they must not wait.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime

from chainlens_ops.core.crashpoints import crash_point
from chainlens_ops.core.errors import OperationFailed
from chainlens_ops.repository.layout import LOCK_KEY, TAKEOVER_PREFIX
from chainlens_ops.storage import AlreadyExists, NotFound, StorageError
from chainlens_ops.storage.protocol import Storage

DEFAULT_WAIT_S = 60.0
_POLL_S = 0.25
_TAKEOVER_MARKER_AGE_S = 86400.0


class RepositoryLocked(OperationFailed):
    """Another process holds the repository lock (and it has not expired)."""


class LockLost(OperationFailed):
    """Our lock expired and another process took it over: stop writing."""


@dataclass(frozen=True)
class LockOwner:
    token: str
    host: str
    pid: int
    command: str
    acquired_at: str
    expires_at: float
    process: str = ""  # process_identity(pid) when written; "" from older versions

    def describe(self) -> str:
        return f"`{self.command}` (pid {self.pid} on {self.host}, since {self.acquired_at})"

    def to_bytes(self) -> bytes:
        return json.dumps(self.__dict__, indent=1).encode() + b"\n"


def parse_owner(raw: bytes) -> LockOwner | None:
    try:
        data = json.loads(raw)
        return LockOwner(
            token=str(data["token"]),
            host=str(data["host"]),
            pid=int(data["pid"]),
            command=str(data["command"]),
            acquired_at=str(data["acquired_at"]),
            expires_at=float(data["expires_at"]),
            process=str(data.get("process", "")),
        )
    except (ValueError, KeyError, TypeError):
        return None


def utc_text(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def process_identity(pid: int) -> str | None:
    """`<boot id>:<start time in clock ticks>` of a live process; None when there is no
    such process (or /proc cannot tell). A pid reused after the owner died has another
    start time, and one reused after a reboot another boot id."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat.rsplit(")", 1)[-1].split()
    if len(fields) < 20:
        return None
    return f"{_boot_id()}:{fields[19]}"  # field 22 of proc(5): starttime


def owner_is_dead_here(owner: LockOwner) -> bool:
    """True only when `owner` names a process of this host that no longer exists.

    Another host's owner, an owner written without a process identity, or a system
    without /proc: False (only the expiry decides then)."""
    if owner.host != socket.gethostname() or not owner.process:
        return False
    if not os.path.isdir("/proc/self"):
        return False
    return process_identity(owner.pid) != owner.process


def default_ttl() -> float:
    """For a lock or claim made without the repository's `[repository] lock_ttl`: the
    setting's default (one number, in chainlens_ops.settings.config)."""
    from chainlens_ops.settings.config import DEFAULT_LOCK_TTL_S

    return DEFAULT_LOCK_TTL_S


class Heartbeat:
    """Renews a record every `ttl_s / 3` in a daemon thread, for the lock and for a
    restore's claim alike: `beat()` returns False when there is nothing left to renew
    (the lock was lost); a StorageError is transient and the next beat tries again
    before expiry."""

    def __init__(self, beat: Callable[[], bool], ttl_s: float, name: str) -> None:
        self._beat = beat
        self._interval = ttl_s / 3
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            try:
                if not self._beat():
                    return
            except StorageError:
                continue

    def stop(self) -> None:
        """No more renewals (again: a no-op); the record then expires unless removed."""
        self._stopping.set()
        self._thread.join()


def read_lock(storage: Storage) -> tuple[LockOwner | None, float | None]:
    """The lock's owner (None if unreadable) and its mtime (None if there is no lock)."""
    try:
        info = storage.stat(LOCK_KEY)
        with storage.open(LOCK_KEY) as fh:
            raw = fh.read(64 * 1024)
    except NotFound:
        return None, None
    return parse_owner(raw), info.mtime


class RepositoryLock:
    """The lock of one repository, for one command. Use `hold()` or acquire/release."""

    def __init__(
        self,
        storage: Storage,
        command: str,
        *,
        ttl_s: float | None = None,
        wait_s: float = DEFAULT_WAIT_S,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self.storage = storage
        self.command = command
        self.ttl_s = ttl_s if ttl_s is not None else default_ttl()
        self.wait_s = wait_s
        self.notify = notify
        self.owner: LockOwner | None = None
        self.takeover_notice: str | None = None
        self._lost: str | None = None
        self._heartbeat: Heartbeat | None = None

    # -- taking and giving back --------------------------------------------------------

    def acquire(self) -> LockOwner:
        deadline = time.monotonic() + self.wait_s
        while True:
            mine = self._fresh()
            try:
                self.storage.put(LOCK_KEY, io.BytesIO(mine.to_bytes()), if_absent=True)
                return self._held(mine)
            except AlreadyExists:
                pass
            current, mtime = self._read()
            if current is None and mtime is None:
                continue  # released between our put and our read: try again at once
            expired = (
                current.expires_at < time.time()
                if current is not None
                else (mtime or 0) + self.ttl_s < time.time()  # unreadable: judge by age
            )
            dead_here = current is not None and not expired and owner_is_dead_here(current)
            if expired or dead_here:
                taken = self._take_over(current)
                if taken is not None:
                    return taken
            if time.monotonic() >= deadline:
                who = current.describe() if current else "an unreadable lock"
                until = f", expires {utc_text(current.expires_at)}" if current else ""
                if expired or dead_here:
                    until = " (expired; another process is taking it over)"
                raise RepositoryLocked(
                    f"repository {self.storage.url} is locked by {who}{until}",
                    hint="wait for it to finish, or retry later",
                )
            time.sleep(_POLL_S)

    def release(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        owner, self.owner = self.owner, None
        if owner is None or self._lost:
            return
        current, _ = self._read()
        if current is not None and current.token == owner.token:
            self.storage.delete(LOCK_KEY)
        self._clean_takeover_markers()

    @contextmanager
    def hold(self) -> Iterator[RepositoryLock]:
        self.acquire()
        try:
            yield self
        except BaseException:
            # The work failed: say why. A release failing too (S3 gone mid-upload) must
            # not replace that with an error about the lock; the lock then expires.
            with suppress(StorageError):
                self.release()
            raise
        self.release()

    def check(self) -> None:
        """Raise LockLost if the lock is no longer ours (call before publishing)."""
        if self._lost:
            raise LockLost(self._lost)
        if self.owner is None:
            raise LockLost(f"the lock of repository {self.storage.url} is not held")
        if self.owner.expires_at < time.time():
            raise LockLost(
                f"the lock of repository {self.storage.url} expired before it was refreshed"
            )

    # -- internals --------------------------------------------------------------------

    def _fresh(self) -> LockOwner:
        return own_owner(self.command, self.ttl_s)

    def _held(self, owner: LockOwner) -> LockOwner:
        self.owner = owner
        self._lost = None
        self._heartbeat = Heartbeat(self._beat, self.ttl_s, "repo-lock")
        crash_point("repo-lock-acquired")
        return owner

    def _read(self) -> tuple[LockOwner | None, float | None]:
        return read_lock(self.storage)

    def _take_over(self, dead: LockOwner | None) -> LockOwner | None:
        token = dead.token if dead is not None else "unreadable"
        mine = self._fresh()
        # Generation n of the marker for this dead lock: one winner each. A marker older
        # than the ttl belongs to a taker that died mid-takeover: the next one may try.
        for generation in range(1000):
            marker = f"{TAKEOVER_PREFIX}{token}-{generation}"
            try:
                self.storage.put(marker, io.BytesIO(mine.to_bytes()), if_absent=True)
                break
            except AlreadyExists:
                try:
                    if self.storage.stat(marker).mtime + self.ttl_s > time.time():
                        return None  # another waiter is taking this dead lock over
                except NotFound:
                    return None
        else:
            return None
        again, mtime = self._read()
        if (again.token if again else None) != (dead.token if dead else None) or mtime is None:
            return None  # the lock changed meanwhile: start over
        self.storage.put(LOCK_KEY, io.BytesIO(mine.to_bytes()))
        if dead is not None and dead.expires_at >= time.time():
            notice = (
                f"took over the repository lock of {dead.describe()}: its process no "
                "longer exists on this host"
            )
        elif dead is not None:
            notice = (
                f"took over the repository lock of {dead.describe()}, which expired at "
                f"{utc_text(dead.expires_at)} without being refreshed (its process is gone "
                "or hung)"
            )
        else:
            notice = "took over an unreadable, expired repository lock"
        self.takeover_notice = notice
        if self.notify:
            self.notify(notice)
        return self._held(mine)

    def _beat(self) -> bool:
        owner = self.owner
        if owner is None:
            return False
        current, _ = self._read()
        if current is None or current.token != owner.token:
            who = current.describe() if current else "nobody"
            self._lost = (
                f"lost the lock of repository {self.storage.url}: it expired and is "
                f"now held by {who}"
            )
            return False
        renewed = LockOwner(**{**owner.__dict__, "expires_at": time.time() + self.ttl_s})
        self.storage.put(LOCK_KEY, io.BytesIO(renewed.to_bytes()))
        self.owner = renewed
        return True

    def _clean_takeover_markers(self) -> None:
        cutoff = time.time() - max(_TAKEOVER_MARKER_AGE_S, 10 * self.ttl_s)
        try:
            for info in list(self.storage.list(TAKEOVER_PREFIX)):
                if info.mtime < cutoff:
                    self.storage.delete(info.key)
        except StorageError:
            pass  # markers are small; the next release tries again


_OWN_IDENTITY: dict[int, str] = {}


def _own_identity() -> str:
    """This process's identity (cached per pid: a forked child is another process)."""
    pid = os.getpid()
    if pid not in _OWN_IDENTITY:
        _OWN_IDENTITY[pid] = process_identity(pid) or ""
    return _OWN_IDENTITY[pid]


def own_owner(command: str, ttl_s: float) -> LockOwner:
    """A new owner record naming this process (the lock's, or a restore claim's)."""
    now = time.time()
    return LockOwner(
        token=secrets.token_hex(12),
        host=socket.gethostname(),
        pid=os.getpid(),
        command=command,
        acquired_at=utc_text(now),
        expires_at=now + ttl_s,
        process=_own_identity(),
    )
