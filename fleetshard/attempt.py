"""One shard attempt: start, stream, timeout, classify, TERM->KILL, JUnit and artifact download.

An attempt sees its machine handle and the run context, never the coordinator. Whatever happens, it
emits exactly one :class:`ShardFinished` for itself.
"""

from __future__ import annotations

import asyncio
import collections
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from .context import RunContext
from .errors import ConnectError
from .events import OutputLine, ShardFinished, ShardStarted
from .machines import MachineHandle
from .model import Outcome, Shard, TestFailure
from .output import TAIL_LINES, ShardOutput
from .results import add_collection_errors, judge
from .suite import junit_path, shard_invocation
from .transport import RemoteProcess
from .transport.base import ProcessResult
from .warm import BatchResult, WarmWorker, WorkerError, describe_end, pool_of

_T = TypeVar("_T")
DOWNLOAD_TIMEOUT = 300.0   # seconds a JUnit download may take before the machine is checked for life


class _Cut(Exception):
    """A JUnit download given up because the attempt was cancelled."""


class _NotStarted(Exception):
    """The attempt was cancelled before its process started."""


@dataclass
class _Gathered:
    """What one attempt has gathered so far; read when it ends, however it ends."""

    started: float
    log_path: Path
    command: str = ""
    junit_remote: str | None = None
    junit_local: str | None = None        # a warm worker's batch JUnit, already here
    ended: float | None = None
    result: ProcessResult = field(default_factory=lambda: ProcessResult(None))
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=TAIL_LINES))


