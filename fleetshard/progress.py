"""Progress rendering: a subscriber to the run's event stream, with no scheduling logic inside.

Two renderers share one event-fed :class:`RunState`:

* :class:`LiveRenderer` — a rich ``Live`` table (one row per machine plus an overall bar), with failures,
  retries, shards not run and warnings announced above the live area as they happen;
* :class:`PlainRenderer` — timestamped lines (``[+01:05] h2 s003 passed in 12.3s``) for logs and CI:
  no ANSI codes, no carriage returns, nothing re-drawn, and a periodic one-line status.

Both end with :func:`print_summary` for the :class:`~fleetshard.record.RunRecord` (per-machine table,
counts, makespan, failures, shards not run, flaky shards/tests, and a verdict line).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from rich import box
from rich.console import Console, Group, JustifyMethod, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .console import make_console
from .events import (
    Event,
    MachineStatus,
    Notice,
    OutputLine,
    RunFinished,
    RunStarted,
    ShardFinished,
    ShardNotRun,
    ShardRetrying,
    ShardSettled,
    ShardStarted,
    TestReported,
    Tick,
)
from .logtext import TERMINAL_TAIL_LINES, clean_line, fmt_time, local_path, tail_lines
from .model import (
    EXIT_INFRA,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TESTS_FAILED,
    EXIT_USAGE,
    Outcome,
    Shard,
    TestFailure,
)
from .record import AttemptRecord, RunRecord, ShardRecord, machine_summaries
from .results import FAILURES_SHOWN, attempts_by_shard, deciding_attempt, failed_tests_by_shard

__all__ = [
    "LiveRenderer",
    "PlainRenderer",
    "ProgressView",
    "Renderer",
    "RunState",
    "clean_line",
    "feed",
    "format_duration",
    "format_offset",
    "make_renderer",
    "print_summary",
    "verdict_line",
]

TAIL_LINES = 10
"""At most this many last lines of output are shown with a failure."""

USABLE_STATUSES = frozenset({"healthy", "degraded"})
"""Machine statuses that still take work (used for the ETA's slot count)."""


# --------------------------------------------------------------------------------------------- formatting


def format_duration(seconds: float) -> str:
    """``12.3s`` below a minute, ``1:05`` below an hour, ``1:02:03`` above; ``?`` when not finite."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0.0, seconds)
    if round(seconds, 1) < 60:
        return f"{seconds:.1f}s"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"


def format_offset(seconds: float) -> str:
    """A timestamp relative to the start of the run: ``+MM:SS`` (minutes keep counting past 59)."""
    total = int(max(0.0, seconds)) if math.isfinite(seconds) else 0
    minutes, secs = divmod(total, 60)
    return f"+{minutes:02d}:{secs:02d}"


def _format_eta(eta: float | None) -> str:
    return "?" if eta is None else format_duration(eta)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _exit_detail(exit_status: int | None, signal: str | None) -> str:
    if signal:
        return f"signal {signal}"
    if exit_status is not None:
        return f"exit {exit_status}"
    return ""


def _attempt_note(attempt: int, speculative: bool) -> str:
    notes = []
    if attempt > 1:
        notes.append(f"attempt {attempt}")
    if speculative:
        notes.append("speculative")
    return f" ({', '.join(notes)})" if notes else ""


# --------------------------------------------------------------------------------------------- state


@dataclass
class MachineView:
    """What the renderers know of one machine, updated from events."""

    name: str
    slots: int
    speed: float = 1.0
    status: str = "healthy"
    reason: str = ""
    assigned: int = 0                 # shard attempts started here
    done: int = 0                     # shard attempts finished here (any outcome)
    passed: int = 0
    failed: int = 0                   # tests failed, infra failed or timed out
    running: dict[tuple[str, int], float] = field(default_factory=dict)   # (shard id, attempt) -> start

    @property
    def usable(self) -> bool:
        return self.status in USABLE_STATUSES


class RunState:
    """Counters and per-machine rows, fed by events. Elapsed time and ETA come from the injected clock.

    Shard states are the scheduler's: ``ShardSettled`` carries the state it settled (passed, failed,
    not run) and whether the shard is flaky, and nothing changes a settled shard afterwards. Until then a
    shard is running, pending (an infra failure, its retry or not-run decision follows) or waiting
    (``ShardRetrying``). Fed events without ``ShardSettled`` (older recordings), the finished attempts
    stand in for it.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.lock = threading.RLock()          # the live display renders from its refresh thread
        self.run_id = ""
        self.strategy = ""
        self.log_dir = ""
        self.expected_makespan: float | None = None
        self.lower_bound: float | None = None
        self.started_at: float | None = None   # injected-clock time of RunStarted
        self.finished_at: float | None = None  # injected-clock time of RunFinished
        self.exit_code: int | None = None
        self.machines: dict[str, MachineView] = {}
        self.shards: dict[str, Shard] = {}
        self.state: dict[str, str] = {}        # shard id -> passed | failed | not-run | waiting | pending
        self.test_failed: set[str] = set()     # shards with at least one tests-failed attempt
        self.flaky: set[str] = set()
        self.retried = 0
        self.durations: list[float] = []       # of finished attempts that ran their tests
        self.settled: set[str] = set()         # shards the scheduler settled (their state is final)
        self.tests_reported: set[str] = set()  # tests warm workers reported finished (node ids)

    # ---- feeding

    def machine(self, name: str) -> MachineView:
        view = self.machines.get(name)
        if view is None:
            view = self.machines[name] = MachineView(name=name, slots=0)
        return view

    def apply(self, event: Event) -> None:
        with self.lock:
            self._apply(event)

    def _apply(self, event: Event) -> None:
        now = event.at                          # the event's own time: a replay shows what was live
        if isinstance(event, RunStarted):
            self.run_id, self.strategy, self.log_dir = event.run_id, event.strategy, event.log_dir
            self.expected_makespan, self.lower_bound = event.expected_makespan, event.lower_bound
            self.started_at, self.finished_at = now, None
            for info in event.machines:
                self.machines[info.name] = MachineView(
                    name=info.name, slots=info.slots, speed=info.speed, status=info.status, reason=info.reason)
            self.shards = {shard.id: shard for shard in event.shards}
        elif isinstance(event, ShardStarted):
            view = self.machine(event.machine)
            view.assigned += 1
            view.running[(event.shard.id, event.attempt)] = now
            self.shards.setdefault(event.shard.id, event.shard)
            if self.state.get(event.shard.id) in ("waiting", "pending"):
                del self.state[event.shard.id]
        elif isinstance(event, ShardFinished):
            self._finished(event)
        elif isinstance(event, TestReported):
            self.tests_reported.add(event.test)
        elif isinstance(event, ShardSettled):
            sid = event.shard.id
            self.shards.setdefault(sid, event.shard)
            self.settled.add(sid)
            self.state[sid] = event.state
            if event.flaky:
                self.flaky.add(sid)
            else:
                self.flaky.discard(sid)
        elif isinstance(event, ShardRetrying):
            self.retried += 1
            if self.state.get(event.shard.id) != "passed" and event.shard.id not in self.settled:
                self.state[event.shard.id] = "waiting"
        elif isinstance(event, ShardNotRun):
            self.shards.setdefault(event.shard.id, event.shard)
            if event.shard.id not in self.settled:
                self.state[event.shard.id] = "not-run"
        elif isinstance(event, MachineStatus):
            view = self.machine(event.machine)
            view.status, view.reason = event.status, event.reason
        elif isinstance(event, RunFinished):
            self.finished_at, self.exit_code = now, event.exit_code

    def _finished(self, event: ShardFinished) -> None:
        view = self.machine(event.machine)
        view.running.pop((event.shard.id, event.attempt), None)
        view.done += 1
        sid = event.shard.id
        self.shards.setdefault(sid, event.shard)
        if sid in self.settled:
            if event.outcome is Outcome.PASSED:
                view.passed += 1
            elif event.outcome is not Outcome.CANCELLED:
                view.failed += 1
            return
        current = self.state.get(sid)
        if event.outcome is Outcome.PASSED:
            view.passed += 1
            self.durations.append(event.duration)
            if sid in self.test_failed:
                self.flaky.add(sid)
            self.state[sid] = "passed"
        elif event.outcome is Outcome.CANCELLED:
            pass
        else:
            view.failed += 1
            if current == "passed":
                return
            if event.outcome is Outcome.TESTS_FAILED:
                self.durations.append(event.duration)
                self.test_failed.add(sid)
                self.state[sid] = "failed"
            elif not self.is_running(sid):
                self.state[sid] = "pending"      # an infra failure: a retry or not-run decision follows

    # ---- reading

    def is_running(self, shard_id: str) -> bool:
        return any(key[0] == shard_id for view in self.machines.values() for key in view.running)

    def elapsed(self) -> float:
        if self.started_at is None:
            return 0.0
        end = self.finished_at if self.finished_at is not None else self.clock()
        return max(0.0, end - self.started_at)

    def count(self, state: str) -> int:
        return sum(1 for value in self.state.values() if value == state)

    @property
    def total(self) -> int:
        return len(self.shards)

    @property
    def done(self) -> int:
        return sum(1 for value in self.state.values() if value in ("passed", "failed", "not-run"))

    @property
    def running(self) -> int:
        return sum(len(view.running) for view in self.machines.values())

    @property
    def slots(self) -> int:
        return sum(view.slots for view in self.machines.values() if view.usable)

    def fraction_done(self) -> float:
        """Progress in [0, 1]: weighted by expected durations when every shard has one.

        Shards still running count for the share of their expected time they have used (at most 95%).
        """
        if not self.shards:
            return 0.0
        terminal = {sid for sid, value in self.state.items() if value in ("passed", "failed", "not-run")}
        expected = [shard.expected for shard in self.shards.values()]
        if any(value is None or value <= 0 for value in expected):
            return len(terminal & self.shards.keys()) / len(self.shards)
        total_work = sum(value for value in expected if value is not None)
        work = 0.0
        now = self.clock()
        partial: dict[str, float] = {}
        for view in self.machines.values():
            for (sid, _attempt), started in view.running.items():
                shard = self.shards.get(sid)
                if shard is None or shard.expected is None or sid in terminal:
                    continue
                share = min(0.95, max(0.0, (now - started) * max(view.speed, 1e-6) / shard.expected))
                partial[sid] = max(partial.get(sid, 0.0), share)
        for sid, shard in self.shards.items():
            assert shard.expected is not None
            work += shard.expected * (1.0 if sid in terminal else partial.get(sid, 0.0))
        return min(1.0, work / total_work)

    def eta(self) -> float | None:
        """Seconds left, or None when nothing is known yet.

        With an expected makespan: what is left of it, scaled up by actual progress when running late.
        Without: mean duration of finished shards × remaining shards / usable slots.
        """
        if self.total and self.done >= self.total:
            return 0.0
        elapsed = self.elapsed()
        expected = self.expected_makespan
        if expected is not None and expected > 0:
            progress = self.fraction_done()
            if progress > 0 and elapsed / expected > progress:          # running late: project actual rate
                return max(0.0, elapsed * (1.0 - progress) / progress)
            if elapsed <= expected:
                return max(0.0, expected - elapsed)
        if not self.durations or not self.slots or not self.total:
            return None
        mean = sum(self.durations) / len(self.durations)
        return mean * (self.total - self.done) / self.slots

    def status_line(self) -> str:
        """``40/96 shards done, 2 failed, 1 retried, 3 running, ETA 1:10``."""
        with self.lock:
            parts = [f"{self.done}/{self.total} shards done", f"{self.count('failed')} failed"]
            if self.tests_reported:
                parts.insert(1, f"{len(self.tests_reported)} tests")
            not_run = self.count("not-run")
            if not_run:
                parts.append(f"{not_run} not run")
            if self.flaky:
                parts.append(f"{len(self.flaky)} flaky")
            parts += [f"{self.retried} retried", f"{self.running} running", f"ETA {_format_eta(self.eta())}"]
            return ", ".join(parts)


