"""The coordinator loop: events in, scheduler decisions out, retry timers, signals.

    Scheduler.on(Start) -> Launch -> Attempt -> ShardFinished (queue) -> loop -> Scheduler.on() -> ...

Ctrl-C or SIGTERM: the scheduler cancels everything, each running process group gets TERM then KILL
after the grace period, a marker sweep removes anything that left its group, and the run exits 130.
A second Ctrl-C skips the grace period.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from .attempt import Attempt
from .context import RunContext
from .errors import ConnectError
from .events import (
    Event,
    MachineInfo,
    MachineStatus,
    RunFinished,
    RunStarted,
    ShardFinished,
    ShardNotRun,
    ShardRetrying,
    ShardStarted,
    Tick,
)
from .journal import Journal
from .machines import MachineHandle
from .model import EXIT_OK, RetryPolicy
from .record import RunRecord
from .recorder import Recorder, write_results
from .scheduler import (
    Cancel,
    CancelRun,
    Decision,
    Drain,
    Fact,
    Finish,
    Launch,
    MachineJoined,
    NotRun,
    Retry,
    RetryDue,
    Scheduler,
    Start,
)
from .session import Prepared


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


class _Flush:
    """A marker on the queue: its future is set once every event before it has been handled."""

    def __init__(self) -> None:
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class Subscriber(Protocol):
    def handle(self, event: Event) -> None: ...


SCHEDULER_INPUTS = (ShardStarted, ShardFinished, MachineStatus, MachineJoined, RetryDue, CancelRun, Tick, Start)


class Coordinator:
    """The one consumer of the run's queue. Every event, whoever produced it, is taken off the queue
    here, fed to the scheduler (when it is one of its inputs) and handed to every subscriber, in the
    order it was emitted; then the scheduler's decisions are carried out. Views (renderers, the
    recorder, a dashboard, a journal) :meth:`subscribe` and see exactly that order."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.machines: Mapping[str, MachineHandle] = {}
        self.subscribers: list[Subscriber] = []
        self.recorder = Recorder(ctx)
        self.sched: Scheduler | None = None
        self.attempts: dict[tuple[str, int], Attempt] = {}
        self.interrupts = 0
        self.exit_code: int | None = None
        self.timers: list[asyncio.TimerHandle] = []
        self.background: set[asyncio.Future[Any]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._teardown: asyncio.Future[Any] | None = None
        self._teardown_cut = False
        self._settled: asyncio.Future[None] | None = None
        self.preparing: asyncio.Future[Any] | None = None    # probing and planning, before run()
        self.subscribe(self.recorder)
        self.journal = Journal(ctx)              # durable against SIGKILL: history can recover the run
        self.subscribe(self.journal)

    # -- subscribers --------------------------------------------------------------------------------
    def subscribe(self, subscriber: Subscriber, *, output: bool = False) -> None:
        """``subscriber.handle(event)`` is called for every event of the run, in the loop's order, each
        with its own ``at``. ``output=True``: it wants every OutputLine of every attempt too."""
        if subscriber not in self.subscribers:
            self.subscribers.append(subscriber)
        if output:
            self.ctx.output = True

    def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber in self.subscribers:
            self.subscribers.remove(subscriber)

    def _publish(self, event: Event) -> None:
        for sub in list(self.subscribers):
            sub.handle(event)

    # -- the loop -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Start taking events off the queue (probing and planning already emit notices)."""
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._loop())

    async def flush(self) -> None:
        """Wait until every event emitted so far has reached the subscribers."""
        if self._loop_task is None or self._loop_task.done():
            self._drain()
            return
        marker = _Flush()
        self.ctx.emit(marker)
        await marker.done

    async def stop(self) -> None:
        """Hand every queued event out, then stop the loop."""
        await self.flush()
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        self._drain()

    async def _loop(self) -> None:
        queue = self.ctx.queue
        while True:
            event = await queue.get()
            try:
                self._dispatch(event)
            except Exception as exc:  # a bug: the run ends with it, but the loop keeps handing out events
                if self._settled is not None and not self._settled.done():
                    self._settled.set_exception(exc)
                else:
                    raise

    def _drain(self) -> None:
        while not self.ctx.queue.empty():
            self._dispatch(self.ctx.queue.get_nowait())

    def _dispatch(self, event: Any) -> None:
        if isinstance(event, _Flush):
            if not event.done.done():
                event.done.set_result(None)
            return
        decisions: Sequence[Decision] = ()
        facts: Sequence[Fact] = ()
        sched = self.sched
        if sched is not None and not sched.done and isinstance(event, SCHEDULER_INPUTS):
            decisions = sched.on(event)
            facts = sched.take_facts()
        if isinstance(event, ShardFinished):
            self.attempts.pop((event.shard.id, event.attempt), None)
        # A MachineStatus from a producer is an observation for the scheduler; the statuses it settled
        # come back as facts, and only those reach the views.
        if not isinstance(event, (RetryDue, CancelRun, Start, MachineStatus, MachineJoined)):
            self._publish(event)
        for fact in facts:
            if isinstance(fact, MachineStatus):
                handle = self.machines.get(fact.machine)
                if handle is not None:
                    handle.status = fact.status
            self._publish(fact)
        self._apply(decisions)
        if sched is not None and sched.done and self._settled is not None and not self._settled.done():
            self._settled.set_result(None)

    # -- signals ------------------------------------------------------------------------------------
    def install_signals(self) -> Callable[[], None]:
        """SIGINT and SIGTERM cancel the run (see :meth:`interrupt`); returns the undo."""
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)
        for sig in signals:
            loop.add_signal_handler(sig, self.interrupt)

        def remove() -> None:
            for sig in signals:
                loop.remove_signal_handler(sig)

        return remove

    def interrupt(self) -> None:
        """First Ctrl-C: cancel the run (TERM, KILL after the grace period). Second: KILL at once."""
        self.interrupts += 1
        if self.preparing is not None and not self.preparing.done():
            self.preparing.cancel()              # probing and planning: nothing has run, stop at once
        self._cut_teardown()
        if self.interrupts == 1:
            self.ctx.emit(CancelRun(reason="interrupted", at=self.ctx.now()))
        else:
            self.ctx.hurry = True
            for att in list(self.attempts.values()):
                self._spawn(att.signal("KILL"))

    def _spawn(self, coro: Any) -> None:
        """A fire-and-forget task, kept referenced until it is done."""
        task = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def close(self) -> None:
        self.journal.close()
        for task in list(self.background):
            task.cancel()
        for timer in self.timers:
            timer.cancel()
        if self._loop_task is not None:
            self._loop_task.cancel()

    # -- the run ------------------------------------------------------------------------------------
    async def run(self, p: Prepared, finish: Callable[[RunRecord], None] | None = None) -> int:
        """Run the plan to the end; returns the exit code. ``finish(record)`` is called last."""
        ctx = self.ctx
        self.machines = p.machines
        self.start()
        inv, opts = ctx.inv, ctx.opts
        retry = inv.retry
        policy = RetryPolicy(
            max_retries=retry.max_retries if opts.max_retries is None else opts.max_retries,
            retry_failed_tests=opts.retry_failed_tests, backoff_base=retry.backoff_base,
            backoff_factor=retry.backoff_factor, backoff_max=retry.backoff_max, drain_after=retry.drain_after,
            fail_fast=opts.fail_fast, speculate=opts.speculate)
        jitter = retry.jitter if opts.backoff_jitter else 0.0
        (ctx.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        await self.flush()                            # what probing and planning said comes first
        infos = tuple(MachineInfo(name=h.name, slots=h.slots if h.status == "healthy" else 0,
                                  speed=h.speed, status=h.status,
                                  reason="; ".join(h.health.reasons) if h.health else "")
                      for h in self.machines.values())
        ctx.emit(RunStarted(run_id=ctx.run_id, machines=infos, shards=tuple(p.shards), strategy=p.strategy,
                            expected_makespan=p.expected, lower_bound=p.lower,
                            log_dir=str(ctx.run_dir / "logs"), at=ctx.now()))
        await self.flush()
        sched = Scheduler(p.shards, p.slots, policy, strategy=p.strategy,  # type: ignore[arg-type]
                          assignment=p.assignment, backoff=backoff_from_tenacity(policy, jitter),
                          patience=max(3 * inv.health.interval, 60.0))
        self._settled = asyncio.get_running_loop().create_future()
        self.sched = sched
        ticker = asyncio.create_task(self._ticker())
        prober = asyncio.create_task(self._reprober())
        try:
            if self.interrupts:                       # Ctrl-C while probing or planning: launch nothing
                ctx.emit(CancelRun(reason="interrupted", at=ctx.now()))
            ctx.emit(Start(at=ctx.now()))
            await self._settled
        finally:
            ticker.cancel()
            prober.cancel()
            await self._shutdown()
            await self.flush()
        code = sched.exit_code if sched.exit_code is not None else EXIT_OK
        if self.interrupts:
            code = 130
        machines = [h.record() for h in self.machines.values()]
        record = self.recorder.record(sched, p.shards, machines, p.strategy, code, p.expected, p.lower)
        write_results(ctx, record, p.history)
        ctx.emit(RunFinished(exit_code=code, at=ctx.now(), summary=record.counts()))
        await self.stop()
        if finish is not None:
            finish(record)
        return code

    async def _ticker(self) -> None:
        """A Tick about once a second: the scheduler's watchdog and speculation, the views' status lines."""
        while True:
            await asyncio.sleep(1.0)
            self.ctx.emit(Tick(at=self.ctx.now()))

    async def _reprober(self) -> None:
        """Probe the machines again every health.interval: drain the ones that turn bad, rejoin the rest."""
        interval = self.ctx.inv.health.interval
        if self.ctx.opts.skip_health_checks or interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            for h in list(self.machines.values()):
                if h.status == "drained":
                    continue
                if h.status == "lost" or h.slots == 0:
                    self._spawn(h.rejoin())          # left out at the start, or lost: back yet?
                    continue
                self._spawn(h.reprobe())

    def _retry_due(self, shard_id: str) -> None:
        self.ctx.emit(RetryDue(shard_id=shard_id, at=self.ctx.now()))

    def _apply(self, decisions: Sequence[Decision]) -> None:
        ctx = self.ctx
        for d in decisions:
            if isinstance(d, Launch):
                att = Attempt(ctx, self.machines[d.machine], d.shard, d.attempt, d.speculative, d.only)
                self.attempts[att.key] = att
                att.launch()
            elif isinstance(d, Retry):
                self._publish(ShardRetrying(shard=d.shard, next_attempt=d.next_attempt, after_s=d.after_s,
                                           avoid=d.avoid, reason=d.reason, at=ctx.now()))
                self.timers.append(asyncio.get_running_loop().call_later(d.after_s, self._retry_due, d.shard.id))
            elif isinstance(d, Cancel):
                cancelled = self.attempts.get((d.shard_id, d.attempt))
                if cancelled is not None:
                    cancelled.cancel(d.reason)
            elif isinstance(d, Drain):
                pass                                  # the drained status came with the scheduler's facts
            elif isinstance(d, NotRun):
                self._publish(ShardNotRun(shard=d.shard, reason=d.reason, at=ctx.now()))
            elif isinstance(d, Finish):
                self.exit_code = d.exit_code

    async def _shutdown(self) -> None:
        """Nothing of the run survives: stop leftover attempts, sweep every machine, run teardown."""
        ctx = self.ctx
        leftovers = [a for a in self.attempts.values() if not a.done]
        for att in leftovers:
            att.cancel("interrupted")
        if leftovers:
            await asyncio.wait([a.task for a in leftovers if a.task is not None], timeout=ctx.kill_grace + 10)
        from .workspace import remove_run_dir, teardown_machine

        used = [h for h in self.machines.values() if h.used]
        marker = [f"FLEETSHARD_RUN_ID={ctx.run_id}"]

        async def kill(h: MachineHandle) -> bool:
            # A lost machine is tried too (once, within its connect timeout): if its link came back,
            # whatever the run left there dies now.
            try:
                await asyncio.wait_for(h.transport.kill_groups([], "KILL", markers=marker),
                                       h.machine.connect_timeout + 5)
            except (ConnectError, OSError, TimeoutError):
                return False
            return True

        async def sweep(h: MachineHandle) -> None:
            if h.workers is not None and h.status != "lost":
                from .warm import QUIT_WAIT

                grace = 0.0 if ctx.hurry or self.interrupts else ctx.kill_grace
                try:       # session fixtures' teardown; after Ctrl-C the workers are only killed
                    await asyncio.wait_for(h.workers.close(grace, quit=not self.interrupts),
                                           QUIT_WAIT + grace + 10)
                except (ConnectError, OSError, TimeoutError):
                    pass
            if h.services and h.status != "lost":
                try:
                    await asyncio.wait_for(h.stop_services(), ctx.kill_grace + h.machine.connect_timeout + 10)
                except (ConnectError, OSError, TimeoutError):
                    pass                  # the sweep below (and the channel's end) still takes them down
            if await kill(h) and h.status != "lost":
                await teardown_machine(h)
                if not ctx.opts.keep_remote_dir:
                    await remove_run_dir(h)

        self._teardown = asyncio.ensure_future(asyncio.gather(*(sweep(h) for h in used), return_exceptions=True))
        try:
            await self._teardown
        except asyncio.CancelledError:
            if not self._teardown_cut:
                raise
            ctx.notice("teardown cut short by Ctrl-C", "warning")
            await asyncio.gather(*(kill(h) for h in used), return_exceptions=True)   # what it left running
        finally:
            self._teardown = None

    def _cut_teardown(self) -> None:
        """Ctrl-C during teardown: the second cuts it at once, the first after the kill grace period."""
        teardown = self._teardown
        if teardown is None or teardown.done():
            return

        def cut() -> None:
            if not teardown.done():
                self._teardown_cut = True
                teardown.cancel()

        if self.interrupts > 1:
            cut()
        else:
            self.timers.append(asyncio.get_running_loop().call_later(self.ctx.kill_grace, cut))
