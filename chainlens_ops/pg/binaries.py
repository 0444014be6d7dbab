"""One wrapper for PostgreSQL's binaries (pg_dump, pg_basebackup, pg_ctl, ...).

argv lists, never a shell; the binary is found for the server's major version;
passwords travel in the environment (PGPASSWORD) or a passfile, never in argv;
a failure raises PgCommandError with the exit code and the tail of stderr.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from chainlens_ops.errors import ConfigError, PgCommandError

PG_LIB = Path("/usr/lib/postgresql")
STDERR_TAIL_BYTES = 4000


def find_binary(name: str, major: int | None = None) -> str:
    """Path of `name` for PostgreSQL `major` (Debian layout), else the newest, else PATH."""
    candidates: list[Path] = []
    if major is not None:
        candidates.append(PG_LIB / str(major) / "bin" / name)
    if PG_LIB.is_dir():
        versions = sorted(
            (p for p in PG_LIB.iterdir() if p.name.isdigit()), key=lambda p: -int(p.name)
        )
        candidates += [v / "bin" / name for v in versions]
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise ConfigError(f"PostgreSQL binary {name} not found", hint="install the PostgreSQL client")


@dataclass(frozen=True)
class PgResult:
    returncode: int
    stdout: str
    stderr: str


def run_pg(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    check: bool = True,
) -> PgResult:
    """Run a PostgreSQL binary; raise PgCommandError on a non-zero exit when `check`."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    proc = subprocess.run(
        list(argv),
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise PgCommandError(Path(argv[0]).name, proc.returncode, proc.stderr[-STDERR_TAIL_BYTES:])
    return PgResult(proc.returncode, proc.stdout, proc.stderr)
