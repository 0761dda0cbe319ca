"""packaging/prometheus/fsev.rules.yml: `promtool check rules` passes, and
`promtool test rules` runs fsev.rules.test.yml (each alert with input series
that make it fire and series that must not)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

PROM = Path(__file__).resolve().parents[2] / "packaging" / "prometheus"
RULES = PROM / "fsev.rules.yml"
TESTS = PROM / "fsev.rules.test.yml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (Debian package prometheus; `make test` installs it)")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120, cwd=PROM)


def alert_names() -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)$", RULES.read_text(), re.M)


def test_promtool_check_rules_passes():
    r = promtool("check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in r.stdout


def test_promtool_test_rules_passes():
    r = promtool("test", "rules", str(TESTS))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_every_alert_is_tested_firing_and_not_firing():
    text = TESTS.read_text()
    firing: set[str] = set()
    quiet: set[str] = set()
    # each alert_rule_test case: its alertname, then either `exp_alerts: []` or a list
    for name, rest in re.findall(r"alertname: (\w+)\n\s+exp_alerts:(.*)", text):
        (quiet if rest.strip() == "[]" else firing).add(name)
    names = set(alert_names())
    assert names, "no alerts in the rules file"
    assert names - firing == set(), "never tested firing"
    assert names - quiet == set(), "never tested quiet"


def test_alerts_have_the_names_severity_and_annotations_they_promise():
    text = RULES.read_text()
    names = alert_names()
    assert {"FsevFilesystemError", "FsevReadOnlyAfterError", "FsevFreeSpaceBelowL2", "FsevFreeSpaceBelowL1",
            "FsevEnospcStorm", "FsevBlockIoErrors", "FsevEventsLost", "FsevProbeRungDegraded",
            "FsevDown"} <= set(names)
    blocks = re.split(r"^\s*- alert: ", text, flags=re.M)[1:]
    for block in blocks:
        name = block.split("\n", 1)[0]
        assert re.search(r"severity: (critical|warning|info)\n", block), name
        assert "summary:" in block and "description:" in block, name
        label = "device" if name == "FsevBlockIoErrors" else "mountpoint"
        if name not in ("FsevEventsLost", "FsevProbeRungDegraded", "FsevDown"):
            assert "{{ $labels." + label + " }}" in block, name
