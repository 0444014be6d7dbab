"""The "files" layout of physical backups: the file map and the block bundles.

    backups/<id>/files.json.zst          the FILE MAP: every folder and file of the
                                         cluster as a restore of THIS backup writes it,
                                         and which backup of the chain holds each byte
    backups/<id>/data/<group>-<nnn>.blk.zst   BUNDLES: records of file bytes

A file is `whole` (copied whole, held by one backup) or, for a relation's main fork
that is a whole number of blocks, `ranges` ([first block, count, backup id], covering
every block in order). Bundles are grouped `db<oid>` (files under `base/<oid>/`) and
`cluster` (everything else, and the per-database files a selective restore keeps), so a
restore of some databases never reads the others' bundles; a new part starts every
PART_BYTES of raw bytes. A bundle (after zstd) is

    b"CLBUNDLE1\\n", then records: 4-byte big-endian header length L (> 0), L bytes of
    JSON {"path", "offset", "length"}, `length` raw bytes; then 4 zero bytes.

Both are read and written streaming: a record's bytes pass in chunks, never whole.
docs/reference.md (incremental backups) says how the blocks are chosen.
"""

from __future__ import annotations

import io
import json
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, BinaryIO

from chainlens_ops.backup.manifest import BackupManifest, BackupObject
from chainlens_ops.core.errors import OperationFailed
from chainlens_ops.core.metadata import DamagedMetadata, Fields, load_json
from chainlens_ops.core.streams import read_full
from chainlens_ops.pg.datadir import BLOCK_SIZE as BLOCK_SIZE
from chainlens_ops.repository import Repository
from chainlens_ops.repository.datacodec import CheckedReader
from chainlens_ops.restore.selective import KEPT_IN_SKIPPED

MAP_NAME = "files.json.zst"
MAP_FORMAT = 1
DATA_FOLDER = "data/"
BUNDLE_MAGIC = b"CLBUNDLE1\n"
BUNDLE_SUFFIX = ".blk.zst"
PART_BYTES = 256 * 1024 * 1024  # raw bytes of a bundle part (parallel restore, bounded objects)
MAX_HEADER = 64 * 1024
MAX_MAP = 256 * 1024 * 1024  # raw bytes of a file map a reader accepts
CHUNK = 1024 * 1024
CLUSTER_GROUP = "cluster"
_LENGTH = struct.Struct(">I")
_BUNDLE_NAME = re.compile(r"(db\d+|cluster)-(\d{3,})\.blk\.zst")
_MAP_FIELDS = ("format", "block_size", "start_lsn", "backup_label", "tablespace_map",
               "dirs", "files")  # fmt: skip
_DIR_FIELDS = ("path", "mode")
_FILE_FIELDS = ("path", "size", "mode", "mtime_ns", "whole", "ranges")

Range = tuple[int, int, str]  # first block, count, the backup holding them


@dataclass(frozen=True)
class DirEntry:
    path: str
    mode: int


@dataclass
class FileEntry:
    path: str
    size: int
    mode: int
    mtime_ns: int
    whole: str | None = None  # the backup holding the whole file
    ranges: list[Range] | None = None  # or, by block, which backup holds which blocks

    def owners(self) -> set[str]:
        if self.whole is not None:
            return {self.whole}
        return {owner for _first, _count, owner in self.ranges or ()}


@dataclass
class FileMap:
    start_lsn: str
    backup_label: str
    tablespace_map: str = ""
    dirs: list[DirEntry] = field(default_factory=list)
    files: list[FileEntry] = field(default_factory=list)
    block_size: int = BLOCK_SIZE
    format: int = MAP_FORMAT

    def to_bytes(self) -> bytes:
        data = {
            "format": self.format, "block_size": self.block_size, "start_lsn": self.start_lsn,
            "backup_label": self.backup_label, "tablespace_map": self.tablespace_map,
            "dirs": [{"path": d.path, "mode": d.mode} for d in self.dirs],
            "files": [_file_dict(f) for f in self.files],
        }  # fmt: skip
        return json.dumps(data, separators=(",", ":")).encode()

    def by_path(self) -> dict[str, FileEntry]:
        return {f.path: f for f in self.files}


def _file_dict(entry: FileEntry) -> dict[str, object]:
    out: dict[str, object] = {"path": entry.path, "size": entry.size, "mode": entry.mode,
                              "mtime_ns": entry.mtime_ns}  # fmt: skip
    if entry.whole is not None:
        out["whole"] = entry.whole
    else:
        out["ranges"] = [list(r) for r in entry.ranges or ()]
    return out


