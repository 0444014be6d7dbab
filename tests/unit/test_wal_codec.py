"""WAL names, the segment header, the object envelope, the lean argument parser and the
gap logic: the pure parts of the WAL archive (moved from the integration tier; the
checks against a real cluster's segments and the installed tool's imports stay there)."""

from __future__ import annotations

import hashlib
import io
import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chainlens_ops.cli.hooks import parse_args
from chainlens_ops.core.errors import OperationFailed, UsageError
from chainlens_ops.pg.walnames import (
    BACKUP,
    HISTORY,
    PARTIAL,
    SEGMENT,
    NotAWalSegment,
    check_header_matches_name,
    next_segment_names,
    parse_lsn,
    parse_wal_header,
    parse_wal_name,
    segment_name,
)
from chainlens_ops.repository import Repository
from chainlens_ops.repository.walcodec import CorruptObject, Digest, EncodingReader, decode
from chainlens_ops.wal.inventory import check_wal, list_wal, parse_history

MB = 1024 * 1024


def fake_segment(name: str, *, sysid: int = 7, seg_size: int = MB, body: bytes = b"") -> bytes:
    """A file that starts with a valid long page header for `name`."""
    wal = parse_wal_name(name)
    pageaddr = wal.segno(seg_size) * seg_size
    header = struct.pack("<HHIQI4xQII", 0xD110, 0x0002, wal.tli, pageaddr, 0, sysid, seg_size, 8192)
    data = header + body
    return data + bytes(seg_size - len(data))


def test_names_parse_every_kind() -> None:
    assert parse_wal_name("000000010000000A000000FF").kind == SEGMENT
    partial = parse_wal_name("000000020000000000000003.partial")
    assert (partial.kind, partial.tli, partial.segment_name) == (
        PARTIAL,
        2,
        "000000020000000000000003",
    )
    assert parse_wal_name("000000010000000000000002.00000028.backup").kind == BACKUP
    assert parse_wal_name("00000002.history").kind == HISTORY
    for bad in ("RECOVERYXLOG", "000000010000000000000001.gz", "00000001000000000000001", ""):
        with pytest.raises(UsageError):
            parse_wal_name(bad)


def test_segment_arithmetic_depends_on_segment_size() -> None:
    # 16 MB: 256 segments per log id; 1 MB: 4096.
    assert next_segment_names(parse_wal_name("0000000100000000000000FF"), 2, 16 * MB) == [
        "000000010000000100000000",
        "000000010000000100000001",
    ]
    assert next_segment_names(parse_wal_name("0000000100000000000000FF"), 1, MB) == [
        "000000010000000000000100"
    ]
    assert segment_name(3, 4096, MB) == "000000030000000100000000"
    assert parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848


def test_header_must_match_the_name() -> None:
    data = fake_segment("000000010000000000000005")
    header = parse_wal_header(data)
    with pytest.raises(NotAWalSegment, match="does not match its name"):
        check_header_matches_name(header, parse_wal_name("000000010000000000000006"), size=MB)
    with pytest.raises(NotAWalSegment, match="WAL page header"):
        parse_wal_header(b"x" * 40)


