"""Shared set-up for real point-in-time recovery tests (local and S3 repositories):
a source cluster archiving with our `wal push`, base backups taken before later rows,
and servers restoring from a backup with our `wal fetch` as restore_command."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from conftest import ClusterFactory
from pgharness import PG_BIN, PgCluster, as_postgres, free_port, run_checked, wait_for


def source_with_backups(
    make_cluster: ClusterFactory, archive_command: str, *, backups: int = 1, batches: int = 1
) -> tuple[PgCluster, list[Path]]:
    """A cluster archiving with `archive_command`; rows 1..10 before `backups` base
    backups, then `batches` batches of 1000 rows, each ending with a WAL switch, so the
    later rows live only in the archive, spread over several segments. Stopped on return
    (everything archived)."""
    from test_wal import switch_and_wait

    source = make_cluster(start=False, archive_mode="on", archive_command=archive_command)
    source.start()
    source.execute("CREATE TABLE t (n int); INSERT INTO t SELECT generate_series(1, 10)")
    datas = [make_cluster.dir(f"backup{i}") / "data" for i in range(backups)]
    for data in datas:
        run_checked(
            as_postgres([str(PG_BIN / "pg_basebackup"), "-d", source.conninfo(), "-D", str(data)]),
            cwd="/",
        )
    for batch in range(batches):
        first = 11 + batch * 1000
        source.execute(f"INSERT INTO t SELECT generate_series({first}, {first + 999})")
        switch_and_wait(source)
    source.stop()
    return source, datas


def restoring(make_cluster: ClusterFactory, data: Path, restore_command: str) -> PgCluster:
    """A server (not started) that will recover `data` to the end of the archive."""
    cluster = PgCluster(data, free_port())
    cluster.configure(archive_mode="off", restore_command=restore_command)
    (data / "recovery.signal").touch()
    make_cluster.made.append(cluster)
    return cluster


def recover_fully(cluster: PgCluster) -> int:
    """Start, wait for promotion, return the row count."""
    cluster.start()
    wait_for(lambda: not cluster.scalar("SELECT pg_is_in_recovery()"), timeout=60)
    return int(cluster.scalar("SELECT count(*) FROM t"))


def assert_recovery_stops_fatally(cluster: PgCluster) -> str:
    """The server must refuse to finish recovery: FATAL from restore_command's 255, never
    'ready to accept connections', never a new timeline."""
    with contextlib.suppress(RuntimeError):
        cluster.start(timeout=60)  # returns once a hot standby accepts read-only queries
    try:
        wait_for(lambda: not cluster.is_running(), timeout=60)
    except Exception:
        pytest.fail("recovery did not stop:\n" + cluster.read_log()[-3000:])
    log = cluster.read_log()
    assert "exit code 255" in log, log[-3000:]
    assert "database system is ready to accept connections" not in log
    assert not cluster.is_running()
    assert not list((cluster.data / "pg_wal").glob("*.history"))  # never promoted
    return log
