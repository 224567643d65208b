"""Plain values shared by the planner, the scheduler and the runner. No I/O here."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Outcome(StrEnum):
    """How one shard attempt ended."""

    PASSED = "passed"
    TESTS_FAILED = "tests-failed"     # the command ran and reported test failures
    INFRA_FAILED = "infra-failed"     # connect error, lost connection, signal, infra exit code, setup failure
    TIMED_OUT = "timed-out"           # killed by the per-shard timeout (an infrastructure failure)
    CANCELLED = "cancelled"           # stopped by fleetshard: Ctrl-C, --fail-fast, lost speculation race

    @property
    def is_infra(self) -> bool:
        return self in (Outcome.INFRA_FAILED, Outcome.TIMED_OUT)


class MachineHealth(StrEnum):
    """A machine's status as the run shows it (decided by the scheduler alone)."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"             # an infrastructure failure there; still takes work
    UNHEALTHY = "unhealthy"           # a re-probe failed its thresholds; waited for, it may recover
    DRAINED = "drained"               # takes no more work this run
    LOST = "lost"                     # gone: the liveness check failed, or unhealthy for too long
    UNREACHABLE = "unreachable"       # never reached (left out before the run)

    @property
    def usable(self) -> bool:
        return self in (MachineHealth.HEALTHY, MachineHealth.DEGRADED)


class ShardState(StrEnum):
    """Where a shard stands. The last four are terminal."""

    QUEUED = "queued"
    WAITING = "waiting"               # queued again, backing off before a retry
    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"                 # tests failed (after any --retry-failed-tests)
    NOT_RUN = "not-run"               # could not be run: infra failures exhausted retries, no machine, cancelled

    @property
    def terminal(self) -> bool:
        return self in (ShardState.PASSED, ShardState.FAILED, ShardState.NOT_RUN)


@dataclass(frozen=True)
class Shard:
    """One unit of work: a slice of the suite that runs as one command on one machine."""

    id: str                           # "s001": stable within a run, used in paths and reports
    index: int                        # 1-based, the {shard} placeholder
    total: int                        # the {total} placeholder
    files: tuple[str, ...] = ()       # file mode: the test files ({files}); empty in native-shard mode
    expected: float | None = None     # expected seconds on a speed-1.0 machine; None when unknown
    tests: tuple[str, ...] = ()       # with a runner: the test ids of those files ({tests}); else empty


@dataclass(frozen=True)
class TestFailure:
    """A failing test as its runner reports it: what the failure announcements name."""

    __test__ = False                  # not a test class, for pytest's collector

    name: str                         # the runner's id or name (pytest node id, Playwright title path)
    message: str = ""                 # the first line of the runner's message
    file: str | None = None
    line: int | None = None


@dataclass(frozen=True)
class MachineSlots:
    """What the scheduler knows of a machine: how many shards at once, and how fast."""

    name: str
    slots: int
    speed: float = 1.0                # relative: 2.0 finishes the same work in half the time
    startup: float = 0.0              # fixed seconds each shard pays before its first test (learned)


@dataclass(frozen=True)
class RetryPolicy:
    """What the scheduler does with failures."""

    max_retries: int = 2              # extra attempts after an infrastructure failure
    retry_failed_tests: int = 0       # extra attempts after a test failure (flaky detection)
    backoff_base: float = 5.0         # first retry waits this long (before jitter) ...
    backoff_factor: float = 2.0       # ... and each next one this many times longer
    backoff_max: float = 120.0
    drain_after: int = 2              # infra failures on one machine before it takes no more work
    fail_fast: bool = False           # first test failure: cancel everything else
    speculate: bool = False           # run a backup copy of a straggler on an idle faster slot


EXIT_OK = 0
EXIT_TESTS_FAILED = 1
EXIT_USAGE = 2
EXIT_INFRA = 3
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Verdict:
    """What an exit code means, in each of the places that say it."""

    kind: str                         # ok | fail | infra | cancelled: the colour family in reports
    word: str                         # the step summary's heading, `fleetshard: <word>`
    webhook: str                      # the webhook's `verdict` field
    description: str                  # for people: `fleetshard report`, the HTML report, the summary


VERDICTS = {
    EXIT_OK: Verdict("ok", "passed", "passed", "all tests passed"),
    EXIT_TESTS_FAILED: Verdict("fail", "tests failed", "failed", "tests failed"),
    EXIT_USAGE: Verdict("fail", "usage error", "failed", "usage or configuration error"),
    EXIT_INFRA: Verdict("infra", "infrastructure failure", "infrastructure failure",
                        "infrastructure failure: shards could not be run"),
    EXIT_INTERRUPTED: Verdict("cancelled", "interrupted", "interrupted", "interrupted"),
}
"""The one table of verdicts."""


def verdict_of(code: int) -> Verdict:
    return VERDICTS.get(code, Verdict("fail", f"exit {code}", "failed", f"exit code {code}"))
