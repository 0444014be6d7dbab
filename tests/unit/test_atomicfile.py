"""Temp files of the one atomic writer: whose writer is gone can be removed at once."""

from __future__ import annotations

import os
import subprocess
import sys

from chainlens_ops.core.atomicfile import is_temp_name, temp_name, temp_writer_gone


def test_a_temp_file_of_this_live_process_is_still_being_written() -> None:
    name = os.path.basename(temp_name("/r/locks/repository.lock"))
    assert is_temp_name(name) and not temp_writer_gone(name)


def test_a_temp_file_whose_writer_exited_is_abandoned() -> None:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    name = f".repository.lock.{int(child.stdout)}-0123456789ab.tmp"
    assert temp_writer_gone(name)


def test_names_without_a_writer_pid_are_never_taken_for_abandoned() -> None:
    for name in (".x.tmp", ".x.abc-12.tmp", "x", ".x.-1.tmp"):
        assert not temp_writer_gone(name), name
