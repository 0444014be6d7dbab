"""`chainlens-ops restore`: point in time into a data folder (bare `restore` with a
target and --pgdata), or a logical backup into a database (--backup with --dbname)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from chainlens_ops.cli.common import (
    DbOption,
    DsnOption,
    JsonOption,
    console,
    err_console,
    finish,
    print_json,
    prose,
    repository_for,
    state,
)
from chainlens_ops.cli.wal import RepoOption
from chainlens_ops.core.errors import UsageError
from chainlens_ops.pg.connection import connect
from chainlens_ops.restore.drill import run_drill
from chainlens_ops.restore.logical import LogicalResult, restore_logical
from chainlens_ops.restore.physical import (
    ACTIONS,
    ARCHIVE_MODES,
    RestoreOptions,
    RestoreProgress,
    RestoreResult,
    check_data_dir,
    check_start_port,
    planned_restore,
)
from chainlens_ops.restore.plan import (
    LATEST,
    RestorePlan,
    Target,
    parse_target_lsn,
    parse_target_name,
    parse_target_time,
)
from chainlens_ops.restore.selective import Selection
from chainlens_ops.restore.server import RecoveryFailed
from chainlens_ops.restore.table import (
    TableRestoreOptions,
    TableRestoreResult,
    keep_databases,
    restore_tables,
)
from chainlens_ops.settings.keys import format_bytes

app = typer.Typer(
    help="Restore: point in time into a data folder, or a logical backup into a database.",
    invoke_without_command=True,
)


# The targets of a whole-cluster restore and of a table restore: one parser (`_target`),
# one set of options.
TargetTimeOption = Annotated[
    str | None, typer.Option("--target-time", help="ISO 8601, psql or log time; no zone = UTC.")
]
TargetNameOption = Annotated[str | None, typer.Option("--target-name", help="A restore point.")]
TargetLsnOption = Annotated[
    str | None, typer.Option("--target-lsn", help="A WAL position, e.g. 0/3000148.")
]


def _target(time: str | None, name: str | None, lsn: str | None, latest: bool) -> Target:
    given = [t for t in (time, name, lsn) if t is not None] + (["latest"] if latest else [])
    if len(given) != 1:
        raise UsageError("give exactly one of --target-time, --target-name, --target-lsn, --latest")
    if time is not None:
        return parse_target_time(time)
    if lsn is not None:
        return parse_target_lsn(lsn)
    if name is not None:
        return parse_target_name(name)
    return Target(LATEST, "latest")


@app.callback()
def restore_command(
    ctx: typer.Context,
    target_time: TargetTimeOption = None,
    target_name: TargetNameOption = None,
    target_lsn: TargetLsnOption = None,
    latest: Annotated[bool, typer.Option("--latest", help="Replay all archived WAL.")] = False,
    pgdata: Annotated[
        Path | None, typer.Option("--pgdata", help="Data folder to restore into (empty).")
    ] = None,
    backup_id: Annotated[
        str | None, typer.Option("--backup", help="Backup id (default: chosen).")
    ] = None,
    target_action: Annotated[
        str, typer.Option("--target-action", help="promote, pause or shutdown.")
    ] = "promote",
    archive_mode: Annotated[
        str, typer.Option("--archive-mode", help="off (default) or preserve.")
    ] = "off",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; touch nothing.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Move a non-empty --pgdata's contents aside.")
    ] = False,
    start: Annotated[
        bool, typer.Option("--start", help="Start the server and wait for the target.")
    ] = False,
    port: Annotated[
        int | None,
        typer.Option("--port", min=1, max=65535, help="Port for --start (default 5432)."),
    ] = None,
    start_timeout: Annotated[
        float, typer.Option("--start-timeout", min=1, help="Seconds --start waits.")
    ] = 600.0,
    dbname: Annotated[
        str | None, typer.Option("--dbname", help="Logical restore into this database.")
    ] = None,
    jobs: Annotated[int, typer.Option("--jobs", min=1, help="pg_restore jobs (logical).")] = 1,
    clean: Annotated[
        bool, typer.Option("--clean", help="Logical: replace objects in a non-empty database.")
    ] = False,
    db: DbOption = None,
    dsn: DsnOption = None,
    repo: RepoOption = None,
    db_only: Annotated[
        str | None,
        typer.Option("--db-only", help="Only this database (and catalogs) readable."),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress display on a terminal.")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Point in time: a target and --pgdata. Logical: --backup ID --dbname NAME."""
    if ctx.invoked_subcommand is not None:
        return
    repository = repository_for(ctx, db.value if db else None, repo)
    if dbname is not None:
        if backup_id is None or pgdata is not None or db_only is not None:
            raise UsageError("a logical restore takes --backup ID and --dbname NAME (no --pgdata)")
        settings = state(ctx).settings
        server = settings.target(db.value if db else None, dsn=dsn)
        logical = restore_logical(
            repository, server, backup_id, dbname, jobs=jobs, clean=clean,
            spool_dir=settings.spool_dir, spool_reserve=settings.backup.spool_reserve,
        )  # fmt: skip
        _print_logical(logical, json_output)
        return
    target = _target(target_time, target_name, target_lsn, latest)
    if pgdata is None:
        raise UsageError("--pgdata is required for a point-in-time restore")
    if target_action not in ACTIONS:
        raise UsageError(f"--target-action must be one of {', '.join(ACTIONS)}")
    if archive_mode not in ARCHIVE_MODES:
        raise UsageError(f"--archive-mode must be one of {', '.join(ARCHIVE_MODES)}")
    if port is not None and not start:
        raise UsageError("--port needs --start")
    check_data_dir(pgdata, force=force)  # before the (slower) plan: refuse early
    selection = None
    if db_only is not None:  # the oids from the live server the backups come from
        with connect(state(ctx).settings.target(db.value if db else None, dsn=dsn)) as conn:
            selection = Selection(frozenset(keep_databases(conn, [db_only]).values()))
    options = RestoreOptions(
        pgdata=pgdata, target_action=target_action, archive_mode=archive_mode, force=force,
        dry_run=dry_run, start=start, port=port, start_timeout=start_timeout,
        config_file=state(ctx).config_file, selection=selection,
    )  # fmt: skip
    check_start_port(options)

    def show_plan(plan: RestorePlan) -> None:
        if not json_output:
            _print_plan(plan_lines(plan, options))

    show = not quiet and not json_output and not dry_run and sys.stderr.isatty()
    with _recovery_failures(), _progress(show) as progress:
        result = planned_restore(repository, target, backup_id, options,
                                 on_plan=show_plan, progress=progress)  # fmt: skip
    if json_output:
        print_json(result)
        return
    _print_result(result)


