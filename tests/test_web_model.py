"""The live page's event-to-view model: pure, fed recorded events, no browser and no network."""

from __future__ import annotations

import json
from typing import Any

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
from fleetshard.web.model import FailedTest, LiveModel, apply_delta, attempt_key

T0 = 1000.0
SHARDS = tuple(Shard(id=f"s{i:03d}", index=i, total=4, files=(f"tests/t{i}.py",), expected=10.0) for i in range(1, 5))


def started(at: float = 0.0, shards: tuple[Shard, ...] = SHARDS, expected: float | None = 20.0) -> RunStarted:
    return RunStarted(run_id="r1", machines=(MachineInfo("h1", 2, 1.0), MachineInfo("h2", 1, 2.0),
                                             MachineInfo("h3", 0, 1.0, status="unreachable", reason="refused")),
                      shards=shards, strategy="dynamic", expected_makespan=expected, lower_bound=13.3,
                      log_dir="/tmp/logs", at=T0 + at)


def start(shard: Shard, machine: str, at: float, attempt: int = 1) -> ShardStarted:
    return ShardStarted(machine=machine, shard=shard, attempt=attempt, command="pytest", log_path="/l",
                        at=T0 + at)


def finish(shard: Shard, machine: str, began: float, at: float, outcome: Outcome = Outcome.PASSED,
           attempt: int = 1, **kw: Any) -> ShardFinished:
    return ShardFinished(machine=machine, shard=shard, attempt=attempt, outcome=outcome,
                         exit_status=0 if outcome is Outcome.PASSED else 1, signal=None,
                         reason="" if outcome is Outcome.PASSED else "exit code 1", started_at=T0 + began,
                         at=T0 + at, log_path="/l", **kw)


def a_run() -> list[Event]:
    s1, s2, s3, s4 = SHARDS
    return [
        Notice(text="probing", at=T0 - 1),
        started(),
        start(s1, "h1", 0.1), start(s2, "h1", 0.2), start(s3, "h2", 0.3),
        OutputLine(machine="h1", shard_id="s001", attempt=1, line="\x1b[32mok\x1b[0m test_a", at=T0 + 1),
        finish(s3, "h2", 0.3, 5.0),
        start(s4, "h2", 5.1),
        finish(s1, "h1", 0.1, 9.0, Outcome.TESTS_FAILED, tail=("E assert 1 == 2",)),
        ShardRetrying(shard=s2, next_attempt=2, after_s=1, avoid="h1", reason="lost", at=T0 + 9.5),
        finish(s2, "h1", 0.2, 9.4, Outcome.INFRA_FAILED),
        start(s2, "h2", 10.6, attempt=2),
        MachineStatus(machine="h1", status="drained", reason="2 infra failures", at=T0 + 11),
        finish(s4, "h2", 5.1, 12.0),
        finish(s2, "h2", 10.6, 15.0, attempt=2),
        RunFinished(exit_code=1, at=T0 + 16),
    ]


def test_lanes_progress_and_failures_follow_the_events() -> None:
    model = LiveModel()
    model.feed(a_run())
    snap = model.snapshot()
    assert snap["run"]["phase"] == "finished" and snap["run"]["exit_code"] == 1
    assert set(snap["machines"]) == {"h1", "h2", "h3"}
    assert snap["machines"]["h3"]["status"] == "unreachable" and snap["machines"]["h3"]["reason"] == "refused"
    assert snap["machines"]["h1"]["status"] == "drained"
    att = snap["attempts"]
    # attempts at the same time on one machine get their own lanes; a freed lane is reused
    assert (att["s001#1"]["lane"], att["s002#1"]["lane"]) == (0, 1)
    assert att["s003#1"]["lane"] == att["s004#1"]["lane"] == 0 and att["s002#2"]["lane"] == 1
    assert att["s001#1"]["start"] == 0.1 and att["s001#1"]["end"] == 9.0
    assert att["s001#1"]["outcome"] == "tests-failed" and att["s002#2"]["outcome"] == "passed"
    p = snap["progress"]
    assert (p["total"], p["done"], p["passed"], p["failed"], p["not_run"], p["running"]) == (4, 4, 3, 1, 0, 0)
    assert p["retries"] == 1 and p["eta"] == 0.0 and p["elapsed"] == 16.0
    assert (p["expected_makespan"], p["lower_bound"]) == (20.0, 13.3)
    failures = snap["failures"]
    assert set(failures) == {"s001#1", "s002#1"}
    assert failures["s001#1"]["kind"] == "tests" and failures["s002#1"]["kind"] == "infra"
    # the failure keeps the attempt's own output tail (ANSI removed), not only the event's
    assert failures["s001#1"]["tail"] == ["ok test_a"]
    assert snap["notices"][0] == {"text": "probing", "level": "info", "machine": None, "at": 0.0}


def test_flaky_when_a_shard_passes_after_its_tests_failed() -> None:
    s1 = SHARDS[0]
    model = LiveModel()
    model.feed([started(shards=(s1,)), start(s1, "h1", 0), finish(s1, "h1", 0, 2, Outcome.TESTS_FAILED),
                ShardRetrying(shard=s1, next_attempt=2, after_s=0, avoid=None, reason="tests failed", at=T0 + 2),
                start(s1, "h2", 2.1, attempt=2), finish(s1, "h2", 2.1, 4, attempt=2)])
    p = model.snapshot()["progress"]
    assert (p["passed"], p["failed"], p["flaky"]) == (1, 0, 1)


