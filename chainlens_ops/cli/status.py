"""`chainlens-ops status`: what needs action, with the command that fixes it."""

from __future__ import annotations

import typer
from rich import box
from rich.table import Table

from chainlens_ops.cli.common import DbOption, JsonOption, console, print_json, state
from chainlens_ops.cli.daemon import command_checker
from chainlens_ops.status import collect_status


def status_command(
    ctx: typer.Context, db: DbOption = None, json_output: JsonOption = False
) -> None:
    """Schema, partitions, WAL archive, backups, cache, daemon. Exit 1 when something
    needs action (for monitoring)."""
    checks = collect_status(
        state(ctx).settings, db.value if db else None, command_checker(ctx.find_root().command)
    )
    if json_output:
        print_json(checks)
    else:
        table = Table(box=box.SIMPLE)
        for column in ("", "area", "database", "state", "fix"):
            table.add_column(column)
        for c in checks:
            table.add_row("[green]✓[/]" if c.ok else "[red]✗[/]", c.area, c.database,
                          c.detail, c.fix)  # fmt: skip
        console.print(table)
    if any(not c.ok for c in checks):
        raise typer.Exit(1)
