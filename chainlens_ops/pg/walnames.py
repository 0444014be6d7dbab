"""WAL file names and the long page header at the start of every WAL segment.

Names PostgreSQL archives (`archive_command`'s %f):

    000000010000000A000000FF            segment: timeline, log id, segment-in-log (hex)
    000000010000000A000000FF.partial    a timeline's last, incomplete segment (promotion)
    000000010000000A000000FF.00000028.backup   backup history file
    00000002.history                    timeline history file

Segment numbers: segno = logid * (0x100000000 // seg_size) + seg, so arithmetic on
names needs the segment size, which comes from the header (and the repository marker).

This module is on the `wal push`/`wal fetch` hot path: standard library only.
"""

from __future__ import annotations

import struct

from chainlens_ops.core.errors import OperationFailed, UsageError
from chainlens_ops.core.record import record

SEGMENT = "segment"
PARTIAL = "partial"
BACKUP = "backup"
HISTORY = "history"

_HEX = frozenset("0123456789ABCDEF")  # PostgreSQL writes names in upper-case hex

# XLogLongPageHeaderData (access/xlog_internal.h), little-endian on every platform we run:
# xlp_magic u16, xlp_info u16, xlp_tli u32, xlp_pageaddr u64, xlp_rem_len u32, 4 pad,
# xlp_sysid u64, xlp_seg_size u32, xlp_xlog_blcksz u32.
_LONG_HEADER = struct.Struct("<HHIQI4xQII")
LONG_HEADER_SIZE = _LONG_HEADER.size  # 40
XLP_LONG_HEADER = 0x0002
# XLOG_PAGE_MAGIC per major version; any of these is a WAL segment we can archive.
PAGE_MAGIC = {
    0xD097: 10,
    0xD098: 11,
    0xD101: 12,
    0xD106: 13,
    0xD10D: 14,
    0xD110: 15,
    0xD113: 16,
    0xD116: 17,
    0xD118: 18,
}
MIN_SEG_SIZE = 1024 * 1024
MAX_SEG_SIZE = 1024 * 1024 * 1024


class NotAWalSegment(OperationFailed):
    """A file that is named like a WAL segment but does not start with a WAL header."""


@record
class WalName:
    """A parsed WAL file name. `log`/`seg` are 0 for history files."""

    name: str
    kind: str  # SEGMENT, PARTIAL, BACKUP or HISTORY
    tli: int
    log: int = 0
    seg: int = 0

    @property
    def has_header(self) -> bool:
        """Segments and partial segments start with a WAL long page header."""
        return self.kind in (SEGMENT, PARTIAL)

    @property
    def segment_name(self) -> str:
        """The 24-hex-digit segment part of the name ('' for history files)."""
        return "" if self.kind == HISTORY else self.name[:24]

    def segno(self, seg_size: int) -> int:
        return self.log * segments_per_log(seg_size) + self.seg


def parse_wal_name(name: str) -> WalName:
    """Parse an archivable WAL file name; UsageError for anything else."""
    if _is_hex(name[:8], 8):
        tli = int(name[:8], 16)
        if name[8:] == ".history":
            return WalName(name, HISTORY, tli)
        if _is_hex(name[8:24], 16):
            log, seg = int(name[8:16], 16), int(name[16:24], 16)
            suffix = name[24:]
            if not suffix:
                return WalName(name, SEGMENT, tli, log, seg)
            if suffix == ".partial":
                return WalName(name, PARTIAL, tli, log, seg)
            if suffix[:1] == "." and suffix[9:] == ".backup" and _is_hex(suffix[1:9], 8):
                return WalName(name, BACKUP, tli, log, seg)
    raise UsageError(
        f"{name!r} is not a WAL file name (e.g. 000000010000000000000001, "
        "00000002.history, ...partial, ...backup)"
    )


def _is_hex(text: str, length: int) -> bool:
    return len(text) == length and _HEX.issuperset(text)


def segments_per_log(seg_size: int) -> int:
    return 0x100000000 // seg_size


def segment_name(tli: int, segno: int, seg_size: int) -> str:
    per_log = segments_per_log(seg_size)
    return f"{tli:08X}{segno // per_log:08X}{segno % per_log:08X}"


def next_segment_names(name: WalName, count: int, seg_size: int) -> list[str]:
    """The `count` segment names after `name` on its timeline."""
    first = name.segno(seg_size) + 1
    return [segment_name(name.tli, first + i, seg_size) for i in range(count)]


def lsn_to_segno(lsn: int, seg_size: int) -> int:
    return lsn // seg_size


def parse_lsn(text: str) -> int:
    """'16/B374D848' -> integer."""
    high, sep, low = text.strip().partition("/")
    if not sep:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(high, 16) << 32) | int(low, 16)


def lsn_text(lsn: int) -> str:
    """Integer -> '16/B374D848' (PostgreSQL's pg_lsn text form)."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


@record
class WalHeader:
    """The long page header of a segment's first page."""

    magic: int
    info: int
    tli: int
    pageaddr: int
    system_identifier: int
    seg_size: int
    block_size: int

    @property
    def pg_version(self) -> int:
        return PAGE_MAGIC.get(self.magic, 0)


def parse_wal_header(data: bytes, *, what: str = "file") -> WalHeader:
    """Read the long page header; NotAWalSegment if `data` does not start with one."""
    if len(data) < LONG_HEADER_SIZE:
        raise NotAWalSegment(f"{what} is too short to be a WAL segment ({len(data)} bytes)")
    magic, info, tli, pageaddr, _rem, sysid, seg_size, blcksz = _LONG_HEADER.unpack_from(data)
    if magic not in PAGE_MAGIC:
        raise NotAWalSegment(
            f"{what} does not start with a WAL page header (magic 0x{magic:04X}; "
            "PostgreSQL 10-18 expected)"
        )
    if not info & XLP_LONG_HEADER:
        raise NotAWalSegment(f"{what} does not start at a WAL segment boundary")
    if not _power_of_two(seg_size) or not MIN_SEG_SIZE <= seg_size <= MAX_SEG_SIZE:
        raise NotAWalSegment(f"{what} has an invalid WAL segment size {seg_size}")
    if not _power_of_two(blcksz) or not 1024 <= blcksz <= 65536:
        raise NotAWalSegment(f"{what} has an invalid WAL block size {blcksz}")
    return WalHeader(magic, info, tli, pageaddr, sysid, seg_size, blcksz)


def check_header_matches_name(header: WalHeader, name: WalName, *, size: int) -> None:
    """The header must describe the segment its name says, and the file be whole.

    PostgreSQL's reader checks the same page address, so a mismatched file could never
    be replayed: refusing it at push time reports the wiring mistake while it is fixable.
    The header's timeline may be older than the name's: a new timeline's first segment
    is a copy of the old timeline's up to the switch point.
    """
    expected = name.segno(header.seg_size) * header.seg_size
    if header.pageaddr != expected:
        raise NotAWalSegment(
            f"{name.name}: its WAL header is for position {header.pageaddr:X}, not this "
            f"segment's {expected:X}; the file does not match its name"
        )
    if header.tli > name.tli:
        raise NotAWalSegment(
            f"{name.name}: its WAL header is from timeline {header.tli}, newer than the name's"
        )
    if name.kind == SEGMENT and size != header.seg_size:
        raise NotAWalSegment(
            f"{name.name} is {size} bytes, but its WAL header says segments are "
            f"{header.seg_size} bytes"
        )


def _power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0
