"""The fault matrix: faults injected into the real sshd fleet, each asserting the verdict, that no
remote process is left, that nothing recorded is lost, and that the run ends in bounded time."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clihelp import fleetshard
from fakesuite import FakeSuite, specs
from fleet import MakeFleet, SshFleet


@pytest.fixture
def suites(tmp_path: Path) -> Iterator[Any]:
    made: list[FakeSuite] = []

    def make(fleet: SshFleet, spec: dict[str, dict[str, Any]]) -> FakeSuite:
        fs = FakeSuite(tmp_path, fleet.root, spec)
        made.append(fs)
        return fs

    yield make
    for fs in made:
        fs.cleanup()


def report(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def all_passed(data: dict[str, Any], shards: int) -> None:
    assert [s["state"] for s in data["shards"]] == ["passed"] * shards, data["shards"]


@pytest.mark.parametrize("max_sessions", [1, 2])
def test_sshd_max_sessions_below_the_slots(max_sessions: int, make_fleet: MakeFleet, suites: Any,
                                           tmp_path: Path) -> None:
    """sshd refuses channels past MaxSessions: fleetshard learns the limit and opens more connections;
    the SFTP session collecting JUnit never starves the shards."""
    f = make_fleet(n=1, max_sessions=max_sessions)
    fs = suites(f, specs(6, 0.5))
    inv = f.write_inventory(tmp_path / "machines.yaml", slots=6, suite=fs.suite(shards=6))
    js = tmp_path / "r.json"
    start = time.monotonic()
    res = fleetshard("run", "-i", inv, "--json-report", js, "--no-live")
    assert res.code == 0, res.out + res.err
    data = report(js)
    all_passed(data, 6)
    assert all(a["outcome"] == "passed" for a in data["attempts"]), data["attempts"]
    assert not any("JUnit not collected" in n for n in data["notes"]), data["notes"]
    assert f.wait_no_processes(5) == []
    assert time.monotonic() - start < 60


def test_health_warns_when_max_sessions_cannot_serve_the_slots(make_fleet: MakeFleet, tmp_path: Path) -> None:
    f = make_fleet(n=2, max_sessions=2)
    inv = f.write_inventory(tmp_path / "machines.yaml", slots={"h1": 6, "h2": 1})
    res = fleetshard("health", "-i", inv, "--json")
    assert res.code == 0, res.out + res.err
    machines = {m["machine"]: m for m in json.loads(res.out)["machines"]}
    assert machines["h1"]["healthy"] and "allows 2 sessions per connection" in machines["h1"]["warnings"][0]
    assert machines["h2"]["warnings"] == []
    table = fleetshard("health", "-i", inv)
    assert "MaxSessions" in table.out and table.code == 0
    assert f.wait_no_processes(5) == []
