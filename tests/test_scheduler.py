"""The scheduler driven by events, the way a recording fake node drives a scheduler: feed, read decisions."""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from fleetshard.events import MachineStatus, ShardFinished
from fleetshard.model import (
    EXIT_INFRA,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TESTS_FAILED,
    MachineSlots,
    Outcome,
    RetryPolicy,
    Shard,
    ShardState,
)
from fleetshard.scheduler import (
    AttemptRecord,
    Cancel,
    CancelRun,
    Decision,
    Drain,
    Finish,
    Launch,
    NotRun,
    Retry,
    RetryDue,
    Scheduler,
    SchedulerEvent,
    ShardRunning,
    Start,
    Tick,
)


def shards(n: int, expected: Sequence[float | None] | None = None) -> list[Shard]:
    exp = list(expected) if expected is not None else [None] * n
    return [Shard(f"s{i:03d}", i, n, (), exp[i - 1]) for i in range(1, n + 1)]


def finished(launch: Launch, outcome: Outcome, at: float, reason: str = "", started: float = 0.0,
             machine: str | None = None) -> ShardFinished:
    return ShardFinished(machine=machine or launch.machine, shard=launch.shard, attempt=launch.attempt,
                         outcome=outcome, exit_status=0 if outcome == Outcome.PASSED else 1, signal=None,
                         reason=reason, started_at=started, at=at, log_path="",
                         speculative=launch.speculative)


def of(kind: type, decisions: Sequence[Decision]) -> list:  # type: ignore[type-arg]
    return [d for d in decisions if isinstance(d, kind)]


@dataclass
class Driver:
    """Feeds a scheduler, keeps every decision, and tracks what runs where."""

    sched: Scheduler
    log: list[Decision] = field(default_factory=list)
    running: dict[tuple[str, int], Launch] = field(default_factory=dict)

    def on(self, event: SchedulerEvent) -> list[Decision]:
        out = self.sched.on(event)
        self.log.extend(out)
        for d in out:
            if isinstance(d, Launch):
                self.running[(d.shard.id, d.attempt)] = d
        if isinstance(event, ShardFinished):
            self.running.pop((event.shard.id, event.attempt), None)
        return out

    def start(self, at: float = 0.0) -> list[Launch]:
        return of(Launch, self.on(Start(at)))

    def finish(self, launch: Launch, outcome: Outcome = Outcome.PASSED, at: float = 1.0,
               reason: str = "") -> list[Decision]:
        return self.on(finished(launch, outcome, at, reason))

    def on_machine(self, machine: str) -> list[Launch]:
        return [lx for lx in self.running.values() if lx.machine == machine]


def make(n: int, machines: Sequence[MachineSlots], policy: RetryPolicy | None = None,
         expected: Sequence[float | None] | None = None, **kw: object) -> Driver:
    return Driver(Scheduler(shards(n, expected), machines, policy or RetryPolicy(), **kw))  # type: ignore[arg-type]


TWO = [MachineSlots("a", 2), MachineSlots("b", 1)]


# ---------------------------------------------------------------------------------------------- basics

def test_slot_limits_and_queue_order() -> None:
    d = make(5, TWO)
    first = d.start()
    assert [(x.shard.id, x.machine, x.attempt) for x in first] == [
        ("s001", "a", 1), ("s002", "a", 1), ("s003", "b", 1)]
    assert d.sched.state("s004") == ShardState.QUEUED
    assert d.sched.state("s001") == ShardState.RUNNING
    nxt = of(Launch, d.finish(first[2], at=2.0))
    assert [(x.shard.id, x.machine) for x in nxt] == [("s004", "b")]


def test_all_pass_finish_once_with_exit_0() -> None:
    d = make(3, TWO)
    launches = d.start()
    d.on(ShardRunning("s001", 1, "a", 0.5))
    out: list[Decision] = []
    for i, lx in enumerate(launches):
        out = d.finish(lx, at=2.0 + i)
    assert out[-1] == Finish(EXIT_OK)
    assert d.sched.done and d.sched.exit_code == EXIT_OK
    assert of(Finish, d.log) == [Finish(EXIT_OK)]
    assert d.on(Tick(10.0)) == []
    rec = d.sched.records[0]
    assert (rec.queued_at, rec.assigned_at, rec.running_at, rec.ended_at) == (0.0, 0.0, 0.5, 2.0)
    assert rec.outcome == Outcome.PASSED


def test_no_shards_finishes_at_once() -> None:
    d = make(0, TWO)
    assert d.on(Start(0.0)) == [Finish(EXIT_OK)]


def test_no_machines_means_not_run() -> None:
    d = make(2, [])
    out = d.on(Start(0.0))
    assert len(of(NotRun, out)) == 2 and out[-1] == Finish(EXIT_INFRA)
    assert d.sched.not_run["s001"] == "no machine left: no machines"
    d = make(2, [MachineSlots("zero", 0)], strategy="static")
    out = d.on(Start(0.0))
    assert d.sched.not_run["s001"] == "no machine left: zero drained (no slots)"


