"""`fleetshard serve`: the history pages over real HTTP on loopback, from a history database of recorded
runs; every string from tests and machines escaped; read-only; and the command itself."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from fleetshard.history import History
from fleetshard.record import AttemptRecord, MachineRecord, RunRecord, ShardRecord, TestRecord
from fleetshard.web.historyapp import HistoryDashboard
from fleetshard.web.server import Address

EVIL = '<img src=x onerror="alert(1)">'


def a_record(n: int, *, flaky: bool = False, code: int = 0) -> RunRecord:
    t0 = 1_700_000_000.0 + n * 1000
    machines = [MachineRecord("h1", 2, 1.0, "healthy"), MachineRecord(f"m{EVIL}", 1, 0.5, "healthy")]
    shards = [ShardRecord("s001", 1, 2, ["tests/test_a.py"], None, "passed", flaky=flaky),
              ShardRecord("s002", 2, 2, ["tests/test_b.py"], None, "failed" if code == 1 else "passed")]
    attempts = [AttemptRecord("s001", 1, "h1", "tests-failed" if flaky else "passed", t0, t0 + 4 + n),
                AttemptRecord("s002", 1, f"m{EVIL}", "tests-failed" if code == 1 else "passed", t0, t0 + 6)]
    tests = [TestRecord(f"test_{EVIL}", "tests.test_a", "tests/test_a.py", 3.0 + n, "passed", "s001", 1, "h1",
                        flaky=flaky),
             TestRecord("test_slow", "tests.test_b", "tests/test_b.py", 9.5, "failed" if code == 1 else "passed",
                        "s002", 1, f"m{EVIL}")]
    if flaky:
        attempts.append(AttemptRecord("s001", 2, f"m{EVIL}", "passed", t0 + 5, t0 + 8))
    return RunRecord(run_id=f"2024-{n:02d}", started=t0, ended=t0 + 10 + n, argv=["run", "--notify", "***"],
                     inventory="machines.yaml", strategy="dynamic", mode="files", command=f"pytest {EVIL}",
                     exit_code=code, machines=machines, shards=shards, attempts=attempts, tests=tests)


@pytest.fixture
def history_db(tmp_path: Path) -> Path:
    path = tmp_path / "history.db"
    with History(path) as history:
        for n in range(1, 6):
            history.record_run(a_record(n, flaky=n in (2, 4), code=1 if n == 5 else 0))
    return path


def served(path: Path, body: Callable[[str, aiohttp.ClientSession], Awaitable[None]]) -> None:
    async def main() -> None:
        dash = HistoryDashboard(path, Address("127.0.0.1", 0))
        url = await dash.start()
        try:
            async with aiohttp.ClientSession() as session:
                await body(url, session)
        finally:
            await dash.close()

    asyncio.run(main())


async def get(session: aiohttp.ClientSession, url: str, status: int = 200) -> str:
    async with session.get(url) as response:
        assert response.status == status, url
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "http" not in csp
        return await response.text()


def assert_escaped(text: str) -> None:
    assert EVIL not in text and "<img" not in text
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in text


def test_history_pages(history_db: Path) -> None:
    async def body(url: str, session: aiohttp.ClientSession) -> None:
        runs = await get(session, url)
        assert all(f"2024-{n:02d}" in runs for n in range(1, 6)) and "<svg" in runs
        assert "tests failed" in runs and 'href="/run/2024-03"' in runs
        assert_escaped(runs)
        report = await get(session, url + "run/2024-05")
        assert "run 2024-05" in report and "Timeline" in report and "all runs" in report
        assert_escaped(report)
        flaky = await get(session, url + "flaky")
        assert "tests.test_a::test_" in flaky and re.search(r"<td class=num>2</td>", flaky)   # 2 runs flaky
        assert_escaped(flaky)
        machines = await get(session, url + "machines")
        assert "h1" in machines and "speed per run" in machines and "<svg" in machines
        assert_escaped(machines)
        slowest = await get(session, url + "slowest")
        assert slowest.index("test_slow") < slowest.index("test_&lt;img")        # 9.5 s beats a median of 3 + n s
        whatif = await get(session, url + "whatif/2024-05?changes=without:h1")
        assert "simulation from recorded durations" in whatif and "without:h1" in whatif
        assert "simulated: the run&#x27;s machines" in whatif and "lower bound" in whatif
        bad = await get(session, url + "whatif/2024-05?changes=without:nope")
        assert "no machine &#x27;nope&#x27; in the run" in bad
        missing = await get(session, url + "run/nope", status=404)
        assert "not found" in missing
        async with session.post(url + "run/2024-05") as post:
            assert post.status == 405

    served(history_db, body)


def test_the_database_is_not_written(history_db: Path) -> None:
    before = history_db.stat().st_mtime_ns, history_db.stat().st_size

    async def body(url: str, session: aiohttp.ClientSession) -> None:
        for path in ("", "run/2024-01", "flaky", "machines", "slowest", "whatif/2024-01?changes=slots:h1=4"):
            await get(session, url + path)

    served(history_db, body)
    assert (history_db.stat().st_mtime_ns, history_db.stat().st_size) == before


def test_no_history_yet(tmp_path: Path) -> None:
    async def body(url: str, session: aiohttp.ClientSession) -> None:
        assert "No runs recorded yet" in await get(session, url)

    served(tmp_path / "none.db", body)
    assert not (tmp_path / "none.db").exists()


def test_serve_command_prints_its_url_and_stops_on_ctrl_c(tmp_path: Path, history_db: Path) -> None:
    inv = tmp_path / "machines.yaml"
    inv.write_text(f"history: {history_db}\nmachines:\n  a: {{transport: local, slots: 1}}\n"
                   "suite:\n  command: 'true'\n", encoding="utf-8")
    with subprocess.Popen([sys.executable, "-m", "fleetshard", "serve", "127.0.0.1:0", "-i", str(inv)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          stdin=subprocess.DEVNULL) as proc:
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline()
            match = re.search(r"history dashboard at (http://127\.0\.0\.1:\d+/) ", line)
            assert match, line
            url = match.group(1)

            async def fetch() -> str:
                async with aiohttp.ClientSession() as session:
                    return await get(session, url)

            assert "2024-05" in asyncio.run(fetch())
            began = time.monotonic()
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=10) == 0
            assert time.monotonic() - began < 5
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_serve_rejects_a_bad_address(tmp_path: Path) -> None:
    inv = tmp_path / "machines.yaml"
    inv.write_text("machines:\n  a: {transport: local, slots: 1}\nsuite:\n  command: 'true'\n", encoding="utf-8")
    res = subprocess.run([sys.executable, "-m", "fleetshard", "serve", "nope", "-i", str(inv)], capture_output=True,
                         text=True, timeout=60, env=dict(os.environ), check=False)
    assert res.returncode == 2 and "serve: expected [HOST:]PORT" in res.stderr and "Traceback" not in res.stderr