def test_not_run_and_speculative_cancel() -> None:
    s1, s2 = SHARDS[:2]
    model = LiveModel()
    model.feed([started(shards=(s1, s2)), start(s1, "h1", 0), start(s1, "h2", 1, attempt=2),
                finish(s1, "h2", 1, 3, attempt=2), finish(s1, "h1", 0, 3.1, Outcome.CANCELLED),
                ShardNotRun(shard=s2, reason="no machine left", at=T0 + 4)])
    snap = model.snapshot()
    assert snap["progress"]["passed"] == 1 and snap["progress"]["not_run"] == 1
    assert "s001#1" not in snap["failures"]                 # a cancelled copy is not a failure
    assert snap["notices"][-1]["level"] == "error" and "no machine left" in snap["notices"][-1]["text"]


def test_snapshot_plus_deltas_equals_the_final_snapshot() -> None:
    """A viewer that joins half-way (snapshot) and applies the later deltas sees the final state."""
    events = a_run()
    model = LiveModel()
    for event in events[:7]:
        model.apply(event)
    joined = json.loads(json.dumps(model.snapshot()))       # what goes over the wire
    for event in events[7:]:
        for delta in model.apply(event):
            if delta["t"] != "line":
                assert delta["seq"] == joined["seq"] + 1      # no gap: a viewer can tell when it missed one
                apply_delta(joined, json.loads(json.dumps(delta)))
    final = model.snapshot()
    assert joined == json.loads(json.dumps(final))


def test_deltas_are_numbered_and_json_ready() -> None:
    model = LiveModel()
    deltas = model.feed(a_run())
    numbered = [d["seq"] for d in deltas if d["t"] != "line"]
    assert numbered == list(range(1, len(numbered) + 1))
    json.dumps(deltas)
    kinds = {d["t"] for d in deltas}
    assert kinds == {"run", "machine", "attempt", "progress", "failure", "notice", "line"}


def test_output_tail_is_bounded_and_kept_only_while_running() -> None:
    s1 = SHARDS[0]
    model = LiveModel(tail_lines=5)
    model.feed([started(shards=(s1,)), start(s1, "h1", 0)])
    for i in range(12):
        model.apply(OutputLine(machine="h1", shard_id="s001", attempt=1, line=f"line {i}\r\n", at=T0 + 1))
    assert model.tail("s001#1") == [f"line {i}" for i in range(7, 12)]
    model.apply(finish(s1, "h1", 0, 2))
    assert model.tail("s001#1") == [f"line {i}" for i in range(7, 12)]    # kept a while for a late click
    assert model.tail("s009#1") is None
    assert model.apply(OutputLine(machine="h1", shard_id="s001", attempt=1, line="late", at=T0 + 3)) == []


def test_eta_from_expected_makespan_then_from_actual_progress() -> None:
    s1, s2 = (Shard(id=f"s{i}", index=i, total=2, files=(f"f{i}",), expected=10.0) for i in (1, 2))
    model = LiveModel()
    model.feed([started(shards=(s1, s2), expected=10.0), start(s1, "h1", 0), start(s2, "h1", 0)])
    assert model.tick(T0 + 4)[0]["v"]["eta"] == 6.0           # on time: what is left of the plan
    late = model.tick(T0 + 20)[0]["v"]                        # late: running shards count at most 95 %
    assert late["eta"] is not None and late["eta"] > 0 and late["elapsed"] == 20.0
    model.apply(finish(s1, "h1", 0, 21))
    model.apply(finish(s2, "h1", 0, 22))
    assert model.progress()["eta"] == 0.0


def test_eta_without_expected_durations_uses_finished_attempts() -> None:
    shards = tuple(Shard(id=f"s{i}", index=i, total=4) for i in range(1, 5))
    model = LiveModel()
    model.feed([started(shards=shards, expected=None)])
    assert model.progress()["eta"] is None
    model.feed([start(shards[0], "h1", 0), finish(shards[0], "h1", 0, 6)])
    assert model.progress()["eta"] == 6.0                     # 6 s x 3 shards left / 3 usable slots


def test_failing_tests_join_their_failure() -> None:
    model = LiveModel()
    model.feed(a_run()[:9])
    [delta] = model.tests_reported("s001", 1, [FailedTest("test_a", "tests.t1", "assert 1 == 2")])
    assert delta["t"] == "failure" and delta["v"]["tests"][0]["name"] == "test_a"
    assert model.tests_reported("s003", 1, [FailedTest("x")]) == []   # s003 passed: no failure entry


def test_probe_results_show_on_the_machine() -> None:
    model = LiveModel()
    model.apply(started())
    [delta] = model.probed("h1", {"load1": 0.5, "mem_used_pct": 40.0, "disk_free_pct": 70.0, "latency_ms": 1.2,
                                  "reasons": ("fine",), "address": "secret-not-shown"}, T0 + 30)
    health = delta["v"]["health"]
    assert health["load1"] == 0.5 and health["reasons"] == ["fine"] and "address" not in health
    assert delta["v"]["probed_at"] == 30.0


def test_unknown_events_change_nothing() -> None:
    model = LiveModel()
    assert model.apply(object()) == []  # type: ignore[arg-type]
    assert model.snapshot()["seq"] == 0


def test_keys() -> None:
    assert attempt_key("s001", 2) == "s001#2"
