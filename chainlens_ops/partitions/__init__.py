"""Monthly partitions of the managed tables (see `create` for how a month is made safely).

The CLI and the daemon call these functions; each returns dataclasses and never prints.
"""

from chainlens_ops.partitions.create import (
    EnsureResult,
    MonthResult,
    TableFailure,
    create_month,
    ensure_partitions,
)
from chainlens_ops.partitions.registry import (
    MANAGED_TABLES,
    ManagedTable,
    PartitionInfo,
    TablePartitions,
    list_partitions,
    resolve_table,
)
from chainlens_ops.partitions.retain import RetainAction, RetainResult, retain_partitions

__all__ = [
    "MANAGED_TABLES",
    "EnsureResult",
    "ManagedTable",
    "MonthResult",
    "PartitionInfo",
    "RetainAction",
    "RetainResult",
    "TableFailure",
    "TablePartitions",
    "create_month",
    "ensure_partitions",
    "list_partitions",
    "resolve_table",
    "retain_partitions",
]
