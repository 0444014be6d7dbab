"""`wal fetch` answers "not in the archive" (exit 1) only when the repository can truly
say so; everything else is fatal to recovery (255). Real recoveries, local repository."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import ClusterFactory
from pgharness import CLI, run_cli
from test_wal import fake_segment, write
from wal_support import assert_recovery_stops_fatally, restoring, source_with_backups

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
