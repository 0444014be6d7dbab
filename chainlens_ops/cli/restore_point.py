"""`chainlens-ops restore-point`: create named restore points and list them."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from chainlens_ops.cli.common import (
    DbOption,
    DsnOption,
    JsonOption,
    console,
    err_console,
    print_json,
    repository_for,
    state,
)
from chainlens_ops.repository import open_repository
from chainlens_ops.restore_points import create_restore_point, list_restore_points

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
        console.print(
            f"restore point {point.name} at {point.lsn} (timeline {point.timeline}, "
            f"{point.time}) archived in {point.segment}",
            markup=False,
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
    # Nothing is ever cut short (a cut time is no use for --target-time): narrow
    # terminals fold the long columns instead.
    table = Table()
    table.add_column("name", overflow="fold")
    table.add_column("lsn", no_wrap=True)
    table.add_column("timeline", overflow="fold")
    table.add_column("time", overflow="fold", min_width=20)
    table.add_column("source", overflow="fold")
    for p in points:
        shown = p.source if p.state == "complete" else f"{p.source} ({p.state})"
        table.add_row(p.name, p.lsn or "-", str(p.timeline or "-"), p.time or "-", shown)
    console.print(table)
    damaged = [p for p in points if p.problem]
    for p in damaged:
        err_console.print(f"chainlens-ops: error: {p.problem}", markup=False)
    if damaged:
        raise typer.Exit(1)
