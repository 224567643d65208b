"""Prepare a run: probe the machines, settle their speeds, build the shards and plan them.

Shared by `fleetshard plan` (which prints the :class:`Prepared` plan and stops) and `fleetshard run`
(which hands it to the coordinator). Nothing here starts a shard.
"""

from __future__ import annotations

import asyncio
import os
import statistics
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from . import planning
from .context import RunContext
from .errors import HistoryError, NoHealthyMachineError, NothingToResume
from .inventory import Machine
from .machines import MachineHandle
from .model import MachineSlots, Shard
from .probes import CALIBRATION_NOISE, probe_all
from .runners import Listing
from .speeds import Sample, SpeedEstimate, estimate_speeds, whole_files
from .splitting import Split, join_parts, split_files
from .suite import Discovery, Suite, assign_tests, discover, file_sizes
from .transport import Transport


@dataclass
class Prepared:
    """The outcome of preparing a run: machines (usable or left out), shards and the plan."""

    machines: dict[str, MachineHandle]    # every selected machine that was probed, usable or not
    usable: list[MachineHandle]
    slots: list[MachineSlots]
    shards: list[Shard]
    strategy: str
    assignment: dict[str, str] | None
    expected: float | None              # simulated makespan; None when durations are unknown
    lower: float | None
    explain: str                        # why this many shards
    history: Any                        # an open History, or None
    speeds: dict[str, SpeedEstimate] = field(default_factory=dict)   # how each speed was settled


def combine_speeds(names: Sequence[str], learned: Mapping[str, float], declared: Mapping[str, float]
                   ) -> dict[str, float]:
    """Measured beats declared: the inventory's speed serves until history has learned one. Learned
    speeds are relative to the fleet's median machine, declared ones to whatever the user had in mind,
    so declared speeds are first brought to the learned scale through the machines that have both."""
    both = [n for n in names if n in learned and n in declared]
    ratio = statistics.median(learned[n] / declared[n] for n in both) if both else 1.0
    return {n: learned.get(n) or declared.get(n, 1.0) * ratio for n in names}


def open_history(ctx: RunContext) -> Any:
    from .history import History
    from .report import history_path

    try:
        history = History(history_path(ctx.inv))
    except HistoryError as exc:
        ctx.notice(f"history unavailable, planning without it: {exc}", "warning")
        return None
    from .journal import recover_runs

    for run_id in recover_runs(ctx.inv.base_dir, history):
        ctx.notice(f"run {run_id} was interrupted (its coordinator stopped before the end): recorded in "
                   f"history from its journal; `fleetshard run --resume {run_id}` runs what did not pass",
                   "warning")
    return history


async def prepare(ctx: RunContext, selected: Sequence[Machine], transports: Mapping[str, Transport],
                  history: Any, connecting: Mapping[str, asyncio.Future[float]] | None = None) -> Prepared:
    """``connecting``: connect phases begun already (:mod:`fleetshard.headstart`), by machine name."""
    machines: dict[str, MachineHandle] = {}
    try:
        return await _prepare(ctx, selected, transports, history, machines, connecting)
    except BaseException:
        # planning failed (or was interrupted) after warm workers were started: stop them
        pools = [h.workers for h in machines.values() if h.workers is not None]
        for h in machines.values():
            if h.warming is not None:
                h.warming.cancel()
        await asyncio.gather(*(p.close(0.0, quit=False) for p in pools), return_exceptions=True)
        raise


