"""A run's head start: early connections (and their second chance on a starved machine), the modules
loaded in a thread, and the renderer that loads once shards run and prints what it would have printed."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest
from rich.console import Console

from fleetshard import headstart
from fleetshard.events import Notice, RunFinished, ShardStarted
from fleetshard.lazyview import DeferredRenderer
from fleetshard.model import Shard
from fleetshard.progress import make_renderer


@dataclass
class _Machine:
    name: str = "m"
    connect_timeout: float = 0.2


class _Transport:
    """Connects on the ``fast_from``-th call; earlier calls hang (a handshake starved of CPU)."""

    def __init__(self, fast_from: int) -> None:
        self.calls = 0
        self.fast_from = fast_from

    async def connect(self) -> float:
        self.calls += 1
        if self.calls < self.fast_from:
            await asyncio.sleep(3600)
        return 0.01


def _connect(loading_s: float | None, fast_from: int, *, loaded_after: float = 0.0) -> tuple[Any, int]:
    async def main() -> tuple[Any, int]:
        head = headstart.HeadStart(loading_s=loading_s)
        transport = _Transport(fast_from)
        if loading_s is None:
            asyncio.get_running_loop().call_later(loaded_after, setattr, head, "loading_s", loaded_after)
        try:
            got: Any = await head.connect(_Machine(), transport)  # type: ignore[arg-type]
        except TimeoutError as exc:
            got = exc
        return got, transport.calls

    return asyncio.run(main())


def test_a_connect_that_timed_out_while_this_process_loaded_gets_one_more_try() -> None:
    got, calls = _connect(None, 2, loaded_after=1.5)       # loading outlasted the bound
    assert got == 0.01 and calls == 2
    got, calls = _connect(1.0, 2)                          # loading took most of the bound
    assert got == 0.01 and calls == 2


def test_a_connect_that_timed_out_on_its_own_is_not_tried_again() -> None:
    got, calls = _connect(0.01, 2)
    assert isinstance(got, TimeoutError) and calls == 1
    got, calls = _connect(1.0, 9)                          # the second try has its own bound
    assert isinstance(got, TimeoutError) and calls == 2


def test_the_run_modules_import_in_a_fresh_interpreter() -> None:
    code = ("import asyncio, sys\nfrom fleetshard import headstart\nasyncio.run(headstart.load_modules())\n"
            "print('rich' in sys.modules, all(m in sys.modules for m in headstart.RUN_MODULES))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["False", "True"]        # the renderers (rich) are not among them


def _events() -> list[Any]:
    shard = Shard(id="s001", index=1, total=1)
    return [Notice(text="synced 3 changed file(s)", at=10.0, machine="h1"),
            ShardStarted(machine="h1", shard=shard, attempt=1, command="pytest", log_path="l.log", at=10.5),
            Notice(text="late notice", at=11.0, level="warning"),
            RunFinished(exit_code=0, at=12.0)]


@pytest.mark.parametrize("verbose", [False, True])
def test_the_deferred_renderer_prints_what_the_renderer_prints(verbose: bool) -> None:
    def render(deferred: bool) -> str:
        out = io.StringIO()
        console = Console(file=out, force_terminal=False, width=100)

        def make() -> Any:
            return make_renderer(console=console, live=False, verbose=verbose, clock=lambda: 20.0)

        async def main() -> None:
            renderer: Any = DeferredRenderer(make) if deferred else make()
            events = _events()
            renderer.handle(events[0])
            renderer.start()
            for event in events[1:]:
                renderer.handle(event)
                await asyncio.sleep(0.01)
            renderer.stop()

        asyncio.run(main())
        return out.getvalue()

    assert render(True) == render(False)
    assert "late notice" in render(True)
