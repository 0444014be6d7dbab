"""`chainlens-ops daemon`: run the config file's [[jobs]]; `daemon status` shows them."""

from __future__ import annotations

import logging
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from chainlens_ops.cli.common import GlobalState, JsonOption, console, print_json, state
from chainlens_ops.daemon import Daemon, DaemonConfig, JobStatus, daemon_status, read_daemon_config
from chainlens_ops.daemon.jobs import CommandCheck
from chainlens_ops.daemon.report import DAEMON_GRACE, daemon_fix, needs_action
from chainlens_ops.settings.config import Settings

try:  # Typer >= 0.2x ships its own copy of click
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover - older Typer on upstream click
    from click import exceptions as click_exc  # type: ignore[no-redef]

app = typer.Typer(
    help="Run the [[jobs]] of the config file on their schedules (exactly once per slot "
    "across replicas); `daemon status` shows them.",
    invoke_without_command=True,
)

# Options a job's command line may not carry: the daemon passes its own --config, and
# --help / --version would print instead of doing the job.
_NOT_IN_JOBS = ("--config", "--help", "--version", "-v", "--verbose")


@app.callback()
def daemon_command(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="TOML config file with [[jobs]] (same as the global one)."),
    ] = None,
    metrics_file: Annotated[
        Path | None,
        typer.Option(
            "--metrics-file",
            help="Prometheus textfile-collector file, rewritten atomically after each run "
            "(default: [daemon] metrics_file).",
        ),
    ] = None,
) -> None:
    """Run the scheduled jobs until SIGTERM/SIGINT (exit 0)."""
    if config is not None:  # `daemon --config FILE` as well as `--config FILE daemon`
        ctx.find_root().obj = GlobalState(config_file=config, verbose=state(ctx).verbose)
    if ctx.invoked_subcommand is not None:
        return
    settings = state(ctx).settings
    daemon_config = _config(ctx)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    logging.Formatter.converter = time.gmtime
    metrics = str(metrics_file) if metrics_file else None
    result = Daemon(settings, daemon_config, metrics_file=metrics).run()
    console.print(
        f"daemon stopped ({result.stopped_by}); {result.runs_started} runs started", markup=False
    )


@app.command("status")
def status_command(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """Each job's schedule, next fire time, last run and last status. Exit 1 when a job
    needs action (its last run failed, a slot was missed: overdue, or none ever ran)."""
    settings = state(ctx).settings
    jobs = daemon_status(settings, _config(ctx))
    if json_output:
        print_json([_as_json(j) for j in jobs])
    else:
        _render_status(jobs, settings)
    if needs_action(jobs):
        raise typer.Exit(1)


def _render_status(jobs: list[JobStatus], settings: Settings) -> None:
    table = Table(box=box.SIMPLE_HEAD, title="times in UTC")
    # Job names, schedules and statuses are never cut; times fold at 80 columns; errors
    # go below the table, where they can take the whole width.
    for heading in ("job", "schedule", "status"):
        widest = max([len(heading), *(len(_cell(j, heading)) for j in jobs)])
        table.add_column(heading, no_wrap=True, min_width=widest)
    for heading in ("next", "last run", "last success"):
        table.add_column(heading, overflow="fold")
    errors: list[str] = []
    for j in jobs:
        last, ok = j.last_run, j.last_success
        table.add_row(
            j.name,
            j.schedule,
            _cell(j, "status"),
            _when(j.next_fire),
            _when(last.scheduled_for) if last else "never",
            _when(ok.finished_at) if ok else "never",
        )
        if last and last.error:
            errors.append(f"{j.name}: {last.error}")
    console.print(table)
    for line in errors:
        console.print(line, markup=False)
    late = [j.name for j in jobs if j.overdue]
    if late:
        console.print(
            f"overdue: {', '.join(late)} (a slot passed more than "
            f"{DAEMON_GRACE.seconds // 60} min ago with no run: is the daemon running?)",
            markup=False,
        )
    if late or (jobs and not any(j.last_run for j in jobs)):
        console.print(f"start it: {daemon_fix(settings)}", markup=False)


def _config(ctx: typer.Context) -> DaemonConfig:
    settings = state(ctx).settings
    return read_daemon_config(settings, command_checker(ctx.find_root().command))


def command_checker(root: Any) -> CommandCheck:
    """Checks a job's argv against the real command tree, parsing its options and
    arguments as the CLI would, without running anything."""

    def check(argv: list[str]) -> None:
        bad = [a for a in argv if a.split("=")[0] in _NOT_IN_JOBS]
        if bad:
            raise ValueError(f"{bad[0]} does not belong in a job's command")
        command, parent = root, root.make_context("chainlens-ops", [], resilient_parsing=True)
        outer = None  # the context a group that acts on its own is parsed in
        words = list(argv)
        while hasattr(command, "list_commands"):  # a group: the next word picks a command
            if getattr(command, "invoke_without_command", False) and (
                not words or words[0].startswith("-")
            ):
                parent = outer or parent  # `backup --db all`: the group itself runs
                break
            if not words:
                choices = ", ".join(command.list_commands(parent))
                raise ValueError(f"{parent.command_path} needs a command ({choices})")
            word = words.pop(0)
            sub = command.get_command(parent, word)
            if sub is None:
                raise ValueError(f"unknown command {word!r} in {parent.command_path}")
            if sub.name == "daemon":
                raise ValueError("a job cannot run the daemon")
            command = sub
            if hasattr(command, "list_commands"):
                outer = parent
                parent = command.make_context(word, [], parent=parent, resilient_parsing=True)
        try:
            command.make_context(command.name, words, parent=parent)
        except click_exc.ClickException as exc:
            raise ValueError(exc.format_message().replace("\n", " ")) from None
        except typer.Exit:
            raise ValueError("prints help instead of doing anything") from None

    return check


def _cell(job: JobStatus, heading: str) -> str:
    status = (job.last_status or "never ran") + (", overdue" if job.overdue else "")
    return {"job": job.name, "schedule": job.schedule, "status": status}[heading]


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _as_json(job: JobStatus) -> dict[str, Any]:
    return {
        "name": job.name,
        "command": job.command,
        "schedule": job.schedule,
        "timeout_s": job.timeout_s,
        "next_fire": job.next_fire,
        "last_status": job.last_status,
        "overdue": job.overdue,
        "last_run": job.last_run,
        "last_success": job.last_success,
    }
