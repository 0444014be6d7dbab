"""Processes and what they leave: children that die with their parent, secret keywords
kept out of argv and messages, the leftovers of killed commands, a failed job's error
line. No PostgreSQL: `sleep` and temp folders stand in."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chainlens_ops.backup.leftovers import Cleanup, remove_dead_backups, remove_dead_spools
from chainlens_ops.backup.parallel import OWNER_FILE, process_identity, spool_folder
from chainlens_ops.core.errors import ConfigError
from chainlens_ops.daemon.runner import error_line
from chainlens_ops.pg.binaries import connection_for_binary
from chainlens_ops.repository import Repository
from chainlens_ops.settings.config import mask_secrets, redact_conninfo

SECRET, SSL_SECRET = "pw-s3cret", "ssl-s3cret"


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _wait_gone(pid: int, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_child_of_the_process_wrapper_dies_when_its_parent_is_killed() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from chainlens_ops.pg.process import PgStream\n"
         "s = PgStream(['sleep', '60'])\n"
         "print(s.pid, flush=True)\n"
         "time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )  # fmt: skip
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert _alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert _wait_gone(child), "sleep outlived the process that started it"


def test_secret_keywords_leave_the_connection_string_for_env_and_an_in_memory_file() -> None:
    shown, env = connection_for_binary(
        f"host=db port=5432 user=ops password={SECRET} sslpassword={SSL_SECRET}"
    )
    assert SECRET not in shown and SSL_SECRET not in shown
    assert "service=chainlens_secrets" in shown
    assert env["PGPASSWORD"] == SECRET
    service = Path(env["PGSERVICEFILE"])
    assert service.read_text() == f"[chainlens_secrets]\nsslpassword={SSL_SECRET}\n"
    assert "(deleted)" in os.readlink(service)  # in memory, never on disk
    # The same secret again: the same file, not one more.
    assert connection_for_binary(f"host=x sslpassword={SSL_SECRET}")[1] == {
        "PGSERVICEFILE": str(service)
    }
    # Without secrets, nothing changes; with a service of the user's, no silent mix.
    plain, none = connection_for_binary("host=db passfile=/p")
    assert sorted(plain.split()) == ["host=db", "passfile=/p"] and none == {}
    with pytest.raises(ConfigError, match="sslpassword"):
        connection_for_binary(f"service=prod sslpassword={SSL_SECRET}")


@pytest.mark.parametrize(
    "conninfo",
    [
        f"host=h password={SECRET} sslpassword={SSL_SECRET}",
        f"postgresql://u:{SECRET}@h/db?sslpassword={SSL_SECRET}",
    ],
)
def test_redaction_removes_every_secret_keyword(conninfo: str) -> None:
    for text in (redact_conninfo(conninfo), mask_secrets(f"pg_dump -d '{conninfo}'")):
        assert SECRET not in text and SSL_SECRET not in text, text


def test_a_failed_jobs_error_line_comes_from_stderr_never_from_json() -> None:
    out = ["{", '  "ok": false', "}"]
    assert error_line(["chainlens-ops: needs action: x", "more"], out, True) == (
        "chainlens-ops: needs action: x"
    )
    assert error_line(["pg_dump: error: boom"], out, True) == "pg_dump: error: boom"
    assert error_line([], ["done 3", "failed 1"], False) == "failed 1"
    assert "}" not in error_line([], out, True)


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_spools_of_dead_processes_are_removed_and_others_kept(tmp_path: Path) -> None:
    with spool_folder(str(tmp_path), "backup-mine") as mine:
        Path(mine, "toc.dat").write_bytes(b"x" * 1000)
        owner = Path(mine, OWNER_FILE).read_text().split()
        assert process_identity(os.getpid()) == " ".join(owner)
        dead = tmp_path / "chainlens-backup-dead-1"
        other_host = tmp_path / "chainlens-restore-far-1"
        reused = tmp_path / "chainlens-verify-reused-1"  # a live pid, another start time
        for folder, text in (
            (dead, f"{owner[0]} {_dead_pid()} 1"),
            (other_host, f"elsewhere {_dead_pid()} 1"),
            (reused, f"{owner[0]} {os.getpid()} 1"),
        ):
            folder.mkdir()
            (folder / OWNER_FILE).write_text(text)
            (folder / "dump.pgc").write_bytes(b"y" * 5000)
        unowned = tmp_path / "chainlens-backup-old-1"  # an older version's, recent: kept
        unowned.mkdir()

        dry = remove_dead_spools(str(tmp_path), dry_run=True)
        assert sorted(dry.spools) == sorted([str(dead), str(reused)]) and dead.exists()
        done = remove_dead_spools(str(tmp_path))
        assert sorted(done.spools) == sorted(dry.spools)
        assert done.bytes_freed >= 10000
        assert not dead.exists() and not reused.exists()
        assert Path(mine).exists() and other_host.exists() and unowned.exists()
    assert not Path(mine).exists()


def test_dead_backups_and_stale_writes_are_removed_live_ones_kept(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    repo = Repository(str(root))
    put = repo.storage.put
    put("backups/good/manifest.json", io.BytesIO(json.dumps({}).encode()))
    put("backups/good/dump.zst", io.BytesIO(b"g" * 100))
    put("backups/dead/dump.d/toc.dat.zst", io.BytesIO(b"d" * 300))
    gone = subprocess.Popen(["true"])  # a pid that no longer exists on this host
    gone.wait()
    dead, live = gone.pid, os.getpid()
    temp = {
        "dead": root / f"backups/dead/dump.d/.1.dat.zst.{dead}-ab.tmp",  # its killed upload
        "only": root / f"backups/only/.dump.zst.{dead}-cd.tmp",  # a backup killed at once
        "proof": root / f"backups/good/.verify-x.json.{live}-ef.tmp",  # a live write: kept
        "wal_old": root / f"wal/0000000100000000/.seg.{live}-01.tmp",  # stale: removed
        "wal_new": root / f"wal/0000000100000000/.seg.{live}-02.tmp",  # a live push: kept
    }
    for path in temp.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"t" * 1000)
    old = time.time() - 7200
    os.utime(temp["wal_old"], (old, old))

    dry = remove_dead_backups(repo, dry_run=True)
    assert dry.backups == ["dead", "only"] and dry.unpublished == 3
    assert all(p.exists() for p in temp.values())
    done = remove_dead_backups(repo)
    assert done == dry and done.bytes_freed == 300 + 3 * 1000
    assert sorted(p.name for p in (root / "backups").iterdir()) == ["good"]
    assert [k for k, p in temp.items() if p.exists()] == ["proof", "wal_new"]
    assert [i.key for i in repo.storage.list("backups/")] == [
        "backups/good/dump.zst",
        "backups/good/manifest.json",
    ]


def test_cleanup_summary_says_what_and_how_much() -> None:
    assert Cleanup().summary() is None
    both = Cleanup(["/s/chainlens-backup-x"], [], 0, 1536) + Cleanup([], ["b1"], 2, 1024 * 1024)
    assert both.summary() == (
        "leftovers of killed commands: 1 spool folder(s) (/s/chainlens-backup-x), "
        "1 backup(s) without a manifest, 2 unfinished upload(s) or temp file(s): "
        "freed 1.0 MiB"
    )
    assert "would free" in (both.summary(dry_run=True) or "")
