"""Restore claims: what a running restore or drill still reads, so prune leaves it alone.

A restore reads its base backup while it extracts and the archived WAL while its server
replays, possibly for hours. It does not take the repository lock (that would make it
wait for a running backup, and a backup wait for it); instead it holds a *shared claim*:
the object `locks/claims/<token>.json`, naming its owner like the lock does (host, pid
and process identity, command, expiry) and, once the plan is made, the base backup it
restores. A heartbeat renews it every ttl/3, as the lock's does; a claim whose process
died expires like the lock (at once when the owner was on this host and its process is
gone, after the ttl otherwise).

Prune, holding the lock, reads the live claims and keeps every claimed backup (and so,
by its own rule, every WAL segment from that backup's start on); a claim that names no
backup yet (its restore is still planning) keeps everything.

The order that closes the race between "restore plans" and "prune deletes": the restore
writes its claim first and only then reads the lock; while a prune holds the lock, it
waits for it to end. Prune takes the lock first and only then reads the claims. So
either the prune took the lock before the restore looked (the restore waits, then plans
on the pruned repository) or after (the prune sees the claim).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace

from chainlens_ops.repository.layout import CLAIMS_PREFIX as CLAIM_PREFIX
from chainlens_ops.repository.lock import (
    DEFAULT_WAIT_S,
    Heartbeat,
    LockOwner,
    RepositoryLocked,
    default_ttl,
    own_owner,
    owner_is_dead_here,
    parse_owner,
    read_lock,
    utc_text,
)
from chainlens_ops.storage import NotFound, StorageError
from chainlens_ops.storage.protocol import Storage

PRUNE_COMMAND = "backup prune"  # the lock's command while a prune holds it
_POLL_S = 0.25


@dataclass(frozen=True)
class Claim:
    owner: LockOwner
    backup_id: str | None  # None: still planning; every backup is claimed

    def describe(self) -> str:
        return self.owner.describe()

    def to_bytes(self) -> bytes:
        return json.dumps({**self.owner.__dict__, "backup_id": self.backup_id}, indent=1).encode()


def claim_key(token: str) -> str:
    return f"{CLAIM_PREFIX}{token}.json"


class RestoreClaim:
    """One restore's claim. Use `hold()`; `scope(backup_id)` once the plan is made."""

    def __init__(
        self,
        storage: Storage,
        command: str,
        *,
        ttl_s: float | None = None,
        wait_s: float = DEFAULT_WAIT_S,
    ) -> None:
        self.storage = storage
        self.command = command
        self.ttl_s = ttl_s if ttl_s is not None else default_ttl()
        self.wait_s = wait_s
        self.claim: Claim | None = None
        self._heartbeat: Heartbeat | None = None

    @contextmanager
    def hold(self) -> Iterator[RestoreClaim]:
        self.take()
        try:
            yield self
        finally:
            self.release()

    def take(self) -> Claim:
        owner = own_owner(self.command, self.ttl_s)
        self.claim = Claim(owner, None)
        self._write()
        self._heartbeat = Heartbeat(self._beat, self.ttl_s, "repo-claim")
        try:
            self._wait_for_prune()
        except BaseException:
            self.release()
            raise
        return self.claim

    def scope(self, backup_id: str) -> None:
        """Narrow the claim to the backup the plan chose (and its WAL)."""
        assert self.claim is not None
        self.claim = replace(self.claim, backup_id=backup_id)
        self._write()

    def release(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        claim, self.claim = self.claim, None
        if claim is not None:
            with suppress(StorageError):  # it expires on its own
                self.storage.delete(claim_key(claim.owner.token))

    def _write(self) -> None:
        assert self.claim is not None
        owner = replace(self.claim.owner, expires_at=time.time() + self.ttl_s)
        self.claim = replace(self.claim, owner=owner)
        self.storage.put(claim_key(owner.token), io.BytesIO(self.claim.to_bytes()))

    def _wait_for_prune(self) -> None:
        deadline = time.monotonic() + self.wait_s
        while True:
            holder, _ = read_lock(self.storage)
            if holder is None or not holder.command.startswith(PRUNE_COMMAND):
                return
            if holder.expires_at < time.time() or owner_is_dead_here(holder):
                return  # a dead prune deletes nothing more
            if time.monotonic() >= deadline:
                raise RepositoryLocked(
                    f"repository {self.storage.url} is being pruned by {holder.describe()}",
                    hint="retry when the prune has ended",
                )
            time.sleep(_POLL_S)

    def _beat(self) -> bool:
        if self.claim is None:
            return False
        self._write()
        return True


def _parse_claim(raw: bytes) -> Claim | None:
    owner = parse_owner(raw)
    if owner is None:
        return None
    try:
        backup_id = json.loads(raw).get("backup_id")
    except (ValueError, AttributeError):
        return None
    return Claim(owner, str(backup_id) if backup_id is not None else None)


def live_claims(
    storage: Storage, *, remove_stale: bool = False, ttl_s: float | None = None
) -> list[Claim]:
    """The claims of running restores. Dead ones (expired, or of a process of this host
    that is gone) are left out, and deleted when `remove_stale`. An unreadable claim
    counts as live and unscoped until it is older than the ttl."""
    ttl = ttl_s if ttl_s is not None else default_ttl()
    live: list[Claim] = []
    for info in list(storage.list(CLAIM_PREFIX)):
        try:
            with storage.open(info.key) as fh:
                claim = _parse_claim(fh.read(64 * 1024))
        except NotFound:
            continue  # released meanwhile
        if claim is None:
            if info.mtime + ttl >= time.time():
                unknown = LockOwner("?", "?", 0, f"an unreadable claim {info.key}",
                                    utc_text(info.mtime), info.mtime + ttl)  # fmt: skip
                live.append(Claim(unknown, None))
                continue
        elif claim.owner.expires_at >= time.time() and not owner_is_dead_here(claim.owner):
            live.append(claim)
            continue
        if remove_stale:
            with suppress(StorageError):
                storage.delete(info.key)
    return live
