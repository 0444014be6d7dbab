"""The end-to-end archiving check a DBA runs after wiring `archive_command`.

Each step says what it looked at; the first failing step names what is broken, and the
steps after it are skipped (they would only fail for the same reason):

    connect          the database answers; its system identifier
    archive_mode     on (or always), wal_level not minimal
    archive_command  runs `chainlens-ops wal push ... %p`; if it names a repository
                     with --repo, it is this one
    repository       reachable; belongs to this cluster (or is still empty)
    switch           writes a little WAL and switches segments (pg_switch_wal() does
                     nothing when no WAL was written since the last switch)
    archived         that segment reaches the repository within the timeout
    restorable       the archived object reads back and passes its checksum
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chainlens_ops.core.errors import EXIT_FAILED, ChainlensError
from chainlens_ops.pg.connection import Connection, connect, first_line
from chainlens_ops.pg.walnames import parse_wal_name
from chainlens_ops.repository import Repository
from chainlens_ops.repository.walcodec import decode
from chainlens_ops.settings.config import DatabaseTarget, mask_secrets
from chainlens_ops.storage import NotFound

POLL_S = 0.25


@dataclass(frozen=True)
class CheckStep:
    name: str
    ok: bool | None  # None: skipped because an earlier step failed
    detail: str
    exit_code: int = 0  # of a failed step: 1 broken, 3 unreachable/misconfigured

    @property
    def status(self) -> str:
        return "ok" if self.ok else "skipped" if self.ok is None else "FAILED"


@dataclass(frozen=True)
class HealthReport:
    database: str
    repo: str
    steps: list[CheckStep] = field(default_factory=list)
    segment: str | None = None  # the segment the round trip waited for
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(step.ok for step in self.steps)

    @property
    def failed(self) -> CheckStep | None:
        return next((step for step in self.steps if step.ok is False), None)

    @property
    def exit_code(self) -> int:
        failed = self.failed
        return 0 if failed is None else failed.exit_code


STEPS = (
    "connect",
    "archive_mode",
    "archive_command",
    "repository",
    "switch",
    "archived",
    "restorable",
)


class _StepFailed(Exception):
    pass


def check_archiving(
    target: DatabaseTarget,
    repo: Repository,
    *,
    timeout_s: float = 60.0,
    progress: Callable[[CheckStep], None] | None = None,
) -> HealthReport:
    """Run every step in order; never raises for a failing step (it is in the report)."""
    started = time.monotonic()
    steps: list[CheckStep] = []
    state: dict[str, Any] = {}

    def record(step: CheckStep) -> None:
        steps.append(step)
        if progress:
            progress(step)

    conn: Connection | None = None
    try:
        for name in STEPS:
            try:
                if name == "connect":
                    conn = connect(target)
                    detail = _connect_step(conn, state)
                else:
                    assert conn is not None
                    detail = _STEP_FUNCS[name](conn, repo, state, timeout_s)
                record(CheckStep(name, True, detail))
            except _StepFailed as exc:
                record(CheckStep(name, False, str(exc), EXIT_FAILED))
                break
            except ChainlensError as exc:
                record(CheckStep(name, False, exc.one_line(), exc.exit_code))
                break
            except Exception as exc:  # psycopg errors and the like: report, never crash
                record(CheckStep(name, False, _explain(exc), EXIT_FAILED))
                break
    finally:
        if conn is not None:
            conn.close()
    for name in STEPS[len(steps) :]:
        steps.append(CheckStep(name, None, "skipped"))
    return HealthReport(
        database=target.name,
        repo=repo.url,
        steps=steps,
        segment=state.get("segment"),
        seconds=round(time.monotonic() - started, 3),
    )


def _connect_step(conn: Connection, state: dict[str, Any]) -> str:
    row = conn.execute(
        "SELECT system_identifier, current_setting('server_version') FROM pg_control_system()"
    ).fetchone()
    assert row is not None
    state["sysid"] = int(row[0])
    return f"PostgreSQL {row[1]}, database system {row[0]}"


def _archive_mode_step(conn: Connection, repo: Repository, state: dict[str, Any], _t: float) -> str:
    mode = _setting(conn, "archive_mode")
    level = _setting(conn, "wal_level")
    if mode not in ("on", "always"):
        raise _StepFailed(f"archive_mode is {mode}: set archive_mode = on and restart PostgreSQL")
    if level == "minimal":
        raise _StepFailed("wal_level is minimal: set wal_level = replica and restart")
    return f"archive_mode = {mode}, wal_level = {level}"


def _archive_command_step(
    conn: Connection, repo: Repository, state: dict[str, Any], _t: float
) -> str:
    command = _setting(conn, "archive_command")
    library = _setting(conn, "archive_library")
    if library:
        raise _StepFailed(f"archive_library = {library!r} takes precedence over archive_command")
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    if not any(w.endswith("chainlens-ops") for w in words) or "push" not in words:
        shown = command or "(empty)"
        raise _StepFailed(
            f"archive_command is {mask_secrets(shown)!r}: "
            "expected 'chainlens-ops wal push --repo URL %p'"
        )
    if "%p" not in command:
        raise _StepFailed("archive_command does not pass %p (the WAL file's path)")
    named = _option(words, "--repo")
    if named is not None and not _same_repo(named, repo.url):
        raise _StepFailed(f"archive_command archives to {named}, not to {repo.url}")
    if named is None:
        return "runs chainlens-ops wal push (repository from the server's configuration)"
    return "runs chainlens-ops wal push into this repository"


def _repository_step(conn: Connection, repo: Repository, state: dict[str, Any], _t: float) -> str:
    marker = repo.marker()
    if marker is None:
        return f"{repo.url} is empty (the first archived segment claims it)"
    repo.check_cluster(state["sysid"], what="this database", marker=marker)
    return f"{repo.url} belongs to database system {marker.system_identifier}"


def switch_segment(conn: Connection) -> tuple[str, str]:
    """Write a little WAL and switch segments: (the segment now complete, the LSN).
    pg_switch_wal() alone does nothing when no WAL was written since the last switch."""
    conn.execute("SELECT pg_logical_emit_message(false, 'chainlens-ops', 'check')")
    row = conn.execute(
        "SELECT pg_walfile_name(lsn), lsn::text FROM pg_switch_wal() AS lsn"
    ).fetchone()
    assert row is not None
    return str(row[0]), str(row[1])


def _switch_step(conn: Connection, repo: Repository, state: dict[str, Any], _t: float) -> str:
    archiver = conn.execute("SELECT failed_count FROM pg_stat_archiver").fetchone()
    state["failed_before"] = int(archiver[0]) if archiver else 0
    segment, lsn = switch_segment(conn)
    state["segment"] = segment
    return f"switched at {lsn}: waiting for {segment}"


def _archived_step(
    conn: Connection, repo: Repository, state: dict[str, Any], timeout_s: float
) -> str:
    segment = state["segment"]
    deadline = time.monotonic() + timeout_s
    started = time.monotonic()
    while True:
        try:
            repo.wal.stat(parse_wal_name(segment))
            return f"{segment} archived after {time.monotonic() - started:.1f}s"
        except NotFound:
            pass
        if time.monotonic() > deadline:
            raise _StepFailed(_not_archived(conn, segment, timeout_s, state["failed_before"]))
        time.sleep(POLL_S)


def _restorable_step(conn: Connection, repo: Repository, state: dict[str, Any], _t: float) -> str:
    segment = state["segment"]
    key = repo.wal_key(parse_wal_name(segment))
    with repo.wal.open(parse_wal_name(segment)) as src:
        digest = decode(src, None, name=segment, where=f"{repo.url}: {key}")
    return f"{segment} reads back intact ({digest.size} bytes, sha256 {digest.sha256[:12]}...)"


_STEP_FUNCS: dict[str, Callable[[Connection, Repository, dict[str, Any], float], str]] = {
    "archive_mode": _archive_mode_step,
    "archive_command": _archive_command_step,
    "repository": _repository_step,
    "switch": _switch_step,
    "archived": _archived_step,
    "restorable": _restorable_step,
}


def _not_archived(conn: Connection, segment: str, timeout_s: float, failed_before: int) -> str:
    row = conn.execute(
        "SELECT failed_count, last_failed_wal, last_archived_wal FROM pg_stat_archiver"
    ).fetchone()
    text = f"{segment} did not reach the repository within {timeout_s:g}s"
    if row is not None and int(row[0]) > failed_before:
        text += (
            f"; archive_command failed {int(row[0]) - failed_before} time(s), last for "
            f"{row[1]} (see the server log)"
        )
    elif row is not None:
        text += f"; last archived: {row[2] or 'none'} (is archive_command archiving elsewhere?)"
    return text


# What a non-superuser needs for each step (README, "Privileges").
_GRANTS = {
    "pg_control_system": "GRANT EXECUTE ON FUNCTION pg_control_system() TO {role}",
    "pg_switch_wal": "GRANT EXECUTE ON FUNCTION pg_switch_wal() TO {role}",
    "pg_logical_emit_message": "GRANT EXECUTE ON FUNCTION "
    "pg_logical_emit_message(boolean, text, text) TO {role}",
    "pg_stat_archiver": "GRANT pg_monitor TO {role}",
}


def _explain(exc: Exception) -> str:
    """One line for a failed step; for a missing privilege, the grant that gives it."""
    import psycopg

    text = first_line(exc)
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        for name, grant in _GRANTS.items():
            if name in text:
                return f"{text}: as a superuser run {grant.format(role='<this role>')}"
        return f"{text}: see the privileges `check` needs in the README"
    return text


def _setting(conn: Connection, name: str) -> str:
    row = conn.execute("SELECT current_setting(%s, true)", (name,)).fetchone()
    return str(row[0]) if row and row[0] is not None else ""


def _option(words: list[str], option: str) -> str | None:
    for i, word in enumerate(words):
        if word == option and i + 1 < len(words):
            return words[i + 1]
        if word.startswith(option + "="):
            return word.split("=", 1)[1]
    return None


def _same_repo(a: str, b: str) -> bool:
    from chainlens_ops.storage import same_location

    return same_location(a, b)
