"""Runner adapters proven on real suites nobody here wrote, over the sshd fleet (tests/realsuites.py).

The merged JUnit of a fleetshard run is compared, testcase by testcase, with a local run's JUnit; a copy
with a deliberately broken file and a deliberately flaky test shows that the broken file fails the run
with its error, that only the flaky test is rerun (and reported flaky), and that no passing test runs twice.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clihelp import fleetshard
from fleet import SshFleet, WriteInventory
from realsuites import RealSuite, copy_suite, playwright_suite, pytest_suite, require

Outcomes = dict[tuple[str, str], str]


def outcomes(junit: Path) -> Outcomes:
    """(classname, name) -> outcome of every testcase; a duplicate testcase is an error."""
    found: Outcomes = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            child = case.find(tag)
            if child is not None:
                outcome = tag + (":xfail" if child.get("type") == "pytest.xfail" else "")
                break
        key = (case.get("classname") or "", case.get("name") or "")
        assert key not in found, f"testcase {key} is in {junit} twice"
        found[key] = outcome
    return found


@pytest.fixture
def workspace() -> Iterator[Path]:
    """A directory the fleet's login user can traverse (pytest's tmp_path is private to root)."""
    root = Path(tempfile.mkdtemp(prefix="fleetshard-realsuite-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def shared_inventory(fleet_inventory: WriteInventory, fleet: SshFleet, suite: RealSuite,
                     suite_keys: dict[str, Any]) -> Path:
    """An inventory in the suite copy's directory; every machine's workdir is that copy (one filesystem)."""
    machines = fleet.names
    shared = suite.root / ".fleetshard"          # the coordinator's and the machines' (another user)
    shared.mkdir(exist_ok=True)
    shared.chmod(0o777)
    return fleet_inventory(suite.root / "machines.yaml", machines=machines,
                           extra_machine_keys={m: {"workdir": str(suite.root)} for m in machines},
                           suite=suite_keys)


def local_junit(suite: RealSuite, out: Path, *extra: str) -> Outcomes:
    subprocess.run(f"{suite.command} -q -o junit_family=xunit1 --junitxml={out} {' '.join(extra)} "
                   f"{' '.join(suite.tests)}", shell=True, cwd=suite.root, capture_output=True, text=True,
                   timeout=300, check=False)
    return outcomes(out)


def pytest_keys(suite: RealSuite) -> dict[str, Any]:
    return {"runner": "pytest",
            "command": f"{suite.command} -o junit_family=xunit1 --continue-on-collection-errors "
                       f"--junitxml={{junit}} {{tests}}",
            "discover": f"{suite.command} --collect-only -q -rsE {' '.join(suite.tests)}",
            "timeout": 300}


def test_networkx_merged_junit_equals_a_local_run(fleet: SshFleet, fleet_inventory: WriteInventory,
                                                  workspace: Path) -> None:
    suite = copy_suite(require(pytest_suite), workspace / "nx")
    local = local_junit(suite, workspace / "local.xml")
    assert sum(1 for o in local.values() if o == "skipped") >= 6 and "skipped:xfail" in local.values()
    inv = shared_inventory(fleet_inventory, fleet, suite, pytest_keys(suite))
    merged = workspace / "merged.xml"
    res = fleetshard("run", "-i", inv, "--no-live", "--junit", merged, timeout=300)
    assert res.code == 0, res.out + res.err
    got = outcomes(merged)
    assert got == local                        # same testcases, same outcomes, collection skips included
    module_skips = [k for k, o in got.items() if not k[0] and o == "skipped"]
    assert len(module_skips) == 6


FLAKY = '''\
import os


def test_flaky_once():
    marker = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".flaky-once")
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    except FileExistsError:
        return
    raise AssertionError("fails the first time only")
'''

BROKEN = "from networkx.algorithms import no_such_module\n\n\ndef test_never():\n    pass\n"

# Counts executions: every test's call phase appends its node id to a log, whichever machine ran it.
COUNTER = '''\
import os

_LOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".executions.log")


def pytest_runtest_logreport(report):
    if report.when == "call" or (report.when == "setup" and report.skipped):
        with open(_LOG, "a") as fh:
            fh.write(report.nodeid + "\\n")
'''


def add_flaky_broken_and_counter(suite: RealSuite) -> None:
    """A flaky test, a file that fails to import, and a conftest counting every test's executions."""
    tests_dir = suite.root / "networkx" / "algorithms" / "tree" / "tests"
    (tests_dir / "test_zz_flaky.py").write_text(FLAKY)
    (tests_dir / "test_broken_import.py").write_text(BROKEN)
    (suite.root / "conftest.py").write_text(COUNTER)
    for p in (tests_dir / "test_zz_flaky.py", tests_dir / "test_broken_import.py", suite.root / "conftest.py"):
        p.chmod(0o666)


