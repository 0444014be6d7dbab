"""WAL archiving speed: chainlens-ops against the tools a DBA would pick instead.

    /opt/chainlens-ops/venv/bin/python bench/bench_wal.py [--segments 64] [--keep]

Makes its own cluster with default 16 MB segments (not the 1 MB test template), writes
real WAL with pgbench, copies N completed segments aside, then archives them once per
segment, sequentially, one process per segment, as the postgres OS user (as PostgreSQL's
archiver does), each tool into a fresh repository:

    cp + sync                       the floor: copy and flush, no compression
    chainlens-ops, local            wal push into file://
    pgBackRest archive-push         zstd, local repository (anchor for the local row)
    chainlens-ops, S3               wal push to moto's S3 server on loopback, no look-ahead
    chainlens-ops, S3 look-ahead    the same with every segment marked .ready first (a
                                    backlog, as under write load); .ready -> .done after
                                    each call, like PostgreSQL
    barman-cloud-wal-archive        to the same moto server (anchor for the S3 rows)

then restores them with `wal fetch` (local; S3 with prefetch). Peak memory is the
largest RSS of any single push/fetch process. Anchors not installed are skipped, and the
table says so. Run it on an otherwise idle machine: it measures wall time.
"""

from __future__ import annotations

import argparse
import os
import pwd
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))

from pgharness import (
    CLI,
    PG_BIN,
    VENV,
    PgCluster,
    free_port,
    make_shared_dir,
)

SEG = 16 * 1024 * 1024


@dataclass
class Row:
    tool: str
    segments: int = 0
    seconds: float = 0.0
    peak_kb: int = 0
    note: str = ""

    @property
    def per_segment_ms(self) -> float:
        return 1000 * self.seconds / self.segments if self.segments else 0.0


def run_as_postgres(
    argv: list[str], *, cwd: Path, env: dict[str, str] | None = None
) -> tuple[int, int, str]:
    """Run one process as postgres; (exit code, peak RSS in KB, stderr)."""
    pw = pwd.getpwnam("postgres")
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        user=pw.pw_uid,
        group=pw.pw_gid,
        extra_groups=[],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    return proc.returncode, usage.ru_maxrss, stderr


def each_segment(
    row: Row, names: list[str], argv_for: object, *, cwd: Path, env: dict[str, str],
    after: object = None,
) -> Row:  # fmt: skip
    started = time.perf_counter()
    for name in names:
        code, peak, stderr = run_as_postgres(argv_for(name), cwd=cwd, env=env)  # type: ignore[operator]
        if code != 0:
            row.note = f"failed on {name}: {stderr.strip()[-200:]}"
            break
        row.segments += 1
        row.peak_kb = max(row.peak_kb, peak)
        if after:
            after(name)  # type: ignore[operator]
    row.seconds = time.perf_counter() - started
    return row


def interleaved(
    tools: list[tuple[Row, object]], names: list[str], *, cwd: Path, env: dict[str, str]
) -> None:
    """Each tool once per segment, the first tool rotating; time is per process."""
    for i, name in enumerate(names):
        shift = i % len(tools)
        for row, argv_for in tools[shift:] + tools[:shift]:
            if row.note:
                continue
            started = time.perf_counter()
            code, peak, stderr = run_as_postgres(argv_for(name), cwd=cwd, env=env)  # type: ignore[operator]
            row.seconds += time.perf_counter() - started
            if code != 0:
                row.note = f"failed on {name}: {stderr.strip()[-200:]}"
                continue
            row.segments += 1
            row.peak_kb = max(row.peak_kb, peak)


def need_root() -> bool:
    """Whether this runs as root; says why not (every benchmark runs its clusters and
    the tools as postgres)."""
    if os.geteuid() != 0:
        print("run as root (the cluster and the tools run as postgres)", file=sys.stderr)
        return False
    return True


def scratch_folder(name: str) -> Path:
    """A new folder for one benchmark run, `/var/tmp/chainlens-bench-<name>-*`, that
    the postgres user can reach."""
    return make_shared_dir(
        Path(tempfile.mkdtemp(prefix=f"chainlens-bench-{name}-", dir="/var/tmp"))
    )


def print_medians(
    title: str,
    times: dict[str, list[float]],
    anchor: str,
    *,
    width: int,
    ratio_title: str = "ratio",
    anchor_says: str = "anchor",
    ratio_says: str = "x the time",
    label: Callable[[str], str] = lambda name: name,
    extra: Callable[[str], str] = lambda name: "",
) -> float:
    """One line per entry of `times`: its median, its runs, its ratio to `anchor`'s
    median (which it returns)."""
    base = statistics.median(times[anchor])
    print(f"\n{title:{width}} {'median s':>9} {'runs':>22}  {ratio_title}")
    for name, runs in times.items():
        med = statistics.median(runs)
        shown = ", ".join(f"{t:.2f}" for t in runs)
        ratio = anchor_says if name == anchor else f"{med / base:.2f}{ratio_says}"
        print(f"{label(name):{width}} {med:9.2f} {shown:>22}  {ratio}{extra(name)}")
    return base


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHAINLENS_", "AWS_", "PG"))}
    env["HOME"] = "/tmp"
    return env


