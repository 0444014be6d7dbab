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

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from chainlens_ops.core.errors import OperationFailed, UsageError
from chainlens_ops.core.metadata import MAX_RECORD, Fields, load_json
from chainlens_ops.pg.walnames import parse_lsn, parse_wal_name
from chainlens_ops.repository import Repository
from chainlens_ops.repository.layout import MANIFEST_NAME as MANIFEST_NAME
from chainlens_ops.repository.layout import backup_prefix as backup_prefix
from chainlens_ops.repository.layout import manifest_key as manifest_key
from chainlens_ops.storage import NotFound

MANIFEST_FORMAT = 1
COMPLETE = "complete"
# How a physical backup's files are stored: one tar stream from pg_basebackup, or the
# file map and block bundles of a backup read from the data folder (backup.files).
TAR_LAYOUT = "tar"
FILES_LAYOUT = "files"
LAYOUTS = (TAR_LAYOUT, FILES_LAYOUT)


class BackupKind(StrEnum):
    """What a backup holds: the one list of kinds, for manifests, the catalog and the CLI."""

    BASE = "base"  # the whole cluster, full: replayable with archived WAL
    INCR = "incr"  # the whole cluster, the blocks changed since `parent`: replayable too
    LOGICAL = "logical"  # one database (pg_dump): restored as it was, never replayed


BASE = BackupKind.BASE
INCR = BackupKind.INCR
LOGICAL = BackupKind.LOGICAL


@dataclass(frozen=True)
class BackupObject:
    key: str
    size: int  # bytes stored
    sha256: str  # of the stored bytes
    raw_size: int = 0  # bytes before compression


@dataclass(frozen=True)
class BackupManifest:
    id: str
    kind: BackupKind
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
    layout: str = TAR_LAYOUT  # physical backups: TAR_LAYOUT or FILES_LAYOUT
    parent: str | None = None  # incr: the backup whose blocks this one builds on
    chain_depth: int = 0  # incr: 1 + its parent's depth; a full backup is 0

    @property
    def physical(self) -> bool:
        return self.kind in (BackupKind.BASE, BackupKind.INCR)

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
        data["kind"] = str(self.kind)
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


def new_backup_id(repo: Repository, when: datetime, kind: BackupKind, target: str) -> str:
    """A fresh id that sorts by time; never one whose folder holds anything already."""
    base = f"{when.astimezone(UTC).strftime('%Y%m%dT%H%M%SZ')}-{kind.value}-{target}"
    for n in range(1, 1000):
        candidate = base if n == 1 else f"{base}-{n}"
        if not repo.backups.holds_anything(candidate):
            return candidate
    raise OperationFailed(f"cannot find a free backup id near {base}")


def write_manifest(repo: Repository, manifest: BackupManifest) -> None:
    repo.backups.put_manifest(manifest.id, manifest.to_bytes())


class UnknownBackup(UsageError):
    """A backup id the catalog does not hold: the user's mistake (exit 2), and nothing
    may be written under it (a drill record would invent a backup for `prune`)."""


def require_backup(repo: Repository, backup_id: str) -> None:
    """UnknownBackup unless `backup_id` has a manifest (valid or not); a repository that
    is not there says so instead."""
    try:
        repo.backups.stat_manifest(backup_id)
    except NotFound:
        raise _unknown(repo, backup_id) from None


def _unknown(repo: Repository, backup_id: str) -> UnknownBackup:
    repo.require_present()
    return UnknownBackup(
        f"no backup {backup_id!r} in repository {repo.url}",
        hint="see `chainlens-ops backup list` for the ids",
    )


def read_manifest(repo: Repository, backup_id: str) -> BackupManifest:
    key = repo.backups.manifest_key(backup_id)
    try:
        with repo.backups.open_manifest(backup_id) as fh:
            raw = fh.read(MAX_RECORD)
    except NotFound:
        raise _unknown(repo, backup_id) from None
    return parse_manifest(raw, f"{repo.url}: {key}")


def parse_manifest(raw: bytes, where: str) -> BackupManifest:
    """A manifest read through the metadata layer: DamagedMetadata (one line naming the
    object and the field) for anything missing, mistyped or unreadable."""
    fields = load_json(raw, where, known=_MANIFEST_FIELDS)
    version = fields.integer("format", MANIFEST_FORMAT, minimum=1)
    if version > MANIFEST_FORMAT:
        raise OperationFailed(f"{where} has format {version}", hint="upgrade chainlens-ops")
    manifest = BackupManifest(
        id=fields.text("id"),
        kind=BackupKind(fields.choice("kind", tuple(BackupKind))),
        target=fields.text("target"),
        database=fields.text("database"),
        server=fields.text("server", empty=True),
        server_version=fields.integer("server_version"),
        system_identifier=fields.opt_parsed("system_identifier", int, "a number"),
        started_at=fields.parsed("started_at", parse_time, "a UTC time"),
        finished_at=fields.parsed("finished_at", parse_time, "a UTC time"),
        objects=fields.records("objects", _read_object, _OBJECT_FIELDS),
        tool_version=fields.text("tool_version", empty=True),
        status=fields.text("status", COMPLETE),
        timeline=fields.opt_integer("timeline", minimum=1),
        start_lsn=fields.opt_parsed("start_lsn", parse_lsn, "an LSN"),
        stop_lsn=fields.opt_parsed("stop_lsn", parse_lsn, "an LSN"),
        start_wal=fields.opt_parsed("start_wal", parse_wal_name, "a WAL file name"),
        stop_wal=fields.opt_parsed("stop_wal", parse_wal_name, "a WAL file name"),
        backup_label=fields.opt_text("backup_label"),
        compression=fields.text("compression", "zstd"),
        format=version,
        notes=fields.texts("notes"),
        layout=fields.choice("layout", LAYOUTS, TAR_LAYOUT),
        parent=fields.opt_text("parent"),
        chain_depth=fields.integer("chain_depth", 0, minimum=0),
    )
    # Totals are derived (to_dict writes them for readers of the JSON): they must agree.
    for total, value in (("size_bytes", manifest.size_bytes), ("raw_bytes", manifest.raw_bytes)):
        if fields.has(total) and fields.integer(total) != value:
            raise fields.damaged(total, f"is not the sum of its objects' ({value})")
    fields.finish()
    if manifest.physical and manifest.valid and not manifest.start_wal:
        raise fields.damaged("start_wal", "is missing (a base backup needs it)")
    if manifest.kind == INCR and (manifest.parent is None or manifest.chain_depth < 1):
        raise fields.damaged("parent", "is missing (an incremental backup needs it)")
    if manifest.kind == INCR and manifest.layout != FILES_LAYOUT:
        raise fields.damaged("layout", f"must be {FILES_LAYOUT!r} for an incremental backup")
    return manifest


