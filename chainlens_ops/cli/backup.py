"""`chainlens-ops backup`: take a backup (bare), `list`, `verify`, `prune`."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
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

from chainlens_ops.backup.manifest import BASE, parse_time, read_catalog
from chainlens_ops.backup.proofs import DRILL, VERIFY, Proof, latest_proofs
from chainlens_ops.backup.prune import prune_backups
from chainlens_ops.backup.take import WAL_WAIT_S, BackupOptions, BackupResult, take_backup
from chainlens_ops.backup.verify import verify_backup
from chainlens_ops.cli.common import (
    DbOption,
    DbOrAll,
    DsnOption,
    JsonOption,
    console,
    err_console,
    print_json,
    repository_for,
    state,
    to_jsonable,
)
from chainlens_ops.cli.wal import RepoOption
from chainlens_ops.configcheck import format_bytes
from chainlens_ops.errors import ChainlensError, UsageError
from chainlens_ops.repository import Repository
from chainlens_ops.wal.catalog import list_wal

app = typer.Typer(
    help="Backups into the repository: take one (bare `backup`), list, verify, prune.",
    invoke_without_command=True,
)


class Kind(StrEnum):
    auto = "auto"
    base = "base"
    logical = "logical"


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
        Kind, typer.Option("--kind", help="auto: base when WAL is archived here, else logical.")
    ] = Kind.auto,
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
    results: list[BackupResult] = []
    failures: list[tuple[str, ChainlensError]] = []
    for target in targets:
        try:
            repository = repository_for(ctx, target.name, repo)
            with _progress_bar(show_bar, f"{target.name}") as bar:
                options = BackupOptions(
                    kind=kind.value, notify=_say(quiet), wal_wait_s=wal_timeout, jobs=jobs,
                    progress=bar.advance if bar else None, stage=bar.stage if bar else None,
                    zstd_level=settings.backup.zstd_level, spool_dir=settings.spool_dir,
                    spool_reserve=settings.backup.spool_reserve,
                )  # fmt: skip
                result = take_backup(target, repository, options, earlier=results)
        except ChainlensError as exc:
            if len(targets) == 1:
                raise
            err_console.print(
                f"chainlens-ops: error: {target.name}: {exc.one_line()}", markup=False
            )
            failures.append((target.name, exc))
            continue
        results.append(result)
        if not json_output:
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
    if failures:
        names = ", ".join(name for name, _ in failures)
        err_console.print(f"chainlens-ops: error: backup failed for {names}", markup=False)
        raise typer.Exit(max(exc.exit_code for _, exc in failures))


@app.command("list")
def list_command(
    ctx: typer.Context,
    db: DbOption = None,
    repo: RepoOption = None,
    json_output: JsonOption = False,
) -> None:
    """The catalog, newest first, and the recoverable window."""
    repository = repository_for(ctx, db.value if db else None, repo)
    repository.require_present()
    catalog = read_catalog(repository)
    valid = catalog.valid
    proofs = {b.id: latest_proofs(repository, b.id) for b in valid}
    if json_output:
        print_json([{**b.to_dict(), **_proofs_json(proofs[b.id])} for b in valid])
        return
    if not valid:
        console.print(f"{repository.url}: no backups yet", markup=False)
    else:
        table = Table()
        # The id (time-kind-target) is never cut; the rest folds on a narrow terminal.
        table.add_column("id", no_wrap=True)
        for heading in ("took", "size", "proven"):
            table.add_column(heading, overflow="fold")
        for b in valid:
            took = _seconds(b.started_at, b.finished_at)
            table.add_row(
                b.id, f"{took:.0f}s", format_bytes(b.size_bytes), _proofs_text(proofs[b.id])
            )
        console.print(table)
    bases = [b for b in valid if b.kind == BASE]
    if bases:
        oldest = bases[-1]  # newest first
        newest = _newest_wal(repository)
        console.print(
            f"recoverable window (point-in-time): {oldest.finished_at[:19].replace('T', ' ')}"
            f" ({oldest.stop_wal or oldest.start_wal}) .. newest archived WAL {newest or 'none'}",
            markup=False,
        )
    else:
        console.print("no base backup: point-in-time restore is not possible", markup=False)
    if catalog.without_manifest:
        console.print(
            f"{len(catalog.without_manifest)} incomplete backup(s) without a manifest "
            "(failed or running; `backup prune` removes failed ones)",
            markup=False,
        )


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
    if not result.ok:
        for check in result.failed:
            err_console.print(f"chainlens-ops: error: {check.detail}", markup=False)
        raise typer.Exit(1)


@app.command("prune")
def prune_command(
    ctx: typer.Context,
    keep_last: Annotated[
        int | None, typer.Option("--keep-last", help="Keep the newest N backups.")
    ] = None,
    keep_days: Annotated[
        float | None, typer.Option("--keep-days", help="Keep backups from the last D days.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the plan only.")] = False,
    db: DbOption = None,
    repo: RepoOption = None,
    json_output: JsonOption = False,
) -> None:
    """Remove backups beyond retention (never the newest valid one) and WAL no retained
    base backup needs."""
    result = prune_backups(
        repository_for(ctx, db.value if db else None, repo),
        keep_last=keep_last, keep_days=keep_days, dry_run=dry_run,
        notify=_say(json_output), spool_dir=state(ctx).settings.spool_dir,
    )  # fmt: skip
    if json_output:
        print_json(result)
        return
    verb = "would remove" if dry_run else "removed"
    for backup_id in result.removed:
        console.print(f"{verb} {backup_id}", markup=False)
    for backup_id in result.leftovers:
        console.print(f"{verb} leftovers of failed backup {backup_id}", markup=False)
    if line := result.cleanup.summary(dry_run):
        console.print(line, markup=False)
    console.print(
        f"kept {len(result.kept)} backup(s); {verb} {len(result.removed)}, and "
        f"{result.wal_removed} WAL file(s) ({format_bytes(result.wal_bytes_removed)}) older than "
        f"{result.wal_before or 'the oldest base backup (none kept: no WAL removed)'}",
        markup=False,
    )


def _proofs_json(proofs: dict[str, Proof]) -> dict[str, Any]:
    """`verified` and `drilled`: the latest record of each ({at, ok, detail}), or null."""
    out: dict[str, Any] = {}
    for kind, field_name in ((VERIFY, "verified"), (DRILL, "drilled")):
        proof = proofs.get(kind)
        out[field_name] = None if proof is None else {
            "at": proof.at.isoformat(), "ok": proof.ok, "detail": proof.detail,
        }  # fmt: skip
    return out


def _proofs_text(proofs: dict[str, Proof]) -> str:
    parts = []
    for kind in (VERIFY, DRILL):
        proof = proofs.get(kind)
        if proof is not None:
            verdict = "ok" if proof.ok else "FAILED"
            parts.append(f"{kind} {verdict} {proof.at:%m-%d}")
    return "; ".join(parts) or "-"


def _newest_wal(repository: Repository) -> str | None:
    listing = list_wal(repository)
    lasts = [r.last for tl in listing.timelines for r in tl.ranges]
    return max(lasts, key=lambda name: (name[8:], name[:8])) if lasts else None


def _seconds(start: str, end: str) -> float:
    return (parse_time(end) - parse_time(start)).total_seconds()
