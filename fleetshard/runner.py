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
from .inventory import Inventory, select_machines
from .machines import effective_workdir
from .model import EXIT_OK
from .recorder import redact_argv
from .session import combine_speeds, git_head, open_history, prepare, print_plan
from .suite import resolve_suite
from .transport import transport_for

__all__ = ["RunOptions", "backoff_from_tenacity", "combine_speeds", "effective_workdir", "redact_argv",
           "run_command"]


async def run_main(inv: Inventory, opts: RunOptions) -> int:
    from .progress import make_renderer

    suite = resolve_suite(inv, opts.command)
    selected = select_machines(inv, opts.selector)
    ctx = RunContext(inv=inv, opts=opts, suite=suite)
    renderer = make_renderer(console=opts.console, live=opts.live, stream=opts.stream, quiet=opts.quiet,
                             verbose=opts.verbose, clock=ctx.clock)
    coordinator = Coordinator(ctx)
    coordinator.subscribe(renderer, output=opts.stream)   # notices from probing and planning are shown too
    coordinator.start()
    transports = {m.name: transport_for(m, accept_new_host_keys=opts.accept_new_host_keys) for m in selected}
    remove_signals: Callable[[], None] = (lambda: None) if opts.dry_run else coordinator.install_signals()
    history: Any = None
    try:
        history = open_history(ctx)
        prepared = await prepare(ctx, selected, transports, history)
        if opts.dry_run:
            await coordinator.flush()
            print_plan(opts.console, prepared)
            return EXIT_OK
        ctx.timeout = opts.timeout if opts.timeout is not None else suite.config.timeout
        ctx.commit = opts.commit or git_head(inv.base_dir)
        renderer.start()
        return await coordinator.run(prepared, finish=renderer.finish)
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
    return asyncio.run(run_main(inv, opts))