# ------------------------------------------------------------------------------------- infra failures

def test_infra_failure_requeues_on_another_machine_after_backoff() -> None:
    d = make(1, TWO)
    (lx,) = d.start()
    assert lx.machine == "a"
    out = d.finish(lx, Outcome.INFRA_FAILED, at=1.0, reason="connection lost")
    assert out == [Retry(lx.shard, 2, 5.0, "a", "connection lost")]
    assert d.sched.state("s001") == ShardState.WAITING
    out = d.on(RetryDue("s001", 6.0))
    assert [(x.machine, x.attempt) for x in of(Launch, out)] == [("b", 2)]
    assert d.sched.records[-1].queued_at == 6.0


def test_retry_waits_for_a_slot_elsewhere_rather_than_the_avoided_machine() -> None:
    d = make(4, TWO)
    first = d.start()                       # s001,s002 on a; s003 on b
    d.finish(first[0], Outcome.INFRA_FAILED, at=1.0)     # s001 failed on a; a takes s004
    assert [x.shard.id for x in d.on_machine("a")] == ["s002", "s004"]
    assert of(Launch, d.on(RetryDue("s001", 6.0))) == []
    out = d.finish(first[1], at=7.0)         # a frees a slot: s001 must not go there
    assert of(Launch, out) == []
    out = d.finish(first[2], at=8.0)         # b frees: s001 goes there
    assert [(x.shard.id, x.machine) for x in of(Launch, out)] == [("s001", "b")]


def test_avoided_machine_is_used_when_it_is_the_only_one() -> None:
    d = make(1, [MachineSlots("solo", 1)])
    (lx,) = d.start()
    d.finish(lx, Outcome.TIMED_OUT, at=1.0, reason="timed out after 600s")
    out = d.on(RetryDue("s001", 6.0))
    assert [(x.machine, x.attempt) for x in of(Launch, out)] == [("solo", 2)]


def test_retry_exhaustion_gives_not_run() -> None:
    d = make(1, [MachineSlots("solo", 1)], RetryPolicy(max_retries=2, drain_after=0))
    at = 0.0
    (lx,) = d.start()
    afters = []
    for _ in range(2):
        at += 1
        (retry,) = of(Retry, d.finish(lx, Outcome.INFRA_FAILED, at=at, reason="boom"))
        afters.append(retry.after_s)
        at += retry.after_s
        (lx,) = of(Launch, d.on(RetryDue("s001", at)))
    out = d.finish(lx, Outcome.INFRA_FAILED, at=at + 1, reason="exit 255")
    assert afters == [5.0, 10.0]
    assert out == [NotRun(lx.shard, "infrastructure failure after 3 attempts: exit 255"), Finish(EXIT_INFRA)]
    assert d.sched.state("s001") == ShardState.NOT_RUN


def test_backoff_values() -> None:
    policy = RetryPolicy(max_retries=10, backoff_base=5, backoff_factor=2, backoff_max=30, drain_after=0)
    d = make(1, [MachineSlots("solo", 1)], policy)
    (lx,) = d.start()
    afters = []
    for i in range(6):
        (retry,) = of(Retry, d.finish(lx, Outcome.INFRA_FAILED, at=100.0 * i + 1))
        afters.append(retry.after_s)
        (lx,) = of(Launch, d.on(RetryDue("s001", 100.0 * i + 50)))
    assert afters == [5, 10, 20, 30, 30, 30]


def test_injected_backoff() -> None:
    d = make(1, TWO, backoff=lambda n: 0.5 * n)
    (lx,) = d.start()
    (retry,) = of(Retry, d.finish(lx, Outcome.INFRA_FAILED, at=1.0))
    assert retry.after_s == 0.5


def test_retry_due_for_a_shard_not_waiting_is_ignored() -> None:
    d = make(2, TWO)
    d.start()
    assert d.on(RetryDue("s001", 1.0)) == []
    assert d.on(RetryDue("nope", 1.0)) == []


# ------------------------------------------------------------------------------------------- machines

def test_drain_after_repeated_infra_failures() -> None:
    d = make(6, [MachineSlots("a", 2), MachineSlots("b", 2)], RetryPolicy(drain_after=2))
    first = d.start()
    on_a = [x for x in first if x.machine == "a"]
    out = d.finish(on_a[0], Outcome.INFRA_FAILED, at=1.0)
    assert of(Drain, out) == []
    assert [x.machine for x in of(Launch, out)] == ["a"]         # a still takes work after one failure
    out = d.finish(on_a[1], Outcome.INFRA_FAILED, at=2.0)
    assert of(Drain, out) == [Drain("a", "2 infrastructure failures")]
    assert d.sched.machine_state("a") == "drained"
    assert of(Launch, out) == []
    # the attempt still running on a continues and its result counts; new work goes to b only
    (still,) = d.on_machine("a")
    d.finish(still, at=3.0)
    assert d.sched.state(still.shard.id) == ShardState.PASSED
    for retry in of(Retry, d.log):
        d.on(RetryDue(retry.shard.id, 4.0))
    while d.running:
        lx = next(iter(d.running.values()))
        d.finish(lx, at=5.0)
    after = d.log[d.log.index(Drain("a", "2 infrastructure failures")):]
    assert of(Launch, after) and all(x.machine == "b" for x in of(Launch, after))
    assert d.sched.done and d.sched.exit_code == EXIT_OK


