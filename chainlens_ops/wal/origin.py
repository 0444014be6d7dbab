"""Nothing from another cluster gets into a repository.

Segments carry their system identifier in their header (checked in `push_file`);
`.history` and `.backup` files do not. PostgreSQL runs `archive_command` in the data
folder, whose `global/pg_control` begins with the system identifier: every file pushed
from a data folder (`.../pg_wal/NAME`) is checked against the repository's marker with
that (8 bytes read, no listing). A history or backup file pushed from anywhere else must
be consistent with what the repository already holds:

- a `.history` file's newest switch names a parent timeline the repository has WAL of,
  and a switch point no earlier than that timeline's first archived segment;
- a `.backup` file's START WAL LOCATION segment is in the repository.
"""

from __future__ import annotations

import os

from chainlens_ops.pg.walnames import BACKUP, HISTORY, WalName, lsn_to_segno, parse_wal_name
from chainlens_ops.repository import Repository, WrongCluster, data_folder_system_identifier
from chainlens_ops.storage import NotFound


def check_origin(repo: Repository, path: str, name: WalName) -> None:
    """Raise WrongCluster if the file at `path` cannot belong to `repo`'s cluster."""
    sysid = data_folder_system_identifier(path)
    if sysid is not None:
        marker = repo.marker()
        if marker is not None and marker.system_identifier != sysid:
            raise WrongCluster(
                f"{name.name} comes from data folder "
                f"{os.path.dirname(os.path.dirname(os.path.abspath(path)))} of database "
                f"system {sysid}, but repository {repo.url} belongs to database system "
                f"{marker.system_identifier}",
                hint="each cluster needs its own repository",
            )
        return
    if name.kind == HISTORY:
        _check_history(repo, path, name)
    elif name.kind == BACKUP:
        _check_backup(repo, name)


def _foreign(repo: Repository, name: WalName, why: str) -> WrongCluster:
    marker = repo.marker()
    system = f"database system {marker.system_identifier}" if marker else "no cluster yet"
    return WrongCluster(
        f"{name.name} does not fit repository {repo.url} ({system}): {why}",
        hint="is it from another cluster? each cluster needs its own repository",
    )


def _check_history(repo: Repository, path: str, name: WalName) -> None:
    from chainlens_ops.wal.inventory import parse_history

    with open(path, "rb") as fh:
        switches = parse_history(fh.read(1024 * 1024).decode("ascii", "replace"))
    marker = repo.marker()
    if not switches or marker is None:
        raise _foreign(repo, name, "no parent timeline this repository knows")
    parent, lsn = switches[-1]
    first = next(iter(repo.wal.list(parent)), None)
    if first is None:
        raise _foreign(repo, name, f"its parent timeline {parent} has no WAL here")
    first_segno = parse_wal_name(first.key.rsplit("/", 1)[-1]).segno(marker.wal_segment_size)
    if lsn_to_segno(max(lsn - 1, 0), marker.wal_segment_size) < first_segno:
        raise _foreign(repo, name, f"its switch point lies before timeline {parent}'s WAL here")


def _check_backup(repo: Repository, name: WalName) -> None:
    start = name.name[:24]
    try:
        repo.wal.stat(parse_wal_name(start))
    except NotFound:
        raise _foreign(repo, name, f"its start segment {start} is not in the repository") from None
