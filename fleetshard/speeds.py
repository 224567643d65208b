"""Pure: machine speeds with how certain each one is, from evidence that can show them.

Nothing here does I/O. A speed is relative (2.0 finishes the same work in half the time) and is kept in
log space with a standard error ``se``: ``speed × exp(±se)`` is its one-sigma range.

Evidence, strongest first:

* **history**: the same test file timed on different machines (:class:`Sample`). For each file seen on two
  or more machines, each machine's log-ratio to the file's cross-machine median is one comparison; a
  machine's learned speed is the median of its comparisons. Comparisons from a single run are confounded
  (the same contention, the same order, a retry under load), so together they count as one comparison
  of noise ``CONFOUNDED_NOISE`` however many files they cover; only comparisons spread over several runs
  give a machine its full weight (at most ``RUN_WEIGHT`` comparisons per run beyond the first). Their
  spread (MAD) sets the noise, never below ``COMPARISON_NOISE``.
  A file timed on several machines in one run was split between them (different tests on each), and
  says nothing (:func:`whole_files`, applied to what history returns).
* **declared** in the inventory (``speed:``): the user's knowledge, fairly certain.
* **calibration**: the probe's CPU loop, a rough first guess.
* nothing: 1.0 and very uncertain.

Every source is a prior or a measurement with its own ``se``; :func:`estimate_speeds` combines them by
inverse variance, after bringing declared and calibrated speeds to the learned scale (learned speeds are
relative to the fleet's median machine). So one noisy run cannot outvote what the user declared or what
several runs agree on, and a machine whose speed is uncertain says so (:attr:`SpeedEstimate.certain`).

Planning uses :attr:`SpeedEstimate.planning`, the speed discounted by its uncertainty
(``speed × exp(-se)``): the longest tests go where the evidence for a fast machine is strongest, and a
machine is never handed the tail of the run on the strength of a speed nobody has really measured.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

SpeedSource = Literal["history", "declared", "calibration", "default"]

COMPARISON_NOISE = 0.25       # log-space noise of one file timed on two machines (about ±28 %)
CONFOUNDED_NOISE = 0.5        # ... and of all the comparisons one run gives, taken together
RUN_WEIGHT = 2.0              # comparisons over k runs weigh at most this × (k - 1) comparisons
DECLARED_SE = 0.2             # a speed the inventory declares
CALIBRATION_SE = 0.35         # the probe's CPU loop
DEFAULT_SE = 1.0              # nothing known: 1.0, and a factor e either way would not surprise
CERTAIN_SE = 0.2              # at or below this a speed counts as certain
MIN_DURATION = 1e-3           # shorter timings say nothing about speed


@dataclass(frozen=True)
class Sample:
    """One file's measured seconds on one machine in one run (a passed attempt)."""

    run_id: str
    file: str
    machine: str
    duration: float


@dataclass(frozen=True)
class SpeedEstimate:
    """A machine's relative speed and its log-space standard error."""

    speed: float
    se: float
    source: SpeedSource
    comparisons: int = 0          # files compared with other machines (history)
    runs: int = 0                 # distinct runs those comparisons came from

    @property
    def certain(self) -> bool:
        return self.se <= CERTAIN_SE

    @property
    def planning(self) -> float:
        """The speed to plan with: discounted by its uncertainty (one sigma slower)."""
        return self.speed * math.exp(-self.se)

    def describe(self) -> str:
        how = {"history": f"learned from {self.comparisons} file(s) over {self.runs} run(s)",
               "declared": "declared", "calibration": "CPU calibration", "default": "unknown"}[self.source]
        return f"{self.speed:.2g} ±{math.expm1(self.se) * 100:.0f}% ({how})"


@dataclass(frozen=True)
class _Learned:
    log_speed: float
    se: float
    comparisons: int
    runs: int


def _mad_sigma(values: Sequence[float]) -> float:
    if len(values) < 3:
        return 0.0
    med = statistics.median(values)
    return 1.4826 * statistics.median(abs(v - med) for v in values)


def whole_files(samples: Iterable[Sample]) -> list[Sample]:
    """The samples that time a whole file: a file timed on several machines in the same run was split
    between them (native ``--shard`` of a ``fullyParallel`` Playwright suite, a file split by test id), so
    each machine ran different tests of it and the timings compare the parts, not the machines. Those are
    left out; the same file timed on different machines in different runs is what shows speeds."""
    items = list(samples)
    machines: dict[tuple[str, str], set[str]] = defaultdict(set)
    for s in items:
        machines[(s.run_id, s.file)].add(s.machine)
    return [s for s in items if len(machines[(s.run_id, s.file)]) == 1]


