"""`chainlens-ops status`: what needs action, with the command that fixes it."""

from __future__ import annotations

from datetime import datetime

import typer
from rich.markup import escape
from rich.table import Table

from chainlens_ops.cli.common import (
    DbOption,
    JsonOption,
    console,
    err_console,
    finish,
    print_json,
    state,
)
from chainlens_ops.cli.daemon import command_checker
from chainlens_ops.cli.timeline import draw_window
from chainlens_ops.health.overview import JobFacts, StatusReport, collect_status
from chainlens_ops.restore.window import span_lines


def status_command(
    ctx: typer.Context, db: DbOption = None, json_output: JsonOption = False
) -> None:
    """Schema, partitions, WAL archive, backups, recoverable window, cache, daemon jobs.
    Exit 1 when something needs action (for monitoring)."""
    report = collect_status(
        state(ctx).settings, db.value if db else None, command_checker(ctx.find_root().command)
    )
    if json_output:
        print_json(report)
    else:
        _render(report)
    if not report.ok:
        # One line on stderr: what cron mail and the daemon's job history show (with
        # --json, the last line of stdout is "}").
        failed = [f"{c.database} {c.area}: {c.detail}" for c in report.checks if not c.ok]
        err_console.print(
            f"chainlens-ops: needs action: {'; '.join(failed) or 'see above'}", markup=False
        )
    finish(report)


def _render(report: StatusReport) -> None:
    now = report.checked_at
    verdict = "[green]all ok[/]" if report.ok else "[red]needs action[/]"
    console.print(f"[bold]chainlens-ops status[/] {now:%Y-%m-%d %H:%M:%S} UTC: {verdict}")
    databases = list(dict.fromkeys(c.database for c in report.checks))
    for database in databases:
        console.print(f"[bold]{database}[/]")
        said: set[str] = set()
        for c in (c for c in report.checks if c.database == database):
            detail = "cannot check (as above)" if c.detail in said else c.detail
            said.add(c.detail)
            table = Table.grid(padding=(0, 1))
            table.add_column(no_wrap=True)
            table.add_column(no_wrap=True, min_width=11)
            table.add_column(overflow="fold")
            table.add_row(" [green]✓[/]" if c.ok else " [red]✗[/]", c.area, escape(detail))
            console.print(table)
            if c.fixes:
                fixes = Table.grid(padding=(0, 1))
                fixes.add_column(no_wrap=True)
                fixes.add_column(overflow="fold")
                for line in _fix_lines(c.fixes):
                    fixes.add_row("    [yellow]→[/]", escape(line))
                console.print(fixes)
    width = min(console.width - 2, 78)
    for w in report.windows:
        console.print()
        console.print(f"[bold]recoverable window[/] {escape(w.repo)} ({', '.join(w.databases)})",
                      soft_wrap=False, overflow="fold")  # fmt: skip
        if w.window is None:
            console.print(f"  cannot read it: {escape(w.error or '')}", soft_wrap=False)
            continue
        console.print("  --target-time reaches (UTC, each span's end excluded):")
        for line in span_lines(w.window.recoverable):
            console.print(f"    {line}", markup=False, soft_wrap=False)
        for line in draw_window(w.window, now, width - 2):
            console.print("  " + line, markup=False, no_wrap=True, overflow="crop")
    if report.jobs:
        console.print()
        console.print("[bold]daemon jobs[/]")
        console.print(_jobs_table(report.jobs, now))
        for j in report.jobs:
            if j.last_run and j.last_run.status == "failed" and j.last_run.error:
                console.print(f"  {j.name}: {j.last_run.error}", markup=False, soft_wrap=False)


def _fix_lines(fixes: list[str]) -> list[str]:
    """Commands that differ only in their last word (create-month for several months)
    fold into one line: the first command, then the other values."""
    lines: list[str] = []
    groups: dict[str, list[str]] = {}
    for fix in fixes:
        head, _, last = fix.rpartition(" ")
        groups.setdefault(head if "(" not in fix else fix, []).append(last)
    for head, lasts in groups.items():
        if len(lasts) > 2:
            lines.append(f"{head} {lasts[0]}  (then {', '.join(lasts[1:])})")
        else:
            lines += [f"{head} {last}" if "(" not in head else head for last in lasts]
    return lines


def _when(at: datetime | None, now: datetime) -> str:
    if at is None:
        return "-"
    same_day = at.date() == now.date()
    return f"{at:%H:%M:%S}" if same_day else f"{at:%m-%d %H:%M}"


def _jobs_table(jobs: list[JobFacts], now: datetime) -> Table:
    table = Table(box=None, padding=(0, 1), pad_edge=False)
    table.add_column("  job", no_wrap=True)
    for heading in ("schedule", "last run", "result", "next run"):
        table.add_column(heading, overflow="fold")
    for j in jobs:
        last = j.last_run
        result = "never ran" if last is None else last.status
        if j.overdue:
            result += ", overdue"
        style = "red" if (last and last.status == "failed") or j.overdue else ""
        shown = f"[{style}]{result}[/]" if style else result
        started = _when(last.started_at if last else None, now)
        table.add_row(f"  {escape(j.name)}", escape(j.schedule), started, shown,
                      _when(j.next_run, now))  # fmt: skip
    return table
