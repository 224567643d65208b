"""A bound on SSH handshakes in flight at once, per coordinator.

A handshake costs the coordinator CPU (key exchange, host-key and user-key signatures). Hundreds at once
on a small machine slow every one of them past its connect timeout, and healthy machines are reported
unreachable. Handshakes wait for one of ``HANDSHAKES`` slots, and a connect timeout starts only once its
handshake holds one. A task that holds a slot (a probe) does not take a second one for the connection
its transport opens inside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import weakref
from collections.abc import AsyncIterator

HANDSHAKES = 16

_held: contextvars.ContextVar[bool] = contextvars.ContextVar("fleetshard_handshake_held", default=False)
_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


@contextlib.asynccontextmanager
async def handshake_slot() -> AsyncIterator[None]:
    if _held.get():
        yield
        return
    loop = asyncio.get_running_loop()
    slots = _slots.get(loop)
    if slots is None:
        slots = _slots[loop] = asyncio.Semaphore(HANDSHAKES)
    async with slots:
        token = _held.set(True)
        try:
            yield
        finally:
            _held.reset(token)