def learn(samples: Iterable[Sample]) -> dict[str, _Learned]:
    """Log speed per machine relative to the fleet's median machine (log 0), from cross-machine files."""
    per_file: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    runs_of: dict[tuple[str, str], set[str]] = defaultdict(set)
    for s in samples:
        if math.isfinite(s.duration) and s.duration >= MIN_DURATION:
            per_file[s.file][s.machine].append(s.duration)
            runs_of[(s.file, s.machine)].add(s.run_id)
    comparisons: dict[str, list[tuple[float, frozenset[str]]]] = defaultdict(list)
    for file, per_machine in per_file.items():
        if len(per_machine) < 2:
            continue
        logs = {m: math.log(statistics.median(d)) for m, d in per_machine.items()}
        reference = statistics.median(logs.values())
        for m, value in logs.items():
            runs = frozenset(r for other in per_machine for r in runs_of[(file, other)])
            comparisons[m].append((reference - value, runs))
    raw: dict[str, _Learned] = {}
    for m, items in comparisons.items():
        values = [v for v, _ in items]
        seen: set[str] = set().union(*(r for _, r in items))
        if len(seen) > 1:   # more files cannot stand in for more runs: at most RUN_WEIGHT per extra run
            effective = min(float(len(values)), RUN_WEIGHT * (len(seen) - 1))
            se = max(_mad_sigma(values), COMPARISON_NOISE) / math.sqrt(effective)
        else:   # comparisons that all come from one run share its conditions: they weigh as one
            se = max(_mad_sigma(values), CONFOUNDED_NOISE)
        raw[m] = _Learned(statistics.median(values), se, len(values), len(seen))
    if not raw:
        return {}
    middle = statistics.median_high(v.log_speed for v in raw.values())
    return {m: _Learned(v.log_speed - middle, v.se, v.comparisons, v.runs) for m, v in raw.items()}


def estimate_speeds(names: Sequence[str], samples: Iterable[Sample] = (), *,
                    declared: Mapping[str, float] | None = None,
                    calibrated: Mapping[str, float] | None = None) -> dict[str, SpeedEstimate]:
    """Every machine's speed with its certainty, from history, the inventory and the calibration."""
    learned = learn(samples)
    priors: dict[str, tuple[float, float, SpeedSource]] = {}
    declared = {n: v for n, v in (declared or {}).items() if v and v > 0 and math.isfinite(v)}
    calibrated = {n: v for n, v in (calibrated or {}).items() if v and v > 0 and math.isfinite(v)}
    # The calibration is relative to its median machine: bring it to the declared scale through the
    # machines that have both, so that one machine's declared speed and another's loop time compare.
    common = [n for n in calibrated if n in declared]
    if common:
        factor = math.exp(statistics.median(math.log(declared[n] / calibrated[n]) for n in common))
        calibrated = {n: v * factor for n, v in calibrated.items()}
    sources: tuple[tuple[Mapping[str, float], float, SpeedSource], ...] = (
        (calibrated, CALIBRATION_SE, "calibration"), (declared, DECLARED_SE, "declared"))
    for table, prior_se, kind in sources:
        for name, value in table.items():
            if value and value > 0 and math.isfinite(value):
                priors[name] = (math.log(value), prior_se, kind)   # declared overrides calibration
    # Priors are on their own scale: bring them to the learned one through machines that have both.
    both = [n for n in names if n in learned and n in priors]
    shift = statistics.median(learned[n].log_speed - priors[n][0] for n in both) if both else 0.0
    out: dict[str, SpeedEstimate] = {}
    for name in names:
        p_source: SpeedSource = "default"
        p_log, p_se = (shift if both else 0.0), DEFAULT_SE
        if name in priors:
            p_log, p_se, p_source = priors[name][0] + shift, priors[name][1], priors[name][2]
        got = learned.get(name)
        if got is None:
            out[name] = SpeedEstimate(round(math.exp(p_log), 4), p_se, p_source)
            continue
        w_l, w_p = 1 / got.se ** 2, 1 / p_se ** 2
        log_speed = (w_l * got.log_speed + w_p * p_log) / (w_l + w_p)
        se = 1 / math.sqrt(w_l + w_p)
        out[name] = SpeedEstimate(round(math.exp(log_speed), 4), se, "history" if w_l >= w_p else p_source,
                                  got.comparisons, got.runs)
    return out
