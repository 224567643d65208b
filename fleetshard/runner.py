"""`fleetshard run` and `fleetshard plan`: prepare the run (session), then hand it to the coordinator.

    session.prepare (probes, speeds, shards, plan) -> coordinator loop <-> attempts on machine handles
                                                            | events
                                                            v
                                          renderer, recorder (run record, results, history)

The connections open first (:mod:`fleetshard.headstart`), while the modules of the run are imported.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import headstart
from .context import RunContext, RunOptions
from .errors import FleetshardError
from .inventory import Inventory, Machine, select_machines
from .transport import Transport, transport_for

if TYPE_CHECKING:
    from .coordinator import Coordinator, backoff_from_tenacity
    from .machines import effective_workdir
    from .record import redact_argv
    from .session import combine_speeds

__all__ = ["RunOptions", "backoff_from_tenacity", "combine_speeds", "effective_workdir", "redact_argv",
           "run_command"]


def __getattr__(name: str) -> Any:
    """The helpers this module has always offered, from the modules that define them (loaded on use)."""
    homes = {"backoff_from_tenacity": "coordinator", "combine_speeds": "session", "effective_workdir": "machines",
             "redact_argv": "record"}
    if name in homes:
        import importlib

        return getattr(importlib.import_module(f"fleetshard.{homes[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


async def run_main(inv: Inventory, opts: RunOptions, dashboard: Any = None, *,
                   transports_for: Callable[..., Transport] = transport_for,
                   observe: Callable[[Coordinator], None] | None = None) -> int:
    """Prepare and run (or, with ``opts.dry_run``, plan). ``dashboard`` (``--serve``): a subscriber that is
    also handed the run record. ``transports_for(machine, accept_new_host_keys=...)`` makes each machine's
    transport (tests pass a fake fleet's); ``observe(coordinator)`` is called before anything happens (to
    subscribe more views, or to interrupt)."""
    try:
        selected = select_machines(inv, opts.selector)
    except FleetshardError:
        from .suite import resolve_suite

        resolve_suite(inv, opts.command)    # a suite error is reported first, as it always was
        raise
    transports = {m.name: transports_for(m, accept_new_host_keys=opts.accept_new_host_keys) for m in selected}
    head = headstart.begin(inv.base_dir, opts, selected, transports)
    try:
        await headstart.load_modules(head)
        return await _run(inv, opts, dashboard, selected, transports, head, observe)
    finally:
        head.cancel()
        await asyncio.gather(*(t.close() for t in transports.values()), return_exceptions=True)


async def _run(inv: Inventory, opts: RunOptions, dashboard: Any, selected: Sequence[Machine],
               transports: Mapping[str, Transport], head: headstart.HeadStart,
               observe: Callable[[Coordinator], None] | None) -> int:
    from .session import Prepared, open_history, prepare
    from .suite import resolve_suite

    suite = resolve_suite(inv, opts.command)
    ctx = RunContext(inv=inv, opts=opts, suite=suite)
    history: Any = None
    preparing: asyncio.Future[Prepared] | None = None
    try:
        history = open_history(ctx)
        preparing = asyncio.ensure_future(prepare(ctx, selected, transports, history, head.connecting))
        return await _coordinate(ctx, dashboard, head, observe, preparing)
    finally:
        if preparing is not None and not preparing.done():
            preparing.cancel()
            await asyncio.gather(preparing, return_exceptions=True)
        if history is not None:
            history.close()


async def _coordinate(ctx: RunContext, dashboard: Any, head: headstart.HeadStart,
                      observe: Callable[[Coordinator], None] | None, preparing: asyncio.Future[Any]) -> int:
    from .coordinator import Coordinator
    from .events import ProbeResult
    from .lazyview import DeferredRenderer
    from .model import EXIT_OK
    from .record import RunRecord
    from .session import plan_dict, print_plan

    opts = ctx.opts

    def make() -> Any:
        from .progress import make_renderer

        return make_renderer(console=opts.console, live=opts.live, stream=opts.stream, quiet=opts.quiet,
                             verbose=opts.verbose, clock=ctx.clock)

    # A run's renderer is loaded once its first shards run (it shows nothing they wait for); a plan's now.
    renderer: Any = make() if opts.dry_run else DeferredRenderer(make)
    coordinator = Coordinator(ctx)
    coordinator.subscribe(renderer, output=opts.stream)   # notices from probing and planning are shown too
    if dashboard is not None:
        coordinator.subscribe(dashboard, output=True)     # its pages show any attempt's output on demand
    if observe is not None:
        observe(coordinator)
    coordinator.start()
    remove_signals: Callable[[], None] = (lambda: None) if opts.dry_run else coordinator.install_signals()
    try:
        coordinator.preparing = preparing
        try:
            prepared = await preparing
        except asyncio.CancelledError:
            if not coordinator.interrupts:
                raise
            ctx.notice("interrupted while the machines were probed: nothing was run", "warning")
            await coordinator.flush()
            return 130
        finally:
            coordinator.preparing = None
        for handle in prepared.machines.values():
            if handle.health is not None:
                ctx.emit(ProbeResult.of(handle.health, ctx.now()))
        if opts.dry_run:
            await coordinator.flush()
            if opts.as_json:
                import json
                import sys

                sys.stdout.write(json.dumps(plan_dict(prepared), indent=2) + "\n")
            else:
                print_plan(opts.console, prepared)
            return EXIT_OK
        ctx.timeout = opts.timeout if opts.timeout is not None else ctx.suite.config.timeout
        ctx.commit = opts.commit or (await head.commit if head.commit is not None else None)
        renderer.start()

        def finish(record: RunRecord) -> None:
            renderer.finish(record)
            if dashboard is not None:
                dashboard.finish(record)            # its page becomes the run's report

        return await coordinator.run(prepared, finish=finish)
    finally:
        remove_signals()
        await coordinator.stop()
        coordinator.close()
        renderer.stop()


def run_command(inv: Inventory, opts: RunOptions) -> int:
    """`fleetshard run` / `fleetshard plan`: returns the exit code."""
    if opts.serve is not None and not opts.dry_run:
        from .web.live import run_served

        return asyncio.run(run_served(opts.serve, lambda dashboard: run_main(inv, opts, dashboard),
                                      grace=opts.serve_grace))
    return asyncio.run(run_main(inv, opts))
