"""Pins: backups that retention never removes, with a note saying why.

    backups/<id>/pin.json      {"note": "...", "at": "<UTC time>"}

A pin is written and removed under the repository lock, which `backup prune` holds for
its whole run, so a pin never lands on a backup that a running prune is removing. Only
backups in the catalog can be pinned: a mistyped id writes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from chainlens_ops.backup.manifest import (
    BackupManifest,
    format_time,
    read_catalog,
    utc_now,
)
from chainlens_ops.core.errors import UsageError
from chainlens_ops.repository import Repository
from chainlens_ops.repository.layout import PIN_NAME as PIN_NAME
from chainlens_ops.repository.layout import pin_key as pin_key
from chainlens_ops.repository.lock import DEFAULT_WAIT_S
from chainlens_ops.storage import NotFound

_MAX_NOTE = 500
_MAX_RECORD = 64 * 1024


@dataclass(frozen=True)
class Pin:
    backup_id: str
    note: str | None
    at: str | None  # when it was pinned (UTC), None when the record is unreadable


@dataclass(frozen=True)
class PinResult:
    repo: str
    backup_id: str
    pinned: bool  # the state afterwards
    changed: bool
    note: str | None = None


def read_pins(repo: Repository) -> dict[str, Pin]:
    """Every pin of the repository, by backup id. An unreadable record still pins (the
    safe reading of damage here is "keep"), with no note."""
    pins: dict[str, Pin] = {}
    for backup_id in repo.proofs.pinned():
        note: str | None = None
        at: str | None = None
        try:
            with repo.proofs.open_pin(backup_id) as fh:
                data = json.loads(fh.read(_MAX_RECORD))
            note = data.get("note") if isinstance(data.get("note"), str) else None
            at = data.get("at") if isinstance(data.get("at"), str) else None
        except (NotFound, ValueError, AttributeError):
            pass
        pins[backup_id] = Pin(backup_id, note, at)
    return pins


def _catalog_entry(repo: Repository, backup_id: str) -> BackupManifest:
    for backup in read_catalog(repo).valid:
        if backup.id == backup_id:
            return backup
    raise UsageError(f"no backup {backup_id!r} in {repo.url}: see `chainlens-ops backup list`")


def set_pin(
    repo: Repository,
    backup_id: str,
    *,
    pinned: bool,
    note: str | None = None,
    lock_wait_s: float = DEFAULT_WAIT_S,
    notify: Callable[[str], None] | None = None,
) -> PinResult:
    """Pin (or unpin) `backup_id`, which must be a valid backup of the catalog."""
    if note is not None and len(note) > _MAX_NOTE:
        raise UsageError(f"--note is {len(note)} characters; at most {_MAX_NOTE}")
    repo.require_present()
    lock = repo.locks.lock(
        "backup pin" if pinned else "backup unpin", wait_s=lock_wait_s, notify=notify
    )
    with lock.hold():
        _catalog_entry(repo, backup_id)
        was = backup_id in read_pins(repo)
        if pinned:
            body = {"note": note, "at": format_time(utc_now())}
            repo.proofs.put_pin(backup_id, json.dumps(body, indent=2).encode() + b"\n")
        elif was:
            repo.proofs.delete_pin(backup_id)
    changed = pinned or was
    return PinResult(repo.url, backup_id, pinned, changed, note if pinned else None)