def test_lost_machine_takes_no_work_and_its_shards_move() -> None:
    d = make(4, TWO)
    d.start()
    assert of(Launch, d.on(MachineStatus("a", "lost", "connection reset", 1.0))) == []
    assert d.sched.machine_state("a") == "lost"
    for lx in d.on_machine("a"):
        out = d.finish(lx, Outcome.INFRA_FAILED, at=1.5, reason="machine lost")
        assert of(Retry, out)[0].avoid == "a"
    # lost machine's failures do not count toward a drain (it is already out)
    assert of(Drain, d.log) == []
    d.on(RetryDue("s001", 7.0))
    d.on(RetryDue("s002", 7.0))
    rest = [lx for lx in d.running.values()]
    while d.running:
        lx = next(iter(d.running.values()))
        assert lx.machine == "b"
        d.finish(lx, at=10.0)
    assert rest
    assert d.sched.done and d.sched.exit_code == EXIT_OK


def test_all_machines_lost_gives_not_run_and_finish() -> None:
    d = make(5, TWO)
    d.start()
    d.on(MachineStatus("a", "lost", "gone", 1.0))
    out = d.on(MachineStatus("b", "lost", "gone too", 1.0))
    assert {n.shard.id for n in of(NotRun, out)} == {"s004", "s005"}
    assert d.sched.not_run["s004"] == "no machine left: a lost (gone); b lost (gone too)"
    for lx in list(d.running.values()):
        out = d.finish(lx, Outcome.INFRA_FAILED, at=2.0, reason="machine lost")
        assert of(Retry, out) == []
    assert out[-1] == Finish(EXIT_INFRA)
    assert all(d.sched.state(s) == ShardState.NOT_RUN for s in ("s001", "s002", "s003"))


def test_unhealthy_then_recovered() -> None:
    d = make(6, TWO)
    first = d.start()
    d.on(MachineStatus("b", "unhealthy", "load 9.3 per core", 1.0))
    assert d.sched.machine_state("b") == "unhealthy"
    on_b = d.on_machine("b")
    out = d.finish(on_b[0], at=2.0)                # its running attempt finishes, no new work for b
    assert of(Launch, out) == []
    out = d.on(MachineStatus("b", "healthy", "", 3.0))
    assert d.sched.machine_state("b") == "active"
    assert [(x.shard.id, x.machine) for x in of(Launch, out)] == [("s004", "b")]
    assert len(first) == 3


def test_drained_machine_does_not_come_back() -> None:
    d = make(4, TWO)
    d.start()
    d.on(MachineStatus("b", "drained", "operator", 1.0))
    assert of(Launch, d.on(MachineStatus("b", "healthy", "", 2.0))) == []
    assert d.sched.machine_state("b") == "drained"


# --------------------------------------------------------------------------------------------- static

def test_static_assignment_each_machine_works_its_own_list() -> None:
    machines = [MachineSlots("a", 1), MachineSlots("b", 1)]
    assignment = {"s001": "a", "s002": "a", "s003": "a", "s004": "b"}
    d = make(4, machines, strategy="static", assignment=assignment)
    first = d.start()
    assert [(x.shard.id, x.machine) for x in first] == [("s001", "a"), ("s004", "b")]
    out = d.finish(first[1], at=1.0)               # b is done with its list: it does not steal
    assert of(Launch, out) == []
    out = d.finish(first[0], at=2.0)
    assert [(x.shard.id, x.machine) for x in of(Launch, out)] == [("s002", "a")]


def test_static_redistribution_of_a_lost_machine_least_loaded_first() -> None:
    machines = [MachineSlots("a", 1), MachineSlots("b", 1), MachineSlots("c", 1)]
    assignment = {"s001": "a", "s002": "a", "s003": "a", "s004": "b", "s005": "b", "s006": "c"}
    d = make(6, machines, expected=[10] * 6, strategy="static", assignment=assignment)
    d.start()
    d.on(MachineStatus("a", "lost", "gone", 1.0))
    (lx,) = d.on_machine("a")
    d.finish(lx, Outcome.INFRA_FAILED, at=1.0)
    # a's queued s002, s003: c (least loaded) gets s002, then b and c are even -> b (earlier) gets s003
    (c_run,) = d.on_machine("c")
    out = d.finish(c_run, at=2.0)
    assert [(x.shard.id, x.machine) for x in of(Launch, out)] == [("s002", "c")]
    (b_run,) = d.on_machine("b")
    out = d.finish(b_run, at=3.0)
    assert [(x.shard.id, x.machine) for x in of(Launch, out)] == [("s003", "b")]


