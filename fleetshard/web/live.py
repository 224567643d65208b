"""`fleetshard run --serve`: the live page of a run, served from inside the coordinator's event loop.

:class:`LiveDashboard` is one subscriber of the run's events. ``handle()`` is synchronous and cheap: it feeds
the :class:`~fleetshard.web.model.LiveModel`, encodes each delta once (only when someone watches) and
appends it to every viewer's bounded buffer. It never waits for a browser: each viewer has its own task
that writes to its socket; a viewer whose buffer fills (a slow or stalled browser) has it dropped and is
sent a fresh snapshot when it catches up, and one whose socket does not take a write within
``WRITE_TIMEOUT`` is disconnected.

Routes: ``/`` the page (the run's report once it ended), ``/events`` server-sent events (a snapshot, then
deltas), ``/tail/{shard#attempt}`` server-sent output lines of one attempt, ``/api/snapshot`` the state as
JSON, ``/report`` the report, ``/static/*`` the page's script and style sheet.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..events import Event, RunStarted
from .model import Delta, LiveModel
from .server import REPORT_CSP, Address, Served, asset, html_response, new_token, serve_app

if TYPE_CHECKING:
    from aiohttp import web

    from ..record import RunRecord

BUFFER = 2000              # deltas buffered per viewer before it is resynchronised from a snapshot
WRITE_TIMEOUT = 10.0       # seconds one write to a viewer may take before it is disconnected
HEARTBEAT = 15.0           # seconds between keep-alive comments on an idle stream
QUIET_BEFORE_STOP = 2.0    # after the run: stop once no page has been open or requested for this long


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def sse(kind: str, data: str, ident: int | None = None) -> bytes:
    head = f"id: {ident}\n" if ident is not None else ""
    return f"{head}event: {kind}\ndata: {data}\n\n".encode()


class Viewer:
    """One open event stream: a bounded buffer of encoded messages and a wake-up flag."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pending: collections.deque[bytes] = collections.deque()
        self.wake = asyncio.Event()
        self.resync = False
        self.dropped = 0

    def push(self, message: bytes, *, always: bool = False) -> None:
        """Buffer one message; ``always``: even when resynchronising (it is not part of a snapshot)."""
        if self.resync and not always:
            return                                   # the snapshot it will get has this change too
        if len(self.pending) >= self.limit and not always:
            self.dropped += len(self.pending)
            self.pending.clear()
            self.resync = True
        else:
            self.pending.append(message)
        self.wake.set()