def test_networkx_broken_file_fails_the_run_and_only_the_flaky_test_is_rerun(
        fleet: SshFleet, fleet_inventory: WriteInventory, workspace: Path) -> None:
    suite = copy_suite(require(pytest_suite), workspace / "nx")
    add_flaky_broken_and_counter(suite)
    inv = shared_inventory(fleet_inventory, fleet, suite, pytest_keys(suite))
    merged, report = workspace / "merged.xml", workspace / "report.json"
    res = fleetshard("run", "-i", inv, "--no-live", "--retry-failed-tests", "1", "--junit", merged,
                     "--json-report", report, timeout=300)
    assert res.code == 1, res.out + res.err          # the broken file fails the run: never a pass

    got = outcomes(merged)
    broken = ("", "networkx.algorithms.tree.tests.test_broken_import")
    assert got[broken] == "error"
    assert got[("networkx.algorithms.tree.tests.test_zz_flaky", "test_flaky_once")] == "passed"
    root = ET.parse(merged).getroot()
    error = next(c for c in root.iter("testcase") if (c.get("classname"), c.get("name")) == broken)
    assert "cannot import name 'no_such_module'" in (error.findtext("error") or "")
    flaky_case = next(c for c in root.iter("testcase") if c.get("name") == "test_flaky_once")
    props = {p.get("name"): p.get("value") for p in flaky_case.iter("property")}
    assert props.get("fleetshard.flaky") == "true"

    data = json.loads(report.read_text())
    assert [t["name"] for t in data["flaky_tests"]] == ["test_flaky_once"]
    assert "networkx/algorithms/tree/tests/test_broken_import.py" in res.out + res.err

    # named by test in the plain CI lines and the summary; flaky in the terminal, HTML and history
    assert ("x networkx/algorithms/tree/tests/test_broken_import.py: ImportError: cannot import name "
            "'no_such_module'") in res.out
    assert "networkx/algorithms/tree/tests/test_zz_flaky.py::test_flaky_once" in res.out
    html = workspace / "report.html"
    shown = fleetshard("report", "-i", inv, "--html", html)
    assert shown.code == 0, shown.out + shown.err
    assert "test_broken_import.py" in shown.out and "test_flaky_once" in shown.out
    assert "networkx/algorithms/tree/tests/test_zz_flaky.py::test_flaky_once" in html.read_text()
    flaky = fleetshard("history", "-i", inv, "--flaky")
    assert flaky.code == 0 and "test_zz_flaky.py::test_flaky_once" in flaky.out, flaky.out + flaky.err

    runs = Counter((suite.root / ".executions.log").read_text().split())
    assert runs["networkx/algorithms/tree/tests/test_zz_flaky.py::test_flaky_once"] == 2
    twice = {node for node, n in runs.items() if n > 1 and "test_zz_flaky" not in node}
    assert not twice, f"passing tests ran twice: {sorted(twice)[:5]}"
    ran_once = sum(1 for n in runs.values() if n == 1)
    assert ran_once >= 170


def test_todomvc_selection_and_merged_junit_over_the_fleet(fleet: SshFleet, fleet_inventory: WriteInventory,
                                                            workspace: Path) -> None:
    suite = copy_suite(require(playwright_suite), workspace / "pw")
    grep = "--grep 'New Todo'"
    local_out = workspace / "local.xml"
    subprocess.run(f"PLAYWRIGHT_JUNIT_OUTPUT_FILE={local_out} {suite.command} {grep} --reporter=junit",
                   shell=True, cwd=suite.root, capture_output=True, text=True, timeout=300, check=False)
    local = outcomes(local_out)
    assert len(local) == 3, local
    shutil.rmtree(suite.root / "test-results", ignore_errors=True)      # root's, not the machines' user's
    keys = {"runner": "playwright",
            "command": f"PLAYWRIGHT_JUNIT_OUTPUT_FILE={{junit}} {suite.command} {grep} --reporter=junit "
                       f"{{tests}}",
            "timeout": 300}
    inv = shared_inventory(fleet_inventory, fleet, suite, keys)
    merged, report = workspace / "merged.xml", workspace / "report.json"
    res = fleetshard("run", "-i", inv, "--no-live", "--junit", merged, "--json-report", report, timeout=300)
    assert res.code == 0, res.out + res.err
    assert outcomes(merged) == local             # exactly the 3 selected tests, not the spec's 24
    # fullyParallel: the one file is split by test id across the fleet's slots
    shards = json.loads(report.read_text())["shards"]
    assert len(shards) == 3 and all(s["files"] == ["tests/demo-todo-app.spec.ts"] for s in shards)


