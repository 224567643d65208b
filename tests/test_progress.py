"""Progress renderers fed with synthetic events and a fake clock."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator

import pytest
from rich.console import Console

from fleetshard.events import (
    Event,
    MachineInfo,
    MachineStatus,
    Notice,
    OutputLine,
    RunFinished,
    RunStarted,
    ShardFinished,
    ShardNotRun,
    ShardRetrying,
    ShardStarted,
)
from fleetshard.model import Outcome, Shard
from fleetshard.progress import (
    LiveRenderer,
    PlainRenderer,
    RunState,
    clean_line,
    feed,
    format_duration,
    format_offset,
    machine_summaries,
    make_renderer,
    verdict_line,
)
from fleetshard.record import AttemptRecord, MachineRecord, RunRecord, ShardRecord, TestRecord

ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
T0 = 1000.0


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def at(self, offset: float) -> float:
        """Move to ``T0 + offset`` and return that time (for an event's ``at``)."""
        self.now = T0 + offset
        return self.now


def shards(n: int, expected: float | None = 10.0) -> tuple[Shard, ...]:
    return tuple(Shard(id=f"s{i:03d}", index=i, total=n, expected=expected) for i in range(1, n + 1))


MACHINES = (MachineInfo("h1", 2, 1.0), MachineInfo("h2", 2, 1.0), MachineInfo("h3", 1, 0.5))


def run_started(clock: FakeClock, all_shards: tuple[Shard, ...], expected: float | None = 100.0,
                machines: tuple[MachineInfo, ...] = MACHINES) -> RunStarted:
    return RunStarted(run_id="r1", machines=machines, shards=all_shards, strategy="dynamic",
                      expected_makespan=expected, lower_bound=None if expected is None else expected * 0.9,
                      log_dir="/runs/r1", at=clock.at(0))


def started(clock: FakeClock, machine: str, shard: Shard, offset: float, attempt: int = 1) -> ShardStarted:
    return ShardStarted(machine=machine, shard=shard, attempt=attempt, command=f"pytest {shard.id}.py",
                        log_path=f"/runs/r1/{shard.id}-{attempt}.log", at=clock.at(offset))


def finished(clock: FakeClock, machine: str, shard: Shard, start: float, end: float, outcome: Outcome,
             attempt: int = 1, reason: str = "", tail: tuple[str, ...] = ()) -> ShardFinished:
    exit_status = {Outcome.PASSED: 0, Outcome.TESTS_FAILED: 1}.get(outcome)
    return ShardFinished(machine=machine, shard=shard, attempt=attempt, outcome=outcome, exit_status=exit_status,
                         signal=None, reason=reason, started_at=T0 + start, at=clock.at(end),
                         log_path=f"/runs/r1/{shard.id}-{attempt}.log", tail=tail)


def scenario(clock: FakeClock) -> Iterator[Event]:
    """Six shards on h1, h2, h3: one pass, a test failure retried into a flaky pass, h3 lost."""
    sh = shards(6)
    yield run_started(clock, sh)
    yield started(clock, "h1", sh[0], 0)
    yield started(clock, "h2", sh[1], 0)
    yield started(clock, "h3", sh[2], 0)
    yield OutputLine("h1", "s001", 1, "collected 3 items", clock.at(1))
    yield finished(clock, "h1", sh[0], 0, 10, Outcome.PASSED)
    tail = (*(f"line {i}" for i in range(1, 16)), "E   assert 1 == 2")
    yield finished(clock, "h2", sh[1], 0, 12, Outcome.TESTS_FAILED, reason="1 test failed", tail=tail)
    yield ShardRetrying(sh[1], 2, 0.0, None, "retry failed tests", clock.at(12))
    yield MachineStatus("h3", "lost", "connection reset by peer", clock.at(15))
    yield finished(clock, "h3", sh[2], 0, 15, Outcome.INFRA_FAILED, reason="connection lost")
    yield ShardRetrying(sh[2], 2, 5.0, "h3", "connection lost", clock.at(15))
    yield started(clock, "h1", sh[1], 16, attempt=2)
    yield finished(clock, "h1", sh[1], 16, 26, Outcome.PASSED, attempt=2)
    yield started(clock, "h2", sh[2], 27, attempt=2)
    yield started(clock, "h1", sh[3], 28)


def render(renderable: object, width: int = 120) -> str:
    console = Console(file=io.StringIO(), force_terminal=True, width=width)
    console.print(renderable)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(out, str)
    return ANSI.sub("", out)


def live_renderer(clock: FakeClock, **kwargs: bool) -> tuple[LiveRenderer, io.StringIO]:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    renderer = make_renderer(console=console, clock=clock, **kwargs)
    assert isinstance(renderer, LiveRenderer)
    return renderer, buf


def plain_renderer(clock: FakeClock, **kwargs: bool) -> tuple[PlainRenderer, io.StringIO]:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)   # a terminal, but --no-live
    renderer = make_renderer(console=console, live=False, clock=clock, **kwargs)
    assert isinstance(renderer, PlainRenderer)
    return renderer, buf


