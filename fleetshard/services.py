"""Per-machine services (``suite.services``): background commands a suite's shards need on their machine.

Each service is started once per machine after setup, in its own process group, through the machine's
transport like a shard (so the wrapper's watcher kills it when its channel closes: a coordinator that is
killed leaves no service behind). It is *ready* when its ``ready`` check succeeds: a command that exits
0, or an http(s) URL that answers with a success status (fetched on the machine, with curl, wget or
python3, whichever it has), polled until ``timeout`` seconds have passed. A service that exits before it
is ready, or does not become ready in time, fails the machine with the service's output as the reason.
At the end of the run (also after Ctrl-C and failures) each service's group gets TERM, then KILL after a
grace period; the end-of-run sweep catches anything that left the group (it carries the run's id).

``{machine}`` in a service's command (and ``ready``) is the machine's name; the machine's ``env`` is
exported (and ``$NAME`` in a ready URL is filled from it), so machines that share a host can each use
their own port.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from .inventory import ServiceConfig
from .suite import render
from .transport.base import ProcessResult, RemoteProcess, Transport

POLL_INTERVAL = 0.1          # first pause between readiness checks (doubles up to POLL_MAX)
POLL_MAX = 1.0
CHECK_TIMEOUT = 5.0          # one readiness check may take at most this long
OUTPUT_LINES = 20            # the last lines of a service's output kept for the failure reason


_ENV_REF = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def ready_command(ready: str, machine: str, env: Mapping[str, str] | None = None) -> str:
    """The shell line that checks ``ready`` once on the machine: the command itself, or a fetch of a URL
    (``$NAME`` / ``${NAME}`` in a URL are the machine's env, filled in here; the URL is passed quoted)."""
    filled = render(ready, {"machine": machine})
    if not ready.startswith(("http://", "https://")):
        return filled
    values = dict(env or {})
    url = shlex.quote(_ENV_REF.sub(lambda m: values.get(m.group(1) or m.group(2), m.group(0)), filled))
    py = shlex.quote("import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)")
    return (f"if command -v curl >/dev/null 2>&1; then curl -fsS -o /dev/null --max-time 2 {url}; "
            f"elif command -v wget >/dev/null 2>&1; then wget -q -O /dev/null -T 2 {url}; "
            f"else python3 -c {py} {url}; fi")


@dataclass
class RunningService:
    """One service on one machine."""

    config: ServiceConfig
    machine: str
    proc: RemoteProcess
    output: deque[str] = field(default_factory=lambda: deque(maxlen=OUTPUT_LINES))
    waiter: asyncio.Future[ProcessResult] | None = None

    @property
    def exited(self) -> bool:
        return self.waiter is not None and self.waiter.done()

    def describe(self) -> str:
        return f"service {self.config.command!r} on {self.machine}"

    def tail(self) -> str:
        lines = [line for line in self.output if line.strip()]
        return ("; output: " + " | ".join(lines[-5:])) if lines else "; no output"


class ServiceError(Exception):
    """A service did not start or become ready: the reason, with its output."""


async def start_service(transport: Transport, config: ServiceConfig, *, machine: str, cwd: str | None,
                        env: Mapping[str, str]) -> RunningService:
    """Start one service (not waiting for it to be ready)."""
    output: deque[str] = deque(maxlen=OUTPUT_LINES)
    command = render(config.command, {"machine": machine})
    proc = await transport.start(command, cwd=cwd, env=env, on_line=output.append)
    running = RunningService(config, machine, proc, output)
    running.waiter = asyncio.ensure_future(proc.wait())
    return running


async def wait_ready(transport: Transport, running: RunningService, *, cwd: str | None,
                     env: Mapping[str, str]) -> None:
    """Poll the service's ready check until it succeeds; ServiceError if it exits or times out first."""
    config = running.config
    if config.ready is None:
        await asyncio.sleep(0)
        if running.exited:
            raise ServiceError(f"{running.describe()} exited at once{_status(running)}{running.tail()}")
        return
    check = ready_command(config.ready, running.machine, env)
    deadline = time.monotonic() + config.timeout
    pause = POLL_INTERVAL
    last = ""
    while True:
        if running.exited:
            raise ServiceError(f"{running.describe()} exited before it was ready{_status(running)}"
                               f"{running.tail()}")
        left = deadline - time.monotonic()
        if left <= 0:
            raise ServiceError(f"{running.describe()} not ready within {config.timeout:g} s "
                               f"(ready check {config.ready!r}: {last or 'no answer'}){running.tail()}")
        result, out = await transport.run(check, cwd=cwd, env=env, timeout=min(CHECK_TIMEOUT, max(left, 0.1)))
        if result.exit_status == 0:
            return
        last = (out.strip().splitlines() or [result.error or f"exit {result.exit_status}"])[-1][:200]
        assert running.waiter is not None
        await asyncio.wait([running.waiter], timeout=min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, POLL_MAX)


def _status(running: RunningService) -> str:
    if running.waiter is None or not running.waiter.done() or running.waiter.exception() is not None:
        return ""
    result = running.waiter.result()
    if result.exit_status is not None:
        return f" (exit {result.exit_status})"
    if result.signal:
        return f" (signal {result.signal})"
    return f" ({result.error})" if result.error else ""


async def stop_service(running: RunningService, grace: float) -> None:
    """TERM the service's process group, then KILL it after ``grace`` seconds; wait until it is gone."""
    if running.exited:
        return
    assert running.waiter is not None
    for sig, wait in (("TERM", grace), ("KILL", 5.0)):
        try:
            await running.proc.signal_group(sig)
        except Exception:  # a machine that is gone: the channel's end kills the service there
            return
        done, _ = await asyncio.wait([running.waiter], timeout=wait)
        if done:
            return