async def _prepare(ctx: RunContext, selected: Sequence[Machine], transports: Mapping[str, Transport],
                   history: Any, machines: dict[str, MachineHandle],
                   connecting: Mapping[str, asyncio.Future[float]] | None = None) -> Prepared:
    suite = ctx.suite
    connecting = dict(connecting or {})
    if ctx.opts.skip_health_checks and not ctx.opts.dry_run and not connecting:
        # No probe to wait for: open the connections now, while history, discovery and planning run; the
        # first shard on each machine then finds its connection ready (or its failure, once).
        connecting = {m.name: _preconnect(transports[m.name]) for m in selected}
    # Discovery (the runner's own listing can take a second or two) runs while the machines are probed.
    # In native mode the runner's listing (only to map failures back to test ids; `playwright test --list`
    # takes about 2 s) overlaps the probes the same way.
    discovery: asyncio.Future[Discovery] | None = None
    native_listing = suite.mode == "native" and suite.adapter.lists_tests and bool(suite.listing_command)
    if (suite.mode != "native" or native_listing) and not ctx.opts.resume:
        discovery = asyncio.ensure_future(asyncio.to_thread(discover, suite, ctx.inv.base_dir))
    try:
        samples = _speed_samples(ctx, history)
        declared = {m.name: m.speed for m in selected if m.speed}
        known = estimate_speeds([m.name for m in selected], samples, declared=declared)
        # The CPU calibration only where a speed is not known for certain (neither declared nor learned
        # over several runs).
        calibrate = {m.name for m in selected if not m.speed and not known[m.name].certain}
        usable = await check_machines(ctx, selected, transports, calibrate, machines, connecting)
        for h in usable:
            h.connecting = connecting.get(h.name)
        if suite.config.workers == "warm" and not ctx.opts.dry_run:
            from .warm import warm_up

            # the workers' start-up (interpreter, pytest, conftest) overlaps discovery and planning
            for h in usable:
                h.warming = asyncio.ensure_future(warm_up(h))
                h.warming.add_done_callback(lambda t: t.cancelled() or t.exception())
        estimates = estimate_speeds(list(machines), samples, declared=declared,
                                    calibrated=_calibrations(machines))
        startup = _startup(history, suite.command)
        speeds = planning_speeds({h.name: estimates[h.name] for h in usable})
        slots = [MachineSlots(name=h.name, slots=h.slots, speed=speeds[h.name],
                              startup=startup.get(h.name, 0.0)) for h in usable]
        for h, ms in zip(usable, slots, strict=True):
            h.speed = ms.speed
        strategy = ctx.opts.strategy or suite.config.strategy or "dynamic"
        found = await discovery if discovery is not None else None
    finally:
        if discovery is not None and not discovery.done():
            discovery.cancel()
    shards, explain, source = build_shards(ctx, suite, slots, strategy, history, found,
                                           certain={n for n, e in estimates.items() if e.certain})
    known_durations = bool(shards) and all(s.expected is not None for s in shards)
    if strategy == "dynamic" and source != "uniform":
        shards = planning.order_for_queue(shards)
    assignment: dict[str, str] | None = None
    if strategy == "static":
        assignment = planning.assign_static(shards, slots)
    elif known_durations:
        # Durations known from history: each machine's list is planned (LPT with machine speeds); the
        # scheduler runs those lists and lets a machine that runs dry take work from the others.
        assignment = planning.lpt_assign(shards, slots)
    expected: float | None = None
    lower: float | None = None
    if known_durations:
        sim = planning.simulate(shards, slots, strategy="static", assignment=assignment)
        expected = sim.makespan
        lower = planning.lower_bound([s.expected or 0.0 for s in shards], slots)
    return Prepared(machines=machines, usable=usable, slots=slots, shards=shards, strategy=strategy,
                    assignment=assignment, expected=expected, lower=lower, explain=explain, history=history,
                    speeds=estimates)


