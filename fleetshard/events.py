"""Events: everything that happens during a run, as frozen values on one queue.

The transports and the runner turn what happens on machines into these events; the scheduler
decides on them, and the progress renderers, result writers and history subscribe to them.
Every event carries ``at``, a monotonic timestamp in seconds taken by the runner's clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .model import Outcome, Shard, TestFailure

if TYPE_CHECKING:
    from .probes import HealthReport


@dataclass(frozen=True)
class MachineInfo:
    name: str
    slots: int
    speed: float
    status: str = "healthy"           # healthy | unhealthy | unreachable | drained | lost
    reason: str = ""


@dataclass(frozen=True)
class RunStarted:
    run_id: str
    machines: tuple[MachineInfo, ...]
    shards: tuple[Shard, ...]
    strategy: str
    expected_makespan: float | None   # seconds, from the plan; None when durations are unknown
    lower_bound: float | None
    log_dir: str
    at: float


@dataclass(frozen=True)
class ShardStarted:
    machine: str
    shard: Shard
    attempt: int                      # 1-based attempt number of this shard
    command: str                      # the command as run (for logs and reports)
    log_path: str
    at: float
    speculative: bool = False


@dataclass(frozen=True)
class OutputLine:
    machine: str
    shard_id: str
    attempt: int
    line: str
    at: float
    stream: str = "stdout"


@dataclass(frozen=True)
class ShardFinished:
    machine: str
    shard: Shard
    attempt: int
    outcome: Outcome
    exit_status: int | None           # None when the process never reported one (lost, killed)
    signal: str | None
    reason: str                       # human explanation, "" when passed
    started_at: float
    at: float                         # the slot is free again (after the JUnit and artifact downloads)
    log_path: str
    tail: tuple[str, ...] = ()        # last lines of output, for failure announcements
    speculative: bool = False
    command: str = ""                 # the command as run ("" when it never started)
    junit_path: str | None = None     # local copy of the attempt's JUnit XML
    artifacts: tuple[str, ...] = ()   # local copies of the attempt's artifacts
    failures: tuple[TestFailure, ...] = ()   # the failing tests its JUnit names (or its files, without)
    rerun: tuple[str, ...] | None = None     # test ids that rerun exactly its failures (None: the shard)
    ended_at: float | None = None     # the process ended (None: at ``at``); downloads come after

    @property
    def duration(self) -> float:
        """Seconds the process ran (the downloads after it excluded)."""
        end = self.at if self.ended_at is None else self.ended_at
        return max(0.0, end - self.started_at)


@dataclass(frozen=True)
class TestReported:
    """A warm pytest worker reported one phase of a test as it finished (the shard's JUnit follows)."""

    machine: str
    shard_id: str
    attempt: int
    test: str                         # the node id
    when: str                         # setup | call | teardown
    outcome: str                      # passed | failed | skipped
    duration: float
    at: float


@dataclass(frozen=True)
class ShardRetrying:
    shard: Shard
    next_attempt: int
    after_s: float
    avoid: str | None
    reason: str
    at: float


@dataclass(frozen=True)
class ShardNotRun:
    shard: Shard
    reason: str
    at: float


@dataclass(frozen=True)
class ShardSettled:
    """The scheduler settled a shard: its final state (passed | failed | not-run), flaky, and why."""

    shard: Shard
    state: str
    flaky: bool
    reason: str
    at: float


@dataclass(frozen=True)
class MachineStatus:
    """A machine changed status (healthy | degraded | unhealthy | drained | lost, see MachineHealth).

    Emitted by producers it is an observation (a probe failed, the liveness check failed, setup failed)
    for the scheduler, which alone decides; views see only the statuses the scheduler settled."""

    machine: str
    status: str                       # healthy | degraded | drained | lost | unhealthy
    reason: str
    at: float


@dataclass(frozen=True)
class ProbeResult:
    """What a health probe found on a machine (before the run and at each re-probe), for the views."""

    machine: str
    healthy: bool
    reasons: tuple[str, ...]
    load1: float | None
    mem_used_pct: float | None
    disk_free_pct: float | None
    latency_ms: float | None
    at: float

    @classmethod
    def of(cls, report: HealthReport, at: float) -> ProbeResult:
        """From a :class:`fleetshard.probes.HealthReport`."""
        return cls(machine=report.machine, healthy=report.healthy, reasons=tuple(report.reasons),
                   load1=report.load1, mem_used_pct=report.mem_used_pct, disk_free_pct=report.disk_free_pct,
                   latency_ms=report.latency_ms, at=at)


@dataclass(frozen=True)
class Notice:
    """A one-line message for the user (setup output, warnings)."""

    text: str
    at: float
    level: str = "info"               # info | warning | error
    machine: str | None = None


@dataclass(frozen=True)
class Tick:
    """About once a second, events or not: the scheduler may speculate, views refresh their status."""

    at: float


@dataclass(frozen=True)
class RunFinished:
    exit_code: int
    at: float
    summary: dict[str, int] = field(default_factory=dict)


Event = (RunStarted | ShardStarted | OutputLine | TestReported | ShardFinished | ShardRetrying | ShardNotRun
         | ShardSettled | MachineStatus | ProbeResult | Notice | Tick | RunFinished)