def test_static_default_assignment_uses_speeds() -> None:
    machines = [MachineSlots("fast", 1, 2.0), MachineSlots("slow", 1, 1.0)]
    d = make(3, machines, expected=[10, 10, 10], strategy="static")
    first = d.start()
    assert {x.machine for x in first} == {"fast", "slow"}
    d.finish(next(x for x in first if x.machine == "fast"), at=5.0)
    assert [x.machine for x in d.running.values()].count("fast") == 1


# ----------------------------------------------------------------------------------- fail-fast, cancel

def test_fail_fast_cancels_everything_and_finishes_when_they_report() -> None:
    d = make(5, TWO, RetryPolicy(fail_fast=True))
    first = d.start()
    out = d.finish(first[0], Outcome.TESTS_FAILED, at=1.0)
    cancels = of(Cancel, out)
    assert {(c.shard_id, c.machine) for c in cancels} == {("s002", "a"), ("s003", "b")}
    assert all(c.reason == "cancelled by --fail-fast" for c in cancels)
    assert {n.shard.id for n in of(NotRun, out)} == {"s004", "s005"}
    assert of(Launch, out) == [] and of(Finish, out) == []
    d.finish(first[1], Outcome.CANCELLED, at=2.0)
    out = d.finish(first[2], Outcome.PASSED, at=2.0)     # raced the cancel: it did pass
    assert out[-1] == Finish(EXIT_TESTS_FAILED)
    assert d.sched.state("s001") == ShardState.FAILED
    assert d.sched.state("s002") == ShardState.NOT_RUN
    assert d.sched.state("s003") == ShardState.PASSED


def test_cancel_run_interrupts() -> None:
    d = make(5, TWO)
    first = d.start()
    out = d.on(CancelRun("SIGINT", 1.0))
    assert len(of(Cancel, out)) == 3 and len(of(NotRun, out)) == 2
    assert d.sched.not_run["s004"] == "interrupted: SIGINT"
    assert of(Finish, out) == []
    for lx in first:
        out = d.finish(lx, Outcome.CANCELLED, at=2.0, reason="cancelled")
    assert out[-1] == Finish(EXIT_INTERRUPTED)
    assert all(d.sched.state(s.id) == ShardState.NOT_RUN for s in shards(5))


def test_cancel_run_with_nothing_running_finishes_at_once() -> None:
    d = make(3, TWO)
    out = d.on(CancelRun("interrupted", 0.0))
    assert len(of(NotRun, out)) == 3 and out[-1] == Finish(EXIT_INTERRUPTED)
    assert d.sched.not_run["s001"] == "interrupted"


def test_cancel_run_after_fail_fast_still_exits_130() -> None:
    d = make(3, TWO, RetryPolicy(fail_fast=True))
    first = d.start()
    d.finish(first[0], Outcome.TESTS_FAILED, at=1.0)
    d.on(CancelRun("SIGINT", 1.5))
    d.finish(first[1], Outcome.CANCELLED, at=2.0)
    out = d.finish(first[2], Outcome.CANCELLED, at=2.0)
    assert out[-1] == Finish(EXIT_INTERRUPTED)


# ------------------------------------------------------------------------------- test failures, flaky

def test_failed_tests_not_retried_by_default() -> None:
    d = make(1, TWO)
    (lx,) = d.start()
    out = d.finish(lx, Outcome.TESTS_FAILED, at=1.0)
    assert out == [Finish(EXIT_TESTS_FAILED)]
    assert d.sched.state("s001") == ShardState.FAILED


def test_retry_failed_tests_and_flaky() -> None:
    d = make(2, TWO, RetryPolicy(retry_failed_tests=1))
    a1, b1 = d.start()
    out = d.finish(a1, Outcome.TESTS_FAILED, at=1.0)
    assert out == [Retry(a1.shard, 2, 0.0, None, "tests failed; retry 1 of 1 (the shard)")]
    (again,) = of(Launch, d.on(RetryDue("s001", 1.0)))
    assert again.attempt == 2
    d.finish(again, Outcome.PASSED, at=2.0)
    assert d.sched.flaky == {"s001"}
    # the other one fails twice: FAILED
    out = d.finish(b1, Outcome.TESTS_FAILED, at=3.0)
    (b2,) = of(Launch, d.on(RetryDue("s002", 3.0)))
    out = d.finish(b2, Outcome.TESTS_FAILED, at=4.0)
    assert out == [Finish(EXIT_TESTS_FAILED)]
    assert d.sched.state("s002") == ShardState.FAILED and "s002" not in d.sched.flaky