# --------------------------------------------------------------------------------------------- live view

_STATUS_STYLES = {"healthy": "green", "degraded": "yellow", "drained": "yellow", "lost": "bold red",
                  "unhealthy": "red", "unreachable": "red"}
_OUTCOME_STYLES = {Outcome.PASSED: "green", Outcome.TESTS_FAILED: "bold red", Outcome.INFRA_FAILED: "bold magenta",
                   Outcome.TIMED_OUT: "bold magenta", Outcome.CANCELLED: "dim"}
_MAX_RUNNING_IDS = 4


class ProgressView:
    """The live area: one row per machine, then the overall bar. Rendered via ``__rich__``."""

    def __init__(self, state: RunState, bar_width: int = 24) -> None:
        self.state = state
        self.bar_width = bar_width

    def __rich__(self) -> RenderableType:
        with self.state.lock:
            return Group(self.machine_table(), self.overall())

    def machine_table(self) -> Table:
        table = Table(box=box.SIMPLE_HEAD, expand=False, pad_edge=False)
        table.add_column("machine", style="bold", no_wrap=True)
        table.add_column("progress", no_wrap=True)
        table.add_column("done", justify="right", no_wrap=True)
        table.add_column("running", no_wrap=True)
        table.add_column("status")
        table.add_column("pass", justify="right", style="green")
        table.add_column("fail", justify="right")
        for view in self.state.machines.values():
            ids = sorted({sid for sid, _attempt in view.running})
            running = " ".join(ids[:_MAX_RUNNING_IDS])
            if len(ids) > _MAX_RUNNING_IDS:
                running += f" +{len(ids) - _MAX_RUNNING_IDS}"
            status = Text(view.status, style=_STATUS_STYLES.get(view.status, ""))
            if view.reason and view.status != "healthy":
                status.append(f": {view.reason}")
            name = Text(view.name, style="bold")
            if view.slots:
                name.append(f" ×{view.slots}", style="dim")
            table.add_row(
                name,
                ProgressBar(total=max(1, view.assigned), completed=view.done, width=self.bar_width),
                f"{view.done}/{view.assigned}",
                running or Text("-", style="dim"),
                status,
                str(view.passed),
                Text(str(view.failed), style="bold red" if view.failed else ""),
            )
        return table

    def overall(self) -> Group:
        state = self.state
        total, done = state.total, state.done
        percent = 100.0 * done / total if total else 0.0
        table = Table.grid(padding=(0, 2))
        table.add_column(no_wrap=True)
        table.add_column(no_wrap=True)
        table.add_column(no_wrap=True)
        table.add_row(
            ProgressBar(total=max(1, total), completed=done, width=self.bar_width + 8),
            Text(f"{done}/{total} shards ({percent:.0f}%)", style="bold"),
            f"elapsed {format_duration(state.elapsed())}  ETA {_format_eta(state.eta())}",
        )
        counts = Text(" " * 2)
        counts.append(f"passed {state.count('passed')}", style="green")
        counts.append(" · ")
        failed = state.count("failed")
        counts.append(f"failed {failed}", style="bold red" if failed else "")
        not_run = state.count("not-run")
        if not_run:
            counts.append(" · ")
            counts.append(f"not run {not_run}", style="bold magenta")
        counts.append(" · ")
        counts.append(f"flaky {len(state.flaky)}", style="yellow" if state.flaky else "")
        counts.append(f" · retried {state.retried} · running {state.running}")
        return Group(table, counts)


