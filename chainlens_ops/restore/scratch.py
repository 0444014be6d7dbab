"""A scratch server: a backup restored into a throwaway folder, recovered to the plan's
target on a free loopback port and left paused there (read-only, in recovery), then
stopped and removed on every way out: success, failure, Ctrl-C and SIGTERM.

This is the one place `restore table` starts and stops its scratch cluster, so it can
move onto the shared local cluster control (`pg/cluster.py`) in one edit. The server
runs as the current OS user (the tool refuses root), with archive_mode off: it never
pushes WAL into the repository it restores from.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from chainlens_ops.crashpoints import pause_point
from chainlens_ops.errors import OperationFailed, UsageError
from chainlens_ops.repository import Repository
from chainlens_ops.restore.drill import free_port
from chainlens_ops.restore.physical import RestoreOptions, restore
from chainlens_ops.restore.plan import RestorePlan
from chainlens_ops.restore.selective import Selection
from chainlens_ops.restore.server import start_and_wait, stop_server

SCRATCH_PREFIX = "chainlens-table-"
PAUSE_RECOVERING = "table-scratch-recovering"  # pause point: the scratch server is up
Say = Callable[[str], None]


class Terminated(OperationFailed):
    """SIGTERM arrived; raised in the main thread so every cleanup runs."""

    exit_code = 143  # 128 + SIGTERM, as a shell reports it


@dataclass(frozen=True)
class ScratchServer:
    folder: Path
    pgdata: Path
    port: int
    extracted_bytes: int
    skipped_bytes: int
    extract_seconds: float
    recovery_seconds: float
    replay_lsn: str | None


@contextmanager
def scratch_server(
    repo: Repository,
    plan: RestorePlan,
    selection: Selection | None,
    *,
    root: Path | None,
    timeout: float,
    config_file: Path | None,
    say: Say,
) -> Iterator[ScratchServer]:
    folder = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=root))
    pgdata = folder / "data"
    major = plan.backup.server_version // 10000
    previous = _trap_sigterm()
    try:
        say(f"extracting backup {plan.backup.id} into {pgdata}")
        began = time.monotonic()
        port = free_port()
        options = RestoreOptions(pgdata=pgdata, target_action="pause", port=port,
                                 config_file=config_file, selection=selection)  # fmt: skip
        restored = restore(repo, plan, options)
        extracted = time.monotonic()
        say(f"recovering to {plan.recovery_target} on 127.0.0.1:{port}")
        started = start_and_wait(pgdata, plan, "pause", port, timeout)
        pause_point(PAUSE_RECOVERING)
        yield ScratchServer(
            folder=folder,
            pgdata=pgdata,
            port=port,
            extracted_bytes=restored.extracted_bytes,
            skipped_bytes=restored.skipped_bytes,
            extract_seconds=extracted - began,
            recovery_seconds=started.seconds,
            replay_lsn=started.replay_lsn,
        )
    finally:
        try:
            if (pgdata / "postmaster.pid").exists():
                stop_server(pgdata, major)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            _restore_sigterm(previous)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated("stopped by SIGTERM; the scratch server was stopped and removed")


def _trap_sigterm() -> Any:
    """SIGTERM as an exception, so `finally` blocks run (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _on_sigterm)


def _restore_sigterm(previous: Any) -> None:
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous)


def scratch_free_bytes(root: Path | None) -> tuple[Path, int]:
    """The folder scratch copies go into (as tempfile picks it) and its free space."""
    where = Path(root) if root is not None else Path(tempfile.gettempdir())
    if not where.is_dir():
        raise UsageError(f"scratch folder {where} does not exist")
    return where, shutil.disk_usage(where).free
