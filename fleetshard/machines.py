"""A machine handle: one machine of a run, with its transport, effective workdir, env, the setup-once
future, the liveness check and the re-probe. Shards, workspace steps and probes reach a machine only
through its handle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .context import RunContext
from .errors import ConnectError
from .events import MachineStatus, ProbeResult
from .inventory import Machine
from .model import Shard
from .probes import HealthReport, probe
from .record import MachineRecord
from .services import RunningService, ServiceError, start_service, stop_service, wait_ready
from .transport import Transport


def effective_workdir(machine: Machine, base_dir: Path) -> str:
    """Where shards run: the machine's workdir; for `local` machines a relative one (or none) is taken
    from the inventory's directory, for SSH machines none means the login directory."""
    wd = machine.workdir
    if machine.transport == "local" and (wd is None or not (wd.startswith(("/", "~")))):
        return str((base_dir / (wd or "")).resolve())
    return wd or "~"


Prepare = Callable[["MachineHandle"], Awaitable["str | None"]]


@dataclass(eq=False)
class MachineHandle:
    machine: Machine
    transport: Transport
    ctx: RunContext
    slots: int
    speed: float
    health: HealthReport | None = None
    status: str = "healthy"
    used: bool = False                # preparation was started: teardown and the final sweep apply
    ready_future: asyncio.Future[str | None] | None = field(default=None, repr=False)
    lost_check: asyncio.Future[bool] | None = field(default=None, repr=False)
    probing: bool = False
    workdir: str = field(init=False, default="~")
    services: list[RunningService] = field(default_factory=list, repr=False)   # started after setup
    connecting: asyncio.Future[float] | None = field(default=None, repr=False)  # opened while planning
    workers: Any = field(default=None, repr=False)   # its warm pytest workers (warm.WarmPool), once used
    warming: asyncio.Future[None] | None = field(default=None, repr=False)   # workers started while planning

    def __post_init__(self) -> None:
        self.workdir = effective_workdir(self.machine, self.ctx.inv.base_dir)

    @property
    def name(self) -> str:
        return self.machine.name

    def record(self) -> MachineRecord:
        """The machine as the run record keeps it."""
        health = self.health
        return MachineRecord(name=self.name, slots=self.slots, speed=self.speed, status=self.status,
                             reason="; ".join(health.reasons) if health else "",
                             health=health.as_dict() if health else {})

    @property
    def prepared(self) -> bool:
        return self.ready_future is not None

    def env(self, shard: Shard | None = None, attempt: int = 0, junit: str | None = None) -> dict[str, str]:
        """The inventory's env plus the FLEETSHARD_* variables of the run (and of the shard attempt)."""
        ctx = self.ctx
        env = self.machine.env_dict()
        env.update(FLEETSHARD_RUN_ID=ctx.run_id, FLEETSHARD_MACHINE=self.machine.name,
                   FLEETSHARD_COMMIT=ctx.commit or "")
        if shard is not None:
            env.update(FLEETSHARD_SHARD=str(shard.index), FLEETSHARD_TOTAL=str(shard.total),
                       FLEETSHARD_ATTEMPT=str(attempt), FLEETSHARD_TOKEN=ctx.token(shard.id, attempt))
            if junit:
                env["FLEETSHARD_JUNIT"] = junit
        return env

    def set_status(self, status: str, reason: str) -> None:
        """Report what was observed (lost, drained, unhealthy, healthy); the scheduler decides, and the
        coordinator sets ``status`` from what it settled."""
        self.ctx.emit(MachineStatus(machine=self.name, status=status, reason=reason, at=self.ctx.now()))

    async def ready(self, prepare: Prepare) -> str | None:
        """Connect, create the workdir, sync and run setup once per machine; why not, or None."""
        if self.ready_future is None:
            self.ready_future = asyncio.ensure_future(self._prepare(prepare))
        return await asyncio.shield(self.ready_future)

    async def _prepare(self, prepare: Prepare) -> str | None:
        self.used = True
        try:
            if self.connecting is not None:
                await self.connecting        # the connection opened while the run was planned
            await self.transport.connect()
            await self.sweep_dead_runs()
            problem = await prepare(self)
            if problem is None and self.ctx.suite.config.services:
                problem = await self.start_services()
        except ConnectError as exc:
            problem = str(exc).removeprefix(f"{self.name}: ")
        except Exception as exc:  # whatever it is, the machine cannot take shards
            problem = f"preparation failed: {type(exc).__name__}: {exc}"
        if problem is not None and self.status not in ("lost", "drained"):
            # Preparation is done once per machine: every shard sent there would fail the same way, so the
            # whole story is told once, here; the shards that waited for it get the short form.
            self.set_status("drained", problem)
        return problem

    @staticmethod
    def short_problem(problem: str) -> str:
        """The first clause of a preparation problem (``setup failed on box (exit code 128)``)."""
        return problem.split(": ", 1)[0]

    async def start_services(self) -> str | None:
        """Start ``suite.services`` in order, each ready before the next; why not, or None."""
        env = self.env()
        for config in self.ctx.suite.config.services:
            try:
                running = await start_service(self.transport, config, machine=self.name, cwd=self.workdir,
                                              env=env)
            except ConnectError as exc:
                return f"{self.name}: service {config.command!r} not started: {exc}"
            self.services.append(running)
            try:
                await wait_ready(self.transport, running, cwd=self.workdir, env=env)
            except ServiceError as exc:
                return f"{self.name}: {exc}"
            self.ctx.notice(f"service ready: {config.command}", machine=self.name)
        return None

    async def stop_services(self) -> None:
        """TERM each service's group (last started first), KILL it after the grace period."""
        grace = 0.0 if self.ctx.hurry else self.ctx.kill_grace
        while self.services:
            await stop_service(self.services.pop(), grace)

    async def sweep_dead_runs(self) -> None:
        """Kill what runs of this inventory whose coordinator is gone (killed, crashed) left here."""
        from .journal import dead_runs_on, mark_swept

        dead = dead_runs_on(self.ctx.inv.base_dir, self.name)
        if not dead:
            return
        markers = [f"FLEETSHARD_RUN_ID={run_id}" for _, run_id in dead]
        try:
            await asyncio.wait_for(self.transport.kill_groups([], "KILL", markers=markers),
                                   self.machine.connect_timeout + 5)
        except (ConnectError, OSError, TimeoutError):
            return
        for path, _ in dead:
            mark_swept(path, self.name)
        self.ctx.notice(f"{self.name}: swept what interrupted run{'s' if len(dead) > 1 else ''} "
                        f"{', '.join(r for _, r in dead)} left running", machine=self.name)

    async def check_lost(self, why: str) -> None:
        """After a dropped channel: is the machine still there? If not, it takes no more work.
        One check per machine at a time: every attempt that lost its channel waits for the same answer."""
        if self.lost_check is None or self.lost_check.done():
            self.lost_check = asyncio.ensure_future(self.alive())
        alive = await asyncio.shield(self.lost_check)
        if not alive and self.status != "lost":
            self.set_status("lost", why)

    async def alive(self) -> bool:
        limit = self.machine.connect_timeout + 2
        try:
            res, _ = await asyncio.wait_for(self.transport.run("true", timeout=limit), limit)
        except (ConnectError, OSError, TimeoutError):
            return False
        return res.exit_status == 0

    async def rejoin(self) -> None:
        """A machine left out at the start, or lost: probe it; healthy, it joins the run (MachineJoined)."""
        if self.probing:
            return
        self.probing = True
        try:
            report = await probe(self.machine, self.transport, self.ctx.inv.health)
        finally:
            self.probing = False
        if not report.healthy or self.status == "drained":
            return
        from .model import MachineSlots
        from .scheduler import MachineJoined

        self.health = report
        self.slots = self.machine.slots or report.cores or 1
        self.lost_check = None
        self.ctx.emit(ProbeResult.of(report, self.ctx.now()))
        self.ctx.notice(f"back: healthy again, rejoins the run with {self.slots} slot"
                        f"{'s' if self.slots != 1 else ''}", machine=self.name)
        self.ctx.emit(MachineJoined(MachineSlots(name=self.name, slots=self.slots, speed=self.speed),
                                    at=self.ctx.now()))

    async def reprobe(self) -> None:
        """Probe again; a change between healthy and unhealthy becomes a MachineStatus."""
        if self.probing:
            return                            # the previous probe is still out: never pile them up
        self.probing = True
        try:
            report = await probe(self.machine, self.transport, self.ctx.inv.health)
        finally:
            self.probing = False
        self.health = report
        self.ctx.emit(ProbeResult.of(report, self.ctx.now()))
        status = "healthy" if report.healthy else "unhealthy"
        if status != self.status and self.status not in ("lost", "drained"):
            self.set_status(status, "; ".join(report.reasons))