async def check_machines(ctx: RunContext, selected: Sequence[Machine], transports: Mapping[str, Transport],
                         calibrate: Collection[str], machines: dict[str, MachineHandle],
                         connecting: Mapping[str, asyncio.Future[float]] | None = None) -> list[MachineHandle]:
    """Probe the selected machines; fills ``machines`` with every probed one, returns the usable ones.
    ``connecting``: connect phases begun already, which the probes await instead of connecting again."""
    inv = ctx.inv
    usable: list[MachineHandle] = []
    if ctx.opts.skip_health_checks:
        need = [m for m in selected if m.slots is None and m.transport != "local"]
        reports = {r.machine: r for r in await probe_all(need, transports, inv.health, calibrate=calibrate,
                                                         connecting=connecting)}
        for m in selected:
            r = reports.get(m.name)
            if r is not None and not r.reachable:
                ctx.notice(f"left out: {'; '.join(r.reasons)}", "warning", m.name)
                machines[m.name] = MachineHandle(m, transports[m.name], ctx, 0, m.speed or 1.0, r,
                                                 status=r.status)      # its reason is in the verdict
                continue
            cores = r.cores if r else (os.cpu_count() or 1)
            usable.append(MachineHandle(m, transports[m.name], ctx, m.slots or cores or 1, m.speed or 1.0, r))
    else:
        for r in await probe_all(selected, transports, inv.health, calibrate=calibrate, connecting=connecting):
            m = inv.machine(r.machine)
            if not r.healthy:
                ctx.notice(f"left out ({r.status}): {'; '.join(r.reasons)}", "warning", m.name)
                machines[m.name] = MachineHandle(m, transports[m.name], ctx, 0, m.speed or 1.0, r,
                                                 status=r.status)
                continue
            usable.append(MachineHandle(m, transports[m.name], ctx, m.slots or r.cores or 1, m.speed or 1.0, r))
    for h in usable:
        machines[h.name] = h
    if not usable:
        reasons = "; ".join(
            f"{h.name}: {', '.join(h.health.reasons) if h.health else h.status}"
            for h in machines.values()) or "no machine selected"
        raise NoHealthyMachineError(f"no healthy machine to run on ({reasons})")
    return usable


def _preconnect(transport: Transport) -> asyncio.Future[float]:
    task = asyncio.ensure_future(transport.connect())
    task.add_done_callback(lambda t: t.cancelled() or t.exception())   # retrieved: ready() reports it
    return task


def planning_speeds(estimates: Mapping[str, SpeedEstimate]) -> dict[str, float]:
    """The speeds to plan with. A machine is never planned faster than the fleet's median machine on the
    strength of uncertain history (timings of too few runs): such a speed above the median is discounted
    by its uncertainty (:attr:`SpeedEstimate.planning`, never below the median). Everything else is taken
    as it is: a slow machine stays slow, and a declared, calibrated or unknown (1.0) speed is the best
    estimate there is. So the tail is not bet on a fast speed that one confounded run suggested."""
    if not estimates:
        return {}
    median = statistics.median(e.speed for e in estimates.values())
    return {n: round(max(median, e.planning), 4) if e.speed > median and e.source == "history" and not e.certain
            else e.speed for n, e in estimates.items()}


def _speed_samples(ctx: RunContext, history: Any) -> list[Sample]:
    if history is None:
        return []
    try:
        samples: list[Sample] = history.speed_samples()
    except HistoryError as exc:
        ctx.notice(f"history: {exc}", "warning")
        return []
    return whole_files(samples)     # a file split between machines in one run shows no speed


def _calibrations(machines: Mapping[str, MachineHandle]) -> dict[str, float]:
    """Each calibrated machine's CPU loop against the median calibrated machine's (1.0); within the
    loop's noise (CALIBRATION_NOISE either way) a machine counts as equal to it, 1.0."""
    times = {name: h.health.calib_ms for name, h in machines.items() if h.health is not None and h.health.calib_ms}
    if len(times) < 2:
        return {}
    median = statistics.median(times.values())
    ratios = {name: median / ms for name, ms in times.items() if ms and ms > 0}
    return {name: r if not 1 / CALIBRATION_NOISE < r < CALIBRATION_NOISE else 1.0 for name, r in ratios.items()}


def _startup(history: Any, command: str | None = None) -> dict[str, float]:
    if history is None:
        return {}
    try:
        startup: dict[str, float] = history.machine_startup(command=command)
    except HistoryError:
        return {}
    return startup


