"""Every secret connection keyword (`password`, `sslpassword`, and a passfile's
contents) through every path that runs or prints a connection: the command lines of
all processes while pg_dump runs, error lines (ours and pg_dump's), `--json`, the
daemon's log and `job_runs.error`. The secrets reach pg_dump only through its
environment (PGPASSWORD) or an in-memory service file (sslpassword), and appear nowhere.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
import uuid
from pathlib import Path

from conftest import ClusterFactory
from pgharness import CLI, SCRAM_USER, cli_env, pg_uid_gid, run_cli, wait_for
from test_backup import fill
from test_daemon import RUNS, DaemonProc
from test_killed_commands import processes, table_locked, waiting_on_lock


def all_command_lines() -> list[bytes]:
    lines = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            lines.append(Path(f"/proc/{pid}/cmdline").read_bytes())
        except OSError:
            continue
    return lines


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    pairs = (item.decode().partition("=") for item in raw if b"=" in item)
    return {k: v for k, _, v in pairs}


def test_no_secret_keyword_reaches_argv_messages_json_logs_or_job_history(
    make_cluster: ClusterFactory,
) -> None:
    pg = make_cluster()
    password = "pw-" + secrets.token_hex(8)
    sslpassword = "sslpw-" + secrets.token_hex(8)
    pg.execute(f"ALTER ROLE {SCRAM_USER} PASSWORD '{password}'")  # scram: a password is needed
    pg.execute("CREATE ROLE weak LOGIN")  # may not read the table: pg_dump fails
    fill(pg, "shop")
    folder = make_cluster.dir("secrets")
    passfile = folder / "pgpass"
    passfile.write_text(f"127.0.0.1:{pg.port}:*:{SCRAM_USER}:{password}\n")
    os.chown(passfile, *pg_uid_gid())
    passfile.chmod(0o600)
    base = f"host=127.0.0.1 port={pg.port} sslpassword={sslpassword}"
    dsns = {  # the password in the string, or only in the passfile
        "password": f"{base} user={SCRAM_USER} password={password}",
        "passfile": f"{base} user={SCRAM_USER} passfile={passfile}",
    }
    seen: list[str] = []

    def clean(text: str, where: str) -> None:
        seen.append(where)
        assert password not in text and sslpassword not in text, f"{where}: {text}"

    def config(dsn: str, name: str) -> Path:
        path = folder / f"{name}.toml"
        path.write_text(
            f'[databases.microservices]\ndsn = "{dsn} dbname=shop"\n'
            f'[databases.supabase]\ndsn = "{dsn} dbname=nope"\n'
        )
        path.chmod(0o644)
        return path

    port = f"port={pg.port} "
    for kind, dsn in dsns.items():
        conf = config(dsn, kind)
        repo = make_cluster.dir(f"repo-{kind}")

        def cli(*args: str, conf: Path = conf) -> tuple[int, str]:
            proc = run_cli("--config", str(conf), *args, user="postgres")
            return proc.returncode, proc.stdout + proc.stderr

        # 1. Running: every process's command line, while pg_dump -j waits for a lock.
        with table_locked(pg, "shop", "accounts"):
            job = subprocess.Popen(  # the CLI, in the background
                ["runuser", "-u", "postgres", "--", str(CLI), "--config", str(conf), "backup",
                 "--repo", str(repo), "--kind", "logical", "--jobs", "2", "--quiet"],
                env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            wait_for(lambda: waiting_on_lock(pg, "shop"), timeout=30)
            dumps = processes("pg_dump", port)
            assert dumps, "pg_dump is not running: nothing was checked"
            for line in all_command_lines():
                clean(line.decode("utf-8", "replace"), f"{kind}: a command line")
            env = environ(dumps[0])
            if kind == "password":
                assert env["PGPASSWORD"] == password  # the environment carries it
            service_file = env["PGSERVICEFILE"]  # and an in-memory service file the rest
            assert service_file.startswith("/proc/") and "(deleted)" in os.readlink(service_file)
            time.sleep(0.2)
        out, err = job.communicate(timeout=120)
        assert job.returncode == 0, err
        clean(out + err, f"{kind}: backup")

        # 2. Error lines: ours (no such database) and pg_dump's (permission denied).
        code, text = cli("backup", "--db", "supabase", "--repo", str(repo))
        assert code != 0 and "nope" in text, text
        clean(text, f"{kind}: connection error")
        weak = config(dsn.replace(f"user={SCRAM_USER}", "user=weak"), f"{kind}-weak")
        code, text = cli("backup", "--repo", str(repo), "--kind", "logical", conf=weak)
        assert code != 0 and "pg_dump exited with code 1" in text, text
        clean(text, f"{kind}: pg_dump's error")

        # 3. --json, where a database cannot be reached.
        code, text = cli("status", "--json")
        assert code == 1 and json.loads(text[: text.rindex("}") + 1]), text
        clean(text, f"{kind}: status --json")

    # 4. The daemon: its log and job_runs.error, for a run that fails to connect.
    history_db = f"hist_{uuid.uuid4().hex[:6]}"
    pg.createdb(history_db)
    dconf = folder / "daemon.toml"
    dconf.write_text(
        f'[databases.microservices]\ndsn = "{dsns["password"]} dbname={history_db}"\n'
        f'[databases.supabase]\ndsn = "{dsns["password"]} dbname=nope"\n'
        f'[[jobs]]\nname = "fails"\ncommand = "backup --db supabase --repo {folder}/drepo"\n'
        'every = "1s"\n'
    )
    daemon = DaemonProc(dconf, name="secrets")
    try:
        made = "SELECT to_regclass('chainlens_ops.job_runs') IS NOT NULL"
        wait_for(lambda: pg.scalar(made, history_db), timeout=30)
        wait_for(lambda: [r for r in pg.execute(RUNS, history_db) if r[2] == "failed"])
        daemon.stop()
    finally:
        daemon.kill()
    errors = [r[3] for r in pg.execute(RUNS, history_db)]
    assert errors[0] and "nope" in errors[0], errors
    clean("\n".join(e or "" for e in errors), "job_runs.error")
    clean(daemon.text(), "the daemon's log")
    assert "nope" in daemon.text()
    assert len(seen) >= 12
