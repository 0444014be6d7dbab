"""The repository's codec and keys, as pure logic: sealing round trips across chunk
boundaries, every kind of tampering fails naming the object, the marker's fields, key
files and their permissions, and backends chosen by URL scheme."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from chainlens_ops.core.errors import UsageError
from chainlens_ops.core.record import replace
from chainlens_ops.pg.walnames import parse_wal_name
from chainlens_ops.repository import Repository
from chainlens_ops.repository.admin import init_repository, repository_info, rotate_key
from chainlens_ops.repository.codec import CHUNK, CorruptObject, Sealer
from chainlens_ops.repository.crypto import (
    FILE,
    KeySource,
    KeyUnavailable,
    create_key_file,
    read_key_file,
    unwrap_with_file,
    wrap_with_file,
)
from chainlens_ops.repository.layout import is_plaintext, wal_key
from chainlens_ops.repository.marker import MarkerTampered, RepoMarker, parse_marker
from chainlens_ops.storage import backend_for, is_remote, same_location

KEY = "wal/0000000100000000/000000010000000000000001"


def new_sealer(*, plain_allowed: bool) -> Sealer:
    data_key = os.urandom(32)
    return Sealer(lambda: data_key, plain_allowed=plain_allowed)


def seal(sealer: Sealer, data: bytes, key: str = KEY) -> bytes:
    return sealer.seal(io.BytesIO(data), key).read()


def unseal(sealer: Sealer, stored: bytes, key: str = KEY) -> bytes:
    return sealer.open(io.BytesIO(stored), key, f"repo: {key}").read()


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 17])
def test_sealing_round_trips_across_chunk_boundaries(size: int) -> None:
    sealer = new_sealer(plain_allowed=False)
    data = os.urandom(size)
    stored = seal(sealer, data)
    assert stored[:8] == b"CLOPSENC" and (size < 64 or data[:64] not in stored)
    assert unseal(sealer, stored) == data
    # Small reads see the same bytes.
    reader = sealer.open(io.BytesIO(stored), KEY, "r")
    assert b"".join(iter(lambda: reader.read(4096), b"")) == data
    # A fresh nonce per chunk: the same plaintext never seals to the same bytes.
    assert seal(sealer, data) != stored


def test_tampering_fails_naming_the_object() -> None:
    sealer = new_sealer(plain_allowed=False)
    stored = seal(sealer, os.urandom(CHUNK + 100))
    header = 12
    full_chunk = 12 + CHUNK + 16
    cases = {
        "flipped": stored[:50] + bytes([stored[50] ^ 1]) + stored[51:],
        "truncated": stored[:-1],
        "last chunk dropped": stored[: header + full_chunk],
        "chunks swapped": stored[:header] + stored[header + full_chunk :]
        + stored[header : header + full_chunk],
        "header only": stored[:header],
    }  # fmt: skip
    for how, body in cases.items():
        with pytest.raises(CorruptObject, match=KEY):
            unseal(sealer, body)
        assert how
    with pytest.raises(CorruptObject, match="another name"):
        unseal(sealer, stored, key=KEY + ".partial")
    with pytest.raises(CorruptObject):
        unseal(new_sealer(plain_allowed=False), stored)


def test_plaintext_objects_only_while_the_marker_allows_them() -> None:
    data = b"(\xb5/\xfd plain zstd"
    assert unseal(new_sealer(plain_allowed=True), data) == data
    # read(n) returns n bytes unless the object ends, as a file does (the peeked head
    # and the rest come back together: a manifest is read with one fh.read(limit)).
    opened = new_sealer(plain_allowed=True).open(io.BytesIO(data), KEY, "r")
    assert opened.read(1000) == data and opened.read(1000) == b""
    with pytest.raises(CorruptObject, match="unencrypted"):
        unseal(new_sealer(plain_allowed=False), data)


def test_marker_round_trip_and_legacy_markers() -> None:
    legacy = (
        b'format = 1\nsystem_identifier = "18446744073709551615"\n'
        b"wal_segment_size = 16777216\npg_version = 15\n"
        b'created_at = "2026-01-01T00:00:00Z"\ncreated_by = "chainlens-ops 0.1.0"\n'
    )
    old = parse_marker(legacy, "r")
    assert old.system_identifier == 2**64 - 1 and not old.encrypted and old.bound
    marker = RepoMarker(2, 7, 1 << 24, 15, "t", "c", "id", "aes-256-gcm", "kms",
                        "arn:aws:kms:eu-west-1:1:key/x", "d2FzZA==", "t2", True)  # fmt: skip
    assert parse_marker(marker.to_bytes(), "r") == marker
    unbound = RepoMarker(1, 0, 0, 0, "t", "c", "id")
    assert not parse_marker(unbound.to_bytes(), "r").bound
    from chainlens_ops.core.errors import OperationFailed

    with pytest.raises(OperationFailed, match="understands up to 3"):
        parse_marker(legacy.replace(b"format = 1", b"format = 4"), "r")
    untagged = replace(marker, format=3).to_bytes()  # encrypted, format 3, no tag
    with pytest.raises(OperationFailed, match="'tag' is missing"):
        parse_marker(untagged, "r")
    with pytest.raises(OperationFailed, match="damaged"):
        parse_marker(b"\xff\xfe", "r")


def test_key_files_are_owner_only_and_wrap_the_data_key(tmp_path: Path) -> None:
    path = str(tmp_path / "k")
    create_key_file(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    with pytest.raises(UsageError, match="already exists"):
        create_key_file(path)
    kek = read_key_file(path)
    data_key = os.urandom(32)
    wrapped = wrap_with_file(kek, data_key, "repo-1", format=3)
    assert kek.hex() not in wrapped and data_key.hex() not in wrapped
    assert unwrap_with_file(kek, wrapped, "repo-1", path=path, format=3) == data_key
    with pytest.raises(KeyUnavailable, match="does not open"):
        unwrap_with_file(os.urandom(32), wrapped, "repo-1", path=path, format=3)
    with pytest.raises(KeyUnavailable, match="does not open"):  # another repository's
        unwrap_with_file(kek, wrapped, "repo-2", path=path, format=3)
    with pytest.raises(KeyUnavailable, match="does not open"):  # under an older marker
        unwrap_with_file(kek, wrapped, "repo-1", path=path, format=2)
    os.chmod(path, 0o640)
    with pytest.raises(KeyUnavailable, match="group or others") as caught:
        read_key_file(path)
    assert kek.hex() not in str(caught.value)
    short = tmp_path / "short"
    short.write_bytes(b"x" * 31)
    short.chmod(0o600)
    with pytest.raises(KeyUnavailable, match="exactly 32 bytes"):
        read_key_file(str(short))
    with pytest.raises(KeyUnavailable, match="does not exist"):
        read_key_file(str(tmp_path / "absent"))


def test_layout_and_backends_by_scheme() -> None:
    assert wal_key(parse_wal_name("00000002.history")) == "wal/history/00000002.history"
    assert wal_key(parse_wal_name("000000010000000A000000FF")).startswith("wal/000000010000000A/")
    assert is_plaintext("chainlens-repo.toml") and is_plaintext("locks/repository.lock")
    assert not is_plaintext("restore-points/x.json") and not is_plaintext("wal/history/x")
    assert backend_for("/srv/repo").scheme == backend_for("file:///srv/repo").scheme == "file"
    assert is_remote("s3://bucket/p") and not is_remote("/srv/repo")
    assert backend_for("s3://b").housekeeping == ("stale multipart uploads",)
    for bad in ("relative/repo", "ftp://host/x", "s3:/b", ""):
        with pytest.raises(UsageError, match="is not a file://"):
            backend_for(bad)
    assert same_location("/srv/repo/", "file:///srv/repo")
    assert same_location("s3://b/p/", "s3://b/p") and not same_location("s3://b/p", "/b/p")


def test_a_key_problem_surfaces_on_first_use_not_as_anything_else() -> None:
    def no_key() -> bytes:
        raise KeyUnavailable("repository r is encrypted and no key file is configured")

    for background in (False, True):
        sealer = Sealer(no_key, plain_allowed=False)
        if background:
            sealer.prepare_in_background()
        for _ in range(2):  # every call that needs the key says why it has none
            with pytest.raises(KeyUnavailable, match="no key file"):
                seal(sealer, b"data")
            with pytest.raises(KeyUnavailable, match="no key file"):
                unseal(sealer, seal(new_sealer(plain_allowed=False), b"data"))


def test_the_key_is_prepared_once_whoever_asks_first() -> None:
    """At first use, or in a background thread (`wal push` compresses meanwhile); asked
    for again, or by several look-ahead threads at once, the key is fetched once."""
    from concurrent.futures import ThreadPoolExecutor

    calls: list[int] = []
    data_key = os.urandom(32)

    def counted() -> bytes:
        calls.append(1)
        return data_key

    for background in (False, True):
        calls.clear()
        sealer = Sealer(counted, plain_allowed=False)
        if background:
            sealer.prepare_in_background()
            sealer.prepare_in_background()
        stored = seal(sealer, b"wal")
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: unseal(sealer, stored), range(4)))  # noqa: B023
        assert results == [b"wal"] * 4 and calls == [1], background
        assert unseal(Sealer(lambda: data_key, plain_allowed=False), stored) == b"wal"


def encrypted_repo(tmp_path: Path) -> tuple[Repository, str]:
    """`repo init --encrypt --key-file`, then a first push's binding and one object."""
    key = str(tmp_path / "repo.key")
    repo = Repository(f"file://{tmp_path}/repo", key_file=key)
    init_repository(repo, encrypt=True, source=KeySource(FILE, key_file=key))
    repo.ensure_marker(7, 1 << 24, 15)
    repo.storage.put("restore-points/a.json", io.BytesIO(b'{"a": 1}'))
    return repo, key


