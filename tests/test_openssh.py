"""`transport: openssh` (the system ssh client over a ControlMaster) against the real sshd fleet."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from clihelp import fleetshard
from fleet import SshFleet, WriteInventory

from fleetshard.errors import HostKeyError
from fleetshard.inventory import Machine
from fleetshard.transport.base import ProcessResult
from fleetshard.transport.openssh import OpenSshTransport


def machine(fleet: SshFleet, name: str = "h1", **kw: object) -> Machine:
    m = fleet.machine(name)
    fields: dict[str, object] = dict(name=name, transport="openssh", host=m.address, port=m.port, user=fleet.user,
                                     identity_files=(str(fleet.client_key),), known_hosts=str(fleet.known_hosts),
                                     connect_timeout=3, workdir=str(m.workdir))
    fields.update(kw)
    return Machine(**fields)  # type: ignore[arg-type]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b") ", 1)[1][:1] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def test_shard_markers_env_exit_status_and_master_cleanup(fleet: SshFleet) -> None:
    lines: list[str] = []

    async def go() -> tuple[ProcessResult, ProcessResult, tuple[ProcessResult, str], int | None, Path]:
        t = OpenSshTransport(machine(fleet))
        await t.connect()
        assert t._dir is not None and oct(t._dir.stat().st_mode & 0o777) == "0o700"
        directory = t._dir
        try:
            proc = await t.start('echo "$FOO"; echo "__fleetshard_exit__ 0"; exit 7', cwd=None,
                                 env={"FOO": "b a r"}, on_line=lines.append)
            status = await asyncio.wait_for(proc.wait(), 30)
            assert proc.pgid is not None
            nodir = await (await t.start("true", cwd="/nonexistent/dir", env={}, on_line=lines.append)).wait()
            ran = await t.run("cat; echo done", stdin="in put\n", timeout=20)
            return status, nodir, ran, t.master_pid, directory
        finally:
            await t.close()

    status, nodir, ran, pid, directory = asyncio.run(go())
    assert status == ProcessResult(7)
    assert lines == ["b a r", "__fleetshard_exit__ 0"]
    assert nodir.error == "workdir is missing"
    assert ran == (ProcessResult(0), "in put\ndone\n")
    assert pid is not None and not _alive(pid), "the ControlMaster outlived close()"
    assert not directory.exists()


def test_kill_group_and_dies_with_its_session(fleet: SshFleet) -> None:
    async def go() -> tuple[ProcessResult, list[int]]:
        t = OpenSshTransport(machine(fleet, "h2"))
        await t.connect()
        try:
            proc = await t.start("sleep 60 & sleep 60", cwd=None, env={}, on_line=lambda _: None)
            await asyncio.sleep(0.5)
            assert len(fleet.processes("h2")) >= 2
            await proc.signal_group("TERM")
            killed = await asyncio.wait_for(proc.wait(), 20)
            left_after_kill = await asyncio.to_thread(fleet.wait_no_processes, 5, "h2")
            assert left_after_kill == []
            # The coordinator goes away: its ssh client dies, the channel closes, the wrapper kills the group.
            await t.start("sleep 60 & sleep 60", cwd=None, env={}, on_line=lambda _: None)
            await asyncio.sleep(0.5)
            assert len(fleet.processes("h2")) >= 2
            for pid in _clients(t):
                os.kill(pid, 9)
            return killed, await asyncio.to_thread(fleet.wait_no_processes, 5, "h2")
        finally:
            await t.close()

    killed, left = asyncio.run(go())
    assert killed.exit_status != 0
    assert left == []


def _clients(t: OpenSshTransport) -> list[int]:
    """This test process's ssh clients of the transport (not the master)."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(b") ", 1)[1].split()[1])
        if ppid == me and cmd[0] == b"ssh" and b"ControlMaster=no" in cmd:
            found.append(int(entry))
    return found


