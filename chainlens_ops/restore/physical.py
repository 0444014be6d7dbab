"""Point-in-time restore into a data folder: check the folder, extract the base backup
(checked against its manifest as it streams), write the recovery settings, and
optionally start the server and wait until it reached the target.

Nothing is written before every check has passed (`check_data_dir`, `make_plan`).
A failure during extraction removes what the extraction wrote (the folder was empty or
its old contents had been moved aside, which are kept and named).

A restore never promotes short of its plan:
- `planned_restore` holds a claim on the repository (`chainlens_ops.repository.claim`) from
  before the plan until the server reached its target, so `backup prune` keeps the
  backup and the WAL it reads;
- the restore_command it writes names the plan's last segments (`wal fetch
  --required-through`): one that is missing when the server asks for it stops recovery
  (fatal), instead of ending it early;
- after the server says it is done, `check_replay_reached` compares where replay got
  with the plan (the end of the archive for `--latest`, the target LSN or restore
  point): short of it, the server is stopped and the restore fails saying what was
  missing.
"""

from __future__ import annotations

import io
import os
import shlex
import shutil
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from chainlens_ops.backup.manifest import FILES_LAYOUT, read_catalog
from chainlens_ops.core.crashpoints import pause_point
from chainlens_ops.core.errors import OperationFailed, UsageError
from chainlens_ops.pg.cluster import LocalCluster
from chainlens_ops.pg.ports import DEFAULT_PORT, port_in_use
from chainlens_ops.pg.recovery import RecoverySettings, write_recovery_settings
from chainlens_ops.pg.scratch import ScratchCluster
from chainlens_ops.pg.walnames import lsn_text, parse_lsn, parse_wal_name
from chainlens_ops.repository import Repository
from chainlens_ops.repository.datacodec import CheckedReader
from chainlens_ops.repository.layout import BASE_TAR_NAME as BASE_OBJECT
from chainlens_ops.restore.assemble import assemble
from chainlens_ops.restore.plan import LATEST, LSN, NAME, TIME, RestorePlan, Target, make_plan
from chainlens_ops.restore.replay import ReplayWatch
from chainlens_ops.restore.selective import Selection, write_placeholder
from chainlens_ops.restore.server import LOG_NAME, RecoveryFailed, StartResult, start_and_wait
from chainlens_ops.storage.local import user_name

ACTIONS = ("promote", "pause", "shutdown")
ARCHIVE_MODES = ("off", "preserve")
TAR_BLOCK = 1024 * 1024


@dataclass(frozen=True)
class RestoreOptions:
    pgdata: Path
    target_action: str = "promote"
    archive_mode: str = "off"
    force: bool = False
    dry_run: bool = False
    start: bool = False
    port: int | None = None
    start_timeout: float = 600.0
    config_file: Path | None = None
    # Only these databases readable (`restore --db-only`, `restore table`): see selective.py
    selection: Selection | None = None
    # A drill's or table restore's throwaway server: its own socket, hba and limits
    # (pg/scratch.py scratch_server_settings), whatever the backed-up configuration says.
    scratch: ScratchCluster | None = None


@dataclass(frozen=True)
class RestoreProgress:
    """Hooks a caller (the CLI's progress display) passes; the core never prints.
    `extracting(total)` once, then `extracted(n)` per n more bytes of the base backup
    (uncompressed); `replayed(n, m)` when WAL replay restored segment n of m."""

    extracting: Callable[[int], None] = lambda total: None
    extracted: Callable[[int], None] = lambda n: None
    replayed: Callable[[int, int], None] = lambda n, m: None


@dataclass(frozen=True)
class RestoreResult:
    plan: RestorePlan
    pgdata: str
    dry_run: bool
    moved_aside: str | None = None
    extracted_bytes: int = 0
    skipped_bytes: int = 0  # written as sparse placeholders
    settings: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    started: StartResult | None = None


