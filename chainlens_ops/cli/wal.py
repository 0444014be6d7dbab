"""`chainlens-ops wal`: archive and restore WAL segments, list and check the archive.

`wal push` and `wal fetch` run once per segment, so the console script hands them to
`chainlens_ops.cli.hooks` before Typer is even imported; the commands below exist for
`--help` and for callers that go through this app, and call the same core functions.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from chainlens_ops.cli import hooks
from chainlens_ops.cli.common import (
    DbOption,
    JsonOption,
    console,
    err_console,
    finish,
    print_json,
    prose,
    repository_for,
    state,
)
from chainlens_ops.core.errors import FETCH_FATAL, ChainlensError
from chainlens_ops.settings.keys import format_bytes
from chainlens_ops.wal.archive import archive_segment, restore_segment
from chainlens_ops.wal.inventory import check_wal, list_wal

app = typer.Typer(
    help="Archive WAL into the repository (archive_command/restore_command), list and check it.",
    no_args_is_help=True,
)

RepoOption = Annotated[
    str | None,
    typer.Option(
        "--repo",
        help="Repository: file:///abs/path, /abs/path or s3://bucket/prefix "
        "(default: CHAINLENS_<DB>_REPO, CHAINLENS_REPO or the config file).",
        show_default=False,
    ),
]
SpoolOption = Annotated[
    str | None,
    typer.Option("--spool", help="Spool folder (default: spool_dir, or next to the data folder)."),
]


@app.command("push")
def push_command(
    ctx: typer.Context,
    path: Annotated[str, typer.Argument(help="The WAL file (PostgreSQL's %p).")],
    repo: RepoOption = None,
    db: DbOption = None,
    spool: SpoolOption = None,
    look_ahead: Annotated[
        int | None,
        typer.Option(
            "--look-ahead", help="Also upload up to N other .ready files (default: 16 for S3)."
        ),
    ] = None,
) -> None:
    """Archive one WAL file: archive_command = 'chainlens-ops wal push %p'.

    Exit 0 only once the file is durable in the repository; 1 failed; 2 usage; 3 config.
    """
    gs = state(ctx)
    where = {"db": db.value if db else None, "repo": repo, "spool_dir": spool}
    result = archive_segment(gs.settings, path, look_ahead=look_ahead, **where)
    if gs.verbose:
        hooks.say(hooks.push_summary(result))
    finish(result)


@app.command("fetch")
def fetch_command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The WAL file name (PostgreSQL's %f).")],
    dest: Annotated[str, typer.Argument(help="Where to write it (PostgreSQL's %p).")],
    repo: RepoOption = None,
    db: DbOption = None,
    spool: SpoolOption = None,
    prefetch: Annotated[
        int | None,
        typer.Option("--prefetch", help="Download the next N segments ahead (default: 8 for S3)."),
    ] = None,
    required_through: Annotated[
        str | None,
        typer.Option("--required-through", help="Missing up to these segments is fatal (255)."),
    ] = None,
) -> None:
    """Restore one WAL file: restore_command = 'chainlens-ops wal fetch %f %p'.

    Exit 0 restored; 1 not in the repository; 255 any other failure (stops recovery).
    """
    gs = state(ctx)
    where = {"db": db.value if db else None, "repo": repo, "spool_dir": spool}
    try:
        result = restore_segment(gs.settings, name, dest, prefetch=prefetch,
                                 required_through=required_through, **where)  # fmt: skip
    except Exception as exc:
        message = exc.one_line() if isinstance(exc, ChainlensError) else repr(exc)
        hooks.say(f"error: wal fetch: fatal: {message}")
        raise typer.Exit(FETCH_FATAL) from None
    if gs.verbose:
        hooks.say(hooks.fetch_summary(result))
    finish(result)


@app.command("list")
def list_command(
    ctx: typer.Context,
    repo: RepoOption = None,
    db: DbOption = None,
    json_output: JsonOption = False,
) -> None:
    """Segments per timeline: contiguous ranges, partial segments, stored sizes."""
    listing = list_wal(repository_for(ctx, db.value if db else None, repo))
    if json_output:
        print_json(listing)
        return
    if not listing.timelines:
        console.print(f"{listing.repo}: no WAL archived yet", markup=False)
        return
    # Fits 80 columns: two whole segment names (24 characters each) and short headings
    # (tli = timeline, as PostgreSQL writes it); notes fold.
    table = Table("tli", box=None, pad_edge=False, padding=(0, 2, 0, 0))
    for heading in ("first", "last"):
        table.add_column(heading, no_wrap=True)  # segment names: never cut
    for heading in ("count", "stored", "notes"):
        table.add_column(heading)
    for tl in listing.timelines:
        notes = []
        if tl.history_file:
            notes.append("history")
        notes += [f"{p}" for p in tl.partial]
        if tl.backup_files:
            notes.append(f"{len(tl.backup_files)} backup file(s)")
        rows = tl.ranges or []
        if not rows:
            table.add_row(str(tl.timeline), "", "", "0", "", ", ".join(notes))
        for i, r in enumerate(rows):
            table.add_row(
                str(tl.timeline),
                r.first,
                r.last,
                str(r.count),
                format_bytes(r.stored_bytes),
                ", ".join(notes) if i == 0 else "",
            )
    console.print(table)
    console.print(
        f"{listing.repo}: {listing.objects} objects, {format_bytes(listing.stored_bytes)} stored",
        markup=False,
    )


@app.command("check")
def check_command(
    ctx: typer.Context,
    repo: RepoOption = None,
    db: DbOption = None,
    start: Annotated[
        str | None,
        typer.Option("--from", help="First segment needed (default: the oldest archived)."),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Gaps in the archive from the oldest segment to the newest, across timeline switches.

    Exit 1 when a segment is missing (each gap is named).
    """
    result = check_wal(repository_for(ctx, db.value if db else None, repo), start=start)
    if json_output:
        print_json({**_plain(result), "ok": result.ok})
    elif result.first:
        prose(
            f"{result.repo}: checked {result.segments_checked} segments "
            f"{result.first} .. {result.last} on timeline(s) "
            f"{', '.join(str(s.timeline) for s in result.path)}"
        )
    if result.stale_temp_files and not json_output:
        prose(
            f"{result.stale_temp_files} stale temp file(s) of killed pushes found, "
            f"{result.stale_temp_removed} removed"
        )
    if result.ok:
        if not json_output:
            console.print("no gaps", markup=False)
        return
    for gap in result.gaps:
        err_console.print(
            f"chainlens-ops: error: gap on timeline {gap.timeline}: {gap.first} .. {gap.last} "
            f"({gap.count} segment{'s' if gap.count != 1 else ''} missing)",
            markup=False,
        )
    for problem in result.problems:
        err_console.print(f"chainlens-ops: error: {problem}", markup=False)
    finish(result)


def _plain(value: object) -> dict[str, object]:
    from chainlens_ops.cli.common import to_jsonable

    data = to_jsonable(value)
    assert isinstance(data, dict)
    return data