@contextmanager
def _recovery_failures() -> Iterator[None]:
    """A restored server that did not reach its target: the error line, then the tail of
    its log (why), and the error's exit code."""
    try:
        yield
    except RecoveryFailed as exc:
        err_console.print(f"chainlens-ops: error: {exc.one_line()}", markup=False)
        for line in exc.log_tail:
            err_console.print(f"  log: {line}", markup=False)
        raise typer.Exit(exc.exit_code) from None


@contextmanager
def _progress(enabled: bool) -> Iterator[RestoreProgress | None]:
    """On a terminal (stderr): bytes extracted of the base backup, then WAL replay as
    segment n of m; erased when done. Nothing when piped, with --quiet or --json."""
    if not enabled:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(bar_width=20),
               TextColumn("{task.fields[detail]}"), TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=err_console, transient=True) as bar:
        tasks: dict[str, TaskID] = {}

        def extracting(total: int) -> None:
            tasks["x"] = bar.add_task("extracting", total=total or None, detail="")

        def extracted(n: int) -> None:
            bar.advance(tasks["x"], n)
            task = bar.tasks[tasks["x"]]
            done, total = format_bytes(int(task.completed)), format_bytes(int(task.total or 0))
            bar.update(tasks["x"], detail=f"{done} of {total}")

        def replayed(n: int, m: int) -> None:
            if "r" not in tasks:
                tasks["r"] = bar.add_task("WAL replay", total=m, detail="")
            bar.update(tasks["r"], completed=n, total=m, detail=f"segment {n} of {m}")

        yield RestoreProgress(extracting=extracting, extracted=extracted, replayed=replayed)


