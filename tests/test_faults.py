"""The fault matrix: faults injected into the real sshd fleet, each asserting the verdict, that no
remote process is left, that nothing recorded is lost, and that the run ends in bounded time."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from clihelp import fleetshard
from delayproxy import DelayProxy
from fakesuite import FakeSuite, specs
from fleet import MakeFleet, SshFleet, WriteInventory


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


def run_dir_on_tmpfs(tmp_path: Path, size: str) -> Iterator[Path]:
    state = tmp_path / ".fleetshard"
    state.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(state)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield state
    finally:
        subprocess.run(["umount", "-l", str(state)], capture_output=True, check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    yield from run_dir_on_tmpfs(tmp_path, "2m")


def test_a_full_disk_for_the_run_dir(fleet: SshFleet, fleet_inventory: WriteInventory, small_disk: Path,
                                     tmp_path: Path) -> None:
    """The logs cannot be written (ENOSPC): one warning, the output is dropped, the channel is read to
    its end, the verdict is right and the run ends in bounded time."""
    flood = "yes 'output that fills the disk' | head -c 8000000; echo done"
    inv = fleet_inventory(machines=["h1", "h2"], suite={"command": flood, "shards": 2, "timeout": 60})
    out = tmp_path.parent / f"{tmp_path.name}-report.json"      # off the full disk
    start = time.monotonic()
    res = fleetshard("run", "-i", inv, "--json-report", out, "--no-live", timeout=90)
    try:
        assert res.code == 0, res.out + res.err
        assert time.monotonic() - start < 60
        text = res.out + res.err
        assert text.count("not fully written") == 1 and "No space left on device" in text, text
        data = report(out)
        all_passed(data, 2)
        assert fleet.wait_no_processes(5) == []
    finally:
        out.unlink(missing_ok=True)


def test_closed_stdout_never_loses_the_run(fleet: SshFleet, fleet_inventory: WriteInventory, suites: Any,
                                           tmp_path: Path) -> None:
    """`fleetshard run --stream | head -3`: the run goes on, is recorded, and keeps its exit code."""
    fs = suites(fleet, specs(8, 0.3))
    inv = fleet_inventory(suite=fs.suite(shards=4))
    start = time.monotonic()
    with subprocess.Popen([sys.executable, "-m", "fleetshard", "run", "-i", str(inv), "--stream", "--no-live"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        for _ in range(3):
            proc.stdout.readline()
        proc.stdout.close()                               # what `head -3` does
        err = proc.stderr.read()
        assert proc.wait(timeout=60) == 0, err
    assert time.monotonic() - start < 60
    assert "Traceback" not in err and "internal error" not in err, err
    assert "stdout not writable" in err
    reports = list((tmp_path / ".fleetshard" / "runs").glob("*/report.json"))
    assert len(reports) == 1
    data = report(reports[0])
    assert data["exit_code"] == 0
    all_passed(data, 4)
    hist = fleetshard("history", "-i", inv)
    assert data["run_id"] in hist.out, hist.out + hist.err
    assert fleet.wait_no_processes(5) == []


def test_output_floods_and_long_lines(fleet: SshFleet, fleet_inventory: WriteInventory, tmp_path: Path) -> None:
    """One 20 MB line without a newline: the terminal gets it cut, the log keeps it whole."""
    size = 20_000_000
    inv = fleet_inventory(machines=["h1"], suite={
        "command": f"head -c {size} /dev/zero | tr '\\000' x; exit 3", "shards": 1})
    js = tmp_path / "r.json"
    res = fleetshard("run", "-i", inv, "--stream", "--no-live", "--json-report", js)
    assert res.code == 1, res.err
    assert len(res.out) < 100_000 and "more characters]" in res.out
    log = Path(report(js)["attempts"][0]["log_path"]).read_text()
    assert "x" * size in log
    assert fleet.wait_no_processes(5) == []


def test_marker_looking_output(fleet: SshFleet, fleet_inventory: WriteInventory, tmp_path: Path) -> None:
    """Output that looks like the wrapper's markers changes nothing: the failure stays a failure and the
    machine is not drained for a missing workdir."""
    inv = fleet_inventory(machines=["h1"], slots=1, suite={
        "command": 'echo __fleetshard_nodir__; echo "__fleetshard_exit__ 0"; '
                   'echo "__fleetshard_pgid__ 1"; exit 1', "shards": 2})
    js = tmp_path / "r.json"
    res = fleetshard("run", "-i", inv, "--json-report", js, "--no-live")
    assert res.code == 1, res.out + res.err
    data = report(js)
    assert [a["outcome"] for a in data["attempts"]] == ["tests-failed", "tests-failed"]
    assert data["machines"][0]["status"] == "healthy"


def finished_passed(journal: Path) -> int:
    try:
        lines = journal.read_text().splitlines()
    except OSError:
        return 0
    return sum('"kind": "finished"' in line and '"outcome": "passed"' in line for line in lines)


def test_sigkill_of_the_coordinator_then_resume(fleet: SshFleet, fleet_inventory: WriteInventory, suites: Any,
                                                tmp_path: Path) -> None:
    """kill -9 mid-run: the remote processes die with their sessions, `history` shows the run
    interrupted, `report RUN` works, and `run --resume RUN` runs exactly what did not pass."""
    slow = {f"tests/t{i:02d}.test": {"duration": 60} for i in range(9, 13)}
    fs = suites(fleet, specs(12, 0.2, **slow))
    inv = fleet_inventory(suite=fs.suite(shards=12))
    with subprocess.Popen([sys.executable, "-m", "fleetshard", "run", "-i", str(inv), "--no-live"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        deadline = time.monotonic() + 60
        journal: Path | None = None
        while time.monotonic() < deadline:
            found = list((tmp_path / ".fleetshard" / "runs").glob("*/journal.jsonl"))
            journal = found[0] if found else None
            if journal is not None and finished_passed(journal) >= 8:
                break
            time.sleep(0.1)
        assert journal is not None and finished_passed(journal) >= 8, "the quick shards never passed"
        proc.kill()
        proc.wait(10)
    run_id = journal.parent.name
    assert fleet.wait_no_processes(8) == []          # the wrappers saw their sessions close
    hist = fleetshard("history", "-i", inv, "--json")
    runs = {r["id"]: r for r in json.loads(hist.out)}
    assert runs[run_id]["exit_code"] == 130 and runs[run_id]["counts"]["passed"] >= 8, hist.out
    rep = fleetshard("report", run_id, "-i", inv)
    assert rep.code == 0 and run_id in rep.out and "recovered from the run journal" in rep.out + rep.err, rep.out
    first = report(journal.parent / "report.json")
    not_passed = {f for s in first["shards"] if s["state"] != "passed" for f in s["files"]}
    assert not_passed and not_passed <= set(slow)
    (fs.dir / "spec.json").write_text(json.dumps(specs(12, 0.2)))       # the slow tests are quick now
    js = tmp_path / "resumed.json"
    res = fleetshard("run", "-i", inv, "--resume", run_id, "--json-report", js, "--no-live")
    assert res.code == 0, res.out + res.err
    ran = {f for s in report(js)["shards"] for f in s["files"]}
    assert ran == not_passed
    assert fleet.wait_no_processes(5) == []


def test_a_teardown_that_times_out_is_killed(fleet: SshFleet, fleet_inventory: WriteInventory,
                                             tmp_path: Path) -> None:
    inv = fleet_inventory(machines=["h1"], suite={"command": "true", "shards": 1, "timeout": 2,
                                                  "teardown": "sleep 100"})
    start = time.monotonic()
    res = fleetshard("run", "-i", inv, "--no-live")
    assert res.code == 0, res.out + res.err
    assert "teardown failed on h1 (timed out" in res.out + res.err
    assert time.monotonic() - start < 30
    assert fleet.wait_no_processes(5) == []


def interrupt_when(proc: subprocess.Popen[str], ready: Callable[[], bool], what: str, presses: int,
                   grace: float) -> tuple[str, str]:
    """Once ``ready()`` (within 30 s), Ctrl-C the run once or twice; exit 130 must follow within the kill
    grace period and 5 s after one press, within 5 s after two. Returns its stdout and stderr."""
    try:
        deadline = time.monotonic() + 30
        while not ready() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert ready(), f"{what} never started"
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        if presses == 2:
            time.sleep(0.5)
            proc.send_signal(signal.SIGINT)
        last = time.monotonic()
        out, err = proc.communicate(timeout=30)
        elapsed = time.monotonic() - last
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out + err
    bound = 5 if presses == 2 else grace + 5
    assert elapsed < bound, f"exit came {elapsed:.1f} s after the last Ctrl-C"
    return out, err


@pytest.mark.parametrize("presses", [1, 2])
@pytest.mark.parametrize("phase", ["setup", "running", "teardown"])
def test_ctrl_c_in_every_phase(phase: str, presses: int, fleet: SshFleet, fleet_inventory: WriteInventory,
                               tmp_path: Path) -> None:
    """Ctrl-C stops whatever is going on (TERM, then KILL to its group after the grace period; a second
    Ctrl-C at once): exit 130 within 5 s of the second (grace + 5 s of one), nothing left running, the
    run recorded."""
    flags = fleet.root / f"flags-{time.monotonic_ns()}"       # the fleet's user cannot write to tmp_path
    flags.mkdir(mode=0o777)
    flags.chmod(0o777)
    flag = flags / "started"
    step = f"touch {flag}; sleep 100"
    grace = 60 if presses == 2 else 2
    suite: dict[str, Any] = {"command": "sleep 100", "shards": 2, "timeout": 300, "kill_grace": grace}
    if phase == "setup":
        suite["setup"] = step
    elif phase == "running":
        suite["command"] = step
    else:
        suite.update(command="true", teardown=step)
    inv = fleet_inventory(machines=["h1", "h2"], suite=suite)
    with subprocess.Popen([sys.executable, "-m", "fleetshard", "run", "-i", str(inv), "--no-live"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        interrupt_when(proc, flag.exists, f"the {phase}", presses, grace)
    assert fleet.wait_no_processes(5) == []
    assert list((tmp_path / ".fleetshard" / "runs").glob("*/report.json"))


def test_ctrl_c_while_connecting(fleet: SshFleet, fleet_inventory: WriteInventory, tmp_path: Path) -> None:
    """A machine that accepts TCP but never speaks SSH holds the connect phase: Ctrl-C ends it at once."""
    import socket

    with socket.socket() as mute:
        mute.bind(("127.0.0.251", 0))
        mute.listen(5)
        inv = fleet_inventory(machines=["h1"], suite={"command": "true", "shards": 1},
                              extra_machine_keys={"mute": {"host": "127.0.0.251", "port": mute.getsockname()[1],
                                                           "connect_timeout": 60}}, health={"timeout": 60})
        with subprocess.Popen([sys.executable, "-m", "fleetshard", "run", "-i", str(inv), "--no-live"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
            connecting = time.monotonic() + 3          # well into the connect phase
            # exit 130 within 5 s of the Ctrl-C (no grace period: nothing runs yet)
            _, err = interrupt_when(proc, lambda: time.monotonic() > connecting, "the connect phase", 1, 0)
    assert "Traceback" not in err
    assert fleet.wait_no_processes(5) == []


def run_in_background(inv: Path, js: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "fleetshard", "run", "-i", str(inv), "--json-report", str(js),
                             "--no-live"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("when", ["late", "mid-run"])
def test_sshd_down_then_back_rejoins(when: str, make_fleet: MakeFleet, suites: Any, tmp_path: Path) -> None:
    """sshd starting late (the machine is left out at the start) or killed and restarted mid-run (the
    machine is lost, its shards go elsewhere): re-probed every health.interval, it rejoins and takes work."""
    f = make_fleet(n=2)
    fs = suites(f, specs(20, 1.0))
    inv = f.write_inventory(tmp_path / "machines.yaml", slots=1, suite=fs.suite(shards=20),
                            health={"interval": 1, "max_load_per_core": 100})   # not a test of load
    js = tmp_path / "r.json"
    if when == "late":
        f.stop_machine("h2")
    with run_in_background(inv, js) as proc:
        try:
            if when == "mid-run":
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and not f.processes("h2"):
                    time.sleep(0.05)
                f.stop_machine("h2")
            else:                                          # late: until the run started without it
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and not list((tmp_path / ".fleetshard").glob("runs/*/journal*")):
                    time.sleep(0.05)
            time.sleep(2.0)
            f.restart_machine("h2")
            back = time.time()
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, out + err
    data = report(js)
    all_passed(data, 20)
    later = [a for a in data["attempts"] if a["machine"] == "h2" and a["started"] > back]
    assert later and all(a["outcome"] == "passed" for a in later), data["attempts"]
    assert {m["name"]: m["status"] for m in data["machines"]}["h2"] == "healthy"
    assert f.wait_no_processes(5) == []


def test_partition_of_one_machine(tmp_path: Path) -> None:
    """iptables DROP of one machine's address, in a network namespace of its own: the machine is lost
    within its keepalive bound, its shards finish on the other, and once the link is back nothing of
    the run is left there."""
    from fleet import skip_reason

    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    name = f"fs-part-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, check=False)
    if made.returncode != 0 or shutil.which("iptables") is None:
        pytest.skip(f"network namespaces or iptables not permitted here: {made.stderr.strip()}")
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        script = Path(__file__).with_name("partition_run.py")
        res = subprocess.run(["ip", "netns", "exec", name, sys.executable, str(script)], capture_output=True,
                             text=True, timeout=240, check=False)
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result["code"] == 0, result["out"]
    all_passed(result["report"], 8)
    status = {m["name"]: m["status"] for m in result["report"]["machines"]}
    assert status["h2"] == "lost", result["out"]
    assert result["elapsed"] < 90
    assert result["left"] == []


def through_proxy(fleet: SshFleet, name: str, proxy: DelayProxy, tmp_path: Path) -> dict[str, Any]:
    """Inventory keys pointing machine ``name`` at ``proxy``, with a known_hosts line for the proxy's
    [address]:port carrying that machine's host key (what a port forward looks like to ssh)."""
    known = tmp_path / f"known_hosts-{name}-proxy"
    known.write_text(f"[{proxy.listen}]:{proxy.port} {fleet.machine(name).host_pubkey}\n")
    return {"host": proxy.listen, "port": proxy.port, "known_hosts": str(known), "connect_timeout": 20}


