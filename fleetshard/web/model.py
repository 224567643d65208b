"""The live page's state, built from the run's events alone: pure, no I/O, no clock of its own.

:class:`LiveModel` takes the events of one run (:mod:`fleetshard.events`) in order and keeps what the page
shows: the run (id, strategy, expected makespan and lower bound, phase), one entry per machine (slots,
speed, status and why, the last health probe), one per shard attempt (machine, lane, start, end,
outcome), overall progress (pass / fail / flaky / not run, running, retries, elapsed, ETA), the failures
with their reason, output tail and failing tests, recent notices, and a bounded output tail per running
attempt.

Every change comes back from :meth:`LiveModel.apply` as *deltas*: small JSON-ready dicts
``{"seq": n, "t": kind, "k": key, "v": value}`` that replace one entity (``run``, ``progress``,
``machine``, ``attempt``, ``failure``), append one (``notice``), or carry one output line (``line``,
for the viewers of that attempt's tail only, without ``seq``). :meth:`LiveModel.snapshot` is the whole state with the
``seq`` of the last delta in it, so a viewer applies a snapshot, then every delta with a larger ``seq``;
one that missed deltas starts again from a snapshot.

Times are seconds from ``RunStarted.at`` (from the first event before it), so a recorded event list fed to a fresh
model gives the same page, timings included.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..events import (
    Event,
    MachineStatus,
    Notice,
    OutputLine,
    ProbeResult,
    RunFinished,
    RunStarted,
    ShardFinished,
    ShardNotRun,
    ShardRetrying,
    ShardStarted,
    Tick,
)
from ..model import Outcome, Shard
from ..progress import clean_line

Delta = dict[str, Any]

TAIL_LINES = 200          # output lines kept per running attempt
FAILURE_TAIL_LINES = 20   # kept with a failure
MAX_FAILURES = 200        # failures shown (the report has them all)
MAX_NOTICES = 50
MAX_TESTS_PER_FAILURE = 50
MAX_LINE = 2000           # characters of one output line
RECENT_TAILS = 20         # finished attempts whose output tail is still kept (a click that comes late)
USABLE = frozenset({"healthy", "degraded"})
HEALTH_KEYS = ("load1", "cores", "mem_used_pct", "disk_free_pct", "latency_ms", "connect_s", "reachable",
               "healthy", "reasons")


def attempt_key(shard_id: str, attempt: int) -> str:
    return f"{shard_id}#{attempt}"


@dataclass(frozen=True)
class FailedTest:
    """One failing testcase, as the page shows it."""

    name: str
    classname: str = ""
    message: str = ""
    outcome: str = "failed"


def _num(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, 3)


def _line(text: str) -> str:
    line = clean_line(text)
    return line if len(line) <= MAX_LINE else line[:MAX_LINE] + "…"


class LiveModel:
    """The page's state for one run, fed one event at a time."""

    def __init__(self, *, tail_lines: int = TAIL_LINES) -> None:
        self.tail_lines = tail_lines
        self.seq = 0
        self.t0: float | None = None
        self.now = 0.0                                         # seconds from t0 of the latest event
        self.run: dict[str, Any] = {"run_id": "", "strategy": "", "phase": "preparing", "expected_makespan": None,
                                    "lower_bound": None, "exit_code": None, "shards": 0, "ended": None}
        self.machines: dict[str, dict[str, Any]] = {}
        self.attempts: dict[str, dict[str, Any]] = {}
        self.failures: dict[str, dict[str, Any]] = {}
        self.notices: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_NOTICES)
        self.shards: dict[str, Shard] = {}
        self.state: dict[str, str] = {}                        # shard id -> queued, running, waiting, passed, ...
        self.test_failed: set[str] = set()
        self.flaky: set[str] = set()
        self.retries = 0
        self.durations: list[float] = []                       # finished attempts that ran their tests
        self._lanes: dict[str, list[str | None]] = {}          # machine -> attempt key per lane (None: free)
        self._tails: dict[str, collections.deque[str]] = {}    # running attempt -> last output lines
        self._running: set[str] = set()                        # attempt keys started, not finished
        self._recent: collections.OrderedDict[str, list[str]] = collections.OrderedDict()

    # ------------------------------------------------------------------------------------------ feeding

    def _delta(self, kind: str, value: Any, key: str | None = None) -> Delta:
        self.seq += 1
        delta: Delta = {"seq": self.seq, "t": kind, "v": value}
        if key is not None:
            delta["k"] = key
        return delta

    def _rel(self, at: float) -> float:
        if self.t0 is None:
            self.t0 = at
        return round(at - self.t0, 3)

    def apply(self, event: Event) -> list[Delta]:
        """Take one event; the deltas it caused (unknown event types cause none)."""
        if isinstance(event, RunStarted):
            self.t0 = event.at
        at = getattr(event, "at", None)
        if isinstance(at, (int, float)):
            self.now = max(self.now, self._rel(float(at)))
        if isinstance(event, RunStarted):
            return self._run_started(event)
        if isinstance(event, ShardStarted):
            return self._shard_started(event)
        if isinstance(event, OutputLine):
            return self._output(event)
        if isinstance(event, ShardFinished):
            return self._shard_finished(event)
        if isinstance(event, ShardRetrying):
            self.retries += 1
            if self.state.get(event.shard.id) not in ("passed", "running"):
                self.state[event.shard.id] = "waiting"
            return [self._progress()]
        if isinstance(event, ShardNotRun):
            self.shards.setdefault(event.shard.id, event.shard)
            self.state[event.shard.id] = "not-run"
            return [self._notice(f"{event.shard.id} not run: {event.reason}", "error", None, event.at),
                    self._progress()]
        if isinstance(event, MachineStatus):
            machine = self._machine(event.machine)
            machine["status"], machine["reason"] = event.status, event.reason
            return [self._delta("machine", dict(machine), event.machine), self._progress()]
        if isinstance(event, Notice):
            return [self._notice(event.text, event.level, event.machine, event.at)]
        if isinstance(event, Tick):
            return self.tick(event.at)
        if isinstance(event, ProbeResult):
            return self.probed(event.machine, {
                "healthy": event.healthy, "reasons": event.reasons, "load1": event.load1,
                "mem_used_pct": event.mem_used_pct, "disk_free_pct": event.disk_free_pct,
                "latency_ms": event.latency_ms}, event.at)
        if isinstance(event, RunFinished):
            self.run.update(phase="finished", exit_code=event.exit_code, ended=self.now)
            return [self._delta("run", dict(self.run)), self._progress()]
        return []

    def feed(self, events: Iterable[Event]) -> list[Delta]:
        out: list[Delta] = []
        for event in events:
            out.extend(self.apply(event))
        return out

    def probed(self, machine: str, health: Mapping[str, Any], at: float) -> list[Delta]:
        """A health probe's findings (load, memory, disk, latency) for ``machine``."""
        self.now = max(self.now, self._rel(at))
        view = self._machine(machine)
        view["health"] = {k: (list(v) if isinstance(v, (list, tuple)) else v)
                          for k, v in health.items() if k in HEALTH_KEYS}
        view["probed_at"] = self.now
        return [self._delta("machine", dict(view), machine)]

    def tests_reported(self, shard_id: str, attempt: int, tests: Sequence[FailedTest]) -> list[Delta]:
        """Failing tests of a finished attempt learnt later, added to its failure entry."""
        failure = self.failures.get(attempt_key(shard_id, attempt))
        if failure is None or not tests:
            return []
        failure["tests"] = [{"name": t.name, "classname": t.classname, "message": t.message[:500],
                             "outcome": t.outcome} for t in tests[:MAX_TESTS_PER_FAILURE]]
        failure["tests_more"] = max(0, len(tests) - MAX_TESTS_PER_FAILURE)
        return [self._delta("failure", dict(failure), failure["key"])]

    def tick(self, at: float) -> list[Delta]:
        """Time passes (elapsed, ETA) while no event comes: one progress delta, until the run ends."""
        if self.t0 is None or self.run["phase"] == "finished":
            return []
        self.now = max(self.now, round(at - self.t0, 3))
        return [self._progress()]

    # ------------------------------------------------------------------------------------------ events

    def _machine(self, name: str) -> dict[str, Any]:
        view = self.machines.get(name)
        if view is None:
            view = self.machines[name] = {"name": name, "slots": 0, "speed": 1.0, "status": "healthy",
                                          "reason": "", "health": {}, "probed_at": None, "lanes": 0,
                                          "passed": 0, "failed": 0, "running": 0}
        return view

    def _run_started(self, event: RunStarted) -> list[Delta]:
        self.run.update(run_id=event.run_id, strategy=event.strategy, phase="running",
                        expected_makespan=_num(event.expected_makespan), lower_bound=_num(event.lower_bound),
                        shards=len(event.shards))
        out = [self._delta("run", dict(self.run))]
        for info in event.machines:
            view = self._machine(info.name)
            view.update(slots=info.slots, speed=round(info.speed, 4), status=info.status, reason=info.reason,
                        lanes=max(view["lanes"], info.slots))
            out.append(self._delta("machine", dict(view), info.name))
        for shard in event.shards:
            self.shards[shard.id] = shard
            self.state.setdefault(shard.id, "queued")
        out.append(self._progress())
        return out

    def _shard_started(self, event: ShardStarted) -> list[Delta]:
        key = attempt_key(event.shard.id, event.attempt)
        self.shards.setdefault(event.shard.id, event.shard)
        if self.state.get(event.shard.id) != "passed":
            self.state[event.shard.id] = "running"
        lanes = self._lanes.setdefault(event.machine, [])
        lane = next((i for i, k in enumerate(lanes) if k is None), len(lanes))
        if lane == len(lanes):
            lanes.append(key)
        else:
            lanes[lane] = key
        machine = self._machine(event.machine)
        machine["lanes"] = max(machine["lanes"], len(lanes))
        machine["running"] += 1
        shard = event.shard
        self.attempts[key] = {
            "key": key, "shard": shard.id, "attempt": event.attempt, "machine": event.machine, "lane": lane,
            "start": self._rel(event.at), "end": None, "outcome": None, "reason": "",
            "speculative": event.speculative, "expected": _num(shard.expected),
            "files": list(shard.files[:5]), "files_more": max(0, len(shard.files) - 5),
            "label": f"{shard.index}/{shard.total}" if not shard.files else ""}
        self._tails[key] = collections.deque(maxlen=self.tail_lines)
        self._running.add(key)
        return [self._delta("attempt", dict(self.attempts[key]), key),
                self._delta("machine", dict(machine), event.machine), self._progress()]

    def _output(self, event: OutputLine) -> list[Delta]:
        key = attempt_key(event.shard_id, event.attempt)
        tail = self._tails.get(key)
        if tail is None:
            return []
        line = _line(event.line)
        tail.append(line)
        return [{"t": "line", "k": key, "v": line}]         # not numbered: not part of snapshots

    def _shard_finished(self, event: ShardFinished) -> list[Delta]:
        sid = event.shard.id
        key = attempt_key(sid, event.attempt)
        self.shards.setdefault(sid, event.shard)
        machine = self._machine(event.machine)
        lanes = self._lanes.get(event.machine, [])
        if key in lanes:
            lanes[lanes.index(key)] = None
        attempt = self.attempts.get(key)
        if attempt is None:                       # finished without a start (it never got going)
            attempt = self.attempts[key] = {
                "key": key, "shard": sid, "attempt": event.attempt, "machine": event.machine,
                "lane": None, "start": self._rel(event.started_at), "end": None, "outcome": None, "reason": "",
                "speculative": event.speculative, "expected": _num(event.shard.expected),
                "files": list(event.shard.files[:5]), "files_more": max(0, len(event.shard.files) - 5),
                "label": ""}
        else:
            machine["running"] = max(0, machine["running"] - 1)
        outcome = event.outcome
        attempt.update(end=self._rel(event.at), outcome=str(outcome), reason=event.reason,
                       exit_status=event.exit_status, signal=event.signal)
        tail = self._tails.pop(key, None)
        if tail:
            self._recent[key] = list(tail)
            while len(self._recent) > RECENT_TAILS:
                self._recent.popitem(last=False)
        self._running.discard(key)
        out: list[Delta] = [self._delta("attempt", dict(attempt), key)]
        current = self.state.get(sid)
        running_elsewhere = any(self.attempts[k]["shard"] == sid for k in self._running)
        if outcome is Outcome.PASSED:
            machine["passed"] += 1
            self.durations.append(event.duration)
            if sid in self.test_failed:
                self.flaky.add(sid)
            self.state[sid] = "passed"
        elif outcome is Outcome.CANCELLED:
            if current == "running" and not running_elsewhere:
                self.state[sid] = "waiting"
        else:
            machine["failed"] += 1
            if outcome is Outcome.TESTS_FAILED:
                self.durations.append(event.duration)
                self.test_failed.add(sid)
                if current != "passed":
                    self.state[sid] = "failed"
            elif current != "passed" and not running_elsewhere:
                self.state[sid] = "waiting"       # an infra failure: a retry or a not-run decision follows
            out.append(self._failure(event, list(tail or ()) or list(event.tail)))
        out.append(self._delta("machine", dict(machine), event.machine))
        out.append(self._progress())
        return out

    def _failure(self, event: ShardFinished, tail: list[str]) -> Delta:
        key = attempt_key(event.shard.id, event.attempt)
        failure = {
            "key": key, "shard": event.shard.id, "attempt": event.attempt, "machine": event.machine,
            "outcome": str(event.outcome), "kind": "tests" if event.outcome is Outcome.TESTS_FAILED else "infra",
            "reason": event.reason, "exit_status": event.exit_status, "signal": event.signal,
            "at": self._rel(event.at), "files": list(event.shard.files[:20]),
            "tail": [_line(t) for t in tail[-FAILURE_TAIL_LINES:]], "tests": [], "tests_more": 0,
            "log_path": event.log_path}
        tests = [FailedTest(name=f.name, message=f.message) for f in event.failures]
        failure["tests"] = [{"name": t.name, "classname": t.classname, "message": t.message[:500],
                             "outcome": t.outcome} for t in tests[:MAX_TESTS_PER_FAILURE]]
        failure["tests_more"] = max(0, len(tests) - MAX_TESTS_PER_FAILURE)
        self.failures[key] = failure
        while len(self.failures) > MAX_FAILURES:
            del self.failures[next(iter(self.failures))]
        return self._delta("failure", dict(failure), key)

    def _notice(self, text: str, level: str, machine: str | None, at: float) -> Delta:
        notice = {"text": text, "level": level, "machine": machine, "at": self._rel(at)}
        self.notices.append(notice)
        return self._delta("notice", notice)

    # ------------------------------------------------------------------------------------------ progress

    def _count(self, state: str) -> int:
        return sum(1 for value in self.state.values() if value == state)

    def progress(self) -> dict[str, Any]:
        total = len(self.shards)
        passed, failed, not_run = self._count("passed"), self._count("failed"), self._count("not-run")
        done = passed + failed + not_run
        elapsed = (self.run["ended"] if self.run["ended"] is not None else self.now) if self.t0 is not None else 0.0
        return {"total": total, "done": done, "passed": passed, "failed": failed, "not_run": not_run,
                "flaky": len(self.flaky), "running": len(self._running),
                "retries": self.retries, "elapsed": round(max(0.0, elapsed), 3),
                "fraction": round(self.fraction_done(), 4), "eta": _num(self.eta()),
                "expected_makespan": self.run["expected_makespan"], "lower_bound": self.run["lower_bound"]}

    def _progress(self) -> Delta:
        return self._delta("progress", self.progress())

    def fraction_done(self) -> float:
        """Work done in [0, 1]: by expected durations when every shard has one (running attempts count
        for the share of their expected time used, at most 95 %), else by shard count."""
        if not self.shards:
            return 0.0
        terminal = {sid for sid, v in self.state.items() if v in ("passed", "failed", "not-run")}
        expected = [s.expected for s in self.shards.values()]
        if any(e is None or e <= 0 for e in expected):
            return len(terminal & self.shards.keys()) / len(self.shards)
        partial: dict[str, float] = {}
        for a in (self.attempts[k] for k in self._running):
            shard = self.shards.get(a["shard"])
            if shard is None or not shard.expected or a["shard"] in terminal:
                continue
            speed = max(float(self.machines.get(a["machine"], {}).get("speed", 1.0)), 1e-6)
            share = min(0.95, max(0.0, (self.now - a["start"]) * speed / shard.expected))
            partial[a["shard"]] = max(partial.get(a["shard"], 0.0), share)
        total = sum(s.expected or 0.0 for s in self.shards.values())
        work = sum((s.expected or 0.0) * (1.0 if sid in terminal else partial.get(sid, 0.0))
                   for sid, s in self.shards.items())
        return min(1.0, work / total) if total > 0 else 0.0

    def eta(self) -> float | None:
        """Seconds left, None while nothing is known: what is left of the expected makespan (projected
        from actual progress when running late), else mean attempt time × shards left / usable slots."""
        total = len(self.shards)
        done = sum(1 for v in self.state.values() if v in ("passed", "failed", "not-run"))
        if self.run["phase"] == "finished" or (total and done >= total):
            return 0.0
        elapsed = self.now
        expected = float(self.run["expected_makespan"] or 0.0)
        if expected > 0:
            fraction = self.fraction_done()
            if fraction > 0 and elapsed / expected > fraction:
                return max(0.0, elapsed * (1.0 - fraction) / fraction)
            if elapsed <= expected:
                return max(0.0, expected - elapsed)
        slots = sum(int(m["slots"]) for m in self.machines.values() if m["status"] in USABLE)
        if not self.durations or not slots or not total:
            return None
        return sum(self.durations) / len(self.durations) * (total - done) / slots

    # ------------------------------------------------------------------------------------------ reading

    @property
    def finished(self) -> bool:
        return bool(self.run["phase"] == "finished")

    def tail(self, key: str) -> list[str] | None:
        """The output lines kept for a running attempt, a recently finished one, or a failure; else None."""
        tail = self._tails.get(key)
        if tail is not None:
            return list(tail)
        if key in self._recent:
            return list(self._recent[key])
        failure = self.failures.get(key)
        return list(failure["tail"]) if failure is not None else None

    def snapshot(self) -> dict[str, Any]:
        """The whole state, JSON-ready, as of delta ``seq``."""
        return {"seq": self.seq, "run": dict(self.run), "progress": self.progress(),
                "machines": {k: dict(v) for k, v in self.machines.items()},
                "attempts": {k: dict(v) for k, v in self.attempts.items()},
                "failures": {k: dict(v) for k, v in self.failures.items()},
                "notices": list(self.notices)}


def apply_delta(state: dict[str, Any], delta: Delta) -> None:
    """What a viewer does with a delta (the page's script does the same): the reference for tests."""
    kind = delta["t"]
    if kind in ("run", "progress"):
        state[kind] = delta["v"]
    elif kind in ("machine", "attempt", "failure"):
        state[kind + "s"][delta["k"]] = delta["v"]
    elif kind == "notice":
        state["notices"] = [*state["notices"], delta["v"]][-MAX_NOTICES:]
    state["seq"] = delta["seq"]