# --------------------------------------------------------------------------------------------- renderers


class Renderer(Protocol):
    def start(self) -> None: ...
    def handle(self, event: Event) -> None: ...
    def tick(self) -> None: ...                     # about once a second, events or not
    def finish(self, record: RunRecord) -> None: ...
    def stop(self) -> None: ...


def _is_failure(event: ShardFinished) -> bool:
    return event.outcome in (Outcome.TESTS_FAILED, Outcome.INFRA_FAILED, Outcome.TIMED_OUT)


def _notice_visible(notice: Notice, *, quiet: bool, verbose: bool) -> bool:
    """Errors always; warnings unless quiet; info unless quiet, and per-machine setup output only verbose."""
    if notice.level == "error":
        return True
    if quiet:
        return False
    return notice.level == "warning" or verbose or notice.machine is None


class LiveRenderer:
    """A rich ``Live`` display; events worth keeping are printed above it as they happen."""

    def __init__(self, console: Console, *, stream: bool = False, quiet: bool = False, verbose: bool = False,
                 clock: Callable[[], float] = time.monotonic, refresh_per_second: float = 4.0) -> None:
        self.console = console
        self.stream, self.quiet, self.verbose = stream, quiet, verbose
        self.state = RunState(clock)
        self.view = ProgressView(self.state)
        self.live = Live(self.view, console=console, refresh_per_second=max(2.0, refresh_per_second),
                         transient=False, vertical_overflow="visible")
        self._started = False
        self._stopped = False

    def start(self) -> None:
        if not self._started and not self._stopped:
            self._started = True
            self.live.start()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._started:
            self.live.stop()

    def tick(self) -> None:
        return None                                 # the live display refreshes itself

    def _print(self, *renderables: RenderableType) -> None:
        self.live.console.print(*renderables, soft_wrap=False)

    def handle(self, event: Event) -> None:
        self.state.apply(event)
        if isinstance(event, OutputLine):
            if self.stream:
                line = Text(f"[{event.machine} {event.shard_id}] ", style="dim")
                line.append_text(Text.from_ansi(event.line.rstrip("\r\n")))
                self._print(line)
        elif isinstance(event, ShardStarted):
            if self.verbose:
                note = _attempt_note(event.attempt, event.speculative)
                text = Text(f"{event.machine} {event.shard.id} started{note}", style="dim")
                if event.command:
                    text.append(f": $ {event.command}")
                self._print(text)
        elif isinstance(event, ShardFinished):
            if _is_failure(event):
                self._print(_failure_announcement(event))
        elif isinstance(event, ShardRetrying):
            if not self.quiet:
                self._print(Text(_retry_text(event), style="yellow"))
        elif isinstance(event, ShardNotRun):
            self._print(Text(f"✗ {event.shard.id} not run: {event.reason}", style="bold magenta"))
        elif isinstance(event, MachineStatus):
            if not self.quiet:
                self._print(Text(_machine_text(event), style=_STATUS_STYLES.get(event.status, "")))
        elif isinstance(event, Notice) and _notice_visible(event, quiet=self.quiet, verbose=self.verbose):
            style = {"error": "bold red", "warning": "yellow"}.get(event.level, "dim")
            self._print(Text(_notice_text(event), style=style))

    def finish(self, record: RunRecord) -> None:
        self.stop()
        print_summary(self.console, record, quiet=self.quiet)


