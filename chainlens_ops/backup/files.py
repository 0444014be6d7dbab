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
PART_BYTES of raw bytes. A bundle is zstd frames
(the bundle framing below): each record's header in a skippable frame, its bytes (at
most CHUNK) in a zstd frame of their own, so a restore skips, without decompressing,
the records the newest map attributes nothing of to this backup.

Both are read and written streaming: a record's bytes pass a CHUNK at a time.
docs/reference.md (incremental backups) says how the blocks are chosen.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, BinaryIO

import zstandard

from chainlens_ops.backup.manifest import BackupManifest, BackupObject
from chainlens_ops.core.errors import OperationFailed
from chainlens_ops.core.metadata import DamagedMetadata, Fields, load_json
from chainlens_ops.core.streams import read_full
from chainlens_ops.pg.datadir import BLOCK_SIZE as BLOCK_SIZE
from chainlens_ops.repository import Repository
from chainlens_ops.repository.datacodec import ZSTD_LEVEL_BASE, CheckedReader, store_encoded
from chainlens_ops.repository.layout import DATA_FOLDER as DATA_FOLDER
from chainlens_ops.repository.layout import FILE_MAP_NAME
from chainlens_ops.repository.stores import BackupStore
from chainlens_ops.restore.selective import KEPT_IN_SKIPPED

MAP_NAME = FILE_MAP_NAME  # backups/<id>/files.json.zst (repository.layout)
MAP_FORMAT = 1
BUNDLE_MAGIC = b"CLBUNDLE2\n"
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
_FILE_FIELDS = ("path", "size", "mode", "mtime_ns", "ctime_ns", "whole", "ranges", "visible")

Range = tuple[int, int, str]  # first block, count, the backup holding them
Run = tuple[int, int]  # first block, count


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
    ctime_ns: int | None = None  # None in maps written before it was kept
    # ranges files: the blocks whose held copy carries PD_ALL_VISIBLE (blockcopy)
    visible: list[Run] = field(default_factory=list)

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
    if entry.ctime_ns is not None:
        out["ctime_ns"] = entry.ctime_ns
    if entry.whole is not None:
        out["whole"] = entry.whole
    else:
        out["ranges"] = [list(r) for r in entry.ranges or ()]
        if entry.visible:
            out["visible"] = [list(r) for r in entry.visible]
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
    if fields.has("ctime_ns"):
        entry.ctime_ns = fields.integer("ctime_ns")
    if fields.has("ranges") == (entry.whole is not None):
        raise fields.damaged("ranges", "and 'whole': a file has exactly one of them")
    if entry.whole is None:
        entry.ranges = _read_ranges(fields, entry.size)
        if fields.has("visible"):
            entry.visible = _read_runs(fields, "visible", entry.size // BLOCK_SIZE)
    elif fields.has("visible"):
        raise fields.damaged("visible", "on a file held whole")
    return entry


def _read_runs(fields: Fields, name: str, blocks: int) -> list[Run]:
    """[first block, count] runs, in order, apart, within the file's blocks."""
    value: Any = fields.data[name]
    runs: list[Run] = []
    after = 0
    for item in value if isinstance(value, list) else [[]]:
        ok = isinstance(item, list) and len(item) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in item
        )  # fmt: skip
        if not ok or item[0] < after or item[1] < 1 or item[0] + item[1] > blocks:
            raise fields.damaged(name, "should list [first block, count] in order within "
                                 f"{blocks} blocks, not {str(item)[:40]}")  # fmt: skip
        runs.append((item[0], item[1]))
        after = item[0] + item[1]
    return runs


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
    with CheckedReader(repo.backups, obj) as reader:
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
#
# A bundle is a series of zstd frames: every header is a zstd SKIPPABLE frame (magic,
# 4-byte little-endian size, payload: any zstd decoder passes over it), every record's
# bytes its own zstd frame, so a restore reads a header and, when it needs none of the
# record's bytes, reads past the compressed frame without decompressing it.
#
#   skippable 0x184D2A50: BUNDLE_MAGIC
#   per record: skippable 0x184D2A51: offset (8 bytes), length (8), the compressed
#       size of the data frame that follows (4), path (UTF-8, the rest), all big-endian;
#       then that zstd frame of `length` raw bytes (none when length is 0)
#   end: skippable 0x184D2A5F of size 0


