"""Transports on their own: the shard wrapper's markers, long lines, leftover children, bad known_hosts."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from clihelp import fleetshard
from fleet import SshFleet, WriteInventory

from fleetshard.inventory import Machine
from fleetshard.transport import LocalTransport, SshTransport, Transport
from fleetshard.transport.base import OutputParser, ProcessResult


def run_shard(transport: Transport, command: str, cwd: str | None = None) -> tuple[ProcessResult, list[str], float]:
    lines: list[str] = []

    async def go() -> ProcessResult:
        await transport.connect()
        try:
            proc = await transport.start(command, cwd=cwd, env={"FOO": "b a r"}, on_line=lines.append)
            return await asyncio.wait_for(proc.wait(), 30)
        finally:
            await transport.close()

    start = time.monotonic()
    result = asyncio.run(go())
    return result, lines, time.monotonic() - start


def ssh_machine(fleet: SshFleet, name: str = "h1") -> Machine:
    m = fleet.machine(name)
    return Machine(name=name, host=m.address, port=m.port, user=fleet.user, identity_files=(str(fleet.client_key),),
                   known_hosts=str(fleet.known_hosts), connect_timeout=3, workdir=str(m.workdir))


def test_parser_takes_markers_out() -> None:
    seen: list[str] = []
    parser = OutputParser(seen.append)
    for line in ["__fleetshard_pgid__ 42", "hello", "partial__fleetshard_exit__ 3"]:
        parser.feed(line)
    assert parser.pgid == 42 and seen == ["hello", "partial"]
    assert parser.result(ProcessResult(None, error="lost")) == ProcessResult(3)


def test_exit_status_env_and_exit_inside_the_command(fleet: SshFleet) -> None:
    for transport in (LocalTransport(Machine(name="l", transport="local")), SshTransport(ssh_machine(fleet))):
        result, lines, _ = run_shard(transport, 'echo "$FOO"; exit 7')
        assert result == ProcessResult(7) and lines == ["b a r"], transport


def test_a_forgotten_background_child_does_not_hold_the_shard(fleet: SshFleet) -> None:
    for transport in (LocalTransport(Machine(name="l", transport="local")), SshTransport(ssh_machine(fleet))):
        result, lines, elapsed = run_shard(transport, "sleep 30 & echo started")
        assert result == ProcessResult(0) and lines == ["started"]
        assert elapsed < 10, transport
    assert fleet.wait_no_processes(5) == []


def test_a_very_long_line_without_newline(tmp_path: Path) -> None:
    result, lines, _ = run_shard(LocalTransport(Machine(name="l", transport="local")),
                                 "head -c 300000 /dev/zero | tr '\\\\0' x")
    assert result == ProcessResult(0) and len(lines) == 1 and len(lines[0]) == 300000


def test_missing_workdir_is_reported(fleet: SshFleet) -> None:
    result, _, _ = run_shard(SshTransport(ssh_machine(fleet)), "true", cwd="/nonexistent/dir")
    assert result.error == "workdir is missing"


def test_a_command_exiting_97_is_a_test_failure(fleet: SshFleet, fleet_inventory: WriteInventory,
                                                 tmp_path: Path) -> None:
    inv = fleet_inventory(machines=["h1"], suite={"command": "exit 97", "shards": 1})
    js = tmp_path / "r.json"
    res = fleetshard("run", "-i", inv, "--json-report", js)
    assert res.code == 1, res.out + res.err
    assert json.loads(js.read_text())["attempts"][0]["outcome"] == "tests-failed"


def test_malformed_known_hosts_is_a_clear_machine_failure(fleet: SshFleet, fleet_inventory: WriteInventory,
                                                          tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("@cert-authority\n")
    inv = fleet_inventory(machines=["h1", "h2"], extra_machine_keys={"h1": {"known_hosts": str(known)}})
    res = fleetshard("health", "-i", inv, "--json")
    assert res.code == 3 and "Traceback" not in res.err
    data = {m["machine"]: m for m in json.loads(res.out)["machines"]}
    assert not data["h1"]["reachable"] and data["h2"]["healthy"]
