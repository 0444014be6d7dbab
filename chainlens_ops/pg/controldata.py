"""What `pg_controldata` says about a data folder: the settings recorded in pg_control.

A server in recovery accepts connections (hot standby) only when its
`max_connections`, `max_worker_processes`, `max_wal_senders`,
`max_prepared_transactions` and `max_locks_per_transaction` are at least the values
the primary ran with, which pg_control records. A restored folder whose configuration
lives elsewhere (Debian keeps it in /etc/postgresql) would start with the defaults and
refuse to serve reads, so scratch servers take these values from here.
"""

from __future__ import annotations

from pathlib import Path

from chainlens_ops.core.errors import OperationFailed, PgCommandError
from chainlens_ops.pg.binaries import find_binary
from chainlens_ops.pg.process import run_pg

# pg_controldata's label -> the parameter it records (PostgreSQL 12+).
HOT_STANDBY_MINIMUMS = {
    "max_connections setting": "max_connections",
    "max_worker_processes setting": "max_worker_processes",
    "max_wal_senders setting": "max_wal_senders",
    "max_prepared_xacts setting": "max_prepared_transactions",
    "max_locks_per_xact setting": "max_locks_per_transaction",
}


def read_controldata(pgdata: Path, major: int) -> dict[str, str]:
    """Every `label: value` line of `pg_controldata pgdata`."""
    try:
        result = run_pg([find_binary("pg_controldata", major), str(pgdata)], timeout=60)
    except PgCommandError as exc:
        raise OperationFailed(f"cannot read pg_control of {pgdata}: {exc.one_line()}") from None
    return parse_controldata(result.stdout)


def parse_controldata(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        label, sep, value = line.partition(":")
        if sep:
            fields[label.strip()] = value.strip()
    return fields


def hot_standby_minimums(fields: dict[str, str]) -> dict[str, str]:
    """The parameters a recovering copy needs at least, from pg_controldata's fields."""
    return {param: fields[label] for label, param in HOT_STANDBY_MINIMUMS.items()
            if fields.get(label, "").isdigit()}  # fmt: skip
