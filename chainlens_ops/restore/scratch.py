"""A scratch server: a backup restored into a throwaway folder, recovered to the plan's
target on a free loopback port and left paused there (read-only, in recovery), then
stopped and removed on every way out: success, failure, Ctrl-C and SIGTERM.

This is the one place `restore table` starts and stops its scratch cluster, through the
shared scratch cluster control (`pg/scratch.py`). The server
runs as the current OS user (the tool refuses root), with archive_mode off: it never
pushes WAL into the repository it restores from.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from chainlens_ops.core.crashpoints import pause_point
from chainlens_ops.core.errors import UsageError
from chainlens_ops.pg.scratch import ScratchCluster
from chainlens_ops.repository import Repository
from chainlens_ops.restore.physical import RestoreOptions, restore
from chainlens_ops.restore.plan import RestorePlan
from chainlens_ops.restore.selective import Selection
from chainlens_ops.restore.server import start_and_wait

PAUSE_RECOVERING = "table-scratch-recovering"  # pause point: the scratch server is up
Say = Callable[[str], None]


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
    conninfo: Callable[[str], str]  # database -> a connection through its own socket


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
    """The shared scratch cluster control (`pg.scratch.ScratchCluster`: stopped and
    removed on every way out, SIGTERM included; a dead run's copy swept by the next)."""
    major = plan.backup.server_version // 10000
    with ScratchCluster("table", root=root, major=major) as scratch:
        pgdata = scratch.pgdata
        say(f"extracting backup {plan.backup.id} into {pgdata}")
        began = time.monotonic()
        options = RestoreOptions(pgdata=pgdata, target_action="pause", port=scratch.port,
                                 config_file=config_file, selection=selection,
                                 scratch=scratch)  # fmt: skip
        restored = restore(repo, plan, options)
        extracted = time.monotonic()
        say(f"recovering to {plan.recovery_target} on 127.0.0.1:{scratch.port}")
        started = start_and_wait(pgdata, plan, "pause", scratch.port, timeout, scratch=scratch)
        pause_point(PAUSE_RECOVERING)
        yield ScratchServer(
            folder=scratch.folder,
            pgdata=pgdata,
            port=scratch.port,
            extracted_bytes=restored.extracted_bytes,
            skipped_bytes=restored.skipped_bytes,
            extract_seconds=extracted - began,
            recovery_seconds=started.seconds,
            replay_lsn=started.replay_lsn,
            conninfo=scratch.conninfo,
        )


def scratch_free_bytes(root: Path | None) -> tuple[Path, int]:
    """The folder scratch copies go into (as tempfile picks it) and its free space."""
    where = Path(root) if root is not None else Path(tempfile.gettempdir())
    if not where.is_dir():
        raise UsageError(f"scratch folder {where} does not exist")
    return where, shutil.disk_usage(where).free