def test_retry_of_failed_tests_by_id_goes_elsewhere_with_only_those() -> None:
    from dataclasses import replace

    d = make(1, [MachineSlots("a", 1), MachineSlots("b", 1)], RetryPolicy(retry_failed_tests=2))
    (first,) = d.start()
    failed = replace(finished(first, Outcome.TESTS_FAILED, 1.0), rerun=("t/a.py::test_x",))
    out = d.on(failed)
    assert out == [Retry(first.shard, 2, 0.0, first.machine,
                         "tests failed; retry 1 of 2 (1 failed test)", ("t/a.py::test_x",))]
    (again,) = of(Launch, d.on(RetryDue("s001", 1.0)))
    assert again.only == ("t/a.py::test_x",) and again.machine != first.machine
    d.finish(again, Outcome.PASSED, at=2.0)
    assert d.sched.state("s001") == ShardState.PASSED and d.sched.flaky == {"s001"}


def test_unrequested_cancel_is_not_retried() -> None:
    d = make(1, TWO)
    (lx,) = d.start()
    out = d.finish(lx, Outcome.CANCELLED, at=1.0, reason="killed by operator")
    assert out == [NotRun(lx.shard, "cancelled: killed by operator"), Finish(EXIT_INFRA)]


# ------------------------------------------------------------------------------------------ exit codes

@pytest.mark.parametrize(("outcomes", "code"), [
    ([Outcome.PASSED, Outcome.PASSED], EXIT_OK),
    ([Outcome.PASSED, Outcome.TESTS_FAILED], EXIT_TESTS_FAILED),
    ([Outcome.CANCELLED, Outcome.PASSED], EXIT_INFRA),
    ([Outcome.CANCELLED, Outcome.TESTS_FAILED], EXIT_TESTS_FAILED),
])
def test_exit_codes(outcomes: list[Outcome], code: int) -> None:
    d = make(2, TWO)
    launches = d.start()
    out: list[Decision] = []
    for lx, oc in zip(launches, outcomes, strict=True):
        out = d.finish(lx, oc, at=1.0)
    assert out[-1] == Finish(code) and d.sched.exit_code == code


# ----------------------------------------------------------------------------------------- speculation

SPEC_MACHINES = [MachineSlots("fast", 1, 2.0), MachineSlots("slow", 1, 0.25)]


def test_speculation_copy_wins_and_loser_is_cancelled() -> None:
    d = make(2, SPEC_MACHINES, RetryPolicy(speculate=True), expected=[10.0, 10.0])
    f1, s1 = d.start()
    assert (f1.machine, s1.machine) == ("fast", "slow")   # s002 on slow: ends at 40; fast ends at 5
    out = d.finish(f1, at=5.0)
    (copy,) = of(Launch, out)
    assert (copy.shard.id, copy.machine, copy.attempt, copy.speculative) == ("s002", "fast", 2, True)
    out = d.finish(copy, at=10.0)
    assert of(Cancel, out) == [Cancel("s002", 1, "slow", "a copy on fast finished first")]
    assert d.sched.state("s002") == ShardState.PASSED and not d.sched.done
    out = d.finish(s1, Outcome.CANCELLED, at=10.5)
    assert out == [Finish(EXIT_OK)]
    assert [r.speculative for r in d.sched.records if r.shard_id == "s002"] == [False, True]


def test_speculation_original_wins() -> None:
    d = make(2, SPEC_MACHINES, RetryPolicy(speculate=True), expected=[10.0, 10.0])
    f1, s1 = d.start()
    (copy,) = of(Launch, d.finish(f1, at=5.0))
    out = d.finish(s1, Outcome.TESTS_FAILED, at=6.0)      # the original decides: failed
    assert of(Cancel, out) == [Cancel("s002", 2, "fast", "a copy on slow finished first")]
    out = d.finish(copy, Outcome.PASSED, at=6.2)          # raced the cancel: ignored
    assert out == [Finish(EXIT_TESTS_FAILED)]
    assert d.sched.state("s002") == ShardState.FAILED


def test_speculation_infra_failure_of_one_copy_is_ignored() -> None:
    d = make(2, SPEC_MACHINES, RetryPolicy(speculate=True), expected=[10.0, 10.0])
    f1, s1 = d.start()
    (copy,) = of(Launch, d.finish(f1, at=5.0))
    out = d.finish(copy, Outcome.INFRA_FAILED, at=6.0)
    assert of(Retry, out) == [] and of(Launch, out) == []          # no second copy
    assert d.sched.state("s002") == ShardState.RUNNING
    assert d.finish(s1, at=40.0) == [Finish(EXIT_OK)]


def test_no_speculation_when_not_faster_or_nothing_known() -> None:
    d = make(2, [MachineSlots("a", 1), MachineSlots("b", 1)], RetryPolicy(speculate=True), expected=[10, 10])
    a1, _ = d.start()
    assert of(Launch, d.finish(a1, at=10.0)) == []                  # same speed, would not finish sooner
    d = make(2, SPEC_MACHINES, RetryPolicy(speculate=True))
    f1, _ = d.start()
    assert of(Launch, d.finish(f1, Outcome.INFRA_FAILED, at=0.1)) == []   # nothing known, and s001 waits
    d = make(2, SPEC_MACHINES, RetryPolicy(speculate=False), expected=[10.0, 10.0])
    f1, _ = d.start()
    assert of(Launch, d.finish(f1, at=5.0)) == []