def _failure_lines(failures: Sequence[TestFailure], limit: int = FAILURES_SHOWN) -> list[str]:
    """One line per failing test (its id and the first line of its message), then "+N more"."""
    lines = [f"{clean_line(f.name)}: {clean_line(f.message)}" if f.message else clean_line(f.name)
             for f in failures[:limit]]
    if len(failures) > limit:
        lines.append(f"+{len(failures) - limit} more")
    return lines


def _failure_announcement(event: ShardFinished) -> Text:
    style = _OUTCOME_STYLES.get(event.outcome, "bold red")
    text = Text()
    text.append("✗ ", style=style)
    text.append(f"{event.machine} {event.shard.id} ", style="bold")
    text.append(str(event.outcome), style=style)
    detail = _exit_detail(event.exit_status, event.signal)
    text.append(f" after {format_duration(event.duration)}")
    if detail:
        text.append(f" ({detail})")
    text.append(_attempt_note(event.attempt, event.speculative))
    if event.reason:
        text.append(f": {event.reason}")
    for line in _failure_lines(event.failures):
        text.append("\n  ✗ ", style=style)
        text.append(line)
    for line in event.tail[-TAIL_LINES:]:
        text.append("\n  │ ", style="dim")
        text.append_text(Text.from_ansi(line.rstrip("\r\n")))
    if event.log_path:
        text.append("\n  log: ", style="dim")
        text.append(event.log_path)
    return text


