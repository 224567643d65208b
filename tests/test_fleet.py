"""The test fleet itself: real sshd processes that behave like machines, and the faults it injects."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from fleet import MakeFleet, SshFleet, WriteInventory, _descendants, cgroup_skip_reason, skip_reason


def ssh(fleet: SshFleet, name: str, command: str, *, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*fleet.ssh_args(name), command],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def refuses(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def sshd_pids_under(root: Path) -> list[int]:
    """sshd processes whose command line names a config below ``root``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
        except OSError:
            continue
        if "sshd" in cmdline and str(root) in cmdline:
            found.append(int(entry))
    return found


def test_fleet_available_here() -> None:
    assert skip_reason() is None


def test_every_machine_runs_commands_with_its_identity(fleet: SshFleet) -> None:
    assert fleet.names == ["h1", "h2", "h3", "h4"]
    assert [m.address for m in fleet.machines] == ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
    assert all(m.port not in (0, 22) for m in fleet.machines)
    procs = {
        m.name: subprocess.Popen(
            [*fleet.ssh_args(m.name), "echo $FLEETSHARD_TEST_HOST $FLEETSHARD_TEST_SPEED; id -un; cd ~"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for m in fleet.machines
    }
    outputs = {name: proc.communicate(timeout=10) for name, proc in procs.items()}
    expected = {"h1": "1", "h2": "1", "h3": "2", "h4": "3"}
    for name, (out, err) in outputs.items():
        assert procs[name].returncode == 0, err
        assert err == ""
        assert out.split() == [name, expected[name], fleet.user]


def test_known_hosts_lines_are_openssh_form(fleet: SshFleet) -> None:
    lines = fleet.known_hosts.read_text().splitlines()
    assert len(lines) == 4
    for m, line in zip(fleet.machines, lines, strict=True):
        assert re.fullmatch(rf"\[{re.escape(m.address)}\]:{m.port} ssh-ed25519 AAAA\S+", line)
        assert line.endswith(m.host_pubkey)


def test_wrong_host_key_is_refused(fleet: SshFleet, tmp_path: Path) -> None:
    bad = fleet.write_known_hosts(tmp_path / "known_hosts", wrong=["h2"])
    result = subprocess.run(
        [*fleet.ssh_args("h2", known_hosts=bad), "true"], capture_output=True, text=True, timeout=10
    )
    assert result.returncode == 255
    assert "HOST IDENTIFICATION HAS CHANGED" in result.stderr or "verification failed" in result.stderr
    assert ssh(fleet, "h2", "true").returncode == 0


def test_sftp_subsystem(fleet: SshFleet, tmp_path: Path) -> None:
    m = fleet.machine("h3")
    local = tmp_path / "payload.txt"
    local.write_text("over sftp\n")
    target = m.workdir / f"sftp-{os.getpid()}.txt"
    batch = tmp_path / "batch"
    batch.write_text(f"put {local} {target}\nls {target}\n")
    result = subprocess.run(
        [
            "sftp",
            "-b",
            str(batch),
            "-i",
            str(fleet.client_key),
            "-o",
            f"UserKnownHostsFile={fleet.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-P",
            str(m.port),
            f"{fleet.user}@{m.address}",
        ],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 0, result.stderr
    assert target.read_text() == "over sftp\n"
    target.unlink()


def test_workdir_is_writable_by_the_login_user(fleet: SshFleet) -> None:
    m = fleet.machine("h1")
    name = f"w-{os.getpid()}"
    result = ssh(fleet, "h1", f"cd {m.workdir} && echo $PWD > {name}")
    assert result.returncode == 0, result.stderr
    assert (m.workdir / name).read_text().strip() == str(m.workdir)
    (m.workdir / name).unlink()


def test_processes_finds_background_jobs(fleet: SshFleet) -> None:
    result = ssh(fleet, "h2", "nohup sleep 30 >/dev/null 2>&1 & echo $!")
    assert result.returncode == 0, result.stderr
    pid = int(result.stdout)
    try:
        assert pid in fleet.processes("h2")
        assert pid in fleet.processes()
        assert pid not in fleet.processes("h1")
    finally:
        os.kill(pid, 9)
    assert fleet.wait_no_processes(timeout=5) == []


def test_write_inventory(fleet: SshFleet, fleet_inventory: WriteInventory) -> None:
    path = fleet_inventory(
        machines=["h1", "h3"],
        slots={"h1": 3},
        suite={"command": "pytest {files}", "tests": "tests/**/test_*.py"},
        health={"timeout": 2},
        extra_machine_keys={"gone": {"host": "127.0.0.250", "port": 1}, "h3": {"tags": ["slow"]}},
        top={"ignored_by_nobody": True},
    )
    doc = yaml.safe_load(path.read_text())
    assert doc["defaults"] == {
        "user": fleet.user,
        "identity_file": str(fleet.client_key),
        "known_hosts": str(fleet.known_hosts),
        "connect_timeout": 3,
    }
    h1, h3 = fleet.machine("h1"), fleet.machine("h3")
    assert doc["machines"] == {
        "h1": {"host": h1.address, "port": h1.port, "slots": 3, "workdir": str(h1.workdir)},
        "h3": {"host": h3.address, "port": h3.port, "workdir": str(h3.workdir), "tags": ["slow"]},
        "gone": {"host": "127.0.0.250", "port": 1},
    }
    assert doc["suite"]["command"] == "pytest {files}"
    assert doc["health"] == {"max_load_per_core": 1000, "timeout": 2}
    assert doc["ignored_by_nobody"] is True
    default = yaml.safe_load(fleet_inventory(path=path.with_name("all.yaml")).read_text())
    assert [e["slots"] for e in default["machines"].values()] == [2, 2, 2, 2]


def test_unused_address_refuses(fleet: SshFleet) -> None:
    address, port = fleet.unused_address()
    assert address.startswith("127.") and address not in {m.address for m in fleet.machines}
    assert refuses(address, port)


def test_stop_and_restart_machine(make_fleet: MakeFleet) -> None:
    f = make_fleet(2)
    h1 = f.machine("h1")
    assert ssh(f, "h1", "true").returncode == 0
    sleeper = subprocess.Popen(
        [*f.ssh_args("h1"), "sleep 30"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    detached = int(ssh(f, "h1", "nohup sleep 30 >/dev/null 2>&1 & echo $!").stdout)
    deadline = time.monotonic() + 5
    while len(f.processes("h1")) < 2 and time.monotonic() < deadline:  # the sleeper's session starts
        time.sleep(0.01)
    assert len(f.processes("h1")) >= 2
    listener = h1.pid
    assert listener is not None
    sessions = f.session_pids("h1")
    assert sessions

    f.stop_machine("h1")
    assert not h1.running
    assert refuses(h1.address, h1.port)
    assert _descendants([listener]) == set()
    assert f.processes("h1") == []
    assert not any(_alive(p) for p in sessions)
    assert not _alive(detached)
    sleeper.communicate(timeout=10)
    assert sleeper.returncode == 255  # the connection dropped
    assert ssh(f, "h2", "echo $FLEETSHARD_TEST_HOST").stdout == "h2\n"  # the other machine is untouched

    port = h1.port
    f.restart_machine("h1")
    assert h1.running and h1.port == port
    assert ssh(f, "h1", "echo $FLEETSHARD_TEST_HOST").stdout == "h1\n"  # same host key: known_hosts holds


def test_pause_and_resume_sessions(make_fleet: MakeFleet) -> None:
    f = make_fleet(1)
    proc = subprocess.Popen(
        [*f.ssh_args("h1"), "echo ready; read line; echo got $line"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline() == "ready\n"
    paused = f.pause_sessions("h1")
    assert paused
    assert f.machine("h1").pid not in paused
    # The listener still accepts: a new session runs while the old one hangs.
    assert ssh(f, "h1", "echo alive").stdout == "alive\n"
    with pytest.raises(subprocess.TimeoutExpired):
        proc.communicate("x\n", timeout=0.5)
    f.resume_sessions("h1")
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert out == "got x\n"


def test_teardown_leaves_nothing(make_fleet: MakeFleet) -> None:
    f = make_fleet(3)
    pid = int(ssh(f, "h3", "nohup sleep 30 >/dev/null 2>&1 & echo $!").stdout)
    listeners = [m.pid for m in f.machines]
    assert len(sshd_pids_under(f.root)) >= 3
    f.pause_sessions("h2")
    f.stop()
    f.stop()  # idempotent
    assert sshd_pids_under(f.root) == []
    assert all(not _alive(p) for p in listeners if p is not None)
    assert not _alive(pid)
    assert f.processes() == []
    assert all(refuses(m.address, m.port) for m in f.machines)
    assert all(m.cgroup is None or not m.cgroup.exists() for m in f.machines)


def _cpu_stat(cgroup: Path) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in (cgroup / "cpu.stat").read_text().splitlines())}


def test_slow_machines_get_a_cpu_quota_their_sessions_inherit(make_fleet: MakeFleet) -> None:
    reason = cgroup_skip_reason()
    if reason is not None:
        pytest.skip(f"no CPU quotas here ({reason}): slow machines only sleep longer")
    f = make_fleet(2, speeds=[1, 4])
    assert f.cgroups
    fast, slow = f.machines
    assert fast.cgroup is not None and slow.cgroup is not None
    assert (slow.cgroup / "cpu.cfs_quota_us").read_text().strip() == str(2_500)
    assert (fast.cgroup / "cpu.cfs_quota_us").read_text().strip() == str(10_000)
    assert slow.pid in f.cgroup_pids("h2")
    # A session and its children are in the machine's cgroup, and say so in their environment.
    out = ssh(f, "h2", "sh -c 'echo $FLEETSHARD_TEST_CPU; cat /proc/self/cgroup'").stdout
    assert out.splitlines()[0] == "0.25"
    assert any(line.endswith(":/" + slow.cgroup.name) for line in out.splitlines() if ":cpu:" in line)
    # CPU-bound work there is throttled by the quota (a count, not a timing).
    before = _cpu_stat(slow.cgroup)["nr_throttled"]
    burned = ssh(f, "h2", "python3 -c 'print(sum(range(3_000_000)))'")
    assert burned.stdout.strip() == str(sum(range(3_000_000))), burned.stderr
    assert _cpu_stat(slow.cgroup)["nr_throttled"] > before
    # A restarted machine is confined again.
    f.restart_machine("h2")
    assert slow.pid in f.cgroup_pids("h2")
    f.stop()
    assert not fast.cgroup.exists() and not slow.cgroup.exists()


def test_without_cgroups_slowness_is_sleep_only(make_fleet: MakeFleet) -> None:
    f = make_fleet(1, speeds=[3], cgroups=False)
    assert not f.cgroups and f.machines[0].cgroup is None
    assert ssh(f, "h1", "echo $FLEETSHARD_TEST_SPEED $FLEETSHARD_TEST_CPU").stdout.split() == ["3", "none"]


def _alive(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return False
    return data[data.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")
