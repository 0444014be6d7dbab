"""Repository storage backends: WAL-sized uploads, local and S3 (moto), against anchors.

    /opt/chainlens-ops/venv/bin/python bench/bench_storage.py [--segments N]

Anchors, measured in the same run (skipped, with a note, when not installed):
- local: `cp --sparse=never` then `sync FILE` per segment (the durable form of the PostgreSQL docs'
  `cp %p /archive/%f`);
- S3: `barman-cloud-wal-archive` (barman-cli-cloud), one process per segment as
  archive_command runs it. chainlens is measured the same way (one process per segment,
  storage layer only) and in-process (what a parallel uploader pays).
moto on loopback stands in for S3: the numbers compare clients, not networks.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

VENV = Path(os.environ.get("CHAINLENS_TEST_VENV", "/opt/chainlens-ops/venv"))
PYTHON = str(VENV / "bin" / "python")
SEGMENT = 16 * 1024 * 1024

PUT_ONE = """
import sys
from chainlens_ops.storage.s3 import S3Settings
from chainlens_ops.storage import open_storage
url, path = sys.argv[1], sys.argv[2]
with open(path, "rb") as fh:
    open_storage(url, S3Settings()).put("wal/" + path.rsplit("/", 1)[1], fh)
"""


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def make_segments(folder: Path, count: int) -> list[Path]:
    """WAL-like files: half random (incompressible), half runs of zeros, as WAL often is."""
    paths = []
    for n in range(count):
        path = folder / f"0000000100000000000000{n + 1:02X}"
        half = os.urandom(SEGMENT // 2)
        path.write_bytes(half + bytes(SEGMENT // 2))
        paths.append(path)
    return paths


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [str(VENV / "bin" / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1).close()
            return proc, endpoint
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=12)
    args = parser.parse_args()
    from chainlens_ops.storage import open_storage
    from chainlens_ops.storage.s3 import S3Settings

    rows: list[tuple[str, float, str, float | None]] = []
    notes: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    moto, endpoint = start_moto()
    env = dict(
        os.environ,
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    os.environ.update({k: env[k] for k in env if k.startswith("AWS_")})
    try:
        (work / "pg_wal").mkdir()
        segments = make_segments(work / "pg_wal", args.segments)
        n = len(segments)
        os.sync()  # write back the segments first: their dirty pages would skew the fsyncs

        # -- local ------------------------------------------------------------------
        local = open_storage(f"file://{work}/repo")

        def local_put() -> None:
            for path in segments:
                with path.open("rb") as fh:
                    local.put(f"wal/{path.name}", fh)

        ours = timed(local_put)
        anchor: float | None = None
        if shutil.which("cp") and shutil.which("sync"):
            (work / "cp").mkdir()

            def cp_sync() -> None:
                for path in segments:
                    dest = work / "cp" / path.name
                    subprocess.run(["cp", "--sparse=never", str(path), str(dest)], check=True)
                    subprocess.run(["sync", str(dest)], check=True)

            os.sync()
            anchor = timed(cp_sync)
        rows.append(("local put, in-process", ours / n, "cp + sync", anchor and anchor / n))

        # -- S3 (moto) --------------------------------------------------------------
        import boto3

        boto3.client("s3").create_bucket(Bucket="bench")
        s3 = open_storage("s3://bench/chainlens", S3Settings())

        def s3_put() -> None:
            for path in segments:
                with path.open("rb") as fh:
                    s3.put(f"wal/{path.name}", fh)

        s3_seq = timed(s3_put)

        def s3_parallel() -> None:
            def one(path: Path) -> None:
                with path.open("rb") as fh:
                    s3.put(f"par/{path.name}", fh)

            threads = [threading.Thread(target=one, args=(p,)) for p in segments]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        s3_par = timed(s3_parallel)

        def s3_per_process() -> None:
            for path in segments:
                subprocess.run(
                    [PYTHON, "-c", PUT_ONE, "s3://bench/proc", str(path)],
                    check=True,
                    env=env,
                    cwd="/",
                )

        s3_proc = timed(s3_per_process)
        barman: float | None = None
        if shutil.which("barman-cloud-wal-archive"):

            def barman_archive() -> None:
                for path in segments:
                    subprocess.run(
                        [
                            "barman-cloud-wal-archive",
                            "--endpoint-url",
                            endpoint,
                            "s3://bench/barman",
                            "srv",
                            str(path),
                        ],
                        check=True,
                        env=env,
                    )

            barman = timed(barman_archive)
        else:
            notes.append("barman-cloud-wal-archive not installed: S3 anchor skipped")
        per_barman = barman and barman / n
        rows.append(
            ("S3 put, one process/segment", s3_proc / n, "barman-cloud-wal-archive", per_barman)
        )
        rows.append(("S3 put, in-process", s3_seq / n, "barman-cloud-wal-archive", per_barman))
        rows.append(("S3 put, 1 thread/segment", s3_par / n, "S3 put, in-process", s3_seq / n))

        # -- start-up of the local backend (the `wal push` hot path) ---------------
        def run_python(code: str) -> float:
            return min(
                timed(lambda: subprocess.run([PYTHON, "-c", code], check=True, cwd="/"))
                for _ in range(10)
            )

        bare = run_python("pass")
        imports = run_python("import chainlens_ops.storage.local")
        s3_imports = run_python("import chainlens_ops.storage.s3")
        rows.append(("python + import storage.local", imports, "python -c pass", bare))
        rows.append(("python + import storage.s3", s3_imports, "python -c pass", bare))
    finally:
        moto.kill()
        moto.wait()
        shutil.rmtree(work, ignore_errors=True)

    print(f"{n} segments of 16 MiB (half random, half zeros); seconds per segment or run")
    print(f"{'chainlens-ops':34} {'s':>8}   {'anchor':28} {'s':>8}  {'ratio':>6}")
    for name, value, anchor_name, anchor_value in rows:
        if anchor_value is None:
            print(f"{name:34} {value:8.4f}   {anchor_name:28} {'skipped':>8}")
        else:
            ratio = value / anchor_value
            print(f"{name:34} {value:8.4f}   {anchor_name:28} {anchor_value:8.4f}  {ratio:6.2f}")
    for note in notes:
        print(f"note: {note}")
    print("ratio < 1: chainlens-ops is faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
