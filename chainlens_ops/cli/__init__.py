"""The command line. Kept empty so `chainlens_ops.cli.hooks` (the `wal push`/`wal fetch`
door, run once per WAL segment) can be imported without Typer: the Typer app lives in
`chainlens_ops.cli.main`."""
