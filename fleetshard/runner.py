"""`fleetshard run` and `fleetshard plan`: prepare the run (session), then hand it to the coordinator.

    session.prepare (probes, speeds, shards, plan) -> coordinator loop <-> attempts on machine handles
                                                            | events
                                                            v
                                          renderer, recorder (run record, results, history)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from .context import RunContext, RunOptions
from .coordinator import Coordinator, backoff_from_tenacity
from .events import ProbeResult
from .inventory import Inventory, select_machines
from .machines import effective_workdir
from .model import EXIT_OK
from .record import RunRecord, redact_argv
from .session import combine_speeds, git_head, open_history, plan_dict, prepare, print_plan
from .suite import resolve_suite
from .transport import Transport, transport_for

__all__ = ["RunOptions", "backoff_from_tenacity", "combine_speeds", "effective_workdir", "redact_argv",
           "run_command"]


async def run_main(inv: Inventory, opts: RunOptions, dashboard: Any = None, *,
                   transports_for: Callable[..., Transport] = transport_for,
                   observe: Callable[[Coordinator], None] | None = None) -> int:
    """Prepare and run (or, with ``opts.dry_run``, plan). ``dashboard`` (``--serve``): a subscriber that is
    also handed the run record. ``transports_for(machine, accept_new_host_keys=...)`` makes each machine's
    transport (tests pass a fake fleet's); ``observe(coordinator)`` is called before anything happens (to
    subscribe more views, or to interrupt)."""
    from .progress import make_renderer

    suite = resolve_suite(inv, opts.command)
    selected = select_machines(inv, opts.selector)
    ctx = RunContext(inv=inv, opts=opts, suite=suite)
    renderer = make_renderer(console=opts.console, live=opts.live, stream=opts.stream, quiet=opts.quiet,
                             verbose=opts.verbose, clock=ctx.clock)
    coordinator = Coordinator(ctx)
    coordinator.subscribe(renderer, output=opts.stream)   # notices from probing and planning are shown too
    if dashboard is not None:
        coordinator.subscribe(dashboard, output=True)     # its pages show any attempt's output on demand
    if observe is not None:
        observe(coordinator)
    coordinator.start()
    transports = {m.name: transports_for(m, accept_new_host_keys=opts.accept_new_host_keys) for m in selected}
    remove_signals: Callable[[], None] = (lambda: None) if opts.dry_run else coordinator.install_signals()
    history: Any = None
    try:
        history = open_history(ctx)
        coordinator.preparing = asyncio.ensure_future(prepare(ctx, selected, transports, history))
        try:
            prepared = await coordinator.preparing
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
        ctx.timeout = opts.timeout if opts.timeout is not None else suite.config.timeout
        ctx.commit = opts.commit or git_head(inv.base_dir)
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
        if history is not None:
            history.close()
        await asyncio.gather(*(t.close() for t in transports.values()), return_exceptions=True)


def run_command(inv: Inventory, opts: RunOptions) -> int:
    """`fleetshard run` / `fleetshard plan`: returns the exit code."""
    if opts.serve is not None and not opts.dry_run:
        from .web.live import run_served

        return asyncio.run(run_served(opts.serve, lambda dashboard: run_main(inv, opts, dashboard),
                                      grace=opts.serve_grace))
    return asyncio.run(run_main(inv, opts))
