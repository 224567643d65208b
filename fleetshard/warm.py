"""Warm pytest workers (``suite.workers: warm``): one long-lived pytest per slot on each machine.

A worker is the suite's own pytest command, started once with fleetshard's plugin
(fleetshard/runners/pytest_worker.py, copied into the run's directory on the machine and loaded with
``-p fleetshard_worker``). It pays the interpreter's, pytest's and conftest's start-up once, then runs
the shards it is sent one after another: each shard's test ids or files are collected and run in that
process, and come back as pytest's exit code for the batch and the batch's own JUnit XML. Shards are
then single files, scheduled dynamically, at no start-up cost each.

The protocol (see the plugin's docstring) runs over the worker's channel: requests on its stdin,
answers on its stdout as whole lines that carry a per-worker random token, sent on stdin only. What a
test prints stays output: it cannot pass for an answer.

A worker that ends or hangs while it runs a shard is an infrastructure failure of that shard (the
test it was running is named); its slot starts a new worker for the next shard.
"""

from __future__ import annotations

import asyncio
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConnectError
from .events import TestReported
from .suite import render
from .transport.base import OutputSink, ProcessResult, RemoteProcess, new_token

if TYPE_CHECKING:
    from .machines import MachineHandle

PLUGIN_SOURCE = Path(__file__).parent / "runners" / "pytest_worker.py"
PLUGIN_MODULE = "fleetshard_worker"
PREFIX = "__fleetshard_w__"
START_TIMEOUT = 300.0       # seconds a worker may take from its start to its first "ready"
QUIT_WAIT = 5.0             # seconds a worker is given to finish its session (session fixtures' teardown)
MESSAGE_LIMIT = 1 << 28     # bytes of one answer line (a batch's JUnit) before the worker counts as broken


class WorkerError(Exception):
    """A worker that could not be started or did not become ready."""

    def __init__(self, message: str, result: ProcessResult | None = None) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class BatchResult:
    """How one batch ended: pytest's exit code and JUnit, or the worker's end while it ran."""

    status: int | None                 # pytest's exit code for the batch; None: the worker ended first
    junit: str = ""
    ended: ProcessResult | None = None  # how the worker ended, when it did
    current: str | None = None         # the test it was running then


class _Stream:
    """The worker's output: answer lines (prefix + token) go to ``on_message``, the rest to ``out``.

    The worker writes each answer after a newline of its own, so that it starts a line even when the
    output before it did not end one: that newline is taken out with the answer (the output goes on
    where it was, e.g. pytest's progress dots stay on one line). A line's newline is therefore held until
    what follows it shows whether an answer comes next."""

    def __init__(self, token: str, on_message: Any, out: Any) -> None:
        self.prefix = f"{PREFIX} {token} "
        self.on_message = on_message
        self.out = out
        self._buf = ""
        self._newline = False        # a newline held back

    def _text(self, text: str) -> None:
        if self._newline:
            self._newline = False
            text = "\n" + text
        if text:
            self.out(text)

    def write(self, text: str) -> None:
        buf = self._buf + text
        start = 0
        while True:
            end = buf.find("\n", start)
            if end < 0:
                break
            line = buf[start:end]
            start = end + 1
            if line.startswith(self.prefix):
                self._newline = False            # the worker's own, before its answer
                self._message(line[len(self.prefix):])
            else:
                self._text(line)
                self._newline = True
        rest = buf[start:]
        if rest and not (self.prefix.startswith(rest) or rest.startswith(self.prefix)):
            self._text(rest)
            rest = ""
        self._buf = rest if len(rest) <= MESSAGE_LIMIT else ""

    def flush(self) -> None:
        rest, self._buf = self._buf, ""
        self._text(rest)
        if self._newline:
            self._newline = False
            self.out("\n")

    def _message(self, text: str) -> None:
        try:
            msg = json.loads(text)
        except ValueError:
            return
        if isinstance(msg, dict):
            self.on_message(msg)


