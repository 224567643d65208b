"""Per-machine services on the real sshd fleet: started in their own group, ready by URL or command,
stopped with TERM then KILL, failures carrying the service's output; and the inventory's services key."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from fleet import SshFleet

from fleetshard.errors import ConfigError
from fleetshard.inventory import Machine, ServiceConfig, load_inventory
from fleetshard.services import ServiceError, ready_command, start_service, stop_service, wait_ready
from fleetshard.transport import SshTransport


def ssh_machine(fleet: SshFleet, name: str) -> Machine:
    m = fleet.machine(name)
    return Machine(name=name, host=m.address, port=m.port, user=fleet.user, identity_files=(str(fleet.client_key),),
                   known_hosts=str(fleet.known_hosts), connect_timeout=3, workdir=str(m.workdir))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_http_service_ready_by_url_then_stopped(fleet: SshFleet) -> None:
    port = free_port()
    env = {"SVC_PORT": str(port)}
    config = ServiceConfig(command="echo serving {machine} on $SVC_PORT; exec python3 -m http.server $SVC_PORT "
                                   "--bind 127.0.0.1", ready=f"http://127.0.0.1:{port}/", timeout=20)
    workdir = str(fleet.machine("h2").workdir)

    async def go() -> None:
        transport = SshTransport(ssh_machine(fleet, "h2"))
        await transport.connect()
        try:
            svc = await start_service(transport, config, machine="h2", cwd=workdir, env=env)
            await wait_ready(transport, svc, cwd=workdir, env=env)
            assert fleet.processes("h2")
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                pass
            assert any(line == f"serving h2 on {port}" for line in svc.output)
            await stop_service(svc, grace=2)
            assert svc.exited
        finally:
            await transport.close()

    asyncio.run(go())
    assert fleet.wait_no_processes(5, name="h2") == []


def test_service_that_exits_or_never_gets_ready_says_why(fleet: SshFleet) -> None:
    workdir = str(fleet.machine("h1").workdir)

    async def go() -> tuple[str, str]:
        transport = SshTransport(ssh_machine(fleet, "h1"))
        await transport.connect()
        try:
            dies = await start_service(transport, ServiceConfig(command="echo no database here; exit 3",
                                                                ready="false", timeout=10),
                                       machine="h1", cwd=workdir, env={})
            with pytest.raises(ServiceError) as died:
                await wait_ready(transport, dies, cwd=workdir, env={})
            # a service that ignores TERM: KILL after the grace period
            stuck = await start_service(transport, ServiceConfig(command="trap '' TERM; sleep 60", ready="false",
                                                                 timeout=0.5),
                                        machine="h1", cwd=workdir, env={})
            with pytest.raises(ServiceError) as late:
                await wait_ready(transport, stuck, cwd=workdir, env={})
            await stop_service(stuck, grace=0.5)
            return str(died.value), str(late.value)
        finally:
            await transport.close()

    died, late = asyncio.run(go())
    assert "exited before it was ready (exit 3)" in died and "no database here" in died
    assert "not ready within 0.5 s" in late and "'false'" in late
    assert fleet.wait_no_processes(5, name="h1") == []


def test_a_killed_coordinator_leaves_no_service(fleet: SshFleet) -> None:
    """The channel's end (the coordinator is gone) takes the service down with it."""
    workdir = str(fleet.machine("h3").workdir)

    async def go() -> None:
        transport = SshTransport(ssh_machine(fleet, "h3"))
        await transport.connect()
        svc = await start_service(transport, ServiceConfig(command="sleep 60"), machine="h3", cwd=workdir, env={})
        await wait_ready(transport, svc, cwd=workdir, env={})
        assert fleet.processes("h3")
        await transport.close()           # no stop: as if the coordinator had died

    asyncio.run(go())
    assert fleet.wait_no_processes(10, name="h3") == []


def test_ready_command_for_urls_and_commands() -> None:
    assert ready_command("pg_isready -p {machine}", "h1") == "pg_isready -p h1"
    url = ready_command("http://127.0.0.1:8080/{machine}?a=1&b=2", "h1")
    assert "curl -fsS" in url and "'http://127.0.0.1:8080/h1?a=1&b=2'" in url and "python3 -c" in url


def test_services_in_the_inventory(tmp_path: Path) -> None:
    inv = tmp_path / "machines.yaml"
    inv.write_text("machines:\n  a: {transport: local}\nsuite:\n  command: 'true'\n  services:\n"
                   "    - {command: 'python3 -m http.server 8000', ready: 'http://127.0.0.1:8000/', timeout: 5}\n"
                   "    - redis-server\n")
    services = load_inventory(inv).suite.services  # type: ignore[union-attr]
    assert services == (ServiceConfig("python3 -m http.server 8000", "http://127.0.0.1:8000/", 5.0, line=6),
                        ServiceConfig("redis-server", line=7))
    inv.write_text("machines:\n  a: {transport: local}\nsuite:\n  command: 'true'\n  services:\n"
                   "    - {command: x, ready: 'http://'}\n")
    with pytest.raises(ConfigError, match=r"machines.yaml:6: suite.services\[0\].ready: expected an http"):
        load_inventory(inv)


def test_ready_url_takes_the_machines_env() -> None:
    cmd = ready_command("http://127.0.0.1:${PORT}/$NOPE", "h1", {"PORT": "8123"})
    assert "'http://127.0.0.1:8123/$NOPE'" in cmd