# --------------------------------------------------------------------------------------------- formatting


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0.0s"), (12.34, "12.3s"), (59.94, "59.9s"), (59.96, "1:00"), (65, "1:05"), (192, "3:12"),
    (3723, "1:02:03"), (-4, "0.0s"), (float("inf"), "?"),
])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_offset() -> None:
    assert format_offset(0) == "+00:00"
    assert format_offset(65.9) == "+01:05"
    assert format_offset(3725) == "+62:05"


def test_clean_line_strips_escapes_and_carriage_returns() -> None:
    assert clean_line("\x1b[31mred\x1b[0m text\r\n") == "red text"
    assert clean_line(" 10%\r 50%\r100%") == "100%"
    assert clean_line("a\x07b\tc") == "ab    c"


# --------------------------------------------------------------------------------------------- live


def test_live_rows_failure_announcement_lost_machine_and_counts() -> None:
    clock = FakeClock()
    renderer, buf = live_renderer(clock)
    feed(renderer, scenario(clock))
    clock.at(30)
    table = render(renderer.view)

    rows = {name: line for line in table.splitlines() for name in ("h1", "h2", "h3")
            if line.strip().startswith(name)}
    assert set(rows) == {"h1", "h2", "h3"}
    assert "2/3" in rows["h1"] and "s004" in rows["h1"] and "healthy" in rows["h1"]
    assert "1/2" in rows["h2"] and "s003" in rows["h2"]
    assert "lost: connection reset by peer" in rows["h3"]
    assert "flaky 1" in table and "retried 2" in table and "passed 2" in table and "failed 0" in table
    assert "2/6 shards (33%)" in table
    assert "elapsed 30.0s" in table

    announced = ANSI.sub("", buf.getvalue())
    assert "h2 s002 tests-failed after 12.0s (exit 1): 1 test failed" in announced
    assert "E   assert 1 == 2" in announced and "line 15" in announced
    assert "line 6\n" not in announced                       # only the last ten lines of the tail
    assert "log: /runs/r1/s002-1.log" in announced
    assert "h3 s003 infra-failed" in announced and "connection lost" in announced
    assert "s003 retrying (attempt 2) in 5.0s, avoiding h3" in announced
    assert "machine h3 lost: connection reset by peer" in announced
    assert "collected 3 items" not in announced               # not streaming
    assert "s001 passed" not in announced                      # passes are not announced


def test_live_eta_from_expected_makespan() -> None:
    clock = FakeClock()
    renderer, _ = live_renderer(clock)
    renderer.handle(run_started(clock, shards(4), expected=100.0))
    clock.at(40)
    assert "ETA 1:00" in render(renderer.view)              # 100 - 40, nothing late yet
    clock.at(130)
    assert "ETA ?" in render(renderer.view)                  # past the plan with nothing done