def worker_command(command: str, *, machine: str, run_id: str, plugin_dir: str) -> str:
    """The suite's pytest command as a worker: no test ids (each batch brings its own), no session JUnit
    (each batch writes its own), and fleetshard's plugin on the path and loaded with ``-p``."""
    line = render(command, {"shard": "0", "total": "0", "files": (), "tests": (), "junit": "",
                            "machine": machine, "run_id": run_id, "attempt": "0"})
    where = '"$PWD"/' + shlex.quote(plugin_dir)
    return (f'export PYTHONPATH={where}${{PYTHONPATH:+:$PYTHONPATH}} '
            f'PYTEST_ADDOPTS="-p {PLUGIN_MODULE}${{PYTEST_ADDOPTS:+ $PYTEST_ADDOPTS}}" '
            f"FLEETSHARD_WARM_WORKER=1; {line}")


@dataclass(eq=False)
class WarmWorker:
    pool: WarmPool
    number: int
    token: str = field(default_factory=new_token)
    proc: RemoteProcess | None = None
    ended: asyncio.Future[ProcessResult] | None = None
    current: str | None = None
    broken: bool = False
    batches: int = 0
    sink: OutputSink | None = None
    running: tuple[str, int] | None = None    # (shard id, attempt) of the batch it runs
    _ready: asyncio.Event = field(default_factory=asyncio.Event)
    _pending: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    _log: Any = None

    @property
    def label(self) -> str:
        return f"{self.pool.handle.name} worker {self.number}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.ended is not None and not self.ended.done() and not self.broken

    # -- output and answers --------------------------------------------------------------------------
    def _out(self, text: str) -> None:
        if self._log is not None:
            try:
                self._log.write(text)
            except (OSError, ValueError):
                self._log = None
        if self.sink is not None:
            self.sink.write(text)

    def _on_message(self, msg: dict[str, Any]) -> None:
        ev = msg.get("ev")
        if ev == "ready":
            self._ready.set()
        elif ev == "start":
            self.current = str(msg.get("test", "")) or None
        elif ev == "report" and self.running is not None:
            ctx = self.pool.handle.ctx
            duration = msg.get("duration")
            ctx.emit(TestReported(machine=self.pool.handle.name, shard_id=self.running[0], attempt=self.running[1],
                                  test=str(msg.get("test", "")), when=str(msg.get("when", "")),
                                  outcome=str(msg.get("outcome", "")),
                                  duration=float(duration) if isinstance(duration, (int, float)) else 0.0,
                                  at=ctx.now()))
        elif ev == "done":
            fut = self._pending.pop(int(msg.get("id", -1)), None)
            if fut is not None and not fut.done():
                fut.set_result(msg)

    # -- life -----------------------------------------------------------------------------------------
    async def start(self) -> None:
        h = self.pool.handle
        ctx = h.ctx
        plugin_dir = await self.pool.plugin()
        command = worker_command(ctx.suite.command, machine=h.name, run_id=ctx.run_id, plugin_dir=plugin_dir)
        log_path = ctx.run_dir / "logs" / f"worker-{h.name}-{self.number}.log"
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(log_path, "a", encoding="utf-8", errors="replace")   # noqa: SIM115
        except OSError:
            self._log = None
        self._out(f"# {h.name}: {command}\n")
        env = h.env()
        env["FLEETSHARD_WORKER"] = f"{ctx.run_id}-{h.name}-{self.number}"
        stream = _Stream(self.token, self._on_message, self._out)
        self.proc = await h.transport.start(command, cwd=h.workdir, env=env, on_line=stream, stdin=True)
        self.ended = asyncio.ensure_future(self.proc.wait())
        self.proc.write(json.dumps({"token": self.token, "quiet": self.pool.quiet}) + "\n")
        self.pool.heartbeat()
        ready = asyncio.ensure_future(self._ready.wait())
        try:
            waits: set[asyncio.Future[Any]] = {ready, self.ended}
            await asyncio.wait(waits, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if self._ready.is_set():
            return
        if self.ended.done():
            result = self.ended.result()
            self._close_log()
            raise WorkerError(f"the pytest worker ended before it was ready ({describe_end(result)})", result)
        await self.kill(0.0)
        raise WorkerError(f"the pytest worker was not ready after {START_TIMEOUT:g} s")

    async def run(self, args: list[str]) -> BatchResult:
        """Run one batch (test ids or files); bounded by the caller (the shard's timeout)."""
        assert self.proc is not None and self.ended is not None
        self.batches += 1
        batch = self.batches
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[batch] = answer
        self.current = None
        try:
            self.proc.write(json.dumps({"op": "run", "id": batch, "args": args}) + "\n")
        except (OSError, ConnectError) as exc:
            self.broken = True
            return BatchResult(None, ended=ProcessResult(None, None, f"connection lost: {exc}"))
        try:
            waits: set[asyncio.Future[Any]] = {answer, self.ended}
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._pending.pop(batch, None)
        if answer.done():
            msg = answer.result()
            status = msg.get("status")
            return BatchResult(int(status) if isinstance(status, int) else None, str(msg.get("junit") or ""))
        self.broken = True
        return BatchResult(None, ended=self.ended.result(), current=self.current)

    async def signal(self, sig: str) -> None:
        h = self.pool.handle
        pgids = [self.proc.pgid] if self.proc is not None and self.proc.pgid is not None else []
        marker = f"FLEETSHARD_WORKER={h.ctx.run_id}-{h.name}-{self.number}"
        try:
            await h.transport.kill_groups(pgids, sig, markers=[marker])
        except (ConnectError, OSError):
            pass

    async def kill(self, grace: float) -> None:
        """TERM the worker's group, KILL it after ``grace`` seconds; it takes no more batches."""
        self.broken = True
        if self.ended is None or self.ended.done():
            self._close_log()
            return
        await self.signal("TERM")
        done, _ = await asyncio.wait({self.ended}, timeout=grace)
        if not done:
            await self.signal("KILL")
            await asyncio.wait({self.ended}, timeout=5.0)
        self._close_log()

    async def quit(self, grace: float) -> None:
        """Finish the worker's session (its session fixtures' teardown) within QUIT_WAIT, else kill it."""
        ended = self.ended
        if self.proc is None or ended is None:
            return
        if not ended.done():
            try:
                self.proc.write(json.dumps({"op": "quit"}) + "\n")
            except (OSError, ConnectError):
                pass
            await asyncio.wait({ended}, timeout=QUIT_WAIT)
        if not ended.done():
            await self.kill(grace)
        self.proc.close_stdin()
        self._close_log()

    def _close_log(self) -> None:
        log, self._log = self._log, None
        if log is not None:
            try:
                log.close()
            except OSError:
                pass


def describe_end(result: ProcessResult) -> str:
    if result.error:
        return result.error
    if result.signal:
        return f"killed by signal {result.signal}"
    return f"exit code {result.exit_status}"


class WarmPool:
    """A machine's warm workers: at most one per running shard (so one per slot), reused shard after shard."""

    def __init__(self, handle: MachineHandle) -> None:
        self.handle = handle
        self.idle: list[WarmWorker] = []
        self.workers: list[WarmWorker] = []
        self._plugin: asyncio.Future[str] | None = None
        self._warming = 0                     # workers started ahead of the first shards, not ready yet
        self._waiting = 0                     # shards waiting for one of them
        self._warmed = asyncio.Event()
        self.warm_tasks: list[asyncio.Future[None]] = []
        self._heartbeat: asyncio.Future[None] | None = None

    @property
    def interval(self) -> float:
        """Seconds between pings: the machine's keepalive interval."""
        m = self.handle.machine
        return m.server_alive_interval if m.server_alive_interval is not None else max(1.0, m.connect_timeout)

    @property
    def quiet(self) -> float:
        """Seconds of silence after which a worker takes its coordinator for gone (and ends)."""
        return max(30.0, 4 * self.interval)

    def heartbeat(self) -> None:
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.ensure_future(self._ping())

    async def _ping(self) -> None:
        """A line to every live worker once per keepalive interval (see the plugin's watcher)."""
        while True:
            await asyncio.sleep(self.interval)
            for worker in self.workers:
                if worker.alive and worker.proc is not None:
                    try:
                        worker.proc.write('{"op":"ping"}\n')
                    except (OSError, ConnectError):
                        pass

    async def plugin(self) -> str:
        """Copy the plugin into the run's directory on the machine, once; its directory (from the workdir)."""
        if self._plugin is None or (self._plugin.done() and self._plugin.exception() is not None):
            self._plugin = asyncio.ensure_future(self._upload())
        return await asyncio.shield(self._plugin)

    async def _upload(self) -> str:
        h = self.handle
        rel = f".fleetshard/{h.ctx.run_id}/worker-{h.name}"     # machines may share a workdir
        made, out = await h.transport.run(f"mkdir -p -- {shlex.quote(rel)}", cwd=h.workdir, timeout=60)
        if made.exit_status != 0:
            raise WorkerError(f"cannot create {rel} on {h.name}: {made.error or out.strip()[-200:]}")
        base = h.workdir.rstrip("/") or "/"
        try:
            await h.transport.put_file(str(PLUGIN_SOURCE), f"{base}/{rel}/{PLUGIN_MODULE}.py")
        except ConnectError:
            raise
        except Exception as exc:  # an SFTP or scp refusal: the machine cannot take warm workers
            raise WorkerError(f"cannot copy the pytest worker plugin to {h.name}: {exc}") from exc
        return rel

    async def acquire(self) -> WarmWorker:
        """An idle live worker, one being warmed up, or a new one (started and ready)."""
        while True:
            while self.idle:
                worker = self.idle.pop()
                if worker.alive:
                    return worker
            if self._warming <= self._waiting:
                break
            self._waiting += 1
            try:
                await self._warmed.wait()
            finally:
                self._waiting -= 1
        worker = WarmWorker(self, len(self.workers) + 1)
        self.workers.append(worker)
        await worker.start()
        return worker

    def warm_up(self, count: int) -> None:
        """Start ``count`` workers now, ahead of the shards (while the run is still being planned)."""
        for _ in range(count):
            self._warming += 1
            self.warm_tasks.append(asyncio.ensure_future(self._warm_one()))

    async def _warm_one(self) -> None:
        worker = WarmWorker(self, len(self.workers) + 1)
        self.workers.append(worker)
        try:
            await worker.start()
        except Exception:  # the shard that needs a worker starts its own, and reports why not
            pass
        else:
            self.release(worker)
        finally:
            self._warming -= 1
            self._warmed.set()
            self._warmed.clear()

    def release(self, worker: WarmWorker) -> None:
        """A worker whose batch is over: idle again if it is still sound."""
        worker.sink = None
        worker.running = None
        if worker.alive and worker not in self.idle:
            self.idle.append(worker)

    async def close(self, grace: float, *, quit: bool = True) -> None:
        """The run is over: every worker finishes its session (``quit``), or is killed."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        for task in self.warm_tasks:
            task.cancel()
        await asyncio.gather(*self.warm_tasks, return_exceptions=True)
        self.idle.clear()
        await asyncio.gather(*(w.quit(grace) if quit else w.kill(grace) for w in self.workers),
                             return_exceptions=True)


async def warm_up(handle: MachineHandle) -> None:
    """Prepare the machine (setup, services) and start one worker per slot, before the first shard."""
    from .workspace import prepare_machine

    if await handle.ready(prepare_machine) is None:
        pool_of(handle).warm_up(handle.slots)


def pool_of(handle: MachineHandle) -> WarmPool:
    if handle.workers is None:
        handle.workers = WarmPool(handle)
    pool: WarmPool = handle.workers
    return pool
