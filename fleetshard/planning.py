"""Pure planning: expected durations, shards, static assignment, lower bound and a simulated makespan.

Nothing here does I/O, reads a clock or draws random numbers: the same inputs give the same plan.

Durations are seconds on a speed-1.0 machine. A shard of expected ``e`` takes ``e / speed + startup``
on a machine (``MachineSlots.startup`` is the fixed cost each shard pays there before its first test).

File mode (``build_shards``):

* an explicit shard count gives exactly that many shards, balanced by expected duration (LPT bin packing);
* ``auto`` with the dynamic strategy batches files by guided self-scheduling: the largest files go first,
  each batch is about ``remaining work / (k × total slots)`` (k = 2), so shards shrink towards the end of
  the queue and the last ones fill the gaps; with a known start-up cost, no batch is made much smaller than
  a few start-ups' worth of work;
* ``auto`` with the static strategy makes one shard per slot, sized to the slot's machine speed;
* ``auto`` with the dynamic strategy and durations from history plans per slot instead: files go longest
  first onto the slot that would finish them earliest (LPT with machine speeds), then each slot's files are
  cut into shards of at least ``PLANNED_STARTUPS`` start-ups of work, so the plan stays balanced while each
  shard's fixed cost stays small; the scheduler runs those lists and lets a machine that runs dry steal.

Native mode (``native_shards``): the suite's own ``--shard={shard}/{total}``; fleetshard only picks the count:
one shard per slot without history, else the count whose simulated makespan (equal shards, each paying its
machine's learned start-up) is least (:func:`choose_native_count`), with speeds not known for certain taken
as the fleet's median.
"""

from __future__ import annotations

import heapq
import math
import statistics
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, NamedTuple

from .model import MachineSlots, Shard

Strategy = Literal["static", "dynamic"]
EstimateSource = Literal["history", "collection", "filesize", "uniform"]

GSS_K = 2.0                 # batch ≈ remaining work / (GSS_K × total slots)
STARTUP_FACTOR = 3.0        # with a known start-up cost, batches of at least this many start-ups of work
PLANNED_STARTUPS = 10.0     # with history: a shard carries at least this many start-ups of work (≤ 10 % overhead)
NATIVE_MAX_PER_SLOT = 4     # auto native shard count: at most this many shards per slot are considered
NATIVE_MIN_GAIN = 0.03      # more native shards than slots only when they simulate this much faster


# --------------------------------------------------------------------------------------------- estimates

@dataclass(frozen=True)
class Estimates:
    """Expected seconds per file (speed-1.0 machine) and where they came from.

    ``source`` is ``"history"`` when at least one file has a recorded duration (unseen files get the
    median), ``"collection"`` when nothing is recorded but the runner's own collection counted the tests
    in each file (weights follow those counts, mean 1.0), ``"filesize"`` when weights follow file sizes
    (mean 1.0), ``"uniform"`` when nothing is known at all (1.0 each). Only history gives real seconds
    (:attr:`real`).
    """

    durations: dict[str, float]
    source: EstimateSource

    @property
    def real(self) -> bool:
        return self.source == "history"


def _valid(value: float) -> bool:
    return math.isfinite(value) and value >= 0.0


def _relative(unique: Sequence[str], values: Mapping[str, float] | None) -> dict[str, float] | None:
    """Weights proportional to ``values`` (missing files get the median), mean 1.0; None if unusable."""
    if not values:
        return None
    given = {f: float(values[f]) for f in unique if f in values and _valid(float(values[f]))}
    if not given or sum(given.values()) <= 0:
        return None
    median = statistics.median(given.values())
    raw = {f: given.get(f, median) for f in unique}
    mean = sum(raw.values()) / len(raw)
    return {f: v / mean for f, v in raw.items()}


