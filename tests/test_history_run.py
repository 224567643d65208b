"""History, planning from history, resume, speculation and reports, on the real sshd fleet."""

from __future__ import annotations

import json
import time
from pathlib import Path

from clihelp import fleetshard
from fakesuite import FakeSuite, specs
from fleet import SshFleet, WriteInventory


def test_second_run_is_planned_from_history(fleet: SshFleet, fleet_inventory: WriteInventory,
                                            tmp_path: Path) -> None:
    durations = [1.2, 0.1, 0.1, 0.6, 0.1, 0.1, 0.3, 0.1, 0.1, 0.1, 0.4, 0.1]
    spec = {f"tests/t{i:02d}.test": {"duration": d} for i, d in enumerate(durations, 1)}
    fs = FakeSuite(tmp_path, fleet.root, spec)
    # h3 and h4 are 2x and 3x slower; declared here since one run cannot yet compare machines
    inv = fleet_inventory(slots=1, suite=fs.suite(),
                          extra_machine_keys={"h3": {"speed": 0.5}, "h4": {"speed": 1 / 3}})
    first = fleetshard("plan", "-i", inv)
    assert first.code == 0 and "expected makespan unknown" in first.out
    js1, js2 = tmp_path / "r1.json", tmp_path / "r2.json"
    assert fleetshard("run", "-i", inv, "--json-report", js1).code == 0
    plan = fleetshard("plan", "-i", inv)
    assert plan.code == 0, plan.out + plan.err
    assert "durations from history" in plan.out and "lower bound" in plan.out
    res = fleetshard("run", "-i", inv, "--json-report", js2)
    assert res.code == 0, res.out + res.err
    second = json.loads(js2.read_text())
    assert second["expected_makespan"] and second["lower_bound"]
    assert second["expected_makespan"] >= second["lower_bound"] * 0.99
    assert "expected" in res.out and "lower bound" in res.out
    # the longest file heads the queue and goes to a fast machine (with a few small files when each shard
    # must carry several start-ups' worth of work; a busy host makes start-ups longer)
    head = second["shards"][0]
    assert head["files"][0] == "tests/t01.test", plan.out
    assert next(a["machine"] for a in second["attempts"] if a["shard_id"] == head["id"]) in ("h1", "h2")
    hist = fleetshard("history", "-i", inv)
    assert hist.code == 0 and json.loads(js1.read_text())["run_id"] in hist.out and second["run_id"] in hist.out
    only = fleetshard("history", "-i", inv, "-m", "h4", "--json")
    assert only.code == 0 and {r["id"] for r in json.loads(only.out)} == {
        json.loads(js1.read_text())["run_id"], second["run_id"]}
    fs.cleanup()


def test_resume_runs_only_what_did_not_pass(fleet: SshFleet, fleet_inventory: WriteInventory,
                                            tmp_path: Path) -> None:
    spec = specs(6, 0.05, **{"tests/t04.test": {"fail": True}})
    fs = FakeSuite(tmp_path, fleet.root, spec)
    inv = fleet_inventory(machines=["h1", "h2"], suite=fs.suite(shards=3))
    js = tmp_path / "r.json"
    assert fleetshard("run", "-i", inv, "--json-report", js).code == 1
    data = json.loads(js.read_text())
    failed_files = {f for s in data["shards"] if s["state"] != "passed" for f in s["files"]}
    assert "tests/t04.test" in failed_files and len(failed_files) < 6
    # fix the test, then resume: only the failed shard's files run again
    spec["tests/t04.test"]["fail"] = False
    (fs.dir / "spec.json").write_text(json.dumps(spec))
    js2 = tmp_path / "r2.json"
    res = fleetshard("run", "-i", inv, "--resume", data["run_id"], "--json-report", js2)
    assert res.code == 0, res.out + res.err
    rerun = {f for s in json.loads(js2.read_text())["shards"] for f in s["files"]}
    assert rerun == failed_files
    fs.cleanup()


def test_speculation_rescues_a_straggler(fleet: SshFleet, fleet_inventory: WriteInventory, tmp_path: Path) -> None:
    # h4 is three times slower (FLEETSHARD_TEST_SPEED=3) and says so in the inventory.
    inv = fleet_inventory(machines=["h1", "h4"], slots=1,
                          extra_machine_keys={"h1": {"speed": 1.0}, "h4": {"speed": 0.33}},
                          suite={"command": "sleep $FLEETSHARD_TEST_SPEED", "shards": 2, "kill_grace": 1})
    js = tmp_path / "r.json"
    start = time.monotonic()
    res = fleetshard("run", "-i", inv, "--speculate", "--json-report", js)
    elapsed = time.monotonic() - start
    assert res.code == 0, res.out + res.err
    data = json.loads(js.read_text())
    spec = [a for a in data["attempts"] if a["speculative"]]
    assert spec and spec[0]["machine"] == "h1" and spec[0]["outcome"] == "passed"
    loser = [a for a in data["attempts"] if a["shard_id"] == spec[0]["shard_id"] and not a["speculative"]]
    assert loser[0]["machine"] == "h4" and loser[0]["outcome"] == "cancelled"
    assert [s["state"] for s in data["shards"]] == ["passed", "passed"]
    assert elapsed < 12
    assert fleet.wait_no_processes(5) == []


def test_report_terminal_and_html(fleet: SshFleet, fleet_inventory: WriteInventory, tmp_path: Path) -> None:
    fs = FakeSuite(tmp_path, fleet.root, specs(6, 0.05, **{"tests/t02.test": {"fail": True}}))
    inv = fleet_inventory(suite=fs.suite())
    js = tmp_path / "r.json"
    assert fleetshard("run", "-i", inv, "--json-report", js).code == 1
    run_id = json.loads(js.read_text())["run_id"]
    rep = fleetshard("report", run_id, "-i", inv)
    assert rep.code == 0, rep.out + rep.err
    assert run_id in rep.out and "tests/t02.test" in rep.out
    html = tmp_path / "report.html"
    assert fleetshard("report", "-i", inv, "--html", html).code == 0
    page = html.read_text()
    assert page.count('class="lane"') + page.count("class='lane'") >= 1 and "h1" in page
    unknown = fleetshard("report", "nope", "-i", inv)
    assert unknown.code == 2
    fs.cleanup()


def test_a_corrupt_history_never_loses_the_results(fleet: SshFleet, fleet_inventory: WriteInventory,
                                                   tmp_path: Path) -> None:
    fs = FakeSuite(tmp_path, fleet.root, specs(3, 0.01))
    inv = fleet_inventory(machines=["h1"], suite=fs.suite())
    db = tmp_path / ".fleetshard" / "history.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    db.write_bytes(b"this is not a database" * 100)
    js, junit = tmp_path / "r.json", tmp_path / "j.xml"
    res = fleetshard("run", "-i", inv, "--json-report", js, "--junit", junit)
    assert res.code == 0, res.out + res.err
    assert "history" in res.out + res.err and "corrupt" in (res.out + res.err).lower()
    assert json.loads(js.read_text())["exit_code"] == 0 and junit.exists()
    hist = fleetshard("history", "-i", inv)
    assert hist.code == 2 and "corrupt" in hist.err.lower() and "Traceback" not in hist.err
    fs.cleanup()
