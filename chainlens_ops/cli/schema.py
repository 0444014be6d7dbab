"""`chainlens-ops schema`: apply the platform's SQL and show what is applied."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from chainlens_ops.cli.common import (
    DbOrAll,
    DsnOption,
    JsonOption,
    announce_connections,
    console,
    err_console,
    finish,
    plural,
    print_json,
    state,
)
from chainlens_ops.core.outcome import PerTarget
from chainlens_ops.schema.migrate import ApplyResult, TargetStatus, apply_schema, schema_status
from chainlens_ops.settings.config import parse_duration_ms

app = typer.Typer(help="Apply the platform schema and show its state.", no_args_is_help=True)

SchemaDbOption = Annotated[DbOrAll, typer.Option("--db", help="supabase, microservices or all.")]
SqlDirOption = Annotated[
    Path | None,
    typer.Option(
        "--sql-dir",
        envvar="CHAINLENS_SQL_DIR",
        help="Folder holding <db>/NNN_name.sql (default: the SQL shipped with this tool).",
    ),
]


@app.command("apply")
def apply_command(
    ctx: typer.Context,
    db: SchemaDbOption = DbOrAll.all,
    dsn: DsnOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; change nothing.")
    ] = False,
    lock_wait: Annotated[
        str, typer.Option("--lock-wait", help="How long to wait for a concurrent apply.")
    ] = "60s",
    sql_dir: SqlDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Apply pending SQL files, each in its own transaction, under an advisory lock."""
    settings = state(ctx).settings
    wait_ms = parse_duration_ms(lock_wait, "--lock-wait", flag=True)
    if not dry_run:
        announce_connections()
    targets = settings.targets(db.value, dsn=dsn)
    run = PerTarget[ApplyResult](alone=len(targets) == 1)
    progress = None if json_output else lambda msg: err_console.print(msg, markup=False)
    for target in targets:
        done = len(run.results)
        with run.attempt(target.name):
            result = apply_schema(
                target,
                sql_dir=sql_dir,
                dry_run=dry_run,
                lock_wait_ms=wait_ms,
                statement_lock_timeout_ms=settings.lock_timeout_ms,
                progress=progress,
            )
            run.results.append(result)
        if json_output or len(run.results) == done:
            continue
        if dry_run:
            plan = ", ".join(result.planned) if result.planned else "nothing pending"
            console.print(f"{result.database}: would apply: {plan}", markup=False)
        elif result.applied:
            for f in result.applied:
                console.print(
                    f"{result.database}: applied {f.version}_{f.name}.sql "
                    f"({plural(f.statements, 'statement')}, {f.duration_ms} ms)",
                    markup=False,
                )
        else:
            console.print(
                f"{result.database}: up to date ({plural(result.already_applied, 'file')} applied)",
                markup=False,
            )
    if json_output:
        print_json(run.results)
    finish(run)


@app.command("status")
def status_command(
    ctx: typer.Context,
    db: SchemaDbOption = DbOrAll.all,
    dsn: DsnOption = None,
    sql_dir: SqlDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Applied, pending and drifted files per database (exit 1 on drift)."""
    targets = state(ctx).settings.targets(db.value, dsn=dsn)
    run = PerTarget[TargetStatus](alone=len(targets) == 1)
    for target in targets:  # one unreachable or misconfigured: the others still report
        with run.attempt(target.name):
            run.results.append(schema_status(target, sql_dir))
    statuses = run.results
    if json_output:
        print_json(statuses)
    else:
        table = Table("database")
        table.add_column("file", no_wrap=True)  # an identifier: never cut
        for heading in ("state", "applied at", "ms"):
            table.add_column(heading)
        for st in statuses:
            for f in st.files:
                colour = {"applied": "green", "pending": "yellow"}.get(f.state, "red")
                table.add_row(
                    st.database,
                    f"{f.version}_{f.name}.sql",
                    f"[{colour}]{f.state}[/]",
                    f.applied_at.strftime("%Y-%m-%d %H:%M") if f.applied_at else "",
                    str(f.duration_ms) if f.duration_ms is not None else "",
                )
        console.print(table)
    finish(run)  # exit 1 on drift, 3 when a database cannot be reached
