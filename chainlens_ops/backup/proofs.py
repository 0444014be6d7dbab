"""Proof that a backup is good: the verify and drill records kept beside it.

    backups/<id>/drill-<YYYYMMDDTHHMMSS>Z.json    `restore drill` (chainlens_ops.restore.drill)
    backups/<id>/verify-<YYYYMMDDTHHMMSS>Z.json   `backup verify`

A record is a JSON object with at least `ok` (true or false) and, when it failed,
`error`; the time it was made is in its name (UTC). Writers name it with `proof_key`;
`status`, `backup list` and anything else that shows whether a backup was proven read
them with `latest_proofs`, so the layout has one writer of names and one reader. A record
that cannot be read counts as a failed proof (it says so), never as a pass.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from chainlens_ops.core.metadata import MAX_RECORD, DamagedMetadata, load_json
from chainlens_ops.repository import Repository
from chainlens_ops.repository.stores import ProofStore
from chainlens_ops.storage import NotFound

DRILL = "drill"
VERIFY = "verify"
PROOF_KINDS = (VERIFY, DRILL)
_NAME = re.compile(r"(verify|drill)-(\d{8}T\d{6})Z?\.json")


@dataclass(frozen=True)
class Proof:
    backup_id: str
    kind: str  # VERIFY or DRILL
    at: datetime  # when it was made (UTC, from the record's name)
    ok: bool
    detail: str  # the error of a failed proof; a short summary of a passed one
    key: str


def proof_key(backup_id: str, kind: str, when: datetime) -> str:
    """Where a record of `kind` made at `when` goes."""
    return ProofStore.key(backup_id, kind, _stamp(when))


def _stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y%m%dT%H%M%S")


def record_proof(
    repo: Repository, backup_id: str, kind: str, when: datetime, body: dict[str, Any]
) -> str:
    """Store a record (`body` must hold `ok`, and `error` when it failed); its key."""
    data = json.dumps(body, indent=2).encode() + b"\n"
    return repo.proofs.put(backup_id, kind, _stamp(when), data)


def proof_keys(repo: Repository, backup_id: str) -> list[tuple[str, datetime, str]]:
    """(kind, time, key) of every record of `backup_id`, oldest first."""
    found = []
    for name, key in repo.backups.objects(backup_id):
        match = _NAME.fullmatch(name)
        if match:
            when = datetime.strptime(match.group(2), "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
            found.append((match.group(1), when, key))
    return sorted(found, key=lambda k: (k[1], k[2]))


def read_proof(repo: Repository, backup_id: str, kind: str, when: datetime, key: str) -> Proof:
    try:
        with repo.proofs.open(key) as fh:
            fields = load_json(fh.read(MAX_RECORD), f"{repo.url}: {key}")
        ok = fields.flag("ok")
        error = fields.opt_text("error")
        rto = fields.number("rto_seconds") if kind == DRILL else None
    except NotFound:
        return Proof(backup_id, kind, when, False, "the record vanished while being read", key)
    except DamagedMetadata as exc:
        return Proof(backup_id, kind, when, False, exc.one_line(), key)
    return Proof(backup_id, kind, when, ok, _detail(kind, ok, error, rto), key)


def latest_proofs(repo: Repository, backup_id: str) -> dict[str, Proof]:
    """The newest record of each kind for `backup_id` (kinds never recorded are absent)."""
    newest: dict[str, tuple[datetime, str]] = {}
    for kind, when, key in proof_keys(repo, backup_id):
        newest[kind] = (when, key)  # oldest first: the last one wins
    return {kind: read_proof(repo, backup_id, kind, *found) for kind, found in newest.items()}


def _detail(kind: str, ok: bool, error: str | None, rto: float | None) -> str:
    if not ok:
        return error or f"the {kind} failed"
    if kind == DRILL and rto is not None:
        return f"restored and promoted; RTO {rto:.0f}s"
    return "passed"
