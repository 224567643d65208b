"""The scheduler: a pure state machine that turns run events into decisions.

No asyncio, no clock, no I/O. The coordinator feeds it events (:class:`Start`, :class:`ShardStarted`,
:class:`fleetshard.events.ShardFinished`, :class:`RetryDue`, :class:`fleetshard.events.MachineStatus`,
:class:`CancelRun`, :class:`Tick`) through :meth:`Scheduler.on` and carries out the decisions it returns
(:class:`Launch`, :class:`Retry`, :class:`Cancel`, :class:`Drain`, :class:`NotRun`, :class:`Finish`).
Every timestamp it keeps comes from an event's ``at``.

Life of a shard: QUEUED -> RUNNING (launched: a slot is taken from the Launch on) -> PASSED | FAILED |
NOT_RUN, possibly through WAITING (a Retry was decided; the runner sends RetryDue after ``after_s``,
which puts the shard back at the front of the queue).

Contract with the runner:

* every Launch is answered by exactly one ShardFinished for that (shard, attempt), also after a Cancel
  (then usually with outcome CANCELLED); ShardRunning in between is optional;
* every Retry is answered by one RetryDue after ``after_s`` seconds (``after_s`` is 0.0 for a retry of
  failed tests); a RetryDue for a shard that is not waiting is ignored;
* after a MachineStatus lost/unhealthy/drained the runner itself sends ShardFinished (INFRA_FAILED) for
  the attempts still running there;
* an unhealthy machine is waited for (it may recover): if it never does, the runner should report it
  lost or drained, otherwise shards that can only run there would wait for it;
* Finish comes exactly once, after every shard is terminal and every launched attempt has reported.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from .events import MachineStatus, ShardFinished, ShardSettled, ShardStarted, Tick
from .model import (
    EXIT_INFRA,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TESTS_FAILED,
    MachineHealth,
    MachineSlots,
    Outcome,
    RetryPolicy,
    Shard,
    ShardState,
)
from .planning import assign_static, fill_order

# ------------------------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class Start:
    """Begin the run: the scheduler answers with the first Launches."""

    at: float


@dataclass(frozen=True)
class ShardRunning:
    """The process of an attempt actually started on the machine (assigned -> running)."""

    shard_id: str
    attempt: int
    machine: str
    at: float


@dataclass(frozen=True)
class RetryDue:
    """The backoff of a Retry has elapsed: the shard rejoins the queue."""

    shard_id: str
    at: float


@dataclass(frozen=True)
class CancelRun:
    """Ctrl-C / SIGTERM: cancel everything running, the rest is not run."""

    reason: str
    at: float


@dataclass(frozen=True)
class MachineJoined:
    """A machine left out at the start, or lost during the run, answers healthy again: it takes work
    from now on, with these slots (the shards it lost have long gone elsewhere)."""

    machine: MachineSlots
    at: float


SchedulerEvent = (Start | ShardRunning | ShardStarted | ShardFinished | RetryDue | MachineStatus | MachineJoined
                  | CancelRun | Tick)

# --------------------------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Launch:
    shard: Shard
    attempt: int                      # 1-based, unique per shard (speculative copies get their own)
    machine: str
    speculative: bool = False
    only: tuple[str, ...] | None = None   # rerun exactly these test ids (a retry of failed tests)


@dataclass(frozen=True)
class Retry:
    shard: Shard
    next_attempt: int
    after_s: float                    # send RetryDue(shard.id) after this many seconds
    avoid: str | None                 # the machine it failed on (a whole-shard retry of failed tests: None)
    reason: str
    only: tuple[str, ...] | None = None   # a retry of failed tests by id: just these


@dataclass(frozen=True)
class Cancel:
    """Kill this running attempt; its ShardFinished (normally CANCELLED) still comes back."""

    shard_id: str
    attempt: int
    machine: str
    reason: str


@dataclass(frozen=True)
class Drain:
    """Give this machine no new work (running attempts continue)."""

    machine: str
    reason: str


@dataclass(frozen=True)
class NotRun:
    shard: Shard
    reason: str


@dataclass(frozen=True)
class Finish:
    exit_code: int


Decision = Launch | Retry | Cancel | Drain | NotRun | Finish


@dataclass
class AttemptRecord:
    """One attempt of one shard, as the scheduler saw it."""

    shard_id: str
    attempt: int
    machine: str
    speculative: bool
    queued_at: float                  # when the shard (re)joined the queue for this attempt
    assigned_at: float                # when it was launched (took the slot)
    running_at: float | None = None   # ShardRunning
    ended_at: float | None = None     # ShardFinished
    outcome: Outcome | None = None
    reason: str = ""
    exit_status: int | None = None

    @property
    def open(self) -> bool:
        return self.ended_at is None


MACHINE_ACTIVE = "active"
MACHINE_DRAINED = "drained"
MACHINE_LOST = "lost"
MACHINE_UNHEALTHY = "unhealthy"

_STOP_KIND = "stop"
_LOSER_KIND = "loser"

# ------------------------------------------------------------------------------------------ internals

PACE_CLAMP = 5.0          # an in-run speed correction stays within 1/5 … 5 × the planned speed
OVERDUE_FACTOR = 0.5      # an overdue attempt is expected to run this fraction of its elapsed time again


@dataclass
class _Entry:
    shard_id: str
    owner: str | None                 # static: the machine whose list it is on; None: any machine
    avoid: str | None = None
    order: int = 0                    # position in the planned queue (keeps lists ordered on moves)


@dataclass
class _ShardRun:
    shard: Shard
    order: int
    state: ShardState = ShardState.QUEUED
    attempts: int = 0                 # attempt numbers handed out so far
    infra_failures: int = 0
    test_retries: int = 0
    had_test_failure: bool = False
    copied: bool = False              # a speculative copy was launched once
    queued_at: float = 0.0
    owner: str | None = None          # static assignment (may move to another machine)
    avoid: str | None = None
    only: tuple[str, ...] | None = None   # the next attempts rerun only these test ids
    active: dict[int, AttemptRecord] = field(default_factory=dict)   # attempts holding a slot
    cancelling: dict[int, str] = field(default_factory=dict)          # attempt -> _STOP_KIND | _LOSER_KIND


_HEALTH_OF = {MACHINE_ACTIVE: MachineHealth.HEALTHY, MACHINE_DRAINED: MachineHealth.DRAINED,
              MACHINE_LOST: MachineHealth.LOST, MACHINE_UNHEALTHY: MachineHealth.UNHEALTHY}

Fact = MachineStatus | ShardSettled
"""What the scheduler settled, for the views (see :meth:`Scheduler.take_facts`)."""


@dataclass
class _Machine:
    info: MachineSlots
    state: str = MACHINE_ACTIVE
    reason: str = ""
    health: MachineHealth = MachineHealth.HEALTHY
    infra_failures: int = 0
    active: set[tuple[str, int]] = field(default_factory=set)

    @property
    def free(self) -> int:
        return self.info.slots - len(self.active)

    @property
    def usable(self) -> bool:
        """Not gone for good: active, or unhealthy and possibly coming back."""
        return self.state in (MACHINE_ACTIVE, MACHINE_UNHEALTHY)


def exponential_backoff(policy: RetryPolicy) -> Callable[[int], float]:
    """backoff(n) = base × factor^(n-1), capped at backoff_max (n is the 1-based retry number)."""

    def backoff(n: int) -> float:
        return float(min(policy.backoff_base * policy.backoff_factor ** max(0, n - 1), policy.backoff_max))

    return backoff


class Scheduler:
    """Decides what runs where, what is retried, drained, cancelled; see the module docstring."""

    def __init__(self, shards: Sequence[Shard], machines: Sequence[MachineSlots], policy: RetryPolicy, *,
                 strategy: Literal["static", "dynamic"] = "dynamic",
                 assignment: Mapping[str, str] | None = None,
                 backoff: Callable[[int], float] | None = None, patience: float | None = None) -> None:
        ids = [s.id for s in shards]
        if len(set(ids)) != len(ids):
            raise ValueError("shard ids must be unique")
        names = [m.name for m in machines]
        if len(set(names)) != len(names):
            raise ValueError("machine names must be unique")
        self.policy = policy
        self.strategy = strategy
        self._backoff = backoff or exponential_backoff(policy)
        self._machines = {m.name: _Machine(m) for m in machines}
        for machine in self._machines.values():               # nothing to run on: out from the start
            if machine.info.slots < 1 or machine.info.speed <= 0:
                machine.state, machine.reason = MACHINE_DRAINED, "no slots"
                machine.health = MachineHealth.DRAINED
        working = [m for m in machines if self._machines[m.name].state == MACHINE_ACTIVE]
        self._fill_order = [machines[i].name for i in fill_order(machines)]
        self._shards = {s.id: _ShardRun(s, i) for i, s in enumerate(shards)}
        self._retry_queue: list[_Entry] = []          # rejoined after RetryDue: first in line, any machine
        self._queues: dict[str | None, list[_Entry]] = {None: []}
        self._started = False
        self._stopping: str | None = None              # reason once fail-fast / CancelRun stops the run
        self._interrupted = False
        self._norm_durations: list[float] = []         # speed-1.0 seconds of finished attempts
        self._pace: dict[str, list[float]] = {}        # per machine: expected / normalised actual (if known)
        self._norm_on: dict[str, list[float]] = {}     # per machine: normalised seconds of its attempts

        self.done = False
        self.exit_code: int | None = None
        self.records: list[AttemptRecord] = []
        self.flaky: set[str] = set()
        self.not_run: dict[str, str] = {}
        self._terminal_count = 0                       # shards in a terminal state (each gets there once)
        self._patience = patience                      # no machine healthy this long: unhealthy ones are lost
        self._none_healthy_since: float | None = None
        self._facts: list[Fact] = []
        self._at = 0.0

        # static: each machine works its planned list. dynamic with a plan (durations known from history):
        # the same per-machine lists, but a machine whose list runs dry steals from the others, so no
        # slot idles while work is queued. dynamic without a plan: one shared queue.
        if working and (strategy == "static" or assignment is not None):
            plan = dict(assignment) if assignment is not None else assign_static(shards, working)
            loads = {m.name: 0.0 for m in working}
            for s in shards:
                owner = plan.get(s.id)
                if owner is None or owner not in loads:
                    owner = min(loads, key=lambda n: loads[n] / self._capacity(n))
                loads[owner] += self._weight(s)
                self._shards[s.id].owner = owner
                self._queues.setdefault(owner, []).append(_Entry(s.id, owner, None, self._shards[s.id].order))
        else:
            self._queues[None] = [_Entry(s.id, None, None, i) for i, s in enumerate(shards)]

    # ------------------------------------------------------------------------------------------ queries

    def state(self, shard_id: str) -> ShardState:
        return self._shards[shard_id].state

    def machine_state(self, name: str) -> str:
        """How the scheduler uses the machine: active | unhealthy | drained | lost."""
        return self._machines[name].state

    def machine_health(self, name: str) -> MachineHealth:
        """The machine's status as the run shows it."""
        return self._machines[name].health

    def take_facts(self) -> list[Fact]:
        """What was settled since the last call, in order: machine statuses it decided (healthy,
        degraded, unhealthy, drained, lost) and shards it settled (state, flaky, reason)."""
        facts, self._facts = self._facts, []
        return facts

    def running(self, machine: str | None = None) -> list[AttemptRecord]:
        """Attempts holding a slot (launched, not yet reported back), optionally on one machine."""
        return [r for r in self.records if r.open and (machine is None or r.machine == machine)]

    def summary(self) -> dict[str, int]:
        states = [sr.state for sr in self._shards.values()]
        return {"shards": len(states),
                "passed": states.count(ShardState.PASSED),
                "failed": states.count(ShardState.FAILED),
                "not_run": states.count(ShardState.NOT_RUN),
                "flaky": len(self.flaky),
                "attempts": len(self.records)}

    # ------------------------------------------------------------------------------------------- events

    def on(self, event: SchedulerEvent) -> list[Decision]:
        """Take one event, return the decisions it leads to (in the order to carry them out)."""
        if self.done:
            return []
        out: list[Decision] = []
        at = self._at = event.at
        if isinstance(event, Start):
            if self._started:
                return []
            self._started = True
            for sr in self._shards.values():
                sr.queued_at = at
        elif isinstance(event, (ShardRunning, ShardStarted)):
            running = self._shards.get(event.shard.id if isinstance(event, ShardStarted) else event.shard_id)
            rec = running.active.get(event.attempt) if running else None
            if rec is not None and rec.running_at is None:
                rec.running_at = at
        elif isinstance(event, ShardFinished):
            self._finished(event, out)
        elif isinstance(event, RetryDue):
            due = self._shards.get(event.shard_id)
            if due is not None and due.state == ShardState.WAITING and self._stopping is None:
                due.state = ShardState.QUEUED
                due.queued_at = at
                self._retry_queue.append(_Entry(due.shard.id, None, due.avoid, due.order))
        elif isinstance(event, MachineStatus):
            self._machine_status(event, out)
        elif isinstance(event, MachineJoined):
            self._joined(event.machine)
        elif isinstance(event, CancelRun):
            self._interrupted = True
            self._started = True                              # so that Finish comes even before Start
            if self._stopping is None:
                reason = ("interrupted" if event.reason in ("", "interrupted")
                          else f"interrupted: {event.reason}")
                self._stop(reason, out)
        elif isinstance(event, Tick):
            self._watchdog(at)
        if self._started:
            self._no_machine_left(out)
            self._fill(at, out)
            self._maybe_finish(out)
        return out

    # ---------------------------------------------------------------------------------------- finished

    def _finished(self, ev: ShardFinished, out: list[Decision]) -> None:
        sr = self._shards.get(ev.shard.id)
        rec = sr.active.pop(ev.attempt, None) if sr is not None else None
        if sr is None or rec is None:
            return                                            # unknown or already reported: ignore
        machine = self._machines[rec.machine]
        machine.active.discard((sr.shard.id, rec.attempt))
        rec.ended_at = ev.at
        rec.outcome = ev.outcome
        rec.reason = ev.reason
        rec.exit_status = ev.exit_status
        kind = sr.cancelling.pop(rec.attempt, None)
        if ev.outcome in (Outcome.PASSED, Outcome.TESTS_FAILED):
            started = rec.running_at if rec.running_at is not None else rec.assigned_at
            ended = ev.at if ev.ended_at is None else ev.ended_at
            norm = max(0.0, ended - started) * machine.info.speed
            self._norm_durations.append(norm)
            self._norm_on.setdefault(rec.machine, []).append(norm)
            if sr.shard.expected is not None and sr.shard.expected > 0 and norm > 0:
                self._pace.setdefault(rec.machine, []).append(sr.shard.expected / norm)
        if ev.outcome.is_infra and kind is None and machine.state == MACHINE_ACTIVE:
            machine.infra_failures += 1                       # counts only while the machine was in service
            if 0 < self.policy.drain_after <= machine.infra_failures:
                reason = f"{machine.infra_failures} infrastructure failures"
                self._set_machine(machine, MACHINE_DRAINED, reason)
                out.append(Drain(machine.info.name, reason))
        if ev.outcome.is_infra and machine.health == MachineHealth.HEALTHY:
            self._set_health(machine, MachineHealth.DEGRADED, ev.reason or str(ev.outcome))

        if sr.state.terminal or kind == _LOSER_KIND:
            return                                            # the race was decided already
        if self._stopping is not None:
            if ev.outcome == Outcome.PASSED:
                self._terminal(sr, ShardState.PASSED, out)
            elif ev.outcome == Outcome.TESTS_FAILED:
                sr.had_test_failure = True
                self._terminal(sr, ShardState.FAILED, out)
            elif not sr.active:                               # the last copy to report decides
                self._terminal(sr, ShardState.NOT_RUN, out, self._stopping)
            return

        others = self._live(sr)
        if others:
            if ev.outcome in (Outcome.PASSED, Outcome.TESTS_FAILED):
                for other in others:                          # this copy decides the race
                    sr.cancelling[other.attempt] = _LOSER_KIND
                    out.append(Cancel(sr.shard.id, other.attempt, other.machine,
                                      f"a copy on {rec.machine} finished first"))
            else:
                return                                        # the other copy carries on

        if ev.outcome == Outcome.PASSED:
            self._terminal(sr, ShardState.PASSED, out)
        elif ev.outcome == Outcome.TESTS_FAILED:
            sr.had_test_failure = True
            if sr.test_retries < self.policy.retry_failed_tests and self._any_usable():
                sr.test_retries += 1
                sr.state = ShardState.WAITING
                if ev.rerun:
                    # only the failed tests, on another free machine where possible
                    sr.only, sr.avoid = tuple(ev.rerun), rec.machine
                    n = len(sr.only)
                    what = f"{n} failed test{'s' if n != 1 else ''}"
                else:
                    sr.avoid = None
                    what = "the shard"
                reason = (f"tests failed; retry {sr.test_retries} of {self.policy.retry_failed_tests} "
                          f"({what})")
                out.append(Retry(sr.shard, sr.attempts + 1, 0.0, sr.avoid, reason, sr.only))
            else:
                self._terminal(sr, ShardState.FAILED, out)
                if self.policy.fail_fast:
                    self._stop("cancelled by --fail-fast", out)
        elif ev.outcome == Outcome.CANCELLED:
            reason = f"cancelled: {ev.reason}" if ev.reason else "cancelled"
            self._terminal(sr, ShardState.NOT_RUN, out, reason)
        else:
            sr.infra_failures += 1
            last = ev.reason or str(ev.outcome)
            if not self._any_usable():
                self._terminal(sr, ShardState.NOT_RUN, out, self._no_machine_reason())
            elif sr.infra_failures <= self.policy.max_retries:
                sr.avoid = rec.machine
                sr.state = ShardState.WAITING
                after = self._backoff(sr.infra_failures)
                out.append(Retry(sr.shard, sr.attempts + 1, after, rec.machine, last))
            else:
                self._terminal(sr, ShardState.NOT_RUN, out,
                               f"infrastructure failure after {sr.attempts} attempts: {last}")

    def _live(self, sr: _ShardRun) -> list[AttemptRecord]:
        """Attempts of this shard still running and not being cancelled."""
        return [r for a, r in sr.active.items() if a not in sr.cancelling]

    def _terminal(self, sr: _ShardRun, state: ShardState, out: list[Decision], reason: str = "") -> None:
        if sr.state == ShardState.QUEUED:
            self._dequeue(sr.shard.id)
        if not sr.state.terminal:
            self._terminal_count += 1
        sr.state = state
        if state == ShardState.PASSED and sr.had_test_failure:
            self.flaky.add(sr.shard.id)
        self._facts.append(ShardSettled(shard=sr.shard, state=str(state), flaky=sr.shard.id in self.flaky,
                                        reason=reason, at=self._at))
        if state == ShardState.NOT_RUN:
            self.not_run[sr.shard.id] = reason
            out.append(NotRun(sr.shard, reason))

    def _dequeue(self, shard_id: str) -> None:
        self._retry_queue = [e for e in self._retry_queue if e.shard_id != shard_id]
        for key, entries in self._queues.items():
            if any(e.shard_id == shard_id for e in entries):
                self._queues[key] = [e for e in entries if e.shard_id != shard_id]

    # ----------------------------------------------------------------------------------------- machines

    def _machine_status(self, ev: MachineStatus, out: list[Decision]) -> None:
        machine = self._machines.get(ev.machine)
        if machine is None:
            return
        status = ev.status
        if status in (MACHINE_LOST, "unreachable"):
            if machine.state != MACHINE_LOST:
                self._set_machine(machine, MACHINE_LOST, ev.reason or status)
        elif status == MACHINE_DRAINED:
            if machine.usable:
                self._set_machine(machine, MACHINE_DRAINED, ev.reason or status)
        elif status == MACHINE_UNHEALTHY:
            if machine.state == MACHINE_ACTIVE:
                self._set_machine(machine, MACHINE_UNHEALTHY, ev.reason or status)
        elif status == "healthy" and machine.state == MACHINE_UNHEALTHY:
            self._set_machine(machine, MACHINE_ACTIVE, "")
        elif status == "healthy" and machine.health == MachineHealth.DEGRADED:
            self._set_health(machine, MachineHealth.HEALTHY, "")

    def _joined(self, info: MachineSlots) -> None:
        """A new or lost machine rejoins; a drained one stays out (it failed this run's work)."""
        if info.slots < 1 or info.speed <= 0:
            return
        machine = self._machines.get(info.name)
        if machine is None:
            machine = self._machines[info.name] = _Machine(info, state=MACHINE_LOST, health=_HEALTH_OF[MACHINE_LOST])
            self._fill_order.append(info.name)
        if machine.state != MACHINE_LOST:
            return
        machine.info = info
        machine.infra_failures = 0
        self._set_machine(machine, MACHINE_ACTIVE, "")

    def _set_machine(self, machine: _Machine, state: str, reason: str) -> None:
        machine.state = state
        machine.reason = reason
        self._set_health(machine, _HEALTH_OF[state], reason)
        if state != MACHINE_ACTIVE:
            self._redistribute(machine.info.name)

    def _set_health(self, machine: _Machine, health: MachineHealth, reason: str) -> None:
        if health != machine.health:
            machine.health = health
            self._facts.append(MachineStatus(machine=machine.info.name, status=str(health), reason=reason,
                                             at=self._at))

    def _watchdog(self, at: float) -> None:
        """No machine healthy for ``patience`` seconds: the unhealthy ones are given up on (lost), so
        that their shards end "not run" instead of waiting forever."""
        if self._patience is None:
            return
        unhealthy = [m for m in self._machines.values() if m.state == MACHINE_UNHEALTHY]
        if not unhealthy or any(m.state == MACHINE_ACTIVE for m in self._machines.values()):
            self._none_healthy_since = None
            return
        if self._none_healthy_since is None:
            self._none_healthy_since = at
        if at - self._none_healthy_since >= self._patience:
            for m in unhealthy:
                self._set_machine(m, MACHINE_LOST, f"unhealthy for {self._patience:.0f} s: {m.reason}")

    def _redistribute(self, name: str) -> None:
        """Static: the queued list of a machine that takes no more work moves to the others."""
        moving = self._queues.pop(name, [])
        if not moving:
            return
        targets = [n for n in self._fill_order if self._machines[n].state == MACHINE_ACTIVE]
        if not targets:                                       # nobody to take it now: whoever comes back
            self._queues[None] = sorted(self._queues[None] + moving, key=lambda e: e.order)
            for e in moving:
                e.owner = None
            return
        load = {n: self._load(n) for n in targets}
        for e in moving:
            sr = self._shards[e.shard_id]
            target = min(targets, key=lambda n: (load[n] / self._capacity(n), targets.index(n)))
            load[target] += self._weight(sr.shard)
            e.owner = sr.owner = target
            self._queues.setdefault(target, []).append(e)
        for n in targets:
            self._queues.get(n, []).sort(key=lambda e: e.order)

    def _capacity(self, name: str) -> float:
        info = self._machines[name].info
        return info.slots * info.speed

    def _weight(self, shard: Shard) -> float:
        return shard.expected if shard.expected is not None else 1.0

    def _load(self, name: str) -> float:
        queued = sum(self._weight(self._shards[e.shard_id].shard) for e in self._queues.get(name, []))
        running = sum(self._weight(self._shards[sid].shard) for sid, _ in self._machines[name].active)
        return queued + running

    def _any_usable(self) -> bool:
        return any(m.usable for m in self._machines.values())

    def _no_machine_reason(self) -> str:
        # Each machine's full reason was said when its state changed: here only its first clause.
        reasons = [f"{n} {m.state}" + (f" ({_first_clause(m.reason)})" if m.reason else "")
                   for n, m in self._machines.items()]
        return "no machine left: " + ("; ".join(reasons) if reasons else "no machines")

    def _no_machine_left(self, out: list[Decision]) -> None:
        if self._stopping is not None or self._any_usable():
            return
        waiting = [sr for sr in self._shards.values() if sr.state in (ShardState.QUEUED, ShardState.WAITING)]
        if waiting:
            reason = self._no_machine_reason()
            self._retry_queue.clear()
            self._queues = {None: []}
            for sr in waiting:
                self._terminal(sr, ShardState.NOT_RUN, out, reason)

    # ------------------------------------------------------------------------------------------ stopping

    def _stop(self, reason: str, out: list[Decision]) -> None:
        self._stopping = reason
        self._retry_queue.clear()
        self._queues = {None: []}
        for sr in self._shards.values():
            if sr.state in (ShardState.QUEUED, ShardState.WAITING):
                self._terminal(sr, ShardState.NOT_RUN, out, reason)
            for attempt, rec in sr.active.items():
                if attempt not in sr.cancelling:
                    sr.cancelling[attempt] = _STOP_KIND
                    out.append(Cancel(sr.shard.id, attempt, rec.machine, reason))

    def _maybe_finish(self, out: list[Decision]) -> None:
        if self.done or self._terminal_count < len(self._shards):   # O(1) on all but the last events
            return
        if not all(sr.state.terminal and not sr.active for sr in self._shards.values()):
            return
        states = [sr.state for sr in self._shards.values()]
        if self._interrupted:
            code = EXIT_INTERRUPTED
        elif ShardState.FAILED in states:
            code = EXIT_TESTS_FAILED
        elif ShardState.NOT_RUN in states:
            code = EXIT_INFRA
        else:
            code = EXIT_OK
        self.done = True
        self.exit_code = code
        out.append(Finish(code))

    # ------------------------------------------------------------------------------------------- filling

    def _other_active(self, name: str) -> bool:
        return any(m.state == MACHINE_ACTIVE for n, m in self._machines.items() if n != name)

    def _pick(self, name: str) -> _Entry | None:
        for i, e in enumerate(self._retry_queue):
            if e.avoid == name and self._other_active(name):
                continue                                      # wait for a slot elsewhere
            return self._retry_queue.pop(i)
        for key in (name, None):
            entries = self._queues.get(key)
            if entries:
                return entries.pop(0)
        if self.strategy == "dynamic":
            return self._steal(name)
        return None

    def _steal(self, name: str) -> _Entry | None:
        """Take work planned for the machine with the most left to do: a machine at least as fast takes
        the head of that list (its longest shard), a slower one its tail (its shortest)."""
        victims = [n for n, q in self._queues.items() if n is not None and n != name and q]
        if not victims:
            return None
        victim = max(victims, key=lambda n: self._load(n) / self._capacity(n))
        entries = self._queues[victim]
        faster = self._machines[name].info.speed >= self._machines[victim].info.speed
        entry = entries.pop(0 if faster else -1)
        entry.owner = self._shards[entry.shard_id].owner = name
        return entry

    def _launch(self, sr: _ShardRun, name: str, at: float, out: list[Decision], speculative: bool) -> None:
        sr.attempts += 1
        rec = AttemptRecord(sr.shard.id, sr.attempts, name, speculative,
                            queued_at=at if speculative else sr.queued_at, assigned_at=at)
        self.records.append(rec)
        sr.active[rec.attempt] = rec
        sr.state = ShardState.RUNNING
        self._machines[name].active.add((sr.shard.id, rec.attempt))
        out.append(Launch(sr.shard, rec.attempt, name, speculative, sr.only))

    def _fill(self, at: float, out: list[Decision]) -> None:
        if self._stopping is not None:
            return
        for name in self._fill_order:
            machine = self._machines[name]
            while machine.state == MACHINE_ACTIVE and machine.free > 0:
                entry = self._pick(name)
                if entry is None:
                    break
                self._launch(self._shards[entry.shard_id], name, at, out, speculative=False)
        if not self.policy.speculate:
            return
        if any(sr.state in (ShardState.QUEUED, ShardState.WAITING) for sr in self._shards.values()):
            return
        for name in self._fill_order:
            machine = self._machines[name]
            while machine.state == MACHINE_ACTIVE and machine.free > 0:
                target = self._speculation_target(name, at)
                if target is None:
                    break
                target.copied = True
                self._launch(target, name, at, out, speculative=True)

    def _effective_speed(self, name: str) -> float:
        """The planned speed corrected by how this machine has paced in this run so far.

        With expected durations: the median of expected / (actual × planned speed) of its finished attempts;
        without: the fleet's median normalised attempt time over this machine's. So a first run, which plans
        every machine at the same speed, still sees that one machine is three times slower than the rest.
        """
        info = self._machines[name].info
        pace = self._pace.get(name)
        if pace:
            correction = statistics.median(pace)
        elif self._norm_on.get(name) and self._norm_durations:
            mine = statistics.median(self._norm_on[name])
            correction = statistics.median(self._norm_durations) / mine if mine > 0 else 1.0
        else:
            return info.speed
        return info.speed * min(max(correction, 1 / PACE_CLAMP), PACE_CLAMP)

    def _speculation_target(self, name: str, at: float) -> _ShardRun | None:
        """The running shard expected to finish last, if a copy here would finish it sooner.

        Expected finish of a running attempt: its start + expected / the machine's effective speed; an
        attempt already past that is expected to run at least half as long again as it has so far.
        """
        median = statistics.median(self._norm_durations) if self._norm_durations else None
        here = self._machines[name].info
        here_speed = self._effective_speed(name)
        best: tuple[float, _ShardRun, float] | None = None
        for sr in self._shards.values():
            if sr.state != ShardState.RUNNING or sr.copied:
                continue
            live = self._live(sr)
            if len(live) != 1 or live[0].speculative or live[0].machine == name:
                continue
            expected = sr.shard.expected if sr.shard.expected is not None else median
            if expected is None:
                continue
            there = self._machines[live[0].machine].info
            there_speed = self._effective_speed(live[0].machine)
            if live[0].running_at is not None:
                began = live[0].running_at
                end = began + expected / there_speed
            else:
                began = live[0].assigned_at
                end = began + there.startup + expected / there_speed
            if at > end:
                end = at + OVERDUE_FACTOR * (at - began)
            if best is None or end > best[0]:
                best = (end, sr, expected)
        if best is None:
            return None
        end, sr, expected = best
        return sr if at + here.startup + expected / here_speed < end else None


def _first_clause(reason: str, limit: int = 80) -> str:
    """``setup failed on a (exit code 128): fatal: …`` -> ``setup failed on a (exit code 128)``."""
    head = reason.split(": ", 1)[0]
    return head if len(head) <= limit else head[: limit - 1] + "…"
