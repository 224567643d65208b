"""The coordinator's paths on the fake in-process transport: each test takes milliseconds.

The same paths are proven end to end against real sshd in test_run.py; here they are driven exactly,
with scripted machines (fleetshard.transport.fake) and the coordinator's own subscriber API.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from fleetshard.coordinator import Coordinator
from fleetshard.events import Event, MachineStatus, Notice, ShardFinished, ShardNotRun, ShardStarted
from fleetshard.inventory import load_inventory
from fleetshard.model import Outcome
from fleetshard.progress import PlainRenderer, feed
from fleetshard.runner import RunOptions, run_main
from fleetshard.transport.fake import Behaviour, FakeFleet, FakeMachine

JUNIT = '<testsuite name="t" tests="1"><testcase classname="t" name="test_ok" time="0.01"/></testsuite>'


class Recording:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def handle(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


def inventory(tmp_path: Path, *, machines: Sequence[str] = ("h1", "h2"), slots: int = 2, shards: int = 4,
              suite: str = "", retry: str = "") -> Path:
    rows = "\n".join(f"  {m}: {{host: 127.0.0.1, slots: {slots}}}" for m in machines)
    text = (f"health: {{interval: 0}}\n{retry}machines:\n{rows}\nsuite:\n  command: \"pytest --shard={{shard}}\"\n"
            f"  shards: {shards}\n  kill_grace: 0.05\n{suite}")
    path = tmp_path / "machines.yaml"
    path.write_text(text)
    (tmp_path / "ssh_config").write_text("")
    return path


def run(tmp_path: Path, fleet: FakeFleet, *, inv_path: Path | None = None,
        act: Callable[[Coordinator, Recording], Any] | None = None, **opts: Any) -> tuple[int, Recording, Coordinator]:
    inv = load_inventory(inv_path or inventory(tmp_path), ssh_config=tmp_path / "ssh_config")
    rec = Recording()
    seen: list[Coordinator] = []

    def observe(coordinator: Coordinator) -> None:
        coordinator.subscribe(rec)
        seen.append(coordinator)
        if act is not None:
            act(coordinator, rec)

    console = Console(file=io.StringIO(), force_terminal=False, width=120)
    options = RunOptions(skip_health_checks=True, live=False, quiet=True, console=console, backoff_jitter=False,
                         commit="c0ffee", **opts)

    async def main() -> int:
        return await asyncio.wait_for(run_main(inv, options, transports_for=fleet.transport, observe=observe), 10)

    code = asyncio.run(main())
    return code, rec, seen[0]


def at(delay: float, action: Callable[[], None]) -> None:
    asyncio.get_running_loop().call_later(delay, action)


def when(condition: Callable[[], bool], action: Callable[[], None]) -> None:
    """Do ``action`` as soon as ``condition`` holds (looked at every millisecond)."""
    def look() -> None:
        if condition():
            action()
        else:
            at(0.001, look)
    at(0.001, look)


def sent(fleet: FakeFleet, word: str) -> bool:
    return any(word in c for m in fleet.machines.values() for c in m.commands)


def assert_one_finish_per_launch(coordinator: Coordinator, rec: Recording) -> None:
    assert coordinator.sched is not None
    launched = sorted((r.shard_id, r.attempt) for r in coordinator.sched.records)
    finished = sorted((e.shard.id, e.attempt) for e in rec.of(ShardFinished))
    assert finished == launched


def test_all_pass_and_each_launch_finishes_once(tmp_path: Path) -> None:
    fleet = FakeFleet(default=lambda: FakeMachine([Behaviour("pytest", output=["ok"], delay=0.01, junit=JUNIT)]))
    code, rec, coordinator = run(tmp_path, fleet, inv_path=inventory(tmp_path, suite="  junit: junit.xml\n"))
    assert code == 0
    assert [e.outcome for e in rec.of(ShardFinished)] == [Outcome.PASSED] * 4
    assert all(e.junit_path for e in rec.of(ShardFinished))
    assert_one_finish_per_launch(coordinator, rec)
    assert len(rec.of(ShardStarted)) == 4
    assert fleet.running == 0


def test_cancel_while_a_process_is_starting(tmp_path: Path) -> None:
    fleet = FakeFleet(default=lambda: FakeMachine([Behaviour("pytest", start_delay=0.2, hang=True)]))
    code, rec, coordinator = run(tmp_path, fleet, act=lambda c, r: when(lambda: sent(fleet, "pytest"), c.interrupt))
    assert code == 130
    finished = rec.of(ShardFinished)
    assert {e.outcome for e in finished} == {Outcome.CANCELLED}
    assert_one_finish_per_launch(coordinator, rec)
    assert fleet.running == 0                     # what started after the cancel was stopped at once
    for machine in fleet.machines.values():
        assert any(sig == "TERM" for cmd, sig in machine.signals if "pytest" in cmd)


def test_timeout_terms_then_kills_after_the_grace_period(tmp_path: Path) -> None:
    fleet = FakeFleet(default=lambda: FakeMachine([Behaviour("pytest", hang=True, ignore_term=True)]))
    inv = inventory(tmp_path, machines=("h1",), slots=1, shards=1, retry="retry: {max_retries: 0}\n")
    code, rec, _ = run(tmp_path, fleet, inv_path=inv, timeout=0.05)
    assert code == 3
    [finished] = rec.of(ShardFinished)
    assert finished.outcome is Outcome.TIMED_OUT and finished.signal == "KILL"
    shard_signals = [sig for cmd, sig in fleet["h1"].signals if "pytest" in cmd]
    assert shard_signals[:2] == ["TERM", "KILL"]
    assert fleet.running == 0


def test_ctrl_c_while_setup_runs(tmp_path: Path) -> None:
    fleet = FakeFleet(default=lambda: FakeMachine([Behaviour("slow-setup", hang=True)]))
    inv = inventory(tmp_path, suite="  setup: slow-setup\n")
    code, rec, coordinator = run(tmp_path, fleet, inv_path=inv,
                                 act=lambda c, r: when(lambda: sent(fleet, "slow-setup"), c.interrupt))
    assert code == 130
    assert {e.outcome for e in rec.of(ShardFinished)} == {Outcome.CANCELLED}
    assert_one_finish_per_launch(coordinator, rec)
    assert fleet.running == 0                     # the setup itself was killed too
    assert not any("pytest" in c for m in fleet.machines.values() for c in m.commands)


def test_ctrl_c_twice_during_teardown(tmp_path: Path) -> None:
    fleet = FakeFleet(default=lambda: FakeMachine([Behaviour("pytest"), Behaviour("slow-teardown", hang=True)]))
    inv = inventory(tmp_path, suite="  teardown: slow-teardown\n")

    def act(coordinator: Coordinator, rec: Recording) -> None:
        def twice() -> None:
            coordinator.interrupt()
            at(0.01, coordinator.interrupt)
        when(lambda: sent(fleet, "slow-teardown"), twice)

    code, rec, _ = run(tmp_path, fleet, inv_path=inv, act=act)
    assert code == 130
    assert {e.outcome for e in rec.of(ShardFinished)} == {Outcome.PASSED}
    assert any(isinstance(e, Notice) and "teardown cut short" in e.text for e in rec.events)
    assert fleet.running == 0


def test_machine_lost_during_a_junit_download(tmp_path: Path) -> None:
    fleet = FakeFleet({"h1": FakeMachine([Behaviour("pytest", junit=JUNIT)], download_delay=0.02,
                                         download_error="connection lost"),
                       "h2": FakeMachine([Behaviour("pytest", junit=JUNIT, delay=0.05)])})
    fleet["h1"].behaviours.append(Behaviour("true", exit_status=1))      # the liveness check fails
    inv = inventory(tmp_path, suite="  junit: junit.xml\n", shards=6)
    code, rec, coordinator = run(tmp_path, fleet, inv_path=inv)
    assert code == 0
    assert_one_finish_per_launch(coordinator, rec)
    assert any(isinstance(e, MachineStatus) and e.machine == "h1" and e.status == "lost" for e in rec.events)
    assert all(e.outcome is Outcome.PASSED for e in rec.of(ShardFinished))
    assert any("JUnit not collected" in n for n in coordinator.ctx.notes)
    assert fleet.running == 0


def test_a_retry_whose_backoff_elapses_after_cancel(tmp_path: Path) -> None:
    fleet = FakeFleet(default=lambda: FakeMachine([Behaviour("pytest", exit_status=255)]))
    inv = inventory(tmp_path, shards=1, machines=("h1", "h2"),
                    retry="retry: {max_retries: 2, backoff_base: 0.1, jitter: 0}\n")

    def act(coordinator: Coordinator, rec: Recording) -> None:
        when(lambda: bool(rec.of(ShardFinished)), coordinator.interrupt)   # the retry waits out its backoff

    code, rec, coordinator = run(tmp_path, fleet, inv_path=inv, act=act)
    assert code == 130
    assert len(rec.of(ShardFinished)) == 1        # no attempt after the cancel
    assert_one_finish_per_launch(coordinator, rec)
    [not_run] = rec.of(ShardNotRun)
    assert "interrupted" in not_run.reason


def test_refused_connection_is_an_infra_failure_elsewhere_retried(tmp_path: Path) -> None:
    fleet = FakeFleet({"h1": FakeMachine([Behaviour("pytest")], refuse="connection refused"),
                       "h2": FakeMachine([Behaviour("pytest", delay=0.01)])})
    inv = inventory(tmp_path, retry="retry: {max_retries: 2, backoff_base: 0.01, jitter: 0}\n")
    code, rec, coordinator = run(tmp_path, fleet, inv_path=inv)
    assert code == 0
    assert_one_finish_per_launch(coordinator, rec)
    assert any(isinstance(e, MachineStatus) and e.machine == "h1" and e.status == "drained" for e in rec.events)


def test_connection_lost_mid_shard(tmp_path: Path) -> None:
    fleet = FakeFleet({"h1": FakeMachine([Behaviour("pytest", lost_after=0.02), Behaviour("true", exit_status=1)]),
                       "h2": FakeMachine([Behaviour("pytest", delay=0.01)])})
    inv = inventory(tmp_path, retry="retry: {max_retries: 2, backoff_base: 0.01, jitter: 0}\n")
    code, rec, coordinator = run(tmp_path, fleet, inv_path=inv)
    assert code == 0
    assert_one_finish_per_launch(coordinator, rec)
    assert any(isinstance(e, MachineStatus) and e.machine == "h1" and e.status == "lost" for e in rec.events)


@pytest.mark.parametrize("seed", range(5))
def test_every_launch_answered_by_exactly_one_shard_finished(tmp_path: Path, seed: int) -> None:
    import random

    rng = random.Random(seed)

    def machine() -> FakeMachine:
        return FakeMachine([Behaviour("pytest", delay=rng.uniform(0, 0.02),
                                      exit_status=rng.choice([0, 0, 0, 1, 255]))])

    fleet = FakeFleet(default=machine)
    inv = inventory(tmp_path, machines=("h1", "h2", "h3"), shards=12,
                    retry="retry: {max_retries: 1, backoff_base: 0.01, jitter: 0, drain_after: 5}\n")
    interrupt = rng.random() < 0.4
    code, rec, coordinator = run(tmp_path, fleet, inv_path=inv, retry_failed_tests=1,
                                 act=(lambda c, r: when(lambda: len(r.of(ShardFinished)) > 3, c.interrupt))
                                 if interrupt else None)
    assert code in (0, 1, 3, 130)
    assert_one_finish_per_launch(coordinator, rec)
    assert fleet.running == 0


def test_events_come_in_one_order_with_their_own_times(tmp_path: Path) -> None:
    fleet = FakeFleet(default=lambda: FakeMachine([Behaviour("pytest", output=["line"], delay=0.01)]))
    code, rec, _ = run(tmp_path, fleet, stream=True)
    assert code == 0
    times = [e.at for e in rec.events]
    assert times == sorted(times)
    started = {(e.shard.id, e.attempt) for e in rec.of(ShardStarted)}
    assert len(started) == len(rec.of(ShardStarted))          # each fact once


def test_a_replay_renders_what_was_shown_live(tmp_path: Path) -> None:
    fleet = FakeFleet(default=lambda: FakeMachine([Behaviour("pytest", output=["hello"], delay=0.01,
                                                             exit_status=1)]))
    live = io.StringIO()
    holder: list[PlainRenderer] = []

    def act(coordinator: Coordinator, rec: Recording) -> None:
        renderer = PlainRenderer(Console(file=live, force_terminal=False, width=120), stream=True,
                                 clock=coordinator.ctx.clock)
        holder.append(renderer)
        coordinator.subscribe(renderer, output=True)

    code, rec, _ = run(tmp_path, fleet, act=act, stream=True)
    assert code == 1
    replay = io.StringIO()
    renderer = PlainRenderer(Console(file=replay, force_terminal=False, width=120), stream=True,
                             clock=lambda: 0.0)
    feed(renderer, rec.events)
    assert replay.getvalue() == live.getvalue()
    assert "hello" in replay.getvalue() and "tests-failed" in replay.getvalue()