def reopened(repo: Repository, key: str) -> Repository:
    return Repository(repo.url, key_file=key)


def read_point(repo: Repository) -> bytes:
    with repo.storage.open("restore-points/a.json") as fh:
        return fh.read()


def test_an_encrypted_marker_is_authenticated(tmp_path: Path) -> None:
    """Whoever can write the bucket but has no key cannot change the marker unseen: a
    changed field, the tag dropped, or the marker turned back into the untagged format 2
    fails before any object is read or written. A plain marker stays plain."""
    repo, key = encrypted_repo(tmp_path)
    path = tmp_path / "repo" / "chainlens-repo.toml"
    stored = path.read_bytes()
    marker = parse_marker(stored, "r")
    assert marker.format == 3 and marker.authenticated and marker.bound and marker.tag
    assert read_point(reopened(repo, key)) == b'{"a": 1}'

    changes = {
        "plain objects allowed": stored.replace(b'tag = "', b'plain_objects = "yes"\ntag = "'),
        "another cluster": stored.replace(b'"7"', b'"8"'),
        "a created_by": stored.replace(b'created_by = "', b'created_by = "x'),
        "a rotation date": stored.replace(b'key_rotated_at = "', b'key_rotated_at = "1'),
    }
    for what, changed in changes.items():
        path.write_bytes(changed)
        fresh = reopened(repo, key)
        with pytest.raises(MarkerTampered, match="fails authentication"):
            read_point(fresh)
        assert changed != stored, what
        with pytest.raises(MarkerTampered):
            fresh.storage.put("restore-points/b.json", io.BytesIO(b"{}"))
    assert not (tmp_path / "repo" / "restore-points" / "b.json").exists()

    tag_line = next(line for line in stored.splitlines() if line.startswith(b"tag"))
    downgraded = stored.replace(tag_line + b"\n", b"").replace(b"format = 3", b"format = 2")
    path.write_bytes(downgraded)
    with pytest.raises(KeyUnavailable, match="does not open"):  # the wrap binds the format
        read_point(reopened(repo, key))

    path.write_bytes(stored)
    assert read_point(reopened(repo, key)) == b'{"a": 1}'
    plain = Repository(f"file://{tmp_path}/plain")
    plain.ensure_marker(7, 1 << 24, 15)
    text = (tmp_path / "plain" / "chainlens-repo.toml").read_bytes()
    assert b"format = 1" in text and b"tag" not in text


