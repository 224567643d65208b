"""`fleetshard serve`: the history of an inventory's runs as read-only pages.

``/`` recent runs (a duration trend, verdicts, machines); ``/run/ID`` a run's report (the HTML of
``fleetshard report --html``); ``/whatif/ID?changes=…`` that run simulated on changed machines
(:mod:`fleetshard.whatif`); ``/flaky`` tests that failed then passed over the last runs, and where;
``/machines`` each machine's speed and start-up cost run after run; ``/slowest`` the slowest tests.

Pages are rendered on the server, every string escaped, with no script; each request reads the database
in a worker thread with its own connection, and nothing is ever written.
"""

from __future__ import annotations

import asyncio
import html
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ..errors import FleetshardError
from ..report import fmt_duration
from .server import REPORT_CSP, Address, Served, asset, html_response, serve_app

if TYPE_CHECKING:
    from aiohttp import web

    from ..history import History

DEFAULT_RUNS = 50


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


_VERDICT = {0: ("ok", "passed"), 1: ("fail", "tests failed"), 3: ("infra", "infrastructure failure"),
            130: ("cancelled", "interrupted")}


def verdict(exit_code: int) -> tuple[str, str]:
    return _VERDICT.get(exit_code, ("fail", f"exit {exit_code}"))


def sparkline(values: Sequence[float | None], classes: Sequence[str] | None = None, *, width: int = 320,
              height: int = 48, label: str = "") -> str:
    """An inline SVG line of ``values`` (oldest first); dots take ``classes``."""
    points = [(i, v) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    if not points:
        return '<span class="muted">–</span>'
    top = max(v for _, v in points) or 1.0
    n = max(1, len(values) - 1)
    pad = 4

    def xy(i: int, v: float) -> tuple[float, float]:
        return pad + i * (width - 2 * pad) / n, height - pad - v / top * (height - 2 * pad)

    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(i, v) for i, v in points))
    dots = "".join(f'<circle class="{_e(classes[i] if classes else "")}" cx="{xy(i, v)[0]:.1f}" '
                   f'cy="{xy(i, v)[1]:.1f}" r="3"><title>{_e(fmt_duration(v) if not label else f"{v:g}")}'
                   f"</title></circle>" for i, v in points)
    top_text = fmt_duration(top) if not label else f"{top:.2f}"
    return (f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="{_e(label or "trend")}"><text x="{width - pad}" y="10" text-anchor="end">'
            f'max {_e(top_text)}</text><polyline points="{line}"/>{dots}</svg>')


def page(title: str, body: str, *, active: str = "") -> str:
    links = (("runs", "/", "Runs"), ("flaky", "/flaky", "Flaky tests"), ("machines", "/machines", "Machines"),
             ("slowest", "/slowest", "Slowest tests"))
    nav = "".join(f'<a href="{href}"{" class=active" if key == active else ""}>{_e(text)}</a>'
                  for key, href, text in links)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
            f'<link rel="stylesheet" href="/static/dashboard.css"><title>{_e(title)} · fleetshard</title></head>'
            f'<body><header class="neutral"><h1>{_e(title)}</h1><nav>{nav}</nav></header>'
            f"<main>{body}</main></body></html>")