def test_speculation_uses_median_of_finished_when_expected_unknown() -> None:
    d = make(2, SPEC_MACHINES, RetryPolicy(speculate=True))
    f1, _ = d.start()
    d.on(ShardRunning("s002", 1, "slow", 1.0))
    out = d.finish(f1, at=5.0)          # normalized 5 s × 2.0 = 10; slow would end at 1 + 40, fast at 10
    assert [(x.shard.id, x.speculative) for x in of(Launch, out)] == [("s002", True)]


def test_speculation_only_when_queue_empty_and_counts_slots() -> None:
    machines = [MachineSlots("fast", 2, 2.0), MachineSlots("slow", 1, 0.25)]
    d = make(4, machines, RetryPolicy(speculate=True), expected=[10] * 4)
    first = d.start()
    out = d.finish(first[0], at=5.0)    # queue still has s004
    assert [(x.shard.id, x.speculative) for x in of(Launch, out)] == [("s004", False)]
    d.on(Tick(6.0))
    out = d.finish(first[1], at=5.0)
    assert [(x.shard.id, x.speculative) for x in of(Launch, out)] == [("s003", True)]
    assert len(d.on_machine("fast")) == 2


def test_first_run_tail_speculation_sees_a_slow_machine_from_this_runs_durations() -> None:
    # A first run: nothing declared, every machine planned at speed 1.0, no expected durations.
    machines = [MachineSlots("h1", 1), MachineSlots("h4", 1)]
    d = make(5, machines, RetryPolicy(speculate=True))
    a, b = d.start()
    assert (a.machine, b.machine) == ("h1", "h4")
    (c,) = of(Launch, d.finish(a, at=1.0))               # h1 paces 1 s per shard
    (e,) = of(Launch, d.finish(c, at=2.0))
    assert [x.shard.id for x in (c, e)] == ["s003", "s004"]
    (f,) = of(Launch, d.finish(b, at=3.0))               # h4 took 3 s for the same kind of shard
    assert (f.shard.id, f.machine) == ("s005", "h4")
    out = d.finish(e, at=3.0)                            # h1 idle, queue empty: s005 on h4 would end ~6 s
    assert [(x.shard.id, x.machine, x.speculative) for x in of(Launch, out)] == [("s005", "h1", True)]


def test_first_run_no_copy_of_a_test_on_a_machine_that_paces_like_the_rest() -> None:
    machines = [MachineSlots("h1", 1), MachineSlots("h2", 1)]
    d = make(4, machines, RetryPolicy(speculate=True))
    a, b = d.start()
    (c,) = of(Launch, d.finish(a, at=1.0))
    (e,) = of(Launch, d.finish(b, at=1.1))
    assert of(Launch, d.finish(c, at=2.0)) == []         # s004 on h2 started at 1.1: on pace, no copy
    assert of(Launch, d.on(Tick(2.5))) == []
    # ... but one running far past what the fleet has paced (over twice as long) gets a copy.
    out = d.on(Tick(5.5))
    assert [(x.shard.id, x.machine, x.speculative) for x in of(Launch, out)] == [(e.shard.id, "h1", True)]


# ---------------------------------------------------------------------------------------------- chaos

@dataclass(order=True)
class _Pending:
    at: float
    seq: int
    event: SchedulerEvent = field(compare=False)


def _check_invariants(sched: Scheduler, machines: Sequence[MachineSlots],
                      cancelled: set[tuple[str, int]], avoid: dict[str, str | None]) -> None:
    open_ = [r for r in sched.records if r.open]
    if sched.strategy == "dynamic" and not sched.done:  # no machine idles while work it may take is queued
        queued = [s for s in avoid if sched.state(s) == ShardState.QUEUED]
        for m in machines:
            if sched.machine_state(m.name) == "active" and len(sched.running(m.name)) < m.slots:
                assert all(avoid[s] == m.name for s in queued), (m.name, queued)
    for m in machines:                                   # slots never exceeded (speculative copies count)
        assert sum(1 for r in open_ if r.machine == m.name) <= m.slots
    live: dict[str, list[AttemptRecord]] = {}
    for r in open_:
        if (r.shard_id, r.attempt) not in cancelled:
            live.setdefault(r.shard_id, []).append(r)
    for rs in live.values():                             # at most one plain attempt and one speculative copy
        assert sum(1 for r in rs if not r.speculative) <= 1
        assert sum(1 for r in rs if r.speculative) <= 1
        assert not sched.state(rs[0].shard_id).terminal