def test_eta_scales_when_running_late() -> None:
    clock = FakeClock()
    state = RunState(clock)
    sh = shards(4)
    state.apply(run_started(clock, sh, expected=100.0))
    for shard in sh[:2]:
        state.apply(started(clock, "h1", shard, 0))
        state.apply(finished(clock, "h1", shard, 0, 75, Outcome.PASSED))
    clock.at(75)                                             # half done at 75% of the plan
    eta = state.eta()
    assert eta == pytest.approx(75.0)
    clock.at(40)
    assert state.eta() == pytest.approx(60.0)                # ahead of the plan: what is left of it


def test_eta_without_expected_makespan_uses_mean_duration() -> None:
    clock = FakeClock()
    state = RunState(clock)
    sh = shards(6, expected=None)
    state.apply(run_started(clock, sh, expected=None))
    assert state.eta() is None
    state.apply(started(clock, "h1", sh[0], 0))
    state.apply(started(clock, "h2", sh[1], 0))
    state.apply(finished(clock, "h1", sh[0], 0, 10, Outcome.PASSED))
    state.apply(finished(clock, "h2", sh[1], 0, 20, Outcome.PASSED))
    # mean 15s × 4 remaining / 5 slots
    assert state.eta() == pytest.approx(12.0)
    state.apply(MachineStatus("h2", "drained", "2 infra failures", clock.at(20)))
    assert state.eta() == pytest.approx(15.0 * 4 / 3)


def test_state_counts_speculation_infra_failures_and_not_run() -> None:
    clock = FakeClock()
    state = RunState(clock)
    sh = shards(3, expected=None)
    state.apply(run_started(clock, sh, expected=None))
    state.apply(started(clock, "h1", sh[0], 0))
    state.apply(ShardStarted("h2", sh[0], 1, "pytest", "/runs/r1/s001-1b.log", clock.at(5), speculative=True))
    state.apply(finished(clock, "h2", sh[0], 5, 9, Outcome.PASSED))
    state.apply(finished(clock, "h1", sh[0], 0, 9, Outcome.CANCELLED, reason="lost the race"))
    state.apply(started(clock, "h1", sh[1], 10))
    state.apply(finished(clock, "h1", sh[1], 10, 12, Outcome.TIMED_OUT, reason="timeout"))
    assert (state.count("passed"), state.count("failed"), state.done, state.running) == (1, 0, 1, 0)
    assert (state.machines["h1"].done, state.machines["h1"].failed, state.machines["h2"].passed) == (2, 1, 1)
    state.apply(ShardNotRun(sh[1], "retries exhausted", clock.at(13)))
    assert (state.count("not-run"), state.done) == (1, 2)
    assert "2/3 shards done, 0 failed, 1 not run, 0 retried, 0 running" in state.status_line()


def test_live_stream_tags_output_lines() -> None:
    clock = FakeClock()
    renderer, buf = live_renderer(clock, stream=True)
    feed(renderer, scenario(clock))
    assert "[h1 s001] collected 3 items" in ANSI.sub("", buf.getvalue())


def test_live_start_finish_and_idempotent_stop() -> None:
    clock = FakeClock()
    renderer, buf = live_renderer(clock)
    renderer.start()
    try:
        feed(renderer, scenario(clock))
        renderer.handle(ShardNotRun(shards(6)[4], "no healthy machine left", clock.at(40)))
        renderer.handle(Notice("h2 is swapping", clock.at(41), level="warning", machine="h2"))
        renderer.handle(Notice("setup: pip install done", clock.at(41), machine="h2"))
    finally:
        renderer.stop()
    renderer.stop()
    renderer.finish(failed_record())
    out = ANSI.sub("", buf.getvalue())
    assert "s005 not run: no healthy machine left" in out
    assert "warning: h2: h2 is swapping" in out
    assert "pip install done" not in out                      # setup output only when verbose
    assert "FAILED: 1 of 4 shards failed (exit 1)" in out
    assert not renderer.live.is_started


