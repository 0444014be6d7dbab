"""Client-side encryption of the repository, as the runbook uses it: an encrypted
repository through a whole incident (archive, base and logical backups, a restore point,
restore to a time), key rotation, the old key refused, wrong and missing keys with their
exit codes, every object kind sealed on both backends (tampering, truncation and a copy
under another name fail naming the object), KMS through moto, and `repo encrypt` on a
repository written by the previous release (old and new objects both restore)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ClusterFactory, MotoServer
from pgharness import CLI, VENV, PgCluster, cli_env, free_port, run_cli
from test_wal import switch_and_wait

from chainlens_ops.repository import Repository
from chainlens_ops.repository.codec import CorruptObject
from chainlens_ops.repository.crypto import KeyUnavailable
from chainlens_ops.repository.layout import is_plaintext

Proc = subprocess.CompletedProcess[str]
ROWS = {"A": 100, "B": 20, "C": 3}
# The commit this change was made on: its code writes "today's" repository format.
LEGACY_COMMIT = "0cd6fe3"


def cli(key: Path | None, *args: str, **kw: Any) -> Proc:
    env = {"CHAINLENS_REPO_KEY_FILE": str(key)} if key else {}
    return run_cli(*args, env=env | kw.pop("env", {}), user="postgres", **kw)


def write_rows(cluster: PgCluster, tag: str) -> None:
    cluster.execute(f"INSERT INTO t SELECT g, '{tag}' FROM generate_series(1, {ROWS[tag]}) g")


def tags(cluster: PgCluster) -> dict[str, int]:
    rows = cluster.execute("SELECT tag, count(*) FROM t GROUP BY 1")
    return {str(tag): int(n) for tag, n in rows}


def stored_objects(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    }


def assert_sealed(root: Path, key_bytes: list[bytes]) -> dict[str, bytes]:
    """Every object but the marker and locks is sealed; no key's bytes anywhere."""
    objects = stored_objects(root)
    assert objects, root
    for key, data in objects.items():
        for secret in key_bytes:
            assert secret not in data, key
        if not is_plaintext(key):
            assert data[:8] == b"CLOPSENC", key
    return objects


def restore_to(
    factory: ClusterFactory, repo: Path, key: Path | None, *target: str
) -> tuple[Proc, PgCluster | None]:
    pgdata = factory.dir("restore") / "data"
    port = free_port()
    proc = cli(key, "restore", "--repo", str(repo), *target, "--pgdata", str(pgdata),
               "--start", "--port", str(port), timeout=240)  # fmt: skip
    if proc.returncode != 0:
        return proc, None
    cluster = PgCluster(pgdata, port)
    factory.made.append(cluster)
    return proc, cluster


@pytest.fixture
def keys(make_cluster: ClusterFactory) -> Path:
    return make_cluster.dir("keys")


