"""`chainlens-ops backup`: take a backup (bare), `list`, `verify`, `prune`, `pin`, `unpin`."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import pairwise
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from chainlens_ops.backup.manifest import (
    FILES_LAYOUT,
    Catalog,
    parse_time,
    read_catalog,
    utc_now,
)
from chainlens_ops.backup.pins import Pin, read_pins, set_pin
from chainlens_ops.backup.proofs import DRILL, VERIFY, Proof, latest_proofs
from chainlens_ops.backup.prune import prune_backups
from chainlens_ops.backup.retention import RetentionPolicy
from chainlens_ops.backup.take import (
    KINDS,
    WAL_WAIT_S,
    BackupOptions,
    BackupResult,
    take_backup,
)
from chainlens_ops.backup.verify import verify_backup
from chainlens_ops.cli.common import (
    DbOption,
    DbOrAll,
    DsnOption,
    JsonOption,
    console,
    err_console,
    finish,
    print_json,
    repository_for,
    state,
    to_jsonable,
)
from chainlens_ops.cli.timeline import draw_window
from chainlens_ops.cli.wal import RepoOption
from chainlens_ops.core.errors import UsageError
from chainlens_ops.core.outcome import PerTarget
from chainlens_ops.restore.window import RecoverableWindow, recoverable_window, span_lines
from chainlens_ops.settings.keys import format_bytes

app = typer.Typer(
    help="Backups into the repository: take one (bare `backup`), list, verify, prune, pin.",
    invoke_without_command=True,
)


def _kind(value: str) -> str:
    """`--kind`: `auto` or a backup kind (the one list, BackupKind)."""
    if value not in KINDS:
        raise typer.BadParameter(f"must be one of {', '.join(KINDS)}, not {value!r}")
    return value


WINDOW_LABEL = "recoverable window (UTC):"
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress, no notices.")]


def _say(quiet: bool) -> Callable[[str], None]:
    def say(line: str) -> None:
        if not quiet:
            err_console.print(f"chainlens-ops: {line}", markup=False)

    return say


_STAGES = {"dump": "pg_dump -j to the spool", "store": "storing"}


class _Bar:
    """Bytes, rate and elapsed time on a terminal (stderr); one line per stage of a
    `--jobs` backup (its dump into the spool, then its storing)."""

    def __init__(self, bar: Progress, label: str) -> None:
        self._bar = bar
        self._label = label
        self._task = bar.add_task(label, total=None)

    def advance(self, n: int) -> None:
        self._bar.advance(self._task, n)

    def stage(self, name: str) -> None:
        if self._bar.tasks[self._task].completed:
            self._bar.stop_task(self._task)
            self._task = self._bar.add_task("", total=None)
        described = f"{self._label}: {_STAGES.get(name, name)}"
        self._bar.update(self._task, description=described)


@contextmanager
def _progress_bar(enabled: bool, label: str) -> Iterator[_Bar | None]:
    if not enabled:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=err_console, transient=True) as bar:
        yield _Bar(bar, label)


@app.callback()
def backup_command(
    ctx: typer.Context,
    kind: Annotated[
        str,
        typer.Option(
            "--kind",
            parser=_kind,
            metavar="|".join(KINDS),
            help="auto: base or incr when WAL is archived here (see full_every), else logical.",
        ),
    ] = "auto",
    db: Annotated[
        DbOrAll | None, typer.Option("--db", help="supabase, microservices or all.")
    ] = None,
    dsn: DsnOption = None,
    repo: RepoOption = None,
    quiet: QuietOption = False,
    json_output: JsonOption = False,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs",
            "-j",
            min=1,
            help="Logical: pg_dump -j N (directory format, spooled on local disk first).",
        ),
    ] = 1,
    parent: Annotated[
        str | None,
        typer.Option(
            "--from",
            metavar="ID",
            help="Incr: the backup to build on (default: the newest files-layout one).",
        ),
    ] = None,
    wal_timeout: Annotated[
        float,
        typer.Option(
            "--wal-timeout",
            min=0.1,
            help="Seconds a base backup waits for its WAL to reach the repository.",
        ),
    ] = WAL_WAIT_S,
) -> None:
    """Take a backup (no subcommand): prints its id. Exit 1 if any database failed."""
    if ctx.invoked_subcommand is not None:
        return
    settings = state(ctx).settings
    targets = settings.targets(db.value if db else None, dsn=dsn)
    show_bar = not quiet and not json_output and sys.stderr.isatty()
    run = PerTarget[BackupResult](alone=len(targets) == 1)
    results = run.results
    for target in targets:
        done = len(results)
        with run.attempt(target.name):
            repository = repository_for(ctx, target.name, repo)
            with _progress_bar(show_bar, f"{target.name}") as bar:
                options = BackupOptions(
                    kind=kind, notify=_say(quiet), wal_wait_s=wal_timeout, jobs=jobs,
                    progress=bar.advance if bar else None, stage=bar.stage if bar else None,
                    zstd_level=settings.backup.zstd_level, spool_dir=settings.spool_dir,
                    spool_reserve=settings.backup.spool_reserve, parent=parent,
                    full_every_s=settings.backup.full_every_s,
                )  # fmt: skip
                results.append(take_backup(target, repository, options, earlier=results))
        if json_output or len(results) == done:  # printed as it goes; failures at the end
            continue
        result = results[-1]
        console.print(result.id, markup=False)
        if not quiet and result.covered_by is None:
            err_console.print(
                f"chainlens-ops: {result.kind} backup of {result.target} "
                f"({result.database} at {result.server}): {format_bytes(result.size_bytes)} "
                f"stored ({format_bytes(result.raw_bytes)} raw) in {result.seconds:.1f}s",
                markup=False,
            )
    if json_output:
        print_json(results if len(targets) > 1 else results[0] if results else [])
    finish(run)


@app.command("list")
def list_command(
    ctx: typer.Context,
    db: DbOption = None,
    repo: RepoOption = None,
    json_output: JsonOption = False,
) -> None:
    """The catalog, newest first (damaged backups too), and the recoverable window.
    Exit 1 when a backup's manifest is damaged."""
    repository = repository_for(ctx, db.value if db else None, repo)
    repository.require_present()
    catalog = read_catalog(repository)
    valid = catalog.valid
    proofs = {b.id: latest_proofs(repository, b.id) for b in valid}
    pins = read_pins(repository)
    if json_output:
        print_json([
            {**b.to_dict(), **_proofs_json(proofs[b.id]), "pinned": _pin_json(pins.get(b.id))}
            for b in valid
        ] + [{"id": i, "status": "damaged", "error": catalog.problems[i]}
             for i in catalog.damaged])  # fmt: skip
    elif not valid and not catalog.damaged:
        console.print(f"{repository.url}: no backups yet", markup=False)
    else:
        table = Table()
        # The id (time-kind-target) is never cut; the rest folds on a narrow terminal.
        # `chain` only where there are files-layout backups (80 columns are tight).
        chains = _chain_texts(catalog)
        chained = any(text != "-" for text in chains.values())
        table.add_column("id", no_wrap=True)
        for heading in ("took", "size", *(["chain"] if chained else []), "proven"):
            table.add_column(heading, overflow="fold")
        rows = [(b.id, b) for b in valid] + [(i, None) for i in catalog.damaged]
        for backup_id, b in sorted(rows, key=lambda row: row[0], reverse=True):
            if b is None:
                table.add_row(backup_id, "-", "-", *(["-"] if chained else []),
                              "DAMAGED manifest")  # fmt: skip
                continue
            took = _seconds(b.started_at, b.finished_at)
            mark = " *" if b.id in pins else ""
            chain = [chains[b.id]] if chained else []
            table.add_row(b.id + mark, f"{took:.0f}s", format_bytes(b.size_bytes), *chain,
                          _proofs_text(proofs[b.id]))  # fmt: skip
        console.print(table)
        for b in valid:
            if b.id in pins:
                note = pins[b.id].note
                console.print(f"* pinned {b.id}" + (f": {note}" if note else ""), markup=False)
    if not json_output:
        window = recoverable_window(repository, catalog=catalog)
        _print_window(WINDOW_LABEL, span_lines(window.recoverable))
        if catalog.without_manifest:
            console.print(
                f"{len(catalog.without_manifest)} incomplete backup(s) without a manifest "
                "(failed or running; `backup prune` removes failed ones)",
                markup=False,
            )
    for backup_id in catalog.damaged:
        err_console.print(f"chainlens-ops: error: {catalog.problems[backup_id]}", markup=False)
    # An incremental whose chain cannot be read restores nothing: said like damage.
    broken = [problem for b in valid if (problem := catalog.chain_problem(b)) is not None]
    for problem in broken:
        err_console.print(f"chainlens-ops: error: {problem}", markup=False)
    if catalog.damaged or broken:
        raise typer.Exit(1)