def test_make_renderer_follows_the_terminal() -> None:
    terminal = Console(file=io.StringIO(), force_terminal=True)
    pipe = Console(file=io.StringIO(), force_terminal=False)
    assert isinstance(make_renderer(console=terminal), LiveRenderer)
    assert isinstance(make_renderer(console=pipe), PlainRenderer)
    assert isinstance(make_renderer(console=terminal, live=False), PlainRenderer)
    assert isinstance(make_renderer(console=pipe, live=True), LiveRenderer)


# --------------------------------------------------------------------------------------------- plain


def test_plain_lines_are_timestamped_and_free_of_escapes() -> None:
    clock = FakeClock()
    renderer, buf = plain_renderer(clock, stream=True)
    renderer.start()
    feed(renderer, scenario(clock))
    renderer.handle(OutputLine("h1", "s004", 1, "\x1b[32m 50%\r100%\x1b[0m", clock.at(29)))
    renderer.finish(failed_record())
    out = buf.getvalue()
    assert "\x1b" not in out and "\r" not in out
    lines = out.splitlines()
    assert lines[0] == ("[+00:00] run r1: 6 shards on 3 machines (h1×2, h2×2, h3×1), strategy dynamic, "
                        "expected makespan 1:40 (lower bound 1:30)")
    assert "[+00:10] h1 s001 passed in 10.0s" in lines
    assert "[+00:12] h2 s002 tests-failed in 12.0s (exit 1): 1 test failed" in lines
    assert "    | E   assert 1 == 2" in lines
    assert "    log: /runs/r1/s002-1.log" in lines
    assert "[+00:15] machine h3 lost: connection reset by peer" in lines
    assert "[+00:15] s003 retrying (attempt 2) in 5.0s, avoiding h3: connection lost" in lines
    assert "[+00:26] h1 s002 passed in 10.0s (attempt 2)" in lines
    assert "[h1 s001] collected 3 items" in lines
    assert "[h1 s004] 100%" in lines
    assert not any("started" in line for line in lines)      # shard starts only when verbose


def test_plain_periodic_status_line() -> None:
    clock = FakeClock()
    renderer, buf = plain_renderer(clock)
    feed(renderer, scenario(clock))                           # last event at +00:28
    assert "status:" not in buf.getvalue()
    renderer.handle(OutputLine("h1", "s004", 1, "still going", clock.at(31)))
    renderer.handle(OutputLine("h1", "s004", 1, "still going", clock.at(35)))
    statuses = [line for line in buf.getvalue().splitlines() if "status:" in line]
    # ETA 100 - 31: the running shards' share of their expected time puts the run ahead of plan
    assert statuses == ["[+00:31] status: 2/6 shards done, 0 failed, 1 flaky, 2 retried, 2 running, ETA 1:09"]
    renderer.handle(ShardNotRun(shards(6)[5], "cancelled", clock.at(61)))
    statuses = [line for line in buf.getvalue().splitlines() if "status:" in line]
    assert len(statuses) == 2 and statuses[1].startswith("[+01:01] status: 3/6 shards done")


def test_plain_quiet_suppresses_passes() -> None:
    clock = FakeClock()
    renderer, buf = plain_renderer(clock, quiet=True)
    feed(renderer, scenario(clock))
    renderer.handle(Notice("lost 3 machines", clock.at(40), level="error"))
    renderer.handle(Notice("slow disk", clock.at(40), level="warning"))
    clock.at(100)
    renderer.finish(failed_record())
    out = buf.getvalue()
    assert "passed in" not in out
    assert "run r1" not in out and "retrying" not in out and "status:" not in out and "slow disk" not in out
    assert "h2 s002 tests-failed" in out and "error: lost 3 machines" in out
    assert "utilisation" not in out and "slots" not in out    # no summary table
    assert out.rstrip().splitlines()[-1] == "FAILED: 1 of 4 shards failed (exit 1)"


