"""The pure logic behind "a restore never promotes short" and the lock's same-host rule:
which WAL a restore requires, every bad restore target, the owner identity that tells a
dead process from a live one (and a reused pid), and how prune reads restore claims.
Storage here is the local backend in a temporary folder (no server, no network)."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from chainlens_ops.core.errors import EXIT_USAGE, UsageError
from chainlens_ops.pg.walnames import parse_wal_name
from chainlens_ops.repository.claim import CLAIM_PREFIX, RestoreClaim, live_claims
from chainlens_ops.repository.lock import (
    LOCK_KEY,
    RepositoryLock,
    RepositoryLocked,
    own_owner,
    owner_is_dead_here,
    process_identity,
)
from chainlens_ops.restore.physical import replay_shortfall, restore_command
from chainlens_ops.restore.plan import (
    LATEST,
    LSN,
    NAME,
    TIME,
    RestorePlan,
    Target,
    parse_target_lsn,
    parse_target_name,
    parse_target_time,
    required_through,
)
from chainlens_ops.storage import open_storage
from chainlens_ops.storage.protocol import Storage
from chainlens_ops.storage.s3 import S3Settings
from chainlens_ops.wal.fetch import is_required, parse_required
from chainlens_ops.wal.inventory import TimelineSpan

MB = 1024 * 1024


# -- which WAL a restore requires --------------------------------------------------------


def test_required_through_names_the_last_segment_of_each_timeline_on_the_path() -> None:
    one = [TimelineSpan(1, None, None)]
    assert required_through(one, 3, 9, MB) == ("000000010000000000000009",)
    # Timeline 2 begins in segment 6 (the switch segment is read from timeline 2).
    two = [TimelineSpan(1, None, 6), TimelineSpan(2, 6, None)]
    assert required_through(two, 3, 9, MB) == ("000000010000000000000005",
                                               "000000020000000000000009")  # fmt: skip
    assert required_through(two, 7, 9, MB) == ("000000020000000000000009",)
    assert required_through(two, 3, 4, MB) == ("000000010000000000000004",)


def test_a_segment_is_required_only_on_the_plans_timeline_up_to_its_end() -> None:
    required = parse_required("000000010000000000000005,000000020000000000000009")

    def req(name: str) -> bool:
        return is_required(parse_wal_name(name), required)

    assert req("000000010000000000000003") and req("000000010000000000000005")
    assert req("000000020000000000000006") and req("000000020000000000000009")
    # PostgreSQL's probes and fallbacks off the path stay ordinary "absent" answers.
    assert not req("000000020000000000000005")  # timeline 2 before it began
    assert not req("000000010000000000000007")  # timeline 1 after the switch
    assert not req("00000001000000000000000A") and not req("00000002000000000000000A")
    assert not req("00000003.history") and not req("000000030000000000000007")
    # Across a log boundary (segment numbers compare as (log, seg)).
    far = parse_required("000000010000000100000002")
    assert is_required(parse_wal_name("0000000100000000000000FF"), far)
    assert not is_required(parse_wal_name("000000010000000100000003"), far)
    for bad in ("", "nonsense", "00000002.history", "000000010000000000000005.partial"):
        with pytest.raises(UsageError):
            parse_required(bad)


def test_the_restore_command_carries_the_required_segments(tmp_path: Path) -> None:
    from chainlens_ops.repository import Repository

    repo = Repository(f"file://{tmp_path}", S3Settings())
    command = restore_command(repo, None, ("000000010000000000000005",))
    assert "--required-through 000000010000000000000005 %f %p" in command
    assert "--required-through" not in restore_command(repo, None)


# -- every bad restore target: exit 2, one line, before any lookup -----------------------


@pytest.mark.parametrize(
    ("parse", "text", "message"),
    [
        (parse_target_name, "../x", "holds '/'"),
        (parse_target_name, "a/b", "holds '/'"),
        (parse_target_name, "x" * 300, "is 300 bytes; PostgreSQL allows at most 63"),
        (parse_target_name, "é" * 32, "is 64 bytes"),
        (parse_target_name, "", "is empty"),
        (parse_target_name, "two words", "holds ' '"),
        (parse_target_name, "tab\there", "holds '\\t'"),
        (parse_target_name, "nul\x00", "holds '\\x00'"),
        (parse_target_time, "", "cannot read the target time"),
        (parse_target_time, "yesterday", "cannot read the target time"),
        (parse_target_time, "2026-13-01 00:00:00", "cannot read the target time"),
        (parse_target_time, "2026-11-27T25:00:00Z", "cannot read the target time"),
        (parse_target_time, "9" * 300, "too long"),
        (parse_target_lsn, "", "is not an LSN"),
        (parse_target_lsn, "0/", "is not an LSN"),
        (parse_target_lsn, "/0", "is not an LSN"),
        (parse_target_lsn, "G/0", "is not an LSN"),
        (parse_target_lsn, "-1/0", "is not an LSN"),
        (parse_target_lsn, "0x1/0", "is not an LSN"),
        (parse_target_lsn, "1/2/3", "is not an LSN"),
        (parse_target_lsn, "100000000/0", "is not an LSN"),
        (parse_target_lsn, "0/" + "F" * 300, "is not an LSN"),
    ],
)
def test_bad_restore_targets_are_usage_errors(parse: object, text: str, message: str) -> None:
    assert callable(parse)
    with pytest.raises(UsageError) as caught:
        parse(text)
    line = caught.value.one_line()
    assert caught.value.exit_code == EXIT_USAGE
    assert message in line and "\n" not in line and len(line) < 300, line


def test_good_restore_targets_parse() -> None:
    assert parse_target_name("before-b").kind == NAME
    assert parse_target_name("x" * 63).text == "x" * 63
    assert parse_target_name("deploy:v1.2_3").kind == NAME
    assert parse_target_lsn("16/B374D848").lsn == (0x16 << 32) | 0xB374D848
    assert parse_target_lsn("FFFFFFFF/FFFFFFFF").kind == LSN
    assert parse_target_time("2026-11-27 10:33:00.99+00").kind == TIME


# -- the owner identity: dead, alive, reused pid, other host -----------------------------


def storage_at(tmp_path: Path) -> Storage:
    return open_storage(f"file://{tmp_path / 'repo'}", S3Settings())


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_owner_identity_tells_a_dead_process_and_a_reused_pid_from_a_live_one() -> None:
    me = own_owner("backup", 120)
    assert me.process and me.process == process_identity(os.getpid())
    assert not owner_is_dead_here(me)
    assert owner_is_dead_here(replace(me, pid=dead_pid()))
    # The pid is alive, but it is another process than the one that wrote the lock.
    assert owner_is_dead_here(replace(me, process=me.process + "0"))
    # Another host, or an owner written without an identity: only the expiry decides.
    assert not owner_is_dead_here(replace(me, pid=dead_pid(), host="elsewhere"))
    assert not owner_is_dead_here(replace(me, pid=dead_pid(), process=""))


def put_lock(storage: Storage, **fields: object) -> None:
    owner = replace(own_owner("backup --kind base --db x", 120), **fields)  # type: ignore[arg-type]
    storage.put(LOCK_KEY, io.BytesIO(owner.to_bytes()))


def test_a_dead_owners_lock_on_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    storage = storage_at(tmp_path)
    pid = dead_pid()
    put_lock(storage, pid=pid)
    heir = RepositoryLock(storage, "backup", wait_s=0)
    started = time.monotonic()
    heir.acquire()
    assert time.monotonic() - started < 5
    assert heir.takeover_notice is not None
    assert f"(pid {pid} on {socket.gethostname()}" in heir.takeover_notice
    assert "no longer exists on this host" in heir.takeover_notice
    heir.release()


def test_a_live_owner_and_another_hosts_owner_keep_the_lock_until_it_expires(
    tmp_path: Path,
) -> None:
    storage = storage_at(tmp_path)
    for fields in ({}, {"pid": dead_pid(), "host": "elsewhere"}, {"process": ""}):
        put_lock(storage, **({"pid": os.getpid()} | fields))
        with pytest.raises(RepositoryLocked):
            RepositoryLock(storage, "backup", wait_s=0.3).acquire()
        storage.delete(LOCK_KEY)


# -- restore claims as prune reads them --------------------------------------------------


def test_claims_live_scoped_released_and_dead_ones_dropped(tmp_path: Path) -> None:
    storage = storage_at(tmp_path)
    claim = RestoreClaim(storage, "restore", wait_s=1)
    with claim.hold():
        (live,) = live_claims(storage)
        assert live.backup_id is None and live.owner.pid == os.getpid()
        claim.scope("20261206T101010Z-base-x")
        (live,) = live_claims(storage)
        assert live.backup_id == "20261206T101010Z-base-x"
    assert live_claims(storage) == [] and list(storage.list(CLAIM_PREFIX)) == []

    # A claim left by a dead process of this host, an expired one of another host and an
    # unreadable old one are not live; prune removes them.
    dead = replace(own_owner("restore", 120), pid=dead_pid())
    gone = replace(own_owner("restore", 120), host="elsewhere", expires_at=time.time() - 1)
    for owner in (dead, gone):
        body = json.dumps({**owner.__dict__, "backup_id": "b"}).encode()
        storage.put(f"{CLAIM_PREFIX}{owner.token}.json", io.BytesIO(body))
    storage.put(f"{CLAIM_PREFIX}garbled.json", io.BytesIO(b"{not json"))
    assert live_claims(storage, ttl_s=0) == []
    assert len(list(storage.list(CLAIM_PREFIX))) == 3
    assert live_claims(storage, remove_stale=True, ttl_s=0) == []
    assert list(storage.list(CLAIM_PREFIX)) == []
    # An unreadable claim younger than the ttl counts as live and unscoped.
    storage.put(f"{CLAIM_PREFIX}garbled.json", io.BytesIO(b"{not json"))
    (unknown,) = live_claims(storage, ttl_s=60)
    assert unknown.backup_id is None


def test_a_claim_waits_while_a_prune_holds_the_lock(tmp_path: Path) -> None:
    storage = storage_at(tmp_path)
    with RepositoryLock(storage, "backup prune").hold():
        with pytest.raises(RepositoryLocked) as caught:
            RestoreClaim(storage, "restore", wait_s=0.5).take()
        assert "is being pruned by `backup prune`" in caught.value.one_line()
        assert list(storage.list(CLAIM_PREFIX)) == []  # a refused claim is withdrawn
    # Another holder (a backup) does not make a restore wait.
    backup = RepositoryLock(storage, "backup --kind base")
    with backup.hold(), RestoreClaim(storage, "restore", wait_s=0.5).hold():
        assert len(live_claims(storage)) == 1


# -- did replay reach the plan? (the backstop after the server says it is done) ----------


def plan_for(target: Target, wal_last: str, **fields: object) -> RestorePlan:
    """A plan with only what the replay check reads (no backup is opened)."""
    values: dict[str, object] = {
        "repo": "file:///r", "backup": None, "target": target, "recovery_target": None,
        "wal_first": "000000010000000000000002", "wal_last": wal_last,
        "newest_archived": wal_last, "newest_transaction": None, "restore_point_lsn": None,
        "restore_point_source": None, "seg_size": 16 * MB,
    }  # fmt: skip
    values.update(fields)
    return RestorePlan(**values)  # type: ignore[arg-type]


def test_replay_short_of_the_plan_is_named() -> None:
    latest = plan_for(Target(LATEST, "latest"), "000000010000000000000009")
    assert replay_shortfall(latest, "0/9000128", "") is None
    assert replay_shortfall(latest, "0/A000000", "") is None  # after a WAL switch record
    short = replay_shortfall(latest, "0/5FFFF00", "")
    assert short is not None and "did not reach 000000010000000000000009" in short
    assert replay_shortfall(latest, None, "") is not None
    # A record filling the whole last segment ends past it: its fetch is the proof.
    log = 'LOG:  restored log file "000000010000000000000009" from archive\n'
    assert replay_shortfall(latest, "0/8FFFF00", log) is None

    lsn = parse_target_lsn("0/7000100")
    at_lsn = plan_for(lsn, "000000010000000000000007", recovery_target="0/7000100")
    assert replay_shortfall(at_lsn, "0/7000100", "") is None
    assert "0/7000100" in str(replay_shortfall(at_lsn, "0/60000A0", ""))
    point = plan_for(Target(NAME, "before-b"), "000000010000000000000004",
                     recovery_target="before-b", restore_point_lsn="0/4000200")  # fmt: skip
    assert replay_shortfall(point, "0/4000228", "") is None
    assert "before-b" in str(replay_shortfall(point, "0/3000000", ""))
    when = plan_for(parse_target_time("2026-11-27 10:33:00+00"), "000000010000000000000009")
    assert replay_shortfall(when, "0/5000000", "LOG:  recovery stopping before commit") is None
    assert replay_shortfall(when, "0/5000000", "") is not None
