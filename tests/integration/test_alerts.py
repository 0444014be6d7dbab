"""The Prometheus alert rules in scripts/: valid, passing their own `promtool test rules`
cases, and naming only metrics the daemon's metrics file writes."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
METRICS_SOURCE = Path(__file__).resolve().parents[2] / "chainlens_ops" / "daemon" / "metrics.py"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool is missing: run scripts/install-system-deps.sh (Debian: prometheus)")
    return subprocess.run([tool, *args], cwd=SCRIPTS, capture_output=True, text=True, timeout=120)


def test_alert_rules_are_valid() -> None:
    checked = promtool("check", "rules", "prometheus-alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


def test_alert_rules_pass_their_promtool_cases() -> None:
    tested = promtool("test", "rules", "prometheus-alerts.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_metric_an_alert_reads_is_written_by_the_metrics_file() -> None:
    used = set(re.findall(r"chainlens_ops_\w+", (SCRIPTS / "prometheus-alerts.yml").read_text()))
    written = set(re.findall(r'"(chainlens_ops_\w+)"', METRICS_SOURCE.read_text()))
    assert used and used <= written, used - written