def test_plain_verbose_shows_starts_and_commands() -> None:
    clock = FakeClock()
    renderer, buf = plain_renderer(clock, verbose=True)
    feed(renderer, scenario(clock))
    renderer.handle(Notice("pip install done", clock.at(29), machine="h1"))
    lines = buf.getvalue().splitlines()
    assert "[+00:00] h1 s001 started" in lines
    assert "    $ pytest s001.py" in lines
    assert "[+00:16] h1 s002 started (attempt 2)" in lines
    assert "[+00:29] h1: pip install done" in lines


def test_plain_stops_status_after_run_finished() -> None:
    clock = FakeClock()
    renderer, buf = plain_renderer(clock)
    feed(renderer, scenario(clock))
    renderer.handle(RunFinished(exit_code=1, at=clock.at(40)))
    renderer.handle(Notice("collecting results", clock.at(45)))
    assert "status:" not in buf.getvalue()


# --------------------------------------------------------------------------------------------- finish


def attempt(shard_id: str, n: int, machine: str, outcome: str, start: float, end: float,
            exit_status: int | None = 0, reason: str = "") -> AttemptRecord:
    return AttemptRecord(shard_id=shard_id, attempt=n, machine=machine, outcome=outcome, started=start,
                         ended=end, exit_status=exit_status, reason=reason,
                         log_path=f"/runs/r1/{shard_id}-{n}.log")


def shard_record(shard_id: str, state: str, reason: str = "", flaky: bool = False) -> ShardRecord:
    index = int(shard_id[1:])
    return ShardRecord(id=shard_id, index=index, total=4, files=[], expected=10.0, state=state, reason=reason,
                       flaky=flaky)


def make_record(exit_code: int, shard_records: list[ShardRecord], attempts: list[AttemptRecord],
                **kwargs: object) -> RunRecord:
    record = RunRecord(run_id="r1", started=0.0, ended=100.0, argv=["fleetshard", "run"], inventory="m.yaml",
                       strategy="dynamic", mode="files", command="pytest {files}", exit_code=exit_code,
                       machines=[MachineRecord("h1", 2, 1.0, "healthy"), MachineRecord("h2", 1, 1.0, "healthy"),
                                 MachineRecord("h3", 1, 0.5, "lost", "connection reset by peer")],
                       shards=shard_records, attempts=attempts)
    for key, value in kwargs.items():
        setattr(record, key, value)
    return record


def failed_record() -> RunRecord:
    return make_record(
        1,
        [shard_record("s001", "passed"), shard_record("s002", "failed", "1 test failed"),
         shard_record("s003", "passed", flaky=True), shard_record("s004", "passed")],
        [attempt("s001", 1, "h1", "passed", 0, 50), attempt("s002", 1, "h2", "tests-failed", 0, 80, 1),
         attempt("s003", 1, "h3", "infra-failed", 0, 20, None, "connection lost"),
         attempt("s003", 2, "h1", "tests-failed", 20, 40, 1), attempt("s003", 3, "h1", "passed", 50, 100),
         attempt("s004", 1, "h1", "passed", 40, 90)],
        tests=[TestRecord("test_flip", "tests.test_x", "tests/test_x.py", 1.0, "passed", "s003", 3, "h1",
                          flaky=True)],
        expected_makespan=90.0, lower_bound=80.0)


def test_machine_summaries_and_utilisation() -> None:
    rows = {row.name: row for row in machine_summaries(failed_record())}
    assert (rows["h1"].shards, rows["h1"].passed, rows["h1"].failed, rows["h1"].retries) == (4, 3, 1, 2)
    assert rows["h1"].busy == pytest.approx(170.0)
    assert rows["h1"].utilisation(100.0) == pytest.approx(0.85)
    assert rows["h3"].infra == 1 and rows["h3"].utilisation(100.0) == pytest.approx(0.2)
    assert rows["h2"].utilisation(0.0) is None


