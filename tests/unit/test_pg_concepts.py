"""PostgreSQL concepts in chainlens_ops.pg without a server: LSN text, pg_waldump's
record lines, and the scratch registry's sweep of folders whose owner is gone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chainlens_ops.pg import scratch
from chainlens_ops.pg.cluster import quote_setting
from chainlens_ops.pg.waldump import is_end_of_wal, parse_record
from chainlens_ops.pg.walnames import lsn_text, parse_lsn

RESTORE_POINT = (
    "rmgr: XLOG        len (rec/tot):     98/    98, tx:          0, lsn: 0/0301B0E8, "
    "prev 0/0301B0B0, desc: RESTORE_POINT before b"
)
COMMIT = (
    "rmgr: Transaction len (rec/tot):     34/    34, tx:        736, lsn: 0/0301C1A0, "
    "prev 0/0301C158, desc: COMMIT 2026-12-06 10:31:07.123456 UTC"
)
PREPARED = (
    "rmgr: Transaction len (rec/tot):     38/    38, tx:        740, lsn: 1F/0000A0C8, "
    "prev 1F/0000A090, desc: ABORT_PREPARED 739: 2026-12-06 10:31:09 UTC"
)


@given(st.integers(0, 2**64 - 1))
def test_lsn_text_round_trips(lsn: int) -> None:
    assert parse_lsn(lsn_text(lsn)) == lsn


def test_lsn_text_is_postgresqls_form() -> None:
    assert lsn_text(0x16B374D848) == "16/B374D848"
    assert lsn_text(0x0301B0E8) == "0/301B0E8"


def test_a_restore_point_record() -> None:
    record = parse_record(RESTORE_POINT)
    assert record is not None
    assert (record.rmgr, record.total_length, record.xid, record.lsn) == (
        "XLOG", 98, 0, "0/0301B0E8",
    )  # fmt: skip
    assert record.restore_point == "before b"  # a name made in SQL may hold spaces
    assert record.transaction_end is None


def test_commit_and_abort_times_are_utc() -> None:
    commit = parse_record(COMMIT)
    assert commit is not None and commit.restore_point is None
    assert commit.transaction_end == datetime(2026, 12, 6, 10, 31, 7, 123456, tzinfo=UTC)
    prepared = parse_record(PREPARED)
    assert prepared is not None and prepared.lsn == "1F/0000A0C8"
    assert prepared.transaction_end == datetime(2026, 12, 6, 10, 31, 9, tzinfo=UTC)


def test_lines_that_are_not_records() -> None:
    assert parse_record("") is None
    assert parse_record("pg_waldump: error: error in WAL record at 0/3000060") is None
    heap = COMMIT.replace("Transaction", "Heap").replace("COMMIT 2026", "INSERT off 3")
    assert parse_record(heap) is not None and parse_record(heap).transaction_end is None  # type: ignore[union-attr]


def test_the_end_of_the_wal_is_not_an_error() -> None:
    assert is_end_of_wal("pg_waldump: error: error in WAL record at 0/3000060: invalid record")
    assert is_end_of_wal('pg_waldump: error: could not find file "000000010000000000000004"')
    assert not is_end_of_wal("pg_waldump: error: could not open directory: Permission denied")


def test_settings_are_quoted_for_postgresql_conf() -> None:
    assert quote_setting("cp %p '/x y'") == "'cp %p ''/x y'''"
    assert quote_setting(10) == "'10'"
    assert quote_setting(True) == "'on'"


# -- the scratch registry ---------------------------------------------------------------


@pytest.fixture
def tmpdir_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import tempfile

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    return tmp_path


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    return int(child.stdout)


def test_a_scratch_folder_is_registered_and_removed_with_its_context(tmpdir_env: Path) -> None:
    with scratch.ScratchCluster("drill", root=tmpdir_env) as box:
        box.pgdata.mkdir()
        (box.pgdata / "PG_VERSION").write_text("15\n")
        entries = list(scratch.registry_dir().glob("*.json"))
        assert [json.loads(e.read_text())["folder"] for e in entries] == [str(box.folder)]
        assert box.port > 0 and box.cluster.pgdata == box.pgdata
        folder = box.folder
    assert not folder.exists()
    assert list(scratch.registry_dir().glob("*.json")) == []


def test_a_folder_too_deep_for_a_socket_gets_a_private_one_removed_with_it(
    tmpdir_env: Path,
) -> None:
    """sun_path holds 107 bytes: a deep scratch folder's server gets its socket in a
    private (0700) folder in /tmp, removed with the scratch folder, and by the sweep
    when the owner died."""
    deep = tmpdir_env / ("d" * 90)
    deep.mkdir()
    with scratch.ScratchCluster("table", root=deep) as box:
        assert not scratch.socket_fits(box.folder)
        socket_dir = box.socket_dir
        assert socket_dir.parent == Path("/tmp") and socket_dir.stat().st_mode & 0o777 == 0o700
        assert f"host={socket_dir} " in box.conninfo("db1") and "dbname=db1" in box.conninfo("db1")
        (entry,) = scratch.registry_dir().glob("*.json")
        assert json.loads(entry.read_text())["socket"] == str(socket_dir)
    assert not socket_dir.exists() and not box.folder.exists()
    with scratch.ScratchCluster("drill", root=Path("/tmp")) as box:
        assert box.socket_dir == box.folder  # short enough: the socket stays inside
    registry = scratch.registry_dir()
    lost = Path(tempfile.mkdtemp(prefix="clo-", dir="/tmp"))
    folder = deep / "chainlens-table-dead"
    folder.mkdir()
    entry = {"folder": str(folder), "purpose": "table", "pid": dead_pid(), "started": "1",
             "socket": str(lost)}  # fmt: skip
    (registry / "dead.json").write_text(json.dumps(entry))
    scratch.sweep_scratch()
    assert not lost.exists() and not folder.exists()


def test_an_exception_still_removes_the_folder(tmpdir_env: Path) -> None:
    with pytest.raises(RuntimeError), scratch.ScratchCluster("table", root=tmpdir_env) as box:
        box.pgdata.mkdir()
        raise RuntimeError("restore failed")
    assert not box.folder.exists()


def test_sigterm_inside_the_context_raises_and_cleans_up(tmpdir_env: Path) -> None:
    import signal

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(scratch.Terminated), scratch.ScratchCluster("drill") as box:
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # the handler runs between bytecodes
            pass
    assert not box.folder.exists()
    assert box.folder.parent == tmpdir_env  # default root: TMPDIR
    assert signal.getsignal(signal.SIGTERM) == before  # restored


def test_sweep_removes_folders_of_dead_owners_and_keeps_live_ones(tmpdir_env: Path) -> None:
    registry = scratch.registry_dir()
    registry.mkdir()
    dead = tmpdir_env / "chainlens-drill-dead"
    (dead / "data").mkdir(parents=True)
    (dead / "data" / "base.bin").write_bytes(b"x" * 4096)
    live = tmpdir_env / "chainlens-drill-live"
    live.mkdir()
    reused = tmpdir_env / "chainlens-drill-reused"  # a pid reused by another process
    reused.mkdir()
    (reused / "f").write_bytes(b"y" * 10)
    me, my_start = os.getpid(), scratch.process_start(os.getpid())
    for folder, pid, started in ((dead, dead_pid(), "1"), (live, me, my_start),
                                 (reused, me, "1")):  # fmt: skip
        entry = {"folder": str(folder), "purpose": "drill", "pid": pid, "started": started}
        (registry / f"{folder.name}.json").write_text(json.dumps(entry))
    (registry / "garbled.json").write_text("{")

    swept = scratch.sweep_scratch()
    assert sorted((s.folder, s.bytes_freed, s.server_stopped) for s in swept) == [
        (str(dead), 4096, False), (str(reused), 10, False),
    ]  # fmt: skip
    assert "left by a dead drill" in swept[0].describe()
    assert not dead.exists() and not reused.exists() and live.exists()
    assert sorted(p.name for p in registry.iterdir()) == ["chainlens-drill-live.json"]
    assert scratch.sweep_scratch() == []  # nothing more to do
