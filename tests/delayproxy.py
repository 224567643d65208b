"""A slow, lossy link for the fault tests: a TCP proxy on a loopback address that delays every chunk
it forwards and now and then stalls one direction (over loopback TCP never loses bytes, so loss shows
as stalls: what a retransmission timeout looks like to the endpoints). This kernel has no netem."""

from __future__ import annotations

import asyncio
import random
import threading
from dataclasses import dataclass, field


@dataclass
class LinkStats:
    connections: int = 0
    chunks: int = 0
    stalls: int = 0
    bytes: int = 0


@dataclass
class DelayProxy:
    """Forwards ``listen`` (address, port 0 = any free one) to ``target``: each chunk (up to ``chunk``
    bytes) waits ``delay`` seconds (uniform in the range); with probability ``stall_p`` the direction
    first stalls for ``stall`` seconds. Runs its own event loop in a thread; use as a context manager."""

    target: tuple[str, int]
    listen: str = "127.0.0.240"
    delay: tuple[float, float] = (0.1, 0.3)
    stall_p: float = 0.0
    stall: float = 1.0
    chunk: int = 65536
    seed: int = 13
    stats: LinkStats = field(default_factory=LinkStats)
    port: int = 0

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="delay-proxy", daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def __enter__(self) -> DelayProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> asyncio.AbstractServer:
        return await asyncio.start_server(self._serve, self.listen, self.port)

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.stats.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        except asyncio.CancelledError:
            pass                                   # the proxy is closing
        finally:
            for w in (writer, up_writer):
                w.close()
            self._tasks.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One direction, in order: read a chunk, hold it back, forward it; EOF is forwarded too."""
        try:
            while data := await reader.read(self.chunk):
                if self._random.random() < self.stall_p:
                    self.stats.stalls += 1
                    await asyncio.sleep(self.stall)
                await asyncio.sleep(self._random.uniform(*self.delay))
                self.stats.chunks += 1
                self.stats.bytes += len(data)
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            writer.close()