def test_encrypted_incident_rotation_and_wrong_keys(
    make_cluster: ClusterFactory, keys: Path
) -> None:
    repo = make_cluster.dir("repo")
    k1, k2 = keys / "k1", keys / "k2"
    made = cli(None, "repo", "init", "--repo", str(repo), "--encrypt", "--key-file", str(k1))
    assert made.returncode == 0, made.stderr
    assert "keep a copy" in made.stderr
    assert oct(k1.stat().st_mode & 0o777) == "0o600" and len(k1.read_bytes()) == 32

    push = f"CHAINLENS_REPO_KEY_FILE={k1} {CLI} wal push --repo {repo} %p"
    source = make_cluster(start=False, archive_mode="on", archive_command=push)
    source.start()
    source.execute("CREATE TABLE t (n int, tag text)")
    source.createdb("shop")
    source.execute("CREATE TABLE s AS SELECT g FROM generate_series(1, 500) g", dbname="shop")
    switch_and_wait(source)
    base = cli(k1, "backup", "--repo", str(repo), "--dsn", source.conninfo(), "--kind", "base",
               "--quiet")  # fmt: skip
    assert base.returncode == 0, base.stderr
    logical = cli(k1, "backup", "--repo", str(repo), "--dsn", source.conninfo("shop"),
                  "--kind", "logical", "--quiet")  # fmt: skip
    assert logical.returncode == 0, logical.stderr
    verified = cli(k1, "backup", "verify", "--repo", str(repo), logical.stdout.strip())
    assert verified.returncode == 0, verified.stdout + verified.stderr
    write_rows(source, "A")
    source.execute("SELECT pg_create_restore_point('before-b')")
    write_rows(source, "B")
    time_t = str(source.scalar("SELECT now()::text"))
    time.sleep(0.3)
    write_rows(source, "C")
    switch_and_wait(source)
    switch_and_wait(source)
    points = cli(k1, "restore-point", "list", "--repo", str(repo), "--json")
    assert points.returncode == 0, points.stderr
    assert "before-b" in [p["name"] for p in json.loads(points.stdout)]

    secrets = [k1.read_bytes()]
    objects = assert_sealed(repo, secrets)
    kinds = {k.split("/")[0] for k in objects}
    assert {"wal", "backups", "restore-points"} <= kinds, kinds
    assert any(k.endswith(".history") or "/" in k for k in objects)
    assert any(k.endswith("manifest.json") for k in objects)
    assert any(k.startswith("backups/") and "verify-" in k for k in objects)  # a proof
    assert any(k.startswith("restore-points/scanned/") for k in objects)

    proc, restored = restore_to(make_cluster, repo, k1, "--target-time", time_t)
    assert restored is not None, proc.stdout + proc.stderr
    assert tags(restored) == {"A": 100, "B": 20}
    assert f"CHAINLENS_REPO_KEY_FILE={k1}" in (restored.data / "postgresql.auto.conf").read_text()
    restored.stop()
    copy = cli(k1, "restore", "--repo", str(repo), "--backup", logical.stdout.strip(),
               "--dbname", "shop_copy", "--dsn", source.conninfo())  # fmt: skip
    assert copy.returncode == 0, copy.stderr
    assert source.scalar("SELECT count(*) FROM s", dbname="shop_copy") == 500

    rotated = cli(k1, "repo", "rotate-key", "--repo", str(repo), "--new-key-file", str(k2))
    assert rotated.returncode == 0, rotated.stderr
    assert stored_objects(repo).keys() >= {k for k in objects if not is_plaintext(k)}
    for key, data in objects.items():  # no data object rewritten
        if not is_plaintext(key):
            assert (repo / key).read_bytes() == data, key
    info = cli(k2, "repo", "info", "--repo", str(repo), "--json")
    assert info.returncode == 0, info.stderr
    shown = json.loads(info.stdout)
    assert (shown["encryption"], shown["key_source"]) == ("aes-256-gcm", "key file")
    assert shown["system_identifier"] and shown["key_rotated_at"]

    proc, restored = restore_to(make_cluster, repo, k2, "--target-time", time_t)
    assert restored is not None, proc.stdout + proc.stderr
    assert tags(restored) == {"A": 100, "B": 20}
    restored.stop()

    # The old key, no key, an unsafe key file: `wal fetch` 255, the rest one line, exit 3.
    work = make_cluster.dir("work")
    loose = keys / "loose"
    loose.write_bytes(k2.read_bytes())
    os.chown(loose, *_pg_ids())
    loose.chmod(0o644)
    segment = sorted((repo / "wal").glob("0*/*"))[0].name
    for key, why in ((k1, "does not open"), (None, "no key file"), (loose, "group or others"),
                     (keys / "absent", "does not exist")):  # fmt: skip
        fetched = cli(key, "wal", "fetch", "--repo", str(repo), segment, str(work / "x"))
        assert fetched.returncode == 255, (key, fetched.stderr)
        assert why in fetched.stderr and not (work / "x").exists()
        for args in (["backup", "list"], ["backup", "verify", "--latest"],
                     ["restore-point", "list"]):  # fmt: skip
            proc = cli(key, *args, "--repo", str(repo))
            assert proc.returncode == 3, (key, args, proc.stdout, proc.stderr)
            assert len(proc.stderr.strip().splitlines()) == 1 and why in proc.stderr, proc.stderr
        proc, _ = restore_to(make_cluster, repo, key, "--latest")
        assert proc.returncode == 3 and why in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    fetched = cli(k2, "wal", "fetch", "--repo", str(repo), segment, str(work / "x"))
    assert fetched.returncode == 0, fetched.stderr

    # The marker changed by someone without the key (plaintext objects allowed from now
    # on): every command refuses it before reading an object; restored, all is well.
    marker = repo / "chainlens-repo.toml"
    genuine = marker.read_bytes()
    marker.write_bytes(genuine.replace(b"\ntag = ", b'\nplain_objects = "yes"\ntag = '))
    fetched = cli(k2, "wal", "fetch", "--repo", str(repo), segment, str(work / "y"))
    assert fetched.returncode == 255 and "fails authentication" in fetched.stderr, fetched.stderr
    listed = cli(k2, "backup", "list", "--repo", str(repo))
    assert listed.returncode == 1 and "fails authentication" in listed.stderr, listed.stderr
    assert len(listed.stderr.strip().splitlines()) == 1, listed.stderr
    marker.write_bytes(genuine)
    assert cli(k2, "backup", "list", "--repo", str(repo)).returncode == 0

    assert_sealed(repo, [k1.read_bytes(), k2.read_bytes()])
    for proc in (made, base, logical, rotated, info, points):
        for secret in (k1.read_bytes(), k2.read_bytes()):
            assert secret.hex() not in proc.stdout + proc.stderr


