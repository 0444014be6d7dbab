"""The `chainlens-ops` command line: parses, calls one core function, prints the result.

Errors are caught here and nowhere else: a ChainlensError becomes one line on stderr and
its documented exit code; a traceback only with -v.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Annotated

import typer

from chainlens_ops import __version__
from chainlens_ops.cli import GLOBAL_OPTIONS, command_words
from chainlens_ops.cli.common import GlobalState, err_console
from chainlens_ops.cli.helptext import polish
from chainlens_ops.core.errors import EXIT_USAGE, ChainlensError

try:  # Typer >= 0.2x ships its own copy of click
    from typer._click import core as click_core
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover - older Typer on upstream click
    from click import core as click_core  # type: ignore[no-redef]
    from click import exceptions as click_exc  # type: ignore[no-redef]

EXIT_CODES_HELP = (
    "Exit codes: 0 success; 1 the operation failed; 2 bad input or usage; "
    "3 configuration or connection error. `wal fetch`: 1 = segment not in the archive, "
    "255 = any other failure (PostgreSQL stops recovery)."
)

# Every command group (a Typer sub-app) and single command, in help order, each named as
# its module under chainlens_ops.cli (`-` as `_`). A module is imported only when its
# command runs: a `restore table` does not import the daemon, the demo or backup's prune
# (~0.05-0.1 s of CPU at every start; the whole tree's help loads them all).
GROUPS = ("schema", "partition", "wal", "backup", "restore", "restore-point", "repo", "cache",
          "daemon")  # fmt: skip
# `backup` and `restore` act on their own; their subcommands are optional.
OPTIONAL_SUBCOMMAND = frozenset({"backup", "restore"})
COMMANDS = {"check": "check_command", "status": "status_command", "demo": "demo_command"}
# These check command lines (daemon jobs, the demo's) against the whole command tree
# (cli.daemon.command_checker on the root command), so they load every module.
NEED_WHOLE_TREE = frozenset({"daemon", "demo", "status"})


def make_app(names: Iterable[str] | None = None) -> typer.Typer:
    """The Typer app with the commands `names` (default: all of them)."""
    wanted = set(GROUPS) | set(COMMANDS) if names is None else set(names)
    app = typer.Typer(
        name="chainlens-ops",
        help="Operations toolkit for the ChainLens PostgreSQL databases.",
        epilog=EXIT_CODES_HELP,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=True,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},  # inherited by every command
    )
    app.callback()(main_callback)
    for name in GROUPS:
        if name in OPTIONAL_SUBCOMMAND and name in wanted:
            app.add_typer(_module(name).app, name=name, subcommand_metavar="[COMMAND [ARGS]...]")
        elif name in wanted:
            app.add_typer(_module(name).app, name=name)
    for name, function in COMMANDS.items():
        if name in wanted:
            app.command(name)(getattr(_module(name), function))
    return app


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"chainlens_ops.cli.{name.replace('-', '_')}")


def needed_commands(args: list[str]) -> list[str] | None:
    """The one command `args` run, when it can be loaded alone; None: load them all (no
    command, help of the whole tree, an unknown word, NEED_WHOLE_TREE)."""
    words = command_words(args)
    name = words[0] if words else ""
    if (name in GROUPS or name in COMMANDS) and name not in NEED_WHOLE_TREE:
        return [name]
    return None


def _version(value: bool) -> None:
    if value:
        print(f"chainlens-ops {__version__}")
        raise typer.Exit(0)


def main_callback(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        # readable=False: an unreadable file is a configuration error (exit 3, like a
        # missing one), reported by load_settings, not click's usage error (2).
        typer.Option(
            "--config", readable=False, help="TOML config file (default: $CHAINLENS_CONFIG)."
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Tracebacks on errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    ctx.obj = GlobalState(config_file=config, verbose=verbose)


def hoist_global_options(args: list[str]) -> list[str]:
    """Global options may follow the command (`schema status -v --config f.toml`):
    move them before it, where Typer reads them. Nothing after `--` is touched."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest += args[i:]
            break
        name = arg.split("=", 1)[0]
        if name in GLOBAL_OPTIONS:
            takes_value = GLOBAL_OPTIONS[name] and "=" not in arg
            front += args[i : i + 2] if takes_value else [arg]
            i += 2 if takes_value else 1
            continue
        rest.append(arg)
        i += 1
    return front + rest


def build_command(names: Iterable[str] | None = None) -> click_core.Command:
    """The click command tree (of `names` only, if given), with help written to fit
    (chainlens_ops.cli.helptext)."""
    command = typer.main.get_command(make_app(names))
    polish(command)
    return command


def __getattr__(name: str) -> typer.Typer:
    """`app`: the whole tree, built when asked for (tests, Typer's own tools)."""
    if name == "app":
        return make_app()
    raise AttributeError(name)


def run(args: list[str]) -> int:
    """Run the CLI on `args`, returning the process exit code."""
    args = hoist_global_options(args)
    verbose = "-v" in args or "--verbose" in args
    command = build_command(needed_commands(args))
    try:
        result = command.main(args=args, prog_name="chainlens-ops", standalone_mode=False)
    except ChainlensError as exc:
        if verbose:
            traceback.print_exc()
        err_console.print(f"chainlens-ops: error: {exc.one_line()}", markup=False)
        return exc.exit_code
    except click_exc.UsageError as exc:
        if exc.ctx is not None and type(exc).__name__.startswith("NoArgsIsHelp"):
            print(exc.ctx.get_help())
            return EXIT_USAGE
        where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        message = exc.format_message().replace("\n", " ").replace("Value error, ", "")
        err_console.print(f"chainlens-ops: error: {message}{where}", markup=False)
        return EXIT_USAGE
    except click_exc.ClickException as exc:
        err_console.print(f"chainlens-ops: error: {exc.format_message()}", markup=False)
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("chainlens-ops: error: interrupted", markup=False)
        return 130
    return result if isinstance(result, int) else 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))