def parse_file_map(raw: bytes, where: str) -> FileMap:
    """A file map read through the metadata layer: DamagedMetadata, one line naming the
    object and the field, for anything missing, mistyped or inconsistent."""
    fields = load_json(raw, where, known=_MAP_FIELDS)
    version = fields.integer("format", minimum=1)
    if version > MAP_FORMAT:
        raise fields.damaged("format", f"is {version}; upgrade chainlens-ops")
    block = fields.integer("block_size", minimum=1)
    if block != BLOCK_SIZE:
        raise fields.damaged("block_size", f"is {block}, not {BLOCK_SIZE}")
    fmap = FileMap(
        start_lsn=fields.text("start_lsn"),
        backup_label=fields.text("backup_label"),
        tablespace_map=fields.text("tablespace_map", "", empty=True),
        dirs=fields.records("dirs", _read_dir, _DIR_FIELDS),
        files=fields.records("files", _read_file, _FILE_FIELDS),
        block_size=block,
        format=version,
    )
    fields.finish()
    return fmap


def _read_dir(fields: Fields) -> DirEntry:
    return DirEntry(path=_safe_path(fields, "path"), mode=fields.integer("mode"))


def _read_file(fields: Fields) -> FileEntry:
    entry = FileEntry(
        path=_safe_path(fields, "path"),
        size=fields.integer("size"),
        mode=fields.integer("mode"),
        mtime_ns=fields.integer("mtime_ns"),
        whole=fields.opt_text("whole"),
    )
    if fields.has("ranges") == (entry.whole is not None):
        raise fields.damaged("ranges", "and 'whole': a file has exactly one of them")
    if entry.whole is None:
        entry.ranges = _read_ranges(fields, entry.size)
    return entry


def _read_ranges(fields: Fields, size: int) -> list[Range]:
    value: Any = fields.data["ranges"]
    if size % BLOCK_SIZE:
        raise fields.damaged("ranges", f"on a file of {size} bytes, not whole blocks")
    ranges: list[Range] = []
    expect = 0
    for item in value if isinstance(value, list) else [[]]:
        ok = (
            isinstance(item, list) and len(item) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) for v in item[:2])
            and isinstance(item[2], str) and item[2] != ""
        )  # fmt: skip
        if not ok or item[0] != expect or item[1] < 1:
            raise fields.damaged("ranges", "should list [first block, count, backup id] in "
                                 f"order from block {expect}, not {str(item)[:40]}")  # fmt: skip
        ranges.append((item[0], item[1], item[2]))
        expect += item[1]
    if expect != size // BLOCK_SIZE:
        raise fields.damaged("ranges", f"cover {expect} blocks of {size // BLOCK_SIZE}")
    return ranges


def _safe_path(fields: Fields, name: str) -> str:
    text = fields.text(name)
    if not safe_path(text):
        raise fields.damaged(name, f"is not a plain relative path: {text[:40]!r}")
    return text


def safe_path(text: str) -> bool:
    """A relative path that stays inside the data folder."""
    path = PurePosixPath(text)
    return not (path.is_absolute() or ".." in path.parts or text in ("", ".") or "\\" in text)


def group_of(path: str) -> str:
    """The bundle group of a file: `db<oid>` under base/<oid>/, else `cluster` (which
    also holds the per-database files a selective restore keeps)."""
    parts = path.split("/")
    in_db = len(parts) == 3 and parts[0] == "base" and parts[1].isdigit()
    return f"db{parts[1]}" if in_db and parts[2] not in KEPT_IN_SKIPPED else CLUSTER_GROUP


def group_oid(group: str) -> int | None:
    return int(group[2:]) if group.startswith("db") else None


def bundle_name(group: str, part: int) -> str:
    return f"{DATA_FOLDER}{group}-{part:03d}{BUNDLE_SUFFIX}"


def bundle_group(key: str) -> str | None:
    """The group of a bundle object's key, None for an object that is not a bundle."""
    name = key.rsplit("/", 1)[-1]
    match = _BUNDLE_NAME.fullmatch(name)
    if match is None or f"/{DATA_FOLDER}" not in key:
        return None
    return match.group(1)


def read_file_map(repo: Repository, backup: BackupManifest) -> FileMap:
    """The file map of a files-layout backup, checked against its manifest."""
    obj = map_object(backup)
    with CheckedReader(repo.storage, obj) as reader:
        raw = bytearray()
        while chunk := reader.read(CHUNK):
            raw += chunk
            if len(raw) > MAX_MAP:
                raise OperationFailed(f"{obj.key} is larger than {MAX_MAP} bytes")
    return parse_file_map(bytes(raw), f"{repo.url}: {obj.key}")