def test_files_over_the_master(fleet: SshFleet, tmp_path: Path) -> None:
    src = tmp_path / "src.txt"
    src.write_text("hello\n")

    async def go() -> tuple[bool, bool, str]:
        t = OpenSshTransport(machine(fleet))
        try:
            await t.connect()
            remote = str(fleet["h1"].workdir / "copied.txt")
            await t.put_file(str(src), remote)
            got = await t.get_file(remote, str(tmp_path / "back" / "copied.txt"))
            missing = await t.get_file(str(fleet["h1"].workdir / "nope.txt"), str(tmp_path / "nope.txt"))
            return got, missing, (tmp_path / "back" / "copied.txt").read_text()
        finally:
            await t.close()

    assert asyncio.run(go()) == (True, False, "hello\n")


def test_unknown_host_key_refused_unless_accept_new(fleet: SshFleet, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"

    async def go(accept: bool) -> str:
        t = OpenSshTransport(machine(fleet, known_hosts=str(known)), accept_new_host_keys=accept)
        try:
            await t.connect()
            _, out = await t.run('echo "$FLEETSHARD_TEST_HOST"', timeout=20)
            return out.strip()
        finally:
            await t.close()

    with pytest.raises(HostKeyError, match="unknown host key"):
        asyncio.run(go(False))
    assert asyncio.run(go(True)) == "h1"
    found = subprocess.run(["ssh-keygen", "-F", f"[{fleet['h1'].address}]:{fleet['h1'].port}", "-f", str(known)],
                           capture_output=True, text=True, check=False)   # hashed or not, as ssh_config says
    assert found.returncode == 0 and fleet["h1"].host_pubkey.split()[1] in found.stdout
    assert asyncio.run(go(False)) == "h1"              # recorded: known now
    wrong = fleet.write_known_hosts(tmp_path / "wrong", wrong=["h1"])
    with pytest.raises(HostKeyError, match="HOST KEY CHANGED"):
        asyncio.run(_connect(OpenSshTransport(machine(fleet, known_hosts=str(wrong)), accept_new_host_keys=True)))


async def _connect(t: OpenSshTransport) -> None:
    try:
        await t.connect()
    finally:
        await t.close()


def test_master_ended_when_the_coordinator_exits_without_closing(fleet: SshFleet, tmp_path: Path) -> None:
    m = fleet.machine("h1")
    script = textwrap.dedent(f"""\
        import asyncio
        from fleetshard.inventory import Machine
        from fleetshard.transport.openssh import OpenSshTransport
        t = OpenSshTransport(Machine(name="h1", transport="openssh", host={m.address!r}, port={m.port},
                                     user={fleet.user!r}, identity_files=({str(fleet.client_key)!r},),
                                     known_hosts={str(fleet.known_hosts)!r}, connect_timeout=3))
        asyncio.run(t.connect())
        print(t.master_pid, t._dir, flush=True)
        """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[1], check=True).stdout.split()
    pid = int(out[0])
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), "the ControlMaster outlived the coordinator"


def test_run_and_health_with_transport_openssh(fleet: SshFleet, fleet_inventory: WriteInventory,
                                               tmp_path: Path) -> None:
    suite = {"command": 'echo "on $FLEETSHARD_TEST_HOST shard {shard}/{total}"', "shards": 4}
    inv = fleet_inventory(machines=["h1", "h2"], suite=suite,
                          extra_machine_keys={"h1": {"transport": "openssh"}, "h2": {"transport": "openssh"}})
    health = fleetshard("health", "-i", inv, "--json")
    assert health.code == 0, health.out + health.err
    data = json.loads(health.out)["machines"]
    assert all(m["healthy"] and m["cores"] >= 1 for m in data)
    report = tmp_path / "r.json"
    run = fleetshard("run", "-i", inv, "--no-live", "--json-report", report)
    assert run.code == 0, run.out + run.err
    attempts = json.loads(report.read_text())["attempts"]
    assert sorted(a["outcome"] for a in attempts) == ["passed"] * 4
    assert {a["machine"] for a in attempts} <= {"h1", "h2"}
    assert fleet.wait_no_processes(5) == []
    assert not [p for p in Path("/tmp").glob("fleetshard-ssh-*") if p.stat().st_uid == os.getuid()
                and p.stat().st_mtime > time.time() - 60 and (p / "master").exists()]