def test_finish_plain_summary() -> None:
    clock = FakeClock()
    renderer, buf = plain_renderer(clock)
    renderer.finish(failed_record())
    out = buf.getvalue()
    assert "\x1b" not in out and "\r" not in out
    lines = out.splitlines()
    h1 = next(line for line in lines if line.strip().startswith("h1"))
    assert h1.split() == ["h1", "2", "healthy", "4", "3", "1", "0", "2", "2:50", "85%"]
    h3 = next(line for line in lines if line.strip().startswith("h3"))
    assert h3.split()[-1] == "20%" and "  h3 lost: connection reset by peer" in lines
    assert "4 shards: 3 passed, 1 failed, 0 not run, 1 flaky, 2 retried" in lines
    assert "makespan 1:40 (expected 1:30, lower bound 1:20)" in lines
    assert any("s002 on h2 (tests-failed, exit 1): 1 test failed" in line and "log: /runs/r1/s002-1.log" in line
               for line in lines)
    assert "flaky (1 shard, 1 test):" in lines
    assert "  shards: s003" in lines
    assert "  tests.test_x::test_flip (s003 on h1)" in lines
    assert lines[-1] == "FAILED: 1 of 4 shards failed (exit 1)"


def test_finish_lists_shards_not_run() -> None:
    clock = FakeClock()
    renderer, buf = plain_renderer(clock)
    record = make_record(
        3, [shard_record("s001", "passed"), shard_record("s002", "not-run", "infra failures exhausted retries"),
            shard_record("s003", "not-run", "no healthy machine"), shard_record("s004", "not-run", "cancelled")],
        [attempt("s001", 1, "h1", "passed", 0, 50),
         attempt("s002", 1, "h3", "infra-failed", 0, 5, None, "connection lost")])
    renderer.finish(record)
    lines = buf.getvalue().splitlines()
    assert "not run (3):" in lines
    assert "  s002: infra failures exhausted retries  log: /runs/r1/s002-1.log" in lines
    assert "  s003: no healthy machine" in lines
    assert lines[-1] == "INFRA: 3 shards not run (exit 3)"


@pytest.mark.parametrize(("exit_code", "states", "verdict"), [
    (0, ["passed"] * 4, "PASSED: 4 shards in 1:40 (exit 0)"),
    (1, ["passed", "failed", "failed", "passed"], "FAILED: 2 of 4 shards failed (exit 1)"),
    (3, ["passed", "not-run", "not-run", "not-run"], "INFRA: 3 shards not run (exit 3)"),
    (130, ["passed", "passed", "not-run", "not-run"], "INTERRUPTED (exit 130)"),
])
def test_verdict_line(exit_code: int, states: list[str], verdict: str) -> None:
    record = make_record(exit_code, [shard_record(f"s{i:03d}", s) for i, s in enumerate(states, 1)], [])
    assert verdict_line(record) == verdict


def test_finish_live_prints_colored_summary_with_verdict() -> None:
    clock = FakeClock()
    renderer, buf = live_renderer(clock)
    record = make_record(0, [shard_record(f"s{i:03d}", "passed") for i in range(1, 5)],
                         [attempt(f"s{i:03d}", 1, "h1", "passed", 0, 50) for i in range(1, 5)])
    renderer.finish(record)
    out = ANSI.sub("", buf.getvalue())
    assert "machines" in out and "100%" in out
    assert out.rstrip().splitlines()[-1] == "PASSED: 4 shards in 1:40 (exit 0)"


def test_plain_status_line_comes_on_ticks_without_events() -> None:
    clock = FakeClock()
    renderer, buf = plain_renderer(clock)
    feed(renderer, scenario(clock))                           # last event at +00:28
    clock.at(31)
    renderer.tick()                                           # a long shard, no output: still a status
    status = next(line for line in buf.getvalue().splitlines() if "status:" in line)
    assert status.startswith("[+00:31] status:")