def expected_durations(files: Sequence[str], known: Mapping[str, float], *,
                       sizes: Mapping[str, int] | None = None,
                       counts: Mapping[str, int] | None = None) -> Estimates:
    """Expected duration of each file: history, else tests per file from the runner's collection
    (``counts``), else relative file size, else 1.0 each."""
    unique = list(dict.fromkeys(files))
    seen = {f: float(known[f]) for f in unique if f in known and _valid(float(known[f]))}
    if seen:
        median = statistics.median(seen.values())
        return Estimates({f: seen.get(f, median) for f in unique}, "history")
    by_count = _relative(unique, {f: float(c) for f, c in (counts or {}).items()})
    if by_count is not None:
        return Estimates(by_count, "collection")
    by_size = _relative(unique, {f: float(v) for f, v in (sizes or {}).items()})
    if by_size is not None:
        return Estimates(by_size, "filesize")
    return Estimates({f: 1.0 for f in unique}, "uniform")


# ------------------------------------------------------------------------------------------------ basics

def _usable(machines: Iterable[MachineSlots]) -> list[MachineSlots]:
    return [m for m in machines if m.slots > 0 and m.speed > 0]


def capacity(machines: Sequence[MachineSlots]) -> float:
    """Σ slots × speed: speed-1.0 seconds of work the fleet does per second."""
    return sum(m.slots * m.speed for m in _usable(machines))


def lower_bound(durations: Sequence[float], machines: Sequence[MachineSlots]) -> float:
    """No schedule finishes sooner: max(total work / Σ(slots × speed), longest item / fastest speed)."""
    if not durations:
        return 0.0
    usable = _usable(machines)
    if not usable:
        return math.inf
    return max(sum(durations) / capacity(usable), max(durations) / max(m.speed for m in usable))


def shard_ids(n: int) -> list[str]:
    return [f"s{i:03d}" for i in range(1, n + 1)]


def _make_shards(groups: Sequence[Sequence[str]], weights: Mapping[str, float], real: bool) -> list[Shard]:
    n = len(groups)
    return [Shard(id=sid, index=i, total=n, files=tuple(group),
                  expected=sum(weights[f] for f in group) if real else None)
            for i, (sid, group) in enumerate(zip(shard_ids(n), groups, strict=True), start=1)]


# ---------------------------------------------------------------------------------------------- sharding

@dataclass
class ShardPlan:
    """Shards in queue order (ids ``s001…`` in that order) and why there are this many."""

    shards: list[Shard]
    why: str
    source: EstimateSource = "history"


def _lpt_bins(items: Sequence[str], weights: Mapping[str, float], speeds: Sequence[float]) -> list[list[str]]:
    """Longest first onto the bin that would finish it earliest (bin speeds scale the load)."""
    bins: list[list[str]] = [[] for _ in speeds]
    load = [0.0] * len(speeds)
    for f in sorted(items, key=lambda f: -weights[f]):        # sorted() is stable: ties keep input order
        w = weights[f]
        best = min(range(len(speeds)), key=lambda b: ((load[b] + w) / speeds[b], len(bins[b]), b))
        bins[best].append(f)
        load[best] += w
    return [b for b in bins if b]


def _gss_batches(items: Sequence[str], weights: Mapping[str, float], slots: int,
                 min_work: float) -> list[list[str]]:
    """Guided self-scheduling: largest first, each batch ≈ remaining / (k × slots), never below min_work
    (except the very last files) and never empty."""
    order = sorted(items, key=lambda f: -weights[f])
    remaining = sum(weights[f] for f in order)
    batches: list[list[str]] = []
    i = 0
    while i < len(order):
        target = max(remaining / (GSS_K * slots), min_work)
        batch = [order[i]]
        acc = weights[order[i]]
        i += 1
        while i < len(order) and acc < target:
            nxt = weights[order[i]]
            if acc + nxt - target > target - acc:          # adding overshoots more than stopping falls short
                break
            batch.append(order[i])
            acc += nxt
            i += 1
        remaining -= acc
        batches.append(batch)
    if min_work > 0 and len(batches) > 1 and sum(weights[f] for f in batches[-1]) < min_work / 2:
        batches[-2].extend(batches.pop())                  # a crumb is not worth a start-up of its own
    return batches


