"""Picking small files out of a tar stream as it passes by, without holding the stream.

pg_basebackup `-D - -Ft -X none` reports no WAL positions (its verbose lines about them
appear only when it fetches WAL itself); the tar it writes carries them instead:
`backup_label` (start position, timeline) near the start, and `backup_manifest` (its
WAL-Ranges hold the stop position) at the end. The backup stream is read once, so the
sniffer sees the bytes on their way to the repository.
"""

from __future__ import annotations

BLOCK = 512
MAX_CAPTURE = 64 * 1024 * 1024  # backup_manifest grows ~150 bytes per file of the cluster


class TarSniffer:
    def __init__(self, wanted: set[str]) -> None:
        self.wanted = wanted
        self.files: dict[str, bytes] = {}
        self._header = bytearray()
        self._remaining = 0  # content bytes of the current member still to come
        self._padding = 0
        self._capture: bytearray | None = None
        self._name = ""

    def feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            if self._remaining:
                n = min(self._remaining, len(view))
                if self._capture is not None and len(self._capture) + n <= MAX_CAPTURE:
                    self._capture += view[:n]
                self._remaining -= n
                view = view[n:]
                if not self._remaining:
                    self._end_member()
                continue
            if self._padding:
                n = min(self._padding, len(view))
                self._padding -= n
                view = view[n:]
                continue
            n = min(BLOCK - len(self._header), len(view))
            self._header += view[:n]
            view = view[n:]
            if len(self._header) == BLOCK:
                self._start_member(bytes(self._header))
                self._header.clear()

    def _start_member(self, header: bytes) -> None:
        if header == bytes(BLOCK):
            return  # end-of-archive blocks
        name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
        self._name = f"{prefix}/{name}" if prefix else name
        size = _size(header[124:136])
        self._remaining = size
        self._padding = (-size) % BLOCK
        kind = header[156:157]
        self._capture = bytearray() if kind in (b"0", b"\0") and self._name in self.wanted else None
        if size == 0:
            self._end_member()

    def _end_member(self) -> None:
        if self._capture is not None:
            self.files[self._name] = bytes(self._capture)
            self._capture = None


def _size(field: bytes) -> int:
    if field[0] & 0x80:  # base-256, for members of 8 GiB and more
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0