FLAKY_SPEC = """\
import { test, expect } from '@playwright/test';
import * as fs from 'fs';
import * as path from 'path';

test('flaky once', async () => {
  let first = false;
  try { fs.writeFileSync(path.join(__dirname, '.flaky-once'), 'x', { flag: 'wx' }); first = true; } catch {}
  expect(first, 'fails the first time only').toBe(false);
});
"""


def test_todomvc_native_shards_rerun_only_the_flaky_test(fleet: SshFleet, fleet_inventory: WriteInventory,
                                                          workspace: Path) -> None:
    suite = copy_suite(require(playwright_suite), workspace / "pw")
    spec = suite.root / "tests" / "zz-flaky.spec.ts"
    spec.write_text(FLAKY_SPEC)
    spec.chmod(0o666)
    grep = "--grep 'New Todo|flaky once'"
    keys = {"runner": "playwright", "shards": 2, "timeout": 300,
            "command": f"PLAYWRIGHT_JUNIT_OUTPUT_FILE={{junit}} {suite.command} {grep} --reporter=junit "
                       f"--shard={{shard}}/{{total}}"}
    inv = shared_inventory(fleet_inventory, fleet, suite, keys)
    merged, report = workspace / "merged.xml", workspace / "report.json"
    res = fleetshard("run", "-i", inv, "--no-live", "--retry-failed-tests", "1", "--junit", merged,
                     "--json-report", report, timeout=300)
    assert res.code == 0, res.out + res.err
    got = outcomes(merged)
    assert len(got) == 4 and set(got.values()) == {"passed"}
    data = json.loads(report.read_text())
    assert [t["name"] for t in data["flaky_tests"]] == ["flaky once"]
    retries = [a for a in data["attempts"] if a["attempt"] > 1]
    assert len(retries) == 1 and "--test-list" in retries[0]["command"]
    assert "--shard=" not in retries[0]["command"]
    rerun = outcomes(Path(retries[0]["junit_path"]))
    assert list(rerun) == [("zz-flaky.spec.ts", "flaky once")]      # the passing tests did not run again


BROKEN_SPEC = """\
import { test, expect } from '@playwright/test';
import { nothing } from './no-such-helper';

test('never runs', async () => { expect(nothing).toBe(1); });
"""


def test_todomvc_spec_that_fails_to_load_fails_the_run_with_its_error(
        fleet: SshFleet, fleet_inventory: WriteInventory, workspace: Path) -> None:
    suite = copy_suite(require(playwright_suite), workspace / "pw")
    (suite.root / "tests" / "broken.spec.ts").write_text(BROKEN_SPEC)
    keys = {"runner": "playwright", "timeout": 300, "split_files": False,
            "command": f"PLAYWRIGHT_JUNIT_OUTPUT_FILE={{junit}} {suite.command} --grep 'New Todo' "
                       f"--reporter=junit {{tests}}"}
    inv = shared_inventory(fleet_inventory, fleet, suite, keys)
    merged = workspace / "merged.xml"
    res = fleetshard("run", "-i", inv, "--no-live", "--junit", merged, timeout=300)
    assert res.code == 1, res.out + res.err               # never a pass, and never dropped
    assert "tests/broken.spec.ts" in res.out and "Cannot find module './no-such-helper'" in res.out
    got = outcomes(merged)
    assert got[("tests/broken.spec.ts", "(failed to load)")] == "error"
    # the broken file ran alone: the other spec's selected tests still ran and passed
    assert sum(1 for (cls, _), o in got.items() if cls == "demo-todo-app.spec.ts" and o == "passed") == 3, \
        (got, res.out)
