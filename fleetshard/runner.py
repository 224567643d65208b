"""The coordinator: one asyncio loop that turns machine happenings into events, feeds them to the pure
scheduler, and carries out its decisions. Renderers and result writers subscribe to the same events.

    health probes -> plan -> Scheduler.on(Start) -> Launch -> attempt task -> ShardFinished -> on() -> ...

Ctrl-C or SIGTERM: the scheduler cancels everything, each running process group gets TERM then KILL
after the grace period, a marker sweep removes anything that left its group, and the run exits 130.
A second Ctrl-C skips the grace period.
"""

from __future__ import annotations

import asyncio
import collections
import os
import secrets
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from . import planning
from .errors import ConnectError, HistoryError, NoHealthyMachineError
from .events import (
    Event,
    MachineInfo,
    MachineStatus,
    Notice,
    OutputLine,
    RunFinished,
    RunStarted,
    ShardFinished,
    ShardNotRun,
    ShardRetrying,
    ShardStarted,
)
from .inventory import Inventory, Machine, select_machines
from .model import EXIT_OK, MachineSlots, Outcome, RetryPolicy, Shard
from .probes import HealthReport, calibrated_speeds, probe, probe_all
from .record import AttemptRecord, MachineRecord, RunRecord, ShardRecord
from .scheduler import (
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
    ShardRunning,
    Start,
    Tick,
)
from .suite import Suite, discover_files, file_sizes, junit_path, resolve_suite, shard_command
from .transport import RemoteProcess, Transport, transport_for
from .transport.base import ProcessResult

TAIL_LINES = 20


@dataclass(frozen=True)
class RunOptions:
    """Everything `fleetshard run` and `fleetshard plan` take from the command line."""

    selector: str | None = None
    max_retries: int | None = None
    strategy: str | None = None
    shards: int | None = None
    skip_health_checks: bool = False
    fail_fast: bool = False
    retry_failed_tests: int = 0
    timeout: float | None = None
    speculate: bool = False
    junit: Path | None = None
    json_report: Path | None = None
    html: Path | None = None
    live: bool | None = None
    stream: bool = False
    quiet: bool = False
    verbose: bool = False
    resume: str | None = None
    dry_run: bool = False
    commit: str | None = None
    notify: str | None = None
    accept_new_host_keys: bool = False
    command: str | None = None
    argv: tuple[str, ...] = ()
    console: Any = None               # a rich Console to render on (tests); default stdout
    backoff_jitter: bool = True


@dataclass
class _Attempt:
    shard: Shard
    attempt: int
    machine: str
    speculative: bool
    proc: RemoteProcess | None = None
    wait: asyncio.Future[ProcessResult] | None = None
    cancel_reason: str | None = None
    killing: asyncio.Task[None] | None = None
    task: asyncio.Task[None] | None = None


class _NotStarted(Exception):
    """The attempt was cancelled before its process started."""


@dataclass
class _AttemptRun:
    """What one attempt has gathered so far; read when it ends, however it ends."""

    started: float
    log_path: Path
    command: str = ""
    junit_remote: str | None = None
    ended: float | None = None
    result: ProcessResult = field(default_factory=lambda: ProcessResult(None))
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=TAIL_LINES))


@dataclass
class _MachineState:
    machine: Machine
    transport: Transport
    slots: int
    speed: float
    health: HealthReport | None = None
    ready: asyncio.Future[str | None] | None = None   # None = ready, str = why it cannot run
    status: str = "healthy"
    used: bool = False
    lost_check: asyncio.Future[bool] | None = None
    probing: bool = False
    base_dir: Path = field(default=Path("."), repr=False)
    workdir: str = field(init=False, default="~")

    def __post_init__(self) -> None:
        self.workdir = effective_workdir(self.machine, self.base_dir)


def effective_workdir(machine: Machine, base_dir: Path) -> str:
    """Where shards run: the machine's workdir; for `local` machines a relative one (or none) is taken
    from the inventory's directory, for SSH machines none means the login directory."""
    wd = machine.workdir
    if machine.transport == "local" and (wd is None or not (wd.startswith(("/", "~")))):
        return str((base_dir / (wd or "")).resolve())
    return wd or "~"


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