def _chaos(seed: int) -> tuple[Scheduler, list[str]]:
    rng = random.Random(seed)
    machines = [MachineSlots(f"m{i}", rng.randint(1, 4), rng.choice([0.3, 0.5, 1.0, 2.0]))
                for i in range(rng.randint(1, 4))]
    n = rng.randint(1, 30)
    known = rng.random() < 0.5
    expected = [rng.lognormvariate(0, 1) * 10 if known else None for _ in range(n)]
    policy = RetryPolicy(max_retries=rng.randint(0, 3), retry_failed_tests=rng.randint(0, 2),
                         drain_after=rng.choice([0, 2, 3]), fail_fast=rng.random() < 0.15,
                         speculate=rng.random() < 0.5, backoff_base=1.0)
    strategy = rng.choice(["static", "dynamic"])
    sched = Scheduler(shards(n, expected), machines, policy, strategy=strategy)  # type: ignore[arg-type]
    seq = itertools.count()
    pending: list[_Pending] = []
    finish_at: dict[tuple[str, int], _Pending] = {}      # the one ShardFinished each attempt will get
    launched: dict[tuple[str, int], Launch] = {}
    lost: set[str] = set()
    finishes: list[Finish] = []
    cancelled: set[tuple[str, int]] = set()
    avoid: dict[str, str | None] = {s.id: None for s in shards(n)}

    def push(at: float, ev: SchedulerEvent) -> _Pending:
        p = _Pending(at, next(seq), ev)
        heapq.heappush(pending, p)
        return p

    def end_attempt(lx: Launch, outcome: Outcome, at: float, reason: str = "") -> None:
        old = finish_at.get((lx.shard.id, lx.attempt))
        if old is not None:
            if old.at <= at:
                return
            old.event = Tick(old.at)                       # superseded: the attempt ends sooner
        finish_at[(lx.shard.id, lx.attempt)] = push(at, finished(lx, outcome, at, reason, started=at))

    def apply(decisions: list[Decision], now: float) -> None:
        for d in decisions:
            if isinstance(d, Launch):
                key = (d.shard.id, d.attempt)
                assert key not in launched
                launched[key] = d
                if d.machine in lost:                     # the runner finds the machine gone
                    end_attempt(d, Outcome.INFRA_FAILED, now + 0.1, "lost")
                    continue
                push(now + 0.05, ShardRunning(d.shard.id, d.attempt, d.machine, now + 0.05))
                speed = next(m.speed for m in machines if m.name == d.machine)
                dur = (d.shard.expected or 5.0) / speed * rng.uniform(0.5, 2.0)
                outcome = rng.choices(list(Outcome)[:3], weights=[80, 10, 10])[0]
                end_attempt(d, outcome, now + dur, "" if outcome == Outcome.PASSED else "chaos")
            elif isinstance(d, Retry):
                avoid[d.shard.id] = d.avoid
                push(now + d.after_s, RetryDue(d.shard.id, now + d.after_s))
            elif isinstance(d, Cancel):
                lx = launched[(d.shard_id, d.attempt)]
                assert (d.shard_id, d.attempt) not in cancelled
                cancelled.add((d.shard_id, d.attempt))
                end_attempt(lx, Outcome.CANCELLED, now + rng.uniform(0.0, 0.5), "cancelled")
            elif isinstance(d, Finish):
                finishes.append(d)

    now = 0.0
    apply(sched.on(Start(0.0)), 0.0)
    for i in range(1, 60):                                 # ticks, and random machine trouble
        push(i * rng.uniform(1, 5), Tick(0.0))
    if rng.random() < 0.1:
        push(rng.uniform(0, 50), CancelRun("SIGINT", 0.0))
    for m in machines:
        dice = rng.random()
        if dice < 0.2:
            push(rng.uniform(0, 40), MachineStatus(m.name, "lost", "chaos", 0.0))
        elif dice < 0.4:
            when = rng.uniform(0, 40)
            push(when, MachineStatus(m.name, "unhealthy", "chaos", 0.0))
            push(when + rng.uniform(1, 20), MachineStatus(m.name, "healthy", "", 0.0))

    steps = 0
    while pending and steps < 100_000:
        steps += 1
        p = heapq.heappop(pending)
        now = p.at
        ev = p.event
        if isinstance(ev, Tick):
            ev = Tick(now)
        elif isinstance(ev, CancelRun):
            ev = CancelRun(ev.reason, now)
        elif isinstance(ev, MachineStatus):
            ev = MachineStatus(ev.machine, ev.status, ev.reason, now)
            if ev.status == "lost":
                lost.add(ev.machine)
        elif isinstance(ev, ShardFinished):
            finish_at.pop((ev.shard.id, ev.attempt), None)
        out = sched.on(ev)
        apply(out, now)
        if isinstance(ev, MachineStatus) and ev.status in ("lost", "unhealthy"):
            for rec in sched.running(ev.machine):            # the runner fails what ran there
                lx = launched[(rec.shard_id, rec.attempt)]
                end_attempt(lx, Outcome.INFRA_FAILED, now + 0.01, f"machine {ev.status}")
        _check_invariants(sched, machines, cancelled, avoid)
        if sched.done:
            break

    if not sched.done:
        # only an unhealthy machine that never recovered can hold a run open; report it lost
        for m in machines:
            if sched.machine_state(m.name) == "unhealthy":
                apply(sched.on(MachineStatus(m.name, "lost", "gave up", now)), now)
    assert sched.done, (seed, [sched.state(s.id) for s in shards(n)])
    assert len(finishes) == 1 and sched.exit_code == finishes[0].exit_code
    states = [sched.state(s.id) for s in shards(n)]
    assert all(s.terminal for s in states)
    assert set(sched.not_run) == {s.id for s in shards(n) if sched.state(s.id) == ShardState.NOT_RUN}
    assert all(not r.open and r.outcome is not None and r.ended_at >= r.assigned_at  # type: ignore[operator]
               for r in sched.records)
    for s in shards(n):
        attempts = [r.attempt for r in sched.records if r.shard_id == s.id]
        assert attempts == list(range(1, len(attempts) + 1))
    assert set(launched) == {(r.shard_id, r.attempt) for r in sched.records}
    assert sched.flaky <= {s.id for s in shards(n) if sched.state(s.id) == ShardState.PASSED}
    if sched.exit_code != EXIT_INTERRUPTED:
        expected_code = (EXIT_TESTS_FAILED if ShardState.FAILED in states
                         else EXIT_INFRA if ShardState.NOT_RUN in states else EXIT_OK)
        assert sched.exit_code == expected_code
    return sched, [m.name for m in machines]


