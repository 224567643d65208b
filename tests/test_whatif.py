"""What if: a recorded run simulated on other machines (pure), and `fleetshard plan --what-if` after a real
run on the sshd fleet."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from clihelp import fleetshard
from fakesuite import FakeSuite, specs
from fleet import SshFleet, WriteInventory

from fleetshard.errors import UsageError
from fleetshard.record import AttemptRecord, MachineRecord, RunRecord, ShardRecord
from fleetshard.whatif import Change, apply_changes, parse_changes, recorded_work, run_machines, what_if


def record() -> RunRecord:
    """h1 (2 slots, speed 1) and h2 (1 slot, speed 2); four shards of 10 s of work each."""
    machines = [MachineRecord("h1", 2, 1.0, "healthy"), MachineRecord("h2", 1, 2.0, "healthy"),
                MachineRecord("h3", 0, 1.0, "unreachable")]
    shards = [ShardRecord(f"s{i}", i, 5, [f"t{i}"], None, "passed") for i in range(1, 5)]
    shards.append(ShardRecord("s5", 5, 5, ["t5"], 7.0, "not-run", reason="no machine"))
    attempts = [AttemptRecord("s1", 1, "h1", "passed", 0, 11), AttemptRecord("s2", 1, "h1", "passed", 0, 11),
                AttemptRecord("s3", 1, "h2", "infra-failed", 0, 1), AttemptRecord("s3", 2, "h2", "passed", 1, 7),
                AttemptRecord("s4", 1, "h2", "passed", 7, 13)]
    return RunRecord(run_id="r1", started=0, ended=14, argv=[], inventory="i", strategy="dynamic", mode="files",
                     command="c", exit_code=3, machines=machines, shards=shards, attempts=attempts)


SPEEDS = {"h1": 1.0, "h2": 2.0}
STARTUP = {"h1": 1.0, "h2": 1.0}


def test_work_is_the_deciding_attempts_time_less_start_up_times_speed() -> None:
    shards, notes = recorded_work(record(), SPEEDS, STARTUP)
    assert {s.id: s.expected for s in shards} == {"s1": 10.0, "s2": 10.0, "s3": 10.0, "s4": 10.0, "s5": 7.0}
    assert notes == ["s5: no finished attempt, its planned duration is used"]
    assert [m.name for m in run_machines(record(), SPEEDS, STARTUP)] == ["h1", "h2"]   # h3 took no work


def test_fewer_machines_take_longer_more_take_less_and_never_below_the_bound() -> None:
    base = what_if(record(), [], speeds=SPEEDS, startup=STARTUP)
    assert base.scenario is None and base.actual_makespan == 13
    assert base.baseline.makespan >= base.baseline.lower_bound > 0
    without = what_if(record(), parse_changes(["without:h2"]), speeds=SPEEDS, startup=STARTUP)
    assert without.scenario is not None and without.scenario.makespan > base.baseline.makespan
    assert [m.name for m in without.scenario.machines] == ["h1"]
    more = what_if(record(), parse_changes(["like:h2=h9", "slots:h1=4"]), speeds=SPEEDS, startup=STARTUP)
    assert more.scenario is not None and more.scenario.makespan < base.baseline.makespan
    assert more.scenario.makespan >= more.scenario.lower_bound
    assert more.ratio is not None and more.ratio < 1
    assert more.changes == ("like:h2=h9", "slots:h1=4")


def test_like_takes_either_order_and_speed_changes_one_machine() -> None:
    machines = run_machines(record(), SPEEDS, STARTUP)
    for change in ("like:h2=new", "like:new=h2"):
        fleet = apply_changes(machines, parse_changes([change]))
        assert fleet[-1].name == "new" and (fleet[-1].slots, fleet[-1].speed) == (1, 2.0)
    fast = apply_changes(machines, parse_changes(["speed:h1=4"]))
    assert fast[0].speed == 4.0 and fast[1].speed == 2.0


def test_no_machine_left_means_no_finish() -> None:
    result = what_if(record(), parse_changes(["without:h1,without:h2"]), speeds=SPEEDS, startup=STARTUP)
    assert result.scenario is not None and math.isinf(result.scenario.makespan)


@pytest.mark.parametrize(("spec", "message"), [
    ("with:h1", "expected one of"), ("without:", "expected without:NAME"), ("slots:h1", "expected slots:NAME"),
    ("slots:h1=0", "positive whole"), ("slots:h1=2.5", "positive whole"), ("speed:h1=-1", "positive number"),
    ("speed:h1=fast", "positive number")])
def test_bad_changes_are_usage_errors(spec: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_changes([spec])


@pytest.mark.parametrize(("spec", "message"), [
    ("without:h9", "no machine 'h9' in the run"), ("like:h1=h2", "both machines"), ("like:a=b", "no machine 'a'")])
def test_changes_name_machines_of_the_run(spec: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        apply_changes(run_machines(record(), SPEEDS, STARTUP), parse_changes([spec]))


def test_change_text_round_trips() -> None:
    for text in ("without:h1", "like:h1=h5", "slots:h1=8", "speed:h2=1.5"):
        assert [str(c) for c in parse_changes([text])] == [text]
    assert parse_changes(["without:a, slots:b=2", "like:a=c"]) == [
        Change("without", "a"), Change("slots", "b", value=2), Change("like", "a", other="c")]


def test_plan_what_if_after_a_real_run(fleet: SshFleet, fleet_inventory: WriteInventory, tmp_path: Path) -> None:
    fs = FakeSuite(tmp_path, fleet.root, specs(8, 0.2))
    inv = fleet_inventory(slots=1, suite=fs.suite())
    none_yet = fleetshard("plan", "-i", inv, "--what-if", "without:h2")
    assert none_yet.code == 2 and "needs a recorded run" in none_yet.err
    assert fleetshard("run", "-i", inv).code == 0
    res = fleetshard("plan", "-i", inv, "--what-if", "without:h2,without:h3", "--what-if", "slots:h1=2")
    assert res.code == 0, res.out + res.err
    assert "simulation from recorded durations" in res.out
    assert "as it ran:" in res.out and "same machines: expected makespan" in res.out
    assert "with changes: expected makespan" in res.out and "[without:h2, without:h3, slots:h1=2]" in res.out
    assert "h1 (2 slots" in res.out and "h2 (" not in res.out.split("with changes")[1]
    bad = fleetshard("plan", "-i", inv, "--what-if", "without:h9")
    assert bad.code == 2 and "no machine 'h9' in the run" in bad.err and "Traceback" not in bad.err
    fs.cleanup()
