"""`chainlens-ops check`: placeholder until the WAL issue lands."""

import typer


def check_command() -> None:
    """End-to-end archive health check (not built yet)."""
    raise typer.Exit(1)
