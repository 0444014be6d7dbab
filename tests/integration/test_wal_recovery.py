"""`wal fetch` answers "not in the archive" (exit 1) only when the repository can truly
say so; everything else is fatal to recovery (255). Real recoveries, local repository."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import ClusterFactory
from pgharness import CLI, run_cli
from test_wal import fake_segment, write
from wal_support import (
    assert_recovery_stops_fatally,
    recover_fully,
    restoring,
    source_with_backups,
)

MISSING = "0000000100000FFF000000FF"


def fetch(repo: Path, name: str, dest: Path) -> tuple[int, str]:
    proc = run_cli("wal", "fetch", "--repo", str(repo), name, str(dest), user="postgres")
    return proc.returncode, proc.stderr


def test_missing_object_is_absent_only_in_a_present_marked_repository(
    make_cluster: ClusterFactory,
) -> None:
    work = make_cluster.dir("absent")
    repo = work / "repo"
    name = "000000010000000000000002"
    segment = write(work / "pg_wal" / name, fake_segment(name, sysid=42))
    assert (
        run_cli("wal", "push", "--repo", str(repo), str(segment), user="postgres").returncode == 0
    )
    # Present, marked: a true absence.
    assert fetch(repo, MISSING, work / "x") == (1, "")
    assert fetch(repo, "00000002.history", work / "x") == (1, "")

    # The repository root is missing (unmounted volume, wrong path): fatal, not absent.
    code, err = fetch(work / "no-such-repo", MISSING, work / "x")
    assert code == 255 and "missing or empty" in err and len(err.strip().splitlines()) == 1
    # Present but empty (a mount point with nothing mounted on it).
    empty = make_cluster.dir("empty-mount")
    assert fetch(empty, MISSING, work / "x")[0] == 255
    assert fetch(empty, "00000002.history", work / "x")[0] == 255
    # Objects but no marker.
    (repo / "chainlens-repo.toml").rename(work / "marker.away")
    assert fetch(repo, MISSING, work / "x")[0] == 255
    (work / "marker.away").rename(repo / "chainlens-repo.toml")
    assert not (work / "x").exists()


def test_missing_object_in_another_clusters_repository_is_fatal(
    make_cluster: ClusterFactory,
) -> None:
    """Restoring a data folder from a repository whose marker names another cluster:
    "absent" would be a lie about this cluster's archive."""
    _, datas = source_with_backups(
        make_cluster, f"{CLI} wal push --repo {make_cluster.dir('own')} %p"
    )
    foreign = make_cluster.dir("foreign")
    name = "000000010000000000000002"
    segment = write(foreign / "src" / name, fake_segment(name, sysid=42))
    assert (
        run_cli("wal", "push", "--repo", str(foreign), str(segment), user="postgres").returncode
        == 0
    )
    dest = datas[0] / "pg_wal" / "RECOVERYXLOG"
    code, err = fetch(foreign, MISSING, dest)
    assert code == 255 and "belongs to database system" in err, err


def test_recovery_stops_when_the_local_repository_goes_away_mid_way(
    make_cluster: ClusterFactory,
) -> None:
    """The runbook: archive, base backup, write 4 batches (one per segment), restore.
    Right after recovery fetched the segment after the backup's start, the repository
    folder is renamed away (as an unmounted volume would vanish): PostgreSQL must stop
    with FATAL and not promote a server with part of the rows. Deterministic: the
    restore_command itself moves the folder after that named segment."""
    volume = make_cluster.dir("volume")
    repo = volume / "repo"
    _, datas = source_with_backups(make_cluster, f"{CLI} wal push --repo {repo} %p", batches=4)
    label = (datas[0] / "backup_label").read_text()
    start = re.search(r"\(file ([0-9A-F]{24})\)", label)
    assert start is not None
    segments = sorted(p.name for p in repo.glob("wal/*/*") if len(p.name) == 24)
    trigger = segments[segments.index(start.group(1)) + 1]
    assert len(segments) > segments.index(trigger) + 2  # rows remain after the trigger
    command = (
        f"{CLI} wal fetch --repo {repo} --prefetch 0 %f %p && "
        f"{{ [ %f != {trigger} ] || mv {repo} {volume}/gone; }}"
    )
    log = assert_recovery_stops_fatally(restoring(make_cluster, datas[0], command))
    assert f'restored log file "{trigger}"' in log
    assert not repo.exists() and (volume / "gone").is_dir()