def _pg_ids() -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


# -- every object kind, both backends, through the door ------------------------------

KINDS = {
    "wal/0000000100000000/000000010000000000000003": os.urandom(3 * 1024 * 1024 + 5),
    "wal/history/00000002.history": b"1\t0/3000000\tno recovery target specified\n",
    "wal/0000000100000000/000000010000000000000002.00000028.backup": b"START WAL LOCATION",
    "backups/20260101T000000Z-base-db/manifest.json": b'{"format": 1}\n',
    "backups/20260101T000000Z-base-db/base.tar.zst": os.urandom(1024 * 1024),
    "backups/20260101T000000Z-base-db/verify-20260101T000000Z.json": b'{"ok": true}',
    "restore-points/before.json": b'{"name": "before"}',
    "restore-points/scanned/000000010000000000000003.json": b"{}",
}


@pytest.fixture(params=["local", "s3"])
def encrypted_repo(
    request: pytest.FixtureRequest, tmp_path: Path, keys: Path
) -> Iterator[tuple[Repository, Any]]:
    from chainlens_ops.repository.admin import init_repository
    from chainlens_ops.repository.crypto import KeySource

    if request.param == "local":
        url = f"file://{tmp_path}/repo"
        raw = None
    else:
        server: MotoServer = request.getfixturevalue("moto_server")
        bucket: str = request.getfixturevalue("s3_bucket")
        from chainlens_ops.storage.s3 import S3Settings

        url = f"s3://{bucket}/r"
        env = server.env()
        monkeypatch = request.getfixturevalue("monkeypatch")
        for name, value in env.items():  # boto3 reads credentials from the environment
            monkeypatch.setenv(name, value)
        raw = S3Settings(endpoint_url=env["AWS_ENDPOINT_URL"], region=env["AWS_DEFAULT_REGION"])
    key = tmp_path / "kek"
    repo = Repository(url, raw, key_file=str(key))
    init_repository(repo, encrypt=True, source=KeySource("file", key_file=str(key)))
    yield repo, raw


def test_every_object_kind_is_sealed_and_tampering_fails_naming_it(
    encrypted_repo: tuple[Repository, Any],
) -> None:
    repo, s3 = encrypted_repo
    for key, data in KINDS.items():
        repo.storage.put(key, io.BytesIO(data), if_absent=True)
    fresh = Repository(repo.url, s3, key_file=repo.key_file)
    secret = Path(str(repo.key_file)).read_bytes()
    for key, data in KINDS.items():
        with fresh.storage.open(key) as fh:
            assert fh.read() == data, key
        with fresh.backend.open(key) as fh:
            stored = fh.read()
        assert stored[:8] == b"CLOPSENC" and data[:32] not in stored and secret not in stored

        damaged = {
            "flipped": stored[:40] + bytes([stored[40] ^ 1]) + stored[41:],
            "truncated": stored[: len(stored) - 20],
            "cut at a chunk": stored[: 12 + 12 + 1024 * 1024 + 16] if len(stored) > 2**20 else b"",
        }
        for how, body in damaged.items():
            if not body:
                continue
            fresh.backend.put(key + ".bad", io.BytesIO(body))
            with pytest.raises(CorruptObject) as caught, fresh.storage.open(key + ".bad") as fh:
                fh.read()
            assert key + ".bad" in str(caught.value), how
        # The same sealed bytes under another name fail too.
        fresh.backend.put(key + ".copy", io.BytesIO(stored))
        with (
            pytest.raises(CorruptObject, match="another name"),
            fresh.storage.open(key + ".copy") as fh,
        ):
            fh.read()
    # A plaintext object slipped into an encrypted repository is refused.
    fresh.backend.put("restore-points/forged.json", io.BytesIO(b'{"name": "forged"}'))
    with pytest.raises(CorruptObject, match="unencrypted"):
        fresh.storage.open("restore-points/forged.json").read()
    # Without the key nothing opens, and it is a key error, never "absent".
    keyless = Repository(repo.url, s3)
    with pytest.raises(KeyUnavailable):
        keyless.storage.open("restore-points/no-such-point.json")