def _read_object(fields: Fields) -> BackupObject:
    return BackupObject(
        key=fields.text("key"),
        size=fields.integer("size"),
        sha256=fields.parsed("sha256", _sha256, "a SHA-256 in hex"),
        raw_size=fields.integer("raw_size", 0),
    )


def _sha256(text: str) -> None:
    if len(text) != 64 or text.strip("0123456789abcdef"):
        raise ValueError(text)


_OBJECT_FIELDS = ("key", "size", "sha256", "raw_size")
_MANIFEST_FIELDS = (*BackupManifest.__dataclass_fields__, "size_bytes", "raw_bytes")


def can_start_pitr(backup: BackupManifest) -> bool:
    """A point-in-time restore can start from `backup`: a base backup that names its
    first WAL segment (the one rule; `Catalog.pitr_starts` and retention ask it)."""
    return backup.physical and bool(backup.start_wal)


@dataclass(frozen=True)
class Catalog:
    """Every backup folder of a repository: valid manifests, and ids with no manifest
    (failed or running backups) or a damaged one."""

    backups: list[BackupManifest]  # newest first
    without_manifest: list[str]
    damaged: list[str]
    problems: dict[str, str] = field(default_factory=dict)  # damaged id -> the one line

    @property
    def valid(self) -> list[BackupManifest]:
        return [b for b in self.backups if b.valid]

    def pitr_starts(self) -> list[BackupManifest]:
        """The backups a point-in-time restore can start from, newest first: valid base
        backups that name their first WAL segment, and incrementals among them only
        where their whole chain is there to read (`chain_problem`). The one place that
        knows which kinds replay WAL forward."""
        return [b for b in self.valid if can_start_pitr(b) and self.chain_problem(b) is None]

    def chain_problem(self, backup: BackupManifest) -> str | None:
        """Why `backup` cannot be read (an ancestor missing, damaged or incomplete: the
        line `chain` raises), None when it can."""
        if backup.parent is None:
            return None
        try:
            self.chain(backup)
        except OperationFailed as exc:
            return exc.one_line()
        return None

    def chain(self, backup: BackupManifest) -> list[BackupManifest]:
        """`backup` and the ancestors its blocks live in, oldest (the full) first: the one
        walk up `parent` for restore, verify and list. OperationFailed naming the first
        ancestor that is missing, damaged or incomplete (then `backup` cannot be read)."""
        by_id = {b.id: b for b in self.backups}
        chain = [backup]
        while chain[-1].parent is not None:
            parent = chain[-1].parent
            if parent in self.problems:
                raise OperationFailed(
                    f"backup {backup.id} builds on {parent}, which is damaged: "
                    f"{self.problems[parent]}"
                )
            found = by_id.get(parent)
            if found is None or not found.valid:
                raise OperationFailed(
                    f"backup {backup.id} builds on {parent}, which is "
                    + ("not in the repository" if found is None else "incomplete")
                )
            if found in chain or len(chain) > 10_000:
                raise OperationFailed(f"backup {backup.id}: its chain loops at {parent}")
            chain.append(found)
        return chain[::-1]


def read_catalog(repo: Repository) -> Catalog:
    folders: dict[str, bool] = {}
    for backup_id, name, _info in repo.backups.contents():
        if name:
            folders[backup_id] = folders.get(backup_id, False) or name == MANIFEST_NAME
    backups: list[BackupManifest] = []
    problems: dict[str, str] = {}
    for backup_id, has_manifest in folders.items():
        if not has_manifest:
            continue
        try:
            backups.append(read_manifest(repo, backup_id))
        except UnknownBackup:
            continue  # removed (pruned) since the listing
        except OperationFailed as exc:  # damaged, or gone since the listing
            problems[backup_id] = exc.one_line()
    backups.sort(key=lambda b: (b.started_at, b.id), reverse=True)
    missing = sorted(i for i, has in folders.items() if not has)
    damaged = sorted(problems, reverse=True)  # newest first, as the ids sort by time
    return Catalog(backups, missing, damaged, {i: problems[i] for i in damaged})
