"""Builders for the unit tier: repositories in tmp_path on the local backend, WAL objects
and backup manifests written the way the tool writes them. No server, no network."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from chainlens_ops.backup.manifest import (
    BackupKind,
    BackupManifest,
    BackupObject,
    backup_prefix,
    format_time,
    write_manifest,
)
from chainlens_ops.pg.walnames import parse_wal_name, segment_name
from chainlens_ops.repository import Repository
from chainlens_ops.repository.walcodec import EncodingReader

MB = 1024 * 1024
T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def make_repo(folder: Path, *, seg_size: int = MB) -> Repository:
    repo = Repository(f"file://{folder}/repo")
    repo.ensure_marker(7, seg_size, 15)
    return repo


def store_wal(repo: Repository, name: str, content: bytes = b"x") -> None:
    reader = EncodingReader(io.BytesIO(content), name, len(content))
    repo.storage.put(repo.wal_key(parse_wal_name(name)), reader)  # type: ignore[arg-type]


def store_segments(repo: Repository, tli: int, segnos: range | list[int]) -> None:
    for n in segnos:
        store_wal(repo, segment_name(tli, n, MB))


def manifest(
    backup_id: str,
    kind: BackupKind = BackupKind.BASE,
    *,
    at: datetime = T0,
    target: str = "microservices",
    start_segno: int | None = 2,
    stop_lsn: str | None = None,
    status: str = "complete",
) -> BackupManifest:
    base = kind is BackupKind.BASE
    return BackupManifest(
        id=backup_id,
        kind=kind,
        target=target,
        database="chainlens_microservices",
        server="127.0.0.1:5432",
        server_version=150000,
        system_identifier="7",
        started_at=format_time(at),
        finished_at=format_time(at + timedelta(minutes=1)),
        objects=[BackupObject(f"{backup_prefix(backup_id)}data.zst", 100, "ab" * 32, 300)],
        tool_version="test",
        status=status,
        timeline=1 if base else None,
        start_lsn=f"0/{start_segno * MB:X}" if base and start_segno is not None else None,
        stop_lsn=stop_lsn or (f"0/{start_segno * MB + 0x100:X}" if base and start_segno else None),
        start_wal=segment_name(1, start_segno, MB) if base and start_segno is not None else None,
        stop_wal=segment_name(1, start_segno, MB) if base and start_segno is not None else None,
    )


def write_backup(repo: Repository, m: BackupManifest) -> BackupManifest:
    repo.storage.put(m.objects[0].key, io.BytesIO(b"data"))
    write_manifest(repo, m)
    return m


def write_restore_point(repo: Repository, name: str, lsn: str) -> None:
    from chainlens_ops.restore.points import catalog_key

    entry = {"name": name, "lsn": lsn, "timeline": 1, "state": "complete",
             "time": T0.isoformat()}  # fmt: skip
    repo.storage.put(catalog_key(name), io.BytesIO(json.dumps(entry).encode()))
