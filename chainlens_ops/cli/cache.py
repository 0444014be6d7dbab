"""`chainlens-ops cache`: expired-row cleanup and statistics of the shared analysis cache."""

from __future__ import annotations

from typing import Annotated

import typer
from rich import box
from rich.table import Table

from chainlens_ops.cli.common import DsnOption, JsonOption, console, print_json, state
from chainlens_ops.maintenance.cache import DEFAULT_BATCH_SIZE, cache_stats, cleanup_cache

app = typer.Typer(
    help="The shared analysis cache (microservices database): cleanup and stats.",
    no_args_is_help=True,
)


@app.command("cleanup")
def cleanup_command(
    ctx: typer.Context,
    batch_size: Annotated[
        int,
        typer.Option("--batch-size", min=1, help="Rows deleted per (short) transaction."),
    ] = DEFAULT_BATCH_SIZE,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count expired rows; delete nothing.")
    ] = False,
    dsn: DsnOption = None,
    json_output: JsonOption = False,
) -> None:
    """Delete expired rows of shared_cache.analysis_cache in batches."""
    result = cleanup_cache(state(ctx).settings, batch_size=batch_size, dry_run=dry_run, dsn=dsn)
    if json_output:
        if result.dry_run:
            print_json({"deleted": 0, "would_delete": result.deleted, "dry_run": True})
        else:
            print_json({"deleted": result.deleted, "dry_run": False})
    elif result.dry_run:
        console.print(f"would delete {result.deleted} expired rows", markup=False)
    else:
        console.print(
            f"deleted {result.deleted} expired rows in {result.batches} batches "
            f"({result.duration_ms} ms)",
            markup=False,
        )


@app.command("stats")
def stats_command(
    ctx: typer.Context, dsn: DsnOption = None, json_output: JsonOption = False
) -> None:
    """Rows, expired rows, size and hit counts by analysis type."""
    stats = cache_stats(state(ctx).settings, dsn=dsn)
    if json_output:
        print_json(stats)
        return
    table = Table(box=box.SIMPLE_HEAD)
    for heading in ("analysis type", "rows", "expired", "hits"):
        table.add_column(heading, no_wrap=True, justify="left" if heading[0] == "a" else "right")
    for t in stats.by_type:
        table.add_row(t.analysis_type, str(t.rows), str(t.expired_rows), str(t.hits))
    table.add_row("total", str(stats.rows), str(stats.expired_rows), str(stats.hits))
    console.print(table)
    console.print(f"size on disk: {stats.total_bytes / 1024 / 1024:.1f} MB", markup=False)