def _retry_text(event: ShardRetrying) -> str:
    text = f"↻ {event.shard.id} retrying (attempt {event.next_attempt}) in {format_duration(event.after_s)}"
    if event.avoid:
        text += f", avoiding {event.avoid}"
    return text + (f": {event.reason}" if event.reason else "")


def _machine_text(event: MachineStatus) -> str:
    return f"machine {event.machine} {event.status}" + (f": {event.reason}" if event.reason else "")


def _notice_text(event: Notice) -> str:
    prefix = f"{event.machine}: " if event.machine else ""
    level = f"{event.level}: " if event.level in ("warning", "error") else ""
    return f"{level}{prefix}{event.text}"


class PlainRenderer:
    """Timestamped lines, one per meaningful event; never ANSI, never ``\\r``, nothing re-drawn."""

    def __init__(self, console: Console, *, stream: bool = False, quiet: bool = False, verbose: bool = False,
                 clock: Callable[[], float] = time.monotonic, status_every: float = 30.0) -> None:
        self.console = console
        self.stream, self.quiet, self.verbose = stream, quiet, verbose
        self.clock = clock
        self.status_every = status_every
        self.state = RunState(clock)
        self._t0: float | None = None
        self._status_due: float | None = None
        self._stopped = False
        self._at: float | None = None           # the time of the event being rendered

    # ---- output

    def _write(self, text: str) -> None:
        file = self.console.file
        for line in text.split("\n"):
            file.write(clean_line(line) + "\n")
        file.flush()

    def _now(self) -> float:
        return self.clock() if self._at is None else self._at

    def _stamp(self) -> str:
        now = self._now()
        if self._t0 is None:
            self._t0 = now
        return f"[{format_offset(now - self._t0)}]"

    def _line(self, text: str) -> None:
        self._write(f"{self._stamp()} {text}")

    def _plain_console(self) -> Console:
        return Console(file=self.console.file, force_terminal=False, force_jupyter=False,
                       force_interactive=False, color_system=None, no_color=True, highlight=False,
                       emoji=False, width=max(self.console.width, 140), legacy_windows=False)

    # ---- Renderer

    def start(self) -> None:
        if self._t0 is None:
            self._t0 = self.clock()

    def stop(self) -> None:
        self._stopped = True

    def handle(self, event: Event) -> None:
        self._at = event.at
        try:
            self._handle(event)
        finally:
            self._at = None

    def _handle(self, event: Event) -> None:
        self.state.apply(event)
        if isinstance(event, Tick):
            if not self._stopped:
                self._maybe_status()
            return
        if isinstance(event, RunStarted):
            self._t0 = event.at
            self._status_due = self._t0 + self.status_every if self.status_every > 0 else None
            if not self.quiet:
                self._line(_run_started_text(event))
        elif isinstance(event, OutputLine):
            if self.stream:
                self._write(f"[{event.machine} {event.shard_id}] {clean_line(event.line)}")
        elif isinstance(event, ShardStarted):
            if self.verbose:
                self._line(f"{event.machine} {event.shard.id} started"
                           f"{_attempt_note(event.attempt, event.speculative)}")
                if event.command:
                    self._write(f"    $ {event.command}")
        elif isinstance(event, ShardFinished):
            self._shard_finished(event)
        elif isinstance(event, ShardRetrying):
            if not self.quiet:
                self._line(_retry_text(event).removeprefix("↻ "))
        elif isinstance(event, ShardNotRun):
            self._line(f"{event.shard.id} not run: {event.reason}")
        elif isinstance(event, MachineStatus):
            if not self.quiet:
                self._line(_machine_text(event))
        elif isinstance(event, Notice):
            if _notice_visible(event, quiet=self.quiet, verbose=self.verbose):
                self._line(_notice_text(event))
        elif isinstance(event, RunFinished):
            self._status_due = None
            return
        self._maybe_status()

    def _shard_finished(self, event: ShardFinished) -> None:
        head = (f"{event.machine} {event.shard.id} {event.outcome} in {format_duration(event.duration)}"
                f"{_attempt_note(event.attempt, event.speculative)}")
        if event.outcome is Outcome.PASSED:
            if not self.quiet:
                self._line(head)
            return
        if event.outcome is Outcome.CANCELLED:
            if not self.quiet:
                self._line(head + (f": {event.reason}" if event.reason else ""))
            return
        detail = _exit_detail(event.exit_status, event.signal)
        if detail:
            head += f" ({detail})"
        if event.reason:
            head += f": {event.reason}"
        lines = [f"{self._stamp()} {head}"]
        lines += [f"    x {line}" for line in _failure_lines(event.failures)]
        lines += [f"    | {clean_line(line)}" for line in event.tail[-TAIL_LINES:]]
        if event.log_path:
            lines.append(f"    log: {event.log_path}")
        self._write("\n".join(lines))

    def tick(self) -> None:
        """A long shard with no output still gets the periodic status line."""
        if not self._stopped:
            self._maybe_status()

    def _maybe_status(self) -> None:
        if self._status_due is None or self.quiet:
            return
        now = self._now()
        if now < self._status_due:
            return
        self._line(f"status: {self.state.status_line()}")
        while self._status_due <= now:
            self._status_due += self.status_every

    def finish(self, record: RunRecord) -> None:
        self.stop()
        print_summary(self._plain_console(), record, quiet=self.quiet)