def _print_logical(result: LogicalResult, json_output: bool) -> None:
    if json_output:
        print_json(result)
        return
    spool = (
        " (spooled to local disk first: pg_restore -j and directory-format dumps need files)"
        if result.spooled
        else ""
    )
    console.print(
        f"restored backup {result.backup_id} into database {result.database}"
        f"{' (created)' if result.created else ''}{spool} in {result.seconds:.1f}s",
        markup=False,
    )


def plan_lines(plan: RestorePlan, options: RestoreOptions) -> list[str]:
    t = plan.target
    what = {"latest": "end of the archive (--latest)", "time": f"time {plan.recovery_target}",
            "lsn": f"LSN {plan.recovery_target}",
            "name": f"restore point {t.text} (at {plan.restore_point_lsn}, from the "
                    f"{plan.restore_point_source})"}[t.kind]  # fmt: skip
    lines = [
        f"backup:   {plan.backup.id} (ended {plan.backup.finished_at[:19].replace('T', ' ')} UTC, "
        f"timeline {plan.backup.timeline}, start WAL {plan.backup.start_wal})",
        f"WAL:      {plan.wal_first} .. {plan.wal_last} (all present; newest archived "
        f"{plan.newest_archived})",
        f"target:   {what}; then {options.target_action if t.kind != LATEST else 'promote'}; "
        "timeline latest",
        f"timezone: {plan.timezone}",
        f"into:     {options.pgdata} (archive_mode {options.archive_mode})"
        + (" -- only the database(s) --db-only names readable" if options.selection else "")
        + (" -- dry run, nothing will be written" if options.dry_run else ""),
    ]
    if plan.newest_transaction:
        lines.insert(2, f"archive:  newest archived transaction at {plan.newest_transaction}")
    lines += [f"{'window:' if i == 0 else '':9} {line}" for i, line in enumerate(plan.window)]
    return lines


def _print_plan(lines: list[str]) -> None:
    err_console.print("chainlens-ops: restore plan", markup=False)
    for line in lines:
        # `backup:   ...`: continuation lines start under the value, words never cut.
        prose(line, indent="  ", hang=" " * 10, to=err_console)


def _print_result(result: RestoreResult) -> None:
    if result.dry_run:
        console.print("dry run: nothing written", markup=False)
        return
    if result.moved_aside:
        console.print(f"old contents moved aside to {result.moved_aside}", markup=False)
    skipped = f", {result.skipped_bytes} of them skipped" if result.skipped_bytes else ""
    prose(
        f"restored {result.plan.backup.id} into {result.pgdata} ({result.extracted_bytes} bytes"
        f"{skipped}, checksums verified); recovery settings written"
    )
    if result.started:
        s = result.started
        prose(
            f"server on port {s.port}: {s.state} at {s.replay_lsn} on timeline {s.timeline} "
            f"after {s.seconds:.1f}s (log {s.log})"
        )
    else:
        console.print(f"start it with: pg_ctl -D {result.pgdata} start", markup=False)


# Drills and table restores both recover a scratch copy.
ScratchOption = Annotated[
    Path | None,
    typer.Option("--scratch", help="Folder for the scratch copy (default: TMPDIR)."),
]
RecoveryTimeoutOption = Annotated[
    float, typer.Option("--timeout", min=1, help="Seconds recovery may take.")
]


@app.command("drill")
def drill_command(
    ctx: typer.Context,
    backup_id: Annotated[
        str, typer.Option("--backup", help="Backup id, or `latest` (the newest base backup).")
    ] = "latest",
    scratch: ScratchOption = None,
    timeout: RecoveryTimeoutOption = 600.0,
    db: DbOption = None,
    repo: RepoOption = None,
    json_output: JsonOption = False,
) -> None:
    """Restore into a scratch folder on a free port, replay all archived WAL, read every
    table, report RTO/RPO, remove the copy, record the result; exit 1 on any failure."""
    repository = repository_for(ctx, db.value if db else None, repo)
    result = run_drill(
        repository,
        None if backup_id == "latest" else backup_id,
        scratch_root=scratch,
        timeout=timeout,
        config_file=state(ctx).config_file,
    )
    if json_output:
        print_json(result)
    else:
        for line in result.swept:
            console.print(line, markup=False)
    if result.ok and not json_output:
        console.print(
            f"drill passed: backup {result.backup_id} restored and promoted at "
            f"{result.replay_lsn}; RTO {result.rto_seconds:.1f}s, RPO "
            f"{'unknown' if result.rpo_seconds is None else f'{result.rpo_seconds:.0f}s'}; "
            f"{len(result.row_counts)} table(s) read, "
            f"{sum(result.row_counts.values())} row(s); recorded as {result.record_key}",
            markup=False,
        )
    if not result.ok:
        err_console.print(
            f"chainlens-ops: error: drill of backup {result.backup_id or backup_id} failed: "
            f"{result.error}",
            markup=False,
        )
    finish(result)


