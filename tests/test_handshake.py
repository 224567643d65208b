"""The bound on SSH handshakes in flight at once (fleetshard/transport/handshake.py)."""

from __future__ import annotations

import asyncio

from fleetshard.transport import handshake
from fleetshard.transport.handshake import handshake_slot


def test_at_most_the_bound_at_once_and_a_holder_never_waits_for_itself() -> None:
    inside = peak = 0

    async def one() -> None:
        nonlocal inside, peak
        async with handshake_slot():
            inside += 1
            peak = max(peak, inside)
            async with handshake_slot():           # nested in the same task: no second slot
                await asyncio.sleep(0.001)
            inside -= 1

    async def go() -> None:
        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(handshake.HANDSHAKES * 4))), 10)

    asyncio.run(go())
    assert peak == handshake.HANDSHAKES
