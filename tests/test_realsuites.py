"""The real suites of tests/realsuites.py are what they claim: run locally, without fleetshard."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

from realsuites import playwright_suite, pytest_suite, require


def test_networkx_suite_has_collection_skips_and_an_xfail(tmp_path: Path) -> None:
    suite = require(pytest_suite)
    junit = tmp_path / "junit.xml"
    proc = subprocess.run(f"{suite.command} -q -rs {' '.join(suite.tests)} --junitxml={junit}", shell=True,
                          cwd=suite.root, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:]
    cases = list(ET.parse(junit).getroot().iter("testcase"))
    skipped_modules = {c.get("name") for c in cases if not c.get("classname") and c.find("skipped") is not None}
    assert {"networkx.drawing.tests.test_pylab", "networkx.algorithms.tree.tests.test_branchings"} <= skipped_modules
    assert "could not import 'numpy'" in proc.stdout
    assert "xfailed" in proc.stdout.splitlines()[-1]
    assert "Mixed NetworkX configuration" not in proc.stdout + proc.stderr


def test_todomvc_suite_lists_the_demo_spec() -> None:
    suite = require(playwright_suite)
    proc = subprocess.run(f"{suite.command} --list", shell=True, cwd=suite.root, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Total: 24 tests in 1 file" in proc.stdout