def init_cluster(base: Path, settings: str) -> tuple[PgCluster, Path]:
    """initdb in base/data (16 MB segments), loopback + a shared socket folder, `settings`
    appended to postgresql.conf; not started."""
    data = base / "data"
    sock = make_shared_dir(base / "sock")
    cluster = PgCluster(data, free_port())
    cluster.initdb(no_sync=True)
    with (data / "postgresql.conf").open("a") as conf:
        conf.write(
            f"listen_addresses = '127.0.0.1'\nunix_socket_directories = '{sock}'\n"
            f"fsync = off\n{settings}"
        )
    return cluster, sock


def make_cluster(base: Path, segments: int, made: list[PgCluster]) -> tuple[PgCluster, Path]:
    cluster, sock = init_cluster(
        base, "max_wal_size = 8GB\nwal_keep_size = 4GB\nshared_buffers = 128MB\n"
    )
    made.append(cluster)
    cluster.start()
    pgbench = [str(PG_BIN / "pgbench"), "-h", "127.0.0.1", "-p", str(cluster.port), "-U",
               "postgres"]  # fmt: skip
    # pgbench -i writes ~16 MB of WAL per scale unit (COPY, index builds): real segments
    # fast; a short TPC-B run adds the small-record mix of normal traffic.
    subprocess.run([*pgbench, "-i", "-s", str(segments + 8), "-q", "postgres"], check=True,
                   capture_output=True)  # fmt: skip
    subprocess.run([*pgbench, "-T", "5", "-c", "4", "-j", "2", "postgres"], check=True,
                   capture_output=True)  # fmt: skip
    while len(list((cluster.data / "pg_wal").glob("0*"))) < segments + 2:
        subprocess.run([*pgbench, "-i", "-s", "10", "-q", "postgres"], check=True,
                       capture_output=True)  # fmt: skip
    cluster.execute("SELECT pg_switch_wal()")
    return cluster, sock


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--segments", type=int, default=64)
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    if not need_root():
        return 2

    base = scratch_folder("wal")
    rows: list[Row] = []
    skipped: list[str] = []
    moto: subprocess.Popen[bytes] | None = None
    made: list[PgCluster] = []
    try:
        print(f"generating {args.segments}+ WAL segments of 16 MB with pgbench in {base} ...")
        cluster, sock = make_cluster(base, args.segments, made)
        sysid_path = cluster.data / "pg_wal"
        names = sorted(p.name for p in sysid_path.glob("0*") if len(p.name) == 24)
        names = names[: args.segments]
        # Copies aside, in a pg_wal-shaped folder: the server may recycle its own files.
        src = make_shared_dir(base / "src" / "data", mode=0o700)
        pg_wal = make_shared_dir(src / "pg_wal", mode=0o700)
        status = make_shared_dir(pg_wal / "archive_status", mode=0o700)
        for name in names:
            shutil.copy2(sysid_path / name, pg_wal / name)
        subprocess.run(["chown", "-R", "postgres:postgres", str(base / "src")], check=True)
        env = base_env()

        # The local rows run interleaved, segment by segment, rotating which tool goes
        # first: run one after another, whichever came later would meet a disk still busy
        # writing back the previous tool's files (or a warmer page cache).
        dest = make_shared_dir(base / "cp")
        local = base / "repo-local"
        make_shared_dir(local, mode=0o700)
        local_rows: list[tuple[Row, object]] = [
            (Row("cp + sync"),
             lambda n: ["sh", "-c", f"cp pg_wal/{n} {dest}/{n} && sync {dest}/{n}"]),
            (Row("chainlens-ops push, local"),
             lambda n: [str(CLI), "wal", "push", "--repo", f"file://{local}", f"pg_wal/{n}"]),
        ]  # fmt: skip

        # pgBackRest, local, zstd
        if shutil.which("pgbackrest"):
            conf = base / "pgbackrest.conf"
            for sub in ("pgbr", "pgbr-log", "pgbr-lock"):
                make_shared_dir(base / sub, mode=0o700)
            conf.write_text(
                f"[global]\nrepo1-path={base}/pgbr\ncompress-type=zst\nlog-level-console=warn\n"
                f"log-level-file=off\nlock-path={base}/pgbr-lock\nlog-path={base}/pgbr-log\n"
                f"[bench]\npg1-path={cluster.data}\npg1-port={cluster.port}\n"
                f"pg1-socket-path={sock}\n"
            )
            os.chmod(conf, 0o644)
            code, _, err = run_as_postgres(
                ["pgbackrest", f"--config={conf}", "--stanza=bench", "stanza-create"],
                cwd=base, env=env,
            )  # fmt: skip
            if code == 0:
                local_rows.append((
                    Row("pgBackRest archive-push (zst)"),
                    lambda n: ["pgbackrest", f"--config={conf}", "--stanza=bench",
                               "archive-push", str(pg_wal / n)],
                ))  # fmt: skip
            else:
                skipped.append(f"pgBackRest: stanza-create failed: {err.strip()[-200:]}")
        else:
            skipped.append("pgBackRest: not installed (apt-get install pgbackrest)")
        interleaved(local_rows, names, cwd=src, env=env)
        rows.extend(row for row, _ in local_rows)
        cluster.stop()

        # S3 (moto on loopback)
        port = free_port()
        moto = subprocess.Popen(
            [str(VENV / "bin" / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        endpoint = f"http://127.0.0.1:{port}"
        _wait_http(endpoint)
        import boto3

        creds = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                 "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="bench",
                          aws_secret_access_key="bench", region_name="us-east-1")  # fmt: skip
        for bucket in ("chainlens", "ahead", "barman"):
            s3.create_bucket(Bucket=bucket)
        s3_env = {**env, **creds, "AWS_ENDPOINT_URL": endpoint}
        spool = make_shared_dir(base / "spool", mode=0o700)

        rows.append(each_segment(
            Row("chainlens-ops push, S3"), names,
            lambda n: [str(CLI), "wal", "push", "--repo", "s3://chainlens/a", "--look-ahead",
                       "0", f"pg_wal/{n}"],
            cwd=src, env=s3_env,
        ))  # fmt: skip

        for name in names:  # the backlog PostgreSQL leaves when archiving falls behind
            (status / f"{name}.ready").touch()
        subprocess.run(["chown", "-R", "postgres:postgres", str(status)], check=True)
        rows.append(each_segment(
            Row("chainlens-ops push, S3 look-ahead"), names,
            lambda n: [str(CLI), "wal", "push", "--repo", "s3://ahead/a", "--spool", str(spool),
                       f"pg_wal/{n}"],
            cwd=src, env=s3_env,
            after=lambda n: os.replace(status / f"{n}.ready", status / f"{n}.done"),
        ))  # fmt: skip

        if shutil.which("barman-cloud-wal-archive"):
            rows.append(each_segment(
                Row("barman-cloud-wal-archive"), names,
                lambda n: ["barman-cloud-wal-archive", "--endpoint-url", endpoint,
                           "s3://barman/b", "bench", f"pg_wal/{n}"],
                cwd=src, env=s3_env,
            ))  # fmt: skip
        else:
            skipped.append("barman-cloud-wal-archive: not installed (apt-get install "
                           "barman-cli-cloud)")  # fmt: skip

        # Restores: one process per segment, as restore_command runs.
        restore = make_shared_dir(base / "restore" / "pg_wal", mode=0o700)
        rows.append(each_segment(
            Row("chainlens-ops fetch, local"), names,
            lambda n: [str(CLI), "wal", "fetch", "--repo", f"file://{local}", n,
                       "pg_wal/RECOVERYXLOG"],
            cwd=restore.parent, env=env,
        ))  # fmt: skip
        rows.append(each_segment(
            Row("chainlens-ops fetch, S3 prefetch"), names,
            lambda n: [str(CLI), "wal", "fetch", "--repo", "s3://ahead/a", "--spool",
                       str(spool), n, "pg_wal/RECOVERYXLOG"],
            cwd=restore.parent, env=s3_env,
        ))  # fmt: skip
    finally:
        if moto is not None:
            moto.kill()
            moto.wait()
        for cluster in made:
            cluster.stop(mode="immediate")
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    _print_table(rows, skipped, len(names))
    return 0 if all(r.segments == len(names) for r in rows) else 1


def _print_table(rows: list[Row], skipped: list[str], total: int) -> None:
    by_tool = {r.tool: r for r in rows}
    pgbr = by_tool.get("pgBackRest archive-push (zst)")
    barman = by_tool.get("barman-cloud-wal-archive")
    anchors = {
        "chainlens-ops push, local": pgbr,
        "chainlens-ops push, S3": barman,
        "chainlens-ops push, S3 look-ahead": barman,
    }
    print()
    print(f"WAL archiving, {total} segments of 16 MB, one process per segment")
    header = (
        f"{'tool':36} {'segs':>5} {'total s':>8} {'ms/seg':>8} {'segs/s':>7} {'peak MB':>8}  vs"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        anchor = anchors.get(r.tool)
        versus = ""
        if anchor is not None and anchor.seconds and r.seconds:
            versus = f"{r.seconds / anchor.seconds:.2f}x the time of {anchor.tool.split()[0]}"
        rate = r.segments / r.seconds if r.seconds else 0.0
        print(
            f"{r.tool:36} {r.segments:>5} {r.seconds:>8.2f} {r.per_segment_ms:>8.1f} "
            f"{rate:>7.1f} {r.peak_kb / 1024:>8.1f}  {versus}"
        )
        if r.note:
            print(f"    ! {r.note}")
    for note in skipped:
        print(f"skipped: {note}")
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(f"(benchmark process peak RSS {own} MB)")


def _wait_http(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


if __name__ == "__main__":
    sys.exit(main())