@dataclass(frozen=True)
class Record:
    path: str
    offset: int
    length: int


_FRAME = struct.Struct("<II")  # a skippable frame's magic and payload size
_MAGIC_FRAME, _RECORD_FRAME, _END_FRAME = 0x184D2A50, 0x184D2A51, 0x184D2A5F
_HEADER = struct.Struct(">QQI")  # offset, length, compressed size; the path follows
_ANNOUNCE = struct.Struct(">QQ")  # record_header: offset, length; the path follows
MAX_FRAME = CHUNK + 64 * 1024  # a data frame of at most CHUNK raw bytes (zstd's bound)
END_MARK = _FRAME.pack(_END_FRAME, 0)


def record_header(record: Record) -> bytes:
    """The first chunk of a record's Chunks: says which record the chunks after it are
    (BundleStream frames and compresses them)."""
    return _ANNOUNCE.pack(record.offset, record.length) + record.path.encode()


def announced(raw: bytes) -> Record:
    """The record a record_header() announces."""
    offset, length = _ANNOUNCE.unpack_from(raw)
    return Record(raw[_ANNOUNCE.size :].decode(), offset, length)


def _skippable(magic: int, payload: bytes) -> bytes:
    return _FRAME.pack(magic, len(payload)) + payload


# A record to write: record_header(), then its bytes in chunks (produced as they are read).
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


_DONE = object()


class BundleStream(io.RawIOBase):
    """One bundle part as a readable stream of zstd frames (what store_bundle stores):
    the magic, records taken from `pending` until `limit` raw bytes (a record longer
    than CHUNK is cut into records of CHUNK bytes), the end mark. `raw_size`: the
    records' raw bytes so far."""

    def __init__(self, pending: Pending, limit: int = PART_BYTES) -> None:
        super().__init__()
        self._pending_records = pending
        self._limit = limit
        self._pending: list[bytes] = [_skippable(_MAGIC_FRAME, BUNDLE_MAGIC)]
        self._zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL_BASE, write_checksum=True)
        self._current: Iterator[None] | None = None  # the record being framed
        self._ended = False
        self.raw_size = 0
        self.records = 0

    def readable(self) -> bool:
        return True

    def _frames(self, chunks: Chunks) -> Iterator[None]:
        """Frame one record into _pending, a CHUNK at a time (a long whole file is
        never held whole)."""
        head = announced(next(chunks))
        path, at = head.path.encode(), head.offset
        end = at + head.length
        held = bytearray()
        for chunk in chunks:
            held += chunk
            while len(held) >= CHUNK or (held and at + len(held) >= end):
                piece = bytes(held[:CHUNK])
                del held[:CHUNK]
                self._frame(path, at, piece)
                at += len(piece)
                yield
        if head.length == 0:
            self._frame(path, at, b"")
        self.records += 1

    def _frame(self, path: bytes, offset: int, data: bytes) -> None:
        frame = self._zstd.compress(data) if data else b""
        header = _HEADER.pack(offset, len(data), len(frame)) + path
        self._pending += (_skippable(_RECORD_FRAME, header), frame)
        self.raw_size += len(data)

    def _fill(self) -> bool:
        while not self._pending:
            if self._current is not None:
                if next(self._current, _DONE) is _DONE:
                    self._current = None
                continue
            if self._ended:
                return False
            record = self._pending_records.take() if self.raw_size < self._limit else None
            if record is None:
                self._pending.append(END_MARK)
                self._ended = True
            else:
                self._current = self._frames(record)
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        while self._fill():
            chunk = self._pending[0]
            n = min(len(buffer), len(chunk))
            if not n and chunk:
                return 0
            buffer[:n] = chunk[:n]
            if n == len(chunk):
                self._pending.pop(0)
            else:
                self._pending[0] = chunk[n:]
            if n:
                return n
        return 0


