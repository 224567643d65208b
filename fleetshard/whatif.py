"""What if: how long would a recorded run have taken on other machines? A simulation, not a measurement.

From one run of the history: each shard's work is the time its deciding attempt took, less its machine's
start-up cost, times that machine's speed (seconds on a speed-1.0 machine). The machines are the run's
own (slots, learned speed, learned start-up cost). Changes to them, written ``KIND:ARGS`` and separated by
commas (``--what-if`` may also be given more than once):

* ``without:NAME`` — the run without that machine;
* ``like:NAME=NEW`` — one more machine ``NEW`` with the slots, speed and start-up of ``NAME`` (either order:
  the name that is in the run is the model, the other the new machine);
* ``slots:NAME=N`` — that machine with N slots;
* ``speed:NAME=X`` — that machine at speed X (relative; 2 = twice as fast).

Both fleets are run through the planner's own simulation (:func:`fleetshard.planning.simulate` with the
assignment the run's strategy would make), and each gets its lower bound
(:func:`fleetshard.planning.lower_bound`). Everything here but :func:`what_if_command` is pure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from . import planning
from .errors import UsageError
from .model import MachineSlots, Shard
from .record import RunRecord
from .results import attempts_by_shard, deciding_attempt

if TYPE_CHECKING:
    from rich.console import Console

    from .inventory import Inventory

Kind = Literal["without", "like", "slots", "speed"]
KINDS: tuple[Kind, ...] = ("without", "like", "slots", "speed")
LABEL = "simulation from recorded durations"


@dataclass(frozen=True)
class Change:
    kind: Kind
    machine: str
    other: str = ""                # like: the second name
    value: float = 0.0             # slots / speed

    def __str__(self) -> str:
        if self.kind == "without":
            return f"without:{self.machine}"
        if self.kind == "like":
            return f"like:{self.machine}={self.other}"
        value = int(self.value) if self.kind == "slots" else self.value
        return f"{self.kind}:{self.machine}={value:g}"


def parse_changes(specs: Sequence[str]) -> list[Change]:
    """``["without:h2,slots:h1=8"]`` → changes; a UsageError naming the bad part otherwise."""
    changes: list[Change] = []
    for spec in specs:
        for part in (p.strip() for p in spec.split(",")):
            if part:
                changes.append(_parse_one(part))
    return changes


def _parse_one(part: str) -> Change:
    kind, sep, rest = part.partition(":")
    if not sep or kind not in KINDS:
        raise UsageError(f"--what-if: {part!r}: expected one of without:NAME, like:NAME=NEW, slots:NAME=N, "
                         "speed:NAME=X")
    if kind == "without":
        if not rest or "=" in rest:
            raise UsageError(f"--what-if: {part!r}: expected without:NAME")
        return Change("without", rest)
    name, eq, value = rest.partition("=")
    if not name or not eq or not value:
        raise UsageError(f"--what-if: {part!r}: expected {kind}:NAME={'NEW' if kind == 'like' else 'VALUE'}")
    if kind == "like":
        return Change("like", name, other=value)
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if kind == "slots" and (not value.isdigit() or int(value) < 1):
        raise UsageError(f"--what-if: {part!r}: slots must be a positive whole number")
    if kind == "speed" and not (math.isfinite(number) and number > 0):
        raise UsageError(f"--what-if: {part!r}: speed must be a positive number")
    return Change(kind, name, value=number)


@dataclass(frozen=True)
class Fleet:
    """One fleet and what the simulation says of it."""

    label: str
    machines: tuple[MachineSlots, ...]
    makespan: float
    lower_bound: float


@dataclass(frozen=True)
class WhatIf:
    run_id: str
    strategy: str
    actual_makespan: float | None
    recorded_expected: float | None       # what the plan expected when the run started
    baseline: Fleet
    scenario: Fleet | None                # None when no change was asked for
    changes: tuple[str, ...]
    shards: int
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ratio(self) -> float | None:
        if self.scenario is None or self.baseline.makespan <= 0:
            return None
        return self.scenario.makespan / self.baseline.makespan


def recorded_work(record: RunRecord, speeds: Mapping[str, float], startup: Mapping[str, float]
                  ) -> tuple[list[Shard], list[str]]:
    """The run's shards with ``expected`` = the work their deciding attempt did (speed-1.0 seconds),
    and notes on shards that had to be estimated or left out."""
    by_shard = attempts_by_shard(record)
    declared = {m.name: m.speed for m in record.machines}
    shards: list[Shard] = []
    notes: list[str] = []
    for s in record.shards:
        attempt = deciding_attempt(s, by_shard.get(s.id, []))
        if attempt is not None and attempt.outcome in ("passed", "tests-failed"):
            speed = speeds.get(attempt.machine) or declared.get(attempt.machine) or 1.0
            work = max(0.0, attempt.duration - startup.get(attempt.machine, 0.0)) * speed
        elif s.expected is not None:
            work = s.expected
            notes.append(f"{s.id}: no finished attempt, its planned duration is used")
        else:
            notes.append(f"{s.id}: no finished attempt and no planned duration, left out")
            continue
        shards.append(Shard(id=s.id, index=s.index, total=s.total, files=tuple(s.files), expected=work))
    return shards, notes


def run_machines(record: RunRecord, speeds: Mapping[str, float], startup: Mapping[str, float]
                 ) -> list[MachineSlots]:
    """The machines that took work in the run (slots > 0), with learned speed and start-up cost."""
    return [MachineSlots(name=m.name, slots=m.slots, speed=speeds.get(m.name) or m.speed or 1.0,
                         startup=startup.get(m.name, 0.0))
            for m in record.machines if m.slots > 0]


def apply_changes(machines: Sequence[MachineSlots], changes: Sequence[Change]) -> list[MachineSlots]:
    fleet = list(machines)

    def find(name: str, change: Change) -> int:
        for i, m in enumerate(fleet):
            if m.name == name:
                return i
        names = ", ".join(m.name for m in fleet) or "none"
        raise UsageError(f"--what-if: {change}: no machine {name!r} in the run (machines: {names})")

    for change in changes:
        if change.kind == "without":
            del fleet[find(change.machine, change)]
        elif change.kind == "slots":
            i = find(change.machine, change)
            fleet[i] = replace(fleet[i], slots=int(change.value))
        elif change.kind == "speed":
            i = find(change.machine, change)
            fleet[i] = replace(fleet[i], speed=change.value)
        else:
            names = {m.name for m in fleet}
            a, b = change.machine, change.other
            if a in names and b in names:
                raise UsageError(f"--what-if: {change}: both machines are in the run; name a new one")
            if a not in names and b not in names:
                find(a, change)
            model, new = (a, b) if a in names else (b, a)
            fleet.append(replace(fleet[find(model, change)], name=new))
    return fleet


def simulate_fleet(label: str, shards: Sequence[Shard], machines: Sequence[MachineSlots], strategy: str) -> Fleet:
    """Expected makespan the way the run's plan computes it: the strategy's assignment, then the planner's
    simulation; and the lower bound."""
    usable = [m for m in machines if m.slots > 0 and m.speed > 0]
    if not usable:
        return Fleet(label, tuple(machines), math.inf, math.inf)
    assign = planning.assign_static if strategy == "static" else planning.lpt_assign
    assignment = assign(shards, usable)
    sim = planning.simulate(planning.order_for_queue(shards), usable, strategy="static", assignment=assignment)
    bound = planning.lower_bound([s.expected or 0.0 for s in shards], usable)
    return Fleet(label, tuple(machines), sim.makespan, bound)


def what_if(record: RunRecord, changes: Sequence[Change], *, speeds: Mapping[str, float],
            startup: Mapping[str, float]) -> WhatIf:
    shards, notes = recorded_work(record, speeds, startup)
    machines = run_machines(record, speeds, startup)
    if not machines:
        raise UsageError(f"run {record.run_id} used no machine: nothing to simulate")
    strategy = record.strategy or "dynamic"
    baseline = simulate_fleet("the run's machines", shards, machines, strategy)
    scenario = None
    if changes:
        scenario = simulate_fleet(", ".join(str(c) for c in changes), shards, apply_changes(machines, changes),
                                  strategy)
    return WhatIf(run_id=record.run_id, strategy=strategy, actual_makespan=record.makespan,
                  recorded_expected=record.expected_makespan, baseline=baseline, scenario=scenario,
                  changes=tuple(str(c) for c in changes), shards=len(shards), notes=tuple(notes))


def describe_machines(machines: Sequence[MachineSlots]) -> str:
    return ", ".join(f"{m.name} ({m.slots} slot{'s' if m.slots != 1 else ''}, speed {m.speed:.2f}"
                     + (f", start-up {m.startup:.1f}s" if m.startup else "") + ")" for m in machines) or "none"


# ----------------------------------------------------------------------------------------- the command

def what_if_command(inv: Inventory, specs: Sequence[str], *, run_id: str | None = None,
                    console: Console | None = None) -> int:
    """`fleetshard plan --what-if`: simulate the latest (or given) run of the history on changed machines."""
    from .console import make_console
    from .history import History, display_path
    from .report import fmt_duration, history_path

    changes = parse_changes(specs)
    console = console or make_console()
    path = history_path(inv)
    if not path.exists():
        raise UsageError(f"--what-if needs a recorded run (no history database at {display_path(path)}): "
                         "run `fleetshard run` first")
    with History(path) as history:
        record = history.get_run(run_id)
        speeds = history.machine_speeds()
        startup = history.machine_startup()
    result = what_if(record, changes, speeds=speeds, startup=startup)
    say = console.print
    say(f"What if: run {result.run_id} ({result.shards} shards, {result.strategy} strategy), "
        f"a {LABEL}, not a measurement.", markup=False, soft_wrap=True)
    if result.actual_makespan is not None:
        planned = (f" (its plan expected {fmt_duration(result.recorded_expected)})"
                   if result.recorded_expected is not None else "")
        say(f"  as it ran:    makespan {fmt_duration(result.actual_makespan)}{planned}", markup=False)
    for fleet in (result.baseline, result.scenario):
        if fleet is None:
            continue
        say(f"  {'same machines' if fleet is result.baseline else 'with changes'}: "
            f"expected makespan {fmt_duration(fleet.makespan)}, lower bound {fmt_duration(fleet.lower_bound)}"
            + (f"  [{fleet.label}]" if fleet is result.scenario else ""), markup=False, soft_wrap=True)
        say(f"    machines: {describe_machines(fleet.machines)}", markup=False, soft_wrap=True)
    if result.ratio is not None and math.isfinite(result.ratio):
        change = (result.ratio - 1) * 100
        say(f"  {'slower' if change > 0 else 'faster'} by {abs(change):.0f}% than the same simulation "
            "on the run's machines", markup=False)
    for note in result.notes:
        say(f"  note: {note}", markup=False, style="dim")
    return 0
