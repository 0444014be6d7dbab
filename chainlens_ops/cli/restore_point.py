"""`chainlens-ops restore-point`: create named restore points and list them."""

from __future__ import annotations

from datetime import UTC
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from chainlens_ops.cli.common import (
    DbOption,
    DsnOption,
    JsonOption,
    console,
    err_console,
    print_json,
    prose,
    repository_for,
    state,
)
from chainlens_ops.core.errors import UsageError
from chainlens_ops.core.timetext import parse_time_text
from chainlens_ops.repository import open_repository
from chainlens_ops.restore.points import (
    RestorePoint,
    create_restore_point,
    list_restore_points,
)

app = typer.Typer(
    help="Named restore points (recovery_target_name): create them, list them.",
    no_args_is_help=True,
)

RepoOption = Annotated[
    str | None,
    typer.Option("--repo", help="Repository (default: the database's configured one)."),
]


@app.command("create")
def create_command(
    ctx: typer.Context,
    name: Annotated[
        str,
        typer.Argument(help="1-63 characters of A-Z a-z 0-9 . _ : -, starting alphanumeric."),
    ],
    db: DbOption = None,
    dsn: DsnOption = None,
    repo: RepoOption = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for its WAL to be archived.")
    ] = 60.0,
    json_output: JsonOption = False,
) -> None:
    """Create a restore point, archive the WAL holding it, record it in the catalog.

    A name already in the catalog is refused (PostgreSQL accepts duplicates, and
    recovery stops at the first).
    """
    settings = state(ctx).settings
    target = settings.target(db.value if db else None, dsn=dsn)
    repository = open_repository(settings, db=target.name, repo=repo)
    point = create_restore_point(target, repository, name, timeout_s=timeout)
    if json_output:
        print_json(point)
    else:
        prose(
            f"restore point {point.name} at {point.lsn} (timeline {point.timeline}, "
            f"{point.time}) archived in {point.segment}"
        )


@app.command("list")
def list_command(
    ctx: typer.Context,
    db: DbOption = None,
    repo: RepoOption = None,
    json_output: JsonOption = False,
) -> None:
    """Restore points in the catalog and in the archived WAL (points made in SQL)."""
    points = list_restore_points(repository_for(ctx, db.value if db else None, repo))
    if json_output:
        print_json(points)
        if any(p.problem for p in points):
            raise typer.Exit(1)
        return
    print_points(point_rows(points), console)
    damaged = [p for p in points if p.problem]
    for p in damaged:
        err_console.print(f"chainlens-ops: error: {p.problem}", markup=False)
    if damaged:
        raise typer.Exit(1)


def point_rows(points: list[RestorePoint]) -> list[tuple[str, str, str, str, str]]:
    return [
        (p.name, p.lsn or "-", str(p.timeline or "-"), _utc(p.time),
         p.source if p.state == "complete" else f"{p.source} ({p.state})")
        for p in points
    ]  # fmt: skip


def print_points(rows: list[tuple[str, str, str, str, str]], out: Console) -> None:
    """Names go into --target-name and times into --target-time: neither is ever cut or
    broken. The table fits 80 columns for names up to ~20 characters; when the names do
    not fit the terminal, each point is a name line and a detail line instead."""
    headings = ("name", "lsn", "tli", "time (UTC)", "source")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headings)]
    if out.is_terminal and sum(widths) + 2 * (len(widths) - 1) > out.width:
        for row in rows:
            out.print(row[0], markup=False, soft_wrap=True)
            out.print(f"  lsn {row[1]}, timeline {row[2]}, {row[3]} UTC, {row[4]}",
                      markup=False, soft_wrap=True)  # fmt: skip
        return
    table = Table(box=None, pad_edge=False, padding=(0, 2, 0, 0))
    for heading in headings:
        table.add_column(heading, no_wrap=True, overflow="ignore")
    for row in rows:
        table.add_row(*row)
    out.print(table)


def _utc(text: str | None) -> str:
    """The point's time in UTC as `2026-11-28 19:45:27.939717` (the heading says UTC):
    pasted into --target-time it means the same instant."""
    if not text:
        return "-"
    try:
        when = parse_time_text(text).when
    except UsageError:
        return text
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
