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
    finish,
    print_json,
    state,
)
from chainlens_ops.partitions import (
    MANAGED_TABLES,
    PartitionInfo,
    TablePartitions,
    create_month,
    ensure_partitions,
    list_partitions,
    retain_partitions,
)
from chainlens_ops.partitions.months import Month

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


def partition_table(t: TablePartitions, width: int) -> Table:
    """One table's partitions, readable at 80 columns and less: names are never cut (they
    are what a DBA types next), a month partition shows its month (bounds in UTC), other
    columns fold, and below 64 columns the size goes."""
    out = Table(title=f"{t.table} (UTC)", box=box.SIMPLE_HEAD, pad_edge=False)
    names = [p.name for p in [*t.partitions, *t.detached]]
    out.add_column("partition", no_wrap=True, min_width=max(map(len, names), default=9))
    with_size = width >= 64
    headings = ["month", "rows", "size", "state"] if with_size else ["month", "rows", "state"]
    for heading in headings:
        out.add_column(heading, overflow="fold")

    def row(name: str, span: str, rows: str, size: int | None, state: str) -> None:
        cells = [name, span, rows, _size(size), state]
        out.add_row(*(cells if with_size else cells[:3] + cells[4:]))

    for p in t.partitions:
        if p.is_default:
            row(p.name, "", f"{p.rows} !" if p.rows else str(p.rows), p.size_bytes, "default")
        else:
            row(p.name, _span(p), _rows(p), p.size_bytes, "")
    for p in t.detached:
        row(p.name, _span(p), _rows(p), p.size_bytes, "detached")
    return out


def _span(p: PartitionInfo) -> str:
    """`2025-03` for a calendar month (UTC), else `from..to`."""
    if p.lower is not None and p.upper is not None:
        month = Month.of(p.lower)
        if (p.lower, p.upper) == (month.start, month.end):
            return str(month)
    return f"{_day(p.lower)}..{_day(p.upper)}"


def _rows(p: PartitionInfo) -> str:
    return "not analyzed" if p.row_estimate is None else f"~{p.row_estimate}"


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
            f"created {result.partition} [{_day(result.lower)}, {_day(result.upper)})"
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
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet", "-q", help="Print errors only (for cron: silent when all is well)."
        ),
    ] = False,
) -> None:
    """Make sure the current month and the next N exist for every managed table."""
    if not quiet:
        announce_connections()
    result = ensure_partitions(state(ctx).settings, ahead=ahead, table=table, dsn=dsn)
    if json_output:
        print_json(result)
    elif not quiet:
        for m in result.created:
            moved = f", moved {m.rows_moved} rows from the default" if m.rows_moved else ""
            _say(f"created {m.partition}{moved}")
        ok_tables = sorted({m.table for m in result.months})
        for name in ok_tables:
            _say(f"{name}: {result.first} .. {result.last} present")
    for failure in result.failures:
        err_console.print(f"chainlens-ops: error: {failure.message}", markup=False)
    finish(result)


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
        console.print(partition_table(t, console.width))
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
            _say(f"{r.table}: nothing ends before {_day(r.cutoff)}")
        for a in r.actions:
            verb = {"detach": "detached", "drop": "dropped"}[a.action]
            if r.dry_run:
                verb = f"would {a.action}"
            what = "detached table" if a.was_detached else "partition"
            _say(f"{r.table}: {verb} {what} {a.partition} [{_day(a.lower)}, {_day(a.upper)})")