@app.command("verify")
def verify_command(
    ctx: typer.Context,
    backup_id: Annotated[str | None, typer.Argument(help="Backup id (see `backup list`).")] = None,
    latest: Annotated[bool, typer.Option("--latest", help="The newest valid backup.")] = False,
    extract_to: Annotated[
        str | None,
        typer.Option(
            "--extract-to",
            help="Base backups: also extract into this folder (room for the whole cluster "
            "needed) and run pg_verifybackup; removed afterwards.",
        ),
    ] = None,
    db: DbOption = None,
    repo: RepoOption = None,
    json_output: JsonOption = False,
) -> None:
    """Re-read every object and check it; exit 1 naming any bad object."""
    if (backup_id is None) == (not latest):
        raise UsageError("give a backup id or --latest (not both)")
    repository = repository_for(ctx, db.value if db else None, repo)
    result = verify_backup(
        repository, backup_id, extract_to=extract_to, spool_dir=state(ctx).settings.spool_dir
    )
    if json_output:
        data = to_jsonable(result)
        data["ok"] = result.ok
        print_json(data)
    else:
        for check in result.checks:
            console.print(f"{'ok' if check.ok else 'FAILED':6} {check.detail}", markup=False)
    for check in result.failed:
        err_console.print(f"chainlens-ops: error: {check.detail}", markup=False)
    finish(result)