def store_bundle(store: BackupStore, key: str, pending: Pending) -> BackupObject:
    """One bundle part of `pending`'s records stored under `key` (frames compressed as
    they are made, so the codec door stores them as they are)."""
    stream = BundleStream(pending)
    obj = store_encoded(store, key, stream)  # type: ignore[arg-type]
    return dataclasses.replace(obj, raw_size=stream.raw_size)


class DamagedBundle(DamagedMetadata):
    """A bundle whose framing cannot be read (truncated, garbled)."""


def read_bundle(
    stream: BinaryIO,
    where: str,
    write: Callable[[Record, int, bytes], None],
    wanted: Callable[[Record], bool] | None = None,
) -> int:
    """Read one bundle (its stored frames: CheckedReader(..., decompress=False)) to its
    end mark, calling write(record, offset in the record, bytes) for every record, or,
    with `wanted`, for every record it wants: the others are read past (their bytes
    still pass the object's checksum) without decompressing them. The number of
    records. DamagedBundle for a bad magic, a garbled header, a truncated or damaged
    record or bytes after the end mark."""
    head = read_full(stream, _FRAME.size)
    if len(head) != _FRAME.size or _FRAME.unpack(head) != (_MAGIC_FRAME, len(BUNDLE_MAGIC)) \
            or read_full(stream, len(BUNDLE_MAGIC)) != BUNDLE_MAGIC:  # fmt: skip
        raise DamagedBundle(where, "it does not start as a bundle")
    zstd = zstandard.ZstdDecompressor()
    count = 0
    while True:
        head = read_full(stream, _FRAME.size)
        if len(head) != _FRAME.size:
            raise DamagedBundle(where, f"truncated after {count} records (no end mark)")
        magic, size = _FRAME.unpack(head)
        if (magic, size) == (_END_FRAME, 0):
            break
        if magic != _RECORD_FRAME or not _HEADER.size < size <= MAX_HEADER:
            raise DamagedBundle(where, f"record {count + 1} has a garbled header")
        record, stored = _parse_header(read_full(stream, size), size, where, count + 1)
        if wanted is not None and not wanted(record):
            _skip(stream, stored, where, record, count + 1)
        else:
            write(
                record,
                0,
                _unpack(zstd, read_full(stream, stored), stored, where, record, count + 1),
            )
        count += 1
    if stream.read(1):
        raise DamagedBundle(where, "bytes follow its end mark")
    return count


def _unpack(
    zstd: zstandard.ZstdDecompressor, frame: bytes, stored: int, where: str, record: Record, n: int
) -> bytes:
    """A record's bytes from its data frame (`stored` bytes long)."""
    what = f"record {n} ({record.path})"
    if len(frame) != stored:
        raise DamagedBundle(where, f"{what} is truncated")
    try:
        data = zstd.decompress(frame, max_output_size=CHUNK) if stored else b""
    except zstandard.ZstdError as exc:
        raise DamagedBundle(where, f"{what}: zstd: {exc}") from None
    if len(data) != record.length:
        raise DamagedBundle(
            where, f"{what} holds {len(data)} bytes, its header says {record.length}"
        )
    return data


def _skip(stream: BinaryIO, size: int, where: str, record: Record, n: int) -> None:
    while size:
        got = len(stream.read(min(size, CHUNK)))
        if not got:
            raise DamagedBundle(where, f"record {n} ({record.path}) is truncated")
        size -= got


# Consecutive records name the same file: its path is checked once.
_safe_record_path = functools.lru_cache(maxsize=256)(safe_path)


def _parse_header(raw: bytes, size: int, where: str, n: int) -> tuple[Record, int]:
    if len(raw) != size:
        raise DamagedBundle(where, f"truncated after {n - 1} records (no end mark)")
    offset, length, stored = _HEADER.unpack_from(raw)
    try:
        path = raw[_HEADER.size :].decode()
    except UnicodeDecodeError:
        path = ""
    sizes_ok = length <= CHUNK and stored <= MAX_FRAME and (stored == 0) == (length == 0)
    if not (_safe_record_path(path) and sizes_ok):
        raise DamagedBundle(where, f"record {n} has a garbled header")
    return Record(path, offset, length), stored
