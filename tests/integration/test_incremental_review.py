"""An adversarial walk of `backup --kind incr` on one archiving PostgreSQL 15 cluster
(issue #22's review): every change below lands between two backups of a chain, and a
restore of the newest must equal the source table by table, pass amcheck on every
relation, and keep the visibility map true to the heap (index-only scans count right
after writes on the restored server). Cases: pages made all-visible by VACUUM without a
new page LSN (data checksums off), UNLOGGED and temporary tables, SET LOGGED /
SET UNLOGGED, hash, GIN, GiST, BRIN and SP-GiST indexes, CREATE DATABASE with
STRATEGY FILE_COPY and WAL_LOG, a relation truncated and regrown in the transaction
that created it (same relfilenode), hint-bit-only changes, two backups back to back,
and a parent on another timeline after a restore is promoted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ClusterFactory
from pgharness import PgCluster, fingerprint, free_port, run_cli
from test_backup import backup
from test_incremental_core import Source, listed, manifest, take
from test_wal import PUSH, switch_and_wait

from chainlens_ops.backup.blockcopy import CURRENT_TIMELINE

VIS_ORPHANS = (
    "SELECT count(*) FROM pg_visibility('{table}') WHERE all_visible AND NOT pd_all_visible"
)


@pytest.fixture(scope="module")
def source(pg_template: Path, scratch: Path) -> Iterator[Source]:
    factory = ClusterFactory(pg_template, scratch)
    repo = factory.dir("repo")
    cluster = factory(
        start=False, archive_mode="on", archive_command=f"{PUSH} --repo file://{repo} %p",
        autovacuum="off",
    )  # fmt: skip
    cluster.start()
    switch_and_wait(cluster)
    yield Source(cluster, repo, factory)
    factory.cleanup()


def restore(src: Source, name: str, *args: str) -> PgCluster:
    pgdata = src.factory.dir(name) / "data"
    port = free_port()
    target = () if "--target-lsn" in args else ("--latest",)
    proc = run_cli("restore", "--repo", str(src.repo), *target, "--pgdata", str(pgdata),
                   "--start", "--port", str(port), *args, user="postgres", timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    restored = PgCluster(pgdata, port)
    src.factory.made.append(restored)
    return restored


def amcheck(cluster: PgCluster, dbname: str) -> None:
    """verify_heapam on every table, bt_index_check on every btree index: no corruption."""
    cluster.execute("CREATE EXTENSION IF NOT EXISTS amcheck", dbname)
    bad = cluster.execute(
        "SELECT c.relname, v.msg FROM pg_class c, verify_heapam(c.oid) v "
        "WHERE c.relkind IN ('r', 'm', 't') AND c.relpersistence <> 't'",
        dbname,
    )
    assert bad == [], (dbname, bad)
    cluster.execute(
        "SELECT bt_index_check(c.oid, true) FROM pg_class c JOIN pg_am a ON a.oid = c.relam "
        "WHERE c.relkind = 'i' AND a.amname = 'btree' AND c.relpersistence <> 't'",
        dbname,
    )


def scan_count(cluster: PgCluster, table: str, where: str, scan: str) -> int:
    """count(*) of `table` WHERE `where`, checked to be read by a `scan` node."""
    off = {"Seq Scan": ("indexscan", "indexonlyscan", "bitmapscan"),
           "Index Only Scan": ("seqscan", "bitmapscan")}.get(scan, ("seqscan",))  # fmt: skip
    query = f"SELECT count(*) FROM {table} WHERE {where}"
    with cluster.connect() as conn:
        for setting in off:
            conn.execute(f"SET enable_{setting} = off")  # type: ignore[arg-type]
        plan = "\n".join(str(r[0]) for r in conn.execute(f"EXPLAIN {query}"))  # type: ignore[arg-type]
        assert scan in plan, plan
        row = conn.execute(query).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return int(row[0])


INDEXED = (  # idx's predicates, each answered by one of its indexes
    ("id = 4321", "idx_hash"),
    ("tags @> ARRAY['c7']", "idx_gin"),
    ("r && int4range(100, 200)", "idx_gist"),
    ("id BETWEEN 6000 AND 6500", "idx_brin"),
    ("p <@ box(point(0, 0), point(10, 10))", "idx_spgist"),
)


def test_a_restore_of_every_incremental_equals_its_source(source: Source) -> None:
    pg = source.cluster
    pg.execute(
        "CREATE EXTENSION pg_visibility;"
        "CREATE TABLE vis (id int PRIMARY KEY, v text);"
        "INSERT INTO vis SELECT g, md5(g::text) FROM generate_series(1, 20000) g;"
        "CREATE UNLOGGED TABLE unl AS SELECT g AS id FROM generate_series(1, 3000) g;"
        "CREATE UNLOGGED TABLE tolog AS SELECT g AS id FROM generate_series(1, 3000) g;"
        "CREATE TABLE tounl AS SELECT g AS id FROM generate_series(1, 3000) g;"
        "CREATE TABLE idx (id int, tags text[], p point, r int4range, t text);"
        "INSERT INTO idx SELECT g, ARRAY['a' || g % 50, 'b' || g % 7], point(g % 100, g / 100),"
        " int4range(g, g + 10), md5(g::text) FROM generate_series(1, 5000) g;"
        "CREATE INDEX idx_hash ON idx USING hash (id);"
        "CREATE INDEX idx_gin ON idx USING gin (tags);"
        "CREATE INDEX idx_gist ON idx USING gist (r);"
        "CREATE INDEX idx_brin ON idx USING brin (id);"
        "CREATE INDEX idx_spgist ON idx USING spgist (p);"
        "CREATE TABLE hints AS SELECT g AS id FROM generate_series(1, 1) g;"
        "CREATE TABLE visold (id int PRIMARY KEY, v text);"
        "INSERT INTO visold SELECT g, md5(g::text) FROM generate_series(1, 20000) g;"
        "CREATE SEQUENCE sq; SELECT nextval('sq') FROM generate_series(1, 5)"
    )
    pg.execute("VACUUM visold")  # all-visible in the full
    pg.createdb("tmpl")
    pg.execute("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v "
               "FROM generate_series(1, 4000) g", "tmpl")  # fmt: skip
    pg.execute("CHECKPOINT")
    # A transaction open across the full: a table it created, then truncated in place
    # (same relfilenode) and regrown past its size after the full; a temp table.
    held = pg.connect(autocommit=False)
    held.execute("CREATE TABLE regrow AS SELECT g AS id FROM generate_series(1, 3000) g")
    held.execute("CREATE TEMP TABLE scratch AS SELECT g AS id FROM generate_series(1, 3000) g")
    node = held.execute("SELECT pg_relation_filenode('regrow')").fetchone()
    full_id, _ = take(source)

    # Between the full and the first incremental.
    held.execute("TRUNCATE regrow")
    assert held.execute("SELECT pg_relation_filenode('regrow')").fetchone() == node
    held.execute("INSERT INTO regrow SELECT g FROM generate_series(1, 9000) g")
    held.commit()
    held.close()
    pg.execute("VACUUM vis")  # PD_ALL_VISIBLE on every page, no new page LSN
    pg.execute("ALTER TABLE tolog SET LOGGED; ALTER TABLE tounl SET UNLOGGED")
    pg.execute(
        "INSERT INTO idx SELECT g, ARRAY['c' || g % 30], point(g % 77, g % 13),"
        " int4range(g, g + 3), md5(g::text) FROM generate_series(5001, 9000) g;"
        "DELETE FROM idx WHERE id % 11 = 0"
    )
    pg.execute("VACUUM idx")
    pg.execute("CREATE DATABASE fc TEMPLATE tmpl STRATEGY FILE_COPY")
    pg.execute("CREATE DATABASE wl TEMPLATE tmpl STRATEGY WAL_LOG")
    pg.execute("INSERT INTO hints SELECT g FROM generate_series(2, 20000) g")
    pg.execute("UPDATE visold SET v = 'moved' WHERE id % 50 = 0")
    issued = pg.scalar("SELECT max(nextval('sq')) FROM generate_series(1, 10)")
    first_id, _ = take(source)

    # Between the first and the second: new rows on pages that were all-visible in the
    # parent, hint bits set by a read alone, a change in the FILE_COPY database.
    pg.execute("INSERT INTO vis SELECT g, 'new' FROM generate_series(20001, 21000) g")
    pg.execute("SELECT count(*) FROM hints")
    pg.execute("UPDATE t SET v = 'fc' WHERE id % 100 = 0", "fc")
    second_id, _ = take(source)
    third_id, _ = take(source)  # back to back, nothing changed
    assert manifest(source.repo, third_id)["parent"] == second_id
    assert manifest(source.repo, second_id)["parent"] == first_id
    assert manifest(source.repo, first_id)["parent"] == full_id
    switch_and_wait(pg)
    want = fingerprint(pg)
    assert want[("postgres", "public.regrow")][0] == 9000

    restored = restore(source, "restore")
    got = fingerprint(restored)
    for table in (("postgres", "public.unl"), ("postgres", "public.tounl")):  # init fork
        assert got.pop(table)[0] == 0
        want.pop(table)
    assert got == want
    for db in ("postgres", "tmpl", "fc", "wl"):
        amcheck(restored, db)
    # The visibility map is true to the heap: a page the map says all-visible carries
    # PD_ALL_VISIBLE, so a delete clears the map and index-only scans stay right.
    for table in ("vis", "visold"):
        assert restored.scalar(VIS_ORPHANS.format(table=table)) == 0
        restored.execute(f"DELETE FROM {table} WHERE id % 3 = 0")
        left = scan_count(restored, table, "id > 0", "Seq Scan")
        assert scan_count(restored, table, "id > 0", "Index Only Scan") == left
    # Every index kind answers as the heap does; the sequence never hands out again a
    # value the source gave (nextval logs ahead after each checkpoint).
    for where, index in INDEXED:
        assert scan_count(restored, "idx", where, index) == scan_count(
            restored, "idx", where, "Seq Scan"
        ), where
    assert restored.scalar("SELECT nextval('sq')") > issued
    restored.stop()


def test_a_promoted_restore_starts_a_new_chain_on_its_new_timeline(source: Source) -> None:
    """A restore paused in recovery is refused; promoted onto timeline 2 (archiving to the
    same repository) it never builds on a timeline-1 backup: its first incremental is a
    full; an incremental on top of it restores equal to the promoted server."""
    if not any((source.repo / "backups").glob("*/manifest.json")):
        take(source)  # run alone: a timeline-1 chain to be tempted by
    # A server in recovery (here paused at a target, as a standby is) is refused in one
    # line: its timeline and WAL position are the primary's to give (the archive check
    # speaks first here; blockcopy refuses one that archives, archive_mode always).
    source.cluster.execute(  # pages the paused server's replay dirties
        "CREATE TABLE replayed AS SELECT g AS id, repeat('r', 900) AS v "
        "FROM generate_series(1, 20000) g"
    )
    lsn = str(source.cluster.scalar("SELECT pg_current_wal_lsn()"))
    switch_and_wait(source.cluster)
    paused = restore(source, "paused", "--target-lsn", lsn, "--target-action", "pause",
                     "--archive-mode", "preserve")  # fmt: skip
    assert paused.scalar("SELECT pg_is_in_recovery()") is True
    before = listed(source)
    proc = backup(source.repo, paused.conninfo(), "--kind", "incr")
    assert proc.returncode == 1 and "cannot take an incremental backup" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 2
    assert listed(source) == before
    # Promoted: its end-of-recovery checkpoint is spread over the pages replay dirtied,
    # so pg_control still names timeline 1 when the backup below starts (measured: it
    # did; main's choice read pg_control and took an incremental on timeline 2 whose
    # parent was on timeline 1).
    promoted = paused
    promoted.execute("SELECT pg_promote(true)")
    assert promoted.scalar(f"SELECT {CURRENT_TIMELINE}") == 2
    promoted.execute(
        "CREATE TABLE after_promotion AS SELECT g AS id FROM generate_series(1, 700) g"
    )
    # Taken at once, while pg_control may still name timeline 1 (its first checkpoint
    # after the promotion is spread): the server's timeline is the one it writes on.
    proc = backup(source.repo, promoted.conninfo(), "--kind", "incr")
    assert proc.returncode == 0 and "taking a full one" in proc.stderr, proc.stderr
    full = manifest(source.repo, proc.stdout.strip())
    assert (full["kind"], full["timeline"], full["parent"]) == ("base", 2, None)
    promoted.execute("UPDATE after_promotion SET id = -id WHERE id % 7 = 0")
    proc = backup(source.repo, promoted.conninfo(), "--kind", "incr")
    assert proc.returncode == 0, proc.stderr
    incr = manifest(source.repo, proc.stdout.strip())
    assert (incr["kind"], incr["timeline"], incr["parent"]) == ("incr", 2, full["id"])
    switch_and_wait(promoted)
    want = fingerprint(promoted)
    assert want[("postgres", "public.after_promotion")][0] == 700
    again = restore(source, "again")
    got = fingerprint(again)
    for table in [t for t in want if t[1].endswith((".unl", ".tounl"))]:
        assert got.pop(table)[0] == 0
        want.pop(table)
    assert got == want
    assert again.scalar(f"SELECT {CURRENT_TIMELINE}") == 3
    amcheck(again, "postgres")
    again.stop()
    promoted.stop()