@app.command("prune")
def prune_command(
    ctx: typer.Context,
    keep_last: Annotated[
        int | None,
        typer.Option("--keep-last", metavar="N", help="Keep the newest N physical and N logical."),
    ] = None,
    keep_days: Annotated[
        float | None,
        typer.Option("--keep-days", metavar="D", help="Keep backups from the last D days."),
    ] = None,
    keep_daily: Annotated[
        int | None,
        typer.Option("--keep-daily", metavar="N", help="Newest of each of the last N days."),
    ] = None,
    keep_weekly: Annotated[
        int | None,
        typer.Option("--keep-weekly", metavar="N", help="Newest of each of the last N weeks."),
    ] = None,
    keep_monthly: Annotated[
        int | None,
        typer.Option("--keep-monthly", metavar="N", help="Newest of each of the last N months."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what goes and the window left; change nothing.")
    ] = False,
    db: DbOption = None,
    repo: RepoOption = None,
    json_output: JsonOption = False,
) -> None:
    """Remove backups beyond retention (never pinned ones, nor the newest valid one) and
    WAL no retained base backup needs."""
    asked = RetentionPolicy(keep_last, keep_days, keep_daily, keep_weekly, keep_monthly)
    result = prune_backups(
        repository_for(ctx, db.value if db else None, repo),
        policy=asked.or_configured(state(ctx).settings.backup),
        dry_run=dry_run, notify=_say(json_output), spool_dir=state(ctx).settings.spool_dir,
    )  # fmt: skip
    if json_output:
        data = to_jsonable(result)
        data["window_after"] = _window_json(result.window_after)
        print_json(data)
        return
    verb = "would remove" if dry_run else "removed"
    if result.window is not None:
        _print_window("recoverable window after it (UTC):", result.window)
    if result.window_after is not None:  # drawn as `status` draws it
        width = min(console.width, 80) if console.is_terminal else 80
        for line in draw_window(result.window_after, utc_now(), width):
            console.print(f"  {line}", markup=False)
    for backup_id in result.removed:
        console.print(f"{verb} {backup_id}", markup=False)
    for backup_id in result.leftovers:
        console.print(f"{verb} leftovers of failed backup {backup_id}", markup=False)
    for backup_id in result.kept:
        console.print(f"keep {backup_id} ({', '.join(result.reasons[backup_id])})", markup=False)
    if summary := result.cleanup.summary(dry_run):
        console.print(summary, markup=False)
    for swept in result.scratch_swept:
        console.print(swept, markup=False)
    console.print(
        f"kept {len(result.kept)} backup(s); {verb} {len(result.removed)}, and "
        f"{result.wal_removed} WAL file(s) ({format_bytes(result.wal_bytes_removed)}) older than "
        f"{result.wal_before or 'the oldest base backup (none kept: no WAL removed)'}",
        markup=False,
    )


@app.command("pin")
def pin_command(
    ctx: typer.Context,
    backup_id: Annotated[str, typer.Argument(help="Backup id (see `backup list`).")],
    note: Annotated[
        str | None, typer.Option("--note", help="Why it is kept (shown by `backup list`).")
    ] = None,
    db: DbOption = None,
    repo: RepoOption = None,
    json_output: JsonOption = False,
) -> None:
    """Keep a backup whatever the retention policy says."""
    result = set_pin(repository_for(ctx, db.value if db else None, repo), backup_id,
                     pinned=True, note=note, notify=_say(json_output))  # fmt: skip
    if json_output:
        print_json(result)
    else:
        console.print(f"pinned {backup_id}" + (f": {note}" if note else ""), markup=False)


@app.command("unpin")
def unpin_command(
    ctx: typer.Context,
    backup_id: Annotated[str, typer.Argument(help="Backup id (see `backup list`).")],
    db: DbOption = None,
    repo: RepoOption = None,
    json_output: JsonOption = False,
) -> None:
    """Let retention remove a pinned backup again."""
    result = set_pin(repository_for(ctx, db.value if db else None, repo), backup_id,
                     pinned=False, notify=_say(json_output))  # fmt: skip
    if json_output:
        print_json(result)
    else:
        state_ = "unpinned" if result.changed else "was not pinned:"
        console.print(f"{state_} {backup_id}", markup=False)


def _window_json(window: RecoverableWindow | None) -> dict[str, Any] | None:
    if window is None:
        return None
    return {
        "start": window.start.isoformat() if window.start else None,
        "end": window.end.isoformat() if window.end else None,
        "spans": [{"start": s.start.isoformat(), "end": s.end.isoformat()}
                  for s in window.recoverable],
        "restorable_bases": [m.id for m in window.base_backups if m.restorable],
    }  # fmt: skip


def _proofs_json(proofs: dict[str, Proof]) -> dict[str, Any]:
    """`verified` and `drilled`: the latest record of each ({at, ok, detail}), or null."""
    out: dict[str, Any] = {}
    for kind, field_name in ((VERIFY, "verified"), (DRILL, "drilled")):
        proof = proofs.get(kind)
        out[field_name] = None if proof is None else {
            "at": proof.at.isoformat(), "ok": proof.ok, "detail": proof.detail,
        }  # fmt: skip
    return out


def _print_window(label: str, spans: list[str]) -> None:
    """The label, then one span a line below it: a span (two full times) is 65 columns,
    so label and span on one line would pass 80 (cron mail)."""
    console.print(label, markup=False)
    for line in spans:
        console.print(f"  {line}", markup=False)


def _pin_json(pin: Pin | None) -> dict[str, Any] | None:
    return None if pin is None else {"note": pin.note, "at": pin.at}


def _proofs_text(proofs: dict[str, Proof]) -> str:
    parts = []
    for kind in (VERIFY, DRILL):
        proof = proofs.get(kind)
        if proof is not None:
            verdict = "ok" if proof.ok else "FAILED"
            parts.append(f"{kind} {verdict} {proof.at:%m-%d}")
    return "; ".join(parts) or "-"


def _chain_texts(catalog: Catalog) -> dict[str, str]:
    """The `chain` column: `full` for the full backup a chain starts from, `+N` for an
    incremental N deep whose parent is the files-layout backup listed right below it,
    `+N on <parent>` otherwise, `+N BROKEN` when its chain cannot be read; `-` for the
    others (tar base and logical backups)."""
    valid = catalog.valid  # newest first
    files = [b for b in valid if b.layout == FILES_LAYOUT and b.physical]
    below = {b.id: older.id for b, older in pairwise(files)}
    texts = {b.id: "-" for b in valid}
    for b in files:
        if b.parent is None:
            texts[b.id] = "full"
        elif catalog.chain_problem(b) is not None:
            texts[b.id] = f"+{b.chain_depth} BROKEN"
        else:
            texts[b.id] = f"+{b.chain_depth}" + ("" if below.get(b.id) == b.parent
                                                 else f" on {b.parent}")  # fmt: skip
    return texts


def _seconds(start: str, end: str) -> float:
    return (parse_time(end) - parse_time(start)).total_seconds()