def check_data_dir(pgdata: Path, *, force: bool) -> None:
    """Refuse a folder a restore must not touch; reads only."""
    if not pgdata.is_absolute():
        raise UsageError(f"--pgdata must be an absolute path, not {str(pgdata)!r}")
    if pgdata.exists() and not pgdata.is_dir():
        raise UsageError(f"{pgdata} exists and is not a folder")
    if not pgdata.parent.is_dir():
        raise UsageError(f"{pgdata.parent} does not exist")
    pid = live_postmaster(pgdata)
    if pid is not None:
        raise UsageError(
            f"{pgdata} belongs to a running server (postmaster.pid: pid {pid})",
            hint="stop it first; a restore never replaces a live data folder",
        )
    if pgdata.is_dir() and any(pgdata.iterdir()) and not force:
        raise UsageError(
            f"{pgdata} is not empty",
            hint="--force moves its contents aside into a sibling folder (nothing is deleted)",
        )
    refuse_root()
    folder = pgdata if pgdata.exists() else pgdata.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise _unwritable(folder, pgdata)


def refuse_root() -> None:
    if os.geteuid() == 0:
        raise UsageError(
            "run the restore as the OS user that runs PostgreSQL (e.g. `sudo -u postgres`), "
            "not root: the data folder must belong to the server's user"
        )


def _unwritable(folder: Path, pgdata: Path) -> UsageError:
    """Which user cannot write where, and the one command that fixes it."""
    user = user_name(os.geteuid())
    info = folder.stat()
    fix = (f"as root: chown {user}: {pgdata} && chmod 700 {pgdata}" if folder == pgdata
           else f"as root: install -d -o {user} -m 700 {pgdata}")  # fmt: skip
    return UsageError(
        f"{user} (the OS user running this restore, who must be the server's) cannot write "
        f"into {folder} (owned by {user_name(info.st_uid)}, mode {info.st_mode & 0o7777:o})",
        hint=f"{fix}; or choose a --pgdata in a folder {user} owns",
    )


def check_start_port(options: RestoreOptions) -> None:
    """With --start, refuse a taken port before anything is extracted (the server would
    fail to bind only after the extraction)."""
    if not options.start:
        return
    port = options.port or DEFAULT_PORT
    why = port_in_use(port)
    if why is not None:
        default = "" if options.port else f" (--start uses {DEFAULT_PORT} unless told)"
        raise UsageError(
            f"port {port} is already in use: {why}{default}; nothing was extracted",
            hint="choose a free port with --port N",
        )


def live_postmaster(pgdata: Path) -> int | None:
    try:
        first = (pgdata / "postmaster.pid").read_text().split("\n", 1)[0].strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return -1  # present but unreadable: assume live
    try:
        pid = int(first)
    except ValueError:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def restore_command(
    repo: Repository, config_file: Path | None, required: tuple[str, ...] = ()
) -> str:
    """Our `wal fetch` as PostgreSQL runs it: the same tool, repository and config, and
    the plan's last segments, which it must not answer "absent" for."""
    tool = _tool_path()
    parts: list[str] = []
    creds = os.environ.get("AWS_SHARED_CREDENTIALS_FILE")
    if creds:  # a path, not a secret: the server needs the same credentials we use
        parts.append(f"AWS_SHARED_CREDENTIALS_FILE={shlex.quote(os.path.abspath(creds))}")
    if repo.key_file:  # a path too: the key stays in its file
        parts.append(f"CHAINLENS_REPO_KEY_FILE={shlex.quote(os.path.abspath(repo.key_file))}")
    parts.append(shlex.quote(tool))
    config = config_file or (Path(os.environ["CHAINLENS_CONFIG"])
                             if os.environ.get("CHAINLENS_CONFIG") else None)  # fmt: skip
    if config is not None:
        parts += ["--config", shlex.quote(str(config.resolve()))]
    parts += ["wal", "fetch", "--repo", shlex.quote(repo.url)]
    if required:
        parts += ["--required-through", ",".join(required)]
    parts += ["%f", "%p"]
    # '%' in a path would be read as a placeholder by PostgreSQL.
    fixed = [p if p in ("%f", "%p") else p.replace("%", "%%") for p in parts]
    return " ".join(fixed)


def _tool_path() -> str:
    argv0 = Path(sys.argv[0])
    if argv0.name == "chainlens-ops" and argv0.exists():
        return str(argv0.resolve().parent / argv0.name) if not argv0.is_absolute() else str(argv0)
    sibling = Path(sys.executable).parent / "chainlens-ops"
    if sibling.exists():
        return str(sibling)
    found = shutil.which("chainlens-ops")
    if found:
        return found
    raise OperationFailed("cannot find the chainlens-ops executable for restore_command")


