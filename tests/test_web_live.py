"""The live dashboard's server, over real HTTP on loopback (no browser): event streams, resynchronising a
viewer that fell behind, the report at the end, and the security rules (token, Host, read-only, CSP)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from fleetshard.errors import UsageError
from fleetshard.events import (
    MachineInfo,
    Notice,
    OutputLine,
    RunFinished,
    RunStarted,
    ShardFinished,
    ShardStarted,
)
from fleetshard.model import Outcome, Shard, TestFailure
from fleetshard.record import RunRecord
from fleetshard.web.live import LiveDashboard
from fleetshard.web.server import Address, parse_address

SHARD = Shard(id="s001", index=1, total=1, files=("tests/<b>x</b>.py",))


def run_started(at: float = 0.0) -> RunStarted:
    return RunStarted(run_id="r1", machines=(MachineInfo("h1", 2, 1.0),), shards=(SHARD,), strategy="dynamic",
                      expected_makespan=None, lower_bound=None, log_dir="/nonexistent/logs", at=at)


async def read_events(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, Any]]:
    kind, data = "message", ""
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if not line:
            if data:
                yield kind, json.loads(data)
            kind, data = "message", ""
        elif line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data = line[6:]


async def next_event(stream: AsyncIterator[tuple[str, Any]], timeout: float = 5.0) -> tuple[str, Any]:
    return await asyncio.wait_for(stream.__anext__(), timeout)


def with_dashboard(body: Callable[[LiveDashboard, str, aiohttp.ClientSession], Awaitable[None]],
                   **kwargs: Any) -> None:
    async def main() -> None:
        dash = LiveDashboard(Address("127.0.0.1", 0), **kwargs)
        url = await dash.start()
        try:
            # unsafe=True: keep cookies of an IP-address host, as browsers do
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
                await body(dash, url, session)
        finally:
            await dash.close()

    asyncio.run(main())


def test_the_stream_starts_with_a_snapshot_then_deltas_and_ends_with_the_report() -> None:
    async def body(dash: LiveDashboard, url: str, session: aiohttp.ClientSession) -> None:
        dash.handle(run_started())
        async with session.get(url + "events") as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            stream = read_events(response)
            kind, snap = await next_event(stream)
            assert kind == "snapshot" and snap["run"]["run_id"] == "r1" and "h1" in snap["machines"]
            dash.handle(ShardStarted(machine="h1", shard=SHARD, attempt=1, command="c", log_path="l", at=1.0))
            seen = []
            while len(seen) < 3:
                kind, delta = await next_event(stream)
                assert kind == "delta"
                seen.append(delta)
            assert [d["seq"] for d in seen] == list(range(snap["seq"] + 1, snap["seq"] + 4))
            assert seen[0]["t"] == "attempt" and seen[0]["v"]["files"] == ["tests/<b>x</b>.py"]
            dash.handle(RunFinished(exit_code=0, at=2.0))
            dash.finish(RunRecord(run_id="r1", started=time.time(), ended=time.time(), argv=[], inventory="i",
                                  strategy="dynamic", mode="files", command="pytest <script>", exit_code=0))
            while True:
                kind, _ = await next_event(stream)
                if kind == "report":
                    break
        async with session.get(url) as page:
            text = await page.text()
            assert "· run r1</h1>" in text and "pytest &lt;script&gt;" in text
            assert "unsafe-inline" in page.headers["Content-Security-Policy"]
            assert "connect-src" not in page.headers["Content-Security-Policy"]

    with_dashboard(body)


def test_a_viewer_that_falls_behind_is_resynchronised_from_a_snapshot() -> None:
    async def body(dash: LiveDashboard, url: str, session: aiohttp.ClientSession) -> None:
        dash.handle(run_started())
        async with session.get(url + "events") as response:
            stream = read_events(response)
            await next_event(stream)
            # Many events without giving the viewer's task a chance to write: its buffer (5) overflows.
            began = time.perf_counter()
            for i in range(300):
                dash.handle(Notice(text=f"n{i}", at=float(i)))
            assert time.perf_counter() - began < 1.0           # handle() never waits for a browser
            [viewer] = dash.viewers
            assert viewer.resync and viewer.dropped > 0
            kind, snap = await next_event(stream)
            assert kind == "snapshot" and snap["seq"] == dash.model.seq
            assert snap["notices"][-1]["text"] == "n299"
            dash.handle(Notice(text="after", at=400.0))
            kind, delta = await next_event(stream)
            assert kind == "delta" and delta["seq"] == snap["seq"] + 1

    with_dashboard(body, buffer=5)


def test_the_tail_of_a_running_attempt_streams() -> None:
    async def body(dash: LiveDashboard, url: str, session: aiohttp.ClientSession) -> None:
        dash.handle(run_started())
        dash.handle(ShardStarted(machine="h1", shard=SHARD, attempt=1, command="c", log_path="l", at=1.0))
        dash.handle(OutputLine(machine="h1", shard_id="s001", attempt=1, line="first", at=1.1))
        async with session.get(url + "tail/s001%231") as response:
            stream = read_events(response)
            assert await next_event(stream) == ("lines", ["first"])
            dash.handle(OutputLine(machine="h1", shard_id="s001", attempt=1, line="<i>second</i>", at=1.2))
            assert await next_event(stream) == ("line", "<i>second</i>")
        async with session.get(url + "tail/nope%231") as response:
            stream = read_events(response)
            assert await next_event(stream) == ("lines", [])
            assert await next_event(stream) == ("end", None)

    with_dashboard(body)


def test_pages_are_read_only_and_have_a_strict_content_security_policy() -> None:
    async def body(dash: LiveDashboard, url: str, session: aiohttp.ClientSession) -> None:
        async with session.get(url) as page:
            csp = page.headers["Content-Security-Policy"]
            assert "default-src 'none'" in csp and "script-src 'self'" in csp and "http" not in csp
            assert page.headers["X-Content-Type-Options"] == "nosniff"
            text = await page.text()
            assert "http://" not in text and "https://" not in text     # nothing from elsewhere
        for name in ("live.js", "dashboard.css"):
            async with session.get(url + "static/" + name) as asset:
                assert asset.status == 200
                assert "http://" not in await asset.text()
        async with session.get(url + "static/../server.py") as missing:
            assert missing.status == 404
        async with session.post(url + "api/snapshot") as post:
            assert post.status == 405
        async with session.get(url + "report") as report:
            assert report.status == 404                                    # not before the run ends
        # a loopback server answers only to loopback host names (no DNS rebinding)
        async with session.get(url, headers={"Host": "evil.example:80"}) as rebound:
            assert rebound.status == 421

    with_dashboard(body)


def test_a_token_is_required_when_one_is_set() -> None:
    async def body(dash: LiveDashboard, url: str, session: aiohttp.ClientSession) -> None:
        assert url.endswith("/?token=sekrit")
        base = url.split("?")[0]
        for path in ("", "events", "api/snapshot", "static/live.js", "tail/s001%231"):
            async with aiohttp.ClientSession() as anonymous, anonymous.get(base + path) as refused:
                assert refused.status == 403, path
        async with aiohttp.ClientSession() as anonymous, anonymous.get(base + "?token=wrong") as refused:
            assert refused.status == 403
        async with session.get(url) as page:                    # the printed URL works, and sets a cookie
            assert page.status == 200
        async with session.get(base + "api/snapshot") as again:  # ... so later requests need no ?token=
            assert again.status == 200

    with_dashboard(body, token="sekrit")


def test_any_address_but_loopback_gets_a_random_token() -> None:
    assert LiveDashboard(Address("127.0.0.1", 0)).token is None
    assert LiveDashboard(Address("localhost", 0)).token is None
    one, two = LiveDashboard(Address("0.0.0.0", 8000)).token, LiveDashboard(Address("192.0.2.1", 8000)).token
    assert one and two and one != two and len(one) >= 20


@pytest.mark.parametrize(("text", "host", "port"), [
    ("8080", "127.0.0.1", 8080), ("0.0.0.0:80", "0.0.0.0", 80), (":9000", "127.0.0.1", 9000),
    ("[::1]:8080", "::1", 8080), ("localhost:0", "localhost", 0)])
def test_addresses(text: str, host: str, port: int) -> None:
    assert parse_address(text) == Address(host, port)


@pytest.mark.parametrize("text", ["", "http", "80800", "::1:80", "[::1]80", "host:port"])
def test_bad_addresses_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match=r"--serve: "):
        parse_address(text)


def test_a_busy_port_is_a_usage_error() -> None:
    async def main() -> None:
        first = LiveDashboard(Address("127.0.0.1", 0))
        url = await first.start()
        port = int(url.rsplit(":", 1)[1].strip("/"))
        try:
            with pytest.raises(UsageError, match=r"cannot serve the dashboard on 127\.0\.0\.1"):
                await LiveDashboard(Address("127.0.0.1", port)).start()
        finally:
            await first.close()

    asyncio.run(main())


def test_after_the_run_it_lingers_only_while_a_page_is_open() -> None:
    async def main() -> None:
        dash = LiveDashboard(Address("127.0.0.1", 0))
        await dash.start()
        began = time.monotonic()
        await dash.linger(30.0)                     # nobody ever watched: no waiting at all
        assert time.monotonic() - began < 0.5
        dash.ever_watched = True
        dash.stop_soon()                            # Ctrl-C
        await dash.linger(30.0)
        assert time.monotonic() - began < 1.0
        await dash.close()

    asyncio.run(main())


def test_failing_tests_come_with_the_finished_attempt() -> None:
    dash = LiveDashboard(Address("127.0.0.1", 0))
    dash.handle(run_started())
    dash.handle(ShardStarted(machine="h1", shard=SHARD, attempt=1, command="c", log_path="l", at=1.0))
    dash.handle(ShardFinished(machine="h1", shard=SHARD, attempt=1, outcome=Outcome.TESTS_FAILED, exit_status=1,
                              signal=None, reason="exit code 1", started_at=1.0, at=2.0, log_path="l",
                              failures=(TestFailure("tests/x.py::test_<b>", "assert 1 == 2"),)))
    assert dash.model.failures["s001#1"]["tests"] == [
        {"name": "tests/x.py::test_<b>", "classname": "", "message": "assert 1 == 2", "outcome": "failed"}]


def test_a_browser_that_stops_reading_never_slows_the_run_and_is_dropped() -> None:
    """A real socket that sends its request and never reads: its kernel buffers fill, its writer waits,
    its buffer overflows into a resync; handle() stays fast, and the stalled viewer is disconnected."""

    async def main() -> None:
        dash = LiveDashboard(Address("127.0.0.1", 0), buffer=50, write_timeout=0.5)
        url = await dash.start()
        port = int(url.rsplit(":", 1)[1].strip("/"))
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.transport.set_write_buffer_limits(0)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        writer.write(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        await writer.drain()
        for _ in range(100):
            if dash.viewers:
                break
            await asyncio.sleep(0.01)
        assert dash.viewers
        slowest = 0.0
        big = "x" * 4000
        for i in range(3000):
            began = time.perf_counter()
            dash.handle(Notice(text=f"{i} {big}", at=float(i)))
            slowest = max(slowest, time.perf_counter() - began)
            if i % 100 == 0:
                await asyncio.sleep(0.01)               # let the viewer's task try to write
        assert slowest < 0.05                           # never waits for the socket
        for _ in range(300):
            if not dash.viewers:
                break
            await asyncio.sleep(0.01)
        assert not dash.viewers                         # the stalled page was let go
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass                                        # the server hung up on it, as it should
        await dash.close()

    asyncio.run(main())


def test_on_another_address_the_token_is_required() -> None:
    async def main() -> None:
        dash = LiveDashboard(Address("0.0.0.0", 0))
        url = await dash.start()
        try:
            assert dash.token and url.endswith(f"/?token={dash.token}")
            port = url.split("?")[0].rsplit(":", 1)[1].strip("/")
            local = f"http://127.0.0.1:{port}/"
            async with aiohttp.ClientSession() as session:
                async with session.get(local) as refused:
                    assert refused.status == 403
                async with session.get(local + "?token=" + dash.token) as page:
                    assert page.status == 200
        finally:
            await dash.close()

    asyncio.run(main())
