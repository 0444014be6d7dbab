"""`chainlens-ops check`: is archiving wired end to end? One table, or --json."""

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
    finish,
    print_json,
    state,
    to_jsonable,
)
from chainlens_ops.health.archiving import check_archiving
from chainlens_ops.repository import open_repository
from chainlens_ops.settings.config import parse_duration_ms


def check_command(
    ctx: typer.Context,
    db: DbOption = None,
    dsn: DsnOption = None,
    repo: Annotated[
        str | None,
        typer.Option("--repo", help="Repository (default: the database's configured one)."),
    ] = None,
    timeout: Annotated[
        str,
        typer.Option(
            "--timeout", help="How long to wait for the switched segment (30s, 2m; bare = s)."
        ),
    ] = "60s",
    json_output: JsonOption = False,
) -> None:
    """End-to-end archive check: settings, a WAL switch, and the segment in the repository.

    Exit 1 naming the first broken step; 3 when the database or repository cannot be
    reached or is misconfigured.
    """
    timeout_s = parse_duration_ms(timeout, "--timeout", flag=True) / 1000
    settings = state(ctx).settings
    target = settings.target(db.value if db else None, dsn=dsn)
    repository = open_repository(settings, db=target.name, repo=repo)
    report = check_archiving(target, repository, timeout_s=timeout_s)
    if json_output:
        data = to_jsonable(report)
        data["ok"] = report.ok
        for step, shown in zip(report.steps, data["steps"], strict=True):
            shown["status"] = step.status
        print_json(data)
    else:
        table = Table("step", "status", "detail")
        for step in report.steps:
            colour = {"ok": "green", "skipped": "dim"}.get(step.status, "red")
            table.add_row(step.name, f"[{colour}]{step.status}[/]", step.detail)
        console.print(table)
    failed = report.failed
    if failed is not None:
        err_console.print(
            f"chainlens-ops: error: check failed at {failed.name}: {failed.detail}", markup=False
        )
    finish(report)
