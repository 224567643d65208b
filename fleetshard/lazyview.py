"""The run's terminal view, loaded once the first shards run.

The renderers (:mod:`fleetshard.progress`, on rich) are a tenth of a second of imports on a small, busy
machine, and nothing they show is needed to start the first shard. :class:`DeferredRenderer` stands in
for the renderer from the start: it keeps every call in order, starts importing the real one in a
worker thread when the first shard starts (or half a second after the run's start, so that a long
setup's notices are not held back), and then hands it everything it kept, in the same order. The
renderers draw from the events' own timestamps, so what they print is what they would have printed
at once. Finishing or stopping loads the renderer at once if it is not there yet.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable
from typing import Any

from .events import Event, ShardStarted

RENDERER_MODULE = "fleetshard.progress"
LOAD_AFTER = 0.5        # seconds after start() at the latest before the renderer is loaded


class DeferredRenderer:
    """A Renderer (start, handle, tick, finish, stop) whose real one is built by ``build()`` later."""

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build = build
        self._real: Any = None
        self._kept: list[tuple[str, Any]] = []
        self._loading: asyncio.Future[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None

    @property
    def loaded(self) -> bool:
        return self._real is not None

    def _call(self, name: str, arg: Any = None) -> None:
        if self._real is not None:
            _apply(self._real, name, arg)
        else:
            self._kept.append((name, arg))

    def start(self) -> None:
        self._call("start")
        if self._real is None and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(LOAD_AFTER, self._load_soon)

    def handle(self, event: Event) -> None:
        self._call("handle", event)
        if self._real is None and isinstance(event, ShardStarted):
            self._load_soon()

    def tick(self) -> None:
        self._call("tick")

    def finish(self, record: Any) -> None:
        self.load()
        self._real.finish(record)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.load()
        self._real.stop()

    def _load_soon(self) -> None:
        """Import the renderer's module in a worker thread; build it on the loop once it is there."""
        if self._loading is not None or self._real is not None:
            return
        loop = asyncio.get_running_loop()
        self._loading = loop.run_in_executor(None, importlib.import_module, RENDERER_MODULE)
        self._loading.add_done_callback(lambda _: self.load())

    def load(self) -> None:
        """Build the real renderer now (importing it here if the thread has not) and replay what was kept."""
        if self._real is not None:
            return
        real = self._build()
        kept, self._kept = self._kept, []
        for name, arg in kept:
            _apply(real, name, arg)
        self._real = real


def _apply(renderer: Any, name: str, arg: Any) -> None:
    method = getattr(renderer, name)
    if arg is None:
        method()
    else:
        method(arg)
