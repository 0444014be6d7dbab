"""The `wal push` / `wal fetch` door: PostgreSQL starts one process per WAL segment.

Measured: importing Typer + rich + boto3 + psycopg costs ~425 ms before any work, while
pgBackRest archives a 16 MB segment in ~67 ms. So entry.py hands these two commands here
before Typer is imported; their options are read from the one table below, the archive
is opened by core (`chainlens_ops.wal.archive.open_archive`, which the Typer commands
and the daemon call too), and the exit code comes from the result or the error.

Exit codes:
    wal push   0 archived (durable); 1 failed; 2 usage error; 3 configuration error
    wal fetch  0 restored; 1 not in the repository (a confirmed absence, and only that, of
               a segment the restore does not require: see --required-through);
               255 anything else, usage errors included (PostgreSQL stops recovery
               instead of ending it early)
"""

from __future__ import annotations

import sys

from chainlens_ops.core.errors import EXIT_FAILED, EXIT_OK, FETCH_FATAL, ChainlensError, UsageError

# No dataclasses, typing or pathlib here or below on this path (chainlens_ops.core.record).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    from chainlens_ops.core.outcome import Outcome
    from chainlens_ops.wal.fetch import FetchResult
    from chainlens_ops.wal.push import PushResult

    _R = TypeVar("_R", bound=Outcome)

# (option, metavar, help) per command: the parser and the help text both read this table;
# cli/wal.py's Typer commands carry the same options (a test compares them).
COMMON_OPTIONS = (
    ("--repo", "URL", "file:///abs/path, /abs/path or s3://bucket/prefix "
     "(default: CHAINLENS_<DB>_REPO, CHAINLENS_REPO or the config file)"),
    ("--db", "NAME", "supabase or microservices (default: default_db)"),
    ("--spool", "DIR", "spool folder (default: spool_dir, or next to the data folder)"),
)  # fmt: skip
OPTIONS = {
    "push": (*COMMON_OPTIONS, ("--look-ahead", "N", "also upload up to N other .ready files "
                               "in parallel (default: 16 for S3, 0 for a local repository)")),
    "fetch": (*COMMON_OPTIONS, ("--prefetch", "N", "download the next N segments in parallel "
                                "(default: 8 for S3, 0 for a local repository)"),
              ("--required-through", "SEGMENTS", "a missing segment up to these (one per "
               "timeline, comma-separated; `restore` writes it) is fatal (255), not absent")),
}  # fmt: skip
ARGUMENTS = {"push": ("PATH",), "fetch": ("NAME", "DEST")}
SUMMARY = {
    "push": "Archive one WAL file (archive_command = 'chainlens-ops wal push %p').\n"
    "  Exit 0 only once it is durable in the repository; 1 failed; 2 usage; 3 config.",
    "fetch": "Restore one WAL file (restore_command = 'chainlens-ops wal fetch %f %p').\n"
    "  Exit 0 restored; 1 not in the repository; 255 any other failure (fatal to\n"
    "  recovery).",
}


def usage(command: str) -> str:
    lines = [
        f"Usage: chainlens-ops [--config FILE] [-v] wal {command} [OPTIONS] "
        + " ".join(ARGUMENTS[command]),
        "",
        "  " + SUMMARY[command],
        "",
        "Options:",
    ]
    import textwrap  # help only: not on the push/fetch path

    for option, metavar, text in OPTIONS[command]:
        wrapped = textwrap.wrap(text, width=80 - 22)
        head = f"  {option} {metavar}"
        if len(head) > 20:  # too long for the column: the text starts on the next line
            lines.append(head)
            head = ""
        lines.append(head.ljust(22) + f"\n{' ' * 22}".join(wrapped))
    lines.append("  -h, --help".ljust(22) + "show this message")
    return "\n".join(lines) + "\n"


class HookArgs:
    def __init__(self) -> None:
        self.config: str | None = None
        self.verbose = False
        self.help = False
        self.options: dict[str, str] = {}
        self.positional: list[str] = []

    def count(self, option: str) -> int | None:
        value = self.options.get(option)
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            raise UsageError(f"{option} takes a whole number, not {value!r}") from None


