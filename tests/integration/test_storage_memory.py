"""Big objects stream through both backends: memory stays flat whatever the size.

Measured in a fresh interpreter (ru_maxrss is a high-water mark for the whole process):
the growth of the peak from before to after a 64 MiB put and a full read must stay far
below the object's size.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import MotoServer
from pgharness import VENV

TESTS = Path(__file__).parent

SCRIPT = """
import io, json, resource, sys
sys.path.insert(0, {tests!r})
from storage_support import MiB, PatternStream, stream_digest, pattern_digest
from chainlens_ops.storage import open_storage

storage = open_storage({url!r})
storage.put("warm-up", io.BytesIO(b"x" * 1000))  # imports, client, connection pool
with storage.open("warm-up") as fh:
    fh.read()
expected = pattern_digest(64 * MiB, seed=5)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
storage.put("big", PatternStream(64 * MiB, seed=5))
after_put = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with storage.open("big") as fh:
    assert stream_digest(fh) == expected
after_open = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"put_kib": after_put - before, "open_kib": after_open - after_put}}))
"""


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_64mib_object_keeps_memory_flat(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    env = dict(os.environ)
    if backend == "local":
        url = f"file://{tmp_path}/repo"
    else:
        server: MotoServer = request.getfixturevalue("moto_server")
        bucket: str = request.getfixturevalue("s3_bucket")
        env.update(server.env())
        url = f"s3://{bucket}/repo"
    result = subprocess.run(
        [str(VENV / "bin" / "python"), "-c", SCRIPT.format(tests=str(TESTS), url=url)],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    growth = json.loads(result.stdout)
    print(backend, growth)
    limit_kib = 8 * 1024 if backend == "local" else 48 * 1024  # S3: one 8 MiB part, copies
    assert growth["put_kib"] < limit_kib
    assert growth["open_kib"] < limit_kib
