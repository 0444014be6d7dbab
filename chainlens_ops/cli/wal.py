"""`chainlens-ops wal`: placeholder until the wal issue lands."""

import typer

app = typer.Typer(help="(wal: not built yet)", no_args_is_help=True)