def parse_args(args: list[str], command: str) -> HookArgs:
    """Global options, then `wal <command>`, then the command's options and arguments."""
    valued = {option for option, _, _ in OPTIONS[command]}
    parsed = HookArgs()
    i = 0
    while i < len(args) and args[i] != "wal":
        arg = args[i]
        if arg == "--config" and i + 1 < len(args):
            parsed.config, i = args[i + 1], i + 2
            continue
        if arg.startswith("--config="):
            parsed.config = arg.split("=", 1)[1]
        elif arg in ("-v", "--verbose"):
            parsed.verbose = True
        else:
            raise UsageError(f"unexpected {arg!r} before `wal {command}`")
        i += 1
    if args[i : i + 2] != ["wal", command]:
        raise UsageError(f"expected `wal {command}`")
    rest = args[i + 2 :]
    only_positional = False
    j = 0
    while j < len(rest):
        arg = rest[j]
        j += 1
        if only_positional or not arg.startswith("-") or arg == "-":
            parsed.positional.append(arg)
        elif arg == "--":
            only_positional = True
        elif arg in ("-h", "--help"):
            parsed.help = True
        elif arg in ("-v", "--verbose"):
            parsed.verbose = True
        elif arg == "--config" or arg.startswith("--config="):
            option, eq, value = arg.partition("=")
            if not eq:
                if j >= len(rest):
                    raise UsageError("--config needs a value")
                value, j = rest[j], j + 1
            parsed.config = value
        else:
            option, eq, value = arg.partition("=")
            if option not in valued:
                raise UsageError(f"unknown option {option!r} for `wal {command}` (see --help)")
            if not eq:
                if j >= len(rest):
                    raise UsageError(f"{option} needs a value")
                value, j = rest[j], j + 1
            parsed.options[option] = value
    if not parsed.help and len(parsed.positional) != len(ARGUMENTS[command]):
        names = ARGUMENTS[command]
        wanted = f"one {names[0]}" if len(names) == 1 else " and ".join(names)
        raise UsageError(f"wal {command} takes {wanted} (PostgreSQL's "
                         f"{'%p' if command == 'push' else '%f %p'})")  # fmt: skip
    return parsed


def push_summary(result: PushResult) -> str:
    ahead = f", {len(result.look_ahead)} uploaded ahead" if result.look_ahead else ""
    return f"wal push: {result.name}: {result.outcome.lower()}{ahead}"


def fetch_summary(result: FetchResult) -> str:
    if not result.found:
        return f"wal fetch: {result.name}: not in the repository"
    extra = f", prefetched {len(result.prefetched)}" if result.prefetched else ""
    return f"wal fetch: {result.name}: restored from {result.source.lower()}{extra}"


def push_main(args: list[str]) -> int:
    """`wal push`: returns the exit code; prints only errors (and a summary with -v)."""

    def call(parsed: HookArgs) -> PushResult:
        from chainlens_ops.settings.config import load_settings
        from chainlens_ops.wal.archive import archive_segment

        return archive_segment(
            load_settings(parsed.config),
            parsed.positional[0],
            look_ahead=parsed.count("--look-ahead"),
            **_where(parsed),
        )

    return _hook_main(args, "push", call, push_summary)


def fetch_main(args: list[str]) -> int:
    """`wal fetch`: 0 restored, 1 confirmed missing, 255 anything else."""

    def call(parsed: HookArgs) -> FetchResult:
        from chainlens_ops.settings.config import load_settings
        from chainlens_ops.wal.archive import restore_segment

        name, dest = parsed.positional
        return restore_segment(
            load_settings(parsed.config), name, dest, prefetch=parsed.count("--prefetch"),
            required_through=parsed.options.get("--required-through"), **_where(parsed),
        )  # fmt: skip

    return _hook_main(args, "fetch", call, fetch_summary)


def _where(parsed: HookArgs) -> dict[str, str | None]:
    return {
        "db": parsed.options.get("--db"),
        "repo": parsed.options.get("--repo"),
        "spool_dir": parsed.options.get("--spool"),
    }


def _hook_main(
    args: list[str], command: str, call: Callable[[HookArgs], _R], summary: Callable[[_R], str]
) -> int:
    """Parse, run, report: the exit code is the result's, or the error's (for `wal
    fetch` every failure is FETCH_FATAL: PostgreSQL must stop recovery, not end it)."""
    verbose = "-v" in args or "--verbose" in args
    fatal = command == "fetch"
    prefix = f"error: wal {command}: " + ("fatal: " if fatal else "")
    try:
        parsed = parse_args(args, command)
        if parsed.help:
            sys.stdout.write(usage(command))
            return EXIT_OK
        result = call(parsed)
        if parsed.verbose:
            say(summary(result))
        return int(result.exit_code)
    except ChainlensError as exc:
        say(prefix + exc.one_line(), exc if verbose else None)
        return FETCH_FATAL if fatal else exc.exit_code
    except Exception as exc:
        say(f"{prefix}internal error: {exc!r}", exc if verbose else None)
        return FETCH_FATAL if fatal else EXIT_FAILED


def say(line: str, exc: BaseException | None = None) -> None:
    """One line on stderr in the tool's format (`chainlens-ops: ...`)."""
    if exc is not None:
        import traceback

        traceback.print_exception(exc)
    sys.stderr.write(f"chainlens-ops: {line}\n")
    sys.stderr.flush()
