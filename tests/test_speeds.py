"""Machine speeds with certainty: learned only from evidence that can show them, never bet on blindly."""

from __future__ import annotations

import math
import statistics

import pytest

from fleetshard.model import MachineSlots, Shard
from fleetshard.planning import lpt_assign
from fleetshard.speeds import CERTAIN_SE, Sample, estimate_speeds, whole_files

NAMES = ["h1", "h2", "h3", "h4"]
SLOWNESS = {"h1": 1.0, "h2": 1.0, "h3": 2.0, "h4": 3.0}


def honest_runs(n_runs: int, files: int = 12) -> list[Sample]:
    """Each run puts every file on one machine, rotating, so across runs files meet several machines."""
    out = []
    for r in range(n_runs):
        for i in range(files):
            machine = NAMES[(i + r) % 4]
            work = 0.2 + 0.1 * i
            noise = 1.0 + 0.1 * math.sin(7 * i + 3 * r)        # ±10 %, deterministic
            out.append(Sample(f"r{r}", f"t{i}.py", machine, work * SLOWNESS[machine] * noise))
    return out


def confounded_run() -> list[Sample]:
    """One run where h4 looks fast: it ran copies of files late, on an idle host, while h1-h3 ran them
    early under contention (the same files on several machines, in the same run)."""
    out = []
    for i in range(6):
        out += [Sample("r0", f"t{i}.py", "h1", 2.0), Sample("r0", f"t{i}.py", "h2", 2.1),
                Sample("r0", f"t{i}.py", "h3", 3.0), Sample("r0", f"t{i}.py", "h4", 1.1)]
    return out


def test_nothing_known_is_one_and_uncertain() -> None:
    est = estimate_speeds(NAMES)
    assert {e.speed for e in est.values()} == {1.0}
    assert not any(e.certain for e in est.values())
    assert all(e.source == "default" for e in est.values())


def test_one_confounded_run_cannot_make_a_slow_machine_look_fast() -> None:
    calibrated = {"h1": 1.0, "h2": 1.0, "h3": 0.5, "h4": 0.33}       # what the CPU loop saw
    est = estimate_speeds(NAMES, confounded_run(), calibrated=calibrated)
    assert est["h4"].speed < est["h1"].speed and est["h4"].speed < est["h2"].speed
    assert est["h4"].planning < 0.6 * min(est["h1"].planning, est["h2"].planning)
    # the same with the inventory's declared speeds
    est = estimate_speeds(NAMES, confounded_run(), declared=calibrated)
    assert est["h4"].speed < 0.6 * est["h1"].speed
    # and with nothing else known the run's verdict stands, but only as an uncertain one
    blind = estimate_speeds(NAMES, confounded_run())
    assert not blind["h4"].certain and blind["h4"].comparisons == 6 and blind["h4"].runs == 1


def test_the_plan_does_not_bet_its_tail_on_an_uncertain_speed() -> None:
    blind = estimate_speeds(["h1", "h4"], [Sample("r0", "a.py", "h1", 2.0), Sample("r0", "a.py", "h4", 1.6)])
    # h4 looked a little faster once; h1 looked slower once: neither is certain, and h1 is the safe bet
    # only if its evidence is stronger. Give h1 a declared speed: its evidence is stronger.
    est = estimate_speeds(["h1", "h4"], [Sample("r0", "a.py", "h1", 2.0), Sample("r0", "a.py", "h4", 1.6)],
                          declared={"h1": 1.0})
    assert est["h1"].se < est["h4"].se and not blind["h4"].certain
    slots = [MachineSlots(n, 1, est[n].planning) for n in ("h1", "h4")]
    shards = [Shard("s001", 1, 3, ("long.py",), 10.0), Shard("s002", 2, 3, ("a.py",), 1.0),
              Shard("s003", 3, 3, ("b.py",), 1.0)]
    assert lpt_assign(shards, slots)["s001"] == "h1"


def test_runs_that_agree_make_speeds_certain_and_right() -> None:
    est = estimate_speeds(NAMES, honest_runs(4))
    for name, slowness in SLOWNESS.items():
        assert est[name].speed == pytest.approx(1 / slowness, rel=0.15), name
        assert est[name].certain and est[name].source == "history" and est[name].runs == 4
    # ... and they outvote a wrong declaration
    wrong = estimate_speeds(NAMES, honest_runs(4), declared={"h4": 1.0})
    assert wrong["h4"].speed < 0.5


def test_more_files_do_not_stand_in_for_more_runs() -> None:
    two = estimate_speeds(NAMES, honest_runs(2, files=40))
    many = estimate_speeds(NAMES, honest_runs(6, files=12))
    assert two["h4"].se > many["h4"].se
    assert many["h4"].se <= CERTAIN_SE


def test_declared_and_calibrated_speeds_are_brought_to_the_learned_scale() -> None:
    # learned speeds are relative to the median machine; declared ones to whatever the user meant
    est = estimate_speeds([*NAMES, "new"], honest_runs(4), declared={"h1": 10.0, "new": 5.0})
    assert est["new"].speed == pytest.approx(0.5, rel=0.2) and est["new"].source == "declared"


def test_describe() -> None:
    est = estimate_speeds(["a"], declared={"a": 2.0})["a"]
    assert est.describe().startswith("2 ±22% (declared)")


def test_calibration_is_brought_to_the_declared_scale() -> None:
    # h4 declared 0.33 (the user's scale); the CPU loop saw h1 three times faster than h4
    est = estimate_speeds(["h1", "h4"], declared={"h4": 0.33}, calibrated={"h1": 1.5, "h4": 0.5})
    assert est["h1"].speed == pytest.approx(0.99) and est["h1"].source == "calibration"
    assert est["h4"].speed == pytest.approx(0.33) and est["h4"].source == "declared"


def test_planning_speeds_never_bet_on_an_uncertain_fast_machine() -> None:
    from fleetshard.session import planning_speeds

    # h1, h2 unknown (1.0, very uncertain), h3 and h4 declared slow: the user's knowledge stands
    est = estimate_speeds(NAMES, declared={"h3": 0.5, "h4": 0.33})
    assert planning_speeds(est) == {"h1": 1.0, "h2": 1.0, "h3": 0.5, "h4": 0.33}
    # one confounded run says h4 is fast: above the median it is planned no faster than the median
    blind = estimate_speeds(NAMES, confounded_run())
    plan = planning_speeds(blind)
    median = statistics.median(e.speed for e in blind.values())
    assert blind["h4"].speed > 1.5 and median <= plan["h4"] < 1.1 * median
    # runs that agree: certain speeds are planned as measured
    honest = estimate_speeds(NAMES, honest_runs(6))
    assert planning_speeds(honest)["h4"] == honest["h4"].speed


def test_a_file_split_between_machines_in_one_run_shows_no_speed() -> None:
    # Native --shard of one fullyParallel spec: every run, each machine runs a different third of the file.
    # h3's third happens to hold the slow tests; that is the partition, not h3.
    split = [Sample(f"r{r}", "demo.spec.ts", m, d) for r in range(5)
             for m, d in (("h1", 30.0), ("h2", 30.0), ("h3", 60.0))]
    assert whole_files(split) == []
    assert estimate_speeds(["h1", "h2", "h3"], whole_files(split))["h3"].source == "default"
    # whole files that meet other machines in other runs still count, and so do the runs' other files
    rotated = honest_runs(3)
    assert whole_files(rotated) == rotated
    assert whole_files([*split, *rotated]) == rotated
