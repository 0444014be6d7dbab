"""Damaged repository metadata and the one recoverable window, on a real repository.

- A WAL gap: `backup list`, `status`, `restore --dry-run` and `backup prune --dry-run`
  print the same window (two spans, the gap cut out); a restore to a time before the
  gap (which the window promises) restores the rows of then; a time in the gap is
  refused by restore, naming the window.
- Damaged metadata of every kind (manifest fields, a truncated manifest, a restore
  point entry, a scan-cache entry, a proof, the marker): one line naming the object,
  exit 1, never a traceback, and the other backups still list, plan and restore.
- `backup verify` of a base backup whose own WAL is gone fails, naming the segment.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from conftest import ClusterFactory
from pgharness import PgCluster, free_port
from test_status import Ops, healthy, make_ops
from test_wal import switch_and_wait

from chainlens_ops.restore.window import target_time_text

Proc = subprocess.CompletedProcess[str]
TS = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}\+00"
SPAN = re.compile(rf"({TS}) \.\. ({TS})")
WIDE = {"COLUMNS": "200"}


def spans(text: str) -> list[tuple[str, str]]:
    return SPAN.findall(text)


def one_error_line(proc: Proc, *needles: str) -> str:
    """Exit 1, no traceback, and the last stderr line is our one line naming `needles`."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("chainlens-ops: error:"), proc.stderr
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def rows(ops: Ops, tag: str, n: int) -> None:
    ops.cluster.execute(f"INSERT INTO t SELECT g, '{tag}' FROM generate_series(1, {n}) g",
                        dbname="microservices")  # fmt: skip


def base_backup(ops: Ops) -> str:
    made = ops.cli("backup", "--kind", "base", "--quiet")
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def restore_started(ops: Ops, *target: str) -> PgCluster:
    pgdata = ops.factory.dir("restored") / "data"
    port = free_port()
    proc = ops.cli("restore", *target, "--pgdata", str(pgdata), "--start", "--port", str(port))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cluster = PgCluster(pgdata, port)
    ops.factory.made.append(cluster)
    return cluster


def wal_path(ops: Ops, segment: str) -> Path:
    return ops.repo / "wal" / segment[:16] / segment


def test_a_wal_gap_gives_one_window_to_list_status_restore_and_prune(
    make_cluster: ClusterFactory,
) -> None:
    ops = make_ops(make_cluster)
    ops.cluster.execute("CREATE TABLE t (n int, tag text)", dbname="microservices")
    first = healthy(ops)
    rows(ops, "A", 10)
    before_gap = str(ops.cluster.scalar("SELECT now()::text"))
    time.sleep(0.3)
    rows(ops, "B", 5)
    switch_and_wait(ops.cluster)
    rows(ops, "C", 3)  # in the segment that goes missing
    gone = switch_and_wait(ops.cluster)
    second = base_backup(ops)
    rows(ops, "D", 2)
    switch_and_wait(ops.cluster)
    wal_path(ops, gone).unlink()

    listed = ops.cli("backup", "list", env=WIDE)
    assert listed.returncode == 0, listed.stderr
    window = spans(listed.stdout)
    assert len(window) == 2, listed.stdout  # the gap cut out, not "up to the newest WAL"

    status = ops.cli("status", env=WIDE)
    assert spans(status.stdout) == window, status.stdout
    _, report = ops.status()
    shown = [(target_time_text(datetime_of(s["start"])), target_time_text(datetime_of(s["end"])))
             for s in report["windows"][0]["window"]["recoverable"]]  # fmt: skip
    assert shown == window

    fresh = ops.factory.dir("plan") / "data"
    plan = ops.cli("restore", "--latest", "--dry-run", "--pgdata", str(fresh))
    assert plan.returncode == 0, plan.stderr
    assert spans(plan.stderr) == window, plan.stderr

    prune = ops.cli("backup", "prune", "--keep-last", "10", "--dry-run", env=WIDE)
    assert prune.returncode == 0, prune.stderr
    assert spans(prune.stdout) == window, prune.stdout

    # The window's promise holds: before the gap, restore reaches the time (rows of then).
    (start1, end1), (start2, _end2) = window
    assert start1 <= target_time_text(datetime_of(before_gap)) < end1
    plan = ops.cli("restore", "--target-time", before_gap, "--dry-run", "--pgdata", str(fresh))
    assert plan.returncode == 0 and first in plan.stderr, plan.stderr
    copy = restore_started(ops, "--target-time", before_gap)
    tags = dict(copy.execute("SELECT tag, count(*) FROM t GROUP BY 1", dbname="microservices"))
    assert tags == {"A": 10}, tags
    copy.stop()

    # In the gap: refused, naming the window; after it: the second backup.
    in_gap = ops.cli("restore", "--target-time", end1, "--dry-run", "--pgdata", str(fresh))
    assert in_gap.returncode == 2 and "recoverable window" in in_gap.stderr, in_gap.stderr
    assert spans(in_gap.stderr.strip().splitlines()[-1]) == window
    after = ops.cli("restore", "--target-time", start2, "--dry-run", "--pgdata", str(fresh))
    assert after.returncode == 0 and second in after.stderr, after.stderr