def test_kms_wrapped_repository_through_the_cli(
    moto_server: MotoServer, s3_bucket: str, make_cluster: ClusterFactory
) -> None:
    """With KMS no key file: the marker names the key, AWS credentials decide."""
    import boto3

    env = moto_server.env()
    kms = boto3.client("kms", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
    arn = kms.create_key()["KeyMetadata"]["Arn"]
    arn2 = kms.create_key()["KeyMetadata"]["Arn"]
    repo = f"s3://{s3_bucket}/kms"
    made = run_cli("repo", "init", "--repo", repo, "--encrypt", "--kms-key-id", arn, env=env)
    assert made.returncode == 0, made.stderr
    work = make_cluster.dir("kms")
    pg_wal = work / "pg_wal"
    pg_wal.mkdir()
    from test_wal_format import fake_segment

    name = "000000010000000000000002"
    (pg_wal / name).write_bytes(fake_segment(name, body=os.urandom(4096)))
    pushed = run_cli("wal", "push", "--repo", repo, f"pg_wal/{name}", env=env, cwd=work)
    assert pushed.returncode == 0, pushed.stderr
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
    body = s3.get_object(Bucket=s3_bucket, Key=f"kms/wal/0000000100000000/{name}")["Body"].read()
    assert body[:8] == b"CLOPSENC"
    marker = s3.get_object(Bucket=s3_bucket, Key="kms/chainlens-repo.toml")["Body"].read()
    assert arn.encode() in marker and b"format = 3" in marker and b"tag = " in marker

    rotated = run_cli("repo", "rotate-key", "--repo", repo, "--new-kms-key-id", arn2, env=env)
    assert rotated.returncode == 0, rotated.stderr
    fetched = run_cli("wal", "fetch", "--repo", repo, name, str(work / "got"), env=env)
    assert fetched.returncode == 0, fetched.stderr
    assert (work / "got").read_bytes() == (pg_wal / name).read_bytes()
    # KMS out of reach (here: its endpoint a closed loopback port) is a key problem,
    # never "absent": 255 for fetch, one line and 3 elsewhere.
    dead = env | {"AWS_ENDPOINT_URL_KMS": f"http://127.0.0.1:{free_port()}"}
    fetched = run_cli("wal", "fetch", "--repo", repo, name, str(work / "got2"), env=dead)
    assert fetched.returncode == 255 and "KMS key" in fetched.stderr, fetched.stderr
    missing = run_cli("wal", "fetch", "--repo", repo, "0000000100000000000000AA",
                      str(work / "got3"), env=dead)  # fmt: skip
    assert missing.returncode == 255 and "KMS key" in missing.stderr, missing.stderr
    listed = run_cli("restore-point", "list", "--repo", repo, env=dead)
    assert listed.returncode == 3 and len(listed.stderr.strip().splitlines()) == 1, listed.stderr


# -- the previous release's repository, read and then encrypted ----------------------


def legacy_tool(folder: Path) -> str:
    """The tool as of LEGACY_COMMIT, unpacked from git (its dependencies are ours)."""
    top = Path(__file__).resolve().parents[2]
    archive = subprocess.run(["git", "-C", str(top), "archive", LEGACY_COMMIT, "chainlens_ops"],
                             capture_output=True, check=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    subprocess.run(["chmod", "-R", "a+rX", str(folder)], check=True)
    return f"PYTHONPATH={folder} {VENV}/bin/python -m chainlens_ops"


def legacy(tool: str, *args: str, **kw: Any) -> Proc:
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", "sh", "-c", f"{tool} {' '.join(args)}"],
        env=cli_env(), capture_output=True, text=True, timeout=240, check=False, **kw,
    )  # fmt: skip


def test_a_repository_of_the_previous_release_reads_then_encrypts(
    make_cluster: ClusterFactory, keys: Path
) -> None:
    tool = legacy_tool(make_cluster.dir("legacy"))
    repo = make_cluster.dir("repo")
    source = make_cluster(start=False, archive_mode="on",
                          archive_command=f"{tool} wal push --repo {repo} %p")  # fmt: skip
    source.start()
    source.execute("CREATE TABLE t (n int, tag text)")
    switch_and_wait(source)
    old_base = legacy(tool, "backup", "--repo", str(repo), "--dsn", f"'{source.conninfo()}'",
                      "--kind", "base", "--quiet")  # fmt: skip
    assert old_base.returncode == 0, old_base.stderr
    old_verify = legacy(tool, "backup", "verify", "--repo", str(repo), "--latest")
    assert old_verify.returncode == 0, old_verify.stdout + old_verify.stderr
    write_rows(source, "A")
    source.execute("SELECT pg_create_restore_point('legacy-a')")
    switch_and_wait(source)
    assert legacy(tool, "restore-point", "list", "--repo", str(repo)).returncode == 0
    assert b"CLOPSENC" not in b"".join(stored_objects(repo).values())

    # Today's tool reads all of it: catalog, proofs, restore points, WAL.
    for args in (["backup", "list"], ["backup", "verify", "--latest"], ["wal", "check"]):
        proc = cli(None, *args, "--repo", str(repo))
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    points = cli(None, "restore-point", "list", "--repo", str(repo), "--json")
    assert "legacy-a" in points.stdout, points.stdout + points.stderr
    proc, restored = restore_to(make_cluster, repo, None, "--target-name", "legacy-a")
    assert restored is not None, proc.stdout + proc.stderr
    assert tags(restored) == {"A": 100}
    restored.stop()

    # `repo encrypt`: new objects sealed, old ones still read; then --rewrite seals them.
    key = keys / "k"
    enc = cli(None, "repo", "encrypt", "--repo", str(repo), "--key-file", str(key))
    assert enc.returncode == 0 and "stay plaintext" in enc.stdout, enc.stdout + enc.stderr
    source.execute(f"ALTER SYSTEM SET archive_command = "
                   f"'CHAINLENS_REPO_KEY_FILE={key} {CLI} wal push --repo {repo} %p'")  # fmt: skip
    source.execute("SELECT pg_reload_conf()")
    time.sleep(0.5)
    write_rows(source, "B")
    switch_and_wait(source)
    new_base = cli(key, "backup", "--repo", str(repo), "--dsn", source.conninfo(), "--kind",
                   "base", "--quiet")  # fmt: skip
    assert new_base.returncode == 0, new_base.stderr
    write_rows(source, "C")
    switch_and_wait(source)
    new_manifest = repo / "backups" / new_base.stdout.strip() / "manifest.json"
    assert new_manifest.read_bytes()[:8] == b"CLOPSENC"
    old_manifest = repo / "backups" / old_base.stdout.strip() / "manifest.json"
    assert old_manifest.read_bytes()[:8] != b"CLOPSENC"

    for backup_id, want in ((old_base, {"A": 100, "B": 20, "C": 3}),
                            (new_base, {"A": 100, "B": 20, "C": 3})):  # fmt: skip
        proc, restored = restore_to(make_cluster, repo, key, "--latest", "--backup",
                                    backup_id.stdout.strip())  # fmt: skip
        assert restored is not None, proc.stdout + proc.stderr
        assert tags(restored) == want
        restored.stop()

    # Interrupted at a named point, then resumed: everything sealed, both still restore.
    killed = cli(key, "repo", "encrypt", "--repo", str(repo), "--rewrite",
                 env={"CHAINLENS_CRASH_AT": "repo-encrypt-after-object",
                      "CHAINLENS_REPO_LOCK_TTL": "1"})  # fmt: skip
    assert killed.returncode in (-9, 137), killed.stderr
    time.sleep(1.5)  # the killed run's lock expires
    resumed = cli(key, "repo", "encrypt", "--repo", str(repo), "--rewrite")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "were)" in resumed.stdout and "stay plaintext" not in resumed.stdout
    assert_sealed(repo, [key.read_bytes()])
    proc, restored = restore_to(make_cluster, repo, key, "--target-name", "legacy-a",
                                "--backup", old_base.stdout.strip())  # fmt: skip
    assert restored is not None, proc.stdout + proc.stderr
    assert tags(restored) == {"A": 100}
    restored.stop()