def _table(head: Iterable[str], rows: Iterable[Iterable[str]], *, cls: str = "") -> str:
    ths = "".join(f"<th{' class=num' if h.startswith('#') else ''}>{_e(h.lstrip('#'))}</th>" for h in head)
    trs = "".join("<tr>" + "".join(rows_cell for rows_cell in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{ths}</tr></thead><tbody>{trs}</tbody></table>'


def _td(value: object, *, num: bool = False, raw: bool = False) -> str:
    return f"<td{' class=num' if num else ''}>{value if raw else _e(value)}</td>"


def _run_link(run_id: str) -> str:
    return f'<a href="/run/{quote(run_id, safe="")}">{_e(run_id)}</a>'


# ------------------------------------------------------------------------------------------------ pages

def runs_page(history: History, limit: int) -> str:
    rows = history.runs(limit)
    if not rows:
        return page("Recent runs", "<p>No runs recorded yet. Run <code>fleetshard run</code> to record one.</p>",
                    active="runs")
    oldest_first = list(reversed(rows))
    trend = sparkline([r.duration for r in oldest_first], [verdict(r.exit_code)[0] for r in oldest_first],
                      width=640, height=80)
    table = _table(
        ["run", "when", "#duration", "verdict", "#passed", "#failed", "#flaky", "#not run", "machines", ""],
        ([_td(_run_link(r.id), raw=True), _td(_when(r.started)), _td(fmt_duration(r.duration), num=True),
          _td(f'<span class="tag {verdict(r.exit_code)[0]}">{_e(verdict(r.exit_code)[1])}</span>', raw=True),
          _td(r.counts.get("passed", 0), num=True), _td(r.counts.get("failed", 0), num=True),
          _td(r.counts.get("flaky", 0) or r.counts.get("tests_flaky", 0), num=True),
          _td(r.counts.get("not_run", 0), num=True), _td(", ".join(r.machines)),
          _td(f'<a href="/whatif/{quote(r.id, safe="")}">what if…</a>', raw=True)] for r in rows))
    body = (f"<section><h2>Duration, last {len(rows)} runs (oldest left)</h2>{trend}"
            f'<p class="legend"><span><i class="passed"></i>passed</span><span><i class="failed"></i>tests failed'
            f'</span><span><i class="infra"></i>infrastructure failure</span></p></section>'
            f"<section><h2>Runs</h2>{table}</section>")
    return page("Recent runs", body, active="runs")


def flaky_page(history: History, limit: int) -> str:
    ids = _recent_ids(history, limit)
    stats: dict[tuple[str, str], dict[str, Any]] = {}
    if ids:
        marks = ",".join("?" * len(ids))
        for classname, name, file, run_id, machine, flaky, outcome in history.conn.execute(
                f"SELECT classname, name, file, run_id, machine, flaky, outcome FROM tests WHERE run_id IN ({marks})",
                ids):
            if not flaky and outcome not in ("failed", "error"):
                continue
            entry = stats.setdefault((classname or "", name), {"file": file, "flaky": set(), "failed": set(),
                                                               "machines": set()})
            if flaky:
                entry["flaky"].add(run_id)
                entry["machines"].add(machine)
            else:
                entry["failed"].add(run_id)
    flaky = sorted(((k, v) for k, v in stats.items() if v["flaky"]), key=lambda kv: (-len(kv[1]["flaky"]), kv[0]))
    if not flaky:
        body = (f"<p>No flaky test in the last {len(ids)} runs "
                "(a test is flaky when it failed, then passed on a retry).</p>")
    else:
        body = (f"<p>Tests that failed, then passed on a retry of the same shard, in the last {len(ids)} runs.</p>"
                + _table(["test", "file", "#runs flaky", "#runs failed", "passed on a retry on"],
                         ([_td(f"<code>{_e(f'{c}::{n}' if c else n)}</code>", raw=True), _td(v["file"] or ""),
                           _td(len(v["flaky"]), num=True), _td(len(v["failed"]), num=True),
                           _td(", ".join(sorted(m for m in v["machines"] if m)))] for (c, n), v in flaky)))
    return page("Flaky tests", body, active="flaky")


def machines_page(history: History, limit: int) -> str:
    ids = list(reversed(_recent_ids(history, limit)))           # oldest first
    speeds: dict[str, dict[str, float]] = defaultdict(dict)
    startups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    if ids:
        marks = ",".join("?" * len(ids))
        for run_id, name, speed, slots in history.conn.execute(
                f"SELECT run_id, name, speed, slots FROM machines_in_run WHERE run_id IN ({marks})", ids):
            if slots and speed:
                speeds[name][run_id] = float(speed)
        for run_id, machine, overhead in history.conn.execute(
                f"SELECT run_id, machine, ended - started - test_time FROM attempts WHERE run_id IN ({marks}) "
                "AND test_time IS NOT NULL AND outcome IN ('passed', 'tests-failed')", ids):
            startups[machine][run_id].append(max(0.0, float(overhead or 0.0)))
    learned, startup = history.machine_speeds(), history.machine_startup()
    names = sorted(set(speeds) | set(startups) | set(learned))
    if not names:
        return page("Machines", "<p>No machine has run a shard yet.</p>", active="machines")
    rows = []
    for name in names:
        speed_line = [speeds[name].get(r) for r in ids]
        start_line = [statistics.median(startups[name][r]) if startups[name].get(r) else None for r in ids]
        rows.append([_td(name), _td(f"{learned[name]:.2f}" if name in learned else "–", num=True),
                     _td(sparkline(speed_line, width=240, height=40, label="speed"), raw=True),
                     _td(fmt_duration(startup[name]) if name in startup else "–", num=True),
                     _td(sparkline(start_line, width=240, height=40), raw=True)])
    body = (f"<p>Speed is relative to the fleet's median machine (2 = twice as fast), as planned for each run; "
            f"start-up is a shard's fixed cost before its first test (its time less its tests' times). "
            f"Last {len(ids)} runs, oldest left.</p>"
            + _table(["machine", "#learned speed", "speed per run", "#learned start-up", "start-up per run"], rows))
    return page("Machines", body, active="machines")


def slowest_page(history: History, limit: int, top: int = 50) -> str:
    ids = _recent_ids(history, limit)
    times: dict[tuple[str, str], list[float]] = defaultdict(list)
    files: dict[tuple[str, str], str] = {}
    if ids:
        marks = ",".join("?" * len(ids))
        for classname, name, file, time in history.conn.execute(
                f"SELECT classname, name, file, time FROM tests WHERE run_id IN ({marks}) AND outcome != 'skipped'",
                ids):
            key = (classname or "", name)
            times[key].append(float(time or 0.0))
            files.setdefault(key, file or "")
    ranked = sorted(times.items(), key=lambda kv: -statistics.median(kv[1]))[:top]
    if not ranked:
        return page("Slowest tests", "<p>No test times recorded yet (they come from the suite's JUnit XML).</p>",
                    active="slowest")
    longest = statistics.median(ranked[0][1]) or 1.0
    body = (f"<p>Median time per test over the last {len(ids)} runs.</p>"
            + _table(["test", "file", "#median", "#max", "#runs", ""],
                     ([_td(f"<code>{_e(f'{c}::{n}' if c else n)}</code>", raw=True), _td(files[(c, n)]),
                       _td(fmt_duration(statistics.median(v)), num=True), _td(fmt_duration(max(v)), num=True),
                       _td(len(v), num=True),
                       _td(_bar(statistics.median(v) / longest), raw=True)]
                      for (c, n), v in ranked)))
    return page("Slowest tests", body, active="slowest")


def whatif_page(history: History, run_id: str, changes_text: str) -> str:
    from ..whatif import LABEL, describe_machines, parse_changes, what_if

    record = history.get_run(run_id)
    error = ""
    result = None
    try:
        changes = parse_changes([changes_text]) if changes_text.strip() else []
        result = what_if(record, changes, speeds=history.machine_speeds(), startup=history.machine_startup())
    except FleetshardError as exc:
        error = f'<p class="tag failed">{_e(exc)}</p>'
    form = (f'<form class="whatif" method="get" action="/whatif/{quote(record.run_id, safe="")}">'
            f'<label>Changes: <input type="text" name="changes" value="{_e(changes_text)}" '
            f'placeholder="without:h2, like:h1=h5, slots:h1=8, speed:h3=2"></label> <button>Simulate</button></form>'
            '<p class="muted">without:NAME · like:NAME=NEW (a new machine like NAME) · slots:NAME=N · speed:NAME=X, '
            "comma-separated.</p>")
    body = [f'<p class="sim"><strong>A {_e(LABEL)}</strong>, not a measurement: each shard of run '
            f"{_run_link(record.run_id)} counts for the work its deciding attempt did, replayed by the planner's "
            "simulation on the machines below.</p>", form, error]
    if result is not None:
        rows = []
        if result.actual_makespan is not None:
            rows.append([_td("as it ran (measured)"), _td(fmt_duration(result.actual_makespan), num=True), _td("–"),
                         _td("")])
        for fleet in (result.baseline, result.scenario):
            if fleet is None:
                continue
            label = "simulated: the run's machines" if fleet is result.baseline else f"simulated: {fleet.label}"
            rows.append([_td(label), _td(fmt_duration(fleet.makespan), num=True),
                         _td(fmt_duration(fleet.lower_bound), num=True), _td(describe_machines(fleet.machines))])
        body.append(_table(["", "#makespan", "#lower bound", "machines"], rows, cls="whatif-result"))
        if result.ratio is not None and math.isfinite(result.ratio):
            change = (result.ratio - 1) * 100
            body.append(f"<p><strong>{abs(change):.0f}% {'slower' if change > 0 else 'faster'}</strong> than the "
                        "same simulation on the run's machines.</p>")
        body.extend(f'<p class="muted">note: {_e(n)}</p>' for n in result.notes)
    return page(f"What if · run {record.run_id}", "".join(body))


def run_report(history: History, run_id: str) -> str:
    from ..report import render_html

    record = history.get_run(run_id)
    base = Path(record.run_dir) if record.run_dir else Path.cwd()
    text = render_html(record, base, speeds=history.machine_speeds())
    nav = (f'<nav style="padding:6px 24px;background:#1d232b"><a style="color:#fff;margin-right:16px" href="/">'
           f'all runs</a><a style="color:#fff" href="/whatif/{quote(record.run_id, safe="")}">what if…</a></nav>')
    return text.replace("<body>", "<body>" + nav, 1)


def _bar(fraction: float, width: int = 120) -> str:
    return (f'<svg class="bar" width="{width}" height="10" aria-hidden="true"><rect class="bar-cell" '
            f'width="{max(1.0, fraction * width):.1f}" height="10"/></svg>')


def _recent_ids(history: History, limit: int) -> list[str]:
    return [r.id for r in history.runs(limit)]


# ------------------------------------------------------------------------------------------------ server

class HistoryDashboard:
    """The read-only history pages of one history database."""

    def __init__(self, path: Path, address: Address, *, token: str | None = None, limit: int = DEFAULT_RUNS) -> None:
        from .server import new_token

        self.path = path
        self.address = address
        self.token = token if token is not None else (None if address.loopback else new_token())
        self.limit = limit
        self.served: Served | None = None

    def _read(self, render: Callable[[History], str]) -> str:
        from ..history import History

        if not self.path.exists():
            return page("Recent runs", "<p>No runs recorded yet. Run <code>fleetshard run</code> to record one.</p>")
        with History(self.path) as history:
            return render(history)

    async def _render(self, render: Callable[[History], str], *, csp: str | None = None) -> web.StreamResponse:
        from aiohttp import web

        try:
            text = await asyncio.to_thread(self._read, render)
        except FleetshardError as exc:
            return html_response(page("Not found", f"<p>{_e(exc)}</p>"), status=404)
        except Exception as exc:  # a page must never take the server down
            raise web.HTTPInternalServerError(text=f"{type(exc).__name__}: {exc}\n") from exc
        return html_response(text, csp=csp) if csp else html_response(text)

    async def start(self) -> str:
        from aiohttp import web

        app = web.Application()
        limit = self.limit

        async def runs(request: web.Request) -> web.StreamResponse:
            return await self._render(lambda h: runs_page(h, limit))

        async def flaky(request: web.Request) -> web.StreamResponse:
            n = _int(request.query.get("runs"), limit)
            return await self._render(lambda h: flaky_page(h, n))

        async def machines(request: web.Request) -> web.StreamResponse:
            return await self._render(lambda h: machines_page(h, limit))

        async def slowest(request: web.Request) -> web.StreamResponse:
            return await self._render(lambda h: slowest_page(h, limit))

        async def run(request: web.Request) -> web.StreamResponse:
            run_id = request.match_info["run"]
            return await self._render(lambda h: run_report(h, run_id), csp=REPORT_CSP)

        async def whatif(request: web.Request) -> web.StreamResponse:
            run_id, changes = request.match_info["run"], request.query.get("changes", "")[:2000]
            return await self._render(lambda h: whatif_page(h, run_id, changes))

        async def static(request: web.Request) -> web.StreamResponse:
            if request.match_info["name"] != "dashboard.css":
                raise web.HTTPNotFound()
            return web.Response(text=asset("dashboard.css"), content_type="text/css")

        app.router.add_get("/", runs)
        app.router.add_get("/flaky", flaky)
        app.router.add_get("/machines", machines)
        app.router.add_get("/slowest", slowest)
        app.router.add_get("/run/{run}", run)
        app.router.add_get("/whatif/{run}", whatif)
        app.router.add_get("/static/{name}", static)
        self.served = await serve_app(app, self.address, self.token)
        return self.served.url

    async def close(self) -> None:
        if self.served is not None:
            await self.served.stop()
            self.served = None


def _int(text: str | None, default: int) -> int:
    return int(text) if text and text.isdigit() and 0 < int(text) <= 10000 else default


def serve_command(inv: Any, address_text: str, *, limit: int = DEFAULT_RUNS) -> int:
    """`fleetshard serve [HOST:]PORT`: serve the history until Ctrl-C (exit 0)."""
    import signal
    import sys

    from ..report import history_path
    from . import require_aiohttp
    from .server import parse_address

    require_aiohttp()
    address = parse_address(address_text, option="serve")
    dashboard = HistoryDashboard(history_path(inv), address, limit=limit)

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        url = await dashboard.start()
        print(f"fleetshard: history dashboard at {url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        try:
            await stop.wait()
        finally:
            await dashboard.close()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        return 0

    return asyncio.run(main())

