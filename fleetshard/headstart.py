"""A run's head start: the machines are contacted while the rest of fleetshard is still loading.

Importing what a run needs (coordinator, scheduler, planner, renderers, history) takes a good share of
a second on a small, busy machine, and an SSH handshake is mostly waiting for the other end. So
`fleetshard run` and `fleetshard plan` open the connections they will need first (the same bound and
handshake slot as a probe's connect phase), start `git rev-parse HEAD` in a thread, and import the
run's modules in a worker thread while the event loop carries the handshakes on. The probes then find
their connection open, or its failure, once.
"""

from __future__ import annotations

import asyncio
import importlib
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .probes import open_connection

if TYPE_CHECKING:
    from .context import RunOptions
    from .inventory import Machine
    from .transport import Transport

# The modules of a run, each after the ones it imports. They load while the handshakes run, and before
# the probes start: a probe's CPU calibration must not compete with this process for the machine. The
# renderers load once the first shards run (fleetshard.lazyview).
RUN_MODULES = (
    "fleetshard.model", "fleetshard.events", "fleetshard.logtext", "fleetshard.record", "fleetshard.runners",
    "fleetshard.suite", "fleetshard.services", "fleetshard.machines", "fleetshard.results", "sqlite3",
    "fleetshard.speeds", "fleetshard.history", "fleetshard.report", "fleetshard.journal", "fleetshard.planning",
    "fleetshard.splitting", "fleetshard.session", "fleetshard.output", "fleetshard.warm", "fleetshard.attempt",
    "fleetshard.scheduler", "fleetshard.recorder", "tenacity", "fleetshard.coordinator", "fleetshard.workspace",
    "fleetshard.lazyview",
)
SWITCH_INTERVAL = 0.0005  # seconds a thread runs before another that waits for the interpreter gets it


def git_head(base: Path) -> str | None:
    """The commit checked out in ``base`` (``git rev-parse HEAD``), or None."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=base, capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _retrieved(task: asyncio.Future[float]) -> None:
    if not task.cancelled():
        task.exception()                    # its failure is reported by whoever awaits it


@dataclass
class HeadStart:
    """What was started before the run's modules were loaded."""

    connecting: dict[str, asyncio.Future[float]] = field(default_factory=dict)
    commit: asyncio.Future[str | None] | None = None
    loading_s: float | None = None          # how long the modules took to load (None: still loading)

    def cancel(self) -> None:
        for task in self.connecting.values():
            task.cancel()

    async def connect(self, machine: Machine, transport: Transport) -> float:
        """The connect phase, begun before the modules load. If its bound runs out while loading them took
        a good part of it (a machine so busy that this process's own imports starved the handshake),
        it is tried once more, with a bound of its own, now that nothing else runs."""
        try:
            return await open_connection(machine, transport)
        except TimeoutError:
            if self.loading_s is not None and self.loading_s < machine.connect_timeout / 2:
                raise
        while self.loading_s is None:
            await asyncio.sleep(0.05)
        return await open_connection(machine, transport)


def begin(base_dir: Path, opts: RunOptions, selected: Sequence[Machine],
          transports: Mapping[str, Transport]) -> HeadStart:
    """Open the connections this command will need, and look up the commit (a run without --commit)."""
    if opts.skip_health_checks and opts.dry_run:
        wanted = [m for m in selected if m.slots is None and m.transport != "local"]   # probed for cores
    else:
        wanted = list(selected)             # probed, or (--skip-health-checks) about to run shards
    head = HeadStart()
    for m in wanted:
        task = asyncio.ensure_future(head.connect(m, transports[m.name]))
        task.add_done_callback(_retrieved)
        head.connecting[m.name] = task
    if not opts.dry_run and opts.commit is None:
        head.commit = asyncio.ensure_future(asyncio.to_thread(git_head, base_dir))
    return head


def _import(names: Sequence[str]) -> None:
    for name in names:
        importlib.import_module(name)


async def load_modules(head: HeadStart | None = None, names: Sequence[str] = RUN_MODULES) -> None:
    """Import ``names`` in a worker thread, so that the event loop (the handshakes, the probes) goes on
    meanwhile. The loop's own code imports nothing of these while it waits: no import cycle can span the
    two threads. ``head.loading_s`` is set to the time it took."""
    switch = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)  # the loop, woken by a packet, gets the interpreter at once
    started = time.monotonic()
    try:
        await asyncio.to_thread(_import, names)
    finally:
        sys.setswitchinterval(switch)
        if head is not None:
            head.loading_s = time.monotonic() - started