def datetime_of(text: str) -> Any:
    from chainlens_ops.restore.plan import parse_target_time

    return parse_target_time(text).time


def manifest_path(ops: Ops, backup_id: str) -> Path:
    return ops.repo / "backups" / backup_id / "manifest.json"


def garble(path: Path, change: Any) -> bytes:
    """Rewrite the JSON at `path` with `change(data)` applied; the original bytes."""
    original = path.read_bytes()
    data = json.loads(original)
    change(data)
    path.write_text(json.dumps(data))
    return original


def test_damaged_metadata_is_one_line_and_the_rest_still_lists_and_restores(
    make_cluster: ClusterFactory,
) -> None:
    ops = make_ops(make_cluster)
    ops.cluster.execute("CREATE TABLE t (n int, tag text)", dbname="microservices")
    older = healthy(ops)
    rows(ops, "A", 7)
    assert ops.cli("restore-point", "create", "rp-good").returncode == 0
    assert ops.cli("restore-point", "create", "rp-bad").returncode == 0
    ops.cluster.execute("SELECT pg_create_restore_point('rp-sql')")
    newer = base_backup(ops)
    assert ops.cli("backup", "verify", older).returncode == 0
    rows(ops, "B", 3)
    switch_and_wait(ops.cluster)
    fresh = ops.factory.dir("plan") / "data"

    # Every kind of manifest damage, one at a time, on the newest backup.
    path = manifest_path(ops, newer)
    sound = path.read_bytes()
    garbles: list[tuple[str, Any]] = [
        ("'objects[0].size'", lambda d: d["objects"][0].update(size="1234")),
        ("'finished_at'", lambda d: d.update(finished_at="2026-13-45 yesterday")),
        ("'start_wal'", lambda d: d.update(start_wal="not-a-segment")),
        ("'kind'", lambda d: d.update(kind=7)),
        ("'objects[0].sha256'", lambda d: d["objects"][0].update(sha256="zz")),
        ("'timeline'", lambda d: d.update(timeline="1")),
        ("'colour'", lambda d: d.update(colour="red")),
    ]
    for field, change in garbles:
        garble(path, change)
        listed = ops.cli("backup", "list", env=WIDE)
        one_error_line(listed, newer, field)
        assert older in listed.stdout and "DAMAGED" in listed.stdout, listed.stdout
        path.write_bytes(sound)
    path.write_bytes(sound[: len(sound) // 2])  # truncated
    listed = ops.cli("backup", "list", env=WIDE)
    one_error_line(listed, newer, "truncated JSON")
    as_json = json.loads(ops.cli("backup", "list", "--json").stdout)
    assert {b["id"]: b.get("status") for b in as_json} == {older: "complete", newer: "damaged"}

    # status: the damaged newest never lets the older one pass as newest with a check mark.
    backups = ops.check("backups")
    assert not backups["ok"] and newer in backups["detail"], backups
    assert any(newer in fix for fix in backups["fixes"])
    # Planning and restoring pass over it; naming it is one line; verify likewise.
    plan = ops.cli("restore", "--latest", "--dry-run", "--pgdata", str(fresh))
    assert plan.returncode == 0 and older in plan.stderr, plan.stderr
    one_error_line(ops.cli("restore", "--latest", "--backup", newer, "--dry-run", "--pgdata",
                           str(fresh)), newer, "truncated JSON")  # fmt: skip
    one_error_line(ops.cli("backup", "verify", newer), newer, "is damaged")
    copy = restore_started(ops, "--target-name", "rp-good")
    tags = dict(copy.execute("SELECT tag, count(*) FROM t GROUP BY 1", dbname="microservices"))
    assert tags == {"A": 7}, tags
    copy.stop()
    path.write_bytes(sound)

    # The restore-point WAL scan cache: an entry with an unknown field is rebuilt.
    assert ops.cli("restore-point", "list").returncode == 0  # fills the cache
    cache = sorted((ops.repo / "restore-points" / "scanned").glob("*.json"))
    assert cache
    garble(cache[0], lambda d: d.update(colour="red"))
    points = ops.cli("restore-point", "list", "--json")
    assert points.returncode == 0, points.stderr
    assert "rp-sql" in {p["name"] for p in json.loads(points.stdout)}
    assert "colour" not in json.loads(cache[0].read_text())

    # A truncated restore-point entry: listed as damaged, one line; the others restore.
    entry = ops.repo / "restore-points" / "rp-bad.json"
    entry.write_bytes(entry.read_bytes()[:25])
    listed = ops.cli("restore-point", "list", env=WIDE)
    one_error_line(listed, "rp-bad.json", "truncated JSON")
    assert "rp-good" in listed.stdout and "damaged" in listed.stdout, listed.stdout
    one_error_line(ops.cli("restore", "--target-name", "rp-bad", "--dry-run", "--pgdata",
                           str(fresh)), "rp-bad.json")  # fmt: skip
    plan = ops.cli("restore", "--target-name", "rp-good", "--dry-run", "--pgdata", str(fresh))
    assert plan.returncode == 0, plan.stderr
    _, report = ops.status()
    assert report["windows"][0]["window"] is not None
    assert any("rp-bad.json" in p for p in report["windows"][0]["window"]["problems"])
    entry.unlink()

    # A proof whose `ok` is garbled counts as a failed proof (never a pass), naming it.
    proof = next((ops.repo / "backups" / older).glob("verify-*.json"))
    garble(proof, lambda d: d.update(ok="yes"))
    as_json = json.loads(ops.cli("backup", "list", "--json").stdout)
    verified = next(b for b in as_json if b["id"] == older)["verified"]
    assert verified["ok"] is False and "'ok'" in verified["detail"], verified

    # The repository marker: every command that reads it says so in one line.
    marker = ops.repo / "chainlens-repo.toml"
    marker.write_text(marker.read_text().replace("wal_segment_size = ", "wal_segment_size = x"))
    one_error_line(ops.cli("backup", "list"), "chainlens-repo.toml is damaged")
    one_error_line(ops.cli("restore", "--latest", "--dry-run", "--pgdata", str(fresh)),
                   "chainlens-repo.toml is damaged")  # fmt: skip


def test_verify_of_a_base_backup_whose_own_wal_is_gone_says_so(
    make_cluster: ClusterFactory,
) -> None:
    ops = make_ops(make_cluster)
    backup_id = healthy(ops)
    verified = ops.cli("backup", "verify", backup_id)
    assert verified.returncode == 0 and "own WAL" in verified.stdout, verified.stdout
    manifest = json.loads(manifest_path(ops, backup_id).read_text())
    wal_path(ops, manifest["start_wal"]).unlink()
    line = one_error_line(ops.cli("backup", "verify", backup_id), manifest["start_wal"])
    assert "missing from the archive" in line
    assert "FAILED" in ops.cli("backup", "verify", backup_id).stdout
