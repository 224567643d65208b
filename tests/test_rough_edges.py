"""Rough edges of the inventory and of messages, each pinned by a test."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from clihelp import fleetshard
from fleet import SshFleet, WriteInventory

from fleetshard.errors import ConfigError
from fleetshard.inventory import load_inventory


def load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "machines.yaml"
    path.write_text(textwrap.dedent(text))
    empty = tmp_path / "ssh_config"
    empty.write_text("")
    return load_inventory(path, ssh_config=empty)


def test_x_keys_hold_yaml_anchors(tmp_path: Path) -> None:
    inv = load(tmp_path, """\
        x-arm: &arm {speed: 0.3, tags: [arm], slots: 2}
        x-anything: [whatever, {is: ignored}]
        machines:
          pi4: {<<: *arm, host: pi4.lan}
          pi5: {<<: *arm, host: pi5.lan, speed: 0.5}
        """)
    pi4, pi5 = inv.machines
    assert (pi4.speed, pi4.tags, pi4.slots, pi4.host) == (0.3, ("arm",), 2, "pi4.lan")
    assert pi5.speed == 0.5


def test_other_unknown_top_keys_still_fail(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match='unknown key "y-arm"'):
        load(tmp_path, "y-arm: 1\nmachines: {a: {}}\n")


def test_health_interval_zero_is_accepted_and_negative_refused(tmp_path: Path) -> None:
    assert load(tmp_path, "health: {interval: 0}\nmachines: {a: {}}\n").health.interval == 0
    with pytest.raises(ConfigError, match=r"health\.interval"):
        load(tmp_path, "health: {interval: -1}\nmachines: {a: {}}\n")


def test_probe_exit_status_comes_with_what_the_probe_said() -> None:
    import asyncio
    from collections.abc import Mapping, Sequence

    from fleetshard.inventory import HealthThresholds, Machine
    from fleetshard.probes import probe
    from fleetshard.transport.base import OutputTarget, ProcessResult, RemoteProcess

    class Refusing:
        name = "box"

        async def connect(self) -> float:
            return 0.0

        async def run(self, command: str, *, cwd: str | None = None, env: Mapping[str, str] | None = None,
                      stdin: str | None = None, timeout: float | None = None) -> tuple[ProcessResult, str]:
            return ProcessResult(1), "This account is currently not available.\n"

        async def start(self, command: str, *, cwd: str | None, env: Mapping[str, str],
                        on_line: OutputTarget) -> RemoteProcess:
            raise NotImplementedError

        async def kill_groups(self, pgids: Sequence[int], signal: str, *, markers: Sequence[str] = ()) -> None:
            return None

        async def get_file(self, remote: str, local: str) -> bool:
            return False

        async def put_file(self, local: str, remote: str) -> None:
            return None

        async def rtt(self) -> float:
            return 0.0

        async def close(self) -> None:
            return None

    report = asyncio.run(probe(Machine(name="box", host="box.lan"), Refusing(), HealthThresholds()))
    assert report.reasons == ("probe exited with 1: This account is currently not available.",)


def test_messages_name_each_machine_once(fleet: SshFleet, fleet_inventory: WriteInventory, tmp_path: Path) -> None:
    address, port = fleet.unused_address()
    wrong = fleet.write_known_hosts(tmp_path / "wrong_known_hosts", wrong=["h2"])
    inv = fleet_inventory(machines=["h1", "h2"], suite={"command": "true", "shards": 2},
                          extra_machine_keys={"dead": {"host": address, "port": port, "connect_timeout": 1},
                                              "h2": {"known_hosts": str(wrong)}})
    res = fleetshard("run", "-i", inv, "--no-live")
    assert res.code == 0, res.out + res.err
    text = res.out + res.err
    assert "dead: left out (unreachable): connection refused" in text
    assert "h2: left out (unreachable): HOST KEY CHANGED" in text
    for name in ("dead", "h2"):
        assert f"{name}: {name}:" not in text, text
    health = fleetshard("health", "-i", inv)
    assert "dead: dead:" not in health.out + health.err and "h2: h2:" not in health.out + health.err


def test_failing_setup_said_once_per_machine_with_a_git_hint(fleet: SshFleet, fleet_inventory: WriteInventory
                                                               ) -> None:
    setup = "echo 'fatal: reference is not a tree: 0123456789abcdef0123456789abcdef01234567' >&2; exit 128"
    inv = fleet_inventory(machines=["h1", "h2"], slots=3,
                          suite={"command": "true", "shards": 12, "setup": setup})
    res = fleetshard("run", "-i", inv, "--no-live")
    assert res.code == 3, res.out + res.err
    text = res.out + res.err
    for name in ("h1", "h2"):
        assert text.count(f"setup failed on {name} (exit code 128): fatal: reference is not a tree") == 1, text
    assert text.count("hint: the machine's git checkout does not have this commit: push it first") == 2
    summary = text.split("not run (12):", 1)[1]
    assert "12 shards (s001 s002" in summary and summary.count("no machine left") == 1


def test_resume_of_a_run_that_passed_exits_0(fleet: SshFleet, fleet_inventory: WriteInventory,
                                             tmp_path: Path) -> None:
    import json

    for suite in ({"command": "true", "shards": 2}, {"tests": "t/*.txt", "command": "cat {files}", "shards": 2}):
        (tmp_path / "t").mkdir(exist_ok=True)
        for name in ("a.txt", "b.txt"):
            (tmp_path / "t" / name).write_text("x\n")
            (fleet["h1"].workdir / "t").mkdir(exist_ok=True)
            (fleet["h1"].workdir / "t" / name).write_text("x\n")
        inv = fleet_inventory(machines=["h1"], suite=suite)
        report = tmp_path / "r.json"
        assert fleetshard("run", "-i", inv, "--no-live", "--json-report", report).code == 0
        run_id = json.loads(report.read_text())["run_id"]
        res = fleetshard("run", "-i", inv, "--no-live", "--resume", run_id)
        assert res.code == 0, res.out + res.err
        assert f"fleetshard: run {run_id}: nothing to resume, every shard passed" in res.out


def test_history_and_report_find_the_history_here_without_machines_yaml(fleet: SshFleet, tmp_path: Path) -> None:
    import json

    other = fleet.write_inventory(tmp_path / "other.yaml", machines=["h1"], suite={"command": "true", "shards": 2})
    run = fleetshard("run", "-i", "other.yaml", "--no-live", cwd=tmp_path)
    assert run.code == 0, run.out + run.err
    assert not (tmp_path / "machines.yaml").exists() and other.exists()
    hist = fleetshard("history", "--json", cwd=tmp_path)
    assert hist.code == 0, hist.err
    (row,) = json.loads(hist.out)
    only = fleetshard("history", "--json", "-m", "h1", cwd=tmp_path)
    assert [r["id"] for r in json.loads(only.out)] == [row["id"]]
    rep = fleetshard("report", "--json", cwd=tmp_path)
    assert rep.code == 0, rep.err
    data = json.loads(rep.out)
    assert data["run_id"] == row["id"] and data["exit_code"] == 0 and len(data["shards"]) == 2
    text = fleetshard("report", cwd=tmp_path)
    assert text.code == 0 and row["id"] in text.out
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = fleetshard("history", cwd=empty)          # no history here either: the usual message
    assert missing.code == 2 and "machines.yaml: file not found" in missing.err


def test_plan_json(fleet: SshFleet, fleet_inventory: WriteInventory) -> None:
    import json

    inv = fleet_inventory(machines=["h1", "h2"], slots=2, suite={"command": "true", "shards": 4})
    res = fleetshard("plan", "-i", inv, "--json")
    assert res.code == 0, res.err
    plan = json.loads(res.out)
    assert [m["name"] for m in plan["machines"]] == ["h1", "h2"]
    assert [s["id"] for s in plan["shards"]] == ["s001", "s002", "s003", "s004"]
    assert plan["strategy"] in ("static", "dynamic") and plan["shards_why"]


def test_remote_run_dir_removed_and_sync_skips_own_outputs(fleet: SshFleet, tmp_path: Path) -> None:
    import json
    import shutil

    proj = tmp_path / "proj"
    for rel in ("src/a.txt", "results/old.xml", "out/old.html"):
        (proj / rel).parent.mkdir(parents=True, exist_ok=True)
        (proj / rel).write_text("x\n")
    workdir = fleet["h1"].workdir / "sync-own-outputs"
    shutil.rmtree(workdir, ignore_errors=True)
    command = ("test -e src/a.txt && test ! -e results && test ! -e out && "
               "mkdir -p .fleetshard/$FLEETSHARD_RUN_ID && touch .fleetshard/$FLEETSHARD_RUN_ID/left")
    inv = fleet.write_inventory(tmp_path / "machines.yaml", machines=["h1"],
                                suite={"command": command, "shards": 1, "sync": "proj"},
                                extra_machine_keys={"h1": {"workdir": str(workdir)}})
    report = tmp_path / "r.json"
    outputs = ("--junit", proj / "results" / "merged.xml", "--html", proj / "out" / "r.html")
    res = fleetshard("run", "-i", inv, "--no-live", *outputs, "--json-report", report)
    assert res.code == 0, res.out + res.err
    assert (workdir / "src" / "a.txt").exists()
    assert not (workdir / "results").exists() and not (workdir / "out").exists()
    assert not (workdir / ".fleetshard").exists()           # the run's directory, and the empty parent
    kept = fleetshard("run", "-i", inv, "--no-live", "--keep-remote-dir", *outputs, "--json-report", report)
    assert kept.code == 0, kept.out + kept.err
    run_id = json.loads(report.read_text())["run_id"]
    assert (workdir / ".fleetshard" / run_id / "left").exists()


def test_summary_table_fits_80_columns() -> None:
    import io

    from rich.console import Console

    from fleetshard.progress import print_summary
    from fleetshard.record import AttemptRecord, MachineRecord, RunRecord, ShardRecord

    reason = ("setup failed on build-server-02.example.com (exit code 128): fatal: reference is not a tree: "
              "0123456789abcdef0123456789abcdef01234567")
    machines = [MachineRecord("build-server-01", 24, 1.0, "healthy"),
                MachineRecord("build-server-02.example.com", 8, 1.0, "drained", reason),
                MachineRecord("pi", 4, 0.3, "degraded", "timed out after 600 s")]
    shards = [ShardRecord(id=f"s{i:03d}", index=i, total=40, files=[], expected=10.0, state="passed")
              for i in range(1, 41)]
    attempts = [AttemptRecord(shard_id=f"s{i:03d}", attempt=1, machine="build-server-01", outcome="passed",
                              started=0.0, ended=1234.5, exit_status=0) for i in range(1, 41)]
    record = RunRecord(run_id="r1", started=0.0, ended=3725.0, argv=["fleetshard", "run"], inventory="m.yaml",
                       strategy="dynamic", mode="files", command="pytest {files}", exit_code=0,
                       machines=machines, shards=shards, attempts=attempts)
    buf = io.StringIO()
    print_summary(Console(file=buf, width=80, force_terminal=True, color_system=None), record)
    lines = buf.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)
    header = next(line for line in lines if line.lstrip().startswith("machine "))
    assert header.split() == ["machine", "slots", "status", "shards", "pass", "fail", "infra", "retry", "busy",
                              "util"]
    row = next(line for line in lines if line.lstrip().startswith("build-server-01"))
    assert row.split()[:4] == ["build-server-01", "24", "healthy", "40"]
    assert any(line.startswith("  build-server-02.example.com drained: setup failed") for line in lines)