def planned_restore(
    repo: Repository,
    target: Target,
    backup_id: str | None,
    options: RestoreOptions,
    *,
    command: str = "restore",
    on_plan: Callable[[RestorePlan], None] | None = None,
    progress: RestoreProgress | None = None,
) -> RestoreResult:
    """Plan and carry out a restore under a claim on the repository (see the module
    docstring); `on_plan` sees the plan before anything is written."""
    if options.dry_run:
        plan = make_plan(repo, target, backup_id)
        if on_plan is not None:
            on_plan(plan)
        return restore(repo, plan, options, progress)
    with repo.locks.claim(command).hold() as claim:
        plan = make_plan(repo, target, backup_id)
        claim.scope(plan.backup.id)
        if on_plan is not None:
            on_plan(plan)
        return restore(repo, plan, options, progress)


def restore(
    repo: Repository,
    plan: RestorePlan,
    options: RestoreOptions,
    progress: RestoreProgress | None = None,
) -> RestoreResult:
    """Carry out `plan` into options.pgdata (see the module docstring)."""
    progress = progress or RestoreProgress()
    pgdata = options.pgdata
    check_data_dir(pgdata, force=options.force)
    check_start_port(options)
    if options.dry_run:
        return RestoreResult(plan=plan, pgdata=str(pgdata), dry_run=True)
    started_at = time.monotonic()
    command = restore_command(repo, options.config_file, plan.required_wal)
    moved = _move_aside(pgdata) if pgdata.is_dir() and any(pgdata.iterdir()) else None
    created = not pgdata.exists()
    pgdata.mkdir(mode=0o700, exist_ok=True)
    try:
        extracted, skipped = _extract(repo, plan, pgdata, progress, options.selection)
        (pgdata / "pg_wal" / "archive_status").mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(pgdata, 0o700)
        settings = RecoverySettings(
            restore_command=command,
            target_kind=None if plan.target.kind == LATEST else plan.target.kind,
            target_value=plan.recovery_target,
            target_action=options.target_action,
            archive_mode="off" if options.archive_mode == "off" else None,
            server=options.scratch.server_settings() if options.scratch is not None else {},
        )
        written = write_recovery_settings(pgdata, settings)
    except BaseException as exc:
        _empty(pgdata, remove=created)
        if moved is not None and isinstance(exc, OperationFailed):
            exc.message += f" (the old contents of {pgdata} are kept in {moved})"
        raise
    result = RestoreResult(
        plan=plan, pgdata=str(pgdata), dry_run=False, moved_aside=moved,
        extracted_bytes=extracted, skipped_bytes=skipped, settings=written,
        seconds=time.monotonic() - started_at,
    )  # fmt: skip
    if options.start:
        watch = ReplayWatch(pgdata / LOG_NAME, plan, progress.replayed)
        try:
            started = start_and_wait(
                pgdata, plan, options.target_action, options.port, options.start_timeout,
                on_poll=watch.poll, scratch=options.scratch,
            )  # fmt: skip
        except RecoveryFailed as exc:
            missing = next((line for line in exc.log_tail if "required WAL segment" in line), None)
            if missing is not None:
                exc.message += ": " + missing.split("error: wal fetch: fatal: ", 1)[-1]
            raise
        watch.poll()  # the segments restored since the last round
        check_replay_reached(pgdata, plan, started)
        result = replace(result, started=started, seconds=time.monotonic() - started_at)
    return result


