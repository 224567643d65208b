"""`fleetshard run` end to end on the real sshd fleet."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clihelp import fleetshard
from fakesuite import FakeSuite, specs
from fleet import MakeFleet, SshFleet, WriteInventory


@pytest.fixture
def suite_factory(tmp_path: Path, fleet: SshFleet) -> Iterator[Any]:
    made: list[FakeSuite] = []

    def make(spec: dict[str, dict[str, Any]], shared: Path | None = None) -> FakeSuite:
        fs = FakeSuite(tmp_path, shared or fleet.root, spec)
        made.append(fs)
        return fs

    yield make
    for fs in made:
        fs.cleanup()


def shard_pids(fleet: SshFleet, name: str | None = None) -> list[int]:
    """Processes of the fake runner (not probes or setup) on a fleet machine."""
    pids = []
    for pid in fleet.processes(name):
        try:
            if b"runner.py" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
        except OSError:
            continue
    return pids


def wait_for_shards(fleet: SshFleet, name: str | None = None, count: int = 1, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(shard_pids(fleet, name)) < count:
        time.sleep(0.02)
    assert len(shard_pids(fleet, name)) >= count, "the shards never started"


def report(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


@pytest.mark.parametrize("strategy", ["static", "dynamic"])
def test_four_machines_pass_and_fail(strategy: str, fleet: SshFleet, fleet_inventory: WriteInventory,
                                     suite_factory: Any, tmp_path: Path) -> None:
    fs = suite_factory(specs(16, 0.2))
    inv = fleet_inventory(suite=fs.suite())
    junit, js = tmp_path / "out" / "junit.xml", tmp_path / "out" / "report.json"
    junit.parent.mkdir()                        # report paths need an existing directory
    res = fleetshard("run", "-i", inv, "--strategy", strategy, "--junit", junit, "--json-report", js)
    assert res.code == 0, res.out + res.err
    data = report(js)
    assert data["exit_code"] == 0 and data["strategy"] == strategy
    assert {s["state"] for s in data["shards"]} == {"passed"}
    used = {a["machine"] for a in data["attempts"]}
    assert used == {"h1", "h2", "h3", "h4"}
    root = ET.parse(junit).getroot()
    assert root.get("tests") == "16" and root.get("failures") == "0"
    assert "PASSED" in res.out

    fs2 = suite_factory(specs(8, 0.1, **{"tests/t03.test": {"fail": True}}))
    inv2 = fleet_inventory(suite=fs2.suite())
    res2 = fleetshard("run", "-i", inv2, "--strategy", strategy, "--json-report", js)
    assert res2.code == 1, res2.out + res2.err
    data2 = report(js)
    failed = [s for s in data2["shards"] if s["state"] == "failed"]
    assert len(failed) == 1 and "tests/t03.test" in failed[0]["files"]
    # a test failure is not retried
    assert all(a["attempt"] == 1 for a in data2["attempts"])


def test_native_sharding_placeholders(fleet: SshFleet, fleet_inventory: WriteInventory, tmp_path: Path) -> None:
    out = fleet.root / f"native-{os.getpid()}-{time.monotonic_ns()}"
    out.mkdir()
    os.chmod(out, 0o777)
    inv = fleet_inventory(suite={"command": f"echo $FLEETSHARD_TEST_HOST > {out}/{{shard}}-of-{{total}}",
                                 "shards": 6})
    res = fleetshard("run", "-i", inv)
    assert res.code == 0, res.out + res.err
    assert sorted(p.name for p in out.iterdir()) == [f"{i}-of-6" for i in range(1, 7)]


def test_command_after_double_dash(fleet: SshFleet, fleet_inventory: WriteInventory) -> None:
    out = fleet.root / f"dd-{time.monotonic_ns()}"
    out.mkdir()
    os.chmod(out, 0o777)
    inv = fleet_inventory(machines=["h1", "h2"])
    res = fleetshard("run", "-i", inv, "--shards", "3", "--", "touch", f"{out}/part-{{shard}}-{{total}}")
    assert res.code == 0, res.out + res.err
    assert sorted(p.name for p in out.iterdir()) == ["part-1-3", "part-2-3", "part-3-3"]


def test_weird_file_names_reach_the_command_literally(fleet: SshFleet, fleet_inventory: WriteInventory,
                                                      suite_factory: Any, tmp_path: Path) -> None:
    names = ["tests/with space.test", "tests/quote'single.test", 'tests/quote"double.test',
             "tests/$(touch PWNED).test", "tests/semi;colon.test", "tests/back`tick`.test"]
    fs = suite_factory({n: {"duration": 0.01} for n in names})
    inv = fleet_inventory(machines=["h1"], suite=fs.suite(shards=1))
    js = tmp_path / "r.json"
    res = fleetshard("run", "-i", inv, "--json-report", js)
    assert res.code == 0, res.out + res.err
    log = Path(report(js)["attempts"][0]["log_path"]).read_text()
    received = [json.loads(line[4:]) for line in log.splitlines() if line.startswith("ARG ")]
    assert sorted(received) == sorted(names)
    assert not list(fleet.machine("h1").workdir.glob("PWNED*"))


def test_unreachable_machine_is_left_out(fleet: SshFleet, fleet_inventory: WriteInventory, suite_factory: Any,
                                         tmp_path: Path) -> None:
    addr, port = fleet.unused_address()
    fs = suite_factory(specs(6, 0.05))
    inv = fleet_inventory(machines=["h1", "h2"], suite=fs.suite(),
                          extra_machine_keys={"gone": {"host": addr, "port": port, "slots": 2}})
    js = tmp_path / "r.json"
    res = fleetshard("run", "-i", inv, "--json-report", js)
    assert res.code == 0, res.out + res.err
    assert "gone" in res.out and "refused" in res.out
    assert {a["machine"] for a in report(js)["attempts"]} <= {"h1", "h2"}


def test_no_healthy_machine_exits_3(fleet: SshFleet, fleet_inventory: WriteInventory, suite_factory: Any) -> None:
    fs = suite_factory(specs(2))
    inv = fleet_inventory(machines=["h1", "h2"], suite=fs.suite(), health={"min_disk_free_pct": 100})
    res = fleetshard("run", "-i", inv)
    assert res.code == 3
    assert "no healthy machine" in res.err and "min_disk_free_pct" in res.err


def test_infra_exit_code_is_retried_elsewhere(fleet: SshFleet, fleet_inventory: WriteInventory,
                                              suite_factory: Any, tmp_path: Path) -> None:
    fs = suite_factory(specs(4, 0.05))
    # h2 cannot run anything: its command exits 255, which is an infrastructure failure
    inv = fleet_inventory(machines=["h1", "h2"], suite=fs.suite(), slots=1, top={
        "retry": {"backoff_base": 0.2, "backoff_max": 0.5, "jitter": 0}},
        extra_machine_keys={"h2": {"env": {"PATH": "/nonexistent"}}})
    js = tmp_path / "r.json"
    res = fleetshard("run", "-i", inv, "--json-report", js, "--max-retries", "3")
    assert res.code == 0, res.out + res.err
    data = report(js)
    bad = [a for a in data["attempts"] if a["machine"] == "h2"]
    assert bad and all(a["outcome"] == "infra-failed" for a in bad)
    assert all(s["state"] == "passed" for s in data["shards"])
    assert any(m["name"] == "h2" and m["status"] == "drained" for m in data["machines"])


def test_retry_exhaustion_is_not_run_exit_3(fleet: SshFleet, fleet_inventory: WriteInventory,
                                            suite_factory: Any, tmp_path: Path) -> None:
    fs = suite_factory(specs(2, 0.01, **{"tests/t01.test": {"exit": 255}}))
    inv = fleet_inventory(machines=["h1", "h2"], suite=fs.suite(), top={
        "retry": {"backoff_base": 0.1, "backoff_max": 0.2, "jitter": 0, "drain_after": 10}})
    js = tmp_path / "r.json"
    res = fleetshard("run", "-i", inv, "--json-report", js, "--max-retries", "2")
    assert res.code == 3, res.out + res.err
    data = report(js)
    (bad,) = [s for s in data["shards"] if s["state"] != "passed"]
    assert bad["state"] == "not-run" and "after 3 attempts" in bad["reason"]


def test_flaky_with_retry_failed_tests(fleet: SshFleet, fleet_inventory: WriteInventory, suite_factory: Any,
                                       tmp_path: Path) -> None:
    fs = suite_factory(specs(3, 0.01, **{"tests/t02.test": {"fail_once": time.monotonic_ns()}}))
    inv = fleet_inventory(machines=["h1", "h2"], suite=fs.suite())
    js, junit = tmp_path / "r.json", tmp_path / "j.xml"
    res = fleetshard("run", "-i", inv, "--json-report", js, "--junit", junit, "--retry-failed-tests", "1")
    assert res.code == 0, res.out + res.err
    data = report(js)
    assert [s["id"] for s in data["shards"] if s["flaky"]]
    assert "flaky" in res.out.lower()
    assert "fleetshard.flaky" in junit.read_text()


def test_fail_fast_cancels_the_rest(fleet: SshFleet, fleet_inventory: WriteInventory, suite_factory: Any,
                                    tmp_path: Path) -> None:
    spec = specs(12, 1.0, **{"tests/t01.test": {"fail": True, "duration": 0.01}})
    fs = suite_factory(spec)
    inv = fleet_inventory(machines=["h1", "h2"], slots=1, suite=fs.suite(shards=12, kill_grace=1))
    js = tmp_path / "r.json"
    start = time.monotonic()
    res = fleetshard("run", "-i", inv, "--json-report", js, "--fail-fast", "--strategy", "static")
    assert res.code == 1, res.out + res.err
    assert time.monotonic() - start < 15
    states = [s["state"] for s in report(js)["shards"]]
    assert states.count("failed") == 1 and "not-run" in states
    assert fleet.wait_no_processes(5) == []


def test_lost_machine_requeues_elsewhere(make_fleet: MakeFleet, tmp_path: Path) -> None:
    small = make_fleet(3, speeds=[1, 1, 1])
    fs = FakeSuite(tmp_path, small.root, specs(12, 1.0))
    inv = small.write_inventory(tmp_path / "machines.yaml", slots=2, suite=fs.suite(shards=12),
                                top={"retry": {"backoff_base": 0.2, "jitter": 0}})
    js = tmp_path / "r.json"
    proc = subprocess.Popen([sys.executable, "-m", "fleetshard", "run", "-i", str(inv), "--json-report", str(js),
                             "--no-live"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_shards(small, "h2")
    time.sleep(0.3)
    small.stop_machine("h2")
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, out + err
    data = report(js)
    assert all(s["state"] == "passed" for s in data["shards"])
    lost = [a for a in data["attempts"] if a["machine"] == "h2" and a["outcome"] == "infra-failed"]
    assert lost, data["attempts"]
    assert any(m["name"] == "h2" and m["status"] == "lost" for m in data["machines"])


def test_hung_session_times_out_and_is_retried(make_fleet: MakeFleet, tmp_path: Path) -> None:
    small = make_fleet(2, speeds=[1, 1])
    fs = FakeSuite(tmp_path, small.root, specs(4, 0.5))
    inv = small.write_inventory(tmp_path / "machines.yaml", slots=1,
                                suite=fs.suite(shards=4, timeout=3, kill_grace=1),
                                top={"retry": {"backoff_base": 0.2, "jitter": 0}})
    js = tmp_path / "r.json"
    proc = subprocess.Popen([sys.executable, "-m", "fleetshard", "run", "-i", str(inv), "--json-report", str(js),
                             "--no-live"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_shards(small, "h1")
    small.pause_sessions("h1")
    out, err = proc.communicate(timeout=90)
    small.resume_sessions("h1")
    assert proc.returncode == 0, out + err
    data = report(js)
    assert all(s["state"] == "passed" for s in data["shards"])
    assert any(a["outcome"] == "timed-out" and a["machine"] == "h1" for a in data["attempts"])
    assert small.wait_no_processes(5) == []


def test_ctrl_c_leaves_no_process(fleet: SshFleet, fleet_inventory: WriteInventory, suite_factory: Any,
                                  tmp_path: Path) -> None:
    fs = suite_factory(specs(12, 20.0))
    inv = fleet_inventory(suite=fs.suite(kill_grace=2))
    js = tmp_path / "r.json"
    proc = subprocess.Popen([sys.executable, "-m", "fleetshard", "run", "-i", str(inv), "--json-report", str(js),
                             "--no-live"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_shards(fleet, count=8)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, out + err
    assert fleet.wait_no_processes(5) == []
    data = report(js)
    assert data["exit_code"] == 130
    assert all(s["state"] == "not-run" for s in data["shards"])
    assert "INTERRUPTED" in out


def test_dry_run_and_plan(fleet: SshFleet, fleet_inventory: WriteInventory, suite_factory: Any) -> None:
    fs = suite_factory(specs(10, 0.1))
    inv = fleet_inventory(suite=fs.suite())
    for args in (["plan"], ["run", "--dry-run"]):
        res = fleetshard(*args, "-i", inv)
        assert res.code == 0, res.out + res.err
        assert "s001" in res.out and "shards" in res.out
    assert fleet.processes() == []