def _run_started_text(event: RunStarted) -> str:
    machines = []
    for info in event.machines:
        item = f"{info.name}×{info.slots}"
        if info.status != "healthy":
            item += f" ({info.status}" + (f": {info.reason})" if info.reason else ")")
        machines.append(item)
    usable = [info for info in event.machines if info.status in USABLE_STATUSES]
    text = (f"run {event.run_id}: {len(event.shards)} shards on {len(usable)} machine"
            f"{'s' if len(usable) != 1 else ''} ({', '.join(machines)}), strategy {event.strategy}")
    if event.expected_makespan is not None:
        text += f", expected makespan {format_duration(event.expected_makespan)}"
        if event.lower_bound is not None:
            text += f" (lower bound {format_duration(event.lower_bound)})"
    return text


# --------------------------------------------------------------------------------------------- summary


def _shown_attempt(shard: ShardRecord, attempts: Sequence[AttemptRecord]) -> AttemptRecord | None:
    """The attempt whose result the shard carries, else (all cancelled) its last one, for the log path."""
    return deciding_attempt(shard, attempts) or (attempts[-1] if attempts else None)


def verdict_line(record: RunRecord) -> str:
    """``PASSED: 40 shards in 3:12 (exit 0)``, ``FAILED: 2 of 40 shards failed (exit 1)``, …"""
    counts = record.counts()
    code = record.exit_code
    total, failed, not_run = counts["shards"], counts["failed"], counts["not_run"]
    if code == EXIT_OK:
        flaky = f", {counts['flaky']} flaky" if counts["flaky"] else ""
        return f"PASSED: {total} shards in {format_duration(record.duration)}{flaky} (exit {code})"
    if code == EXIT_TESTS_FAILED:
        extra = f", {not_run} not run" if not_run else ""
        return f"FAILED: {failed} of {total} shards failed{extra} (exit {code})"
    if code == EXIT_INFRA:
        text = f"INFRA: {_plural(not_run, 'shard')} not run" if not_run else "INFRA: infrastructure failure"
        if failed:
            text += f", {failed} failed"
        return f"{text} (exit {code})"
    if code == EXIT_INTERRUPTED:
        return f"INTERRUPTED (exit {code})"
    if code == EXIT_USAGE:
        return f"ERROR (exit {code})"
    return f"EXIT {code}"