def test_chaos() -> None:
    seen: set[str] = set()
    for seed in range(300):
        sched, names = _chaos(seed)
        seen.update(str(r.outcome) for r in sched.records)
        seen.update("speculative" for r in sched.records if r.speculative)
        seen.update(f"machine-{sched.machine_state(m)}" for m in names)
        seen.add(f"exit-{sched.exit_code}")
        if sched.flaky:
            seen.add("flaky")
    assert {"speculative", "machine-drained", "machine-lost", "flaky", "exit-130", "exit-1", "exit-3",
            "exit-0", "cancelled", "infra-failed", "tests-failed"} <= seen


def test_dynamic_with_a_plan_runs_each_list_and_steals_when_dry() -> None:
    from fleetshard.events import ShardFinished
    from fleetshard.model import MachineSlots, Outcome, RetryPolicy, Shard
    from fleetshard.scheduler import Launch, Scheduler, Start

    shards = [Shard(id=f"s{i:03d}", index=i, total=5, expected=e) for i, e in enumerate([9, 5, 4, 2, 1], 1)]
    machines = [MachineSlots("fast", 1, 1.0), MachineSlots("slow", 1, 0.25)]
    plan = {"s001": "fast", "s002": "fast", "s003": "fast", "s004": "slow", "s005": "slow"}
    sched = Scheduler(shards, machines, RetryPolicy(), strategy="dynamic", assignment=plan)
    first = [d for d in sched.on(Start(at=0.0)) if isinstance(d, Launch)]
    assert {(d.shard.id, d.machine) for d in first} == {("s001", "fast"), ("s004", "slow")}

    def finish(d: Launch, at: float) -> list[Launch]:
        ev = ShardFinished(machine=d.machine, shard=d.shard, attempt=d.attempt, outcome=Outcome.PASSED,
                           exit_status=0, signal=None, reason="", started_at=0.0, at=at, log_path="")
        return [x for x in sched.on(ev) if isinstance(x, Launch)]

    (slow_next,) = finish(first[1], 8.0)                    # slow takes its own list first
    assert (slow_next.shard.id, slow_next.machine) == ("s005", "slow")
    (fast_next,) = finish(first[0], 9.0)
    assert fast_next.shard.id == "s002"
    (steal,) = finish(slow_next, 12.0)                      # slow ran dry: steals fast's shortest
    assert (steal.shard.id, steal.machine) == ("s003", "slow")
    assert finish(fast_next, 14.0) == []


def test_a_retry_does_not_wait_for_an_unhealthy_machine() -> None:
    from fleetshard.events import MachineStatus, ShardFinished
    from fleetshard.model import MachineSlots, Outcome, RetryPolicy, Shard
    from fleetshard.scheduler import Launch, Retry, RetryDue, Scheduler, Start

    shard = Shard(id="s001", index=1, total=1)
    sched = Scheduler([shard], [MachineSlots("a", 1), MachineSlots("b", 1)], RetryPolicy(drain_after=5))
    (launch,) = [d for d in sched.on(Start(at=0.0)) if isinstance(d, Launch)]
    other = "b" if launch.machine == "a" else "a"
    sched.on(MachineStatus(machine=other, status="unhealthy", reason="disk", at=0.5))
    decisions = sched.on(ShardFinished(machine=launch.machine, shard=shard, attempt=1, outcome=Outcome.INFRA_FAILED,
                                       exit_status=None, signal=None, reason="lost", started_at=0.0, at=1.0,
                                       log_path=""))
    assert any(isinstance(d, Retry) for d in decisions)
    again = [d for d in sched.on(RetryDue(shard_id="s001", at=2.0)) if isinstance(d, Launch)]
    assert [(d.machine, d.attempt) for d in again] == [(launch.machine, 2)]