BASIS: dict[str, str] = {"history": "durations from history",
                         "collection": "no history: weights from the runner's tests per file",
                         "filesize": "no history: weights from file sizes",
                         "uniform": "no history: equal weights"}


def build_shards(files: Sequence[str], estimates: Estimates | Mapping[str, float],
                 machines: Sequence[MachineSlots], *, shards: int | None = None,
                 strategy: Strategy = "dynamic") -> ShardPlan:
    """Group test files into shards (file mode). See the module docstring for the rules.

    ``Shard.expected`` is the sum of the files' estimates when they are real seconds (history, or a plain
    mapping), else None: size-based or uniform weights still shape the shards but are not seconds.
    Files inside a shard keep their order in ``files``.
    """
    unique = list(dict.fromkeys(files))
    if isinstance(estimates, Estimates):
        given: Mapping[str, float] = estimates.durations
        source: EstimateSource = estimates.source
    else:
        given, source = estimates, "history"
    real = source == "history"
    if not unique:
        return ShardPlan([], "no test files", source)
    if shards is not None and shards < 1:
        raise ValueError(f"shard count must be at least 1, got {shards}")
    known_values = [float(given[f]) for f in unique if f in given and _valid(float(given[f]))]
    fill = statistics.median(known_values) if known_values else 1.0
    weights = {f: float(given[f]) if f in given and _valid(float(given[f])) else fill for f in unique}
    position = {f: i for i, f in enumerate(unique)}
    usable = _usable(machines)
    total_slots = sum(m.slots for m in usable) or 1
    basis = BASIS[source]

    if shards is not None:
        n = min(shards, len(unique))
        groups = _lpt_bins(unique, weights, [1.0] * n)
        why = f"{n} shards as requested" + (f" (only {len(unique)} files)" if shards > len(unique) else "")
        why += f", balanced by expected duration ({basis})"
    elif strategy == "static":
        speeds = [m.speed for m in usable for _ in range(m.slots)] or [1.0]
        if len(speeds) > len(unique):
            speeds = sorted(speeds, reverse=True)[:len(unique)]
        groups = _lpt_bins(unique, weights, speeds)
        why = (f"{len(groups)} shards: static strategy, one per slot ({total_slots} slots on "
               f"{len(usable)} machines), sized to each machine's speed ({basis})")
    elif real and usable:
        groups = _planned_chunks(unique, weights, usable)
        startup = sum(m.startup * m.slots for m in usable) / total_slots
        why = (f"{len(groups)} shards from {len(unique)} files: planned per slot, longest first onto the slot "
               f"that finishes it earliest, cut into shards of at least {PLANNED_STARTUPS:g} start-ups "
               f"(~{startup:.2f}s each) of work ({basis})")
    else:
        min_work = 0.0
        startup = 0.0
        if real and usable:
            startup = sum(m.startup * m.slots for m in usable) / total_slots
            min_work = STARTUP_FACTOR * sum(m.startup * m.speed * m.slots for m in usable) / total_slots
        groups = _gss_batches(unique, weights, total_slots, min_work)
        why = (f"{len(groups)} shards from {len(unique)} files: guided self-scheduling over {total_slots} "
               f"slots, largest first, each ≈ remaining work / ({GSS_K:g} × {total_slots})")
        if min_work > 0:
            why += f", at least ~{min_work:.0f}s of work each to amortise a ~{startup:.1f}s start-up"
        why += f" ({basis})"

    groups = [sorted(g, key=position.__getitem__) for g in groups]
    ordered = sorted(groups, key=lambda g: (-sum(weights[f] for f in g), position[g[0]]))
    return ShardPlan(_make_shards(ordered, weights, real), why, source)


