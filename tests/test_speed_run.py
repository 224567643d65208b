"""Machine speeds on the real sshd fleet: the CPU calibration sees a machine that is really slow (its sshd
runs under a CPU quota), and `fleetshard plan` says how each speed was settled."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from clihelp import fleetshard
from fleet import MakeFleet, SshFleet, WriteInventory


def planned_speeds(out: str) -> dict[str, float]:
    line = next(x for x in out.splitlines() if x.startswith("machines:"))
    return {m: float(v) for m, v in re.findall(r"(h\d) \(\d+ slots?, speed ([0-9.]+)\)", line)}


def test_calibration_sees_a_cpu_limited_machine(make_fleet: MakeFleet, tmp_path: Path) -> None:
    f = make_fleet(2, speeds=[1, 6])                          # h2 has a sixth of a core
    if not f.cgroups:
        pytest.skip("no CPU quotas here: slow machines only sleep longer, which a CPU loop cannot see")
    inv = f.write_inventory(tmp_path / "machines.yaml", slots=1, suite={"command": "true", "shards": 2})
    plan = fleetshard("plan", "-i", inv)
    assert plan.code == 0, plan.out + plan.err
    speeds = planned_speeds(plan.out)
    assert speeds["h2"] < 0.6 * speeds["h1"], plan.out
    assert "(CPU calibration)" in plan.out and "learned from too few runs is planned slower" in plan.out


def test_declared_speeds_skip_the_calibration(fleet: SshFleet, fleet_inventory: WriteInventory) -> None:
    inv = fleet_inventory(machines=["h1", "h4"], slots=1, suite={"command": "true", "shards": 2},
                          extra_machine_keys={"h1": {"speed": 1.0}, "h4": {"speed": 0.33}})
    plan = fleetshard("plan", "-i", inv)
    assert plan.code == 0, plan.out + plan.err
    assert "CPU calibration" not in plan.out and "(declared)" in plan.out
    assert planned_speeds(plan.out) == {"h1": 1.0, "h4": 0.33}


def test_first_run_speculation_rescues_the_tail_on_a_slow_machine(make_fleet: MakeFleet, tmp_path: Path) -> None:
    """Nothing declared, no history: the run's own pacing shows h2 is slow, and an idle h1 copies its shard."""
    f = make_fleet(2, speeds=[1, 5])
    inv = f.write_inventory(tmp_path / "machines.yaml", slots=1,
                            suite={"command": "sleep $FLEETSHARD_TEST_SPEED", "shards": 3, "kill_grace": 1})
    js = tmp_path / "r.json"
    res = fleetshard("run", "-i", inv, "--speculate", "--json-report", js)
    assert res.code == 0, res.out + res.err
    data = json.loads(js.read_text())
    copies = [a for a in data["attempts"] if a["speculative"]]
    assert [(a["machine"], a["outcome"]) for a in copies] == [("h1", "passed")], data["attempts"]
    original = [a for a in data["attempts"] if a["shard_id"] == copies[0]["shard_id"] and not a["speculative"]]
    assert [(a["machine"], a["outcome"]) for a in original] == [("h2", "cancelled")]
    assert {s["state"] for s in data["shards"]} == {"passed"}
    assert f.wait_no_processes(5) == []
