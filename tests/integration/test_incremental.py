"""Incremental backups (issue #22) as the nightly job takes them: `backup` on the database
host starts a chain with a full backup, then each night stores what changed. After each
kind of change the platform makes (a day of appends to the current month's partition,
updates scattered through old months, a table vacuumed shorter, VACUUM FULL, a database
dropped and another created, a new partition), with writers running during the backup,
a restore of the newest backup equals the source table by table in every database. The
chain's full damaged fails `verify` of the newest naming the object; `prune --keep-last 1`
keeps the chain; a killed incremental leaves nothing listed; `restore table` reads a chain.
The same on an encrypted S3 repository."""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import ClusterFactory, MotoServer
from pgharness import CLI, Fingerprint, PgCluster, fingerprint, free_port, run_cli
from test_backup import flip_local
from test_incremental_core import backup_seeing_another_cluster
from test_wal import PUSH, switch_and_wait
from test_wal_s3 import S3Setup, client

Proc = subprocess.CompletedProcess[str]

SOURCE_SQL = """
CREATE TABLE events (id bigint, at date NOT NULL, payload text) PARTITION BY RANGE (at);
CREATE TABLE events_2026_09 PARTITION OF events FOR VALUES FROM ('2026-09-01') TO ('2026-10-01');
CREATE TABLE events_2026_10 PARTITION OF events FOR VALUES FROM ('2026-10-01') TO ('2026-11-01');
CREATE TABLE events_2026_11 PARTITION OF events FOR VALUES FROM ('2026-11-01') TO ('2026-12-01');
CREATE TABLE events_2026_12 PARTITION OF events FOR VALUES FROM ('2026-12-01') TO ('2027-01-01');
INSERT INTO events SELECT g, DATE '2026-09-01' + (g % 91), md5(g::text)
  FROM generate_series(1, {half}) g;
INSERT INTO events SELECT g, DATE '2026-12-01' + (g % 5), md5(g::text)
  FROM generate_series({half} + 1, 2 * {half}) g;
CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL, note text);
INSERT INTO accounts SELECT g, 100, 'opened' FROM generate_series(1, 5000) g;
CREATE TABLE shrink AS SELECT g AS id, repeat('s', 200) AS pad FROM generate_series(1, {tables}) g;
CREATE TABLE rewrite AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, {tables}) g;
CREATE INDEX ON rewrite (id);
"""
# Each night's change, in order: its name (the restore point after the backup) and its
# statements, each with the database it runs in.
CHANGES: list[tuple[str, list[tuple[str, str]]]] = [
    ("appends", [("app", "INSERT INTO events SELECT g, DATE '2026-12-06', md5(g::text) "
                         "FROM generate_series(60001, 66000) g")]),
    ("scattered-updates", [("app", "UPDATE events SET payload = 'fixed ' || id "
                                   "WHERE id % 97 = 0 AND at < DATE '2026-12-01'")]),
    ("vacuumed-shorter", [("app", "DELETE FROM shrink WHERE id > 4000"),
                          ("app", "VACUUM shrink")]),
    ("vacuum-full", [("app", "DELETE FROM rewrite WHERE id % 3 = 0"),
                     ("app", "VACUUM FULL rewrite")]),
    ("drop-and-create-database", [
        ("postgres", "DROP DATABASE gone"), ("postgres", "CREATE DATABASE fresh"),
        ("fresh", "CREATE TABLE born AS SELECT g, md5(g::text) FROM generate_series(1, 3000) g"),
    ]),
    ("new-partition", [
        ("app", "CREATE TABLE events_2027_01 PARTITION OF events FOR VALUES FROM "
                "('2027-01-01') TO ('2027-02-01')"),
        ("app", "INSERT INTO events SELECT g, DATE '2027-01-02', 'next month' "
                "FROM generate_series(70001, 71000) g"),
    ]),
]  # fmt: skip


_NEW_IDS = itertools.count(100_000)  # accounts opened by the writers, across nights


