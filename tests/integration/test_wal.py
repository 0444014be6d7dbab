"""`wal push` / `wal fetch` against a local repository, run the way PostgreSQL runs them:
the installed tool, as the postgres OS user, once per file."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ClusterFactory
from pgharness import CLI, PG_BIN, PgCluster, cli_env, run_cli, wait_for

from chainlens_ops.pg.walnames import parse_wal_name

MB = 1024 * 1024
PUSH = f"{CLI} wal push"


def fake_segment(name: str, *, sysid: int, seg_size: int = MB, body: bytes = b"") -> bytes:
    wal = parse_wal_name(name)
    header = struct.pack(
        "<HHIQI4xQII", 0xD110, 0x0002, wal.tli, wal.segno(seg_size) * seg_size, 0, sysid,
        seg_size, 8192,
    )  # fmt: skip
    data = header + body
    return data + bytes(seg_size - len(data))


def write(path: Path, data: bytes, *, owner_postgres: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if owner_postgres:
        os.chown(path, *_pg_ids())
    return path


def _pg_ids() -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


def sysid_of(cluster: PgCluster) -> int:
    return int(cluster.scalar("SELECT system_identifier FROM pg_control_system()"))


def archived_segments(cluster: PgCluster) -> list[Path]:
    status = cluster.data / "pg_wal" / "archive_status"
    return sorted(cluster.data / "pg_wal" / p.name[: -len(".done")] for p in status.glob("*.done"))


def switch_and_wait(cluster: PgCluster, timeout: float = 60) -> str:
    cluster.execute("SELECT pg_logical_emit_message(false, 'test', 'x')")
    segment = str(cluster.scalar("SELECT pg_walfile_name(pg_switch_wal())"))

    def archived() -> bool:
        row = cluster.execute("SELECT last_archived_wal, failed_count FROM pg_stat_archiver")[0]
        assert row[1] == 0, cluster.read_log()[-2000:]
        return bool(row[0] and row[0] >= segment)

    wait_for(archived, timeout=timeout)
    return segment


@pytest.fixture(scope="module")
def archiving(pg_template: Path, scratch: Path) -> Iterator[tuple[PgCluster, Path]]:
    """A cluster whose archive_command is our push into a local repository."""
    factory = ClusterFactory(pg_template, scratch)
    repo = factory.dir("repo")
    cluster = factory(
        start=False,
        archive_mode="on",
        archive_command=f"{PUSH} --repo file://{repo} %p",
        wal_keep_size="512MB",
        max_wal_size="512MB",
    )
    cluster.start()
    yield cluster, repo
    factory.cleanup()


def pgbench(cluster: PgCluster, *args: str) -> None:
    subprocess.run(
        [str(PG_BIN / "pgbench"), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres",
         *args, "postgres"],
        check=True, capture_output=True, env=cli_env(),
    )  # fmt: skip


def archive_under_load(cluster: PgCluster) -> list[Path]:
    """pgbench writes, then a switch: every segment archived, none failed."""
    pgbench(cluster, "-i", "-s", "2", "-q")
    pgbench(cluster, "-T", "2", "-c", "2")
    switch_and_wait(cluster)
    assert cluster.scalar("SELECT failed_count FROM pg_stat_archiver") == 0
    segments = archived_segments(cluster)
    assert len(segments) >= 10
    return segments


def fetch(
    repo: Path, name: str, dest: Path, *extra: str, user: str | None = "postgres"
) -> subprocess.CompletedProcess[str]:
    return run_cli("wal", "fetch", "--repo", str(repo), *extra, name, str(dest), user=user)


@pytest.mark.e2e
def test_archive_command_archives_every_segment_and_fetch_returns_them(
    archiving: tuple[PgCluster, Path], make_cluster: ClusterFactory
) -> None:
    cluster, repo = archiving
    segments = archive_under_load(cluster)

    out = make_cluster.dir("restore")
    for segment in segments:
        dest = out / "RECOVERYXLOG"
        proc = fetch(repo, segment.name, dest)
        assert proc.returncode == 0, proc.stderr
        assert dest.read_bytes() == segment.read_bytes(), segment.name
    # Files are owner-only, and nothing but objects is left in the repository.
    stored = [p for p in repo.rglob("*") if p.is_file()]
    assert all(p.stat().st_mode & 0o077 == 0 for p in stored)
    assert not [p for p in stored if p.name.startswith(".")]

    listing = run_cli("wal", "list", "--repo", str(repo), "--json", user="postgres")
    assert listing.returncode == 0, listing.stderr
    check = run_cli("wal", "check", "--repo", str(repo), user="postgres")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "no gaps" in check.stdout


def test_duplicates_same_succeeds_different_fails_and_keeps_the_original(
    archiving: tuple[PgCluster, Path], make_cluster: ClusterFactory
) -> None:
    cluster, repo = archiving
    segment = Path(switch_and_wait(cluster))
    original = (cluster.data / "pg_wal" / segment.name).read_bytes()
    work = make_cluster.dir("dup")

    same = write(work / "same" / segment.name, original)
    assert run_cli("wal", "push", "--repo", str(repo), str(same), user="postgres").returncode == 0

    changed = bytearray(original)
    changed[len(changed) // 2] ^= 0xFF
    other = write(work / "other" / segment.name, bytes(changed))
    proc = run_cli("wal", "push", "--repo", str(repo), str(other), user="postgres")
    assert proc.returncode == 1
    assert "different content" in proc.stderr and "original is kept" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    dest = work / "back"
    assert fetch(repo, segment.name, dest).returncode == 0
    assert dest.read_bytes() == original

    history = write(work / "h1" / "0000000A.history", b"1\t0/3000060\tno recovery target\n")
    for _ in range(2):
        proc = run_cli("wal", "push", "--repo", str(repo), str(history), user="postgres")
        assert proc.returncode == 0, proc.stderr
    rewritten = write(work / "h2" / "0000000A.history", b"1\t0/3000099\tother\n")
    proc = run_cli("wal", "push", "--repo", str(repo), str(rewritten), user="postgres")
    assert proc.returncode == 1 and "never overwritten" in proc.stderr

    # .partial and .backup files are archived like the others.
    partial = write(work / "p" / f"{segment.name}.partial", original)
    backup = write(work / "b" / f"{segment.name}.00000028.backup", b"START WAL LOCATION: ...\n")
    for path in (partial, backup):
        proc = run_cli("wal", "push", "--repo", str(repo), str(path), user="postgres")
        assert proc.returncode == 0, proc.stderr
        assert fetch(repo, path.name, work / "x").returncode == 0
        assert (work / "x").read_bytes() == path.read_bytes()


def test_concurrent_pushes_of_one_name(
    archiving: tuple[PgCluster, Path], make_cluster: ClusterFactory
) -> None:
    cluster, repo = archiving
    sysid = sysid_of(cluster)
    work = make_cluster.dir("race")
    name = "000000010000001000000001"  # far beyond what the cluster writes

    same = write(work / name, fake_segment(name, sysid=sysid, body=os.urandom(4096)))
    procs = [_popen_push(repo, same) for _ in range(4)]
    assert [p.wait(60) for p in procs] == [0, 0, 0, 0]

    name = "000000010000001000000002"
    contents = [fake_segment(name, sysid=sysid, body=os.urandom(4096)) for _ in range(4)]
    paths = [write(work / f"c{i}" / name, data) for i, data in enumerate(contents)]
    procs = [_popen_push(repo, p) for p in paths]
    codes = [p.wait(60) for p in procs]
    assert sorted(codes) == [0, 1, 1, 1], codes
    assert fetch(repo, name, work / "winner").returncode == 0
    assert (work / "winner").read_bytes() == contents[codes.index(0)]


def _popen_push(repo: Path, path: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["runuser", "-u", "postgres", "--", str(CLI), "wal", "push", "--repo", str(repo), *extra,
         str(path)],
        env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


@pytest.mark.parametrize(
    "point", ["after-temp-write", "mid-upload", "after-link", "exists-before-sync"]
)
def test_push_killed_at_each_crash_point_then_retried_is_whole(
    make_cluster: ClusterFactory, point: str
) -> None:
    """`wal push` killed at a named point (every run reaches it), then retried as
    PostgreSQL retries archive_command: the object is never partial, the retry succeeds
    and the archive holds the byte-identical segment."""
    work = make_cluster.dir("kill")
    repo = work / "repo"
    name = "000000010000000000000003"
    data = fake_segment(name, sysid=99, seg_size=4 * MB, body=os.urandom(4 * MB - 64))
    segment = write(work / "pg_wal" / name, data)
    other = "000000010000000000000002"  # first, so the crash hits the segment, not the marker
    first = write(work / "pg_wal" / other, fake_segment(other, sysid=99, seg_size=4 * MB))
    assert run_cli("wal", "push", "--repo", str(repo), str(first)).returncode == 0
    if point == "exists-before-sync":  # the answer path of a retry after a crash
        killed = run_cli("wal", "push", "--repo", str(repo), str(segment),
                         env={"CHAINLENS_CRASH_AT": "after-link"})  # fmt: skip
        assert killed.returncode == -signal.SIGKILL
    killed = run_cli("wal", "push", "--repo", str(repo), str(segment),
                     env={"CHAINLENS_CRASH_AT": point})  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    stored = repo / "wal" / name[:16] / name
    assert stored.exists() == (point in ("after-link", "exists-before-sync"))
    retry = run_cli("wal", "push", "--repo", str(repo), str(segment), "-v")
    assert retry.returncode == 0, retry.stderr
    assert fetch(repo, name, work / "final", user=None).returncode == 0
    assert (work / "final").read_bytes() == data
    # The killed writers' temp files are hidden from listings.
    listing = run_cli("wal", "list", "--repo", str(repo), "--json")
    assert '"segments": 2' in listing.stdout


def _temp_files(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.name.startswith(".")]
    except FileNotFoundError:
        return []


def test_fetch_exit_codes(archiving: tuple[PgCluster, Path], make_cluster: ClusterFactory) -> None:
    cluster, repo = archiving
    segment = switch_and_wait(cluster)
    work = make_cluster.dir("codes")

    proc = fetch(repo, "00000009.history", work / "h")
    assert (proc.returncode, proc.stderr, (work / "h").exists()) == (1, "", False)
    proc = fetch(repo, "0000000100000FFF000000FF", work / "m")
    assert (proc.returncode, proc.stderr) == (1, "")

    # A damaged object is fatal, and DEST is not written.
    damaged_repo = work / "damaged"
    subprocess.run(["cp", "-a", str(repo), str(damaged_repo)], check=True)
    obj = damaged_repo / "wal" / segment[:16] / segment
    raw = bytearray(obj.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    obj.write_bytes(bytes(raw))
    proc = fetch(damaged_repo, segment, work / "d")
    assert proc.returncode == 255 and "fatal" in proc.stderr
    assert not (work / "d").exists()
    assert not [p for p in work.iterdir() if p.name.startswith(".d")]

    # Usage mistakes stop recovery too: 255, never 1 ("missing").
    for args in (
        ["wal", "fetch", "--repo", str(repo), "not-a-wal-name", str(work / "u")],
        ["wal", "fetch", "--repo", str(repo), segment],
        ["wal", "fetch", "--repo", "relative/repo", segment, str(work / "u")],
        ["wal", "fetch", "--bogus", segment, str(work / "u")],
        ["wal", "fetch", segment, str(work / "u")],  # no repository configured
        ["wal", "fetch", "--repo", str(repo), segment, str(work / "no" / "such" / "dir")],
    ):
        proc = run_cli(*args, user="postgres")
        assert proc.returncode == 255, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_push_refuses_another_clusters_segment(
    archiving: tuple[PgCluster, Path], make_cluster: ClusterFactory
) -> None:
    cluster, repo = archiving
    ours = sysid_of(cluster)
    switch_and_wait(cluster)
    name = "000000010000002000000001"
    foreign = write(make_cluster.dir("foreign") / name, fake_segment(name, sysid=ours + 1))
    proc = run_cli("wal", "push", "--repo", str(repo), str(foreign), user="postgres")
    assert proc.returncode == 1
    assert str(ours) in proc.stderr and str(ours + 1) in proc.stderr
    assert not (repo / "wal" / name[:16] / name).exists()


def test_push_user_mistakes_are_one_line_with_documented_codes(
    archiving: tuple[PgCluster, Path], make_cluster: ClusterFactory
) -> None:
    cluster, repo = archiving
    work = make_cluster.dir("mistakes")
    segment = cluster.data / "pg_wal" / switch_and_wait(cluster)
    cases = [
        (["--repo", "relative/repo", str(segment)], 2, "not a file:///"),
        (["--repo", str(repo), str(work / "000000010000000000000001")], 2, "no such file"),
        (["--repo", str(repo), str(write(work / "notes.txt", b"x"))], 2, "not a WAL file name"),
        ([str(segment)], 3, "no repository"),
        (["--repo", str(repo)], 2, "one PATH"),
        (["--repo", str(repo), "--look-ahead", "x", str(segment)], 2, "whole number"),
    ]
    for args, code, text in cases:
        proc = run_cli("wal", "push", *args, user="postgres")
        assert (proc.returncode, len(proc.stderr.strip().splitlines())) == (code, 1), proc.stderr
        assert text in proc.stderr and "Traceback" not in proc.stderr
    # Root must not write files the database's OS user could not read: the wrong OS user,
    # a usage mistake (2) as for every command.
    proc = run_cli("wal", "push", "--repo", str(repo), str(segment))
    assert proc.returncode == 2 and "owned by postgres" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_prefetch_serves_verified_segments_from_the_spool(
    archiving: tuple[PgCluster, Path], make_cluster: ClusterFactory
) -> None:
    cluster, repo = archiving
    cluster.execute(
        "CREATE TABLE IF NOT EXISTS fill(x text); "
        "INSERT INTO fill SELECT repeat(md5(g::text), 30) FROM generate_series(1, 8000) g"
    )  # ~8 MB of WAL: several 1 MB segments
    switch_and_wait(cluster)
    names = [p.name for p in archived_segments(cluster)][-5:]
    work = make_cluster.dir("prefetch")
    spool = make_cluster.dir("spool")
    dest = work / "RECOVERYXLOG"
    args = ("--spool", str(spool), "--prefetch", "3", "-v")

    proc = fetch(repo, names[0], dest, *args)
    assert proc.returncode == 0 and "from repository, prefetched 3" in proc.stderr
    spooled = sorted(p.name for p in spool.rglob("0000*"))
    assert spooled == names[1:4]
    assert dest.read_bytes() == (cluster.data / "pg_wal" / names[0]).read_bytes()

    proc = fetch(repo, names[1], dest, *args)
    assert proc.returncode == 0 and "from spool" in proc.stderr
    assert dest.read_bytes() == (cluster.data / "pg_wal" / names[1]).read_bytes()

    # A damaged spooled copy is never used: the repository's copy is.
    damaged = next(spool.rglob(names[2]))
    damaged.write_bytes(damaged.read_bytes()[:-100])
    proc = fetch(repo, names[2], dest, *args)
    assert proc.returncode == 0 and "from repository" in proc.stderr
    assert dest.read_bytes() == (cluster.data / "pg_wal" / names[2]).read_bytes()
    # Used spool files are gone; the end of the archive clears the rest.
    assert fetch(repo, "0000000100000FFF000000FF", dest, *args).returncode == 1
    assert not list(spool.rglob("0000*"))


def test_look_ahead_uploads_ready_files_and_rechecks_them(make_cluster: ClusterFactory) -> None:
    work = make_cluster.dir("ahead")
    repo = work / "repo"
    pg_wal = work / "data" / "pg_wal"
    names = [f"0000000100000000000000{i:02X}" for i in range(1, 6)]
    for name in names:
        write(pg_wal / name, fake_segment(name, sysid=5, body=os.urandom(1000)))
        write(pg_wal / "archive_status" / f"{name}.ready", b"")
    args = ("--look-ahead", "8", "-v")

    def push(name: str) -> subprocess.CompletedProcess[str]:
        return run_cli(
            "wal", "push", "--repo", str(repo), str(pg_wal / name), *args, user="postgres"
        )

    proc = push(names[0])
    assert proc.returncode == 0 and "4 uploaded ahead" in proc.stderr, proc.stderr
    assert len(list((repo / "wal" / names[0][:16]).iterdir())) == 5
    spool = work / "chainlens-ops-spool-data"
    assert len(list(spool.rglob("pushed/0000*"))) == 4

    proc = push(names[1])
    assert proc.returncode == 0 and "archived-ahead" in proc.stderr
    # A file changed after its look-ahead upload goes through the full rules again.
    write(pg_wal / names[2], fake_segment(names[2], sysid=5, body=os.urandom(1000)))
    proc = push(names[2])
    assert proc.returncode == 1 and "different content" in proc.stderr


def _ahead_setup(make_cluster: ClusterFactory) -> tuple[Path, Path, list[str]]:
    work = make_cluster.dir("ahead")
    pg_wal = work / "data" / "pg_wal"
    names = [f"0000000100000000000000{i:02X}" for i in range(1, 6)]
    for name in names:
        write(pg_wal / name, fake_segment(name, sysid=5, body=os.urandom(1000)))
        write(pg_wal / "archive_status" / f"{name}.ready", b"")
    return work / "repo", pg_wal, names


def test_look_ahead_records_are_tied_to_the_repository_identity(
    make_cluster: ClusterFactory,
) -> None:
    """A repository deleted (or recreated) at the same URL after a look-ahead upload must
    not get "already archived" answers from the old records."""
    repo, pg_wal, names = _ahead_setup(make_cluster)

    def push(name: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return run_cli("wal", "push", "--repo", str(repo), str(pg_wal / name), "-v", *extra,
                       user="postgres")  # fmt: skip

    assert "4 uploaded ahead" in push(names[0], "--look-ahead", "8").stderr
    subprocess.run(["rm", "-rf", str(repo)], check=True)
    proc = push(names[1])  # the repository is gone: stored anew, not "archived-ahead"
    assert proc.returncode == 0 and "archived-ahead" not in proc.stderr, proc.stderr
    assert (repo / "wal" / names[1][:16] / names[1]).exists()
    subprocess.run(["rm", "-rf", str(repo)], check=True)
    assert push(names[4]).returncode == 0  # a new repository (new marker) at the same URL
    proc = push(names[2])
    assert proc.returncode == 0 and "archived-ahead" not in proc.stderr, proc.stderr
    assert (repo / "wal" / names[2][:16] / names[2]).exists()
    proc = push(names[3])
    assert proc.returncode == 0 and "archived-ahead" not in proc.stderr, proc.stderr
    assert (repo / "wal" / names[3][:16] / names[3]).exists()


def test_push_killed_after_look_ahead_upload_before_its_record(
    make_cluster: ClusterFactory,
) -> None:
    repo, pg_wal, names = _ahead_setup(make_cluster)
    killed = run_cli("wal", "push", "--repo", str(repo), str(pg_wal / names[0]),
                     "--look-ahead", "1", user="postgres",
                     env={"CHAINLENS_CRASH_AT": "after-upload-before-record"})  # fmt: skip
    assert killed.returncode != 0
    assert (repo / "wal" / names[1][:16] / names[1]).exists()  # uploaded, not recorded
    for name in names[:2]:
        proc = run_cli("wal", "push", "--repo", str(repo), str(pg_wal / name), "-v",
                       user="postgres")  # fmt: skip
        assert proc.returncode == 0 and "archived-ahead" not in proc.stderr, proc.stderr
        work = repo.parent
        assert fetch(repo, name, work / f"{name}.back").returncode == 0
        assert (work / f"{name}.back").read_bytes() == (pg_wal / name).read_bytes()


@pytest.fixture
def small_volume(make_cluster: ClusterFactory) -> Iterator[Path]:
    """A 1 MiB tmpfs owned by postgres (a volume that can fill up or go read-only)."""
    mount = make_cluster.dir("volume")
    uid, gid = _pg_ids()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size=1m,uid={uid},gid={gid},mode=0700", "tmpfs",
         str(mount)], capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_push_messages_say_what_is_wrong_full_disk_or_read_only(
    small_volume: Path, make_cluster: ClusterFactory
) -> None:
    work = make_cluster.dir("errno")
    repo = small_volume / "repo"
    name = "000000010000000000000002"
    big = write(
        work / "pg_wal" / name,
        fake_segment(name, sysid=8, seg_size=4 * MB, body=os.urandom(2 * MB)),
    )
    proc = run_cli("wal", "push", "--repo", str(repo), str(big), user="postgres")
    assert proc.returncode == 1 and "no space left" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    subprocess.run(["mount", "-o", "remount,ro", str(small_volume)], check=True)
    small = "000000010000000000000003"
    seg = write(work / "pg_wal" / small, fake_segment(small, sysid=8, seg_size=4 * MB))
    proc = run_cli("wal", "push", "--repo", str(repo), str(seg), user="postgres")
    assert proc.returncode == 1 and "read-only file system" in proc.stderr, proc.stderr
    assert "owned by" not in proc.stderr


def test_stale_temp_files_are_swept_by_push_and_reported_by_check(
    make_cluster: ClusterFactory,
) -> None:
    work = make_cluster.dir("stale")
    repo = work / "repo"
    names = [f"00000001000000000000000{i}" for i in (2, 3)]
    segs = [write(work / "pg_wal" / n, fake_segment(n, sysid=9)) for n in names]

    def push(segment: Path) -> None:
        spool = str(work / "spool")
        proc = run_cli("wal", "push", "--repo", str(repo), "--spool", spool, str(segment),
                       user="postgres")  # fmt: skip
        assert proc.returncode == 0, proc.stderr

    push(segs[0])
    folder = repo / "wal" / names[0][:16]
    old = time.time() - 2 * 3600

    def plant(tag: str) -> Path:
        path = write(folder / f".{names[0]}.{tag}.tmp", b"left by a killed push")
        os.utime(path, (old, old))
        return path

    fresh = write(folder / f".{names[1]}.live.tmp", b"a push in progress")
    for stamp in (work / "spool").glob("*/temp-sweep"):
        stamp.unlink()  # as if the last sweep was long ago
    stale = plant("1")
    push(segs[1])
    assert not stale.exists() and fresh.exists()
    stale = plant("2")  # the sweep ran just now: the next push does not walk the repository
    push(segs[1])
    assert stale.exists()
    proc = run_cli("wal", "check", "--repo", str(repo), user="postgres")
    assert "1 stale temp file(s) of killed pushes found, 1 removed" in proc.stdout, proc.stdout
    assert not stale.exists() and fresh.exists()


def test_wal_list_and_check_on_a_repository_path_that_does_not_exist(
    make_cluster: ClusterFactory,
) -> None:
    missing = make_cluster.dir("nothing") / "no-such-repo"
    for command in ("list", "check"):
        proc = run_cli("wal", command, "--repo", str(missing))
        assert proc.returncode == 1 and "does not exist" in proc.stderr, proc.stderr
        assert "no WAL archived yet" not in proc.stdout
    proc = run_cli("wal", "list", "--repo", "relative/repo")
    assert proc.returncode == 2, proc.stderr
