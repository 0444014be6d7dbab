"""`chainlens-ops demo`: the whole lifecycle on a sandbox cluster, narrated."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from chainlens_ops.cli.common import console, err_console
from chainlens_ops.cli.daemon import command_checker
from chainlens_ops.demo import DemoOptions, DemoResult, run_demo, sandbox_root, tear_down_demo
from chainlens_ops.demo.sandbox import forget, record_file, recorded, remember


def demo_command(
    ctx: typer.Context,
    down: Annotated[
        bool, typer.Option("--down", help="Stop and remove the sandbox, then exit.")
    ] = False,
    daemon_seconds: Annotated[
        float, typer.Option("--daemon-seconds", min=1, help="How long the daemon step runs.")
    ] = 60.0,
) -> None:
    """Run the whole mission on a sandbox PostgreSQL under ./.demo (no server or config)."""
    root = sandbox_root()
    if down:
        _down(root)
        return
    remember(root)  # before the demo becomes the server's user: `--down` from anywhere
    if root.name != ".demo":
        err_console.print(f"chainlens-ops: note: the postgres user cannot enter this folder; "
                          f"the sandbox lives in {root}", markup=False)  # fmt: skip
    console.print(f"[bold]chainlens-ops demo[/] — sandbox in {root}")
    prefix = "runuser -u postgres -- " if os.geteuid() == 0 else ""
    result = run_demo(
        DemoOptions(root, command_checker(ctx.find_root().command), daemon_seconds),
        console.print,
    )
    _print_summary(result, prefix)


def _down(root: Path) -> None:
    """This folder's sandbox, else the one the last demo recorded, stopped and removed;
    a server that will not stop is an error (exit 1), never a quiet success."""
    elsewhere = recorded()
    if tear_down_demo(root):
        forget(root)
        console.print(f"sandbox {root} stopped and removed", markup=False)
    elif elsewhere is not None and elsewhere != root and tear_down_demo(elsewhere):
        forget(elsewhere)
        console.print(f"no sandbox in {root}; the one the demo recorded, {elsewhere}, "
                      "stopped and removed", markup=False)  # fmt: skip
    else:
        if elsewhere is not None:
            forget(elsewhere)  # it was removed by hand
        console.print(f"no sandbox in {root}, and none recorded elsewhere ({record_file()}): "
                      "nothing to stop", markup=False)  # fmt: skip


def _print_summary(result: DemoResult, prefix: str) -> None:
    side = Table(title="After the incident vs restored to just before it", box=box.SIMPLE)
    side.add_column("")
    side.add_column(f"live :{result.primary_port} (damaged)", justify="right")
    side.add_column(result.restored_schema, justify="right")
    for what, now, back in result.comparison:
        mark = "" if now == back else " ✗"
        side.add_row(what, f"{now}{mark}", str(back))
    console.print(side)
    summary = Table(title="Summary", box=box.SIMPLE)
    summary.add_column("step")
    summary.add_column("seconds", justify="right")
    summary.add_column("result", overflow="fold")
    for step in result.steps:
        summary.add_row(step.name, f"{step.seconds:.1f}", step.summary or step.detail)
    console.print(summary)
    cfg = result.config_file
    tool = result.tool
    console.print("Explore further" + (" (as the postgres user: the sandbox is its)" if prefix
                  else "") + ":", markup=False)  # fmt: skip
    for line in (
        f"export CHAINLENS_CONFIG={cfg}" + ("  # runuser keeps it" if prefix else ""),
        f"{prefix}{tool} status",
        f"{prefix}{tool} partition list",
        f"{prefix}{tool} backup list --db supabase",
        f"{prefix}{tool} restore-point list --db supabase",
        f"{prefix}{tool} wal check --db supabase",
        f"{prefix}{tool} cache stats",
        f"{prefix}psql 'host=127.0.0.1 port={result.primary_port} dbname=supabase user=postgres'"
        f" -c 'TABLE {result.restored_schema}.user_profiles LIMIT 5'",
        f"{tool} demo --down",
    ):
        console.print(f"  {line}", markup=False, soft_wrap=True)
