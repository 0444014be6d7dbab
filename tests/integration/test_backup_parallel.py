"""`backup --kind logical --jobs N` (pg_dump's directory format through a local spool),
its verify and restore, on a local repository and on S3 (moto); and the progress bar,
seen on a terminal (a pty) and absent when piped."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import struct
import subprocess
import termios
import time
from typing import Any

from conftest import ClusterFactory, MotoServer
from pgharness import CLI, PgCluster, cli_env, run_cli
from test_backup import TABLES, backup, cli, counts, fill, flip_local, listing
from test_wal_s3 import S3Setup, client

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]|\r")
ELAPSED = re.compile(r"\b0:00:\d\d\b")
SIZE = re.compile(r"\d+(\.\d+)?(/\?)? ?(bytes|kB|MB)\b")
RATE = re.compile(r"\d+(\.\d+)? ?(bytes|kB|MB)/s\b")


def many_tables(cluster: PgCluster, db: str) -> None:
    """The two tables of test_backup, plus a partitioned one: several data files."""
    fill(cluster, db)
    month = "CREATE TABLE months_{} PARTITION OF months FOR VALUES FROM ('{}') TO ('{}'); "
    cluster.execute(
        "CREATE TABLE months (at date NOT NULL, n int) PARTITION BY RANGE (at); "
        + month.format(1, "2025-01-01", "2025-02-01") + month.format(2, "2025-02-01", "2025-03-01")
        + "INSERT INTO months SELECT date '2025-01-01' + (g % 2) * 31, g "
        "FROM generate_series(1, 4000) g",
        dbname=db,
    )  # fmt: skip


def months(cluster: PgCluster, db: str) -> dict[str, int]:
    rows = cluster.execute("SELECT tableoid::regclass::text, count(*) FROM months GROUP BY 1",
                           dbname=db)  # fmt: skip
    return {str(name): int(n) for name, n in rows}


def manifest_of(proc_list: list[dict[str, Any]], backup_id: str) -> dict[str, Any]:
    return next(b for b in proc_list if b["id"] == backup_id)


def test_jobs_backup_spools_verifies_and_restores_with_identical_counts(
    make_cluster: ClusterFactory,
) -> None:
    pg = make_cluster()
    many_tables(pg, "shop")
    repo, spool = make_cluster.dir("repo"), make_cluster.dir("spool")
    env = {"CHAINLENS_SPOOL_DIR": str(spool)}

    made = backup(repo, pg.conninfo("shop"), "--kind", "logical", "--jobs", "2", env=env)
    assert made.returncode == 0, made.stderr
    backup_id = made.stdout.strip()
    # It says, in one line, that it spools and where; the spool is gone afterwards.
    said = [line for line in made.stderr.splitlines() if "spooling in" in line]
    assert len(said) == 1 and f"{spool}/chainlens-backup-{backup_id}-" in said[0], made.stderr
    assert "directory format" in said[0] and "removed once stored" in said[0]
    assert list(spool.iterdir()) == []

    manifest = manifest_of(listing(repo), backup_id)
    keys = [o["key"] for o in manifest["objects"]]
    prefix = f"backups/{backup_id}/dump.d/"
    assert keys[0] == prefix + "toc.dat.zst"
    assert all(k.startswith(prefix) and k.endswith(".dat.zst") for k in keys)
    assert len(keys) >= 1 + len(TABLES) + 2  # toc, two tables, two partitions (at least)
    assert all(len(o["sha256"]) == 64 and o["size"] > 0 for o in manifest["objects"])
    assert (repo / "backups" / backup_id / "dump.d" / "toc.dat.zst").stat().st_mode & 0o077 == 0

    ok = cli(repo, "verify", backup_id, env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert re.search(r"pg_restore --list reads \d+ entries, all \d+ data files present", ok.stdout)
    assert list(spool.iterdir()) == []

    # Restored with pg_restore -j (and without -j: a directory dump is spooled either way).
    for name, extra in (("shop_jobs", ["--jobs", "2"]), ("shop_one", [])):
        proc = run_cli("restore", "--repo", str(repo), "--backup", backup_id, "--dbname", name,
                       "--dsn", pg.conninfo(), *extra, env=env, user="postgres")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert "spooled to local disk" in proc.stdout
        assert counts(pg, name) == counts(pg, "shop") == TABLES
        assert months(pg, name) == months(pg, "shop") == {"months_1": 2000, "months_2": 2000}
    assert list(spool.iterdir()) == []

    # A flipped byte in the table of contents or in a data file fails verify, naming it.
    for key in (keys[0], keys[-1]):
        path = repo / key
        flip_local(path, path.stat().st_size // 2)
        bad = cli(repo, "verify", backup_id, env=env)
        assert bad.returncode == 1 and key in bad.stderr, bad.stdout + bad.stderr
        restore = run_cli("restore", "--repo", str(repo), "--backup", backup_id, "--dbname",
                          "shop_bad", "--dsn", pg.conninfo(), env=env, user="postgres")  # fmt: skip
        assert restore.returncode == 1 and key in restore.stderr, restore.stderr
        flip_local(path, path.stat().st_size // 2)
    assert list(spool.iterdir()) == []


def test_jobs_backup_to_s3_round_trip(
    make_cluster: ClusterFactory, moto_server: MotoServer, s3_bucket: str
) -> None:
    pg = make_cluster()
    many_tables(pg, "shop")
    setup = S3Setup(make_cluster.dir("s3conf"), moto_server)
    spool = make_cluster.dir("spool")
    env = {**setup.env, "CHAINLENS_SPOOL_DIR": str(spool)}
    repo = f"s3://{s3_bucket}/c"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli("--config", str(setup.config), *args, env=env, user="postgres")

    made = run("backup", "--repo", repo, "--dsn", pg.conninfo("shop"), "--kind", "logical",
               "--jobs", "3", "--quiet")  # fmt: skip
    assert made.returncode == 0 and made.stderr == "", made.stderr
    backup_id = made.stdout.strip()
    assert list(spool.iterdir()) == []
    shown = json.loads(run("backup", "list", "--repo", repo, "--json").stdout)
    keys = [o["key"] for o in manifest_of(shown, backup_id)["objects"]]
    bucket_keys = {o["Key"] for o in client(moto_server).list_objects_v2(
        Bucket=s3_bucket, Prefix=f"c/backups/{backup_id}/")["Contents"]}  # fmt: skip
    assert bucket_keys == {f"c/{k}" for k in keys} | {f"c/backups/{backup_id}/manifest.json"}

    ok = run("backup", "verify", "--repo", repo, backup_id)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    proc = run("restore", "--repo", repo, "--backup", backup_id, "--dbname", "shop_s3",
               "--dsn", pg.conninfo(), "--jobs", "2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert counts(pg, "shop_s3") == counts(pg, "shop") == TABLES
    assert months(pg, "shop_s3") == months(pg, "shop")

    s3 = client(moto_server)
    key = f"c/{keys[-1]}"
    data = bytearray(s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0x01
    s3.put_object(Bucket=s3_bucket, Key=key, Body=bytes(data))
    bad = run("backup", "verify", "--repo", repo, backup_id)
    assert bad.returncode == 1 and keys[-1] in bad.stderr, bad.stderr
    assert list(spool.iterdir()) == []


def test_jobs_backup_refuses_when_the_spool_disk_is_short(make_cluster: ClusterFactory) -> None:
    """The check is free space >= pg_database_size + spool_reserve; a reserve larger
    than any disk makes this machine's disk "short" without filling it."""
    pg = make_cluster()
    many_tables(pg, "shop")
    repo, spool = make_cluster.dir("repo"), make_cluster.dir("spool")
    short = {"CHAINLENS_SPOOL_DIR": str(spool), "CHAINLENS_BACKUP_SPOOL_RESERVE": "1000TB"}

    refused = backup(repo, pg.conninfo("shop"), "--kind", "logical", "--jobs", "2", env=short)
    assert refused.returncode == 1, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert lines[0].startswith(f"chainlens-ops: error: not enough free space in {spool}")
    assert "spool_reserve" in lines[0]
    assert list(spool.iterdir()) == [] and list(repo.iterdir()) == []  # nothing written

    # The same reserve in the config file; without --jobs nothing is spooled: no check.
    config = make_cluster.dir("conf") / "ops.toml"
    config.write_text('[backup]\nspool_reserve = "1000TB"\n')
    os.chmod(config, 0o644)
    env = {"CHAINLENS_SPOOL_DIR": str(spool)}
    by_file = run_cli("--config", str(config), "backup", "--repo", str(repo), "--dsn",
                      pg.conninfo("shop"), "--kind", "logical", "--jobs", "2", env=env,
                      user="postgres")  # fmt: skip
    assert by_file.returncode == 1 and "not enough free space" in by_file.stderr
    streamed = run_cli("--config", str(config), "backup", "--repo", str(repo), "--dsn",
                       pg.conninfo("shop"), "--kind", "logical", "--quiet", env=env,
                       user="postgres")  # fmt: skip
    assert streamed.returncode == 0, streamed.stderr

    # A restore that must spool checks the same way, before creating the database.
    backup_id = streamed.stdout.strip()
    proc = run_cli("restore", "--repo", str(repo), "--backup", backup_id, "--dbname", "copy",
                   "--dsn", pg.conninfo(), "--jobs", "2", env=short, user="postgres")  # fmt: skip
    assert proc.returncode == 1 and "not enough free space" in proc.stderr, proc.stderr
    assert pg.scalar("SELECT count(*) FROM pg_database WHERE datname = 'copy'") == 0


