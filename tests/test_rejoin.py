"""Machines that come back, in the pure scheduler: a lost machine, or one left out at the start, joins
with MachineJoined and takes work; a drained one stays out."""

from __future__ import annotations

from fleetshard.events import MachineStatus
from fleetshard.model import MachineSlots, RetryPolicy, Shard
from fleetshard.scheduler import Launch, MachineJoined, Scheduler, Start


def shards(n: int) -> list[Shard]:
    return [Shard(id=f"s{i}", index=i, total=n, files=(f"t{i}",)) for i in range(1, n + 1)]


def launches_on(decisions: list[object], machine: str) -> list[Launch]:
    return [d for d in decisions if isinstance(d, Launch) and d.machine == machine]


def test_a_machine_left_out_at_the_start_joins() -> None:
    sched = Scheduler(shards(4), [MachineSlots("a", 1)], RetryPolicy())
    first = sched.on(Start(at=0.0))
    assert len(launches_on(first, "a")) == 1
    joined = sched.on(MachineJoined(MachineSlots("b", 2), at=5.0))
    assert len(launches_on(joined, "b")) == 2
    assert any(isinstance(f, MachineStatus) and f.machine == "b" and f.status == "healthy"
               for f in sched.take_facts())


def test_a_lost_machine_rejoins_but_a_drained_one_does_not() -> None:
    sched = Scheduler(shards(6), [MachineSlots("a", 1), MachineSlots("b", 1), MachineSlots("c", 1)],
                      RetryPolicy())
    sched.on(Start(at=0.0))
    sched.on(MachineStatus("b", "lost", "connection reset", 1.0))
    sched.on(MachineStatus("c", "drained", "setup failed", 1.0))
    assert launches_on(sched.on(MachineJoined(MachineSlots("c", 1), at=2.0)), "c") == []
    back = sched.on(MachineJoined(MachineSlots("b", 3), at=3.0))
    assert len(launches_on(back, "b")) == 2        # its lost attempt holds a slot until it reports
