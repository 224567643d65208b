"""An in-process transport for fast tests of the coordinator: no process, no socket, no shell.

Each fake machine answers commands from a script, in the spirit of httpx's ``MockTransport``: the first
:class:`Behaviour` whose ``match`` is found in the command decides how that command behaves (output lines,
delay, exit status, hanging until killed, ignoring TERM, losing the connection after some seconds), and
the machine itself may refuse to connect or have its JUnit/artifact downloads fail::

    fleet = FakeFleet({"h1": FakeMachine(behaviours=[Behaviour("pytest", output=["1 passed"])])})
    transport = fleet.transport(machine)          # implements fleetshard.transport.base.Transport

Everything a machine was asked to do is kept on it (``commands``, ``signals``, ``running``), so a test
reads what happened instead of mocking calls. Times are real asyncio times: keep them to milliseconds.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConnectError
from ..inventory import Machine
from .base import OutputTarget, ProcessResult, as_sink

_TOKEN = re.compile(r"FLEETSHARD_TOKEN=(\S+)")


@dataclass
class Behaviour:
    """How a command containing ``match`` behaves ("" matches every command)."""

    match: str = ""
    output: Sequence[str] = ()
    exit_status: int = 0
    delay: float = 0.0                # seconds it runs (after writing its output)
    start_delay: float = 0.0          # seconds ``start`` takes before the process exists
    hang: bool = False                # runs until a signal ends it
    ignore_term: bool = False         # only KILL ends it
    lost_after: float | None = None   # the connection drops after this many seconds
    files: Mapping[str, str] = field(default_factory=dict)   # remote path -> text, written when it ends
    junit: str | None = None          # text written to $FLEETSHARD_JUNIT (in the workdir) when it ends


@dataclass
class FakeMachine:
    behaviours: list[Behaviour] = field(default_factory=list)
    refuse: str | None = None         # connect() raises ConnectError with this text
    download_error: str | None = None   # get_file raises ConnectError with this text ...
    download_delay: float = 0.0       # ... after this many seconds
    files: dict[str, str] = field(default_factory=dict)     # the machine's files (remote path -> text)
    commands: list[str] = field(default_factory=list)       # everything started or run, in order
    signals: list[tuple[str, str]] = field(default_factory=list)   # (command, signal) sent to processes
    running: set[FakeProcess] = field(default_factory=set)  # processes not yet ended

    def behaviour(self, command: str) -> Behaviour:
        for b in self.behaviours:
            if b.match in command:
                return b
        return Behaviour()


class FakeProcess:
    _next_pgid = 1000

    def __init__(self, machine: FakeMachine, command: str, env: Mapping[str, str], behaviour: Behaviour,
                 on_line: OutputTarget | None, cwd: str | None = None) -> None:
        FakeProcess._next_pgid += 1
        self.pgid: int | None = FakeProcess._next_pgid
        self.machine = machine
        self.command = command
        self.env = dict(env)
        self.cwd = cwd
        self.b = behaviour
        self.output: list[str] = []
        self.stdin: list[str] = []
        self.stdin_closed = False
        self._sink = as_sink(on_line) if on_line is not None else None
        self._signalled: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        machine.running.add(self)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> ProcessResult:
        b = self.b
        try:
            for line in b.output:
                self.output.append(line)
                if self._sink is not None:
                    self._sink.write(line + "\n")
            waits: list[asyncio.Future[object]] = [self._signalled]   # type: ignore[list-item]
            limit = b.lost_after if b.lost_after is not None else (None if b.hang else b.delay)
            done, _ = await asyncio.wait(waits, timeout=limit)
            if self._signalled in done:
                return ProcessResult(None, self._signalled.result())
            if b.lost_after is not None:
                return ProcessResult(None, error="connection lost: fake link dropped")
            self.machine.files.update(b.files)
            junit = self.env.get("FLEETSHARD_JUNIT")
            if b.junit is not None and junit:
                path = junit if junit.startswith(("/", "~")) else f"{self.cwd or '~'}/{junit}"
                self.machine.files[path] = b.junit
            return ProcessResult(b.exit_status)
        finally:
            self.machine.running.discard(self)

    def signal(self, sig: str) -> None:
        self.machine.signals.append((self.command, sig))
        if sig == "TERM" and self.b.ignore_term:
            return
        if not self._signalled.done():
            self._signalled.set_result(sig)

    async def wait(self) -> ProcessResult:
        return await asyncio.shield(self._task)

    async def signal_group(self, signal: str) -> None:
        self.signal(signal)

    def write(self, text: str) -> None:
        self.stdin.append(text)

    def close_stdin(self) -> None:
        self.stdin_closed = True


class FakeTransport:
    """One fake machine, with the :class:`~fleetshard.transport.base.Transport` interface."""

    def __init__(self, machine: Machine, fake: FakeMachine) -> None:
        self.machine = machine
        self.name = machine.name
        self.fake = fake
        self.connected = False

    async def connect(self) -> float:
        if self.fake.refuse is not None:
            raise ConnectError(f"{self.name}: {self.fake.refuse}", machine=self.name)
        self.connected = True
        return 0.0

    async def start(self, command: str, *, cwd: str | None, env: Mapping[str, str],
                    on_line: OutputTarget, stdin: bool = False) -> FakeProcess:
        await self.connect()
        b = self.fake.behaviour(command)
        self.fake.commands.append(command)
        if b.start_delay:
            await asyncio.sleep(b.start_delay)
        return FakeProcess(self.fake, command, env, b, on_line, cwd)

    async def run(self, command: str, *, cwd: str | None = None, env: Mapping[str, str] | None = None,
                  stdin: str | None = None, timeout: float | None = None) -> tuple[ProcessResult, str]:
        await self.connect()
        b = self.fake.behaviour(command)
        self.fake.commands.append(command)
        proc = FakeProcess(self.fake, command, env or {}, b, None, cwd)
        try:
            result = await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.signal("KILL")
            return ProcessResult(None, "KILL", f"timed out after {timeout:g} s"), ""
        finally:
            if not proc._task.done():        # the caller was cancelled: the process goes with it
                proc.signal("KILL")
        return result, "".join(line + "\n" for line in proc.output)

    async def kill_groups(self, pgids: Sequence[int], signal: str, *, markers: Sequence[str] = ()) -> None:
        await self.connect()
        for proc in list(self.fake.running):
            tagged = any(f"{k}={v}".startswith(m) for m in markers for k, v in proc.env.items())
            if proc.pgid in pgids or tagged:
                proc.signal(signal)

    async def get_file(self, remote: str, local: str) -> bool:
        if self.fake.download_delay:
            await asyncio.sleep(self.fake.download_delay)
        if self.fake.download_error is not None:
            raise ConnectError(f"{self.name}: {self.fake.download_error}", machine=self.name)
        text = self.fake.files.get(remote)
        if text is None:
            return False
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        Path(local).write_text(text, encoding="utf-8")
        return True

    async def put_file(self, local: str, remote: str) -> None:
        self.fake.files[remote] = Path(local).read_text(encoding="utf-8", errors="replace")

    async def rtt(self) -> float:
        await self.connect()
        return 0.0

    async def close(self) -> None:
        self.connected = False


class FakeFleet:
    """Fake machines by name; :meth:`transport` is a ``transport_for`` replacement."""

    def __init__(self, machines: Mapping[str, FakeMachine] | None = None,
                 default: Callable[[], FakeMachine] = FakeMachine) -> None:
        self.machines: dict[str, FakeMachine] = dict(machines or {})
        self.default = default

    def __getitem__(self, name: str) -> FakeMachine:
        if name not in self.machines:
            self.machines[name] = self.default()
        return self.machines[name]

    def transport(self, machine: Machine, **_: object) -> FakeTransport:
        return FakeTransport(machine, self[machine.name])

    @property
    def running(self) -> int:
        """Processes still running on any fake machine."""
        return sum(len(m.running) for m in self.machines.values())
