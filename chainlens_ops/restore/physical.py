"""Point-in-time restore into a data folder: check the folder, extract the base backup
(checked against its manifest as it streams), write the recovery settings, and
optionally start the server and wait until it reached the target.

Nothing is written before every check has passed (`check_data_dir`, `make_plan`).
A failure during extraction removes what the extraction wrote (the folder was empty or
its old contents had been moved aside, which are kept and named).
"""

from __future__ import annotations

import io
import os
import shlex
import shutil
import sys
import tarfile
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from chainlens_ops.errors import OperationFailed, UsageError
from chainlens_ops.pg.recovery import RecoverySettings, write_recovery_settings
from chainlens_ops.repository import Repository
from chainlens_ops.repository.datacodec import CheckedReader
from chainlens_ops.restore.plan import LATEST, RestorePlan
from chainlens_ops.restore.server import StartResult, start_and_wait

ACTIONS = ("promote", "pause", "shutdown")
ARCHIVE_MODES = ("off", "preserve")
BASE_OBJECT = "base.tar.zst"


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


@dataclass(frozen=True)
class RestoreResult:
    plan: RestorePlan
    pgdata: str
    dry_run: bool
    moved_aside: str | None = None
    extracted_bytes: int = 0
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
    if os.geteuid() == 0:
        raise UsageError(
            "run the restore as the OS user that runs PostgreSQL (e.g. `sudo -u postgres`), "
            "not root: the data folder must belong to the server's user"
        )
    if not os.access(pgdata if pgdata.exists() else pgdata.parent, os.W_OK):
        raise UsageError(f"cannot write into {pgdata if pgdata.exists() else pgdata.parent}")


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


def restore_command(repo: Repository, config_file: Path | None) -> str:
    """Our `wal fetch` as PostgreSQL runs it: the same tool, repository and config."""
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
    parts += ["wal", "fetch", "--repo", shlex.quote(repo.url), "%f", "%p"]
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


def restore(repo: Repository, plan: RestorePlan, options: RestoreOptions) -> RestoreResult:
    """Carry out `plan` into options.pgdata (see the module docstring)."""
    pgdata = options.pgdata
    check_data_dir(pgdata, force=options.force)
    if options.dry_run:
        return RestoreResult(plan=plan, pgdata=str(pgdata), dry_run=True)
    started_at = time.monotonic()
    command = restore_command(repo, options.config_file)
    moved = _move_aside(pgdata) if pgdata.is_dir() and any(pgdata.iterdir()) else None
    created = not pgdata.exists()
    pgdata.mkdir(mode=0o700, exist_ok=True)
    try:
        extracted = _extract(repo, plan, pgdata)
        (pgdata / "pg_wal" / "archive_status").mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(pgdata, 0o700)
        settings = RecoverySettings(
            restore_command=command,
            target_kind=None if plan.target.kind == LATEST else plan.target.kind,
            target_value=plan.recovery_target,
            target_action=options.target_action,
            archive_mode="off" if options.archive_mode == "off" else None,
        )
        written = write_recovery_settings(pgdata, settings)
    except BaseException as exc:
        _empty(pgdata, remove=created)
        if moved is not None and isinstance(exc, OperationFailed):
            exc.message += f" (the old contents of {pgdata} are kept in {moved})"
        raise
    result = RestoreResult(
        plan=plan, pgdata=str(pgdata), dry_run=False, moved_aside=moved,
        extracted_bytes=extracted, settings=written,
        seconds=time.monotonic() - started_at,
    )  # fmt: skip
    if options.start:
        started = start_and_wait(pgdata, plan, options.target_action, options.port,
                                 options.start_timeout)  # fmt: skip
        result = replace(result, started=started, seconds=time.monotonic() - started_at)
    return result


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


def _extract(repo: Repository, plan: RestorePlan, pgdata: Path) -> int:
    obj = next((o for o in plan.backup.objects if o.key.endswith("/" + BASE_OBJECT)), None)
    if obj is None:
        raise OperationFailed(f"backup {plan.backup.id} has no {BASE_OBJECT}")
    with CheckedReader(repo.storage, obj) as reader:
        buffered = io.BufferedReader(reader, 1024 * 1024)
        try:
            with tarfile.open(fileobj=buffered, mode="r|") as tar:
                for member in tar:
                    _check_member(member)
                    tar.extract(member, pgdata)
        except tarfile.TarError as exc:
            raise OperationFailed(f"{obj.key} is not a readable tar stream: {exc}") from None
        reader.drain()  # the rest of the stream, so the size and sha256 are checked
        return reader.raw_size


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
