"""`fleetshard history` and `fleetshard report`: recent runs, one run's summary, a self-contained HTML page.

The HTML report is one file with inline CSS and a few lines of inline JS: no external URL, no network
(a Content-Security-Policy meta tag says so to the browser). All text that comes from a run is escaped.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .errors import UsageError
from .logtext import fmt_time, local_path, tail_lines
from .model import verdict_of
from .record import AttemptRecord, RunRecord, ShardRecord, machine_summaries
from .results import atomic_write_bytes, attempts_by_shard, deciding_attempt

if TYPE_CHECKING:
    from rich.console import Console

    from .inventory import Inventory

LOG_TAIL_LINES = 30


# --- shared helpers ----------------------------------------------------------------------------------

FAILURES_LISTED = 20
"""Failing tests named per shard in `fleetshard report` and the HTML report, before "+N more"."""


def history_path(inv: Inventory) -> Path:
    """The history database of an inventory: ``history:`` (relative to the inventory) or the default."""
    if inv.history:
        path = Path(inv.history).expanduser()
        return path if path.is_absolute() else inv.base_dir / path
    return inv.base_dir / ".fleetshard" / "history.db"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    if seconds < 10:
        return f"{seconds:.1f}s"
    total = round(seconds)
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def outcome_class(outcome: str) -> str:
    """The colour family of an attempt outcome."""
    if outcome == "passed":
        return "passed"
    if outcome == "tests-failed":
        return "failed"
    if outcome in ("infra-failed", "timed-out"):
        return "infra"
    if outcome == "cancelled":
        return "cancelled"
    return "other"


@dataclass(frozen=True)
class MachineMetrics:
    name: str
    status: str
    slots: int
    attempts: int
    shards_passed: int
    busy: float                       # seconds of shard attempts, summed over slots
    utilisation: float | None         # busy / (slots x run duration), 0..1
    speed: float


def machine_metrics(record: RunRecord, speeds: Mapping[str, float] | None = None) -> list[MachineMetrics]:
    """The run summary's per-machine rows (:func:`fleetshard.record.machine_summaries`) with speeds."""
    declared = {m.name: m.speed for m in record.machines}
    return [MachineMetrics(name=row.name, status=row.status or "unknown", slots=row.slots, attempts=row.shards,
                           shards_passed=row.passed, busy=row.busy, utilisation=row.utilisation(record.duration),
                           speed=(speeds or {}).get(row.name) or declared.get(row.name, 1.0))
            for row in machine_summaries(record)]


def _window(record: RunRecord) -> tuple[float, float]:
    starts = [a.started for a in record.attempts] + [record.started]
    ends = [a.ended for a in record.attempts] + [record.ended]
    start, end = min(starts), max(ends)
    return start, max(end, start)


def _verdict(record: RunRecord) -> tuple[str, str]:
    verdict = verdict_of(record.exit_code)
    return verdict.kind, verdict.description


def _failed_shards(record: RunRecord) -> list[tuple[ShardRecord, AttemptRecord | None]]:
    by_shard = attempts_by_shard(record)
    return [(s, deciding_attempt(s, by_shard.get(s.id, []))) for s in record.shards if s.state == "failed"]


# --- fleetshard history --------------------------------------------------------------------------------

def _console() -> Console:
    from .console import make_console

    return make_console()