def _planned_chunks(items: Sequence[str], weights: Mapping[str, float],
                    machines: Sequence[MachineSlots]) -> list[list[str]]:
    """LPT of single files over every slot (with machine speeds), then each slot's list cut into shards
    of at least PLANNED_STARTUPS start-ups of work on that machine."""
    slots = [m for m in machines for _ in range(m.slots)]
    finish = [0.0] * len(slots)
    lists: list[list[str]] = [[] for _ in slots]
    for f in sorted(items, key=lambda f: -weights[f]):
        k = min(range(len(slots)), key=lambda k: (finish[k] + weights[f] / slots[k].speed, k))
        finish[k] += weights[f] / slots[k].speed
        lists[k].append(f)
    groups: list[list[str]] = []
    for k, files in enumerate(lists):
        min_work = PLANNED_STARTUPS * slots[k].startup * slots[k].speed
        mine: list[list[str]] = []
        chunk: list[str] = []
        work = 0.0
        for f in files:
            chunk.append(f)
            work += weights[f]
            if work >= min_work:
                mine.append(chunk)
                chunk, work = [], 0.0
        if chunk:
            if mine and work < min_work / 2:
                mine[-1].extend(chunk)          # a small remainder joins the slot's previous shard
            else:
                mine.append(chunk)
        groups += mine
    return groups


@dataclass(frozen=True)
class NativeChoice:
    """How many native shards, and the simulated makespans that decided it (``{count: seconds}``)."""

    count: int
    why: str
    simulated: dict[int, float] = field(default_factory=dict)


def _at_median_unless_certain(machines: Sequence[MachineSlots],
                              certain: Collection[str] | None) -> list[MachineSlots]:
    """``machines`` with every speed not in ``certain`` replaced by the median speed (None: all as given)."""
    if certain is None or not machines:
        return list(machines)
    median = statistics.median(m.speed for m in machines)
    return [m if m.name in certain else replace(m, speed=median) for m in machines]


def choose_native_count(machines: Sequence[MachineSlots], work: float | None, *,
                        max_per_slot: int = NATIVE_MAX_PER_SLOT,
                        certain: Collection[str] | None = None) -> NativeChoice:
    """``shards: auto`` in native mode: the count whose simulated makespan is least.

    ``work`` is the suite's seconds of test time on a speed-1.0 machine (from history), None when unknown.
    Unknown: one shard per slot, each start-up paid once. Known: every count from 1 to
    ``max_per_slot`` × slots is simulated as equal shards of ``work / n`` on a dynamic queue, each paying
    its machine's start-up; more shards than slots win only when they beat one per slot by more than
    ``NATIVE_MIN_GAIN`` (machines that differ in speed enough to pay for the extra start-ups), and fewer
    shards than slots only when a slow machine's slot is not worth its start-up at all.

    ``certain`` names the machines whose speed is known for certain; the others are simulated at the
    fleet's median speed. A count other than one per slot pays extra start-ups (a Playwright shard's is
    seconds) or leaves a slot idle, so it is never bet on a speed that one loaded run or a noisy
    calibration suggested. None: every speed as given.
    """
    usable = _at_median_unless_certain(_usable(machines), certain)
    slots = sum(m.slots for m in usable)
    if not usable:
        return NativeChoice(1, "1 shard: no machine with a free slot")
    if work is None or not math.isfinite(work) or work <= 0:
        return NativeChoice(slots, f"{slots} shards: one per slot ({slots} slots), no history of this "
                                   "suite's test time yet, so each start-up is paid once")
    simulated: dict[int, float] = {}
    for n in range(1, max(1, max_per_slot * slots) + 1):
        shards = [Shard(id=sid, index=i, total=n, expected=work / n)
                  for i, sid in enumerate(shard_ids(n), start=1)]
        simulated[n] = simulate(shards, usable, strategy="dynamic").makespan
    per_slot = simulated[slots]
    best = min(simulated, key=lambda n: (simulated[n], n))
    if best > slots and simulated[best] > per_slot * (1 - NATIVE_MIN_GAIN):
        best = min((n for n in simulated if n <= slots), key=lambda n: (simulated[n], n))
    startup = sum(m.startup * m.slots for m in usable) / slots
    base = (f"{work:.1f}s of test work at speed 1 from history, start-up ~{startup:.2f}s per shard; "
            f"simulated makespan {simulated[best]:.1f}s")
    if best == slots:
        why = f"{best} shards: one per slot ({slots} slots) simulates best ({base})"
    elif best > slots:
        why = (f"{best} shards for {slots} slots: machines differ in speed enough to pay for "
               f"{best - slots} extra start-ups ({base}, vs {per_slot:.1f}s with one per slot)")
    else:
        why = (f"{best} shards for {slots} slots: a slow slot is not worth its start-up "
               f"({base}, vs {per_slot:.1f}s with one per slot)")
    return NativeChoice(best, why, simulated)