def _hang_up(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()


class LiveDashboard:
    """The live page of one run: subscribe it to the run's events, ``await start()``, ``finish(record)``."""

    def __init__(self, address: Address, *, clock: Callable[[], float] = time.monotonic,
                 token: str | None = None, buffer: int = BUFFER, write_timeout: float = WRITE_TIMEOUT) -> None:
        self.address = address
        self.token = token if token is not None else (None if address.loopback else new_token())
        self.clock = clock
        self.buffer = buffer
        self.write_timeout = write_timeout
        self.model = LiveModel()
        self.viewers: set[Viewer] = set()
        self.tails: dict[str, set[Viewer]] = {}
        self.report: str | None = None
        self.served: Served | None = None
        self.url = ""
        self.closing = False
        self.ever_watched = False
        self.last_request = clock()
        self.log_dir: Path | None = None
        self._stop = asyncio.Event()

    # -------------------------------------------------------------------------------- the subscriber

    def handle(self, event: Event) -> None:
        """Take one event of the run. Never blocks, never raises into the run."""
        try:
            if isinstance(event, RunStarted):
                self.log_dir = Path(event.log_dir)
            self.publish(self.model.apply(event))
        except Exception as exc:  # a view must never break the run
            self.model.notices.append({"text": f"dashboard: {type(exc).__name__}: {exc}", "level": "warning",
                                       "machine": None, "at": self.model.now})

    def probed(self, machine: str, health: Mapping[str, Any], at: float) -> None:
        self.publish(self.model.probed(machine, health, at))

    def publish(self, deltas: list[Delta]) -> None:
        if not deltas or not (self.viewers or self.tails):
            return
        for delta in deltas:
            kind = delta["t"]
            if kind == "line":
                watchers = self.tails.get(delta["k"])
                if watchers:
                    message = sse("line", _dumps(delta["v"]))
                    for viewer in watchers:
                        viewer.push(message)
                continue
            if self.viewers:
                message = sse("delta", _dumps(delta), delta["seq"])
                for viewer in self.viewers:
                    viewer.push(message)
            if kind == "attempt" and delta["v"].get("end") is not None:
                for viewer in self.tails.get(delta["k"], ()):
                    viewer.push(sse("end", _dumps(delta["v"].get("outcome"))))

    def finish(self, record: RunRecord, *, speeds: Mapping[str, float] | None = None) -> None:
        """The run is over: from now on the page is its report (same HTML as ``fleetshard report --html``)."""
        from ..report import render_html

        base = Path(record.run_dir) if record.run_dir else Path.cwd()
        self.report = render_html(record, base, speeds=speeds)
        message = sse("report", _dumps({"run_id": record.run_id, "exit_code": record.exit_code}))
        for viewer in self.viewers:
            viewer.push(message, always=True)

    # -------------------------------------------------------------------------------- life cycle

    async def start(self) -> str:
        """Bind and serve (a UsageError when the address cannot be used); the URL to print."""
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/", self._page)
        app.router.add_get("/report", self._report)
        app.router.add_get("/events", self._events)
        app.router.add_get("/tail/{key}", self._tail)
        app.router.add_get("/api/snapshot", self._snapshot)
        app.router.add_get("/static/{name}", self._static)
        self.served = await serve_app(app, self.address, self.token)
        self.url = self.served.url
        return self.url

    async def linger(self, grace: float) -> None:
        """After the run: serve the report until every open page has fetched it (then a short quiet), at
        most ``grace`` seconds, or until :meth:`stop_soon` (Ctrl-C). No page open: return at once."""
        deadline = self.clock() + max(0.0, grace)
        while not self._stop.is_set() and self.clock() < deadline:
            if not self.viewers and self.clock() - self.last_request >= QUIET_BEFORE_STOP:
                return
            if not self.ever_watched:
                return
            try:
                await asyncio.wait_for(self._stop.wait(), min(0.2, max(0.0, deadline - self.clock())))
            except TimeoutError:
                pass

    def stop_soon(self) -> None:
        self._stop.set()

    async def close(self) -> None:
        self.closing = True
        for viewer in [*self.viewers, *(v for s in self.tails.values() for v in s)]:
            viewer.wake.set()
        if self.served is not None:
            await self.served.stop()
            self.served = None

    # -------------------------------------------------------------------------------- routes

    def _seen(self) -> None:
        self.last_request = self.clock()

    async def _page(self, request: web.Request) -> web.StreamResponse:
        self._seen()
        if self.report is not None:
            return html_response(self.report, csp=REPORT_CSP)
        return html_response(LIVE_PAGE)

    async def _report(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        self._seen()
        if self.report is None:
            return web.Response(status=404, text="the run has not ended yet: its report comes when it does\n")
        return html_response(self.report, csp=REPORT_CSP)

    async def _snapshot(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        self._seen()
        return web.Response(text=_dumps(self.model.snapshot()), content_type="application/json")

    async def _static(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        name = request.match_info["name"]
        types = {"live.js": "text/javascript", "dashboard.css": "text/css"}
        if name not in types:
            raise web.HTTPNotFound()
        return web.Response(text=asset(name), content_type=types[name], headers={"Cache-Control": "no-cache"})

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        return response

    async def _write(self, response: web.StreamResponse, data: bytes) -> None:
        await asyncio.wait_for(response.write(data), self.write_timeout)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        self._seen()
        self.ever_watched = True
        response = await self._stream(request)
        viewer = Viewer(self.buffer)
        viewer.resync = True                          # the first thing it gets is a snapshot
        self.viewers.add(viewer)
        try:
            if self.report is not None:
                await self._write(response, sse("report", _dumps({})))
                return response
            await self._pump(request, response, viewer, snapshot=True)
        except TimeoutError:
            _hang_up(request)                         # a page that takes no writes: let it go
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self.viewers.discard(viewer)
            self._seen()
        return response

    async def _pump(self, request: web.Request, response: web.StreamResponse, viewer: Viewer, *,
                    snapshot: bool) -> None:
        quiet_since = self.clock()
        while not self.closing:
            if not viewer.pending and not viewer.resync:
                viewer.wake.clear()
                try:
                    await asyncio.wait_for(viewer.wake.wait(), 1.0)
                except TimeoutError:
                    if request.transport is None or request.transport.is_closing():
                        return                       # the page went away (closed, reloaded)
                    if self.clock() - quiet_since >= HEARTBEAT:
                        quiet_since = self.clock()
                        await self._write(response, b": keep-alive\n\n")
                    continue
            if self.closing:
                return
            if viewer.resync and snapshot:
                viewer.resync = False
                viewer.pending.clear()
                snap = self.model.snapshot()
                viewer.pending.appendleft(sse("snapshot", _dumps(snap), snap["seq"]))
            chunk = b"".join(viewer.pending)
            viewer.pending.clear()
            if chunk:
                await self._write(response, chunk)
                quiet_since = self.clock()
            if viewer.resync and not snapshot:       # a tail viewer that fell behind: start its tail again
                viewer.resync = False
                return

    async def _tail(self, request: web.Request) -> web.StreamResponse:
        self._seen()
        key = request.match_info["key"]
        lines = self.model.tail(key)
        response = await self._stream(request)
        viewer = Viewer(self.buffer)
        try:
            await self._write(response, sse("lines", _dumps(lines or [])))
            attempt = self.model.attempts.get(key)
            if attempt is None or attempt["end"] is not None:
                await self._write(response, sse("end", _dumps(attempt["outcome"] if attempt else None)))
                return response
            self.tails.setdefault(key, set()).add(viewer)
            await self._pump(request, response, viewer, snapshot=False)
        except TimeoutError:
            _hang_up(request)                         # a page that takes no writes: let it go
        except (ConnectionError, RuntimeError):
            pass
        finally:
            watchers = self.tails.get(key)
            if watchers is not None:
                watchers.discard(viewer)
                if not watchers:
                    del self.tails[key]
        return response


LIVE_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<link rel="stylesheet" href="static/dashboard.css">
<title>fleetshard: live run</title></head>
<body>
<header id="head" class="running"><h1 id="title">fleetshard · connecting…</h1><p id="subtitle"></p></header>
<main>
<section><div id="bar"><div id="bar-done"></div></div>
<p class="stats" id="stats"></p><p class="stats" id="times"></p></section>
<section><h2>Timeline</h2><div id="timeline" class="timeline"></div>
<p class="legend"><span><i class="passed"></i>passed</span><span><i class="failed"></i>tests failed</span>
<span><i class="infra"></i>infrastructure failure / timed out</span><span><i class="cancelled"></i>cancelled</span>
<span><i class="running"></i>running (click for its output)</span></p></section>
<section id="tail-box" hidden><h2 id="tail-title">Output</h2><pre id="tail"></pre></section>
<section><h2>Failures</h2><div id="failures"><p class="muted">none so far</p></div></section>
<section><h2>Machines</h2><table id="machines"><thead><tr><th>machine</th><th>status</th><th class="num">slots</th>
<th class="num">speed</th><th class="num">running</th><th class="num">passed</th><th class="num">failed</th>
<th class="num">load</th><th class="num">memory used</th><th class="num">disk free</th><th class="num">latency</th>
</tr></thead><tbody></tbody></table></section>
<section><h2>Messages</h2><ul id="notices" class="notices"></ul></section>
</main>
<script src="static/live.js"></script>
</body></html>
"""


DEFAULT_GRACE = 30.0


async def run_served(address_text: str, body: Callable[[LiveDashboard], Awaitable[int]], *,
                     grace: float = DEFAULT_GRACE, clock: Callable[[], float] = time.monotonic) -> int:
    """Serve the live page while ``body(dashboard)`` runs the run (it subscribes the dashboard to the
    run's events and calls ``finish(record)``), then the report for at most ``grace`` seconds while a page is
    open. The address is bound first, so a busy port fails the command (exit 2) before anything runs.
    The URL goes to stderr: what the run prints on stdout stays as it is without ``--serve``."""
    import signal
    import sys

    from . import require_aiohttp
    from .server import parse_address

    require_aiohttp()
    dashboard = LiveDashboard(parse_address(address_text), clock=clock)
    url = await dashboard.start()
    print(f"fleetshard: live dashboard at {url}", file=sys.stderr, flush=True)
    try:
        code = await body(dashboard)
        if dashboard.report is not None and dashboard.ever_watched and grace > 0:
            linger = min(grace, 2.0) if code == 130 else grace
            loop = asyncio.get_running_loop()
            signals = (signal.SIGINT, signal.SIGTERM)
            for sig in signals:
                loop.add_signal_handler(sig, dashboard.stop_soon)
            try:
                if dashboard.viewers:
                    print(f"fleetshard: the report stays at {url} until the open pages have it "
                          f"(at most {linger:g} s; Ctrl-C to stop)", file=sys.stderr, flush=True)
                await dashboard.linger(linger)
            finally:
                for sig in signals:
                    loop.remove_signal_handler(sig)
        return code
    finally:
        await dashboard.close()