def test_a_slow_lossy_link(fleet: SshFleet, fleet_inventory: WriteInventory, suites: Any, tmp_path: Path) -> None:
    """One machine behind 100-300 ms per chunk and one-second stalls (loss, as TCP shows it): the run's
    verdict is right, every shard passes once, nothing is left running, in bounded time."""
    fs = suites(fleet, specs(8, 0.3))
    h1 = fleet.machine("h1")
    with DelayProxy((h1.address, h1.port), listen="127.0.0.241", stall_p=0.05, stall=1.0) as proxy:
        inv = fleet_inventory(machines=["h1", "h2"], suite=fs.suite(shards=4),
                              extra_machine_keys={"h1": through_proxy(fleet, "h1", proxy, tmp_path)},
                              health={"timeout": 20})
        js = tmp_path / "r.json"
        start = time.monotonic()
        res = fleetshard("run", "-i", inv, "--json-report", js, "--no-live", timeout=60)
        elapsed = time.monotonic() - start
        stats = proxy.stats
    assert res.code == 0, res.out + res.err
    data = report(js)
    all_passed(data, 4)
    assert [a["outcome"] for a in data["attempts"]] == ["passed"] * 4, data["attempts"]
    assert {a["machine"] for a in data["attempts"]} == {"h1", "h2"}, data["attempts"]
    assert sorted(f for s in data["shards"] for f in s["files"]) == sorted(specs(8))
    assert not any("JUnit not collected" in n for n in data["notes"]), data["notes"]
    assert stats.connections >= 1 and stats.stalls >= 1, stats
    assert fleet.wait_no_processes(5) == []
    assert elapsed < 45, f"the run took {elapsed:.1f} s"