class Writers:
    """The application writing while a backup runs: inserts and updates on `accounts`
    from two sessions, until stopped."""

    def __init__(self, cluster: PgCluster) -> None:
        self.cluster = cluster
        self.stop = threading.Event()
        self.writes = 0
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(n,)) for n in range(2)]

    def _run(self, n: int) -> None:
        try:
            with self.cluster.connect("app") as conn:
                i = 0
                while not self.stop.is_set():
                    i += 1
                    key = next(_NEW_IDS)
                    conn.execute("INSERT INTO accounts VALUES (%s, 1, 'new')", (key,))
                    conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = %s",
                                 ((i * 37 + n) % 5000 + 1,))  # fmt: skip
                    self.writes += 2
        except psycopg.Error as exc:
            self.errors.append(str(exc))

    def __enter__(self) -> Writers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)
        assert not self.errors, self.errors
        assert self.writes > 0


@dataclass
class Chain:
    source: PgCluster
    repo: str  # URL or folder, as --repo takes it
    factory: ClusterFactory
    env: dict[str, str] = field(default_factory=dict)
    config: Path | None = None
    ids: list[str] = field(default_factory=list)  # full first
    points: dict[str, Fingerprint] = field(default_factory=dict)  # restore point -> source
    targets: dict[str, dict[str, str]] = field(default_factory=dict)  # ... -> restore flags
    notices: list[str] = field(default_factory=list)

    def cli(self, *args: str, **kw: Any) -> Proc:
        pre = ["--config", str(self.config)] if self.config else []
        env = {**self.env, **kw.pop("env", {})}
        return run_cli(*pre, *args, env=env, user="postgres", **kw)

    def backup(self, *args: str, **kw: Any) -> Proc:
        return self.cli("backup", "--repo", self.repo, "--dsn", self.source.conninfo("app"),
                        *args, **kw)  # fmt: skip

    def listing(self) -> list[dict[str, Any]]:
        proc = self.cli("backup", "list", "--repo", self.repo, "--json")
        assert proc.returncode == 0, proc.stderr
        return list(json.loads(proc.stdout))

    def night(self, name: str, statements: list[tuple[str, str]], *, writers: bool = True) -> str:
        """One night: the day's change, then `backup` (with writers running), then a
        restore point and the source's fingerprint at it."""
        for db, statement in statements:
            self.source.execute(statement, dbname=db)
        with Writers(self.source) if writers else contextlib.nullcontext():
            made = self.backup()
        assert made.returncode == 0, made.stderr
        self.notices.append(made.stderr)
        self.ids.append(made.stdout.strip())
        self.source.execute(f"SELECT pg_create_restore_point('{name}')")
        self.targets[name] = {
            "--target-name": name,
            "--target-time": str(self.source.scalar("SELECT now()::text")),
            "--target-lsn": str(self.source.scalar("SELECT pg_current_wal_insert_lsn()")),
        }
        self.points[name] = fingerprint(self.source)
        return made.stdout.strip()

    def restore(self, *target: str) -> PgCluster:
        pgdata = self.factory.dir("restore") / "data"
        port = free_port()
        proc = self.cli("restore", "--repo", self.repo, *target, "--pgdata", str(pgdata),
                        "--start", "--port", str(port), timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        cluster = PgCluster(pgdata, port)
        self.factory.made.append(cluster)
        return cluster


def build_source(factory: ClusterFactory, archive_command: str, *, scale: int = 10) -> PgCluster:
    """The source cluster; `scale` 10 is the local chain's size (about 50 MB), less keeps
    the WAL an S3 archive must take (one process per segment) short."""
    source = factory(start=False, archive_mode="on", archive_command=archive_command,
                     max_wal_size="256MB")  # fmt: skip
    source.start()
    for db in ("app", "gone"):
        source.createdb(db)
    source.execute(SOURCE_SQL.format(half=3000 * scale, tables=2000 * scale), dbname="app")
    source.execute("CREATE TABLE doomed AS SELECT g FROM generate_series(1, 1000) g", "gone")
    switch_and_wait(source)
    return source


@pytest.fixture(scope="module")
def chain(pg_template: Path, scratch: Path) -> Iterator[Chain]:
    """A local repository holding a full backup and one incremental per kind of change,
    each followed by a restore point named after the change."""
    factory = ClusterFactory(pg_template, scratch)
    repo = factory.dir("repo")
    source = build_source(factory, f"{PUSH} --repo file://{repo} %p")
    scene = Chain(source, str(repo), factory)
    scene.night("full", [])
    for change in CHANGES:
        scene.night(*change)
    switch_and_wait(source)
    yield scene
    factory.cleanup()


def each_night_restores_exactly_from_its_incremental(chain: Chain) -> None:
    full, *incrs = chain.ids
    assert full.endswith("-base-microservices")
    assert "full backup: the cluster archives its WAL into this repository" in chain.notices[0]
    for n, (incr, notice) in enumerate(zip(incrs, chain.notices[1:], strict=True), 1):
        assert "-incr-microservices" in incr, incr
        assert f"incremental backup on {chain.ids[n - 1]} (chain depth {n})" in notice, notice

    listed = {b["id"]: b for b in chain.listing()}
    assert listed[full]["kind"] == "base" and listed[full]["layout"] == "files"
    assert listed[full]["parent"] is None and listed[full]["chain_depth"] == 0
    for n, incr in enumerate(incrs, 1):
        assert (listed[incr]["kind"], listed[incr]["parent"], listed[incr]["chain_depth"]) == (
            "incr", chain.ids[n - 1], n)  # fmt: skip
    # What changed is what is stored: a night of scattered updates is a fraction of the full.
    assert listed[incrs[1]]["size_bytes"] < listed[full]["size_bytes"] / 3
    text = chain.cli("backup", "list", "--repo", chain.repo, env={"COLUMNS": "80"}).stdout
    assert all(len(line) <= 80 for line in text.splitlines()), text
    assert "full" in text and f"+{len(incrs)}" in text

    # Nights restored to right after their backup, by restore point, time and LSN. The
    # last is the chain of six: every change above lives in it (VACUUM FULL's table, the
    # dropped and the created database, the truncated file), most of it in blocks of
    # older backups of the chain, so it proves the nights not restored alone here (each
    # restore costs a server start; restore table below reads the VACUUM FULL night).
    # Not by time or LSN just before the DROP DATABASE: PostgreSQL marks the database
    # invalid in place before the drop commits, so a recovery stopped between the two
    # ends with an invalid database, whatever the backup.
    restores = {"appends": "--target-name", "scattered-updates": "--target-time",
                "vacuumed-shorter": "--target-lsn", CHANGES[-1][0]: "--target-name"}  # fmt: skip
    for name, flag in restores.items():
        restored = chain.restore(flag, chain.targets[name][flag])
        assert fingerprint(restored) == chain.points[name], (name, flag)
        restored.stop()

    # A drill of the newest reads every table of the chain's restore: the source's counts.
    drill = chain.cli("restore", "drill", "--repo", chain.repo, "--scratch",
                      str(chain.factory.dir("drill")), "--json", timeout=300)  # fmt: skip
    assert drill.returncode == 0, drill.stdout + drill.stderr
    drilled = json.loads(drill.stdout)
    assert drilled["backup_id"] == chain.ids[-1]
    expected = {f"{db}.{table}": n for (db, table), (n, _md5) in chain.points[name].items()}
    assert {k: v for k, v in drilled["row_counts"].items() if k in expected} == expected


def restore_table_reads_an_incremental_chain(chain: Chain) -> None:
    """Issue #23 on a chain: one table back at a restore point, beside the live one."""
    scratch = chain.factory.dir("scratch")
    name = "vacuum-full"  # after the VACUUM FULL: its table's files live in the newest backups
    env = {"CHAINLENS_SUPABASE_DSN": chain.source.conninfo("app")}
    proc = chain.cli("restore", "table", "public.rewrite", "public.accounts", "--repo",
                     chain.repo, "--db", "supabase", "--scratch", str(scratch),
                     "--target-name", name, "--into-schema", "back", "--json", env=env,
                     timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    expected = chain.points[name]
    for table in ("rewrite", "accounts"):
        got = chain.source.execute(
            f"SELECT count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) "
            f"FROM back.{table} t",
            dbname="app",
        )[0]
        assert (int(got[0]), str(got[1])) == expected[("app", f"public.{table}")], table
    assert list(scratch.iterdir()) == []
    # The free space asked for is what the restore writes (the kept databases' files,
    # from the newest backup's file map), not every backup of the chain added up.
    result = json.loads(proc.stdout)
    needed = result["plan"]["bytes_to_extract"]
    written = result["extracted_bytes"] - result["skipped_bytes"]  # placeholders: sparse
    assert 0 < written <= needed, result
    chain_bytes = sum(b["raw_bytes"] for b in chain.listing() if b["id"] in chain.ids)
    assert needed < chain_bytes, (needed, chain_bytes)


def damage_in_the_full_fails_verify_of_the_newest_and_prune_keeps_the_chain(
    chain: Chain,
) -> None:
    full, newest = chain.ids[0], chain.ids[-1]
    ok = chain.cli("backup", "verify", "--repo", chain.repo, newest)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bundle = sorted((Path(chain.repo) / "backups" / full / "data").iterdir())[0]
    offset = bundle.stat().st_size // 2
    flip_local(bundle, offset)
    bad = chain.cli("backup", "verify", "--repo", chain.repo, newest)
    assert bad.returncode == 1, bad.stdout
    assert f"backups/{full}/data/{bundle.name}" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr
    flip_local(bundle, offset)
    # The full's manifest gone (by hand): the chain is listed broken, exit 1, each named.
    manifest = Path(chain.repo) / "backups" / full / "manifest.json"
    aside = manifest.with_name("manifest.aside")
    manifest.rename(aside)
    try:
        broken = chain.cli("backup", "list", "--repo", chain.repo, env={"COLUMNS": "80"})
    finally:
        aside.rename(manifest)
    assert broken.returncode == 1, broken.stderr
    assert f"{newest} builds on " in broken.stderr and "BROKEN" in broken.stdout
    assert f"builds on {full}, which is not in the repository" in broken.stderr, broken.stderr

    pruned = chain.cli("backup", "prune", "--repo", chain.repo, "--keep-last", "1", "--json")
    assert pruned.returncode == 0, pruned.stderr
    result = json.loads(pruned.stdout)
    assert set(chain.ids) <= set(result["kept"]) and result["removed"] == []
    assert "needed by a kept incremental" in result["reasons"][full]
    assert chain.cli("backup", "verify", "--repo", chain.repo, newest).returncode == 0
    # The full kept only as the newest's base lost its own WAL by design: its verify
    # passes and says it restores through the newest.
    base = chain.cli("backup", "verify", "--repo", chain.repo, full, "--json")
    assert base.returncode == 0, base.stdout + base.stderr
    details = [c["detail"] for c in json.loads(base.stdout)["checks"]]
    assert any(f"kept as the base of {newest}, which restores" in d for d in details), details
    listed = {b["id"]: b for b in chain.listing()}
    assert result["wal_before"] == listed[newest]["start_wal"]
    # The WAL before the newest's start is gone, and a restore from it is still planned
    # whole (its blocks in the kept full and incrementals, its WAL from its own start).
    plan = chain.cli("restore", "--repo", chain.repo, "--latest", "--dry-run", "--pgdata",
                     str(chain.factory.dir("plan") / "data"))  # fmt: skip
    assert plan.returncode == 0 and newest in plan.stdout + plan.stderr, plan.stderr

    # A killed incremental leaves nothing `list` shows; the next one cleans it and works.
    count = len(chain.listing())
    for point in ("incr-mid-copy", "backup-before-manifest"):
        killed = chain.backup("--kind", "incr", env={"CHAINLENS_CRASH_AT": point})
        assert killed.returncode in (-9, 137), killed.stderr  # SIGKILL (runuser: 137)
        assert len(chain.listing()) == count
    assert "incomplete backup(s) without a manifest" in chain.cli(
        "backup", "list", "--repo", chain.repo).stdout  # fmt: skip
    again = chain.backup("--kind", "incr")
    assert again.returncode == 0, again.stderr
    # (the second killed one removed the first's leftovers, this one the second's)
    assert "leftovers of killed commands: 1 backup(s) without a manifest" in again.stderr
    newer = chain.listing()[0]
    assert (newer["id"], newer["parent"]) == (again.stdout.strip(), newest)


def auto_starts_a_new_chain_after_full_every_and_runs_pg_basebackup_elsewhere(
    chain: Chain,
) -> None:
    full = chain.ids[0]
    config = chain.factory.dir("conf") / "ops.toml"
    config.write_text('[backup]\nfull_every = "1s"\n')
    config.chmod(0o644)
    made = run_cli("--config", str(config), "backup", "--repo", chain.repo, "--dsn",
                   chain.source.conninfo("app"), user="postgres")  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert f"full backup: the newest full {full} is " in made.stderr, made.stderr
    assert "old (backup.full_every is 1s)" in made.stderr, made.stderr
    newest = chain.listing()[0]
    assert (newest["kind"], newest["layout"], newest["parent"], newest["chain_depth"]) == (
        "base", "files", None, 0)  # fmt: skip

    # Where the data folder seen from here is not the server's (a tmpfs over it with a
    # foreign pg_control, in a private mount namespace): pg_basebackup, said in one line.
    proc = backup_seeing_another_cluster(chain.source, chain.repo, dbname="app")
    assert proc.returncode == 0, proc.stderr
    assert (
        "base backup (pg_basebackup): the cluster archives its WAL into this repository, "
        "and its data folder cannot be read here ("
    ) in proc.stderr, proc.stderr
    assert "belongs to another cluster" in proc.stderr
    newest = chain.listing()[0]
    assert (newest["id"], newest["kind"], newest["layout"]) == (proc.stdout.strip(), "base",
                                                                "tar")  # fmt: skip


def test_a_week_of_incrementals_on_the_database_host(chain: Chain) -> None:
    """One chain, its cases in sequence (one source and one chain to build: the order
    matters, as the prune at the end removes the WAL the earlier restore points need)."""
    each_night_restores_exactly_from_its_incremental(chain)
    restore_table_reads_an_incremental_chain(chain)
    damage_in_the_full_fails_verify_of_the_newest_and_prune_keeps_the_chain(chain)
    auto_starts_a_new_chain_after_full_every_and_runs_pg_basebackup_elsewhere(chain)


def test_an_encrypted_s3_chain(
    make_cluster: ClusterFactory, moto_server: MotoServer, s3_bucket: str
) -> None:
    setup = S3Setup(make_cluster.dir("s3conf"), moto_server)
    key = make_cluster.dir("keys") / "k"
    repo = f"s3://{s3_bucket}/enc"
    made = setup.cli("repo", "init", "--repo", repo, "--encrypt", "--key-file", str(key))
    assert made.returncode == 0, made.stderr
    push = (f"CHAINLENS_REPO_KEY_FILE={key} AWS_SHARED_CREDENTIALS_FILE={setup.credentials} "
            f"{CLI} --config {setup.config} wal push --repo {repo} %p")  # fmt: skip
    source = build_source(make_cluster, push, scale=2)
    scene = Chain(source, repo, make_cluster, env={**setup.env, "CHAINLENS_REPO_KEY_FILE":
                  str(key)}, config=setup.config)  # fmt: skip
    # Writers and each change alone are the local chain's part: here a chain of two
    # incrementals, the second with VACUUM FULL and a dropped and a created database.
    scene.night("full", [], writers=False)
    scene.night("appends", CHANGES[0][1], writers=False)
    scene.night("rewrites", CHANGES[3][1] + CHANGES[4][1], writers=False)
    switch_and_wait(source)
    restored = scene.restore("--latest")
    assert fingerprint(restored) == scene.points["rewrites"]
    restored.stop()

    # Every object is sealed; a flipped byte in the full's bundle fails verify of the newest.
    s3 = client(moto_server)
    full, newest = scene.ids[0], scene.ids[-1]
    listed = s3.list_objects_v2(Bucket=s3_bucket, Prefix=f"enc/backups/{full}/data/")
    keys = [o["Key"] for o in listed["Contents"]]
    body = bytearray(s3.get_object(Bucket=s3_bucket, Key=keys[0])["Body"].read())
    assert body[:8] == b"CLOPSENC"
    body[len(body) // 2] ^= 0x01
    s3.put_object(Bucket=s3_bucket, Key=keys[0], Body=bytes(body))
    bad = scene.cli("backup", "verify", "--repo", repo, newest)
    assert bad.returncode == 1 and keys[0].removeprefix("enc/") in bad.stderr, bad.stderr

    pruned = scene.cli("backup", "prune", "--repo", repo, "--keep-last", "1", "--json")
    assert pruned.returncode == 0, pruned.stderr
    assert set(scene.ids) <= set(json.loads(pruned.stdout)["kept"])
