"""OpenSSH configuration keywords against the real sshd fleet, through a test-only ssh config file.

Each test writes an ``ssh_config`` naming fleet machines by alias, loads an inventory with it and
connects with the transport under test (``ssh`` = asyncssh, ``openssh`` = the system client).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fleet import MakeFleet, SshFleet

from fleetshard.errors import ConnectError
from fleetshard.inventory import Machine, load_inventory
from fleetshard.transport import transport_for

TRANSPORTS = ["ssh", "openssh"]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME with an empty ~/.ssh: no default keys, no agent, no known_hosts of the real user."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home


def base_config(fleet: SshFleet, *, key: bool = True, known: bool = True) -> str:
    lines = ["Host *", f"  User {fleet.user}"]
    if key:
        lines.append(f"  IdentityFile {fleet.client_key}")
    if known:
        lines.append(f"  UserKnownHostsFile {fleet.known_hosts}")
    return "\n".join(lines) + "\n"


def host_block(fleet: SshFleet, alias: str, name: str, extra: str = "") -> str:
    m = fleet.machine(name)
    return f"Host {alias}\n  HostName {m.address}\n  Port {m.port}\n" + textwrap.indent(extra, "  ")


def load(tmp_path: Path, config: str, machines: str, transport: str = "ssh") -> list[Machine]:
    cfg = tmp_path / "ssh_config"
    cfg.write_text(config)
    inv = tmp_path / "machines.yaml"
    inv.write_text(f"defaults: {{transport: {transport}, connect_timeout: 4}}\nmachines:\n"
                   + textwrap.indent(textwrap.dedent(machines), "  "))
    return list(load_inventory(inv, ssh_config=cfg).machines)


def where(machine: Machine, command: str = 'echo "$FLEETSHARD_TEST_HOST"') -> str:
    """Connect, run ``command``, close; its output (the fleet machine's name by default)."""

    async def go() -> str:
        transport = transport_for(machine)
        try:
            await transport.connect()
            result, out = await transport.run(command, timeout=20)
            assert result.exit_status == 0, (result, out)
            return out.strip()
        finally:
            await transport.close()

    return asyncio.run(go())


def connect_error(machine: Machine) -> str:
    async def go() -> str:
        transport = transport_for(machine)
        try:
            await transport.connect()
            result, out = await transport.run("true", timeout=20)
            return f"connected: {result} {out}"
        except ConnectError as exc:
            return str(exc)
        finally:
            await transport.close()

    return asyncio.run(go())


def proxy_script(tmp_path: Path, fleet: SshFleet, via: str) -> tuple[Path, Path]:
    """A ProxyCommand that records its arguments and pid, then relays through ``via`` with ssh -W."""
    marker = tmp_path / "proxy.log"
    script = tmp_path / "proxy.sh"
    args = " ".join(fleet.ssh_args(via)[1:-1])
    target = fleet.ssh_args(via)[-1]
    script.write_text(f'#!/bin/sh\necho "$$ $1 $2" >> {marker}\nexec ssh -F /dev/null {args} -W "$1:$2" {target}\n')
    script.chmod(0o755)
    return script, marker


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_proxy_command(tmp_path: Path, home: Path, fleet: SshFleet, transport: str) -> None:
    script, marker = proxy_script(tmp_path, fleet, "h1")
    config = base_config(fleet) + host_block(fleet, "behind", "h2", f"ProxyCommand {script} %h %p\n")
    (m,) = load(tmp_path, config, "behind: {}\n", transport)
    assert m.proxy_command == f"{script} {fleet['h2'].address} {fleet['h2'].port}"
    assert where(m) == "h2"
    pid, host, port = marker.read_text().split()
    assert (host, port) == (fleet["h2"].address, str(fleet["h2"].port))
    deadline = time.monotonic() + 5
    while _pid_alive(int(pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _pid_alive(int(pid)), "the ProxyCommand outlived the connection"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_proxy_command_false_fails(tmp_path: Path, home: Path, fleet: SshFleet, transport: str) -> None:
    config = base_config(fleet) + host_block(fleet, "never", "h2", "ProxyCommand false\n")
    (m,) = load(tmp_path, config, "never: {}\n", transport)
    message = connect_error(m)
    assert not message.startswith("connected"), message
    assert message.startswith("never: ")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_proxy_jump_two_hops(tmp_path: Path, home: Path, fleet: SshFleet, transport: str) -> None:
    config = (base_config(fleet) + host_block(fleet, "hopa", "h1") + host_block(fleet, "hopb", "h2")
              + host_block(fleet, "far", "h3", "ProxyJump hopa,hopb\n"))
    (m,) = load(tmp_path, config, "far: {}\n", transport)
    assert [j.alias for j in m.jumps] == ["hopa", "hopb"]
    assert [j.host for j in m.jumps] == [fleet["h1"].address, fleet["h2"].address]
    before = {n: len(fleet.session_pids(n)) for n in ("h1", "h2")}

    async def go() -> tuple[str, dict[str, int]]:
        t = transport_for(m)
        try:
            await t.connect()
            _, out = await t.run('echo "$FLEETSHARD_TEST_HOST"', timeout=20)
            during = {n: len(fleet.session_pids(n)) for n in ("h1", "h2")}
            return out.strip(), during
        finally:
            await t.close()

    out, during = asyncio.run(go())
    assert out == "h3"
    assert during["h1"] > before["h1"] and during["h2"] > before["h2"], (before, during)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_match_host_is_the_target_after_hostname(tmp_path: Path, home: Path, fleet: SshFleet,
                                                  transport: str) -> None:
    h2 = fleet["h2"]
    config = base_config(fleet) + textwrap.dedent(f"""\
        Host box
          HostName {h2.address}
        Match host box
          Port 1
        Match host {h2.address}
          Port {h2.port}
        """)
    (m,) = load(tmp_path, config, "box: {}\n", transport)
    assert (m.host, m.port) == (h2.address, h2.port)
    assert where(m) == "h2"


def test_match_originalhost_exec_localuser_final(tmp_path: Path, home: Path, fleet: SshFleet) -> None:
    import getpass

    h1, h2 = fleet["h1"], fleet["h2"]
    flag = tmp_path / "flag"
    config = base_config(fleet) + textwrap.dedent(f"""\
        Match originalhost one
          HostName {h1.address}
        Match originalhost one exec "test -e {flag}"
          Port {h1.port}
        Match localuser {getpass.getuser()}
          ConnectTimeout 7
        Match localuser nobody-like-this
          ConnectTimeout 1
        Host two
          HostName {h2.address}
        Match final host {h2.address}
          Port {h2.port}
        """)
    flag.write_text("")
    one, two = load(tmp_path, config, "one: {}\ntwo: {}\n")
    assert (one.host, one.port, one.connect_timeout) == (h1.address, h1.port, 7.0)
    assert (two.host, two.port) == (h2.address, h2.port)
    assert where(one) == "h1" and where(two) == "h2"
    flag.unlink()
    (again,) = load(tmp_path, config, "one: {}\n")
    assert again.port == 22  # Match exec no longer true


def test_match_canonical_and_unknown_keywords_are_warned(tmp_path: Path, home: Path, fleet: SshFleet) -> None:
    config = base_config(fleet) + host_block(fleet, "box", "h1", "LocalForward 9999 localhost:22\n"
                                             "StrictHostKeyChecking no\nControlMaster auto\n")
    config += "Match canonical host box\n  User somebody\n"
    (m,) = load(tmp_path, config, "box: {}\n")
    text = "\n".join(m.warnings)
    assert "Match canonical is not supported" in text
    assert "LocalForward not supported by the ssh transport" in text
    assert "StrictHostKeyChecking is ignored: host keys are always verified" in text
    assert "ControlMaster" not in text            # no effect on fleetshard: not warned
    assert len(m.warnings) == 3
    assert where(m) == "h1"                        # and it still connects, verifying the host key
    (o,) = load(tmp_path, config, "box: {}\n", "openssh")   # ssh honours the rest itself
    assert o.warnings == (f"{tmp_path / 'ssh_config'}: StrictHostKeyChecking is ignored: host keys are always "
                          "verified (--accept-new-host-keys records new ones) (Host box)",)
    assert where(o) == "h1"


def test_host_patterns_are_case_sensitive(tmp_path: Path, home: Path, fleet: SshFleet) -> None:
    config = base_config(fleet) + host_block(fleet, "Box", "h1")
    upper, lower = load(tmp_path, config, "Box: {}\nbox: {}\n")
    assert upper.host == fleet["h1"].address and upper.port == fleet["h1"].port
    assert (lower.host, lower.port) == ("box", 22)


@pytest.fixture
def agent(tmp_path: Path, fleet: SshFleet) -> Iterator[Path]:
    sock = tmp_path / "agent.sock"
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        subprocess.run(["ssh-add", str(fleet.client_key)], env={**os.environ, "SSH_AUTH_SOCK": str(sock)},
                       check=True, capture_output=True)
        yield sock
    finally:
        proc.terminate()
        proc.wait(5)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_identity_agent(tmp_path: Path, home: Path, fleet: SshFleet, agent: Path, transport: str) -> None:
    config = base_config(fleet, key=False) + host_block(fleet, "box", "h1", f"IdentityAgent {agent}\n")
    config += host_block(fleet, "noagent", "h1", "IdentityAgent none\n")
    box, noagent = load(tmp_path, config, "box: {}\nnoagent: {}\n", transport)
    assert box.identity_agent == str(agent) and box.identity_files == ()
    assert where(box) == "h1"
    assert "authentication" in connect_error(noagent).lower() or "permission" in connect_error(noagent).lower()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_user_known_hosts_file(tmp_path: Path, home: Path, fleet: SshFleet, transport: str) -> None:
    config = base_config(fleet, known=False) + host_block(fleet, "known", "h1",
                                                          f"UserKnownHostsFile {fleet.known_hosts}\n")
    config += host_block(fleet, "unknown", "h1")
    known, unknown = load(tmp_path, config, "known: {}\nunknown: {}\n", transport)
    assert known.known_hosts == str(fleet.known_hosts)
    assert where(known) == "h1"
    assert "host key" in connect_error(unknown).lower()   # ~/.ssh/known_hosts is empty: refused, no prompt


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_certificate_file(tmp_path: Path, home: Path, make_fleet: MakeFleet, transport: str) -> None:
    fleet = make_fleet(1)
    ca = tmp_path / "ca"
    user_key = tmp_path / "user"
    for key in (ca, user_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    subprocess.run(["ssh-keygen", "-q", "-s", str(ca), "-I", "fleetshard-test", "-n", fleet.user,
                    f"{user_key}.pub"], check=True)
    cert_file = tmp_path / "signed.cert"          # not beside the key, where ssh would find it by itself
    Path(f"{user_key}-cert.pub").rename(cert_file)
    with fleet.authorized_keys.open("a") as fh:
        fh.write("cert-authority " + Path(f"{ca}.pub").read_text())
    config = base_config(fleet, key=False) + host_block(
        fleet, "cert", "h1", f"IdentityFile {user_key}\nCertificateFile {cert_file}\n")
    config += host_block(fleet, "nocert", "h1", f"IdentityFile {user_key}\n")
    cert, nocert = load(tmp_path, config, "cert: {}\nnocert: {}\n", transport)
    assert cert.certificate_files == (str(cert_file),)
    assert where(cert) == "h1"
    assert "authentication" in connect_error(nocert).lower() or "permission" in connect_error(nocert).lower()


def test_server_alive_interval(tmp_path: Path, home: Path, fleet: SshFleet) -> None:
    config = base_config(fleet) + host_block(fleet, "box", "h1", "ServerAliveInterval 7\nServerAliveCountMax 4\n")
    (m,) = load(tmp_path, config, "box: {}\n")
    assert (m.server_alive_interval, m.server_alive_count_max) == (7.0, 4)

    async def go() -> tuple[float, int]:
        t = transport_for(m)
        try:
            await t.connect()
            conn = t._conns[0].conn  # type: ignore[attr-defined]
            return conn._keepalive_interval, conn._keepalive_count_max
        finally:
            await t.close()

    assert asyncio.run(go()) == (7.0, 4)


def test_inventory_values_beat_ssh_config_and_defaults_lose(tmp_path: Path, home: Path, fleet: SshFleet) -> None:
    h1, h2 = fleet["h1"], fleet["h2"]
    config = base_config(fleet) + host_block(fleet, "box", "h1")
    cfg = tmp_path / "ssh_config"
    cfg.write_text(config)
    inv = tmp_path / "machines.yaml"
    inv.write_text(textwrap.dedent(f"""\
        defaults: {{user: nobody, port: 1, known_hosts: /nonexistent}}
        machines:
          box: {{}}
          other: {{host: box, port: {h2.port}}}
        """))
    box, other = load_inventory(inv, ssh_config=cfg).machines
    assert (box.user, box.port, box.known_hosts) == (fleet.user, h1.port, str(fleet.known_hosts))
    assert other.port == h2.port and other.host == h1.address


def test_cli_warns_once_per_machine(tmp_path: Path, home: Path, fleet: SshFleet) -> None:
    from clihelp import fleetshard

    config = base_config(fleet) + host_block(fleet, "box", "h1", "LocalForward 9999 localhost:22\n"
                                             "DynamicForward 1080\n")
    config += host_block(fleet, "clean", "h2")
    (home / ".ssh" / "config").write_text(config)
    inv = tmp_path / "machines.yaml"
    inv.write_text("health: {max_load_per_core: 1000}\nmachines:\n  box: {}\n  clean: {}\n")
    result = fleetshard("health", "-i", inv, env={"HOME": str(home)})
    assert result.code == 0, result
    warnings = [line for line in result.err.splitlines() if "warning" in line]
    assert warnings == [f"fleetshard: warning: box: {home}/.ssh/config: LocalForward, DynamicForward not "
                        "supported by the ssh transport, ignored (transport: openssh uses the system ssh "
                        "client, which honours them) (Host box)"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_inventory_jump_chain_without_ssh_config(tmp_path: Path, home: Path, fleet: SshFleet, transport: str) -> None:
    h1, h2, h3 = fleet["h1"], fleet["h2"], fleet["h3"]
    chain = f"{fleet.user}@{h1.address}:{h1.port},{fleet.user}@{h2.address}:{h2.port}"
    inv = tmp_path / "machines.yaml"
    inv.write_text(textwrap.dedent(f"""\
        defaults: {{user: {fleet.user}, identity_file: {fleet.client_key}, known_hosts: {fleet.known_hosts},
                    transport: {transport}, connect_timeout: 4}}
        machines:
          far: {{host: {h3.address}, port: {h3.port}, jump: "{chain}"}}
        """))
    empty = tmp_path / "empty_ssh_config"
    empty.write_text("")
    (m,) = load_inventory(inv, ssh_config=empty).machines
    assert [(j.host, j.port) for j in m.jumps] == [(h1.address, h1.port), (h2.address, h2.port)]
    assert where(m) == "h3"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_second_known_hosts_file_is_trusted_and_a_changed_key_there_refused(
        tmp_path: Path, home: Path, fleet: SshFleet, transport: str) -> None:
    first = tmp_path / "first_known_hosts"
    right = fleet.write_known_hosts(tmp_path / "right", wrong=[])
    wrong = fleet.write_known_hosts(tmp_path / "wrong", wrong=["h1"])
    config = base_config(fleet, known=False)
    config += host_block(fleet, "good", "h1", f"UserKnownHostsFile {first} {right}\n")
    config += host_block(fleet, "bad", "h1", f"UserKnownHostsFile {first} {wrong}\n")
    good, bad = load(tmp_path, config, "good: {}\nbad: {}\n", transport)
    assert (good.known_hosts, good.extra_known_hosts) == (str(first), (str(right),))
    assert where(good) == "h1"
    assert not first.exists() or first.read_text() == ""

    async def accept_new(machine: Machine) -> str:
        t = transport_for(machine, accept_new_host_keys=True)
        try:
            await t.connect()
            return "connected"
        except ConnectError as exc:
            return str(exc)
        finally:
            await t.close()

    message = asyncio.run(accept_new(bad))
    assert "changed" in message.lower() or "identification has changed" in message.lower(), message