def map_object(backup: BackupManifest) -> BackupObject:
    obj = next((o for o in backup.objects if o.key.endswith("/" + MAP_NAME)), None)
    if obj is None:
        raise OperationFailed(f"backup {backup.id} has no {MAP_NAME}")
    return obj


# --- bundle framing -----------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    path: str
    offset: int
    length: int


def record_header(record: Record) -> bytes:
    body = json.dumps(
        {"path": record.path, "offset": record.offset, "length": record.length},
        separators=(",", ":"),
    ).encode()
    return _LENGTH.pack(len(body)) + body


END_MARK = _LENGTH.pack(0)

# A record to write: its header, then its bytes in chunks (produced as they are read).
Chunks = Iterator[bytes]


class Pending:
    """The records of a group still to be written: parts take them in turn."""

    def __init__(self, records: Iterator[Chunks]) -> None:
        self._records = records
        self._peeked: Chunks | None = None

    def has_more(self) -> bool:
        if self._peeked is None:
            self._peeked = next(self._records, None)
        return self._peeked is not None

    def take(self) -> Chunks | None:
        if self._peeked is not None:
            found, self._peeked = self._peeked, None
            return found
        return next(self._records, None)


class BundleStream(io.RawIOBase):
    """One bundle part as a readable stream (what store_compressed reads): the magic,
    records taken from `pending` until `limit` raw bytes, the end mark."""

    def __init__(self, pending: Pending, limit: int = PART_BYTES) -> None:
        super().__init__()
        self._pending_records = pending
        self._limit = limit
        self._pending: list[bytes] = [BUNDLE_MAGIC]
        self._current: Chunks | None = None
        self._size = 0
        self._ended = False
        self.records = 0

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        while not self._pending:
            if self._current is not None:
                chunk = next(self._current, None)
                if chunk:
                    self._pending.append(chunk)
                    return True
                if chunk is not None:
                    continue  # an empty chunk: the record goes on
                self._current = None
                self.records += 1
                continue
            if self._ended:
                return False
            record = self._pending_records.take() if self._size < self._limit else None
            if record is None:
                self._pending.append(END_MARK)
                self._ended = True
                return True
            self._current = record
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        if not self._fill():
            return 0
        chunk = self._pending[0]
        n = min(len(buffer), len(chunk))
        buffer[:n] = chunk[:n]
        if n == len(chunk):
            self._pending.pop(0)
        else:
            self._pending[0] = chunk[n:]
        self._size += n
        return n


class DamagedBundle(DamagedMetadata):
    """A bundle whose framing cannot be read (truncated, garbled)."""


def read_bundle(stream: BinaryIO, where: str, write: Callable[[Record, int, bytes], None]) -> int:
    """Read one bundle to its end mark, calling write(record, offset in the record,
    chunk) for every chunk of every record; the number of records. DamagedBundle for a
    bad magic, a garbled header, a truncated record or bytes after the end mark."""
    if read_full(stream, len(BUNDLE_MAGIC)) != BUNDLE_MAGIC:
        raise DamagedBundle(where, "it does not start as a bundle")
    count = 0
    while True:
        head = read_full(stream, 4)
        if len(head) != 4:
            raise DamagedBundle(where, f"truncated after {count} records (no end mark)")
        (size,) = _LENGTH.unpack(head)
        if size == 0:
            break
        if size > MAX_HEADER:
            raise DamagedBundle(where, f"record {count + 1} has a header of {size} bytes")
        record = _parse_header(read_full(stream, size), where, count + 1)
        done = 0
        while done < record.length:
            chunk = read_full(stream, min(CHUNK, record.length - done))
            if not chunk:
                raise DamagedBundle(where, f"record {count + 1} ({record.path}) is truncated")
            write(record, done, chunk)
            done += len(chunk)
        count += 1
    if stream.read(1):
        raise DamagedBundle(where, "bytes follow its end mark")
    return count


def _parse_header(raw: bytes, where: str, n: int) -> Record:
    try:
        data = json.loads(raw)
        path, offset, length = data["path"], data["offset"], data["length"]
    except (ValueError, KeyError, TypeError):
        raise DamagedBundle(where, f"record {n} has a garbled header") from None
    ints = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
               for v in (offset, length))  # fmt: skip
    if not (isinstance(path, str) and safe_path(path) and ints):
        raise DamagedBundle(where, f"record {n} has a garbled header")
    return Record(path, offset, length)