def flaky_command(inv: Inventory, *, limit: int = 20, as_json: bool = False,
                  console: Console | None = None) -> int:
    """`fleetshard history --flaky`: the flakiest tests over the last ``limit`` runs."""
    from rich.markup import escape
    from rich.table import Table

    from .history import History, display_path

    console = console or _console()
    path = history_path(inv)
    rows = []
    if path.exists():
        with History(path) as history:
            rows = history.flaky_tests(limit)
    if as_json:
        console.out(json.dumps([{"test": r.label, "file": r.file, "classname": r.classname, "name": r.name,
                                 "runs": r.runs, "flaky": r.flaky, "failed": r.failed,
                                 "last_flaky": datetime.fromtimestamp(r.last_flaky).astimezone().isoformat()
                                 if r.last_flaky else None} for r in rows], indent=2), highlight=False)
        return 0
    if not rows:
        console.print(f"No flaky test in the last {limit} runs (history: {display_path(path)}).",
                      markup=False, soft_wrap=True)
        return 0
    table = Table(title=f"Flakiest tests, last {limit} runs ({display_path(path)})", title_justify="left")
    for column, justify in (("test", "left"), ("flaky", "right"), ("failed", "right"), ("runs", "right"),
                            ("last flaky", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        table.add_row(escape(r.label), f"[yellow]{r.flaky}[/]", _num(r.failed, "red"), str(r.runs),
                      fmt_time(r.last_flaky, date=True)[:16] if r.last_flaky else "–")
    console.print(table)
    return 0


def history_command(inv: Inventory, *, limit: int = 20, as_json: bool = False,
                    console: Console | None = None, selector: str | None = None, flaky: bool = False) -> int:
    """Print the recent runs of this inventory's history database. No runs is not an error.
    With ``selector`` (-m), only the runs that used one of those machines; with ``flaky``, the flakiest
    tests of the recent runs instead."""
    from rich.table import Table

    from .history import History, display_path
    from .inventory import select_machines

    if flaky:
        return flaky_command(inv, limit=limit, as_json=as_json, console=console)
    console = console or _console()
    path = history_path(inv)
    wanted: set[str] | None = None
    if selector and inv.machines:
        wanted = {m.name for m in select_machines(inv, selector)}
    elif selector:                      # no inventory (a history found in ./.fleetshard): names as given
        wanted = {t.strip() for t in selector.split(",") if t.strip()}
    rows = []
    if path.exists() or _interrupted(inv):
        with History(path) as history:
            _recover(inv, history)
            rows = history.runs(limit if wanted is None else max(limit * 10, 200))
    if wanted is not None:
        rows = [r for r in rows if wanted.intersection(r.machines)][:limit]
    if as_json:
        console.out(json.dumps([
            {"id": r.id, "started": datetime.fromtimestamp(r.started).astimezone().isoformat(),
             "duration": round(r.duration, 3), "exit_code": r.exit_code, "counts": r.counts,
             "machines": r.machines, "strategy": r.strategy, "mode": r.mode} for r in rows], indent=2),
                    highlight=False)
        return 0
    if not rows:
        console.print(f"No runs recorded yet (history: {display_path(path)}). "
                      "Run `fleetshard run` to record one.", markup=False, soft_wrap=True)
        return 0
    table = Table(title=f"Recent runs ({display_path(path)})", title_justify="left")
    for column, justify in (("run", "left"), ("when", "left"), ("duration", "right"), ("passed", "right"),
                            ("failed", "right"), ("flaky", "right"), ("not run", "right"),
                            ("machines", "left"), ("exit", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        c = r.counts
        exit_style = "green" if r.exit_code == 0 else "red" if r.exit_code in (1, 3) else "yellow"
        table.add_row(r.id, fmt_time(r.started, date=True)[:16], fmt_duration(r.duration),
                      str(c.get("passed", 0)), _num(c.get("failed", 0), "red"),
                      _num(c.get("flaky", 0) or c.get("tests_flaky", 0), "yellow"),
                      _num(c.get("not_run", 0), "yellow"), ", ".join(r.machines),
                      f"[{exit_style}]{r.exit_code}[/]")
    console.print(table)
    return 0


def _interrupted(inv: Inventory) -> bool:
    from .journal import interrupted_journals

    return next(interrupted_journals(inv.base_dir / ".fleetshard" / "runs"), None) is not None


def _recover(inv: Inventory, history: Any) -> None:
    """Runs whose coordinator was killed are recorded from their journals before anything is shown."""
    from .journal import recover_runs

    recover_runs(inv.base_dir, history)


def _num(value: int, style: str) -> str:
    return f"[{style}]{value}[/]" if value else "0"


# --- fleetshard report ---------------------------------------------------------------------------------

def report_command(inv: Inventory, run_id: str | None, *, html: Path | None = None,
                   console: Console | None = None, as_json: bool = False) -> int:
    """Print one run's summary (the latest by default); with ``html``, also write the HTML report."""
    from .history import History, display_path

    console = console or _console()
    path = history_path(inv)
    if not path.exists() and not _interrupted(inv):
        raise UsageError(f"no runs recorded yet (no history database at {display_path(path)}): "
                         "run `fleetshard run` first")
    with History(path) as history:
        _recover(inv, history)
        record = history.get_run(run_id)
        speeds = history.machine_speeds()
    if as_json:
        from .results import dumps, json_report_data

        console.out(dumps(json_report_data(record), indent=2), highlight=False)
        if html is not None:
            write_html(record, html, speeds=speeds)
        return 0
    from .progress import print_summary

    print_summary(console, record)            # the same summary `fleetshard run` printed
    if html is not None:
        write_html(record, html, speeds=speeds)
        console.print(f"HTML report: {html}", markup=False)
    return 0


# --- HTML ------------------------------------------------------------------------------------------------

_CSS = """
:root { --passed:#2e9e4f; --failed:#d43c3c; --infra:#e8891c; --cancelled:#9a9a9a; --other:#6a7bd1;
        --bg:#fff; --fg:#1d232b; --muted:#6b7480; --line:#e3e6ea; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: var(--fg);
       background: var(--bg); }
main { max-width: 1400px; margin: 0 auto; padding: 0 24px 48px; }
header { padding: 18px 24px; color: #fff; }
header.ok { background: var(--passed); } header.fail { background: var(--failed); }
header.infra { background: var(--infra); } header.cancelled { background: var(--cancelled); }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 2px 0; }
h2 { margin: 28px 0 10px; font-size: 17px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
table { border-collapse: collapse; }
th, td { text-align: left; padding: 4px 12px 4px 0; border-bottom: 1px solid var(--line);
         vertical-align: top; }
td.num, th.num { text-align: right; }
code, pre { font: 12px/1.4 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; }
pre { background: #f5f6f8; border: 1px solid var(--line); padding: 8px; overflow-x: auto;
      max-height: 420px; white-space: pre-wrap; word-break: break-all; }
.muted { color: var(--muted); }
.stats span { margin-right: 18px; }
.timeline { position: relative; }
.axis { position: relative; height: 20px; margin-left: 140px; border-bottom: 1px solid var(--line); }
.tick { position: absolute; top: 0; font-size: 11px; color: var(--muted); transform: translateX(-50%);
        white-space: nowrap; }
.tick.first { transform: none; } .tick.last { transform: translateX(-100%); }
.row { display: flex; align-items: stretch; border-bottom: 1px solid var(--line); }
.machine-label { width: 140px; flex: none; padding: 4px 8px 4px 0; overflow: hidden; text-overflow: ellipsis;
                 white-space: nowrap; font-weight: 600; }
.machine-label small { display: block; font-weight: 400; color: var(--muted); }
.lane { position: relative; flex: 1; min-height: 26px;
        background-image: linear-gradient(to right, #e9ebee 1px, transparent 1px); }
.block { position: absolute; height: 20px; border-radius: 3px; color: #fff; font-size: 11px; line-height: 20px;
         padding: 0 4px; overflow: hidden; white-space: nowrap; cursor: default; min-width: 2px;
         border: 1px solid rgba(0,0,0,.25); }
.block.passed { background: var(--passed); } .block.failed { background: var(--failed); }
.block.infra { background: var(--infra); } .block.cancelled { background: var(--cancelled); }
.block.other { background: var(--other); }
.block.retry { border: 2px dashed #1d232b;
               background-image: repeating-linear-gradient(45deg, rgba(255,255,255,.28) 0 4px,
                                                           transparent 4px 8px); }
.block.speculative { border-style: dotted; }
.block.hl { outline: 2px solid #1d232b; z-index: 2; }
.legend span { display: inline-block; margin-right: 14px; font-size: 12px; }
.legend i { display: inline-block; width: 12px; height: 12px; border-radius: 2px; vertical-align: -1px;
            margin-right: 4px; }
.failure { margin-bottom: 18px; }
.failure h3 { font-size: 15px; margin: 14px 0 4px; }
.tag { display: inline-block; padding: 0 6px; border-radius: 3px; color: #fff; font-size: 12px; }
.tag.failed { background: var(--failed); } .tag.infra { background: var(--infra); }
.tag.passed { background: var(--passed); } .tag.cancelled { background: var(--cancelled); }
.tag.other { background: var(--other); }
"""

_JS = """
(function () {
  var blocks = document.querySelectorAll(".block[data-shard]");
  function mark(shard, on) {
    for (var i = 0; i < blocks.length; i++) {
      if (blocks[i].getAttribute("data-shard") === shard) { blocks[i].classList.toggle("hl", on); }
    }
  }
  for (var i = 0; i < blocks.length; i++) {
    blocks[i].addEventListener("mouseenter", function (e) { mark(e.currentTarget.getAttribute("data-shard"), true); });
    blocks[i].addEventListener("mouseleave", function (e) { mark(e.currentTarget.getAttribute("data-shard"), false); });
  }
})();
"""

_CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _href(target: Path, base: Path) -> str:
    try:
        rel = os.path.relpath(target, base)
    except ValueError:
        return target.as_uri()
    return quote(rel.replace(os.sep, "/"))


def _nice_step(span: float) -> float:
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 28800, 86400):
        if span / step <= 10:
            return float(step)
    return span / 10


def _tick_label(seconds: float) -> str:
    if seconds <= 0:
        return "0"
    if seconds < 60:
        return f"+{seconds:g}s"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"+{hours}h" + (f" {minutes:02d}m" if minutes else "")
    return f"+{minutes}m" + (f" {secs:02d}s" if secs else "")


def _rows(attempts: Sequence[AttemptRecord]) -> list[tuple[AttemptRecord, int]]:
    """Each attempt with the row (slot) it is drawn on, so that overlapping attempts do not cover each other."""
    rows_end: list[float] = []
    placed = []
    for attempt in sorted(attempts, key=lambda a: (a.started, a.ended)):
        for index, end in enumerate(rows_end):
            if end <= attempt.started + 1e-6:
                rows_end[index] = attempt.ended
                break
        else:
            index = len(rows_end)
            rows_end.append(attempt.ended)
        placed.append((attempt, index))
    return placed


def _attempt_title(a: AttemptRecord) -> str:
    parts = [f"{a.shard_id} · attempt {a.attempt}{' (speculative)' if a.speculative else ''} on {a.machine}",
             f"{fmt_time(a.started)} – {fmt_time(a.ended)} ({fmt_duration(a.duration)})",
             f"outcome: {a.outcome}",
             f"exit: {a.exit_status if a.exit_status is not None else '–'}"
             + (f" (signal {a.signal})" if a.signal else "")]
    if a.reason:
        parts.append(f"reason: {a.reason}")
    return "\n".join(parts)


def _timeline(record: RunRecord, metrics: Sequence[MachineMetrics]) -> str:
    t0, t1 = _window(record)
    span = max(t1 - t0, 1e-3)
    out = ['<div class="timeline">', '<div class="axis">']
    step = _nice_step(span)
    ticks = [i * step for i in range(int(span / step + 1e-9) + 1)]
    for i, tick in enumerate(ticks):
        where = " first" if i == 0 else " last" if tick / span > 0.95 else ""
        out.append(f'<span class="tick{where}" style="left:{tick / span * 100:.3f}%">{_tick_label(tick)}</span>')
    out.append("</div>")
    grid = f"background-size:{min(step / span, 1) * 100:.4f}% 100%"
    for m in metrics:
        placed = _rows([a for a in record.attempts if a.machine == m.name])
        height = max(1, max((row for _, row in placed), default=0) + 1) * 24 + 4
        out.append('<div class="row">')
        slots = f"{m.slots} slot{'s' if m.slots != 1 else ''}" if m.slots else "? slots"
        out.append(f'<div class="machine-label" title="{_e(m.name)}">{_e(m.name)}'
                   f'<small>{_e(m.status)} · {slots}</small></div>')
        out.append(f'<div class="lane" data-machine="{_e(m.name)}" style="height:{height}px;{grid}">')
        for a, row in placed:
            left = (a.started - t0) / span * 100
            width = max(a.duration / span * 100, 0.25)
            classes = ["block", outcome_class(a.outcome)]
            if a.attempt > 1:
                classes.append("retry")
            if a.speculative:
                classes.append("speculative")
            label = a.shard_id + (f" #{a.attempt}" if a.attempt > 1 else "")
            out.append(f'<div class="{" ".join(classes)}" data-shard="{_e(a.shard_id)}" '
                       f'data-attempt="{a.attempt}" style="left:{left:.3f}%;width:{width:.3f}%;'
                       f'top:{row * 24 + 3}px" title="{_e(_attempt_title(a))}">{_e(label)}</div>')
        out.append("</div></div>")
    out.append("</div>")
    out.append('<p class="legend">' + "".join(
        f'<span><i style="background:var(--{cls})"></i>{_e(text)}</span>'
        for cls, text in (("passed", "passed"), ("failed", "tests failed"),
                          ("infra", "infrastructure failure / timed out"), ("cancelled", "cancelled")))
        + '<span class="muted">dashed, hatched border: a retry (#n = attempt number)</span></p>')
    return "\n".join(out)


def _machine_table(metrics: Sequence[MachineMetrics]) -> str:
    out = ["<table><thead><tr><th>machine</th><th>status</th><th class=num>slots</th>"
           "<th class=num>attempts</th><th class=num>passed</th><th class=num>busy time</th>"
           "<th class=num>utilisation</th><th class=num>speed factor</th></tr></thead><tbody>"]
    for m in metrics:
        util = f"{m.utilisation:.0%}" if m.utilisation is not None else "–"
        out.append(f"<tr><td>{_e(m.name)}</td><td>{_e(m.status)}</td><td class=num>{m.slots or '–'}</td>"
                   f"<td class=num>{m.attempts}</td><td class=num>{m.shards_passed}</td>"
                   f"<td class=num>{_e(fmt_duration(m.busy))}</td><td class=num>{util}</td>"
                   f"<td class=num>{m.speed:.2f}</td></tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _log_block(record: RunRecord, attempt: AttemptRecord, base: Path) -> str:
    if not attempt.log_path:
        return '<p class="muted">no log recorded</p>'
    path = local_path(attempt.log_path, record)
    out = [f'<p>log: <a href="{_e(_href(path, base))}"><code>{_e(attempt.log_path)}</code></a></p>']
    lines = tail_lines(path, LOG_TAIL_LINES)
    if lines is None:
        out.append('<p class="muted">(the log file can no longer be read)</p>')
    elif lines:
        out.append(f"<pre>{_e(chr(10).join(lines))}</pre>")
    return "\n".join(out)


def _sections(record: RunRecord, base: Path) -> Iterable[str]:
    failed_tests = [t for t in record.tests if t.outcome in ("failed", "error")]
    failed_shards = _failed_shards(record)
    if failed_shards:
        yield "<section><h2>Failures</h2>"
        for shard, attempt in failed_shards:
            where = f" on {attempt.machine}, attempt {attempt.attempt}" if attempt else ""
            yield (f'<div class="failure"><h3><span class="tag failed">failed</span> {_e(shard.id)}'
                   f"{_e(where)}</h3>")
            reason = shard.reason or (attempt.reason if attempt else "")
            if reason:
                yield f"<p>{_e(reason)}</p>"
            if shard.files:
                yield f'<p class="muted">files: {_e(", ".join(shard.files))}</p>'
            tests = [t for t in failed_tests if t.shard_id == shard.id]
            if tests:
                more = len(tests) - FAILURES_LISTED
                yield "<ul>" + "".join(
                    f"<li><code>{_e(t.label)}</code> {_e(t.message)}</li>" for t in tests[:FAILURES_LISTED]
                ) + (f"<li>+{more} more</li>" if more > 0 else "") + "</ul>"
            if attempt is not None:
                yield _log_block(record, attempt, base)
            yield "</div>"
        yield "</section>"
    infra = [a for a in record.attempts if outcome_class(a.outcome) == "infra"]
    if infra:
        yield ("<section><h2>Infrastructure failures</h2><table><thead><tr><th>shard</th><th>attempt</th>"
               "<th>machine</th><th>outcome</th><th>reason</th><th>log</th></tr></thead><tbody>")
        for a in infra:
            log = (f'<a href="{_e(_href(local_path(a.log_path, record), base))}">log</a>'
                   if a.log_path else "")
            yield (f"<tr><td>{_e(a.shard_id)}</td><td>{a.attempt}</td><td>{_e(a.machine)}</td>"
                   f'<td><span class="tag infra">{_e(a.outcome)}</span></td><td>{_e(a.reason)}</td>'
                   f"<td>{log}</td></tr>")
        yield "</tbody></table></section>"
    flaky = [t for t in record.tests if t.flaky]
    if flaky:
        yield ("<section><h2>Flaky tests</h2><p class=muted>Failed on an attempt, passed on a later one."
               "</p><table><thead><tr><th>test</th><th>file</th><th>shard</th><th>passed on</th></tr>"
               "</thead><tbody>")
        for t in flaky:
            yield (f"<tr><td><code>{_e(t.label)}</code></td><td>{_e(t.file or '')}</td>"
                   f"<td>{_e(t.shard_id)}</td><td>{_e(t.machine)}, attempt {t.attempt}</td></tr>")
        yield "</tbody></table></section>"
    not_run = [s for s in record.shards if s.state == "not-run"]
    if not_run:
        yield ("<section><h2>Not run</h2><table><thead><tr><th>shard</th><th>files</th><th>reason</th>"
               "</tr></thead><tbody>")
        for s in not_run:
            yield (f"<tr><td>{_e(s.id)}</td><td>{_e(', '.join(s.files) or f'{s.index}/{s.total}')}</td>"
                   f"<td>{_e(s.reason or 'unknown reason')}</td></tr>")
        yield "</tbody></table></section>"
    artifacts = [(a, item) for a in record.attempts for item in a.artifacts]
    if artifacts:
        yield "<section><h2>Artifacts</h2><ul>"
        for a, item in artifacts:
            href = _href(local_path(item, record), base)
            yield (f'<li>{_e(a.shard_id)} #{a.attempt} ({_e(a.machine)}): '
                   f'<a href="{_e(href)}">{_e(item)}</a></li>')
        yield "</ul></section>"
    if record.notes:
        yield "<section><h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in record.notes) + "</ul></section>"


def render_html(record: RunRecord, base: Path, *, speeds: Mapping[str, float] | None = None) -> str:
    """The HTML report as a string; links are made relative to the directory ``base``."""
    kind, verdict = _verdict(record)
    c = record.counts()
    metrics = machine_metrics(record, speeds)
    tests = record.tests
    test_stats = ""
    if tests:
        test_stats = (f"<span>tests: {len(tests)}</span>"
                      f"<span>failed: {sum(t.outcome in ('failed', 'error') for t in tests)}</span>"
                      f"<span>skipped: {sum(t.outcome == 'skipped' for t in tests)}</span>"
                      f"<span>flaky: {sum(t.flaky for t in tests)}</span>")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>fleetshard run {_e(record.run_id)}: {_e(verdict)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f'<header class="{kind}"><h1>{_e(verdict.capitalize())} · run {_e(record.run_id)}</h1>',
        f"<p>{_e(fmt_time(record.started, date=True))} · {_e(fmt_duration(record.duration))} · "
        f"exit {record.exit_code} · {_e(record.strategy)} strategy · {_e(record.mode)} mode"
        + (f" · commit {_e(record.commit)}" if record.commit else "") + "</p>",
        f"<p><code>{_e(record.command)}</code></p></header><main>",
        '<section><h2>Summary</h2><p class="stats">'
        f"<span>shards: {c['shards']}</span><span>passed: {c['passed']}</span>"
        f"<span>failed: {c['failed']}</span><span>not run: {c['not_run']}</span>"
        f"<span>flaky: {c['flaky']}</span><span>retries: {c['retries']}</span>{test_stats}</p>",
        f'<p class="stats"><span>makespan: {_e(fmt_duration(record.makespan))}</span>'
        f"<span>expected: {_e(fmt_duration(record.expected_makespan))}</span>"
        f"<span>lower bound: {_e(fmt_duration(record.lower_bound))}</span></p></section>",
        "<section><h2>Timeline</h2>", _timeline(record, metrics), "</section>",
        "<section><h2>Machines</h2>", _machine_table(metrics), "</section>",
        *_sections(record, base),
        f"</main><script>{_JS}</script></body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_html(record: RunRecord, out: Path, *, speeds: Mapping[str, float] | None = None) -> None:
    """Write the self-contained HTML report of ``record`` to ``out`` (atomically)."""
    out = Path(out)
    base = out.parent.resolve() if str(out.parent) else Path.cwd()
    atomic_write_bytes(out, render_html(record, base, speeds=speeds).encode("utf-8"))

