"""The record of one run: what the JSON report, the history database and the HTML report are made of.

Times here are wall-clock seconds since the epoch (the runner converts its monotonic clock).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class AttemptRecord:
    shard_id: str
    attempt: int
    machine: str
    outcome: str                      # passed | tests-failed | infra-failed | timed-out | cancelled
    started: float
    ended: float
    exit_status: int | None = None
    signal: str | None = None
    reason: str = ""
    log_path: str = ""
    junit_path: str | None = None     # local copy of the attempt's JUnit XML, when one was produced
    speculative: bool = False
    command: str = ""
    artifacts: list[str] = field(default_factory=list)
    queued: float | None = None       # state timestamps: queued -> assigned -> running (= started) -> ended
    assigned: float | None = None
    released: float | None = None     # the slot was free again: ended + the JUnit/artifact download phase

    @property
    def duration(self) -> float:
        return max(0.0, self.ended - self.started)


@dataclass
class ShardRecord:
    id: str
    index: int
    total: int
    files: list[str]
    expected: float | None
    state: str                        # passed | failed | not-run
    reason: str = ""                  # why not run / why failed
    flaky: bool = False


@dataclass
class TestRecord:
    """One testcase from a shard's JUnit XML (the attempt that decided the shard)."""

    __test__ = False                  # not a pytest class

    name: str
    classname: str
    file: str | None
    time: float
    outcome: str                      # passed | failed | error | skipped
    shard_id: str
    attempt: int
    machine: str
    flaky: bool = False
    message: str = ""                 # the first line of the runner's message
    id: str = ""                      # the runner's own id (pytest node id, Playwright title path)
    line: int | None = None           # 1-based, where the runner tells it

    @property
    def label(self) -> str:
        """How the test is named in reports: the runner's id, else classname::name."""
        if self.id:
            return self.id
        return f"{self.classname}::{self.name}" if self.classname else self.name


@dataclass
class MachineRecord:
    name: str
    slots: int
    speed: float
    status: str                       # healthy | unhealthy | unreachable | drained | lost
    reason: str = ""
    health: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunRecord:
    run_id: str
    started: float
    ended: float
    argv: list[str]
    inventory: str
    strategy: str
    mode: str                         # native | files
    command: str
    exit_code: int
    machines: list[MachineRecord] = field(default_factory=list)
    shards: list[ShardRecord] = field(default_factory=list)
    attempts: list[AttemptRecord] = field(default_factory=list)
    tests: list[TestRecord] = field(default_factory=list)
    expected_makespan: float | None = None
    lower_bound: float | None = None
    run_dir: str = ""
    commit: str | None = None
    notes: list[str] = field(default_factory=list)   # e.g. "shard s003 produced no JUnit XML"
    runner: str = "command"           # suite.runner: pytest | playwright | jest | command

    @property
    def duration(self) -> float:
        return max(0.0, self.ended - self.started)

    @property
    def makespan(self) -> float | None:
        """From the first attempt's start to the last attempt's end (None before any attempt)."""
        if not self.attempts:
            return None
        return max(a.ended for a in self.attempts) - min(a.started for a in self.attempts)

    def counts(self) -> dict[str, int]:
        states = [s.state for s in self.shards]
        return {"shards": len(states), "passed": states.count("passed"), "failed": states.count("failed"),
                "not_run": states.count("not-run"), "flaky": sum(s.flaky for s in self.shards),
                "retries": sum(1 for a in self.attempts if a.attempt > 1 and not a.speculative)}

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON. Shallow copies of the flat records (``asdict`` deep-copies: slow for
        big runs); equal to ``asdict(self)`` plus duration and counts."""
        data: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(RunRecord)}
        for key in ("machines", "shards", "attempts", "tests"):
            data[key] = [{f.name: getattr(item, f.name) for f in fields(item)} for item in data[key]]
        for item in data["machines"]:
            item["health"] = dict(item["health"])
        for item in data["shards"]:
            item["files"] = list(item["files"])
        for item in data["attempts"]:
            item["artifacts"] = list(item["artifacts"])
        data["argv"], data["notes"] = list(self.argv), list(self.notes)
        data["duration"] = self.duration
        data["counts"] = self.counts()
        return data


SECRET_OPTIONS = ("--notify",)      # their values (a webhook URL holds a token) never reach reports or history


def redact_argv(argv: Sequence[str]) -> list[str]:
    out: list[str] = []
    hide = False
    for arg in argv:
        if hide:
            out.append("***")
            hide = False
        elif arg in SECRET_OPTIONS:
            out.append(arg)
            hide = True
        elif arg.startswith(tuple(f"{o}=" for o in SECRET_OPTIONS)):
            out.append(arg.split("=", 1)[0] + "=***")
        else:
            out.append(arg)
    return out


@dataclass
class MachineSummary:
    name: str
    slots: int
    status: str
    reason: str
    shards: int = 0
    passed: int = 0
    failed: int = 0                   # tests failed
    infra: int = 0                    # infra failed or timed out
    retries: int = 0
    busy: float = 0.0

    def utilisation(self, wall: float) -> float | None:
        """The one utilisation formula: busy slot-seconds over slots x wall time, at most 1."""
        capacity = self.slots * wall
        return None if capacity <= 0 else min(1.0, self.busy / capacity)


def machine_summaries(record: RunRecord) -> list[MachineSummary]:
    """Per-machine totals from ``record.attempts``, in inventory order."""
    rows = {m.name: MachineSummary(m.name, m.slots, m.status, m.reason) for m in record.machines}
    for attempt in record.attempts:
        row = rows.get(attempt.machine)
        if row is None:
            row = rows[attempt.machine] = MachineSummary(attempt.machine, 0, "", "")
        row.shards += 1
        row.busy += attempt.duration
        if attempt.attempt > 1 and not attempt.speculative:
            row.retries += 1
        if attempt.outcome == "passed":
            row.passed += 1
        elif attempt.outcome == "tests-failed":
            row.failed += 1
        elif attempt.outcome in ("infra-failed", "timed-out"):
            row.infra += 1
    return list(rows.values())
