"""`wal push` / `wal fetch` against S3 (moto's server over real HTTP), as PostgreSQL runs
them: the server's archive_command reads its S3 settings from a config file and a
credentials file, never from argv."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from conftest import ClusterFactory, MotoServer
from pgharness import CLI, PgCluster, cli_env, run_cli
from test_wal import archive_under_load, fake_segment, switch_and_wait, write
from wal_support import assert_recovery_stops_fatally, recover_fully, restoring, source_with_backups

MB = 1024 * 1024


class S3Setup:
    """A config file + credentials file the postgres user can read, for one endpoint."""

    def __init__(self, folder: Path, server: MotoServer, *, attempts: int = 4) -> None:
        env = server.env()
        self.config = write(
            folder / "config.toml",
            (
                "[s3]\n"
                f'endpoint_url = "{env["AWS_ENDPOINT_URL"]}"\n'
                f'region = "{env["AWS_DEFAULT_REGION"]}"\n'
                "connect_timeout = 2\nread_timeout = 10\n"
                f"max_attempts = {attempts}\n"
            ).encode(),
        )
        self.credentials = write(
            folder / "credentials",
            (
                "[default]\n"
                f"aws_access_key_id = {env['AWS_ACCESS_KEY_ID']}\n"
                f"aws_secret_access_key = {env['AWS_SECRET_ACCESS_KEY']}\n"
            ).encode(),
        )
        os.chmod(self.credentials, 0o600)
        self.env = {"AWS_SHARED_CREDENTIALS_FILE": str(self.credentials)}

    def cli(self, *args: str, user: str | None = "postgres") -> subprocess.CompletedProcess[str]:
        return run_cli("--config", str(self.config), *args, env=self.env, user=user)

    def popen(self, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [str(CLI), "--config", str(self.config), *args],
            env=cli_env(self.env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )


def client(server: MotoServer) -> Any:
    env = server.env()
    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )


@pytest.fixture(scope="module")
def s3_archiving(
    pg_template: Path, scratch: Path, moto_server: MotoServer
) -> Iterator[tuple[PgCluster, str, S3Setup]]:
    factory = ClusterFactory(pg_template, scratch)
    bucket = f"wal{time.monotonic_ns()}"
    moto_server.create_bucket(bucket)
    setup = S3Setup(factory.dir("s3conf"), moto_server)
    repo = f"s3://{bucket}/cluster-a"
    command = (
        f"AWS_SHARED_CREDENTIALS_FILE={setup.credentials} {CLI} --config {setup.config} "
        f"wal push --repo {repo} %p"
    )
    cluster = factory(
        start=False,
        archive_mode="on",
        archive_command=command,
        wal_keep_size="512MB",
        max_wal_size="512MB",
    )
    cluster.start()
    yield cluster, repo, setup
    factory.cleanup()


@pytest.mark.e2e
def test_archive_command_to_s3_and_fetch_back_byte_identical(
    s3_archiving: tuple[PgCluster, str, S3Setup], make_cluster: ClusterFactory
) -> None:
    cluster, repo, setup = s3_archiving
    segments = archive_under_load(cluster)

    # Fetch them all back as recovery would, prefetching ahead through the spool.
    out = make_cluster.dir("restore")
    spool = make_cluster.dir("spool")
    sources = []
    for segment in segments:
        dest = out / "RECOVERYXLOG"
        proc = setup.cli(
            "-v", "wal", "fetch", "--repo", repo, "--spool", str(spool), segment.name, str(dest)
        )
        assert proc.returncode == 0, proc.stderr
        assert dest.read_bytes() == segment.read_bytes(), segment.name
        sources.append("spool" if "from spool" in proc.stderr else "repository")
    assert sources.count("spool") >= len(segments) // 2
    proc = setup.cli("wal", "fetch", "--repo", repo, "00000009.history", str(out / "h"))
    assert (proc.returncode, proc.stderr) == (1, "")

    check = setup.cli("wal", "check", "--repo", repo)
    assert check.returncode == 0, check.stdout + check.stderr


def test_concurrent_pushes_to_s3_keep_exactly_one(
    s3_archiving: tuple[PgCluster, str, S3Setup], make_cluster: ClusterFactory
) -> None:
    cluster, repo, setup = s3_archiving
    switch_and_wait(cluster)
    sysid = int(cluster.scalar("SELECT system_identifier FROM pg_control_system()"))
    work = make_cluster.dir("s3race")
    name = "000000010000003000000001"
    contents = [fake_segment(name, sysid=sysid, body=os.urandom(4096)) for _ in range(3)]
    paths = [write(work / f"c{i}" / name, data) for i, data in enumerate(contents)]
    procs = [setup.popen("wal", "push", "--repo", repo, str(p)) for p in paths]
    codes = [p.wait(120) for p in procs]
    assert sorted(codes) == [0, 1, 1], [p.stderr.read() for p in procs if p.stderr]
    winner = contents[codes.index(0)]
    for path, data in zip(paths, contents, strict=True):  # the same bytes again: success
        proc = setup.cli("wal", "push", "--repo", repo, str(path))
        assert proc.returncode == (0 if data == winner else 1), proc.stderr
    assert setup.cli("wal", "fetch", "--repo", repo, name, str(work / "w")).returncode == 0
    assert (work / "w").read_bytes() == winner

    foreign = write(work / "f" / "000000010000003000000002", fake_segment(
        "000000010000003000000002", sysid=sysid + 5))  # fmt: skip
    proc = setup.cli("wal", "push", "--repo", repo, str(foreign))
    assert proc.returncode == 1 and str(sysid) in proc.stderr and str(sysid + 5) in proc.stderr


def test_push_killed_during_upload_leaves_no_object(
    moto_server: MotoServer, s3_bucket: str, make_cluster: ClusterFactory
) -> None:
    work = make_cluster.dir("s3kill")
    setup = S3Setup(work, moto_server)
    s3 = client(moto_server)
    repo = f"s3://{s3_bucket}/k"
    name = "000000010000000000000003"
    seg_size = 32 * MB  # incompressible: a multipart upload of several parts
    data = fake_segment(name, sysid=42, seg_size=seg_size, body=os.urandom(seg_size - 64))
    segment = write(work / "pg_wal" / name, data)
    key = f"k/wal/{name[:16]}/{name}"
    killed = run_cli("--config", str(setup.config), "wal", "push", "--repo", repo, str(segment),
                     env={**setup.env, "CHAINLENS_CRASH_AT": "mid-upload"}, user=None)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not s3.list_objects_v2(Bucket=s3_bucket, Prefix=key).get("Contents")
    uploads = s3.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])
    assert uploads  # killed with a part stored, the object never published
    for upload in uploads:  # what a bucket lifecycle rule does with abandoned uploads
        s3.abort_multipart_upload(Bucket=s3_bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    proc_push = setup.cli("wal", "push", "--repo", repo, str(segment), user=None)
    assert proc_push.returncode == 0, proc_push.stderr
    proc_fetch = setup.cli("wal", "fetch", "--repo", repo, name, str(work / "final"), user=None)
    assert proc_fetch.returncode == 0 and (work / "final").read_bytes() == data


def test_fetch_with_s3_down_is_fatal_not_missing(make_cluster: ClusterFactory) -> None:
    server = MotoServer()
    server.start()
    try:
        work = make_cluster.dir("s3down")
        setup = S3Setup(work, server, attempts=2)
        server.create_bucket("down")
        name = "000000010000000000000002"
        segment = write(work / "pg_wal" / name, fake_segment(name, sysid=3))
        assert setup.cli("wal", "push", "--repo", "s3://down/r", str(segment)).returncode == 0
        ok = setup.cli("wal", "fetch", "--repo", "s3://down/r", name, str(work / "a"))
        assert ok.returncode == 0
    finally:
        server.stop()
    for wanted in (name, "000000010000000000000003", "00000002.history"):
        started = time.monotonic()
        proc = setup.cli("wal", "fetch", "--repo", "s3://down/r", wanted, str(work / "b"))
        assert proc.returncode == 255, proc.stderr
        assert "fatal" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert time.monotonic() - started < 30
        assert not (work / "b").exists()
    # An unreachable repository is exit 3 for push (config/connection), with a hint.
    proc = setup.cli("wal", "push", "--repo", "s3://down/r", str(segment))
    assert proc.returncode == 3 and len(proc.stderr.strip().splitlines()) == 1
    assert "AWS_SHARED_CREDENTIALS_FILE" in proc.stderr


@pytest.mark.e2e
def test_recovery_stops_when_s3_goes_away_instead_of_promoting(
    make_cluster: ClusterFactory,
) -> None:
    """The runbook: archive to S3, take a base backup, write more, then restore it with
    `wal fetch` as restore_command. With S3 up the restore replays everything; with S3
    gone, PostgreSQL must stop recovery (exit 255 is fatal to it), not end recovery
    early and promote a server that is missing the later rows."""
    server = MotoServer()
    server.start()
    try:
        setup = S3Setup(make_cluster.dir("s3conf"), server, attempts=2)
        server.create_bucket("pitr")
        repo = "s3://pitr/cluster"
        cli = f"AWS_SHARED_CREDENTIALS_FILE={setup.credentials} {CLI} --config {setup.config}"
        _, backups = source_with_backups(
            make_cluster, f"{cli} wal push --repo {repo} %p", backups=2
        )
        fetch = f"{cli} wal fetch --repo {repo} %f %p"
        assert recover_fully(restoring(make_cluster, backups[0], fetch)) == 1010
    finally:
        server.stop()
    assert_recovery_stops_fatally(restoring(make_cluster, backups[1], fetch))