@dataclass(eq=False)
class Attempt:
    """One launched attempt of a shard on a machine."""

    ctx: RunContext
    handle: MachineHandle
    shard: Shard
    number: int
    speculative: bool = False
    only: tuple[str, ...] | None = None     # rerun exactly these test ids (a retry of failed tests)
    proc: RemoteProcess | None = None
    wait: asyncio.Future[ProcessResult] | None = None
    cancel_reason: str | None = None
    killing: asyncio.Task[None] | None = None
    task: asyncio.Task[None] | None = None
    worker: WarmWorker | None = None          # the warm pytest worker running it (suite.workers: warm)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def machine(self) -> str:
        return self.handle.name

    @property
    def key(self) -> tuple[str, int]:
        return self.shard.id, self.number

    def launch(self) -> None:
        self.task = asyncio.create_task(self.run())

    def cancel(self, reason: str) -> None:
        """Stop it (TERM, then KILL after the grace period); it still reports its one ShardFinished."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
            self.cancelled.set()
            self.killing = asyncio.create_task(self.stop())

    @property
    def done(self) -> bool:
        return self.task is None or self.task.done()

    async def run(self) -> None:
        """Run the attempt. Whatever happens, exactly one ShardFinished comes back for it."""
        ctx, h, shard = self.ctx, self.handle, self.shard
        run = _Gathered(started=ctx.now(),
                        log_path=ctx.run_dir / "logs" / f"{shard.id}-{self.number}-{h.name}.log")
        outcome, reason = Outcome.INFRA_FAILED, "internal error"
        junit_local = None
        artifacts: list[str] = []
        failures: tuple[TestFailure, ...] = ()
        rerun: tuple[str, ...] | None = None
        try:
            out = self._output(run)
            try:
                outcome, reason = await self._body(out, run)
            except ConnectError as exc:     # shown beside the machine's name: not inside it too
                outcome, reason = Outcome.INFRA_FAILED, str(exc).removeprefix(f"{h.name}: ")
            except _NotStarted:
                outcome, reason = Outcome.CANCELLED, self.cancel_reason or "cancelled"
            except Exception as exc:  # a bug or an unexpected library error must never lose a shard
                outcome, reason = Outcome.INFRA_FAILED, f"internal error: {type(exc).__name__}: {exc}"
                if self.wait is not None:
                    await self.stop()
            finally:
                if reason:
                    out.note(f"# {outcome}: {reason}")
                out.close()
            if run.result.warning:
                ctx.warn_once("output", f"{shard.id} attempt {self.number}: {run.result.warning}")
            run.ended = ctx.now()           # busy time and learned durations exclude the download phase
            if outcome is Outcome.INFRA_FAILED and run.result.error and h.status != "lost":
                await h.check_lost(run.result.error)
            if outcome in (Outcome.PASSED, Outcome.TESTS_FAILED):
                junit_local = run.junit_local or await self._fetch_junit(run.junit_remote)
                outcome, reason, failures, rerun, junit_local = self._judge(outcome, reason, run, junit_local)
                from .workspace import collect_artifacts

                artifacts = await collect_artifacts(h, shard, self.number)
        except Exception as exc:
            if outcome is Outcome.PASSED or not reason:
                outcome, reason = Outcome.INFRA_FAILED, f"internal error: {type(exc).__name__}: {exc}"
            ctx.note(f"{shard.id} attempt {self.number}: {type(exc).__name__}: {exc}")
        finally:
            released = ctx.now()
            result = run.result
            ctx.emit(ShardFinished(
                machine=h.name, shard=shard, attempt=self.number, outcome=outcome,
                exit_status=result.exit_status, signal=result.signal, reason=reason, started_at=run.started,
                at=released, log_path=str(run.log_path), tail=tuple(run.tail), speculative=self.speculative,
                command=run.command, junit_path=junit_local, artifacts=tuple(artifacts), failures=failures,
                rerun=rerun, ended_at=run.ended if run.ended is not None else released))

    def _judge(self, outcome: Outcome, reason: str, run: _Gathered, junit: str | None
               ) -> tuple[Outcome, str, tuple[TestFailure, ...], tuple[str, ...] | None, str | None]:
        """The verdict from the attempt's tests (JUnit first; the exit code only without one)."""
        ctx, shard = self.ctx, self.shard
        suite, listing = ctx.suite, ctx.listing
        if listing is not None and listing.errors:
            mine = [p for p in listing.errors if p.file in shard.files]
            if mine and self.only is None:
                junit = add_collection_errors(
                    junit, mine, ctx.run_dir / "junit" / f"{shard.id}-{self.number}-with-load-errors.xml")
        verdict = judge(outcome, reason, run.result.exit_status, junit if suite.uses_junit else None,
                        ok_exit_codes=suite.ok_exit_codes, adapter=suite.adapter, listing=listing,
                        files=shard.files)
        return verdict.outcome, verdict.reason, verdict.failures, verdict.rerun, junit

    def _output(self, run: _Gathered) -> ShardOutput:
        """The attempt's output sink: log, tail, and OutputLine events when a view wants them."""
        ctx, shard_id, number, machine = self.ctx, self.shard.id, self.number, self.handle.name
        stream: Callable[[str], None] | None = None
        if ctx.output:
            emit, now = ctx.emit, ctx.now

            def stream(line: str) -> None:
                emit(OutputLine(machine=machine, shard_id=shard_id, attempt=number, line=line, at=now()))

        out = ShardOutput(run.log_path, lambda text: ctx.warn_once("log", text), stream)
        run.tail = out.tail.lines
        return out

    async def _body(self, sink: ShardOutput, run: _Gathered) -> tuple[Outcome, str]:
        from .workspace import prepare_machine

        ctx, h, shard = self.ctx, self.handle, self.shard
        suite = ctx.suite
        problem = await self._until_cancelled(h.ready(prepare_machine))
        if problem is not None:             # told once with the machine's status; short here
            raise ConnectError(f"{h.short_problem(problem)} (machine drained)")
        if suite.config.workers == "warm":
            return await self._warm_body(sink, run)
        if suite.uses_junit:
            run.junit_remote = junit_path(suite, run_id=ctx.run_id, shard=shard, attempt=self.number)
        invocation = shard_invocation(suite, shard=shard, machine=h.name, run_id=ctx.run_id,
                                      attempt=self.number, junit=run.junit_remote or "", only=self.only)
        run.command = invocation.command
        for path, text in invocation.files.items():          # long test lists, on the machine first
            parent = path.rsplit("/", 1)[0] if "/" in path else "."
            wrote, out = await h.transport.run(
                f"mkdir -p -- {shlex.quote(parent)} && cat > {shlex.quote(path)}", cwd=h.workdir, stdin=text,
                timeout=60)
            if wrote.exit_status != 0:
                raise ConnectError(f"cannot write {path} on {h.name}: {wrote.error or out.strip()[-200:]}")
        sink.note(f"# {h.name}: {run.command}")
        if self.cancel_reason is not None:
            raise _NotStarted
        self.proc = await h.transport.start(run.command, cwd=h.workdir,
                                            env=h.env(shard, self.number, run.junit_remote), on_line=sink)
        self.wait = asyncio.ensure_future(self.proc.wait())
        run.started = ctx.now()
        ctx.emit(ShardStarted(machine=h.name, shard=shard, attempt=self.number, command=run.command,
                                 log_path=str(run.log_path), at=run.started, speculative=self.speculative))
        if self.cancel_reason is not None and (self.killing is None or self.killing.done()):
            self.killing = asyncio.create_task(self.stop())      # cancelled while it was starting
        timed_out = False
        try:
            run.result = await asyncio.wait_for(asyncio.shield(self.wait), ctx.timeout)
        except TimeoutError:
            timed_out = True
            await self.stop()
            run.result = await self.wait
        return self.classify(run.result, timed_out)

    async def _warm_body(self, sink: ShardOutput, run: _Gathered) -> tuple[Outcome, str]:
        """The shard as one batch of a warm pytest worker of this machine (started if none is idle)."""
        ctx, h, shard = self.ctx, self.handle, self.shard
        pool = pool_of(h)
        if self.cancel_reason is not None:
            raise _NotStarted
        try:
            # cancelled first: the worker it was starting serves the machine's next shard
            worker = await self._until_cancelled(pool.acquire(), late=pool.release)
        except WorkerError as exc:
            if exc.result is not None:
                run.result = exc.result
                tail = list(sink.tail.lines)[-1:] if sink.tail.lines else []
                if exc.result.exit_status is not None and not exc.result.error:
                    # pytest itself refused (a usage error, a broken conftest): the suite's failure, not the
                    # machine's; its output is in the log
                    return Outcome.TESTS_FAILED, f"{exc}" + (f": {tail[0]}" if tail else "")
            raise ConnectError(str(exc)) from exc
        if self.cancel_reason is not None:
            pool.release(worker)
            raise _NotStarted
        self.worker = worker
        worker.sink = sink
        worker.running = (shard.id, self.number)
        ids = list(self.only if self.only is not None else (shard.tests or shard.files))
        what = " ".join(shlex.quote(f) for f in shard.files) if len(ids) > len(shard.files) else \
            " ".join(shlex.quote(i) for i in ids)
        run.command = f"({worker.label}) {what}" + (f" ({len(ids)} tests)" if len(ids) > len(shard.files) else "")
        sink.note(f"# {h.name}: {run.command}")
        run.started = ctx.now()
        ctx.emit(ShardStarted(machine=h.name, shard=shard, attempt=self.number, command=run.command,
                              log_path=str(run.log_path), at=run.started, speculative=self.speculative))
        timed_out = False
        try:
            batch = await asyncio.wait_for(worker.run(ids), ctx.timeout)
        except TimeoutError:
            timed_out = True
            running = worker.current
            await worker.kill(0.0 if ctx.hurry else ctx.kill_grace)
            batch = BatchResult(None, current=running)
        finally:
            pool.release(worker)
        if batch.status is not None:
            run.result = ProcessResult(batch.status)
            if batch.junit:
                local = ctx.run_dir / "junit" / f"{shard.id}-{self.number}.xml"
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_text(batch.junit, encoding="utf-8")
                run.junit_local = str(local)
            return self.classify(run.result, False)
        running = f" while running {batch.current}" if batch.current else ""
        if timed_out:
            run.result = ProcessResult(None, "KILL")
            return Outcome.TIMED_OUT, f"timed out after {ctx.timeout:g} s{running}"
        if self.cancel_reason is not None:
            return Outcome.CANCELLED, self.cancel_reason
        ended = batch.ended or ProcessResult(None, None, "connection lost")
        run.result = ended
        return Outcome.INFRA_FAILED, f"the pytest worker ended{running} ({describe_end(ended)})"

    async def _until_cancelled(self, step: Awaitable[_T], late: Callable[[_T], None] | None = None) -> _T:
        """``step`` (the machine's preparation, a warm worker), unless this attempt is cancelled first.
        Then ``step`` goes on, and ``late`` gets what it yields, if it yields anything."""
        task = asyncio.ensure_future(step)
        cancelled = asyncio.ensure_future(self.cancelled.wait())
        try:
            await asyncio.wait({task, cancelled}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancelled.cancel()
        if not task.done():
            if late is not None:
                task.add_done_callback(
                    lambda t: late(t.result()) if not t.cancelled() and t.exception() is None else None)
            raise _NotStarted
        return task.result()

    def classify(self, result: ProcessResult, timed_out: bool) -> tuple[Outcome, str]:
        if timed_out:
            return Outcome.TIMED_OUT, f"timed out after {self.ctx.timeout:g} s"
        if self.cancel_reason is not None:
            return Outcome.CANCELLED, self.cancel_reason
        if result.error == "workdir is missing":
            return Outcome.INFRA_FAILED, f"workdir {self.handle.workdir} is missing"
        if result.error:
            return Outcome.INFRA_FAILED, result.error
        if result.signal:
            return Outcome.INFRA_FAILED, f"killed by signal {result.signal}"
        status = result.exit_status
        if status == 0:
            return Outcome.PASSED, ""
        if status in self.ctx.inv.retry.infra_exit_codes:
            return Outcome.INFRA_FAILED, f"exit code {status} (configured as an infrastructure failure)"
        return Outcome.TESTS_FAILED, f"exit code {status}"

    async def _fetch_junit(self, remote: str | None) -> str | None:
        if remote is None:
            return None
        ctx, h, shard, attempt = self.ctx, self.handle, self.shard, self.number
        full = remote if remote.startswith(("/", "~")) else f"{h.workdir}/{remote}"
        local = ctx.run_dir / "junit" / f"{shard.id}-{attempt}.xml"
        try:
            found = await self._download(h.transport.get_file(full, str(local)))
        except _Cut:
            local.unlink(missing_ok=True)
            ctx.note(f"{shard.id} attempt {attempt}: JUnit download from {h.name} cut short "
                     f"({self.cancel_reason}): the verdict comes from the exit code")
            return None
        except (ConnectError, OSError, TimeoutError) as exc:
            why = str(exc) or f"no answer in {DOWNLOAD_TIMEOUT:g} s"
            ctx.note(f"{shard.id} attempt {attempt}: JUnit not collected from {h.name}: {why}")
            if isinstance(exc, (ConnectError, TimeoutError)):
                await h.check_lost(f"lost during the JUnit download: {why}")
            return None
        except Exception as exc:  # an SFTP error must not lose the run
            ctx.note(f"{shard.id} attempt {attempt}: JUnit not collected: {exc}")
            return None
        if not found:
            ctx.note(f"shard {shard.id} attempt {attempt} produced no JUnit XML at {full} on {h.name}")
            return None
        return str(local)

    async def _download(self, fetch: Awaitable[bool]) -> bool:
        """``fetch`` within DOWNLOAD_TIMEOUT; once the attempt is cancelled (Ctrl-C), within the kill
        grace period, and at once after a second Ctrl-C: a download over a slow link never holds the
        run's end. Raises _Cut when it was given up."""
        download = asyncio.ensure_future(asyncio.wait_for(fetch, DOWNLOAD_TIMEOUT))
        cancelled = asyncio.ensure_future(self.cancelled.wait())
        try:
            await asyncio.wait([download, cancelled], return_when=asyncio.FIRST_COMPLETED)
            if not download.done():
                loop = asyncio.get_running_loop()
                cut_at = loop.time() + self.ctx.kill_grace
                while not download.done() and not self.ctx.hurry and loop.time() < cut_at:
                    await asyncio.wait([download], timeout=min(0.1, max(0.0, cut_at - loop.time())))
            if not download.done():
                raise _Cut
            return download.result()
        finally:
            cancelled.cancel()
            if not download.done():
                download.cancel()     # an SFTP transfer may wait on its requests in flight: not for long
                await asyncio.wait([download], timeout=1.0)

    async def signal(self, sig: str) -> None:
        if self.worker is not None:
            await self.worker.signal(sig)
            return
        pgids = [self.proc.pgid] if self.proc is not None and self.proc.pgid is not None else []
        try:
            marker = f"FLEETSHARD_TOKEN={self.ctx.token(self.shard.id, self.number)}"
            await self.handle.transport.kill_groups(pgids, sig, markers=[marker])
        except (ConnectError, OSError):
            pass

    async def stop(self) -> None:
        """TERM the attempt's process group, KILL it after the grace period."""
        if self.worker is not None:
            await self.worker.kill(0.0 if self.ctx.hurry else self.ctx.kill_grace)
            return
        if self.wait is None:
            return
        await self.signal("TERM")
        grace = 0.0 if self.ctx.hurry else self.ctx.kill_grace
        try:
            await asyncio.wait_for(asyncio.shield(self.wait), grace)
        except TimeoutError:
            await self.signal("KILL")
            try:
                await asyncio.wait_for(asyncio.shield(self.wait), 5)
            except TimeoutError:
                pass
