"""Fixtures shared by every test: scratch space, clusters, the installed CLI, S3 (moto)."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from pgharness import (
    CLI,
    SCRATCH_ROOT,
    VENV,
    PgCluster,
    clone_cluster,
    create_template,
    free_port,
    make_shared_dir,
    remove_tree,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _installed_is_current() -> str | None:
    """The tool the server runs is the venv's copy: make sure it matches this tree."""
    if not CLI.exists():
        return f"{CLI} is missing: run `make install`"
    site = next(VENV.glob("lib/python3*/site-packages/chainlens_ops"), None)
    if site is None:
        return f"chainlens_ops is not installed in {VENV}: run `make install`"
    for source in (REPO_ROOT / "chainlens_ops").rglob("*.py"):
        installed = site / source.relative_to(REPO_ROOT / "chainlens_ops")
        if not installed.exists() or not filecmp.cmp(source, installed, shallow=False):
            return f"{installed} differs from the work tree: run `make install`"
    for source in (REPO_ROOT / "sql").rglob("*.sql"):
        installed = site / "sql" / source.relative_to(REPO_ROOT / "sql")
        if not installed.exists() or not filecmp.cmp(source, installed, shallow=False):
            return f"{installed} differs from the work tree: run `make install`"
    return None


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.geteuid() != 0:
        pytest.exit("the test harness runs as root (it starts clusters as postgres)", 2)
    problem = _installed_is_current()
    if problem and not os.environ.get("CHAINLENS_TEST_ALLOW_STALE"):
        pytest.exit(problem, 2)


@pytest.fixture(scope="session")
def scratch() -> Iterator[Path]:
    """A world-traversable folder for this test process, removed at the end."""
    make_shared_dir(SCRATCH_ROOT, owner_postgres=False, mode=0o755)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    base = SCRATCH_ROOT / f"run-{os.getpid()}-{worker}"
    remove_tree(base)
    make_shared_dir(base, owner_postgres=False, mode=0o755)
    yield base
    if not os.environ.get("CHAINLENS_TEST_KEEP"):
        remove_tree(base)


@pytest.fixture(scope="session")
def pg_template(scratch: Path) -> Path:
    return create_template(scratch / "template")


class ClusterFactory:
    """Makes fresh clusters from the template; stops and removes them afterwards."""

    def __init__(self, template: Path, scratch: Path) -> None:
        self.template = template
        self.scratch = scratch
        self.made: list[PgCluster] = []
        self._count = 0

    def __call__(self, *, start: bool = True, **settings: object) -> PgCluster:
        self._count += 1
        base = self.scratch / f"cluster-{time.monotonic_ns()}-{self._count}"
        cluster = clone_cluster(self.template, base)
        if settings:
            cluster.configure(**settings)
        self.made.append(cluster)
        if start:
            cluster.start()
        return cluster

    def dir(self, name: str) -> Path:
        """A postgres-owned folder under scratch (repositories, spools, restores)."""
        self._count += 1
        return make_shared_dir(self.scratch / f"{name}-{time.monotonic_ns()}-{self._count}")

    def cleanup(self) -> None:
        for cluster in self.made:
            cluster.stop(mode="immediate")
            remove_tree(cluster.base)


@pytest.fixture
def make_cluster(pg_template: Path, scratch: Path) -> Iterator[ClusterFactory]:
    factory = ClusterFactory(pg_template, scratch)
    yield factory
    factory.cleanup()


@pytest.fixture
def pg(make_cluster: ClusterFactory) -> PgCluster:
    """A started, empty cluster of its own for one test."""
    return make_cluster()


@pytest.fixture(scope="module")
def module_pg(pg_template: Path, scratch: Path) -> Iterator[PgCluster]:
    """One started cluster shared by a module's tests (use fresh databases in it)."""
    factory = ClusterFactory(pg_template, scratch)
    yield factory()
    factory.cleanup()


class MotoServer:
    """moto's S3 server in its own process on a loopback port (boto3 speaks real HTTP)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(VENV / "bin" / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.endpoint, timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("moto server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def env(self) -> dict[str, str]:
        """The standard AWS settings for a client of this server (dummy credentials)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def create_bucket(self, name: str) -> None:
        import boto3

        env = self.env()
        client = boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=env["AWS_DEFAULT_REGION"],
        )
        client.create_bucket(Bucket=name)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(moto_server: MotoServer, request: pytest.FixtureRequest) -> str:
    """A new empty bucket on the shared moto server."""
    name = f"t{time.monotonic_ns()}"[:40]
    moto_server.create_bucket(name)
    return name


CliRunner = Callable[..., "subprocess.CompletedProcess[str]"]
