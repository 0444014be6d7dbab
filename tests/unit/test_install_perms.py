"""`make install` widens permissions on the venv alone: a+x (not -R, not a+r) on the
folders above it, so VENV=$HOME/venv never makes ~/.ssh readable."""

from __future__ import annotations

import re
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "venv-perms.sh"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    home.chmod(0o700)
    key = home / ".ssh" / "id_ed25519"
    key.write_text("secret")
    key.chmod(0o600)
    notes = home / "notes.txt"
    notes.write_text("private")
    notes.chmod(0o600)
    deep = home / "deep"
    deep.mkdir(mode=0o700)
    sibling = deep / "other-venv"
    sibling.mkdir(mode=0o700)
    venv = deep / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("#!/bin/sh\n")
    (venv / "bin" / "python").chmod(0o700)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (venv / "pyvenv.cfg").chmod(0o600)
    venv.chmod(0o700)
    (venv / "bin").chmod(0o700)
    return home


def test_only_the_venv_is_opened_and_the_path_down_to_it_made_traversable(home: Path) -> None:
    venv = home / "deep" / "venv"
    subprocess.run(["bash", str(SCRIPT), str(venv)], check=True)
    # The venv: readable by all, programs and folders executable.
    assert mode(venv) == 0o755
    assert mode(venv / "bin") == 0o755
    assert mode(venv / "bin" / "python") == 0o755
    assert mode(venv / "pyvenv.cfg") == 0o644
    # The path down to it: enterable, not listable.
    assert mode(home) == 0o711
    assert mode(home / "deep") == 0o711
    # Nothing else changed.
    assert mode(home / ".ssh") == 0o700
    assert mode(home / ".ssh" / "id_ed25519") == 0o600
    assert mode(home / "notes.txt") == 0o600
    assert mode(home / "deep" / "other-venv") == 0o700


def test_folders_others_can_already_enter_are_left_alone(home: Path) -> None:
    home.chmod(0o750 | 0o001)  # others may enter; group may list: not ours to change
    subprocess.run(["bash", str(SCRIPT), str(home / "deep" / "venv")], check=True)
    assert mode(home) == 0o751


def test_make_install_runs_no_recursive_chmod_above_the_venv(home: Path) -> None:
    venv = home / "deep" / "venv"
    missing = home / "deep" / "new-venv"  # not made yet: the venv's own recipe runs too
    for target in (venv, missing):
        dry = subprocess.run(
            ["make", "-n", "-C", str(ROOT), "install", f"VENV={target}"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        chmods = [line for line in dry.stdout.splitlines() if re.search(r"\bchmod\b", line)]
        for line in chmods:
            words = shlex.split(line.split(";")[-1])
            assert "-R" not in words or words[-1].rstrip("/") == str(target), line
            assert str(home) not in words[-1] or words[-1].startswith(str(target)), line
        perms = [line for line in dry.stdout.splitlines() if "venv-perms.sh" in line]
        assert perms and all(line.split()[-1] == str(target) for line in perms), dry.stdout
    assert "venv-perms.sh" in dry.stdout and f"-m venv {missing}" in dry.stdout