def test_a_marker_of_the_previous_format_reads_and_rotation_authenticates_it(
    tmp_path: Path,
) -> None:
    """An encrypted repository as the release before authenticated markers wrote it
    (format 2, the data key wrapped for it, no tag) stays readable and writable;
    `repo rotate-key` makes it format 3."""
    key = str(tmp_path / "repo.key")
    create_key_file(key)
    data_key = os.urandom(32)
    legacy = RepoMarker(2, 7, 1 << 24, 15, "2026-12-01T00:00:00Z", "chainlens-ops 0.1.0",
                        "0123456789abcdef", "aes-256-gcm", "file", "",
                        wrap_with_file(read_key_file(key), data_key, "0123456789abcdef",
                                       format=2), "2026-12-01T00:00:00Z")  # fmt: skip
    folder = tmp_path / "repo"
    folder.mkdir(mode=0o700)
    (folder / "chainlens-repo.toml").write_bytes(legacy.to_bytes())
    old = Sealer(lambda: data_key, plain_allowed=False)
    sealed = old.seal(io.BytesIO(b'{"a": 1}'), "restore-points/a.json").read()
    (folder / "restore-points").mkdir(mode=0o700)
    (folder / "restore-points" / "a.json").write_bytes(sealed)

    repo = Repository(f"file://{folder}", key_file=key)
    assert read_point(repo) == b'{"a": 1}'
    repo.storage.put("restore-points/b.json", io.BytesIO(b"{}"))
    info = repository_info(repo)
    assert info.format == 2 and info.encryption and not info.marker_authenticated

    new_key = str(tmp_path / "new.key")
    rotate_key(repo, KeySource(FILE, key_file=new_key), lock_wait_s=1)
    rotated = reopened(repo, new_key)
    marker = rotated.stored_marker()
    assert marker is not None and marker.format == 3 and marker.tag
    assert read_point(rotated) == b'{"a": 1}'
    assert repository_info(rotated).marker_authenticated
    with pytest.raises(KeyUnavailable):
        read_point(reopened(repo, key))
