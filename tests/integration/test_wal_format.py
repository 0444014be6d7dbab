"""WAL names and the segment header against a real cluster's segments, and the lean
`wal push`/`wal fetch` doors of the installed tool (their imports). The pure parts (names,
the envelope, the lean parser, the gap logic) are in tests/unit/test_wal_codec.py."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest

from chainlens_ops.pg.walnames import check_header_matches_name, parse_wal_header, parse_wal_name

MB = 1024 * 1024


def fake_segment(name: str, *, sysid: int = 7, seg_size: int = MB, body: bytes = b"") -> bytes:
    """A file that starts with a valid long page header for `name`."""
    wal = parse_wal_name(name)
    pageaddr = wal.segno(seg_size) * seg_size
    header = struct.pack("<HHIQI4xQII", 0xD110, 0x0002, wal.tli, pageaddr, 0, sysid, seg_size, 8192)
    data = header + body
    return data + bytes(seg_size - len(data))


def test_header_of_a_real_segment_matches_pg_controldata(pg_template: Path) -> None:
    control = (pg_template / "global" / "pg_control").read_bytes()
    sysid = struct.unpack_from("<Q", control, 0)[0]
    segment = sorted((pg_template / "pg_wal").glob("0000000*"))[0]
    header = parse_wal_header(segment.read_bytes()[:40])
    assert header.system_identifier == sysid
    assert header.seg_size == MB  # the template is made with --wal-segsize=1
    assert header.pg_version == 15
    check_header_matches_name(header, parse_wal_name(segment.name), size=segment.stat().st_size)


# Each of these costs milliseconds to import, on a path PostgreSQL runs once per segment
# and whose speed target is pgBackRest's archive-push (see chainlens_ops/core/record.py).
HEAVY_FOR_PUSH = {
    "typer", "rich", "click", "psycopg", "boto3", "botocore", "pglast",
    "dataclasses", "typing", "json", "re", "pathlib", "inspect", "hashlib", "threading",
    "concurrent", "platform", "tomllib", "contextlib",
}  # fmt: skip


def encrypted_env(tmp_path: Path, repo: str, encrypted: bool) -> dict[str, str]:
    """The CLI's environment; for an encrypted repository, `repo init --encrypt` first
    (its key file in CHAINLENS_REPO_KEY_FILE)."""
    from pgharness import cli_env, run_cli

    if not encrypted:
        return cli_env()
    key = str(tmp_path / "repo.key")
    made = run_cli("repo", "init", "--repo", repo, "--encrypt", "--key-file", key)
    assert made.returncode == 0, made.stderr
    return cli_env({"CHAINLENS_REPO_KEY_FILE": key})


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_local_push_and_its_fast_paths_import_nothing_heavy(
    tmp_path: Path, encrypted: bool
) -> None:
    """`wal push` (archive_command) imports nothing heavy, into an encrypted repository
    too (cryptography's Rust binding alone, not its Python layers)."""
    from pgharness import VENV

    pg_wal = tmp_path / "data" / "pg_wal"
    pg_wal.mkdir(parents=True)
    name = "000000010000000000000002"
    (pg_wal / name).write_bytes(fake_segment(name, body=os.urandom(100_000)))
    repo = f"file://{tmp_path / 'repo'}"
    env = encrypted_env(tmp_path, repo, encrypted)
    argv = [str(VENV / "bin" / "python"), "-X", "importtime", str(VENV / "bin" / "chainlens-ops")]
    push = [*argv, "wal", "push", "--repo", repo, f"pg_wal/{name}"]
    for attempt in ("first push (creates the marker)", "same segment again (duplicate)"):
        proc = subprocess.run(push, cwd=tmp_path / "data", env=env, capture_output=True, text=True)
        assert proc.returncode == 0, f"{attempt}: {proc.stderr[-2000:]}"
        imported = {
            line.split("|")[-1].strip().split(".")[0]
            for line in proc.stderr.splitlines()
            if line.startswith("import time:")
        }
        assert "chainlens_ops" in imported, attempt  # the measurement itself works
        # The duplicate check reads the stored object back: hashlib is allowed there.
        allowed = {"hashlib"} if "again" in attempt else set()
        assert imported & (HEAVY_FOR_PUSH - allowed) == set(), attempt
        # An encrypted repository calls OpenSSL's AES-GCM through `_ctypes` alone
        # (repository/aead.py): neither cryptography nor the `ctypes` package loads.
        assert imported & {"cryptography", "_cffi_backend", "ctypes"} == set(), attempt
        assert ("_ctypes" in imported) == encrypted, attempt
    stored = next((tmp_path / "repo" / "wal").glob("*/*")).read_bytes()
    assert (stored[:8] == b"CLOPSENC") == encrypted


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_local_fetch_imports_nothing_heavy(tmp_path: Path, encrypted: bool) -> None:
    """`wal fetch` (restore_command) takes the same lean door: a found and a missing
    segment import none of the heavy modules (hashlib: the envelope's checksum)."""
    from pgharness import VENV

    pg_wal = tmp_path / "data" / "pg_wal"
    pg_wal.mkdir(parents=True)
    name = "000000010000000000000002"
    (pg_wal / name).write_bytes(fake_segment(name, body=os.urandom(100_000)))
    repo = f"file://{tmp_path / 'repo'}"
    env = encrypted_env(tmp_path, repo, encrypted)
    cli = str(VENV / "bin" / "chainlens-ops")
    push = [cli, "wal", "push", "--repo", repo, f"pg_wal/{name}"]
    pushed = subprocess.run(push, cwd=tmp_path / "data", env=env, capture_output=True, text=True)
    assert pushed.returncode == 0, pushed.stderr
    argv = [str(VENV / "bin" / "python"), "-X", "importtime", cli, "wal", "fetch", "--repo", repo]
    for wanted, code in ((name, 0), ("000000010000000000000009", 1)):
        fetch = [*argv, wanted, "pg_wal/RECOVERYXLOG"]
        proc = subprocess.run(fetch, cwd=tmp_path / "data", env=env, capture_output=True, text=True)
        assert proc.returncode == code, proc.stderr[-2000:]
        imported = {
            line.split("|")[-1].strip().split(".")[0]
            for line in proc.stderr.splitlines()
            if line.startswith("import time:")
        }
        assert "chainlens_ops" in imported
        assert imported & (HEAVY_FOR_PUSH - {"hashlib"}) == set(), wanted
        assert imported & {"cryptography", "_cffi_backend", "ctypes"} == set(), wanted
        assert ("_ctypes" in imported) == encrypted, wanted  # the marker is authenticated

    # The listing at 80 columns, piped: segment names whole, every column shown.
    listing = subprocess.run(
        [cli, "wal", "list", "--repo", repo], env=env | {"COLUMNS": "80"},
        capture_output=True, text=True,
    )  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    table = [line for line in listing.stdout.splitlines()[:-1] if line.strip()]  # no summary
    assert name in listing.stdout and max(map(len, table)) <= 80, listing.stdout
    assert table[0].split() == ["tli", "first", "last", "count", "stored", "notes"], table
