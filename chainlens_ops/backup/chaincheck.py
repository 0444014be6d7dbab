"""`backup verify` of a files-layout backup (backup.files): every object of every backup
of its chain read and checked (size, sha256, zstd frame, bundle framing, each file map
readable), then the newest file map checked against what the bundles hold: every
byte it attributes to a backup of the chain is in one of that backup's records. A
damaged object of an ancestor is named as itself, so the verify of the newest fails
naming it."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass

from chainlens_ops.backup.files import (
    BLOCK_SIZE,
    MAP_NAME,
    FileMap,
    Record,
    bundle_group,
    read_bundle,
    read_file_map,
)
from chainlens_ops.backup.manifest import BackupManifest, read_catalog
from chainlens_ops.core.errors import ChainlensError
from chainlens_ops.repository import Repository
from chainlens_ops.repository.datacodec import CheckedReader, CorruptBackupObject

Spans = dict[tuple[str, str], list[tuple[int, int]]]  # (backup id, path) -> byte spans


@dataclass(frozen=True)
class Check:
    key: str
    ok: bool
    detail: str


def check_chain(repo: Repository, manifest: BackupManifest) -> list[Check]:
    try:
        chain = read_catalog(repo).chain(manifest)
    except ChainlensError as exc:
        return [Check(manifest.id, False, exc.one_line())]
    checks: list[Check] = []
    spans: Spans = {}
    newest: FileMap | None = None
    for backup in chain:
        for obj in backup.objects:
            where = f"{repo.url}: {obj.key}"
            try:
                if obj.key.endswith("/" + MAP_NAME):
                    fmap = read_file_map(repo, backup)
                    if backup is manifest:
                        newest = fmap
                    detail = f"file map of {len(fmap.files)} files"
                elif bundle_group(obj.key) is not None:
                    with CheckedReader(repo.backups, obj, decompress=False) as reader:
                        count = read_bundle(reader, where, _collect(spans, backup.id))  # type: ignore[arg-type]
                        reader.drain()
                    detail = f"bundle of {count} records"
                else:
                    with CheckedReader(repo.backups, obj) as reader:
                        reader.drain()
                    detail = "not part of the files layout"
            except CorruptBackupObject as exc:
                checks.append(Check(obj.key, False, exc.one_line()))
                continue
            except ChainlensError as exc:
                checks.append(Check(obj.key, False, f"{obj.key}: {exc.one_line()}"))
                continue
            checks.append(Check(obj.key, True, f"sha256 ok, {detail}"))
    if newest is not None and all(c.ok for c in checks):
        checks.append(_coverage(manifest, newest, {b.id for b in chain}, spans))
    elif newest is None and all(c.ok for c in checks):
        checks.append(Check(manifest.id, False, f"backup {manifest.id} has no {MAP_NAME}"))
    return checks


def _collect(spans: Spans, backup_id: str) -> Callable[[Record, int, bytes], None]:
    def seen(record: Record, done: int, chunk: bytes) -> None:
        if done == 0 or record.length == 0:
            spans.setdefault((backup_id, record.path), []).append(
                (record.offset, record.offset + record.length)
            )

    return seen


def _coverage(manifest: BackupManifest, fmap: FileMap, chain: set[str], spans: Spans) -> Check:
    merged = {key: _merge(value) for key, value in spans.items()}
    key = f"{manifest.id}/{MAP_NAME}"
    for entry in fmap.files:
        wanted = ([(0, entry.size, entry.whole)] if entry.whole is not None else [
            (first * BLOCK_SIZE, (first + count) * BLOCK_SIZE, owner)
            for first, count, owner in entry.ranges or ()
        ])  # fmt: skip
        for start, end, owner in wanted:
            if owner not in chain:
                return Check(key, False, f"{entry.path}: its bytes are in {owner}, which is "
                             f"not in the chain of {manifest.id}")  # fmt: skip
            if start < end and not _covers(merged.get((owner, entry.path), []), start, end):
                return Check(key, False, f"{entry.path}: bytes {start}..{end} are not in the "
                             f"bundles of {owner}")  # fmt: skip
    return Check(key, True, f"the chain's bundles hold every byte of {len(fmap.files)} files")


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _covers(spans: list[tuple[int, int]], start: int, end: int) -> bool:
    i = bisect.bisect_right(spans, (start, float("inf"))) - 1
    return i >= 0 and spans[i][0] <= start and spans[i][1] >= end
