"""Backup manifests and the catalog they make.

Layout in the repository (see chainlens_ops.repository for the rest):

    backups/<id>/dump.pgc.zst       logical: `pg_dump -Fc -Z0`, zstd-compressed as it streams
    backups/<id>/base.tar.zst       base: `pg_basebackup -D - -Ft -X none` (backup_manifest
                                    inside the tar), zstd-compressed as it streams
    backups/<id>/manifest.json      written LAST, with a conditional put: a backup is in
                                    the catalog only once all its objects are durable

`<id>` sorts by time: `20261128T160102Z-base-microservices`. The catalog is the set of
manifests; objects without a manifest are leftovers of a failed backup, which `list`
never shows and `prune` removes.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from chainlens_ops.errors import OperationFailed
from chainlens_ops.repository import BACKUPS_PREFIX, Repository
from chainlens_ops.repository.layout import MANIFEST_NAME as MANIFEST_NAME
from chainlens_ops.repository.layout import backup_prefix as backup_prefix
from chainlens_ops.repository.layout import manifest_key as manifest_key
from chainlens_ops.storage import NotFound

MANIFEST_FORMAT = 1
LOGICAL = "logical"
BASE = "base"
COMPLETE = "complete"


@dataclass(frozen=True)
class BackupObject:
    key: str
    size: int  # bytes stored
    sha256: str  # of the stored bytes
    raw_size: int = 0  # bytes before compression


@dataclass(frozen=True)
class BackupManifest:
    id: str
    kind: str  # BASE or LOGICAL
    target: str  # the configured database name (supabase, microservices)
    database: str  # the database's own name (current_database())
    server: str  # host:port, never a password
    server_version: int
    system_identifier: str | None
    started_at: str
    finished_at: str
    objects: list[BackupObject]
    tool_version: str
    status: str = COMPLETE
    timeline: int | None = None
    start_lsn: str | None = None
    stop_lsn: str | None = None
    start_wal: str | None = None
    stop_wal: str | None = None
    backup_label: str | None = None
    compression: str = "zstd"
    format: int = MANIFEST_FORMAT
    notes: list[str] = field(default_factory=list)

    @property
    def size_bytes(self) -> int:
        return sum(o.size for o in self.objects)

    @property
    def raw_bytes(self) -> int:
        return sum(o.raw_size for o in self.objects)

    @property
    def valid(self) -> bool:
        return self.status == COMPLETE

    def started(self) -> datetime:
        return parse_time(self.started_at)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["size_bytes"] = self.size_bytes
        data["raw_bytes"] = self.raw_bytes
        return data

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), indent=2).encode() + b"\n"


def utc_now() -> datetime:
    return datetime.now(UTC)


def format_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def new_backup_id(repo: Repository, when: datetime, kind: str, target: str) -> str:
    """A fresh id that sorts by time; never one whose folder holds anything already."""
    base = f"{when.astimezone(UTC).strftime('%Y%m%dT%H%M%SZ')}-{kind}-{target}"
    for n in range(1, 1000):
        candidate = base if n == 1 else f"{base}-{n}"
        if next(iter(repo.storage.list(backup_prefix(candidate))), None) is None:
            return candidate
    raise OperationFailed(f"cannot find a free backup id near {base}")


def write_manifest(repo: Repository, manifest: BackupManifest) -> None:
    repo.storage.put(manifest_key(manifest.id), io.BytesIO(manifest.to_bytes()), if_absent=True)


def read_manifest(repo: Repository, backup_id: str) -> BackupManifest:
    key = manifest_key(backup_id)
    try:
        with repo.storage.open(key) as fh:
            raw = fh.read(16 * 1024 * 1024)
    except NotFound:
        raise OperationFailed(
            f"no backup {backup_id} in repository {repo.url}",
            hint="see `chainlens-ops backup list`",
        ) from None
    return parse_manifest(raw, f"{repo.url}: {key}")


def parse_manifest(raw: bytes, where: str) -> BackupManifest:
    try:
        data = json.loads(raw)
        data.pop("size_bytes", None)
        data.pop("raw_bytes", None)
        data["objects"] = [BackupObject(**o) for o in data["objects"]]
        manifest = BackupManifest(**data)
    except (ValueError, TypeError, KeyError):
        raise OperationFailed(f"{where} is damaged or not a backup manifest") from None
    if manifest.format > MANIFEST_FORMAT:
        raise OperationFailed(f"{where} has format {manifest.format}", hint="upgrade chainlens-ops")
    return manifest


@dataclass(frozen=True)
class Catalog:
    """Every backup folder of a repository: valid manifests, and ids with no manifest
    (failed or running backups) or a damaged one."""

    backups: list[BackupManifest]  # newest first
    without_manifest: list[str]
    damaged: list[str]

    @property
    def valid(self) -> list[BackupManifest]:
        return [b for b in self.backups if b.valid]


def read_catalog(repo: Repository) -> Catalog:
    folders: dict[str, bool] = {}
    for info in repo.storage.list(BACKUPS_PREFIX):
        rest = info.key[len(BACKUPS_PREFIX) :]
        backup_id, _, name = rest.partition("/")
        if name:
            folders[backup_id] = folders.get(backup_id, False) or name == MANIFEST_NAME
    backups: list[BackupManifest] = []
    damaged: list[str] = []
    for backup_id, has_manifest in folders.items():
        if not has_manifest:
            continue
        try:
            backups.append(read_manifest(repo, backup_id))
        except OperationFailed:
            damaged.append(backup_id)
    backups.sort(key=lambda b: (b.started_at, b.id), reverse=True)
    missing = sorted(i for i, has in folders.items() if not has)
    return Catalog(backups=backups, without_manifest=missing, damaged=damaged)