def combine_speeds(names: Sequence[str], learned: Mapping[str, float], declared: Mapping[str, float]
                   ) -> dict[str, float]:
    """Measured beats declared: the inventory's speed serves until history has learned one. Learned
    speeds are relative to the fleet's median machine, declared ones to whatever the user had in mind,
    so declared speeds are first brought to the learned scale through the machines that have both."""
    both = [n for n in names if n in learned and n in declared]
    ratio = statistics.median(learned[n] / declared[n] for n in both) if both else 1.0
    return {n: learned.get(n) or declared.get(n, 1.0) * ratio for n in names}


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def _git_head(base: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=base, capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def backoff_from_tenacity(policy: RetryPolicy, jitter: float) -> Callable[[int], float]:
    """Seconds before retry n, from tenacity's exponential wait plus random jitter."""
    import tenacity

    wait: tenacity.wait.wait_base = tenacity.wait_exponential(
        multiplier=policy.backoff_base, exp_base=policy.backoff_factor, min=policy.backoff_base,
        max=policy.backoff_max)
    if jitter > 0:
        wait = wait + tenacity.wait_random(0, jitter)

    def backoff(n: int) -> float:
        state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
        state.attempt_number = n
        return float(wait(state))

    return backoff


class Run:
    def __init__(self, inv: Inventory, opts: RunOptions) -> None:
        self.inv = inv
        self.opts = opts
        self.clock = time.monotonic
        self.t0 = self.clock()
        self.t0_wall = time.time()
        self.run_id = new_run_id()
        self.machines: dict[str, _MachineState] = {}
        self.attempts: dict[tuple[str, int], _Attempt] = {}
        self.records: list[AttemptRecord] = []
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.subscribers: list[Any] = []
        self.renderer: Any = None
        self.interrupts = 0
        self.exit_code: int | None = None
        self.notes: list[str] = []
        self.suite: Suite | None = None
        self.kill_grace = 10.0
        self.timers: list[asyncio.TimerHandle] = []
        self.background: set[asyncio.Future[Any]] = set()

    # -- plumbing ---------------------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        """A fire-and-forget task, kept referenced until it is done."""
        task = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def now(self) -> float:
        return self.clock()

    def wall(self, t: float) -> float:
        return self.t0_wall + (t - self.t0)

    def publish(self, event: Event) -> None:
        for sub in self.subscribers:
            sub.handle(event)

    def notice(self, text: str, level: str = "info", machine: str | None = None) -> None:
        self.publish(Notice(text=text, at=self.now(), level=level, machine=machine))

    @property
    def run_dir(self) -> Path:
        return self.inv.base_dir / ".fleetshard" / "runs" / self.run_id

    # -- the run -------------------------------------------------------------------------------------
    async def main(self) -> int:
        from .progress import make_renderer

        self.suite = resolve_suite(self.inv, self.opts.command)
        selected = select_machines(self.inv, self.opts.selector)
        self.renderer = make_renderer(console=self.opts.console, live=self.opts.live, stream=self.opts.stream,
                                      quiet=self.opts.quiet, verbose=self.opts.verbose, clock=self.clock)
        self.subscribers.append(self.renderer)      # notices from probing and planning are shown too
        transports = {m.name: transport_for(m, accept_new_host_keys=self.opts.accept_new_host_keys)
                      for m in selected}
        loop = asyncio.get_running_loop()
        signals = () if self.opts.dry_run else (signal.SIGINT, signal.SIGTERM)
        for sig in signals:
            loop.add_signal_handler(sig, self.interrupt)
        try:
            return await self._main(selected, transports)
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            for task in list(self.background):
                task.cancel()
            for timer in self.timers:
                timer.cancel()
            self.renderer.stop()
            await asyncio.gather(*(t.close() for t in transports.values()), return_exceptions=True)

    def interrupt(self) -> None:
        self.interrupts += 1
        if self.interrupts == 1:
            self.queue.put_nowait(CancelRun(reason="interrupted", at=self.now()))
        else:
            for att in list(self.attempts.values()):
                self._spawn(self._signal(att, "KILL"))

    async def _main(self, selected: Sequence[Machine], transports: Mapping[str, Transport]) -> int:
        assert self.suite is not None
        suite = self.suite
        self.kill_grace = suite.config.kill_grace
        history = self._open_history()
        learned = self._learned_speeds(history)
        # A first run knows no speed: machines with neither a declared nor a learned one time a CPU loop.
        calibrate = {m.name for m in selected if not m.speed and m.name not in learned}
        usable = await self._check_machines(selected, transports, calibrate)
        speeds = self._speeds(learned)
        startup = self._startup(history)
        slots = [MachineSlots(name=s.machine.name, slots=s.slots, speed=speeds.get(s.machine.name, s.speed),
                              startup=startup.get(s.machine.name, 0.0)) for s in usable]
        for s, ms in zip(usable, slots, strict=True):
            s.speed = ms.speed
        strategy = self.opts.strategy or suite.config.strategy or "dynamic"
        shards, explain, source = self._build_shards(suite, slots, strategy, history)
        known = bool(shards) and all(s.expected is not None for s in shards)
        if strategy == "dynamic" and source != "uniform":
            shards = planning.order_for_queue(shards)
        assignment: dict[str, str] | None = None
        if strategy == "static":
            assignment = planning.assign_static(shards, slots)
        elif known:
            # Durations known from history: each machine's list is planned (LPT with machine speeds); the
            # scheduler runs those lists and lets a machine that runs dry take work from the others.
            assignment = planning.lpt_assign(shards, slots)
        expected: float | None = None
        lower: float | None = None
        if known:
            sim = planning.simulate(shards, slots, strategy="static", assignment=assignment)
            expected = sim.makespan
            lower = planning.lower_bound([s.expected or 0.0 for s in shards], slots)
        if self.opts.dry_run:
            self._print_plan(shards, slots, strategy, assignment, expected, lower, explain)
            return EXIT_OK
        return await self._execute(shards, slots, strategy, assignment, expected, lower, history)

    # -- machines ------------------------------------------------------------------------------------
    async def _check_machines(self, selected: Sequence[Machine], transports: Mapping[str, Transport],
                              calibrate: Collection[str]) -> list[_MachineState]:
        states: list[_MachineState] = []
        if self.opts.skip_health_checks:
            need = [m for m in selected if m.slots is None and m.transport != "local"]
            reports = {r.machine: r for r in await probe_all(need, transports, self.inv.health,
                                                               calibrate=calibrate)}
            for m in selected:
                r = reports.get(m.name)
                if r is not None and not r.reachable:
                    self.notice(f"{m.name}: left out: {'; '.join(r.reasons)}", "warning", m.name)
                    continue
                cores = r.cores if r else (os.cpu_count() or 1)
                states.append(_MachineState(m, transports[m.name], m.slots or cores or 1, m.speed or 1.0, r,
                                            base_dir=self.inv.base_dir))
        else:
            for r in await probe_all(selected, transports, self.inv.health, calibrate=calibrate):
                m = self.inv.machine(r.machine)
                if not r.healthy:
                    self.notice(f"{m.name}: left out ({r.status}): {'; '.join(r.reasons)}", "warning", m.name)
                    self.machines[m.name] = _MachineState(m, transports[m.name], 0, m.speed or 1.0, r,
                                                          status=r.status, base_dir=self.inv.base_dir)
                    continue
                states.append(_MachineState(m, transports[m.name], m.slots or r.cores or 1, m.speed or 1.0, r,
                                            base_dir=self.inv.base_dir))
        for s in states:
            self.machines[s.machine.name] = s
        if not states:
            reasons = "; ".join(
                f"{s.machine.name}: {', '.join(s.health.reasons) if s.health else s.status}"
                for s in self.machines.values()) or "no machine selected"
            raise NoHealthyMachineError(f"no healthy machine to run on ({reasons})")
        return states

    def _learned_speeds(self, history: Any) -> dict[str, float]:
        if history is None:
            return {}
        try:
            learned: dict[str, float] = history.machine_speeds()
        except HistoryError as exc:
            self.notice(f"history: {exc}", "warning")
            return {}
        return learned

    def _speeds(self, learned: Mapping[str, float]) -> dict[str, float]:
        """Learned, else declared, else the probe's CPU calibration, else 1.0."""
        reports = [st.health for st in self.machines.values() if st.health is not None]
        guessed = calibrated_speeds(reports)
        declared = {name: st.machine.speed or guessed[name] for name, st in self.machines.items()
                    if st.machine.speed or name in guessed}
        return combine_speeds(list(self.machines), learned, declared)

    def _startup(self, history: Any) -> dict[str, float]:
        if history is None:
            return {}
        try:
            startup: dict[str, float] = history.machine_startup()
        except HistoryError:
            return {}
        return startup

    # -- planning ------------------------------------------------------------------------------------
    def _open_history(self) -> Any:
        from .history import History
        from .report import history_path

        try:
            return History(history_path(self.inv))
        except HistoryError as exc:
            self.notice(f"history unavailable, planning without it: {exc}", "warning")
            return None

    def _build_shards(self, suite: Suite, slots: Sequence[MachineSlots], strategy: str, history: Any
                      ) -> tuple[list[Shard], str, str]:
        count = self.opts.shards or suite.config.shards
        resume = None
        if self.opts.resume:
            if history is None:
                raise HistoryError("--resume needs the run history, which could not be opened")
            resume = history.not_passed(self.opts.resume)
        if suite.mode == "native":
            if resume is not None:
                total = resume.total or count
                shards = [Shard(id=f"s{i:03d}", index=i, total=total or len(resume.shard_indices))
                          for i in resume.shard_indices]
                return shards, f"resuming {len(shards)} shards of run {self.opts.resume}", "uniform"
            shards = planning.native_shards(count, slots, strategy)  # type: ignore[arg-type]
            why = planning.native_why(len(shards), slots, strategy, explicit=count is not None)  # type: ignore[arg-type]
            return shards, why, "uniform"
        files = discover_files(suite, self.inv.base_dir)
        if resume is not None:
            wanted = set(resume.files)
            files = [f for f in files if f in wanted]
            if not files:
                raise HistoryError(f"run {self.opts.resume}: nothing to resume (every shard passed)")
        known: dict[str, float] = {}
        if history is not None:
            try:
                known = history.file_durations()
            except HistoryError as exc:
                self.notice(f"history: {exc}", "warning")
        estimates = planning.expected_durations(files, known, sizes=file_sizes(files, self.inv.base_dir))
        plan = planning.build_shards(files, estimates, slots, shards=count,
                                     strategy=strategy)  # type: ignore[arg-type]
        return plan.shards, plan.why, plan.source

    def _print_plan(self, shards: Sequence[Shard], slots: Sequence[MachineSlots], strategy: str,
                    assignment: Mapping[str, str] | None, expected: float | None, lower: float | None,
                    explain: str) -> None:
        from rich.table import Table

        from .console import make_console
        from .progress import format_duration

        console = self.opts.console or make_console()
        if assignment is None and expected is not None:
            sim = planning.simulate(shards, slots, strategy="dynamic")
            where = {p[0]: p[1] for p in sim.placements}
        else:
            where = dict(assignment or {})
        table = Table(title=f"fleetshard plan: {len(shards)} shards, {strategy}", title_justify="left")
        for col in ("shard", "machine", "files", "expected"):
            table.add_column(col)
        for s in shards:
            files = ", ".join(s.files[:3]) + (f" … (+{len(s.files) - 3})" if len(s.files) > 3 else "")
            table.add_row(s.id, where.get(s.id, "(queue)"), files or f"{s.index}/{s.total}",
                          format_duration(s.expected) if s.expected is not None else "?")
        console.print(table)
        machines = ", ".join(f"{m.name} ({m.slots} slot{'s' if m.slots != 1 else ''}, speed {m.speed:.2g})"
                             for m in slots)
        console.print(f"machines: {machines}", soft_wrap=True)
        console.print(f"shards: {explain}", soft_wrap=True)
        if expected is not None and lower is not None:
            console.print(f"expected makespan {format_duration(expected)}, lower bound {format_duration(lower)}"
                          f" ({expected / lower:.2f}x)" if lower > 0 else "")
        else:
            console.print("expected makespan unknown (no durations yet: run once to record them)")

    # -- execution -----------------------------------------------------------------------------------
    async def _execute(self, shards: list[Shard], slots: list[MachineSlots], strategy: str,
                       assignment: Mapping[str, str] | None, expected: float | None, lower: float | None,
                       history: Any) -> int:
        assert self.suite is not None
        retry = self.inv.retry
        policy = RetryPolicy(
            max_retries=retry.max_retries if self.opts.max_retries is None else self.opts.max_retries,
            retry_failed_tests=self.opts.retry_failed_tests, backoff_base=retry.backoff_base,
            backoff_factor=retry.backoff_factor, backoff_max=retry.backoff_max, drain_after=retry.drain_after,
            fail_fast=self.opts.fail_fast, speculate=self.opts.speculate)
        jitter = retry.jitter if self.opts.backoff_jitter else 0.0
        sched = Scheduler(shards, slots, policy, strategy=strategy,  # type: ignore[arg-type]
                          assignment=assignment, backoff=backoff_from_tenacity(policy, jitter))
        self.timeout = self.opts.timeout if self.opts.timeout is not None else self.suite.config.timeout
        self.commit = self.opts.commit or _git_head(self.inv.base_dir)
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.renderer.start()
        infos = tuple(MachineInfo(name=m.machine.name, slots=m.slots if m.status == "healthy" else 0,
                                  speed=m.speed, status=m.status,
                                  reason="; ".join(m.health.reasons) if m.health else "")
                      for m in self.machines.values())
        self.publish(RunStarted(run_id=self.run_id, machines=infos, shards=tuple(shards), strategy=strategy,
                                expected_makespan=expected, lower_bound=lower,
                                log_dir=str(self.run_dir / "logs"), at=self.now()))
        ticker = asyncio.create_task(self._ticker())
        prober = asyncio.create_task(self._reprober())
        try:
            if self.interrupts:                       # Ctrl-C while probing or planning: launch nothing
                await self._apply(sched.on(CancelRun(reason="interrupted", at=self.now())))
            await self._apply(sched.on(Start(at=self.now())))
            while not sched.done:
                event = await self.queue.get()
                if isinstance(event, (ShardFinished, MachineStatus)):
                    self.publish(event)
                    if isinstance(event, ShardFinished):
                        self.attempts.pop((event.shard.id, event.attempt), None)
                await self._apply(sched.on(event))
        finally:
            ticker.cancel()
            prober.cancel()
            await self._shutdown()
        code = sched.exit_code if sched.exit_code is not None else EXIT_OK
        if self.interrupts:
            code = 130
        record = self._record(sched, shards, strategy, code, expected, lower)
        self._write_results(record, history)
        self.publish(RunFinished(exit_code=code, at=self.now(), summary=record.counts()))
        self.renderer.finish(record)
        return code

    async def _ticker(self) -> None:
        """Ticks for the scheduler; and a watchdog: when no machine has been healthy for a long time,
        the unhealthy ones are given up on (their shards end "not run") instead of waiting forever."""
        patience = max(3 * self.inv.health.interval, 60.0)
        none_healthy_since: float | None = None
        while True:
            await asyncio.sleep(1.0)
            now = self.now()
            self.queue.put_nowait(Tick(at=now))
            self.renderer.tick()
            unhealthy = [st for st in self.machines.values() if st.status == "unhealthy"]
            if any(st.status in ("healthy", "degraded") for st in self.machines.values()) or not unhealthy:
                none_healthy_since = None
                continue
            none_healthy_since = none_healthy_since or now
            if now - none_healthy_since >= patience:
                for st in unhealthy:
                    st.status = "lost"
                    self.queue.put_nowait(MachineStatus(
                        machine=st.machine.name, status="lost", at=now,
                        reason=f"unhealthy for {patience:.0f} s: {'; '.join(st.health.reasons) if st.health else ''}"))

    async def _reprober(self) -> None:
        """Probe the machines again every health.interval: drain the ones that turn bad, rejoin the rest."""
        interval = self.inv.health.interval
        if self.opts.skip_health_checks or interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            for st in list(self.machines.values()):
                if st.status in ("lost", "drained") or st.slots == 0:
                    continue
                self._spawn(self._reprobe(st))

    async def _reprobe(self, st: _MachineState) -> None:
        if st.probing:
            return                            # the previous probe is still out: never pile them up
        st.probing = True
        try:
            report = await probe(st.machine, st.transport, self.inv.health)
        finally:
            st.probing = False
        st.health = report
        status = "healthy" if report.healthy else "unhealthy"
        if status != st.status and st.status not in ("lost", "drained"):
            st.status = status
            self.queue.put_nowait(MachineStatus(machine=st.machine.name, status=status,
                                                reason="; ".join(report.reasons), at=self.now()))

    def _retry_due(self, shard_id: str) -> None:
        self.queue.put_nowait(RetryDue(shard_id=shard_id, at=self.now()))

    async def _apply(self, decisions: Sequence[Decision]) -> None:
        for d in decisions:
            if isinstance(d, Launch):
                att = _Attempt(d.shard, d.attempt, d.machine, d.speculative)
                self.attempts[(d.shard.id, d.attempt)] = att
                att.task = asyncio.create_task(self._run_attempt(att))
            elif isinstance(d, Retry):
                self.publish(ShardRetrying(shard=d.shard, next_attempt=d.next_attempt, after_s=d.after_s,
                                           avoid=d.avoid, reason=d.reason, at=self.now()))
                self.timers.append(asyncio.get_running_loop().call_later(d.after_s, self._retry_due, d.shard.id))
            elif isinstance(d, Cancel):
                cancelled = self.attempts.get((d.shard_id, d.attempt))
                if cancelled is not None and cancelled.cancel_reason is None:
                    cancelled.cancel_reason = d.reason
                    cancelled.killing = asyncio.create_task(self._stop(cancelled))
            elif isinstance(d, Drain):
                st = self.machines.get(d.machine)
                if st is not None:
                    st.status = "drained"
                self.publish(MachineStatus(machine=d.machine, status="drained", reason=d.reason, at=self.now()))
            elif isinstance(d, NotRun):
                self.publish(ShardNotRun(shard=d.shard, reason=d.reason, at=self.now()))
            elif isinstance(d, Finish):
                self.exit_code = d.exit_code

    # -- one attempt ---------------------------------------------------------------------------------
    def _env(self, st: _MachineState, shard: Shard | None, attempt: int, junit: str | None) -> dict[str, str]:
        env = st.machine.env_dict()
        env.update(FLEETSHARD_RUN_ID=self.run_id, FLEETSHARD_MACHINE=st.machine.name,
                   FLEETSHARD_COMMIT=self.commit or "")
        if shard is not None:
            env.update(FLEETSHARD_SHARD=str(shard.index), FLEETSHARD_TOTAL=str(shard.total),
                       FLEETSHARD_ATTEMPT=str(attempt), FLEETSHARD_TOKEN=self._token(shard.id, attempt))
            if junit:
                env["FLEETSHARD_JUNIT"] = junit
        return env

    def _token(self, shard_id: str, attempt: int) -> str:
        return f"{self.run_id}.{shard_id}.{attempt}."

    async def _ready(self, st: _MachineState) -> str | None:
        """Connect, create the workdir, sync and run setup once per machine; why not, or None."""
        if st.ready is None:
            st.ready = asyncio.ensure_future(self._prepare(st))
        return await st.ready

    async def _prepare(self, st: _MachineState) -> str | None:
        from .workspace import prepare_machine

        st.used = True
        try:
            await st.transport.connect()
            problem = await prepare_machine(self, st)
        except ConnectError as exc:
            problem = str(exc)
        except Exception as exc:  # whatever it is, the machine cannot take shards
            problem = f"{st.machine.name}: preparation failed: {type(exc).__name__}: {exc}"
        if problem is not None and st.status not in ("lost", "drained"):
            # Preparation is done once per machine: every shard sent there would fail the same way.
            st.status = "drained"
            self.queue.put_nowait(MachineStatus(machine=st.machine.name, status="drained", reason=problem,
                                                at=self.now()))
        return problem

    async def _run_attempt(self, att: _Attempt) -> None:
        """Run one attempt. Whatever happens, exactly one ShardFinished comes back for it."""
        st = self.machines[att.machine]
        shard = att.shard
        run = _AttemptRun(started=self.now(),
                          log_path=self.run_dir / "logs" / f"{shard.id}-{att.attempt}-{att.machine}.log")
        outcome, reason = Outcome.INFRA_FAILED, "internal error"
        junit_local = None
        artifacts: list[str] = []
        try:
            with open(run.log_path, "w", encoding="utf-8") as log:
                try:
                    outcome, reason = await self._attempt_body(att, st, log, run)
                except ConnectError as exc:
                    outcome, reason = Outcome.INFRA_FAILED, str(exc)
                except _NotStarted:
                    outcome, reason = Outcome.CANCELLED, att.cancel_reason or "cancelled"
                except Exception as exc:  # a bug or an unexpected library error must never lose a shard
                    outcome, reason = Outcome.INFRA_FAILED, f"internal error: {type(exc).__name__}: {exc}"
                    if att.wait is not None:
                        await self._stop(att)
                if reason:
                    log.write(f"# {outcome}: {reason}\n")
            run.ended = self.now()           # busy time and learned durations exclude the downloads below
            if outcome is Outcome.INFRA_FAILED and run.result.error and st.status != "lost":
                await self._check_lost(st, run.result.error)
            if outcome.is_infra and st.status == "healthy":
                st.status = "degraded"       # shown in its row; still takes work until drained or lost
                self.publish(MachineStatus(machine=st.machine.name, status="degraded", reason=reason,
                                           at=self.now()))
            if outcome in (Outcome.PASSED, Outcome.TESTS_FAILED):
                junit_local = await self._fetch_junit(st, shard, att.attempt, run.junit_remote)
                from .workspace import collect_artifacts

                artifacts = await collect_artifacts(self, st, shard, att.attempt)
        except Exception as exc:
            if outcome is Outcome.PASSED or not reason:
                outcome, reason = Outcome.INFRA_FAILED, f"internal error: {type(exc).__name__}: {exc}"
            self.notes.append(f"{shard.id} attempt {att.attempt}: {type(exc).__name__}: {exc}")
        finally:
            ended = run.ended if run.ended is not None else self.now()
            result = run.result
            self.records.append(AttemptRecord(
                shard_id=shard.id, attempt=att.attempt, machine=att.machine, outcome=str(outcome),
                started=self.wall(run.started), ended=self.wall(ended), exit_status=result.exit_status,
                signal=result.signal, reason=reason, log_path=str(run.log_path), junit_path=junit_local,
                speculative=att.speculative, command=run.command, artifacts=artifacts))
            self.queue.put_nowait(ShardFinished(
                machine=att.machine, shard=shard, attempt=att.attempt, outcome=outcome,
                exit_status=result.exit_status, signal=result.signal, reason=reason, started_at=run.started,
                at=ended, log_path=str(run.log_path), tail=tuple(run.tail), speculative=att.speculative))

    async def _attempt_body(self, att: _Attempt, st: _MachineState, log: TextIO, run: _AttemptRun
                            ) -> tuple[Outcome, str]:
        assert self.suite is not None
        shard = att.shard
        problem = await self._ready(st)
        if problem is not None:
            raise ConnectError(problem)
        if self.suite.uses_junit:
            run.junit_remote = junit_path(self.suite, run_id=self.run_id, shard=shard, attempt=att.attempt)
        run.command = shard_command(self.suite, shard=shard, machine=att.machine, run_id=self.run_id,
                                    attempt=att.attempt, junit=run.junit_remote or "")
        log.write(f"# {att.machine}: {run.command}\n")
        stream, publish, tail, now = self.opts.stream, self.publish, run.tail, self.now
        shard_id, number, machine = shard.id, att.attempt, att.machine

        def on_line(line: str) -> None:
            log.write(line + "\n")
            tail.append(line)
            if stream:
                publish(OutputLine(machine=machine, shard_id=shard_id, attempt=number, line=line, at=now()))

        if att.cancel_reason is not None:
            raise _NotStarted
        att.proc = await st.transport.start(run.command, cwd=st.workdir,
                                            env=self._env(st, shard, att.attempt, run.junit_remote),
                                            on_line=on_line)
        att.wait = asyncio.ensure_future(att.proc.wait())
        run.started = self.now()
        self.queue.put_nowait(ShardRunning(shard_id=shard.id, attempt=att.attempt, machine=att.machine,
                                           at=run.started))
        self.publish(ShardStarted(machine=att.machine, shard=shard, attempt=att.attempt, command=run.command,
                                  log_path=str(run.log_path), at=run.started, speculative=att.speculative))
        if att.cancel_reason is not None and (att.killing is None or att.killing.done()):
            att.killing = asyncio.create_task(self._stop(att))      # cancelled while it was starting
        timed_out = False
        try:
            run.result = await asyncio.wait_for(asyncio.shield(att.wait), self.timeout)
        except TimeoutError:
            timed_out = True
            await self._stop(att)
            run.result = await att.wait
        return self._classify(run.result, timed_out, att)

    def _classify(self, result: ProcessResult, timed_out: bool, att: _Attempt) -> tuple[Outcome, str]:
        if timed_out:
            return Outcome.TIMED_OUT, f"timed out after {self.timeout:g} s"
        if att.cancel_reason is not None:
            return Outcome.CANCELLED, att.cancel_reason
        if result.error == "workdir is missing":
            return Outcome.INFRA_FAILED, f"workdir {self.machines[att.machine].workdir} is missing"
        if result.error:
            return Outcome.INFRA_FAILED, result.error
        if result.signal:
            return Outcome.INFRA_FAILED, f"killed by signal {result.signal}"
        status = result.exit_status
        if status == 0:
            return Outcome.PASSED, ""
        if status in self.inv.retry.infra_exit_codes:
            return Outcome.INFRA_FAILED, f"exit code {status} (configured as an infrastructure failure)"
        return Outcome.TESTS_FAILED, f"exit code {status}"

    async def _check_lost(self, st: _MachineState, why: str) -> None:
        """After a dropped channel: is the machine still there? If not, it takes no more work.
        One check per machine at a time: every attempt that lost its channel waits for the same answer."""
        if st.lost_check is None or st.lost_check.done():
            st.lost_check = asyncio.ensure_future(self._alive(st))
        alive = await asyncio.shield(st.lost_check)
        if not alive and st.status != "lost":
            st.status = "lost"
            self.queue.put_nowait(MachineStatus(machine=st.machine.name, status="lost", reason=why,
                                                at=self.now()))

    async def _alive(self, st: _MachineState) -> bool:
        limit = st.machine.connect_timeout + 2
        try:
            res, _ = await asyncio.wait_for(st.transport.run("true", timeout=limit), limit)
        except (ConnectError, OSError, TimeoutError):
            return False
        return res.exit_status == 0

    async def _fetch_junit(self, st: _MachineState, shard: Shard, attempt: int, remote: str | None
                           ) -> str | None:
        if remote is None:
            return None
        full = remote if remote.startswith(("/", "~")) else f"{st.workdir}/{remote}"
        local = self.run_dir / "junit" / f"{shard.id}-{attempt}.xml"
        try:
            found = await st.transport.get_file(full, str(local))
        except (ConnectError, OSError) as exc:
            self.notes.append(f"{shard.id} attempt {attempt}: JUnit not collected from {st.machine.name}: {exc}")
            return None
        except Exception as exc:  # an SFTP error must not lose the run
            self.notes.append(f"{shard.id} attempt {attempt}: JUnit not collected: {exc}")
            return None
        if not found:
            self.notes.append(f"shard {shard.id} attempt {attempt} produced no JUnit XML at {full} "
                              f"on {st.machine.name}")
            return None
        return str(local)

    async def _signal(self, att: _Attempt, sig: str) -> None:
        st = self.machines[att.machine]
        pgids = [att.proc.pgid] if att.proc is not None and att.proc.pgid is not None else []
        try:
            marker = f"FLEETSHARD_TOKEN={self._token(att.shard.id, att.attempt)}"
            await st.transport.kill_groups(pgids, sig, markers=[marker])
        except (ConnectError, OSError):
            pass

    async def _stop(self, att: _Attempt) -> None:
        """TERM the attempt's process group, KILL it after the grace period."""
        if att.wait is None:
            return
        await self._signal(att, "TERM")
        grace = 0.0 if self.interrupts > 1 else self.kill_grace
        try:
            await asyncio.wait_for(asyncio.shield(att.wait), grace)
        except TimeoutError:
            await self._signal(att, "KILL")
            try:
                await asyncio.wait_for(asyncio.shield(att.wait), 5)
            except TimeoutError:
                pass

    async def _shutdown(self) -> None:
        """Nothing of the run survives: stop leftover attempts, sweep every machine, run teardown."""
        leftovers = [a for a in self.attempts.values() if a.task is not None and not a.task.done()]
        for att in leftovers:
            if att.cancel_reason is None:
                att.cancel_reason = "interrupted"
                att.killing = asyncio.create_task(self._stop(att))
        if leftovers:
            await asyncio.wait([a.task for a in leftovers if a.task is not None], timeout=self.kill_grace + 10)
        from .workspace import teardown_machine

        used = [st for st in self.machines.values() if st.used]
        marker = [f"FLEETSHARD_RUN_ID={self.run_id}"]

        async def sweep(st: _MachineState) -> None:
            # A lost machine is tried too (once, within its connect timeout): if its link came back,
            # whatever the run left there dies now.
            try:
                await asyncio.wait_for(st.transport.kill_groups([], "KILL", markers=marker),
                                       st.machine.connect_timeout + 5)
            except (ConnectError, OSError, TimeoutError):
                return
            if st.status != "lost":
                await teardown_machine(self, st)

        await asyncio.gather(*(sweep(st) for st in used), return_exceptions=True)

    # -- results -------------------------------------------------------------------------------------
    def _record(self, sched: Scheduler, shards: Sequence[Shard], strategy: str, code: int,
                expected: float | None, lower: float | None) -> RunRecord:
        assert self.suite is not None
        shard_records = []
        for s in shards:
            state = str(sched.state(s.id))
            shard_records.append(ShardRecord(
                id=s.id, index=s.index, total=s.total, files=list(s.files), expected=s.expected, state=state,
                reason=sched.not_run.get(s.id, ""), flaky=s.id in sched.flaky))
        machines = []
        for st in self.machines.values():
            health = st.health.as_dict() if st.health else {}
            machines.append(MachineRecord(name=st.machine.name, slots=st.slots, speed=st.speed, status=st.status,
                                          reason="; ".join(st.health.reasons) if st.health else "",
                                          health=health))
        states = {(r.shard_id, r.attempt): r for r in sched.records}
        for a in self.records:
            seen = states.get((a.shard_id, a.attempt))
            if seen is not None:
                a.queued, a.assigned = self.wall(seen.queued_at), self.wall(seen.assigned_at)
        return RunRecord(
            run_id=self.run_id, started=self.t0_wall, ended=time.time(), argv=redact_argv(self.opts.argv),
            inventory=str(self.inv.path), strategy=strategy, mode=self.suite.mode, command=self.suite.command,
            exit_code=code, machines=machines, shards=shard_records,
            attempts=sorted(self.records, key=lambda a: (a.started, a.shard_id)),
            expected_makespan=expected, lower_bound=lower, run_dir=str(self.run_dir), commit=self.commit,
            notes=list(self.notes))

    def _write_results(self, record: RunRecord, history: Any) -> None:
        from . import results
        from .report import write_html
        from .workspace import ci_outputs, notify

        try:
            notes = results.tests_from_record(record)
            if self.suite is not None and self.suite.uses_junit:   # else "no JUnit" is expected, not news
                record.notes.extend(n for n in notes if n not in record.notes)
        except Exception as exc:  # a broken JUnit file is a note, never a lost run
            record.notes.append(f"JUnit not read: {exc}")
        outputs: list[tuple[str, Callable[[], None]]] = [
            ("JSON report", lambda: results.write_json_report(record, self.run_dir / "report.json"))]
        if self.opts.junit:
            junit = self.opts.junit
            outputs.append(("JUnit", lambda: self._merge(record, junit)))
        if self.opts.json_report:
            report = self.opts.json_report
            outputs.append(("JSON report", lambda: results.write_json_report(record, report)))
        if self.opts.html:
            html = self.opts.html
            outputs.append(("HTML report", lambda: write_html(record, html)))
        for what, write in outputs:
            try:
                write()
            except (OSError, ValueError) as exc:
                self.notice(f"{what} not written: {exc}", "error")
        if history is not None:
            try:
                history.record_run(record)
            except HistoryError as exc:
                self.notice(f"run not recorded in history: {exc} (results files were written)", "warning")
        ci_outputs(self, record)
        notify(self, record)

    def _merge(self, record: RunRecord, out: Path) -> None:
        from . import results

        stats = results.merge_junit(record, out)
        for note in getattr(stats, "notes", []):
            if note not in record.notes:
                record.notes.append(note)


def run_command(inv: Inventory, opts: RunOptions) -> int:
    """`fleetshard run` / `fleetshard plan`: returns the exit code."""
    return asyncio.run(Run(inv, opts).main())
