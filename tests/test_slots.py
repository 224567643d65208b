"""Slot shells against real sshd: shard after shard over one channel, each in its own process group,
a killed, hung or leaky shard never poisoning the next, and a machine without one keeps a channel per shard."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from fleet import SshFleet

from fleetshard.inventory import Machine
from fleetshard.transport import SshTransport
from fleetshard.transport import slots as slots_module
from fleetshard.transport.base import ProcessResult
from fleetshard.transport.slots import SlotProcess


def ssh_machine(fleet: SshFleet, name: str) -> Machine:
    m = fleet.machine(name)
    return Machine(name=name, host=m.address, port=m.port, user=fleet.user, identity_files=(str(fleet.client_key),),
                   known_hosts=str(fleet.known_hosts), connect_timeout=3, workdir=str(m.workdir))


def with_transport(fleet: SshFleet, name: str, body: Callable[[SshTransport], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        transport = SshTransport(ssh_machine(fleet, name))
        await transport.connect()
        try:
            return await body(transport)
        finally:
            await transport.close()

    return asyncio.run(go())


async def shard(t: SshTransport, command: str, env: dict[str, str] | None = None,
                timeout: float = 20) -> tuple[ProcessResult, list[str], Any]:
    lines: list[str] = []
    proc = await t.start(command, cwd=None, env=env or {}, on_line=lines.append)
    return await asyncio.wait_for(proc.wait(), timeout), lines, proc


def _pgid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])


def _shells(fleet: SshFleet, name: str) -> list[int]:
    """The slot shells themselves (sshd made each a session leader); their forks look alike."""
    found = []
    for pid in fleet.processes(name):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cmdline = Path(f"/proc/{pid}/cmdline").read_text()
        except OSError:
            continue
        if "fleetshard-slot" in cmdline and int(fields[3]) == pid:
            found.append(pid)
    return found


def test_shards_run_one_after_another_in_one_slot_shell(fleet: SshFleet) -> None:
    async def body(t: SshTransport) -> None:
        seen = []
        for i in range(5):
            result, lines, proc = await shard(t, 'echo "$N"; exit "$N"', env={"N": str(i), "LC_ALL": "C.UTF-8"})
            assert isinstance(proc, SlotProcess)
            assert result == ProcessResult(i) and lines == [str(i)]
            seen.append(proc.pgid)
        assert len(set(seen)) == 5                     # a process group per shard
        assert len(t._shells) == 1 and len(t._idle) == 1   # one shell, one channel, for all of them
        # Whatever a shard exports stays its own; LC_ALL is the caller's.
        result, lines, _ = await shard(t, 'echo "${N-unset} ${LC_ALL-unset}"; printf "no newline"')
        assert result == ProcessResult(0) and lines == ["unset unset", "no newline"]

    with_transport(fleet, "h1", body)


def test_the_shard_group_is_its_own_not_the_shells(fleet: SshFleet) -> None:
    """The reported group holds the shard's processes and not the slot shell: killing it leaves the
    shell serving the next shard."""

    async def body(t: SshTransport) -> None:
        proc = await t.start("sleep 30 & sleep 30", cwd=None, env={}, on_line=lambda _: None)
        assert isinstance(proc, SlotProcess)
        await asyncio.wait_for(proc._parser.pgid_seen.wait(), 10)
        await asyncio.sleep(0.3)
        pgid = proc.pgid
        assert pgid is not None
        members = [p for p in fleet.processes("h1") if _pgid(p) == pgid]
        assert len(members) >= 2
        shell_pids = _shells(fleet, "h1")
        assert len(shell_pids) == 1 and _pgid(shell_pids[0]) != pgid
        await proc.signal_group("TERM")
        killed = await asyncio.wait_for(proc.wait(), 10)
        assert killed.signal == "TERM" or (killed.exit_status or 0) != 0
        result, lines, _ = await shard(t, "echo next")
        assert result == ProcessResult(0) and lines == ["next"]
        assert len(t._shells) == 1

    with_transport(fleet, "h1", body)


def test_a_term_ignoring_and_a_stopped_shard_are_killed_and_the_next_runs(fleet: SshFleet) -> None:
    async def body(t: SshTransport) -> None:
        proc = await t.start("trap '' TERM; echo ready; while :; do sleep 0.1; done", cwd=None, env={},
                             on_line=lambda _: None)
        await asyncio.sleep(0.5)
        await proc.signal_group("TERM")
        await asyncio.sleep(0.3)
        await proc.signal_group("KILL")
        result = await asyncio.wait_for(proc.wait(), 10)
        assert result.signal == "KILL" or result.exit_status not in (None, 0)
        proc = await t.start("kill -STOP $BASHPID; echo never", cwd=None, env={}, on_line=lambda _: None)
        await asyncio.sleep(0.5)
        assert not proc._result.done()                 # stopped is not over
        await proc.signal_group("KILL")
        result = await asyncio.wait_for(proc.wait(), 10)
        assert result.exit_status is None
        result, lines, _ = await shard(t, "echo after")
        assert result == ProcessResult(0) and lines == ["after"]

    with_transport(fleet, "h2", body)


def test_leftovers_end_with_their_shard_and_never_reach_the_next(fleet: SshFleet) -> None:
    async def body(t: SshTransport) -> None:
        start = time.monotonic()
        result, lines, _ = await shard(t, "(sleep 0.3; echo late; sleep 30) & echo started")
        assert result == ProcessResult(0) and lines == ["started", "late"]   # their output within LINGER is kept
        assert time.monotonic() - start < 5
        left = await asyncio.to_thread(fleet.wait_no_processes, 5, "h3")
        # Only slot shells may be left (idle, waiting for a shard); nothing of the shard.
        assert set(left) <= set(_shells(fleet, "h3"))
        result, lines, _ = await shard(t, "echo clean")
        assert result == ProcessResult(0) and lines == ["clean"]

    with_transport(fleet, "h3", body)
    assert fleet.wait_no_processes(5, "h3") == []


def test_closing_the_channel_ends_the_running_shard(fleet: SshFleet) -> None:
    async def body(t: SshTransport) -> list[int]:
        await t.start("trap '' TERM; sleep 60 & sleep 60", cwd=None, env={}, on_line=lambda _: None)
        await asyncio.sleep(0.5)
        assert len(fleet.processes("h4")) >= 3
        for c in t._conns:                         # as a SIGKILLed coordinator's kernel would
            c.conn.abort()
        return await asyncio.to_thread(fleet.wait_no_processes, 8, "h4")

    assert with_transport(fleet, "h4", body) == []


def test_without_a_slot_shell_each_shard_gets_its_channel(fleet: SshFleet, monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine without bash says so; its shards run in a channel each, as before."""
    monkeypatch.setattr(slots_module, "SERVER", "printf '%s %s\\n' __fleetshard_noslot__ \"$1\"")

    async def body(t: SshTransport) -> None:
        for i in range(2):
            result, lines, proc = await shard(t, f"echo {i}")
            assert not isinstance(proc, SlotProcess)
            assert result == ProcessResult(0) and lines == [str(i)]
        assert t.persistent_shells is False

    with_transport(fleet, "h1", body)


def test_a_shell_that_hears_nothing_from_its_coordinator_ends(fleet: SshFleet) -> None:
    """A partition sshd never notices: the shell takes a coordinator silent for a few keepalive
    intervals for gone, and ends itself and its shard."""

    async def go() -> list[int]:
        m = ssh_machine(fleet, "h4")
        transport = SshTransport(Machine(**{**m.__dict__, "server_alive_interval": 1.0}))
        await transport.connect()
        try:
            await transport.start("sleep 60", cwd=None, env={}, on_line=lambda _: None)
            await asyncio.sleep(0.5)
            assert transport._heartbeat is not None
            transport._heartbeat.cancel()             # as if the link were cut: nothing reaches the shell
            return await asyncio.to_thread(fleet.wait_no_processes, 15, "h4")
        finally:
            await transport.close()

    assert asyncio.run(go()) == []