def _native_work(history: Any, command: str) -> float | None:
    if history is None:
        return None
    try:
        work: float | None = history.native_work(command)
    except HistoryError:
        return None
    return work


def build_shards(ctx: RunContext, suite: Suite, slots: Sequence[MachineSlots], strategy: str, history: Any,
                 found: Discovery | None = None, *, certain: Collection[str] | None = None
                 ) -> tuple[list[Shard], str, str]:
    opts = ctx.opts
    count = opts.shards or suite.config.shards
    resume = None
    if opts.resume:
        if history is None:
            raise HistoryError("--resume needs the run history, which could not be opened")
        resume = history.not_passed(opts.resume)
    if suite.mode == "native":
        if resume is not None:
            if not resume.shard_indices:
                raise NothingToResume(f"run {resume.run_id}: nothing to resume, every shard passed")
            total = resume.total or count
            shards = [Shard(id=f"s{i:03d}", index=i, total=total or len(resume.shard_indices))
                      for i in resume.shard_indices]
            return shards, f"resuming {len(shards)} shards of run {opts.resume}", "uniform"
        if suite.adapter.lists_tests and suite.listing_command:
            # the runner splits the suite itself; its listing still maps failures back to test ids
            ctx.listing = (found if found is not None else discover(suite, ctx.inv.base_dir)).listing
        work = _native_work(history, suite.command) if count is None else None
        shards = planning.native_shards(count, slots, strategy, work=work,  # type: ignore[arg-type]
                                        certain=certain)
        why = planning.native_why(len(shards), slots, strategy, explicit=count is not None,  # type: ignore[arg-type]
                                  work=work, certain=certain)
        return shards, why, "uniform"
    base = ctx.inv.base_dir
    if found is None:
        found = discover(suite, base)
    ctx.listing = found.listing
    files = found.files
    if resume is not None:
        wanted = set(resume.files)
        files = [f for f in files if f in wanted]
        if not files:
            raise NothingToResume(f"run {resume.run_id}: nothing to resume, every shard passed")
    known: dict[str, float] = {}
    if history is not None:
        try:
            known = history.file_durations()
        except HistoryError as exc:
            ctx.notice(f"history: {exc}", "warning")
    # A file that fails to load is a shard of its own: some runners (Playwright) run nothing else beside it.
    broken = [p.file for p in found.listing.errors if p.file in files] if found.listing else []
    planned = [f for f in files if f not in broken]
    estimates = planning.expected_durations(planned or files, known, sizes=file_sizes(files, base),
                                            counts=found.counts())
    if not planned:
        planned, broken = files, []
    split = _split(ctx, suite, found.listing, planned, estimates, slots, history)
    if split.parts:
        estimates = planning.Estimates(split.weights, estimates.source)
    warm = suite.config.workers == "warm" and count is None
    plan = planning.build_shards(split.items, estimates, slots, shards=len(split.items) if warm else count,
                                 strategy=strategy)  # type: ignore[arg-type]
    if warm:
        plan = planning.ShardPlan(plan.shards, f"{len(plan.shards)} shards, one per file: warm pytest workers "
                                  f"start once per slot, so a shard costs no start-up (longest first, "
                                  f"{planning.BASIS[plan.source]})", plan.source)
    shards = _with_broken(join_parts(plan.shards, split, found.listing), broken)
    why = plan.why + (f"; {len(broken)} file(s) that fail to load run alone" if broken else "")
    if split.parts:
        why += f"; {split.explain()}"
    return assign_tests(shards, found.listing), why, plan.source


def _split(ctx: RunContext, suite: Suite, listing: Listing | None, files: Sequence[str],
           estimates: planning.Estimates, slots: Sequence[MachineSlots], history: Any) -> Split:
    """Files longer than a slot's share, split by test id where the runner's tests of a file are independent
    (Playwright's fullyParallel) or the suite opts in (``split_files``)."""
    chosen = suite.config.split_files
    splittable = (chosen if chosen is not None else bool(listing and listing.independent)) and \
        suite.adapter.lists_tests and ctx.opts.shards is None and suite.config.shards is None
    seconds: dict[str, float] = {}
    if splittable and history is not None:
        try:
            seconds = history.test_durations()
        except HistoryError:
            seconds = {}
    return split_files(files, estimates.durations, listing, slots=sum(m.slots for m in slots),
                       splittable=bool(splittable), test_seconds=seconds)