def native_shards(total: int | None, machines: Sequence[MachineSlots],
                  strategy: Strategy = "dynamic", *, work: float | None = None,
                  certain: Collection[str] | None = None) -> list[Shard]:
    """Shards for the suite's own sharding ({shard}/{total}): no files, expected unknown.

    Auto count: one per slot for the static strategy; :func:`choose_native_count` for dynamic.
    """
    if total is not None:
        if total < 1:
            raise ValueError(f"shard count must be at least 1, got {total}")
        n = total
    elif strategy == "static":
        n = max(1, sum(m.slots for m in _usable(machines)))
    else:
        n = choose_native_count(machines, work, certain=certain).count
    return [Shard(id=sid, index=i, total=n) for i, sid in enumerate(shard_ids(n), start=1)]


def native_why(n: int, machines: Sequence[MachineSlots], strategy: Strategy, explicit: bool, *,
               work: float | None = None, certain: Collection[str] | None = None) -> str:
    """The human reason for a native shard count (for ``fleetshard plan``)."""
    slots = sum(m.slots for m in _usable(machines))
    if explicit:
        return f"{n} shards as requested (native sharding)"
    if strategy == "static":
        return f"{n} shards: static strategy, one per slot ({slots} slots), native sharding"
    why = choose_native_count(machines, work, certain=certain).why
    if certain is not None and any(m.name not in certain for m in _usable(machines)):
        uncertain = sorted(m.name for m in _usable(machines) if m.name not in certain)
        why += f"; speeds not known for certain counted as the median ({', '.join(uncertain)})"
    return why + ", native sharding"


def order_for_queue(shards: Sequence[Shard]) -> list[Shard]:
    """Longest expected first (stable); shards with unknown expected follow in their input order."""
    known = [s for s in shards if s.expected is not None]
    unknown = [s for s in shards if s.expected is None]
    return sorted(known, key=lambda s: -(s.expected or 0.0)) + unknown


# ----------------------------------------------------------------------------------- static assignment

def assign_static(shards: Sequence[Shard], machines: Sequence[MachineSlots]) -> dict[str, str]:
    """Core-weighted assignment: each machine gets work in proportion to slots × speed.

    Known expected durations (every shard has one): :func:`lpt_assign`, i.e. longest first onto the machine
    whose next free slot would finish it earliest. That is the rule "onto the machine whose
    (assigned + d) / (slots × speed) is least" taken down to slot granularity: a machine-level balance
    alone can hand a machine one shard more than it has slots (measured: up to 1.26× worse on a
    24 + 8 + 4-slow-core fleet). Unknown durations: shard counts in proportion to slots × speed
    (each next shard onto the machine whose (count + 1) / (slots × speed) is least; ties to the earlier).
    """
    usable = _usable(machines)
    if not usable:
        raise ValueError("no machine with a free slot to assign shards to")
    if shards and all(s.expected is not None for s in shards):
        return lpt_assign(shards, usable)
    count = [0] * len(usable)
    caps = [m.slots * m.speed for m in usable]
    out: dict[str, str] = {}
    for s in shards:
        best = min(range(len(usable)), key=lambda i: ((count[i] + 1) / caps[i], i))
        count[best] += 1
        out[s.id] = usable[best].name
    return out


