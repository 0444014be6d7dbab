"""Start a restored data folder and wait, bounded, until recovery reached its target.

pg_ctl starts the server on the chosen port (its log in the data folder); then we poll:
`promote` is done when the server left recovery, `pause` when replay is paused at the
target, `shutdown` when the server stopped after "recovery stopping". A server that
exits early, or a deadline passed, raises RecoveryFailed carrying the log's tail.

The checks connect over TCP to 127.0.0.1 on the port (or $PGHOST when set), as the
current OS user unless $PGUSER says otherwise; a password comes from $PGPASSFILE.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg

from chainlens_ops.core.errors import OperationFailed
from chainlens_ops.pg.cluster import LocalCluster, ServerStartFailed, loopback_conninfo
from chainlens_ops.pg.scratch import ScratchCluster
from chainlens_ops.restore.plan import RestorePlan

LOG_NAME = "chainlens-restore.log"
POLL_S = 0.1


class RecoveryFailed(OperationFailed):
    """The restored server did not reach its target; `log_tail` says why."""

    def __init__(self, message: str, log_tail: list[str]) -> None:
        super().__init__(message)
        self.log_tail = log_tail


@dataclass(frozen=True)
class StartResult:
    port: int
    state: str  # promoted | paused | shut down
    replay_lsn: str | None
    timeline: int | None
    log: str
    seconds: float


def start_and_wait(
    pgdata: Path,
    plan: RestorePlan,
    action: str,
    port: int | None,
    timeout: float,
    on_poll: Callable[[], None] | None = None,  # each wait round (replay progress)
    scratch: ScratchCluster | None = None,  # a scratch server answers on its own socket
) -> StartResult:
    log = pgdata / LOG_NAME
    port = port or 5432
    started = time.monotonic()
    server = LocalCluster(pgdata, port, plan.backup.server_version // 10000, log)
    # wait=False: do not let pg_ctl wait (its 60 s default would give up on a long
    # recovery while the server goes on); the loop below waits for the right state.
    try:
        server.start(wait=False, timeout=60)
    except ServerStartFailed as exc:
        raise RecoveryFailed(f"the restored server did not start: {exc.reason}",
                             exc.log_tail) from None  # fmt: skip
    conninfo = scratch.conninfo() if scratch is not None else loopback_conninfo(port)
    # `--latest` (or no target action applies): recovery ends at the end of the archive
    # and PostgreSQL promotes.
    wanted = action if plan.recovery_target is not None else "promote"
    deadline = started + timeout
    seen_pid = False
    while True:
        if on_poll is not None:
            on_poll()
        if time.monotonic() > deadline:
            raise RecoveryFailed(
                f"the restored server did not reach the target within {timeout:g}s "
                f"(still running on port {port})",
                server.log_tail(),
            )
        alive = (pgdata / "postmaster.pid").exists()
        seen_pid = seen_pid or alive
        if not alive and not seen_pid and time.monotonic() < started + 10:
            time.sleep(POLL_S)  # pg_ctl returned before the postmaster wrote its pid file
            continue
        if not alive:
            text = server.read_log()
            if wanted == "shutdown" and "recovery stopping" in text:
                return StartResult(port, "shut down", _stop_lsn(text), None, str(log),
                                   time.monotonic() - started)  # fmt: skip
            raise RecoveryFailed(
                f"the restored server stopped before reaching the target (log {log})",
                server.log_tail(),
            )
        state = _poll(conninfo, wanted) if server.accepting_connections() else None
        if state is not None:
            lsn, timeline = state
            label = "promoted" if wanted == "promote" else "paused"
            return StartResult(port, label, lsn, timeline, str(log), time.monotonic() - started)
        time.sleep(POLL_S)


def _poll(conninfo: str, wanted: str) -> tuple[str | None, int | None] | None:
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            in_recovery = bool(conn.execute("SELECT pg_is_in_recovery()").fetchone()[0])  # type: ignore[index]
            if wanted == "promote" and not in_recovery:
                row = conn.execute(
                    "SELECT pg_last_wal_replay_lsn()::text, "
                    "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int"
                ).fetchone()
                assert row is not None
                return row[0], int(row[1])
            if wanted == "pause" and in_recovery:
                row = conn.execute(
                    "SELECT pg_get_wal_replay_pause_state(), pg_last_wal_replay_lsn()::text, "
                    "(SELECT timeline_id FROM pg_control_checkpoint())"
                ).fetchone()
                assert row is not None
                if row[0] == "paused":
                    return row[1], int(row[2])
    except psycopg.OperationalError:
        return None  # starting up, or not accepting connections yet
    return None


def _stop_lsn(text: str) -> str | None:
    for line in reversed(text.splitlines()):
        if "recovery stopping" in line:
            return line.split("recovery stopping", 1)[1].strip()
    return None