def _with_broken(shards: Sequence[Shard], broken: Sequence[str]) -> list[Shard]:
    """``shards`` plus one shard per broken file, renumbered s001... of the new total."""
    if not broken:
        return list(shards)
    whole = [*shards, *(Shard(id="", index=0, total=0, files=(f,), expected=0.0) for f in broken)]
    total = len(whole)
    return [replace(s, id=f"s{i:03d}", index=i, total=total) for i, s in enumerate(whole, 1)]


def _placements(p: Prepared) -> dict[str, str]:
    if p.assignment is None and p.expected is not None:
        sim = planning.simulate(p.shards, p.slots, strategy="dynamic")
        return {pl[0]: pl[1] for pl in sim.placements}
    return dict(p.assignment or {})


def plan_dict(p: Prepared) -> dict[str, Any]:
    """`fleetshard plan --json`: the same facts as the table, machine-readable."""
    where = _placements(p)
    return {
        "strategy": p.strategy,
        "shards_why": p.explain,
        "expected_makespan": p.expected,
        "lower_bound": p.lower,
        "machines": [{"name": m.name, "slots": m.slots, "speed": m.speed} for m in p.slots],
        "left_out": sorted(name for name in p.machines if name not in {h.name for h in p.usable}),
        "shards": [{"id": s.id, "index": s.index, "total": s.total, "files": list(s.files),
                    "expected": s.expected, "machine": where.get(s.id)} for s in p.shards],
    }


def print_plan(console: Any, p: Prepared) -> None:
    """`fleetshard plan`: which machine gets which shard, the expected makespan and its lower bound."""
    from rich.table import Table

    from .console import make_console
    from .progress import format_duration

    console = console or make_console()
    shards, slots, expected, lower = p.shards, p.slots, p.expected, p.lower
    if p.assignment is None and expected is not None:
        sim = planning.simulate(shards, slots, strategy="dynamic")
        where = {pl[0]: pl[1] for pl in sim.placements}
    else:
        where = dict(p.assignment or {})
    table = Table(title=f"fleetshard plan: {len(shards)} shards, {p.strategy}", title_justify="left")
    for col in ("shard", "machine", "files", "expected"):
        table.add_column(col)
    for s in shards:
        files = ", ".join(s.files[:3]) + (f" … (+{len(s.files) - 3})" if len(s.files) > 3 else "")
        if s.tests and len(s.files) == 1 and any(t != s.files[0] for t in s.tests):
            files += f" ({len(s.tests)} test{'s' if len(s.tests) != 1 else ''})"
        table.add_row(s.id, where.get(s.id, "(queue)"), files or f"{s.index}/{s.total}",
                      format_duration(s.expected) if s.expected is not None else "?")
    console.print(table)
    machines = ", ".join(f"{m.name} ({m.slots} slot{'s' if m.slots != 1 else ''}, speed {m.speed:.2g})"
                         for m in slots)
    console.print(f"machines: {machines}", soft_wrap=True)
    if p.speeds:
        speeds = ", ".join(f"{name} {est.describe()}" for name, est in p.speeds.items()
                           if name in {m.name for m in slots})
        console.print(f"speeds: {speeds}; a speed above the median learned from too few runs is planned "
                      "slower", soft_wrap=True)
    console.print(f"shards: {p.explain}", soft_wrap=True)
    if expected is not None and lower is not None:
        console.print(f"expected makespan {format_duration(expected)}, lower bound {format_duration(lower)}"
                      f" ({expected / lower:.2f}x)" if lower > 0 else "")
    else:
        console.print("expected makespan unknown (no durations yet: run once to record them)")