def lpt_assign(shards: Sequence[Shard], machines: Sequence[MachineSlots]) -> dict[str, str]:
    """LPT with machine speeds: longest first onto the slot that would finish it earliest.

    Unknown expected counts as 1.0. Running ``simulate(order_for_queue(shards), ..., strategy="static",
    assignment=lpt_assign(...))`` reproduces the LPT schedule exactly.
    """
    usable = _usable(machines)
    if not usable:
        raise ValueError("no machine with a free slot to assign shards to")
    slot_machine = [i for i, m in enumerate(usable) for _ in range(m.slots)]
    free = [0.0] * len(slot_machine)
    out: dict[str, str] = {}
    for s in order_for_queue(shards):
        d = s.expected if s.expected is not None else 1.0

        def finish(k: int, d: float = d) -> tuple[float, int]:
            m = usable[slot_machine[k]]
            return free[k] + m.startup + d / m.speed, k

        best = min(range(len(free)), key=finish)
        free[best] = finish(best)[0]
        out[s.id] = usable[slot_machine[best]].name
    return out


# -------------------------------------------------------------------------------------------- simulation

class Placement(NamedTuple):
    shard_id: str
    machine: str
    start: float
    end: float


@dataclass
class Simulation:
    """What a plan would do if every shard took exactly its expected time."""

    makespan: float
    busy: dict[str, float]                 # slot-seconds of work per machine
    finish: dict[str, float]               # when each machine's last shard ends (0.0 when it gets none)
    placements: list[Placement] = field(default_factory=list)
    known: bool = True                     # False when some expected duration was unknown (counted as 1.0)


def fill_order(machines: Sequence[MachineSlots]) -> list[int]:
    """Indices of machines in the order free slots are filled when several are free at once:
    fastest first, then inventory order. The scheduler fills in the same order."""
    return sorted(range(len(machines)), key=lambda i: (-machines[i].speed, i))


def simulate(shards: Sequence[Shard], machines: Sequence[MachineSlots], *, strategy: Strategy,
             assignment: Mapping[str, str] | None = None) -> Simulation:
    """Event simulation of a run where each shard takes expected / speed + startup.

    dynamic: one queue in the given order; whenever a slot frees, its machine takes the next shard.
    static: each machine runs its assigned shards (``assignment``, default :func:`assign_static`) in the
    given order, up to ``slots`` at once.
    """
    usable = _usable(machines)
    if shards and not usable:
        raise ValueError("no machine with a free slot to simulate on")
    known = all(s.expected is not None for s in shards)
    busy = {m.name: 0.0 for m in usable}
    finish = {m.name: 0.0 for m in usable}
    placements: list[Placement] = []
    rank = {usable[i].name: r for r, i in enumerate(fill_order(usable))}

    def run(shard: Shard, m: MachineSlots, start: float) -> float:
        d = shard.expected if shard.expected is not None else 1.0
        end = start + m.startup + d / m.speed
        placements.append(Placement(shard.id, m.name, start, end))
        busy[m.name] += end - start
        finish[m.name] = max(finish[m.name], end)
        return end

    by_name = {m.name: m for m in usable}
    if strategy == "dynamic":
        heap = [(0.0, rank[m.name], k, m.name) for m in usable for k in range(m.slots)]
        heapq.heapify(heap)
        for s in shards:
            t, r, k, name = heapq.heappop(heap)
            heapq.heappush(heap, (run(s, by_name[name], t), r, k, name))
    else:
        plan = dict(assignment) if assignment is not None else assign_static(shards, usable)
        for s in shards:
            if plan.get(s.id) not in by_name:
                raise ValueError(f"shard {s.id} is assigned to unknown machine {plan.get(s.id)!r}")
        for m in usable:
            free = [0.0] * m.slots
            for s in shards:
                if plan[s.id] == m.name:
                    t = heapq.heappop(free)
                    heapq.heappush(free, run(s, m, t))
    makespan = max((p.end for p in placements), default=0.0)
    return Simulation(makespan, busy, finish, placements, known)
