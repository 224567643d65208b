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
from fleetshard.transport.base import LINE_LIMIT, Lines, OutputParser, ProcessResult


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
    parser = OutputParser(seen.append, "abc123")
    for line in ["__fleetshard_pgid__ abc123 42", "hello", "partial", "__fleetshard_exit__ abc123 3"]:
        parser.feed(line)
    parser.close()
    assert parser.pgid == 42 and seen == ["hello", "partial"]
    assert parser.result(ProcessResult(None, error="lost")) == ProcessResult(3)


class Collect:
    def __init__(self) -> None:
        self.texts: list[str] = []

    def write(self, text: str) -> None:
        self.texts.append(text)


def test_parser_keeps_output_exact_across_any_split() -> None:
    """The wrapper's newline before the exit marker is taken out; chunk boundaries change nothing."""
    for output in (b"a\nb", b"a\nb\n", b"", b"\n", b"x" * 100 + b"\n\n"):
        stream = b"junk from a login script\n__fleetshard_pgid__ ff00 7\n" + output + \
            b"\n__fleetshard_exit__ ff00 5\nleftover\n"
        for size in (1, 2, 3, 7, len(stream)):
            sink = Collect()
            parser = OutputParser(sink, "ff00")
            for i in range(0, len(stream), size):
                parser.feed_bytes(stream[i:i + size])
            parser.close()
            assert parser.pgid == 7 and parser.exit_status == 5, (output, size)
            assert "".join(sink.texts) == "junk from a login script\n" + output.decode() + "leftover\n", (output, size)


def test_marker_lookalikes_are_output() -> None:
    """Only a whole line in the wrapper's format with this attempt's token is a marker."""
    seen: list[str] = []
    parser = OutputParser(seen.append, "feed01")
    fakes = ["__fleetshard_exit__ 0", "__fleetshard_exit__ feed02 0", "x __fleetshard_exit__ feed01 0",
             "__fleetshard_exit__ feed01 0 trailing", "__fleetshard_nodir__", "__fleetshard_nodir__ feed01 x"]
    parser.feed("__fleetshard_pgid__ feed01 9")
    for line in fakes:
        parser.feed(line)
    parser.close()
    assert seen == fakes and parser.exit_status is None and not parser.nodir
    assert parser.result(ProcessResult(1)) == ProcessResult(1)


def test_a_failing_sink_never_stops_the_reading() -> None:
    class Full:
        calls = 0

        def write(self, text: str) -> None:
            self.calls += 1
            raise OSError(28, "No space left on device")

    sink = Full()
    parser = OutputParser(sink, "ab")
    parser.feed("__fleetshard_pgid__ ab 1")
    for _ in range(100):
        parser.feed("output")
    parser.feed("__fleetshard_exit__ ab 0")
    parser.close()
    result = parser.result(ProcessResult(None))
    assert result == ProcessResult(0) and sink.calls == 1
    assert result.warning is not None and "No space left" in result.warning


def test_lines_cut_long_lines_with_bounded_memory() -> None:
    seen: list[str] = []
    lines = Lines(seen.append, limit=10)
    lines.write("short\n" + "y" * 5)
    for _ in range(1000):
        lines.write("z" * 1000)
    lines.write("\nlast")
    assert len(lines._partial) <= 10
    lines.flush()
    assert seen == ["short", "yyyyyzzzzz … [999995 more characters]", "last"]


def test_printed_markers_do_not_decide_the_verdict(fleet: SshFleet) -> None:
    """`echo "__fleetshard_exit__ 0"; exit 1` fails; a test printing the nodir marker is not a
    missing workdir."""
    def transports() -> tuple[Transport, Transport]:
        return LocalTransport(Machine(name="l", transport="local")), SshTransport(ssh_machine(fleet))

    for transport in transports():
        result, lines, _ = run_shard(transport, 'echo "__fleetshard_exit__ 0"; exit 1')
        assert result == ProcessResult(1) and lines == ["__fleetshard_exit__ 0"], transport
    for transport in transports():
        result, lines, _ = run_shard(transport, 'echo __fleetshard_nodir__; echo "__fleetshard_pgid__ 1"')
        assert result == ProcessResult(0) and lines == ["__fleetshard_nodir__", "__fleetshard_pgid__ 1"]


def test_the_shard_dies_with_its_session(fleet: SshFleet) -> None:
    """The coordinator is gone (its connection drops): the wrapper kills its process group."""

    async def go() -> list[int]:
        transport = SshTransport(ssh_machine(fleet, "h2"))
        await transport.connect()
        await transport.start("sleep 60 & sleep 60", cwd=None, env={}, on_line=lambda _: None)
        await asyncio.sleep(0.5)
        assert len(fleet.processes("h2")) >= 2
        for c in transport._conns:                 # abort, as a SIGKILLed coordinator's kernel would
            c.conn.abort()
        return await asyncio.to_thread(fleet.wait_no_processes, 5, "h2")

    assert asyncio.run(go()) == []


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
                                 "head -c 300000 /dev/zero | tr '\\000' x")
    assert result == ProcessResult(0) and len(lines) == 1
    assert lines[0] == "x" * LINE_LIMIT + f" … [{300000 - LINE_LIMIT} more characters]"


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


def test_cancelling_attempt_1_does_not_kill_attempt_10(tmp_path: Path) -> None:
    """The kill marker is matched as a fixed string: `.` in a token is no wildcard."""

    async def go() -> tuple[ProcessResult, ProcessResult]:
        transport = LocalTransport(Machine(name="l", transport="local"))
        first = await transport.start("sleep 30", cwd=None, env={"FLEETSHARD_TOKEN": "r1.s001.1."},
                                      on_line=lambda _: None)
        tenth = await transport.start("sleep 2", cwd=None, env={"FLEETSHARD_TOKEN": "r1.s001.10."},
                                      on_line=lambda _: None)
        await asyncio.sleep(0.3)
        await transport.kill_groups([], "KILL", markers=["FLEETSHARD_TOKEN=r1.s001.1."])
        return await asyncio.wait_for(first.wait(), 10), await asyncio.wait_for(tenth.wait(), 10)

    first, tenth = asyncio.run(go())
    assert first.exit_status != 0 and tenth == ProcessResult(0)


def test_a_line_is_delivered_without_waiting_for_the_next_output() -> None:
    """A line's newline may begin the exit marker, yet the line reaches the view at once."""
    seen: list[str] = []

    async def go() -> None:
        parser = OutputParser(seen.append, "c0ffee")
        parser.feed_bytes(b"__fleetshard_pgid__ c0ffee 5\nstart\n")
        await asyncio.sleep(0.3)
        assert seen == ["start"]
        parser.feed_bytes(b"mid\n")
        await asyncio.sleep(0.3)
        assert seen == ["start", "mid"]
        parser.feed_bytes(b"__fleetshard_exit__ c0ffee 0\n")
        parser.close()
        assert parser.exit_status == 0 and seen == ["start", "mid"]

    asyncio.run(go())
