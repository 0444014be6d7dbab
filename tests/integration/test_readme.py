"""The README means what it says.

- Blocks marked `<!-- readme-test: sandbox -->` run: every `$ ` line, in document order,
  as the postgres OS user against a sandbox this module makes with `chainlens-ops demo`
  (a real cluster archiving into a real repository, the one the README's outputs were
  captured from), CHAINLENS_CONFIG pointing at it. Each line must exit as it says
  (`# exit N` at its end, else 0). What belongs to one run is mapped to this sandbox's:
  a `--target-time` to a time inside its window, port 5433 to a free port,
  /var/tmp/restored to a scratch folder.
- Every `chainlens-ops ...` line of README.md and docs/reference.md (code blocks, inline
  code) names a real command and real options of the command tree; every `[[jobs]]`
  command passes the daemon's own check; every TOML example loads.
- The configuration tables list exactly settings.keys' keys and the variables the code
  reads; the exit-code table is errors.py's.
- The cron lines are silent when their command succeeds and print the exit code when it
  fails; the systemd unit passes `systemd-analyze verify`; completion works through the
  console script's door; every command has a `--help` summary that is never cut.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import tokenize
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pgharness import CLI, VENV, PgCluster, cli_env, free_port, make_shared_dir, run_cli

from chainlens_ops.cli.daemon import command_checker
from chainlens_ops.cli.helptext import SUMMARIES, command_paths
from chainlens_ops.cli.main import build_command
from chainlens_ops.core import errors
from chainlens_ops.daemon.jobs import parse_daemon_config
from chainlens_ops.settings.config import DATABASES, build_settings, known_keys

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = (README, ROOT / "docs" / "reference.md")
MARKER = "<!-- readme-test: sandbox -->"
RUNUSER = shutil.which("runuser") or "/usr/sbin/runuser"


@dataclass(frozen=True)
class Block:
    doc: str
    line: int  # of the opening fence
    lang: str
    lines: list[str]
    marked: bool


def blocks(path: Path) -> list[Block]:
    found: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = re.fullmatch(r"```(\w*)\s*", lines[i])
        if fence:
            end = lines.index("```", i + 1)
            marked = i > 0 and lines[i - 1].strip() == MARKER
            found.append(Block(path.name, i + 1, fence.group(1), lines[i + 1 : end], marked))
            i = end
        i += 1
    return found


def commands(block: Block) -> list[tuple[str, int]]:
    """(command, expected exit code) of each `$ ` line of a console block."""
    out = []
    for line in block.lines:
        if line.startswith("$ "):
            expected = re.search(r"#\s*exit (\d+)", line)
            out.append(
                (line[2:].split("  #")[0].strip(), int(expected.group(1)) if expected else 0)
            )
    return out


# -- the sandbox blocks ---------------------------------------------------------------


@dataclass
class Sandbox:
    folder: Path
    config: Path
    scratch: Path
    port: int

    def run(self, command: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        env = cli_env({"CHAINLENS_CONFIG": str(self.config), "COLUMNS": "80",
                       "HOME": "/var/lib/postgresql"})  # fmt: skip
        argv = ["runuser", "-u", "postgres", "--", "bash", "-c",
                f"set -o pipefail; cd {self.scratch} && {command}"]  # fmt: skip
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def sandbox(scratch: Path) -> Iterator[Sandbox]:
    folder = Path(tempfile.mkdtemp(prefix="chainlens-readme-", dir="/var/tmp"))
    os.chmod(folder, 0o755)
    state = {"XDG_STATE_HOME": str(folder / "state")}
    work = make_shared_dir(scratch / f"readme-{os.getpid()}")
    try:
        # Its own demo record (XDG_STATE_HOME): `--down` never reaches another run's.
        made = subprocess.run([str(CLI), "demo", "--daemon-seconds", "1"], cwd=folder,
                              env=cli_env({"COLUMNS": "80", **state}), capture_output=True,
                              text=True, timeout=600)  # fmt: skip
        assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
        yield Sandbox(folder, folder / ".demo" / "chainlens-ops.toml", work, free_port())
    finally:
        restored = work / "restored"
        PgCluster(restored, 0).stop("immediate")
        subprocess.run([str(CLI), "demo", "--down"], cwd=folder, check=False,
                       capture_output=True, env=cli_env(state))  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def in_this_sandbox(command: str, box: Sandbox, target_time: str) -> str:
    command = re.sub(r"--target-time '[^']*'", f"--target-time '{target_time}'", command)
    command = re.sub(r"(--port|-p) 5433\b", rf"\g<1> {box.port}", command)
    return command.replace("/var/tmp/restored", str(box.scratch / "restored"))


def test_sandbox_blocks_run_as_written(sandbox: Sandbox) -> None:
    points = sandbox.run("chainlens-ops restore-point list --db supabase --json")
    assert points.returncode == 0, points.stderr
    (point,) = [p for p in json.loads(points.stdout) if p["name"] == "demo-before-incident"]
    # Just after the restore point, before the demo's incident two seconds later.
    target = (datetime.fromisoformat(point["time"]) + timedelta(seconds=0.5)).isoformat(" ")
    ran = 0
    for block in blocks(README):
        if not block.marked:
            continue
        assert block.lang == "console", f"README.md:{block.line}: marked blocks are console"
        for command, expected in commands(block):
            actual = in_this_sandbox(command, sandbox, target)
            proc = sandbox.run(actual)
            assert proc.returncode == expected, (
                f"README.md:{block.line}: `{command}` exited {proc.returncode}, not "
                f"{expected}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
            )
            ran += 1
    assert ran >= 15, ran  # the blocks were found


def test_cron_lines_are_silent_on_success_and_say_the_exit_code_on_failure(
    sandbox: Sandbox,
) -> None:
    (cron,) = [b for b in blocks(README) if b.lang == "cron"]
    env: dict[str, str] = {}
    entries = []
    for line in cron.lines:
        if not line.strip() or line.startswith("#"):
            continue
        assignment = re.fullmatch(r"([A-Z_]+)=(.*)", line)
        if assignment:
            env[assignment.group(1)] = assignment.group(2)
            continue
        fields = line.split(None, 6)
        assert fields[5] == "postgres", line  # /etc/cron.d format: a user column
        entries.append(fields[6])
    assert set(env) == {"MAILTO", "PATH", "CHAINLENS_CONFIG"}
    assert len(entries) == 4
    dead = sandbox.scratch / "dead.toml"  # its servers are down
    dead.write_text(
        f'repo = "{sandbox.folder}/.demo/repo"\n'
        + "".join(
            f'[databases.{db}]\ndsn = "host=127.0.0.1 port=1 dbname={db}"\n' for db in DATABASES
        )
    )
    dead.chmod(0o644)
    for entry in entries:
        for config, healthy in ((sandbox.config, True), (dead, False)):
            proc = subprocess.run(
                [RUNUSER, "-u", "postgres", "--", "/bin/sh", "-c", f"cd / && {entry}"],
                env={"PATH": f"{VENV}/bin:/usr/bin:/bin", "CHAINLENS_CONFIG": str(config),
                     "HOME": "/var/lib/postgresql"},
                capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            said = proc.stdout + proc.stderr
            if "status" in entry:  # prints the status screen when something needs action
                assert ("needs action" in said) or (healthy and said == ""), said
            elif healthy:
                assert said == "", f"{entry}: {said}"
            else:
                assert re.search(r": exit [13]$", proc.stdout.strip()), f"{entry}: {said}"
                assert "chainlens-ops: error:" in proc.stderr, said


# -- every command line ---------------------------------------------------------------

GLOBAL = {"--config", "-v", "--verbose", "-h", "--help"}
STOP = re.compile(r"^(\|\|?|&&|;|#.*|>.*|2>.*|<.*)$")


def command_lines() -> list[tuple[str, str]]:
    """(where, text after `chainlens-ops`) of every command line in the docs."""
    found = []
    for path in DOCS:
        text = path.read_text()
        for block in blocks(path):
            for n, line in enumerate(block.lines):
                if block.lang == "text" or (block.lang == "console" and line[:2] != "$ "):
                    continue  # output
                for m in re.finditer(r"(?:^|[\s/'\"(`])chainlens-ops ([^`]*)", line):
                    found.append((f"{path.name}:{block.line + n + 1}", m.group(1)))
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        for m in re.finditer(r"`chainlens-ops ([^`]+)`", prose):
            found.append((f"{path.name} (inline)", m.group(1)))
    return found


def _words(text: str) -> list[str]:
    try:
        words = shlex.split(text)
    except ValueError:
        words = text.replace("'", " ").replace('"', " ").split()
    out = []
    for word in words:
        if STOP.match(word):
            break
        out.append(word.rstrip(";"))
        if word.endswith(";"):
            break
    return out


def check_line(root: Any, text: str) -> str | None:
    """Why `chainlens-ops <text>` is not a real command line, or None."""
    words = _words(text)
    command, path = root, []
    i = 0
    while i < len(words) and (words[i] in GLOBAL or words[i].startswith("--config=")):
        i += 2 if words[i] == "--config" else 1
    while i < len(words) and words[i] in getattr(command, "commands", {}):
        command = command.commands[words[i]]
        path.append(words[i])
        i += 1
    names = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    names |= {o for p in root.params for o in (*p.opts, *p.secondary_opts)} | GLOBAL
    first_rest = True
    for word in words[i:]:
        for alt in word.strip("[](),.`").split("|"):
            alt = alt.strip("[](),.`")
            if alt.startswith("-") and len(alt) > 1 and not alt[1].isdigit():
                if alt.split("=")[0] not in names:
                    return f"{' '.join(path) or '(root)'}: no option {alt.split('=')[0]}"
            elif first_rest and _unknown_command(command, alt):
                return f"{' '.join(path)}: no command {alt!r}"
        first_rest = False
    return None


def _unknown_command(command: Any, word: str) -> bool:
    """`word` stands where a subcommand of `command` must."""
    return (
        bool(getattr(command, "commands", None))
        and re.fullmatch(r"[a-z][a-z-]*", word) is not None
        and not getattr(command, "invoke_without_command", False)
    )


def test_every_command_line_in_the_docs_is_real() -> None:
    root = build_command()
    lines = command_lines()
    problems = [f"{where}: chainlens-ops {text}: {why}" for where, text in lines
                if (why := check_line(root, text))]  # fmt: skip
    assert not problems, "\n".join(problems)
    assert len(lines) >= 50, len(lines)
    # The checker itself catches what it must.
    assert check_line(root, "backup list --dbb x") == "backup list: no option --dbb"
    assert check_line(root, "wal sweep") == "wal: no command 'sweep'"
    assert check_line(root, "restore --target-time X --pgdata D --dry-run") is None


def test_toml_examples_load_and_jobs_pass_the_daemon_check() -> None:
    check = command_checker(build_command())
    jobs = 0
    for path in DOCS:
        for block in blocks(path):
            if block.lang != "toml":
                continue
            data = tomllib.loads("\n".join(block.lines))
            build_settings(data, {}, None)  # raises on an unknown key or a wrong type
            if "jobs" in data:
                jobs += len(parse_daemon_config(data, f"{path.name}:{block.line}", check).jobs)
    assert jobs >= 5, jobs
    # A group that acts on its own (`backup`, `restore`) is a command line of its own.
    for argv in (["backup"], ["backup", "--db", "all", "--quiet"], ["restore", "drill"]):
        check(argv)
    for argv, why in ((["backup", "lst"], "unknown command 'lst'"),
                      (["backup", "--dbb", "x"], "No such option")):  # fmt: skip
        with pytest.raises(ValueError, match=why):
            check(argv)


def test_configuration_tables_match_the_code() -> None:
    text = README.read_text()
    toml_section = text.split("### TOML keys")[1].split("\n### ")[0]
    documented = re.findall(r"^\| `([^`]+)` \|", toml_section, flags=re.M)
    assert sorted(documented) == sorted(known_keys())
    env_section = text.split("### Environment variables")[1].split("\n**S3.**")[0]
    rows = re.findall(r"^\| (`[^|]+) \|", env_section, flags=re.M)
    documented_env = {name for row in rows for name in re.findall(r"`([A-Z0-9_]+)`", row)}
    test_knobs = {"CHAINLENS_CRASH_AT", "CHAINLENS_CRASH_SIGNAL", "CHAINLENS_PAUSE_AT",
                  "CHAINLENS_PAUSE_DIR"}  # fmt: skip
    assert documented_env == environment_variables() - test_knobs
    for knob in test_knobs:
        assert knob in (ROOT / "DEVELOPERS.md").read_text()  # test-only knobs
    for name in {v for v in strings_in_code(r"\bAWS_[A-Z_]*[A-Z]\b")}:
        assert f"`{name}`" in text, f"{name} is read (via boto3) but not in the README"


def strings_in_code(pattern: str) -> set[str]:
    """Matches of `pattern` inside the string literals of chainlens_ops."""
    found: set[str] = set()
    for source in (ROOT / "chainlens_ops").rglob("*.py"):
        tokens = tokenize.generate_tokens(io.StringIO(source.read_text()).readline)
        for token in tokens:
            if token.type == tokenize.STRING:
                found |= set(re.findall(pattern, token.string))
    return found


def environment_variables() -> set[str]:
    names = strings_in_code(r"\b(?:CHAINLENS|SUPABASE|POSTGRES)_[A-Z0-9_]*[A-Z0-9]\b")
    names |= {f"CHAINLENS_{db.upper()}_{what}" for db in DATABASES for what in ("DSN", "REPO")}
    return names


def test_exit_code_table_is_errors_py() -> None:
    section = README.read_text().split("## Exit codes")[1].split("\n## ")[0]
    codes = {int(c) for c in re.findall(r"^\| (\d+) \|", section, flags=re.M)}
    assert codes == {errors.EXIT_OK, errors.EXIT_FAILED, errors.EXIT_USAGE, errors.EXIT_CONFIG}
    assert f"{errors.FETCH_FATAL} anything else" in section
    assert f"{errors.FETCH_MISSING} the segment is not in the" in section


# -- systemd, completion, help --------------------------------------------------------


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = (ROOT / "scripts" / "chainlens-ops-daemon.service").read_text()
    (exec_start,) = re.findall(r"^ExecStart=(.*)$", unit, flags=re.M)
    assert check_line(build_command(), exec_start.split("chainlens-ops ", 1)[1]) is None
    # Verified as installed, with this venv's executable in place of the default one.
    copy = tmp_path / "chainlens-ops-daemon.service"
    copy.write_text(unit.replace("/opt/chainlens-ops/venv/bin/chainlens-ops", str(CLI)))
    proc = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0 and "chainlens-ops-daemon" not in proc.stderr, proc.stderr


def test_shell_completion_works_through_the_console_script() -> None:
    def complete(words: str) -> list[str]:
        env = {
            "_CHAINLENS_OPS_COMPLETE": "complete_bash",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1)),
        }
        proc = run_cli(env=env)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split()

    assert complete("chainlens-ops wal pu") == ["push"]
    assert "--prefetch" in complete("chainlens-ops wal fetch --")  # the hook door's command
    assert complete("chainlens-ops backup --db ") == ["supabase", "microservices", "all"]
    assert "restore-point" in complete("chainlens-ops re")
    script = run_cli(env={"_CHAINLENS_OPS_COMPLETE": "source_bash"})
    assert "complete -o default -F _chainlens_ops_completion chainlens-ops" in script.stdout
    shown = subprocess.run(["bash", "-c", f"{CLI} --show-completion"], capture_output=True,
                           text=True, env=cli_env(), timeout=60)  # fmt: skip
    assert shown.returncode == 0 and "_CHAINLENS_OPS_COMPLETE" in shown.stdout, shown.stderr


def test_every_command_has_a_summary_and_help_that_fits() -> None:
    paths = [p for p in command_paths(build_command()) if p]
    assert sorted(paths) == sorted(SUMMARIES), set(paths) ^ set(SUMMARIES)
    for path in ["", *paths]:
        proc = run_cli(*path.split(), "--help", env={"COLUMNS": "80"})
        assert proc.returncode == 0, f"{path}: {proc.stderr}"
        for line in proc.stdout.splitlines():
            assert len(line) <= 80, f"{path} --help: {line!r}"
            if not line.startswith("Usage:"):
                assert not line.rstrip().endswith("..."), f"{path} --help cuts: {line!r}"
