"""The command line. Kept empty so `chainlens_ops.cli.hooks` (the `wal push`/`wal fetch`
door, run once per WAL segment) can be imported without Typer: the Typer app lives in
`chainlens_ops.cli.main`."""

# Global options that may stand before the command group, and whether they take a value.
# Here, not in `main`, so the console script (`chainlens_ops.entry`) can find the command
# words before it imports Typer.
GLOBAL_OPTIONS = {"--config": True, "-v": False, "--verbose": False}


def command_words(args: list[str]) -> tuple[str, ...]:
    """The first two words of the command, skipping global options."""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--config="):
            i += 1
        elif arg in GLOBAL_OPTIONS:
            i += 2 if GLOBAL_OPTIONS[arg] else 1
        else:
            break
    return tuple(args[i : i + 2])
