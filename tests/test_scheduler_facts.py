"""What the scheduler settles for the views: machine statuses (it alone decides them) and shard states."""

from __future__ import annotations

from fleetshard.events import MachineStatus, ShardFinished, ShardSettled
from fleetshard.model import MachineHealth, MachineSlots, Outcome, RetryPolicy, Shard
from fleetshard.scheduler import Launch, RetryDue, Scheduler, Start, Tick

SHARDS = [Shard(id=f"s{i:03d}", index=i, total=3) for i in range(1, 4)]
MACHINES = [MachineSlots("a", 1), MachineSlots("b", 1)]


def finished(launch: Launch, outcome: Outcome, at: float, reason: str = "") -> ShardFinished:
    return ShardFinished(machine=launch.machine, shard=launch.shard, attempt=launch.attempt, outcome=outcome,
                         exit_status=0 if outcome is Outcome.PASSED else 255, signal=None, reason=reason,
                         started_at=at - 1, at=at, log_path="")


def launches(decisions: list[object]) -> list[Launch]:
    return [d for d in decisions if isinstance(d, Launch)]


def test_infra_failure_degrades_then_a_good_probe_rejoins() -> None:
    sched = Scheduler(SHARDS, MACHINES, RetryPolicy(drain_after=3, backoff_base=0.0))
    first = launches(sched.on(Start(0.0)))
    on_a = next(x for x in first if x.machine == "a")
    sched.on(finished(on_a, Outcome.INFRA_FAILED, 1.0, "connection lost"))
    assert sched.take_facts()[0] == MachineStatus("a", "degraded", "connection lost", 1.0)
    assert sched.machine_health("a") is MachineHealth.DEGRADED
    sched.on(MachineStatus("a", "healthy", "", 2.0))
    assert sched.take_facts() == [MachineStatus("a", "healthy", "", 2.0)]


def test_no_machine_healthy_for_patience_loses_the_unhealthy_ones() -> None:
    sched = Scheduler(SHARDS, MACHINES, RetryPolicy(), patience=60.0)
    sched.on(Start(0.0))
    for name in ("a", "b"):
        sched.on(MachineStatus(name, "unhealthy", "load 9", 1.0))
    sched.take_facts()
    sched.on(Tick(2.0))
    sched.on(Tick(61.0))
    assert sched.machine_health("a") is MachineHealth.UNHEALTHY
    sched.on(Tick(62.0))
    facts = sched.take_facts()
    assert [f for f in facts if isinstance(f, MachineStatus)] == [
        MachineStatus("a", "lost", "unhealthy for 60 s: load 9", 62.0),
        MachineStatus("b", "lost", "unhealthy for 60 s: load 9", 62.0)]


def test_settled_shards_carry_state_flaky_and_reason() -> None:
    sched = Scheduler(SHARDS[:1], MACHINES[:1], RetryPolicy(retry_failed_tests=1))
    [first] = launches(sched.on(Start(0.0)))
    sched.on(finished(first, Outcome.TESTS_FAILED, 1.0, "exit code 1"))
    assert [f for f in sched.take_facts() if isinstance(f, ShardSettled)] == []      # a retry follows
    [again] = launches(sched.on(RetryDue("s001", 1.0)))
    sched.on(finished(again, Outcome.PASSED, 2.0))
    assert [f for f in sched.take_facts() if isinstance(f, ShardSettled)] == [
        ShardSettled(SHARDS[0], "passed", True, "", 2.0)]