@pytest.mark.parametrize("content", [b"", b"a" * 10, os.urandom(3 * MB + 17), bytes(5 * MB)])
def test_envelope_round_trip_and_checksum(content: bytes) -> None:
    name = "000000010000000000000001"
    reader = EncodingReader(io.BytesIO(content), name, len(content))
    encoded = b"".join(iter(lambda: reader.read(64 * 1024), b""))
    out = io.BytesIO()
    digest = decode(io.BytesIO(encoded), out, name=name)
    assert out.getvalue() == content
    assert digest == Digest(len(content), hashlib.sha256(content).hexdigest())

    for position in (len(encoded) // 2, len(encoded) - 5):
        damaged = bytearray(encoded)
        damaged[position] ^= 0x40
        with pytest.raises(CorruptObject):
            decode(io.BytesIO(bytes(damaged)), None, name="000000010000000000000001")
        # `wal fetch` decodes without sha256: zstd's checksum alone must catch it.
        with pytest.raises(CorruptObject):
            decode(io.BytesIO(bytes(damaged)), io.BytesIO(), name=name, sha256=False)
    with pytest.raises(CorruptObject):
        decode(io.BytesIO(encoded[:-1]), None, name="000000010000000000000001")
    with pytest.raises(CorruptObject):
        decode(io.BytesIO(encoded[:-1]), io.BytesIO(), name=name, sha256=False)
    unhashed = io.BytesIO()
    assert decode(io.BytesIO(encoded), unhashed, name=name, sha256=False) == Digest(
        len(content), ""
    )
    assert unhashed.getvalue() == content
    with pytest.raises(CorruptObject, match="holds"):
        decode(io.BytesIO(encoded), None, name="000000010000000000000002")


def test_a_file_is_encoded_from_its_mapping_as_a_stream_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`wal push` maps the WAL file (no copy, long GIL-free compress calls): the object
    decodes to the same bytes as one encoded from a stream, across mapped slices, and a
    file that grew while it was read is refused."""
    from chainlens_ops.repository import walcodec

    monkeypatch.setattr(walcodec, "MAPPED_SLICE", 64 * 1024)  # several slices, quickly
    monkeypatch.setattr(walcodec, "BESIDE_SLICE", 2 * 64 * 1024)  # pages: madvise
    name = "000000010000000000000001"
    started: list[int] = []
    for size in (1, 64 * 1024, 3 * 64 * 1024 + 4097):
        content = os.urandom(size // 2) + bytes(size - size // 2)
        path = tmp_path / f"wal-{size}"
        path.write_bytes(content)
        for beside in (None, lambda: bool(started.append(1)) or True):
            with path.open("rb", buffering=0) as fh:
                reader = EncodingReader(fh, name, size, beside=beside)  # type: ignore[arg-type]
                encoded = b"".join(reader)
            out = io.BytesIO()
            assert decode(io.BytesIO(encoded), out, name=name).size == size
            assert out.getvalue() == content
    assert started == [1, 1, 1]  # once per file, before compressing
    grown = tmp_path / "grown"
    grown.write_bytes(b"x" * 5000)
    with grown.open("rb", buffering=0) as fh, pytest.raises(OperationFailed, match="changed size"):
        b"".join(EncodingReader(fh, name, 4000))  # type: ignore[arg-type]


def test_a_frame_without_its_checksum_is_refused() -> None:
    name = "000000010000000000000001"
    content = os.urandom(100_000)
    encoded = b"".join(EncodingReader(io.BytesIO(content), name, len(content)))
    frame_at = encoded.index(b"\x28\xb5\x2f\xfd")
    stripped = bytearray(encoded)
    stripped[frame_at + 4] &= ~0x04  # clear Content_Checksum_flag
    with pytest.raises(CorruptObject, match="no content checksum"):
        decode(io.BytesIO(bytes(stripped)), None, name=name)
    flipped = bytearray(encoded)
    flipped[frame_at + 5000] ^= 0x01  # one bit inside incompressible data
    with pytest.raises(CorruptObject):
        decode(io.BytesIO(bytes(flipped)), None, name=name)


def test_lean_parser_reads_global_and_command_options() -> None:
    parsed = parse_args(
        ["--config", "f.toml", "-v", "wal", "push", "--repo=file:///r", "--", "pg_wal/x"],
        "push",
    )
    assert (parsed.config, parsed.verbose, parsed.options, parsed.positional) == (
        "f.toml",
        True,
        {"--repo": "file:///r"},
        ["pg_wal/x"],
    )
    with pytest.raises(UsageError, match="unknown option"):
        parse_args(["wal", "push", "--bogus", "x"], "push")
    with pytest.raises(UsageError, match="needs a value"):
        parse_args(["wal", "push", "--repo"], "push")
    with pytest.raises(UsageError, match="takes NAME and DEST"):
        parse_args(["wal", "fetch", "x"], "fetch")
    # Global options after the command too.
    assert parse_args(["wal", "fetch", "a", "b", "--config=c.toml"], "fetch").config == "c.toml"


def test_fetch_guard_agrees_with_the_one_exit_code_table() -> None:
    from chainlens_ops import entry
    from chainlens_ops.core import errors

    assert entry.FETCH_FATAL == errors.FETCH_FATAL == 255


def test_history_parsing() -> None:
    text = "1\t0/3000060\tno recovery target specified\n\n2\t0/5000000\tat restore point\n"
    assert parse_history(text) == [(1, 0x3000060), (2, 0x5000000)]


def _store(repo: Repository, name: str, content: bytes) -> None:
    wal = parse_wal_name(name)
    reader = EncodingReader(io.BytesIO(content), name, len(content))
    repo.storage.put(repo.wal_key(wal), reader)  # type: ignore[arg-type]


def test_gap_check_follows_timeline_switches(tmp_path: Path) -> None:
    repo = Repository(f"file://{tmp_path}/repo")
    repo.ensure_marker(7, MB, 15)
    for n in (1, 2, 3):
        _store(repo, segment_name(1, n, MB), b"x")
    # Timeline 2 branched off inside segment 4: the old one's last segment is .partial.
    _store(repo, segment_name(1, 4, MB) + ".partial", b"x")
    _store(repo, "00000002.history", b"1\t0/40A0B0\tno recovery target specified\n")
    for n in (4, 5, 7):
        _store(repo, segment_name(2, n, MB), b"x")
    # Segments the old timeline wrote after the switch are not on the path.
    _store(repo, segment_name(1, 5, MB), b"x")

    result = check_wal(repo)
    assert not result.ok
    assert [(g.timeline, g.first, g.count) for g in result.gaps] == [
        (2, "000000020000000000000006", 1)
    ]
    assert (result.first, result.last) == ("000000010000000000000001", "000000020000000000000007")
    assert [s.timeline for s in result.path] == [1, 2]

    _store(repo, segment_name(2, 6, MB), b"x")
    assert check_wal(repo).ok
    listing = list_wal(repo)
    assert [(t.timeline, t.segments, t.history_file) for t in listing.timelines] == [
        (1, 4, False),
        (2, 4, True),
    ]
    assert listing.timelines[0].partial == ["000000010000000000000004.partial"]
    assert [(r.first, r.last) for r in listing.timelines[0].ranges] == [
        ("000000010000000000000001", "000000010000000000000003"),
        ("000000010000000000000005", "000000010000000000000005"),
    ]


def test_gap_check_reports_a_missing_history_file(tmp_path: Path) -> None:
    repo = Repository(f"file://{tmp_path}/repo")
    repo.ensure_marker(7, MB, 15)
    _store(repo, segment_name(3, 9, MB), b"x")
    result = check_wal(repo)
    assert result.problems and "00000003.history is missing" in result.problems[0]


def test_gap_check_needs_the_new_timelines_copy_of_the_switch_segment(tmp_path: Path) -> None:
    """PostgreSQL never fetches `.partial` files, and the old timeline's full copy of the
    switch segment cannot carry replay onto the new timeline: neither covers it."""
    repo = Repository(f"file://{tmp_path}/repo")
    repo.ensure_marker(7, MB, 15)
    for n in (1, 2, 3, 4):
        _store(repo, segment_name(1, n, MB), b"x")
    _store(repo, segment_name(1, 4, MB) + ".partial", b"x")
    _store(repo, "00000002.history", b"1\t0/40A0B0\tno recovery target specified\n")
    _store(repo, segment_name(2, 5, MB), b"x")
    result = check_wal(repo)
    assert [(g.timeline, g.first, g.count) for g in result.gaps] == [
        (2, "000000020000000000000004", 1)
    ]
    with pytest.raises(UsageError, match="past the newest"):
        check_wal(repo, start=segment_name(2, 9, MB))
    with pytest.raises(UsageError, match="timeline 5 is not on"):
        check_wal(repo, start=segment_name(5, 2, MB))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    switches=st.lists(st.tuples(st.integers(1, 3), st.sampled_from([0, 0x20000])),
                      max_size=2),  # (segments after the previous switch, offset)
    present=st.sets(st.tuples(st.integers(1, 3), st.integers(1, 9)), max_size=27),
    partials=st.sets(st.tuples(st.integers(1, 3), st.integers(1, 9)), max_size=6),
)  # fmt: skip
def test_gap_check_agrees_with_a_model_of_recovery(
    switches: list[tuple[int, int]],
    present: set[tuple[int, int]],
    partials: set[tuple[int, int]],
) -> None:
    """Random histories with switches (on and off segment boundaries), partials and
    deletions, against a model of what recovery asks for: at the end of segment s replay
    is on the newest timeline that began before that end, and needs that timeline's full
    copy of s (a `.partial` never counts)."""
    import tempfile

    switch_lsns, lsn = [], MB  # timeline i+2 begins at switch_lsns[i]
    for after, offset in switches:
        lsn = (lsn // MB + after) * MB + offset
        switch_lsns.append(lsn)
    newest = 1 + len(switch_lsns)
    with tempfile.TemporaryDirectory() as folder:
        repo = Repository(f"file://{folder}/repo")
        repo.ensure_marker(7, MB, 15)
        history = ""
        for i, at in enumerate(switch_lsns):
            history += f"{i + 1}\t0/{at:X}\tswitch\n"
            _store(repo, f"{i + 2:08X}.history", history.encode())
        for tli, n in present:
            if tli <= newest:
                _store(repo, segment_name(tli, n, MB), b"x")
        for tli, n in partials:
            if tli <= newest:
                _store(repo, segment_name(tli, n, MB) + ".partial", b"x")

        def timeline_at_end_of(s: int) -> int:
            return 1 + sum(1 for at in switch_lsns if at < (s + 1) * MB)

        needed = {s: timeline_at_end_of(s) for s in range(1, 10)}
        held = [s for s, tli in needed.items() if (tli, s) in present]
        # Segments of an old timeline beyond its switch are not on the path.
        on_path = [
            s for tli, s in present
            if tli <= newest and (tli == newest or s <= (switch_lsns[tli - 1] - 1) // MB)
            and (tli == 1 or s >= switch_lsns[tli - 2] // MB)
        ]  # fmt: skip
        result = check_wal(repo)
        if not on_path:
            assert result.segments_checked == 0
            return
        first, last = min(on_path), max(on_path)
        if switch_lsns:  # the newest timeline's first segment is always asked for
            last = max(last, switch_lsns[-1] // MB)
        model = [(needed[s], s) for s in range(first, last + 1) if s not in held]
        got = [
            (g.timeline, parse_wal_name(g.first).segno(MB) + i)
            for g in result.gaps
            for i in range(g.count)
        ]
        assert got == model, (switch_lsns, sorted(present), result)
        assert result.segments_checked == last - first + 1 >= 0