BIG_JUNIT = ('j={junit}; mkdir -p "$(dirname "$j")"; '
             '{ echo \'<testsuite name="big" tests="1"><testcase classname="big" name="t"/>\'; '
             "head -c 6000000 /dev/zero | tr '\\000' ' '; echo '</testsuite>'; } > \"$j\"")


def downloading(tmp_path: Path) -> bool:
    """A JUnit file is arriving: the shards are done, their XML is on its way over the slow link."""
    return any(p.stat().st_size > 0 for p in (tmp_path / ".fleetshard" / "runs").glob("*/junit/*.xml"))


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_during_the_junit_download(presses: int, fleet: SshFleet, fleet_inventory: WriteInventory,
                                          tmp_path: Path) -> None:
    """Ctrl-C while large JUnit files come over a slow link: exit 130 within a few seconds, nothing
    left running, the run recorded. One Ctrl-C lets the downloads go on for the kill grace period, a
    second cuts them at once."""
    grace = 60 if presses == 2 else 2
    h1 = fleet.machine("h1")
    with DelayProxy((h1.address, h1.port), listen="127.0.0.242", delay=(0.02, 0.05), chunk=16384) as proxy:
        inv = fleet_inventory(machines=["h1"], suite={"command": BIG_JUNIT, "shards": 2, "timeout": 60,
                                                                 "kill_grace": grace},
                              extra_machine_keys={"h1": through_proxy(fleet, "h1", proxy, tmp_path)},
                              health={"timeout": 20})
        with subprocess.Popen([sys.executable, "-m", "fleetshard", "run", "-i", str(inv), "--no-live"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
            out, err = interrupt_when(proc, lambda: downloading(tmp_path), "the JUnit download", presses, grace)
    assert "Traceback" not in err and "internal error" not in out + err, out + err
    assert "JUnit download from h1 cut short (interrupted)" in out + err, out + err
    assert fleet.wait_no_processes(5) == []
    reports = list((tmp_path / ".fleetshard" / "runs").glob("*/report.json"))
    assert len(reports) == 1
    run_id = report(reports[0])["run_id"]
    hist = fleetshard("history", "-i", inv, "--json")
    runs = {r["id"]: r for r in json.loads(hist.out)}
    assert runs[run_id]["exit_code"] == 130, hist.out
