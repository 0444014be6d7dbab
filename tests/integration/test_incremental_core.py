"""`backup --kind incr` on a real archiving cluster, local repository: a files-layout
full, then incrementals after every kind of change a relation file goes through
(appends, scattered updates, VACUUM truncation, VACUUM FULL, new and dropped tables, a
created database); the newest restores into a new data folder equal to the source,
table by table in every database; `backup verify` of the newest names a damaged object
of the full it builds on; refusals (a data folder that is not here, a bad --from)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from conftest import ClusterFactory
from pgharness import CLI, PgCluster, cli_env, fingerprint, free_port, run_cli, wait_for
from test_backup import backup, cli
from test_wal import PUSH, switch_and_wait

Proc = subprocess.CompletedProcess[str]


@dataclass
class Source:
    cluster: PgCluster
    repo: Path
    factory: ClusterFactory


@pytest.fixture(scope="module")
def source(pg_template: Path, scratch: Path) -> Iterator[Source]:
    factory = ClusterFactory(pg_template, scratch)
    repo = factory.dir("repo")
    cluster = factory(
        start=False, archive_mode="on", archive_command=f"{PUSH} --repo file://{repo} %p"
    )
    cluster.start()
    switch_and_wait(cluster)
    yield Source(cluster, repo, factory)
    factory.cleanup()


def manifest(repo: Path, backup_id: str) -> dict[str, object]:
    data: dict[str, object] = json.loads(
        (repo / "backups" / backup_id / "manifest.json").read_text()
    )
    return data


def take(src: Source, *args: str) -> tuple[str, Proc]:
    proc = backup(src.repo, src.cluster.conninfo(), "--kind", "incr", *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip(), proc


def test_full_then_incrementals_restore_exactly(source: Source) -> None:
    pg = source.cluster
    pg.execute(
        "CREATE TABLE big AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 60000) g;"
        "CREATE TABLE shrink AS SELECT g AS id, repeat('x', 200) AS v "
        "FROM generate_series(1, 20000) g;"
        "CREATE TABLE rewrite AS SELECT g AS id, md5(g::text) AS v "
        "FROM generate_series(1, 20000) g;"
        "CREATE TABLE doomed AS SELECT g AS id FROM generate_series(1, 1000) g;"
        "CREATE INDEX ON big (id)"
    )
    pg.createdb("app")
    pg.execute("CREATE TABLE events AS SELECT g AS id, now() AS at FROM generate_series(1, 5000) g",
               dbname="app")  # fmt: skip
    full_id, proc = take(source)
    assert "taking a full one" in proc.stderr, proc.stderr
    full = manifest(source.repo, full_id)
    assert (full["kind"], full["layout"], full["parent"], full["chain_depth"]) == (
        "base", "files", None, 0,
    )  # fmt: skip

    # Every kind of change a relation file goes through.
    for statement in (
        "INSERT INTO big SELECT g, md5(g::text) FROM generate_series(60001, 61000) g",
        "UPDATE big SET v = 'changed' WHERE id % 5000 = 0",
        "DELETE FROM shrink WHERE id > 5000",
        "VACUUM shrink",
        "VACUUM FULL rewrite",
        "DROP TABLE doomed",
        "CREATE TABLE fresh AS SELECT g AS id FROM generate_series(1, 3000) g",
    ):
        pg.execute(statement)
    pg.execute("UPDATE events SET at = at + interval '1 day' WHERE id % 1000 = 1", dbname="app")
    pg.createdb("newdb")
    pg.execute("CREATE TABLE n AS SELECT g AS id FROM generate_series(1, 500) g", dbname="newdb")
    incr_id, _ = take(source)
    incr = manifest(source.repo, incr_id)
    assert (incr["kind"], incr["layout"], incr["parent"], incr["chain_depth"]) == (
        "incr", "files", full_id, 1,
    )  # fmt: skip
    assert int(incr["size_bytes"]) < int(full["size_bytes"]) / 2  # type: ignore[call-overload]

    pg.execute("DROP DATABASE app")
    # Writers while the copy runs (held after its first bundle, the files listed): pages
    # changed after the start, a file that vanishes, one that shrinks, one that is new.
    pause = source.factory.dir("pause")
    env = cli_env({"CHAINLENS_PAUSE_AT": "incr-mid-copy", "CHAINLENS_PAUSE_DIR": str(pause)})
    argv = ["runuser", "-u", "postgres", "--", str(CLI), "backup", "--repo", str(source.repo),
            "--dsn", pg.conninfo(), "--kind", "incr", "--from", incr_id]  # fmt: skip
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as running:  # fmt: skip
        wait_for((pause / "incr-mid-copy.reached").exists, timeout=120)
        for statement in (
            "UPDATE big SET v = 'again' WHERE id % 7000 = 0",
            "DROP TABLE fresh",
            "DELETE FROM shrink WHERE id > 1000",
            "VACUUM shrink",
            "CREATE TABLE during AS SELECT g AS id FROM generate_series(1, 2000) g",
        ):
            pg.execute(statement)
        (pause / "incr-mid-copy.go").touch()
        out, err = running.communicate(timeout=180)
    assert running.returncode == 0, err
    newest_id = out.strip()
    assert manifest(source.repo, newest_id)["chain_depth"] == 2
    switch_and_wait(pg)
    want = fingerprint(pg)
    assert ("newdb", "public.n") in want and not any(db == "app" for db, _ in want)

    pgdata = source.factory.dir("restore") / "data"
    port = free_port()
    proc = run_cli("restore", "--repo", str(source.repo), "--latest", "--pgdata", str(pgdata),
                   "--start", "--port", str(port), user="postgres", timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    restored = PgCluster(pgdata, port)
    source.factory.made.append(restored)
    assert fingerprint(restored) == want
    restored.stop()

    # --db-only: only newdb (and the maintenance database) readable; the others are
    # placeholders whose bundles were never read.
    pgdata = source.factory.dir("dbonly") / "data"
    port = free_port()
    proc = run_cli("restore", "--repo", str(source.repo), "--latest", "--pgdata", str(pgdata),
                   "--dsn", pg.conninfo(), "--db-only", "newdb", "--start", "--port", str(port),
                   user="postgres", timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    only = PgCluster(pgdata, port)
    source.factory.made.append(only)
    assert only.scalar("SELECT count(*) FROM n", "newdb") == 500
    assert only.scalar("SELECT count(*) FROM big") == want[("postgres", "public.big")][0]
    with pytest.raises(psycopg.OperationalError, match="PG_VERSION"):
        only.scalar("SELECT 1", "template1")
    only.stop()

    # verify walks the chain: the newest is fine, then a flipped byte in the full's
    # bundle fails the newest's verify naming that object.
    ok = cli(source.repo, "verify", newest_id)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bundle = sorted((source.repo / "backups" / full_id / "data").glob("cluster-*.blk.zst"))[0]
    raw = bytearray(bundle.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    original = bundle.read_bytes()
    bundle.write_bytes(bytes(raw))
    try:
        bad = cli(source.repo, "verify", newest_id)
        assert bad.returncode == 1, bad.stdout + bad.stderr
        key = f"backups/{full_id}/data/{bundle.name}"
        assert key in bad.stdout + bad.stderr
        # A restore of the newest fails naming it, and removes what it wrote.
        fresh = source.factory.dir("broken") / "data"
        proc = run_cli("restore", "--repo", str(source.repo), "--latest", "--pgdata", str(fresh),
                       user="postgres", timeout=300)  # fmt: skip
        assert proc.returncode == 1 and key in proc.stderr, proc.stderr
        assert not fresh.exists() or not any(fresh.iterdir())
    finally:
        bundle.write_bytes(original)


def test_refusals(source: Source) -> None:
    folders = source.repo / "backups"  # absent when this test runs first on its worker

    def present() -> list[str]:
        return sorted(p.name for p in folders.iterdir()) if folders.exists() else []

    before = present()
    proc = backup(source.repo, source.cluster.conninfo(), "--kind", "incr", "--from", "nope")
    assert proc.returncode == 2 and "nope" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2, proc.stderr
    # The server's data folder seen from here holds another cluster (a tmpfs mounted
    # over it in a private mount namespace, with a foreign pg_control): one line,
    # nothing written.
    proc = backup_seeing_another_cluster(source.cluster, source.repo, "--kind", "incr")
    assert proc.returncode == 1, proc.stderr
    assert "belongs to another cluster" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 2
    assert present() == before


def test_a_killed_incremental_leaves_nothing_valid_and_the_next_one_works(source: Source) -> None:
    source.cluster.execute("CREATE TABLE after_kill AS SELECT g FROM generate_series(1, 100) g")
    if not listed(source):  # run alone (or on another worker): a full to build on
        take(source)
    before = {b["id"] for b in listed(source)}
    proc = backup(source.repo, source.cluster.conninfo(), "--kind", "incr",
                  env={"CHAINLENS_CRASH_AT": "incr-mid-copy"})  # fmt: skip
    assert proc.returncode in (-9, 137), proc.stderr
    leftover = {p.name for p in (source.repo / "backups").iterdir()} - before
    assert len(leftover) == 1 and not any(
        (source.repo / "backups" / name / "manifest.json").exists() for name in leftover
    )
    assert {b["id"] for b in listed(source)} == before  # nothing new listed as valid
    made, proc = take(source)  # the server's backup ended with the killed session
    assert manifest(source.repo, made)["kind"] == "incr" and made in {
        b["id"] for b in listed(source)
    }
    # The leftover was cleaned first (its id is free again within the same second).
    (gone,) = leftover
    assert gone == made or not (source.repo / "backups" / gone).exists()


def listed(src: Source) -> list[dict[str, object]]:
    proc = cli(src.repo, "list", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    backups = data["backups"] if isinstance(data, dict) else data
    return [b for b in backups if b.get("status", "complete") == "complete"]


def backup_seeing_another_cluster(
    cluster: PgCluster, repo: Path | str, *args: str, dbname: str = "postgres"
) -> subprocess.CompletedProcess[str]:
    """`backup` where the server's data folder, seen from here, holds another cluster: a
    tmpfs mounted over it in a private mount namespace, with a foreign pg_control."""
    data = cluster.data
    script = (
        f"mount -t tmpfs -o mode=0755 none {data} && mkdir {data}/global && "
        f"head -c 8192 /dev/urandom > {data}/global/pg_control && exec runuser -u postgres -- "
        f"{CLI} backup --repo {repo} {' '.join(args)} --dsn '{cluster.conninfo(dbname)}'"
    )
    return subprocess.run(["unshare", "-m", "sh", "-c", script], env=cli_env(None),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
