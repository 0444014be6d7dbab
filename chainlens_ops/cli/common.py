"""What every command group shares: global state, common options, output helpers."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import sys
import textwrap
from enum import Enum, StrEnum
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer
from rich.console import Console

from chainlens_ops.core.outcome import Outcome, PerTarget
from chainlens_ops.core.record import as_dict
from chainlens_ops.pg import connection as db
from chainlens_ops.repository import Repository, open_repository
from chainlens_ops.settings.config import DatabaseTarget, Settings, load_settings

PROSE_WIDTH = 80  # sentences wrap here at most, on a terminal or in a cron mail


class _NoTrailingSpaces:
    """A text stream that drops the spaces rich pads lines with before each newline:
    piped output (cron mail, logs) carries no trailing padding."""

    def __init__(self, stream: TextIO | None = None, *, stderr: bool = False) -> None:
        self._given = stream
        self._stderr = stderr
        self._held = ""  # spaces not yet known to be trailing

    @property
    def _stream(self) -> TextIO:
        # Without a given stream, looked up at each write as rich does for its default
        # file: whoever replaced sys.stdout/sys.stderr since import (a redirect, pytest's
        # capture) gets the text.
        if self._given is not None:
            return self._given
        return sys.stderr if self._stderr else sys.stdout

    def write(self, text: str) -> int:
        lines = (self._held + text).split("\n")
        last = lines.pop()
        body = last.rstrip(" ")
        self._held = last[len(body) :]
        out = "".join(line.rstrip(" ") + "\n" for line in lines) + body
        self._stream.write(out)
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._stream.fileno()


def _console(stream: TextIO, *, stderr: bool) -> Console:
    if stream.isatty():
        return Console(stderr=stderr, highlight=False, soft_wrap=True)
    # Piped or in a cron log there is no terminal width: rich would assume 80 columns and
    # cut file and partition names short with an ellipsis. Give tables room instead
    # (COLUMNS, when set, wins; identifier columns never wrap or cut anyway), and drop
    # the padding that room would leave at the end of every line.
    width = None if os.environ.get("COLUMNS") else 200
    piped = _NoTrailingSpaces(stderr=stderr)
    return Console(file=piped, highlight=False, soft_wrap=True, width=width)  # type: ignore[arg-type]


console = _console(sys.stdout, stderr=False)
err_console = _console(sys.stderr, stderr=True)


def prose(text: str, *, indent: str = "", hang: str = "  ", to: Console | None = None) -> None:
    """Print a sentence wrapped at the terminal's width (at most PROSE_WIDTH), breaking
    only at spaces: identifiers (segment names, ids, paths, times' halves) are never cut.
    Continuation lines are indented by `hang` more than the first."""
    out = to or console
    width = min(out.width, PROSE_WIDTH) if out.is_terminal else PROSE_WIDTH
    wrapped = textwrap.fill(text, width=max(width, 20), initial_indent=indent,
                            subsequent_indent=indent + hang, break_long_words=False,
                            break_on_hyphens=False)  # fmt: skip
    out.print(wrapped, markup=False, soft_wrap=True)


class DbChoice(StrEnum):
    supabase = "supabase"
    microservices = "microservices"


class DbOrAll(StrEnum):
    supabase = "supabase"
    microservices = "microservices"
    all = "all"


DbOption = Annotated[
    DbChoice | None,
    typer.Option("--db", help="Database to act on (default: default_db, microservices)."),
]
DsnOption = Annotated[
    str | None,
    typer.Option(
        "--dsn",
        help="One-off libpq connection string. Prefer CHAINLENS_<DB>_DSN or the config "
        "file for anything holding a password.",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]


@dataclasses.dataclass
class GlobalState:
    config_file: Path | None = None
    verbose: bool = False
    _settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config_file)
        return self._settings


def repository_for(ctx: typer.Context, db: str | None, repo: str | None) -> Repository:
    """The repository a command names (`--repo`, else the database's configured one)."""
    return open_repository(state(ctx).settings, db=db, repo=repo)


def state(ctx: typer.Context) -> GlobalState:
    obj = ctx.find_root().obj
    if not isinstance(obj, GlobalState):
        obj = GlobalState()
        ctx.find_root().obj = obj
    return obj


def to_jsonable(value: Any) -> Any:
    """Dataclasses, paths, datetimes and enums as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    fields = as_dict(value)
    if fields is not None:
        return {name: to_jsonable(v) for name, v in fields.items()}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    return value


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """`1 statement`, `2 statements`, `0 files`."""
    return f"{count} {noun if count == 1 else plural_form or noun + 's'}"


def announce_connections() -> None:
    """For a command that changes a database: once connected to it, say which one (a
    progress line on stderr: host, port, database, never the password). Nothing is
    printed for a mistake caught before connecting, or a server that cannot be reached
    (its error line names it)."""
    seen: set[tuple[str, str]] = set()

    def announce(target: DatabaseTarget) -> None:
        shown = (target.name, target.display)
        if shown not in seen:
            seen.add(shown)
            err_console.print(f"{target.name}: acting on {target.display}", markup=False)

    db.on_connect = announce


def finish(outcome: Outcome) -> None:
    """End a command with the exit code its result carries (none when it succeeded).
    A `--db all` run (PerTarget) first names each target that failed, one line each."""
    if isinstance(outcome, PerTarget):
        for failure in outcome.failures:
            err_console.print(f"chainlens-ops: error: {failure.line}", markup=False)
    if not outcome.ok:
        raise typer.Exit(outcome.exit_code)


def print_json(value: Any) -> None:
    # Plain print, not rich: scripts want exactly one JSON document, unwrapped.
    print(json.dumps(to_jsonable(value), indent=2, sort_keys=False))