def test_another_clusters_segments_history_and_backup_files_are_refused(
    make_cluster: ClusterFactory,
) -> None:
    """A separately initdb'ed cluster (clones of the test template share one system
    identifier): its segment, .history and .backup files are refused, from its data
    folder (pg_control) and from elsewhere (consistency with the repository), naming
    both clusters; our point-in-time restore still replays everything afterwards."""
    from pgharness import create_template

    repo = make_cluster.dir("ours") / "repo"
    _, datas = source_with_backups(make_cluster, f"{CLI} wal push --repo {repo} %p")
    ours = (repo / "chainlens-repo.toml").read_text()
    foreign = create_template(make_cluster.dir("foreign"))
    pg_wal = foreign / "pg_wal"
    segment = sorted(p for p in pg_wal.iterdir() if len(p.name) == 24)[0]
    history = write(pg_wal / "00000002.history", b"1\t0/3000060\tno recovery target specified\n")
    start = segment.name
    backup = write(
        pg_wal / f"{start}.00000028.backup",
        f"START WAL LOCATION: 0/{int(start[16:], 16) * 0x100000 + 0x28:X} (file {start})\n"
        "STOP WAL LOCATION: 0/3000100 (file 000000010000000000000003)\n".encode(),
    )
    elsewhere = make_cluster.dir("elsewhere")
    for path in (segment, history, backup):
        proc = run_cli("wal", "push", "--repo", str(repo), str(path), user="postgres")
        assert proc.returncode == 1, (path.name, proc.stderr)
        assert "database system" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert ours.split("system_identifier = ")[1][:21].strip('"\n ') in proc.stderr
    # The same history file from outside any data folder: its parent timeline 1 is here,
    # but a history naming timeline 7 as parent, or a backup whose start segment was never
    # archived here, does not fit.
    for name, body in (
        ("00000002.history", b"7\t0/3000060\tforeign\n"),
        ("0000000100000FFF000000FF.00000028.backup",
         b"START WAL LOCATION: FFF/FF000028 (file 0000000100000FFF000000FF)\n"),
    ):  # fmt: skip
        path = write(elsewhere / name, body)
        proc = run_cli("wal", "push", "--repo", str(repo), str(path), user="postgres")
        assert proc.returncode == 1 and "does not fit" in proc.stderr, proc.stderr
    assert not (repo / "wal" / "history").exists()
    fetch_cmd = f"{CLI} wal fetch --repo {repo} %f %p"
    assert recover_fully(restoring(make_cluster, datas[0], fetch_cmd)) == 1010


def test_wal_check_agrees_with_a_restore_when_a_switch_segment_is_missing(
    make_cluster: ClusterFactory,
) -> None:
    """Timeline 2 made by promoting a restored server; then the new timeline's copy of
    the switch segment is deleted (the old timeline's copy and .partial remain). A
    restore to latest stops before timeline 2's rows; `wal check` must name that gap."""
    from test_wal import switch_and_wait

    repo = make_cluster.dir("tl") / "repo"
    push = f"{CLI} wal push --repo {repo} %p"
    fetch_cmd = f"{CLI} wal fetch --repo {repo} %f %p"
    _, datas = source_with_backups(make_cluster, push, backups=2)
    promoted = restoring(make_cluster, datas[0], fetch_cmd)
    promoted.configure(archive_mode="on", archive_command=push)
    assert recover_fully(promoted) == 1010
    promoted.execute("INSERT INTO t SELECT generate_series(1011, 2010)")
    switch_and_wait(promoted)
    promoted.stop()
    assert run_cli("wal", "check", "--repo", str(repo)).returncode == 0

    history = (repo / "wal" / "history" / "00000002.history").exists()
    assert history
    run_cli("wal", "fetch", "--repo", str(repo), "00000002.history", str(repo.parent / "h"))
    switch = int(
        (repo.parent / "h").read_text().split()[1].split("/")[1], 16
    )  # 0/XXXXXXXX: below 4 GB in this test
    seg = f"{switch // 0x100000:08X}"  # 1 MB segments in the test template
    switch_segment = repo / "wal" / "0000000200000000" / f"0000000200000000{seg}"
    assert switch_segment.exists(), sorted(p.name for p in repo.glob("wal/*/*"))
    switch_segment.unlink()

    check = run_cli("wal", "check", "--repo", str(repo))
    assert check.returncode == 1, check.stdout
    assert f"gap on timeline 2: {switch_segment.name}" in check.stderr, check.stderr
    restored = restoring(make_cluster, datas[1], fetch_cmd)
    assert recover_fully(restored) == 1010  # the restore lost timeline 2's rows, as check said