def _verdict_style(code: int) -> str:
    return {EXIT_OK: "bold green", EXIT_TESTS_FAILED: "bold red", EXIT_INFRA: "bold magenta"}.get(code, "bold yellow")


def _machine_table(record: RunRecord) -> Table:
    """The per-machine table of the summary. Fits 80 columns: short headers, and a machine's reason for
    its status goes on a line below the table (:func:`_machine_reasons`), not into a column."""
    wall = record.duration
    # One space between columns (the box's separator, no padding): ten columns and a 15-character machine
    # name fit 80 columns; a longer name folds within its column.
    table = Table(title="machines", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 0))
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("machine", "left"), ("slots", "right"), ("status", "left"), ("shards", "right"), ("pass", "right"),
        ("fail", "right"), ("infra", "right"), ("retry", "right"), ("busy", "right"), ("util", "right"))
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=name != "machine",
                         overflow="fold" if name == "machine" else "ellipsis")
    for row in machine_summaries(record):
        util = row.utilisation(wall)
        table.add_row(row.name, str(row.slots), Text(row.status, style=_STATUS_STYLES.get(row.status, "")),
                      str(row.shards), str(row.passed), str(row.failed), str(row.infra), str(row.retries),
                      format_duration(row.busy), "-" if util is None else f"{100 * util:.0f}%")
    return table


def _machine_reasons(record: RunRecord) -> list[Text]:
    lines = []
    for row in machine_summaries(record):
        if row.reason and row.status != "healthy":
            line = Text(f"  {row.name} ")
            line.append(row.status, style=_STATUS_STYLES.get(row.status, ""))
            line.append(f": {row.reason}")
            lines.append(line)
    return lines