def check_replay_reached(pgdata: Path, plan: RestorePlan, started: StartResult) -> None:
    """Raise RecoveryFailed (after stopping the server) unless replay got as far as the
    plan: into its last segment for `--latest`, to the target LSN or restore point."""
    if started.state == "shut down":
        return  # stopped after "recovery stopping": the target was reached
    short = replay_shortfall(plan, started.replay_lsn, _read_text(Path(started.log)))
    if short is None:
        return
    LocalCluster(pgdata, 0, plan.backup.server_version // 10000).stop("immediate")
    raise RecoveryFailed(
        f"the restored server {started.state} at {started.replay_lsn}, short of the plan: "
        f"{short}; WAL was missing when the server asked for it. The server was stopped; "
        f"do not use {pgdata}",
        _read_text(Path(started.log)).splitlines()[-20:],
    )


def replay_shortfall(plan: RestorePlan, replay_lsn: str | None, log: str) -> str | None:
    """What replay is missing compared with the plan (None: it got there)."""
    kind = plan.target.kind
    if kind == TIME:
        return None if "recovery stopping" in log else "the target time was not reached"
    try:
        replayed = parse_lsn(replay_lsn) if replay_lsn else None
    except ValueError:
        replayed = None
    if kind in (LSN, NAME):
        goal = plan.target.lsn if kind == LSN else (
            parse_lsn(plan.restore_point_lsn) if plan.restore_point_lsn else None)  # fmt: skip
        if goal is None or (replayed is not None and replayed >= goal):
            return None
        return f"the target {plan.recovery_target} (at {lsn_text(goal)}) was not reached"
    assert kind == LATEST
    last = parse_wal_name(plan.wal_last).segno(plan.seg_size)
    if replayed is not None and replayed // plan.seg_size >= last:
        return None
    # A record that fills the whole last segment ends past it: fetching it is enough.
    if f'restored log file "{plan.wal_last}" from archive' in log:
        return None
    return f"replay did not reach {plan.wal_last}, the newest archived segment when it began"


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _move_aside(pgdata: Path) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = pgdata.with_name(f"{pgdata.name}.before-restore-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = pgdata.with_name(f"{pgdata.name}.before-restore-{stamp}-{n}")
    try:
        aside.mkdir(mode=0o700)
        for entry in pgdata.iterdir():
            os.rename(entry, aside / entry.name)
    except OSError as exc:
        raise OperationFailed(
            f"cannot move the contents of {pgdata} aside into {aside}: {exc.strerror or exc}"
        ) from None
    return str(aside)


def _extract(
    repo: Repository,
    plan: RestorePlan,
    pgdata: Path,
    progress: RestoreProgress,
    selection: Selection | None = None,
) -> tuple[int, int]:
    if plan.backup.layout == FILES_LAYOUT:
        chain = read_catalog(repo).chain(plan.backup)
        pause_point("restore-extracting")
        done = assemble(repo, chain, pgdata, extracting=progress.extracting,
                        extracted=progress.extracted, selection=selection)  # fmt: skip
        return done.written + done.skipped, done.skipped  # as a tar's: skipped included
    obj = next((o for o in plan.backup.objects if o.key.endswith("/" + BASE_OBJECT)), None)
    if obj is None:
        raise OperationFailed(f"backup {plan.backup.id} has no {BASE_OBJECT}")
    skipped = 0
    progress.extracting(obj.raw_size)
    with CheckedReader(repo.backups, obj) as reader:
        pause_point("restore-extracting")
        buffered = io.BufferedReader(_Reporting(reader, progress.extracted), 1024 * 1024)
        try:
            # 1 MiB blocks: tarfile's default (10 KiB reads, 16 KiB copies) costs more
            # Python calls than the decompression itself, and skipping a member reads
            # through it in the same blocks.
            with tarfile.open(fileobj=buffered, mode="r|", bufsize=TAR_BLOCK) as tar:
                tar.copybufsize = TAR_BLOCK  # type: ignore[attr-defined]  # not in typeshed
                for member in tar:
                    _check_member(member)
                    if selection is not None and selection.skips(member):
                        write_placeholder(member, pgdata)
                        skipped += member.size
                        continue
                    tar.extract(member, pgdata)
        except tarfile.TarError as exc:
            raise OperationFailed(f"{obj.key} is not a readable tar stream: {exc}") from None
        reader.drain()  # the rest of the stream, so the size and sha256 are checked
        return reader.raw_size, skipped


class _Reporting(io.RawIOBase):
    """Passes reads through, telling `seen` how many bytes each one brought."""

    def __init__(self, raw: io.RawIOBase, seen: Callable[[int], None]) -> None:
        super().__init__()
        self._raw = raw
        self._seen = seen

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        n = self._raw.readinto(buffer) or 0
        if n:
            self._seen(n)
        return n


def _check_member(member: tarfile.TarInfo) -> None:
    """Only plain relative paths: a damaged or foreign tar must not write elsewhere."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts:
        raise OperationFailed(f"the base backup holds an unsafe path {member.name!r}")
    if not (member.isfile() or member.isdir()):  # -Ft to stdout: no tablespace links
        raise OperationFailed(f"the base backup holds an unexpected entry {member.name!r}")
    member.mode &= 0o700 if member.isdir() else 0o600
    if member.isdir():
        member.mode |= 0o700


def _empty(pgdata: Path, *, remove: bool) -> None:
    """Remove what a failed restore wrote (the folder was empty before it)."""
    if not pgdata.is_dir():
        return
    for entry in pgdata.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    if remove:
        pgdata.rmdir()