@app.command("table")
def table_command(
    ctx: typer.Context,
    tables: Annotated[list[str], typer.Argument(help="schema.table (default schema public).")],
    target_time: TargetTimeOption = None,
    target_name: TargetNameOption = None,
    target_lsn: TargetLsnOption = None,
    into_schema: Annotated[
        str | None,
        typer.Option("--into-schema", help="New schema (default restored_<target>)."),
    ] = None,
    backup_id: Annotated[
        str | None, typer.Option("--backup", help="Backup id (default: chosen).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; touch nothing.")
    ] = False,
    scratch: ScratchOption = None,
    timeout: RecoveryTimeoutOption = 600.0,
    db: DbOption = None,
    dsn: DsnOption = None,
    repo: RepoOption = None,
    json_output: JsonOption = False,
) -> None:
    """Bring tables back as they were at a target, into a new schema of the live
    database, through a scratch server that holds only their database; nothing else
    is touched. Prints rows live and restored, and SQL to put rows back (never run)."""
    if sum(t is not None for t in (target_time, target_name, target_lsn)) != 1:
        raise UsageError("give exactly one of --target-time, --target-name, --target-lsn")
    target = _target(target_time, target_name, target_lsn, False)
    repository = repository_for(ctx, db.value if db else None, repo)
    live = state(ctx).settings.target(db.value if db else None, dsn=dsn)
    options = TableRestoreOptions(
        tables=tuple(tables), target=target, into_schema=into_schema, backup_id=backup_id,
        dry_run=dry_run, scratch_root=scratch, timeout=timeout,
        config_file=state(ctx).config_file,
    )  # fmt: skip
    show = not json_output and sys.stderr.isatty()

    def say(line: str) -> None:
        if show:
            err_console.print(f"chainlens-ops: {line}", markup=False)

    with _recovery_failures():
        result = restore_tables(repository, live, options, say)
    if json_output:
        print_json(result)
        return
    _print_table_result(result)


def _print_table_result(result: TableRestoreResult) -> None:
    p = result.plan
    console.print(
        f"plan: backup {p.backup_id}, target {p.target}, database {p.database}\n"
        f"  extract: at most {format_bytes(p.bytes_to_extract)}; readable: "
        f"{', '.join(p.kept_databases)}; skipped: {', '.join(p.skipped_databases) or 'none'}\n"
        f"  WAL: {p.wal_first} .. {p.wal_last} ({p.wal_segments} segments)\n"
        f"  scratch: {p.scratch_root} ({format_bytes(p.scratch_free)} free)\n"
        f"  into: schema {p.schema} (new): {', '.join(p.tables)}",
        markup=False,
    )
    if result.dry_run:
        console.print("dry run: nothing written", markup=False)
        return
    for t in result.tables:
        live = "gone live" if t.rows_live is None else f"{t.rows_live} rows live"
        console.print(
            f"{t.table} -> {t.restored_as}: {t.rows_restored} rows restored, {live} ({t.shape})",
            markup=False,
        )
    console.print(
        f"{format_bytes(result.extracted_bytes - result.skipped_bytes)} extracted, "
        f"{format_bytes(result.skipped_bytes)} skipped; recovery {result.recovery_seconds:.1f}s; "
        f"copy {result.copy_seconds:.1f}s; total {result.seconds:.1f}s; scratch removed",
        markup=False,
    )
    console.print("to put rows back (review first; never run by chainlens-ops):", markup=False)
    for t in result.tables:
        console.print(f"-- {t.table}\n{t.put_back_sql}", markup=False)
