"""`chainlens-ops partition`: monthly partitions of the managed tables."""

from __future__ import annotations

from datetime import datetime, time
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from chainlens_ops.cli.common import (
    DsnOption,
    JsonOption,
    announce_connections,
    console,
    err_console,
    print_json,
    state,
)
from chainlens_ops.partitions import (
    MANAGED_TABLES,
    create_month,
    ensure_partitions,
    list_partitions,
    retain_partitions,
)

_TABLES = ", ".join(t.name for t in MANAGED_TABLES)

app = typer.Typer(
    help="Monthly partitions: create, keep ahead, list, retire.", no_args_is_help=True
)

TableOption = Annotated[
    str | None,
    typer.Option("--table", help=f"One managed table ({_TABLES}); default: all of them."),
]


def _bound(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M+00") if value else ""


def _day(value: datetime | None) -> str:
    """Compact bound for tables: month bounds are UTC midnights, so the date says it all."""
    if value is None:
        return ""
    return value.strftime("%Y-%m-%d") if value.time() == time(0) else _bound(value)


def _size(n: int | None) -> str:
    if n is None:
        return ""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _say(text: str) -> None:
    console.print(text, markup=False)


@app.command("create-month")
def create_month_command(
    ctx: typer.Context,
    table: Annotated[str, typer.Argument(help=f"Managed table ({_TABLES}), schema optional.")],
    month: Annotated[str, typer.Argument(metavar="YYYY-MM", help="The month, in UTC.")],
    dsn: DsnOption = None,
    json_output: JsonOption = False,
) -> None:
    """Create TABLE's partition for a month, moving its rows out of the default partition."""
    announce_connections()
    result = create_month(state(ctx).settings, table, month, dsn=dsn)
    if json_output:
        print_json(result)
    elif result.created:
        moved = f"; moved {result.rows_moved} rows from the default partition"
        _say(
            f"created {result.partition} [{_bound(result.lower)}, {_bound(result.upper)})"
            f"{moved if result.rows_moved else ''} "
            f"(inserts held {result.writers_blocked_ms} ms, total {result.duration_ms} ms)"
        )
    else:
        _say(f"{result.partition} already exists for {result.month}; nothing to do")


@app.command("ensure")
def ensure_command(
    ctx: typer.Context,
    ahead: Annotated[
        int, typer.Option("--ahead", min=0, max=120, help="Months ahead of the current one.")
    ] = 3,
    table: TableOption = None,
    dsn: DsnOption = None,
    json_output: JsonOption = False,
) -> None:
    """Make sure the current month and the next N exist for every managed table."""
    announce_connections()
    result = ensure_partitions(state(ctx).settings, ahead=ahead, table=table, dsn=dsn)
    if json_output:
        print_json(result)
    else:
        for m in result.created:
            moved = f", moved {m.rows_moved} rows from the default" if m.rows_moved else ""
            _say(f"created {m.partition}{moved}")
        ok_tables = sorted({m.table for m in result.months})
        for name in ok_tables:
            _say(f"{name}: {result.first} .. {result.last} present")
    for failure in result.failures:
        err_console.print(f"chainlens-ops: error: {failure.message}", markup=False)
    if result.failures:
        raise typer.Exit(max(f.exit_code for f in result.failures))


@app.command("list")
def list_command(
    ctx: typer.Context,
    table: TableOption = None,
    dsn: DsnOption = None,
    json_output: JsonOption = False,
) -> None:
    """Partitions with bounds, row estimates and sizes; flags rows in the default."""
    results = list_partitions(state(ctx).settings, table=table, dsn=dsn)
    if json_output:
        print_json(results)
        return
    for t in results:
        out = Table(title=f"{t.table} (bounds in UTC)", box=box.SIMPLE_HEAD)
        out.add_column("partition", no_wrap=True)
        for heading in ("from", "to", "rows (est.)", "size"):
            out.add_column(heading, no_wrap=True)
        for p in t.partitions:
            if p.is_default:
                rows = f"{p.rows} (exact)"
                if p.rows:
                    rows = f"[red]{rows} ![/]"
                span = ("DEFAULT", "")
            else:
                rows = "not analyzed" if p.row_estimate is None else str(p.row_estimate)
                span = (_day(p.lower), _day(p.upper))
            out.add_row(p.name, *span, rows, _size(p.size_bytes))
        console.print(out)
    for t in results:
        if t.default_flagged:
            months = ", ".join(t.default_months)
            first = t.default_months[0] if t.default_months else "YYYY-MM"
            err_console.print(
                f"warning: {t.table}: {t.default_rows} rows sit in the default partition "
                f"(months {months}); `chainlens-ops partition create-month {t.table} {first}` "
                "moves a month's rows into its own partition",
                markup=False,
            )


@app.command("retain")
def retain_command(
    ctx: typer.Context,
    keep_months: Annotated[
        int,
        typer.Option(
            "--keep-months", min=1, help="Keep partitions ending within this many months."
        ),
    ],
    table: TableOption = None,
    drop: Annotated[
        bool, typer.Option("--drop", help="Drop old partitions instead of detaching them.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; change nothing.")
    ] = False,
    dsn: DsnOption = None,
    json_output: JsonOption = False,
) -> None:
    """Detach (or drop) partitions wholly older than N months; never the current month."""
    if not dry_run:
        announce_connections()
    results = retain_partitions(
        state(ctx).settings, keep_months, table=table, drop=drop, dry_run=dry_run, dsn=dsn
    )
    if json_output:
        print_json(results)
        return
    for r in results:
        if not r.actions:
            _say(f"{r.table}: nothing ends before {_bound(r.cutoff)}")
        for a in r.actions:
            verb = {"detach": "detached", "drop": "dropped"}[a.action]
            if r.dry_run:
                verb = f"would {a.action}"
            _say(f"{r.table}: {verb} {a.partition} [{_bound(a.lower)}, {_bound(a.upper)})")
