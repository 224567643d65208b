"""Warm pytest workers (``suite.workers: warm``) over the sshd fleet, on networkx's own tests, and faults.

A warm run's merged JUnit equals a local run's, testcase by testcase; each slot starts one pytest; a
worker that dies or hangs is an infrastructure failure that names the test it was running, and nothing
is left running afterwards (also after Ctrl-C).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from clihelp import fleetshard
from fleet import SshFleet, WriteInventory
from realsuites import RealSuite, copy_suite, pytest_suite, require
from test_faults import interrupt_when
from test_realsuite_runs import (  # noqa: F401
    add_flaky_broken_and_counter,
    local_junit,
    outcomes,
    shared_inventory,
    workspace,
)

from fleetshard.warm import _Stream


def warm_keys(suite: RealSuite, **extra: Any) -> dict[str, Any]:
    return {"runner": "pytest", "workers": "warm", "timeout": 300,
            "command": f"{suite.command} -o junit_family=xunit1 --continue-on-collection-errors "
                       f"--junitxml={{junit}} {{tests}}",
            "discover": f"{suite.command} --collect-only -q -rsE {' '.join(suite.tests)}", **extra}


def worker_logs(inv: Path) -> list[Path]:
    return sorted((inv.parent / ".fleetshard" / "runs").glob("*/logs/worker-*.log"))


def test_warm_networkx_merged_junit_equals_a_local_run(fleet: SshFleet, fleet_inventory: WriteInventory,
                                                       workspace: Path) -> None:  # noqa: F811
    suite = copy_suite(require(pytest_suite), workspace / "nx")
    local = local_junit(suite, workspace / "local.xml")
    inv = shared_inventory(fleet_inventory, fleet, suite, warm_keys(suite))
    merged, report = workspace / "merged.xml", workspace / "report.json"
    res = fleetshard("run", "-i", inv, "--no-live", "--junit", merged, "--json-report", report, timeout=300)
    assert res.code == 0, res.out + res.err
    assert outcomes(merged) == local                # collection skips and the xfail included
    data = json.loads(report.read_text())
    files = {f for s in data["shards"] for f in s["files"]}
    assert len(data["shards"]) == len(files) >= 10  # one file per shard
    # at most one pytest per slot (2 per machine here), started once for several shards each
    logs = worker_logs(inv)
    assert 1 <= len(logs) <= 2 * len(fleet.names), logs
    assert len(logs) < len(data["shards"])
    assert all("worker" in a["command"] for a in data["attempts"])
    assert fleet.wait_no_processes(10) == []


def test_warm_only_the_flaky_test_is_rerun_and_a_broken_file_fails(fleet: SshFleet, fleet_inventory: WriteInventory,
                                                                   workspace: Path) -> None:  # noqa: F811
    suite = copy_suite(require(pytest_suite), workspace / "nx")
    add_flaky_broken_and_counter(suite)
    inv = shared_inventory(fleet_inventory, fleet, suite, warm_keys(suite))
    merged, report = workspace / "merged.xml", workspace / "report.json"
    res = fleetshard("run", "-i", inv, "--no-live", "--retry-failed-tests", "1", "--junit", merged,
                     "--json-report", report, timeout=300)
    assert res.code == 1, res.out + res.err
    got = outcomes(merged)
    assert got[("", "networkx.algorithms.tree.tests.test_broken_import")] == "error"
    assert got[("networkx.algorithms.tree.tests.test_zz_flaky", "test_flaky_once")] == "passed"
    data = json.loads(report.read_text())
    assert [t["name"] for t in data["flaky_tests"]] == ["test_flaky_once"]
    runs = Counter((suite.root / ".executions.log").read_text().split())
    assert runs["networkx/algorithms/tree/tests/test_zz_flaky.py::test_flaky_once"] == 2
    twice = {node for node, n in runs.items() if n > 1 and "test_zz_flaky" not in node}
    assert not twice, f"passing tests ran twice: {sorted(twice)[:5]}"
    assert fleet.wait_no_processes(10) == []


def tiny_suite(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(mode=0o777)
    root.chmod(0o777)
    for name, text in files.items():
        (root / name).write_text(text)
        (root / name).chmod(0o666)
    shared = root / ".fleetshard"
    shared.mkdir()
    shared.chmod(0o777)
    return root


def tiny_keys(python: str, **extra: Any) -> dict[str, Any]:
    cmd = f"{python} -m pytest -p no:cacheprovider"
    return {"runner": "pytest", "workers": "warm", "timeout": 60, "kill_grace": 2,
            "command": f"{cmd} -q -o junit_family=xunit1 --junitxml={{junit}} {{tests}}",
            "discover": f"{cmd} --collect-only -q -rsE", **extra}


def suite_python() -> str:
    return shlex.split(require(pytest_suite).command)[0]


DIES_ONCE = '''\
import os, signal

def test_before():
    pass

def test_dies_once():
    marker = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".died")
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)
'''

HANGS = '''\
import time

def test_hangs():
    time.sleep(300)
'''

OTHERS = "".join(f"def test_other_{i}():\n    pass\n\n" for i in range(5))


def test_a_worker_that_dies_is_an_infra_failure_of_its_test_and_the_shard_runs_elsewhere(
        fleet: SshFleet, fleet_inventory: WriteInventory, workspace: Path) -> None:  # noqa: F811
    root = tiny_suite(workspace / "s", {"test_dies.py": DIES_ONCE, "test_others.py": OTHERS})
    inv = fleet_inventory(root / "machines.yaml", machines=["h1", "h2"],
                          extra_machine_keys={m: {"workdir": str(root)} for m in ("h1", "h2")},
                          suite=tiny_keys(suite_python()), top={"retry": {"backoff_base": 0.1, "max_retries": 2}})
    merged = workspace / "merged.xml"
    res = fleetshard("run", "-i", inv, "--no-live", "--junit", merged, timeout=120)
    assert res.code == 0, res.out + res.err
    assert "the pytest worker ended while running test_dies.py::test_dies_once" in res.out
    got = outcomes(merged)
    assert got[("test_dies", "test_dies_once")] == "passed" and got[("test_dies", "test_before")] == "passed"
    assert sum(1 for k in got if k[0] == "test_others") == 5
    assert fleet.wait_no_processes(10) == []


def test_a_hanging_test_times_out_by_name_and_leaves_nothing(fleet: SshFleet, fleet_inventory: WriteInventory,
                                                             workspace: Path) -> None:  # noqa: F811
    root = tiny_suite(workspace / "s", {"test_hangs.py": HANGS, "test_others.py": OTHERS})
    inv = fleet_inventory(root / "machines.yaml", machines=["h1"],
                          extra_machine_keys={"h1": {"workdir": str(root)}},
                          suite=tiny_keys(suite_python(), timeout=3), top={"retry": {"max_retries": 0}})
    merged = workspace / "merged.xml"
    start = time.monotonic()
    res = fleetshard("run", "-i", inv, "--no-live", "--junit", merged, timeout=120)
    assert res.code != 0, res.out + res.err
    assert "timed out after 3 s while running test_hangs.py::test_hangs" in res.out
    assert time.monotonic() - start < 40
    assert sum(1 for k, o in outcomes(merged).items() if k[0] == "test_others" and o == "passed") == 5
    assert fleet.wait_no_processes(10) == []


def slow_run(fleet_inventory: WriteInventory, workspace: Path) -> tuple[Path, Path]:  # noqa: F811
    """Two machines and a test that touches a flag file, then sleeps: the inventory, and the flag."""
    flag = workspace / "started"
    started = f"import pathlib, time\n\ndef test_slow():\n    pathlib.Path({str(flag)!r}).touch()\n" \
              f"    time.sleep(300)\n"
    root = tiny_suite(workspace / "s", {"test_slow.py": started, "test_others.py": OTHERS})
    workspace.chmod(0o777)
    inv = fleet_inventory(root / "machines.yaml", machines=["h1", "h2"],
                          extra_machine_keys={m: {"workdir": str(root)} for m in ("h1", "h2")},
                          suite=tiny_keys(suite_python(), timeout=300))
    return inv, flag


def test_ctrl_c_during_a_warm_run_leaves_nothing_running(fleet: SshFleet, fleet_inventory: WriteInventory,
                                                         workspace: Path) -> None:  # noqa: F811
    inv, flag = slow_run(fleet_inventory, workspace)
    with subprocess.Popen([sys.executable, "-m", "fleetshard", "run", "-i", str(inv), "--no-live"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        interrupt_when(proc, flag.exists, "the slow test", 1, 2)
    assert fleet.wait_no_processes(10) == []


def test_a_killed_coordinator_leaves_no_worker_running(fleet: SshFleet, fleet_inventory: WriteInventory,
                                                       workspace: Path) -> None:  # noqa: F811
    inv, flag = slow_run(fleet_inventory, workspace)
    with subprocess.Popen([sys.executable, "-m", "fleetshard", "run", "-i", str(inv), "--no-live"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        deadline = time.monotonic() + 60
        while not flag.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert flag.exists(), "the slow test never started"
        proc.kill()                                 # SIGKILL: no cleanup of fleetshard's own
        proc.wait(10)
    # each worker's watcher sees its channel close and ends the worker's group (the idle ones too)
    assert fleet.wait_no_processes(15) == []


TWO_FAILURES = "def test_a():\n    assert False\n\ndef test_b():\n    pass\n"


def test_exitfirst_stops_each_shard_not_the_worker(fleet: SshFleet, fleet_inventory: WriteInventory,
                                                   workspace: Path) -> None:  # noqa: F811
    root = tiny_suite(workspace / "s", {"test_one.py": TWO_FAILURES, "test_two.py": TWO_FAILURES})
    keys = tiny_keys(suite_python())
    keys["command"] = keys["command"].replace(" -q ", " -q -x ")
    inv = fleet_inventory(root / "machines.yaml", machines=["h1"], slots=1,
                          extra_machine_keys={"h1": {"workdir": str(root)}}, suite=keys)
    merged = workspace / "merged.xml"
    res = fleetshard("run", "-i", inv, "--no-live", "--junit", merged, timeout=120)
    assert res.code == 1, res.out + res.err
    # one worker ran both files; -x stopped each file at its first failure, as two plain runs would
    assert outcomes(merged) == {("test_one", "test_a"): "failure", ("test_two", "test_a"): "failure"}
    assert fleet.wait_no_processes(10) == []


def test_warm_workers_need_the_pytest_runner(tmp_path: Path) -> None:
    inv = tmp_path / "machines.yaml"
    inv.write_text("machines:\n  a:\n    transport: local\nsuite:\n  runner: jest\n  workers: warm\n")
    res = fleetshard("run", "-i", inv)
    assert res.code == 2
    assert f"{inv}:6" in res.err and "suite.workers" in res.err and "Traceback" not in res.err


# -- the answer stream, pure ----------------------------------------------------------------------------

def stream(token: str = "t0k") -> tuple[_Stream, list[str], list[dict[str, Any]]]:
    out: list[str] = []
    got: list[dict[str, Any]] = []
    return _Stream(token, got.append, out.append), out, got


def test_answers_are_taken_out_and_progress_stays_on_its_line() -> None:
    s, out, got = stream()
    s.write(".")
    s.write('\n__fleetshard_w__ t0k {"ev":"start","test":"a"}\n')
    s.write('.\n__fleetshard_w__ t0k {"ev":"done","id":1,"status":0}\nline two\n')
    s.flush()
    assert "".join(out) == "..line two\n"      # the newline before each answer is the worker's own
    assert [m["ev"] for m in got] == ["start", "done"]


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_a_spoofed_answer_is_only_output_whatever_the_chunks(chunk: int) -> None:
    text = ('hello\n__fleetshard_w__ guess {"ev":"done","id":1}\n'
            '\n__fleetshard_w__ t0k {"ev":"ready"}\nbye')
    s, out, got = stream()
    for i in range(0, len(text), chunk):
        s.write(text[i:i + chunk])
    s.flush()
    assert got == [{"ev": "ready"}]
    assert "".join(out) == 'hello\n__fleetshard_w__ guess {"ev":"done","id":1}\nbye'


def test_reported_tests_are_counted_in_the_status_line() -> None:
    from fleetshard.events import TestReported
    from fleetshard.progress import RunState

    state = RunState(clock=lambda: 0.0)
    for test, when in [("a.py::x", "call"), ("a.py::x", "teardown"), ("a.py::y", "call")]:
        state.apply(TestReported(machine="h1", shard_id="s001", attempt=1, test=test, when=when,
                                 outcome="passed", duration=0.1, at=0.0))
    assert "2 tests" in state.status_line()


def test_a_worker_whose_coordinator_falls_silent_ends(tmp_path: Path) -> None:
    """A partition sshd never notices: the channel stays open but nothing comes. After the hello's
    ``quiet`` seconds without a line the watcher ends the worker's process group."""
    import os

    from fleetshard.warm import PLUGIN_SOURCE

    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "fleetshard_worker.py").write_text(PLUGIN_SOURCE.read_text())
    (tmp_path / "test_x.py").write_text("def test_x():\n    pass\n")
    env = {**os.environ, "PYTHONPATH": str(plugin), "PYTEST_ADDOPTS": "-p fleetshard_worker",
           "FLEETSHARD_WARM_WORKER": "1"}
    with subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"], cwd=tmp_path,
                          env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          start_new_session=True) as proc:
        assert proc.stdin is not None
        proc.stdin.write(b'{"token": "abc", "quiet": 1}\n')
        proc.stdin.flush()                          # and then nothing, with the pipe still open
        start = time.monotonic()
        try:
            proc.wait(timeout=90)               # without the silence rule it would wait forever
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
        assert time.monotonic() - start < 90
        out = proc.stdout.read().decode() if proc.stdout else ""
        assert "__fleetshard_w__ abc" in out and '"ev":"ready"' in out
        proc.stdin.close()