def summary_renderables(record: RunRecord, *, quiet: bool = False) -> list[RenderableType]:
    """Everything :func:`print_summary` prints, in order, as renderables."""
    from .results import exit_code_description

    out: list[RenderableType] = []
    counts = record.counts()
    if not quiet:
        out.append(Text())
        out.append(Text(f"run {record.run_id}  {fmt_time(record.started, date=True)}  "
                        f"{exit_code_description(record.exit_code)}"))
        if record.machines or record.attempts:
            out.append(_machine_table(record))
            out.extend(_machine_reasons(record))
        parts = [f"{counts['shards']} shards: {counts['passed']} passed", f"{counts['failed']} failed",
                 f"{counts['not_run']} not run", f"{counts['flaky']} flaky", f"{counts['retries']} retried"]
        out.append(Text(", ".join(parts)))
        span = record.makespan                                  # first shard start to last shard end
        timing = f"makespan {format_duration(record.duration if span is None else span)}"
        if record.expected_makespan is not None:
            timing += f" (expected {format_duration(record.expected_makespan)}"
            if record.lower_bound is not None:
                timing += f", lower bound {format_duration(record.lower_bound)}"
            timing += ")"
        elif record.lower_bound is not None:
            timing += f" (lower bound {format_duration(record.lower_bound)})"
        out.append(Text(timing))
    by_shard = attempts_by_shard(record)
    named_tests = failed_tests_by_shard(record)
    failed = [s for s in record.shards if s.state == "failed"]
    if failed:
        out.append(Text(f"failures ({len(failed)}):", style="bold red"))
        for shard in failed:
            attempt = _shown_attempt(shard, by_shard.get(shard.id, []))
            line = Text(f"  {shard.id}")
            if attempt is not None:
                line.append(f" on {attempt.machine} ({attempt.outcome}")
                detail = _exit_detail(attempt.exit_status, attempt.signal)
                line.append(f", {detail})" if detail else ")")
            reason = shard.reason or (attempt.reason if attempt else "")
            if reason:
                line.append(f": {reason}")
            if attempt is not None and attempt.log_path:
                line.append(f"  log: {attempt.log_path}", style="dim")
            out.append(line)
            for named in _failure_lines(named_tests.get(shard.id, [])):
                out.append(Text(f"    ✗ {named}"))
            if not quiet and attempt is not None and attempt.log_path:
                tail = tail_lines(local_path(attempt.log_path, record), TERMINAL_TAIL_LINES)
                for text in tail or []:
                    out.append(Text(f"    │ {clean_line(text)}", style="dim"))
    not_run = [s for s in record.shards if s.state == "not-run"]
    if not_run:
        out.append(Text(f"not run ({len(not_run)}):", style="bold magenta"))
        by_reason: dict[str, list[str]] = {}
        for shard in not_run:               # one line per reason: 40 shards not run for one cause are one line
            by_reason.setdefault(shard.reason or "not run", []).append(shard.id)
        for reason, ids in by_reason.items():
            if len(ids) == 1:
                shard = next(s for s in not_run if s.id == ids[0])
                attempt = _shown_attempt(shard, by_shard.get(shard.id, []))
                line = Text(f"  {shard.id}: {reason}")
                if attempt is not None and attempt.log_path:
                    line.append(f"  log: {attempt.log_path}", style="dim")
            else:
                shown = " ".join(ids) if len(ids) <= 12 else " ".join(ids[:10]) + f" … ({len(ids) - 10} more)"
                line = Text(f"  {_plural(len(ids), 'shard')} ({shown}): {reason}")
            out.append(line)
    if not quiet:
        flaky_shards = [s.id for s in record.shards if s.flaky]
        flaky_tests = [t for t in record.tests if t.flaky]
        if flaky_shards or flaky_tests:
            out.append(Text(f"flaky ({_plural(len(flaky_shards), 'shard')}, {_plural(len(flaky_tests), 'test')}):",
                            style="yellow"))
            if flaky_shards:
                out.append(Text(f"  shards: {' '.join(flaky_shards)}"))
            for test in flaky_tests:
                name = f"{test.classname}::{test.name}" if test.classname else test.name
                out.append(Text(f"  {name} ({test.shard_id} on {test.machine})"))
        for note in record.notes:
            out.append(Text(f"note: {note}", style="dim"))
    out.append(Text(verdict_line(record), style=_verdict_style(record.exit_code)))
    return out


def print_summary(console: Console, record: RunRecord, *, quiet: bool = False) -> None:
    """Print the end-of-run summary and the verdict line."""
    for renderable in summary_renderables(record, quiet=quiet):
        console.print(renderable, highlight=False)


# --------------------------------------------------------------------------------------------- factory


def make_renderer(*, console: Console | None = None, live: bool | None = None, stream: bool = False,
                  quiet: bool = False, verbose: bool = False, clock: Callable[[], float] = time.monotonic,
                  status_every: float = 30.0) -> Renderer:
    """A live renderer on a terminal (or when ``live=True``), else plain lines (``live=False``: --no-live)."""
    if console is None:
        console = make_console()
    use_live = console.is_terminal if live is None else live
    if use_live:
        return LiveRenderer(console, stream=stream, quiet=quiet, verbose=verbose, clock=clock)
    return PlainRenderer(console, stream=stream, quiet=quiet, verbose=verbose, clock=clock,
                         status_every=status_every)


def feed(renderer: Renderer, events: Iterable[Event]) -> None:
    """Hand every event to a renderer in order (a convenience for replays and tests)."""
    for event in events:
        renderer.handle(event)
