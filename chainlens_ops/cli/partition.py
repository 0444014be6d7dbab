"""`chainlens-ops partition`: placeholder until the partition issue lands."""

import typer

app = typer.Typer(help="(partition: not built yet)", no_args_is_help=True)
