"""Planning on synthetic, seeded durations: lower bound, LPT, dynamic queue, GSS shards, estimates."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from fleetshard.model import MachineSlots, Shard
from fleetshard.planning import (
    Estimates,
    assign_static,
    build_shards,
    choose_native_count,
    expected_durations,
    lower_bound,
    lpt_assign,
    native_shards,
    native_why,
    order_for_queue,
    simulate,
)

MIXED = [MachineSlots("a", 4, 1.0), MachineSlots("b", 6, 1.0),
         MachineSlots("c", 1, 0.5), MachineSlots("d", 1, 0.33)]
BIG = [MachineSlots("moruk", 24, 1.0), MachineSlots("ilko2", 8, 1.0), MachineSlots("pi", 4, 0.3)]


def skewed(seed: int, n: int = 96, sigma: float = 1.0) -> list[float]:
    rng = random.Random(seed)
    return [10.0 * rng.lognormvariate(0.0, sigma) for _ in range(n)]


def one_file_shards(durations: list[float]) -> list[Shard]:
    n = len(durations)
    return [Shard(f"s{i + 1:03d}", i + 1, n, (f"t{i}.py",), d) for i, d in enumerate(durations)]


def count_split_makespan(durations: list[float], machines: list[MachineSlots]) -> float:
    """What peers do: contiguous equal-count chunks, one per slot, blind to durations and speed."""
    slots = [m for m in machines for _ in range(m.slots)]
    n, k = len(durations), len(slots)
    chunks = [durations[i * n // k:(i + 1) * n // k] for i in range(k)]
    return max(sum(c) / m.speed for c, m in zip(chunks, slots, strict=True))


def lpt_makespan(durations: list[float], machines: list[MachineSlots]) -> float:
    shards = one_file_shards(durations)
    return simulate(order_for_queue(shards), machines, strategy="static",
                    assignment=lpt_assign(shards, machines)).makespan


# ------------------------------------------------------------------------------------------ lower bound

def test_lower_bound_is_work_over_capacity() -> None:
    # capacity 4 + 6 + 0.5 + 0.33 = 10.83
    assert lower_bound([10.0] * 13, MIXED) == pytest.approx(130 / 10.83)


def test_lower_bound_is_longest_item_on_fastest_machine() -> None:
    assert lower_bound([100.0, 1.0, 1.0], MIXED) == pytest.approx(100.0)
    assert lower_bound([10.0], [MachineSlots("slow", 8, 0.5)]) == pytest.approx(20.0)


def test_lower_bound_edge_cases() -> None:
    assert lower_bound([], MIXED) == 0.0
    assert lower_bound([1.0], []) == math.inf


def test_no_simulated_schedule_beats_the_lower_bound() -> None:
    for seed in range(20):
        d = skewed(seed)
        lb = lower_bound(d, MIXED)
        shards = one_file_shards(d)
        for strategy in ("static", "dynamic"):
            assert simulate(shards, MIXED, strategy=strategy).makespan >= lb * (1 - 1e-9)


# ------------------------------------------------------------------------------------------------- LPT

@pytest.mark.parametrize("machines", [MIXED, BIG], ids=["4-6-1-1", "24-8-4"])
def test_lpt_is_within_8_percent_of_the_lower_bound(machines: list[MachineSlots]) -> None:
    ratios = [lpt_makespan(d, machines) / lower_bound(d, machines) for d in map(skewed, range(30))]
    assert max(ratios) <= 1.08, ratios


@pytest.mark.parametrize("machines", [MIXED, BIG], ids=["4-6-1-1", "24-8-4"])
def test_lpt_never_worse_than_count_based_splitting(machines: list[MachineSlots]) -> None:
    for seed in range(200):
        d = skewed(seed, n=random.Random(seed).randint(20, 150), sigma=1.3)
        assert lpt_makespan(d, machines) <= count_split_makespan(d, machines) + 1e-9, seed


def test_lpt_assignment_matches_simulated_schedule() -> None:
    d = skewed(7)
    shards = one_file_shards(d)
    plan = lpt_assign(shards, MIXED)
    sim = simulate(order_for_queue(shards), MIXED, strategy="static", assignment=plan)
    assert {p.shard_id: p.machine for p in sim.placements} == plan
    assert set(plan) == {s.id for s in shards}


# ---------------------------------------------------------------------------------------------- dynamic

def test_dynamic_longest_first_is_close_to_the_lower_bound() -> None:
    ratios = []
    for seed in range(30):
        d = skewed(seed)
        shards = order_for_queue(one_file_shards(d))
        ratios.append(simulate(shards, MIXED, strategy="dynamic").makespan / lower_bound(d, MIXED))
    assert statistics.mean(ratios) <= 1.06
    assert max(ratios) <= 1.10


def test_dynamic_longest_first_beats_input_order_on_average() -> None:
    lf, io = [], []
    for seed in range(30):
        d = skewed(seed)
        shards = one_file_shards(d)
        lf.append(simulate(order_for_queue(shards), MIXED, strategy="dynamic").makespan)
        io.append(simulate(shards, MIXED, strategy="dynamic").makespan)
    assert statistics.mean(lf) < statistics.mean(io)


def test_simulation_respects_slots_speed_and_startup() -> None:
    machines = [MachineSlots("fast", 2, 2.0, startup=1.0), MachineSlots("slow", 1, 0.5)]
    shards = [Shard(f"s{i}", i, 4, (), 10.0) for i in range(1, 5)]
    sim = simulate(shards, machines, strategy="dynamic")
    # fast fills first (speed order): two shards 0..6, then slow takes s3 0..20, fast takes s4 6..12
    by_id = {p.shard_id: p for p in sim.placements}
    assert by_id["s1"] == ("s1", "fast", 0.0, 6.0)
    assert by_id["s3"] == ("s3", "slow", 0.0, 20.0)
    assert by_id["s4"].machine == "fast" and by_id["s4"].end == pytest.approx(12.0)
    assert sim.makespan == pytest.approx(20.0)
    assert sim.busy["fast"] == pytest.approx(18.0)
    assert sim.finish["fast"] == pytest.approx(12.0)
    for m in machines:
        for t in [p.start for p in sim.placements]:
            running = [p for p in sim.placements if p.machine == m.name and p.start <= t < p.end]
            assert len(running) <= m.slots


def test_simulation_with_unknown_durations_is_flagged() -> None:
    sim = simulate(native_shards(4, MIXED), MIXED, strategy="dynamic")
    assert not sim.known
    assert len(sim.placements) == 4


# --------------------------------------------------------------------------------------- static assign

def test_assign_static_is_core_weighted_by_work() -> None:
    d = skewed(3)
    shards = one_file_shards(d)
    plan = assign_static(shards, MIXED)
    work = {m.name: 0.0 for m in MIXED}
    for s in shards:
        work[plan[s.id]] += s.expected or 0.0
    total = sum(d)
    cap = sum(m.slots * m.speed for m in MIXED)
    for m in MIXED:
        assert work[m.name] / total == pytest.approx(m.slots * m.speed / cap, abs=0.05)


def test_assign_static_unknown_durations_by_count() -> None:
    shards = native_shards(20, [MachineSlots("a", 4), MachineSlots("b", 1)])
    plan = assign_static(shards, [MachineSlots("a", 4), MachineSlots("b", 1)])
    assert list(plan.values()).count("a") == 16
    assert list(plan.values()).count("b") == 4


# ------------------------------------------------------------------------------------------- estimates

def test_unseen_files_get_the_median_of_known_ones() -> None:
    est = expected_durations(["a", "b", "c", "new"], {"a": 1.0, "b": 3.0, "c": 10.0, "gone": 99.0})
    assert est.source == "history" and est.real
    assert est.durations == {"a": 1.0, "b": 3.0, "c": 10.0, "new": 3.0}


def test_file_size_fallback_has_mean_one() -> None:
    est = expected_durations(["a", "b", "c"], {}, sizes={"a": 100, "b": 300, "c": 800})
    assert est.source == "filesize" and not est.real
    assert est.durations["c"] == pytest.approx(2.0)
    assert statistics.mean(est.durations.values()) == pytest.approx(1.0)
    # history wins over sizes
    assert expected_durations(["a"], {"a": 5.0}, sizes={"a": 10}).source == "history"


def test_uniform_when_nothing_is_known() -> None:
    est = expected_durations(["a", "b"], {"other": 3.0})
    assert est == Estimates({"a": 1.0, "b": 1.0}, "uniform")


# ---------------------------------------------------------------------------------------- build shards

def files_and_estimates(seed: int, n: int = 96) -> tuple[list[str], dict[str, float]]:
    d = skewed(seed, n)
    files = [f"tests/test_{i:03d}.py" for i in range(n)]
    return files, dict(zip(files, d, strict=True))


def check_partition(files: list[str], shards: list[Shard]) -> None:
    seen = [f for s in shards for f in s.files]
    assert sorted(seen) == sorted(files)
    assert [s.id for s in shards] == [f"s{i:03d}" for i in range(1, len(shards) + 1)]
    assert [s.index for s in shards] == list(range(1, len(shards) + 1))
    assert all(s.total == len(shards) for s in shards)
    for s in shards:                                    # deterministic order inside a shard: input order
        assert list(s.files) == sorted(s.files, key=files.index)


@pytest.mark.parametrize("n", [1, 5, 12, 40])
def test_explicit_shard_count_is_honoured(n: int) -> None:
    files, est = files_and_estimates(1)
    plan = build_shards(files, est, MIXED, shards=n)
    assert len(plan.shards) == n
    check_partition(files, plan.shards)
    assert "as requested" in plan.why
    for s in plan.shards:
        assert s.expected == pytest.approx(sum(est[f] for f in s.files))


def test_explicit_shard_count_is_balanced() -> None:
    files, est = files_and_estimates(2)
    plan = build_shards(files, est, MIXED, shards=8)
    loads = [s.expected or 0.0 for s in plan.shards]
    assert max(loads) <= max(sum(loads) / 8, max(est.values())) * 1.05


def test_more_shards_than_files_gives_one_per_file() -> None:
    plan = build_shards(["a", "b"], {"a": 1.0, "b": 2.0}, MIXED, shards=5)
    assert len(plan.shards) == 2
    assert plan.shards[0].files == ("b",)


def by_size(est: dict[str, float]) -> Estimates:
    """Weights that are not seconds (a first run): the planner uses guided self-scheduling."""
    return Estimates(durations=est, source="filesize")


def test_gss_shard_sizes_are_non_increasing() -> None:
    for seed in range(20):
        files, est = files_and_estimates(seed, n=random.Random(seed).randint(10, 400))
        plan = build_shards(files, by_size(est), MIXED)
        sizes = [sum(est[f] for f in s.files) for s in plan.shards]
        assert sizes == sorted(sizes, reverse=True)
        check_partition(files, plan.shards)
        assert "guided self-scheduling" in plan.why


def test_gss_batches_small_files_and_shrinks_toward_the_end() -> None:
    files = [f"t{i}.py" for i in range(200)]
    plan = build_shards(files, by_size({f: 1.0 for f in files}), [MachineSlots("a", 4)])
    counts = [len(s.files) for s in plan.shards]
    assert counts[0] > 10 and counts[-1] == 1
    assert counts == sorted(counts, reverse=True)
    assert len(plan.shards) < len(files) // 3


def test_planned_shards_amortise_the_startup_cost() -> None:
    files = [f"t{i}.py" for i in range(200)]
    est = {f: 1.0 for f in files}
    cheap = build_shards(files, est, [MachineSlots("a", 4)])
    costly = build_shards(files, est, [MachineSlots("a", 4, startup=0.5)])
    assert len(costly.shards) < len(cheap.shards)
    assert all((s.expected or 0.0) >= 5 for s in costly.shards)
    assert "start-up" in costly.why
    check_partition(files, costly.shards)


def test_planned_shards_on_skewed_durations_come_close_to_the_lower_bound() -> None:
    machines = [MachineSlots(m.name, m.slots, m.speed, startup=0.5) for m in MIXED]
    for seed in range(10):
        files, est = files_and_estimates(seed)
        plan = build_shards(files, est, machines)
        check_partition(files, plan.shards)
        assert len(plan.shards) < len(files)
        sim = simulate(order_for_queue(plan.shards), machines, strategy="static",
                       assignment=lpt_assign(plan.shards, machines))
        assert sim.makespan <= 1.08 * lower_bound(list(est.values()), MIXED)


def test_gss_on_skewed_durations_simulates_close_to_the_lower_bound() -> None:
    for seed in range(10):
        files, est = files_and_estimates(seed)
        plan = build_shards(files, by_size(est), MIXED)
        queue = [Shard(s.id, s.index, s.total, s.files, sum(est[f] for f in s.files)) for s in plan.shards]
        sim = simulate(queue, MIXED, strategy="dynamic")
        assert sim.makespan <= 1.15 * lower_bound(list(est.values()), MIXED)


@pytest.mark.parametrize("machines", [MIXED, BIG], ids=["4-6-1-1", "24-8-4"])
def test_static_auto_is_one_shard_per_slot_sized_to_speed(machines: list[MachineSlots]) -> None:
    slots = sum(m.slots for m in machines)
    for seed in range(10):
        files, est = files_and_estimates(seed)
        plan = build_shards(files, est, machines, strategy="static")
        assert len(plan.shards) == slots and "one per slot" in plan.why
        check_partition(files, plan.shards)
        sim = simulate(plan.shards, machines, strategy="static", assignment=assign_static(plan.shards, machines))
        assert sim.makespan <= 1.08 * lower_bound(list(est.values()), machines)


def test_file_size_weights_shape_shards_but_are_not_seconds() -> None:
    files = ["big.py", "small1.py", "small2.py", "small3.py"]
    est = expected_durations(files, {}, sizes={"big.py": 3000, "small1.py": 1000, "small2.py": 1000,
                                               "small3.py": 1000})
    plan = build_shards(files, est, MIXED, shards=2)
    assert [s.files for s in plan.shards] == [("big.py",), ("small1.py", "small2.py", "small3.py")]
    assert all(s.expected is None for s in plan.shards)
    assert plan.source == "filesize" and "file sizes" in plan.why


def test_build_shards_is_deterministic_and_handles_empty() -> None:
    files, est = files_and_estimates(5)
    assert build_shards(files, est, MIXED) == build_shards(files, est, MIXED)
    assert build_shards([], {}, MIXED).shards == []
    with pytest.raises(ValueError):
        build_shards(files, est, MIXED, shards=0)


# ----------------------------------------------------------------------------------------------- native

def test_native_shard_counts() -> None:
    assert len(native_shards(None, MIXED, "static")) == 12
    assert len(native_shards(None, MIXED, "dynamic")) == 12          # no history: one per slot
    assert len(native_shards(None, BIG, "dynamic")) == 36
    assert len(native_shards(None, [MachineSlots("huge", 100)], "dynamic")) == 100
    assert len(native_shards(None, [], "dynamic")) == 1
    shards = native_shards(5, MIXED, "dynamic")
    assert [(s.id, s.index, s.total, s.files, s.expected) for s in shards][-1] == ("s005", 5, 5, (), None)


def test_native_auto_pays_each_startup_once_on_equal_machines() -> None:
    # Playwright-like: 7.5 s of start-up per shard, three equal machines of one slot
    machines = [MachineSlots(n, 1, 1.0, 7.5) for n in ("h1", "h2", "h3")]
    choice = choose_native_count(machines, work=120.0)
    assert choice.count == 3
    assert choice.simulated[3] < choice.simulated[6]
    assert "one per slot" in choice.why and "7.50s" in choice.why
    assert len(native_shards(None, machines, "dynamic", work=120.0)) == 3
    assert "native sharding" in native_why(3, machines, "dynamic", False, work=120.0)


def test_native_auto_adds_shards_only_when_speeds_differ_enough() -> None:
    slow = [MachineSlots("a", 1, 1.0, 1.0), MachineSlots("b", 1, 1.0, 1.0), MachineSlots("c", 1, 0.33, 1.0)]
    choice = choose_native_count(slow, work=60.0)
    assert choice.count > 3 and "extra start-ups" in choice.why
    assert choice.simulated[choice.count] < 0.97 * choice.simulated[3]
    # the same fleet with start-ups that dwarf the work: a slow slot is not worth its start-up
    costly = [MachineSlots(m.name, 1, m.speed, 5.0) for m in slow]
    fewer = choose_native_count(costly, work=20.0)
    assert fewer.count == 2 and "not worth" in fewer.why


def test_native_auto_does_not_bet_extra_startups_on_uncertain_speeds() -> None:
    # One loaded run (or a noisy calibration) made h3 look 3x slower: with that speed taken as certain the
    # count grows past one per slot; taken as uncertain, h3 counts as the median and each start-up is paid once.
    seen = [MachineSlots("h1", 1, 1.0, 1.0), MachineSlots("h2", 1, 1.0, 1.0), MachineSlots("h3", 1, 0.33, 1.0)]
    assert choose_native_count(seen, work=60.0, certain={"h1", "h2", "h3"}).count > 3
    guarded = choose_native_count(seen, work=60.0, certain={"h1", "h2"})
    assert guarded.count == 3 and "one per slot" in guarded.why
    assert len(native_shards(None, seen, "dynamic", work=60.0, certain=set())) == 3
    why = native_why(3, seen, "dynamic", False, work=60.0, certain={"h1", "h2"})
    assert "not known for certain" in why and "h3" in why and why.endswith("native sharding")
    # nor fewer shards than slots on the strength of an uncertain slow speed
    costly = [MachineSlots(m.name, 1, m.speed, 5.0) for m in seen]
    assert choose_native_count(costly, work=20.0).count == 2
    assert choose_native_count(costly, work=20.0, certain=()).count == 3


def test_native_auto_without_history_is_one_per_slot() -> None:
    choice = choose_native_count(MIXED, work=None)
    assert choice.count == 12 and "no history" in choice.why and choice.simulated == {}


def test_collection_counts_beat_file_sizes_on_a_first_run() -> None:
    est = expected_durations(["a.py", "b.py", "c.py"], {}, sizes={"a.py": 1, "b.py": 1000, "c.py": 1},
                             counts={"a.py": 30, "b.py": 3, "c.py": 3})
    assert est.source == "collection" and not est.real
    assert est.durations["a.py"] == pytest.approx(30 / 12) and est.durations["b.py"] == pytest.approx(3 / 12)
    plan = build_shards(["a.py", "b.py", "c.py"], est, [MachineSlots("m", 2)])
    assert "tests per file" in plan.why
    # history still wins
    assert expected_durations(["a.py"], {"a.py": 2.0}, counts={"a.py": 30}).source == "history"


def test_order_for_queue_longest_first_stable() -> None:
    shards = [Shard("x", 1, 4, (), 2.0), Shard("y", 2, 4, (), None), Shard("z", 3, 4, (), 5.0),
              Shard("w", 4, 4, (), 2.0)]
    assert [s.id for s in order_for_queue(shards)] == ["z", "x", "w", "y"]


def test_declared_speeds_are_brought_to_the_learned_scale() -> None:
    from fleetshard.runner import combine_speeds

    # declared: a=2, b=1, c=2; learned (median machine = 1.0): a=1.0, b=0.5; c never measured
    speeds = combine_speeds(["a", "b", "c", "d"], {"a": 1.0, "b": 0.5}, {"a": 2.0, "b": 1.0, "c": 2.0})
    assert speeds == {"a": 1.0, "b": 0.5, "c": 1.0, "d": 0.5}
    assert combine_speeds(["a"], {}, {}) == {"a": 1.0}
    assert combine_speeds(["a", "b"], {}, {"b": 0.3}) == {"a": 1.0, "b": 0.3}


def test_calibration_guesses_only_clear_speed_differences() -> None:
    from fleetshard.probes import HealthReport, calibrated_speeds

    def report(name: str, ms: float | None) -> HealthReport:
        return HealthReport(machine=name, transport="ssh", address=name, reachable=True, healthy=True,
                            calib_ms=ms)

    speeds = calibrated_speeds([report("box", 10.0), report("laptop", 11.5), report("pi", 52.0),
                                report("old", None)])
    assert speeds == {"pi": round(11.5 / 52.0, 2)}
    assert calibrated_speeds([report("one", 10.0)]) == {}


def test_probe_calibrates_on_request() -> None:
    import asyncio

    from fleetshard.inventory import HealthThresholds, Machine
    from fleetshard.probes import probe
    from fleetshard.transport import LocalTransport

    m = Machine(name="here", transport="local")
    plain = asyncio.run(probe(m, LocalTransport(m), HealthThresholds(max_load_per_core=1000)))
    timed = asyncio.run(probe(m, LocalTransport(m), HealthThresholds(max_load_per_core=1000), calibrate=True))
    assert plain.calib_ms is None and timed.calib_ms is not None and timed.calib_ms > 0