def run_in_pty(argv: list[str], env: dict[str, str], timeout: float = 120) -> tuple[int, str]:
    """Run `argv` with stdin, stdout and stderr on a pseudo-terminal 80 columns wide;
    (exit code, everything it wrote, ANSI control sequences removed)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                            cwd="/", start_new_session=True)  # fmt: skip
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every process holding the terminal has exited
                break
            if not chunk:
                break
            out += chunk
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return code, ANSI.sub("", out.decode("utf-8", "replace"))


def test_progress_on_a_terminal_and_none_when_piped_or_quiet(
    make_cluster: ClusterFactory,
) -> None:
    pg = make_cluster()
    pg.createdb("big")
    # ~40 MB of dump: the bar is drawn with a rate before the backup ends.
    pg.execute("CREATE TABLE t AS SELECT g, md5(g::text) || md5((g * 7)::text) AS v "
               "FROM generate_series(1, 500000) g", dbname="big")  # fmt: skip
    repo = make_cluster.dir("repo")
    env = cli_env({"TERM": "xterm-256color", "COLUMNS": "80", "LINES": "24"})
    base = ["runuser", "-u", "postgres", "--", str(CLI), "backup", "--repo", str(repo),
            "--dsn", pg.conninfo("big"), "--kind", "logical"]  # fmt: skip

    for extra in ([], ["--jobs", "2"]):
        code, shown = run_in_pty([*base, *extra], env)
        assert code == 0, shown
        assert "microservices" in shown, shown
        assert ELAPSED.search(shown) and SIZE.search(shown) and RATE.search(shown), shown
        assert re.search(r"^\d{8}T\d{6}Z-logical-microservices\s*$", shown, re.M), shown

    code, quiet = run_in_pty([*base, "--quiet"], env)
    assert code == 0, quiet
    assert not RATE.search(quiet) and not ELAPSED.search(quiet), quiet
    assert re.fullmatch(r"\s*\d{8}T\d{6}Z-logical-microservices\s*", quiet), quiet

    piped = backup(repo, pg.conninfo("big"), "--kind", "logical", env={"TERM": "xterm"})
    assert piped.returncode == 0, piped.stderr
    assert "\x1b" not in piped.stderr and not RATE.search(piped.stderr), piped.stderr
    assert not ELAPSED.search(piped.stderr), piped.stderr
    assert "logical backup of microservices" in piped.stderr  # the summary line still shows
    assert len(listing(repo)) == 4
