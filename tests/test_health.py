"""`fleetshard health` against the real sshd fleet."""

from __future__ import annotations

import json
import time
from pathlib import Path

from clihelp import fleetshard
from fleet import SshFleet, WriteInventory


def test_healthy_fleet_json_and_table(fleet: SshFleet, fleet_inventory: WriteInventory) -> None:
    inv = fleet_inventory(slots=None)
    res = fleetshard("health", "-i", inv, "--json")
    assert res.code == 0, res.err
    data = json.loads(res.out)
    assert data["healthy"] is True
    by_name = {m["machine"]: m for m in data["machines"]}
    assert sorted(by_name) == ["h1", "h2", "h3", "h4"]
    for m in by_name.values():
        assert m["reachable"] and m["healthy"] and m["reasons"] == []
        assert m["cores"] >= 1 and m["slots"] == m["cores"]
        assert 0 <= m["mem_used_pct"] <= 100 and 0 <= m["disk_free_pct"] <= 100
        assert m["os"] == "Linux" and m["arch"]
        assert m["latency_ms"] is not None and m["latency_ms"] < 1000
        assert m["connect_s"] is not None
    table = fleetshard("health", "-i", inv)
    assert table.code == 0
    for name in ("h1", "h2", "h3", "h4"):
        assert name in table.out
    assert "4/4 machines healthy" in table.out


def test_select_by_name_and_tag(fleet: SshFleet, fleet_inventory: WriteInventory) -> None:
    inv = fleet_inventory(extra_machine_keys={"h3": {"tags": ["arm"]}})
    res = fleetshard("health", "-i", inv, "--json", "-m", "arm,h1")
    assert res.code == 0, res.err
    assert [m["machine"] for m in json.loads(res.out)["machines"]] == ["h1", "h3"]
    bad = fleetshard("health", "-i", inv, "-m", "nope")
    assert bad.code == 2 and 'no machine or tag named "nope"' in bad.err


def test_unreachable_machine_is_data_and_does_not_delay(fleet: SshFleet, fleet_inventory: WriteInventory) -> None:
    addr, port = fleet.unused_address()
    inv = fleet_inventory(extra_machine_keys={"gone": {"host": addr, "port": port}}, health={"timeout": 3})
    start = time.monotonic()
    res = fleetshard("health", "-i", inv, "--json")
    elapsed = time.monotonic() - start
    assert res.code == 3
    data = {m["machine"]: m for m in json.loads(res.out)["machines"]}
    assert data["gone"]["reachable"] is False and "refused" in data["gone"]["reasons"][0]
    assert all(data[h]["healthy"] for h in ("h1", "h2", "h3", "h4"))
    assert elapsed < 10


def test_blackholed_machine_times_out(fleet: SshFleet, fleet_inventory: WriteInventory) -> None:
    # A listener that accepts TCP but never speaks SSH: the probe gives up after the timeout.
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.251", 0))
    sock.listen(5)
    try:
        inv = fleet_inventory(machines=["h1"], extra_machine_keys={
            "mute": {"host": "127.0.0.251", "port": sock.getsockname()[1], "connect_timeout": 1}},
            health={"timeout": 2})
        start = time.monotonic()
        res = fleetshard("health", "-i", inv, "--json")
        assert res.code == 3
        data = {m["machine"]: m for m in json.loads(res.out)["machines"]}
        assert data["mute"]["reachable"] is False and data["h1"]["healthy"]
        assert time.monotonic() - start < 8
    finally:
        sock.close()


def test_threshold_breached(fleet: SshFleet, fleet_inventory: WriteInventory) -> None:
    inv = fleet_inventory(machines=["h1", "h2"], health={"min_disk_free_pct": 100})
    res = fleetshard("health", "-i", inv, "--json")
    assert res.code == 3
    for m in json.loads(res.out)["machines"]:
        assert m["reachable"] and not m["healthy"]
        assert "min_disk_free_pct" in m["reasons"][0]
    table = fleetshard("health", "-i", inv)
    assert "min_disk_free_pct" in table.out and "0/2 machines healthy" in table.out


def test_local_machine(tmp_path: Path) -> None:
    inv = tmp_path / "machines.yaml"
    inv.write_text("machines:\n  here: {transport: local}\nhealth: {max_load_per_core: 100, min_disk_free_pct: 0}\n")
    res = fleetshard("health", "-i", inv, "--json")
    assert res.code == 0, res.out + res.err
    (m,) = json.loads(res.out)["machines"]
    assert m["machine"] == "here" and m["transport"] == "local" and m["cores"] >= 1


def test_unknown_host_key_refused_then_accepted_new(fleet: SshFleet, fleet_inventory: WriteInventory,
                                                    tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    inv = fleet_inventory(machines=["h2"], extra_machine_keys={"h2": {"known_hosts": str(known)}})
    res = fleetshard("health", "-i", inv, "--json")
    assert res.code == 3
    reason = json.loads(res.out)["machines"][0]["reasons"][0]
    assert "unknown host key" in reason and "--accept-new-host-keys" in reason and "ssh-keyscan" in reason
    assert known.read_text() == ""
    ok = fleetshard("health", "-i", inv, "--json", "--accept-new-host-keys")
    assert ok.code == 0, ok.out
    m = fleet.machine("h2")
    assert f"[{m.address}]:{m.port} ssh-ed25519" in known.read_text()
    again = fleetshard("health", "-i", inv, "--json")       # recorded: now verified without the flag
    assert again.code == 0


def test_changed_host_key_is_always_refused(fleet: SshFleet, fleet_inventory: WriteInventory,
                                            tmp_path: Path) -> None:
    known = fleet.write_known_hosts(tmp_path / "known_hosts", wrong=["h1"])
    before = known.read_text()
    inv = fleet_inventory(machines=["h1", "h2"], extra_machine_keys={
        "h1": {"known_hosts": str(known)}, "h2": {"known_hosts": str(known)}})
    for extra in ((), ("--accept-new-host-keys",)):
        res = fleetshard("health", "-i", inv, "--json", *extra)
        assert res.code == 3
        data = {m["machine"]: m for m in json.loads(res.out)["machines"]}
        assert "HOST KEY CHANGED" in data["h1"]["reasons"][0] and "ssh-keygen -R" in data["h1"]["reasons"][0]
        assert data["h2"]["healthy"]
    assert known.read_text() == before


def test_ssh_config_alias(fleet: SshFleet, tmp_path: Path) -> None:
    m = fleet.machine("h3")
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(
        f"Host buildbox\n  HostName {m.address}\n  Port {m.port}\n  User {fleet.user}\n"
        f"  IdentityFile {fleet.client_key}\n")
    inv = tmp_path / "machines.yaml"
    inv.write_text(f"defaults:\n  known_hosts: {fleet.known_hosts}\nmachines:\n  box: {{host: buildbox}}\n"
                   "health: {max_load_per_core: 1000}\n")
    res = fleetshard("health", "-i", inv, "--json", env={"HOME": str(home)})
    assert res.code == 0, res.out + res.err
    (data,) = json.loads(res.out)["machines"]
    assert data["healthy"] and data["address"] == f"{fleet.user}@{m.address}:{m.port}"


def test_missing_identity_file_is_a_clear_error(fleet: SshFleet, fleet_inventory: WriteInventory,
                                                tmp_path: Path) -> None:
    inv = fleet_inventory(machines=["h1"], extra_machine_keys={"h1": {"identity_file": str(tmp_path / "nokey")}})
    res = fleetshard("health", "-i", inv, "--json", env={"SSH_AUTH_SOCK": ""})
    assert res.code == 3
    reason = json.loads(res.out)["machines"][0]["reasons"][0]
    assert "nokey" in reason and ("not found" in reason or "refused" in reason)


def test_encrypted_key_without_agent_fails_fast(fleet: SshFleet, fleet_inventory: WriteInventory,
                                                tmp_path: Path) -> None:
    import subprocess

    key = tmp_path / "enc_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret-pass", "-f", str(key)], check=True)
    inv = fleet_inventory(machines=["h1"], extra_machine_keys={"h1": {"identity_file": str(key)}})
    res = fleetshard("health", "-i", inv, "--json", env={"SSH_AUTH_SOCK": ""}, timeout=30)
    assert res.code == 3
    reason = json.loads(res.out)["machines"][0]["reasons"][0]
    assert "encrypted" in reason and "ssh-add" in reason
    assert "secret-pass" not in res.out + res.err


def test_missing_known_hosts_file_trusts_nothing(fleet: SshFleet, fleet_inventory: WriteInventory,
                                                 tmp_path: Path) -> None:
    inv = fleet_inventory(machines=["h1"], extra_machine_keys={"h1": {"known_hosts": str(tmp_path / "none")}})
    res = fleetshard("health", "-i", inv, "--json")
    assert res.code == 3
    assert "unknown host key" in json.loads(res.out)["machines"][0]["reasons"][0]
    assert not (tmp_path / "none").exists()


def test_reasons_are_printed_as_text_not_markup() -> None:
    import io

    from fleetshard.health import render_table
    from fleetshard.probes import HealthReport

    out = io.StringIO()
    reason = "h1: unknown host key for [ilko2.lan]:2222 ([/usr/bin/x] [/])"
    render_table([HealthReport(machine="h1", transport="ssh", address="x", reachable=False, healthy=False,
                               reasons=(reason,))], out)
    assert reason in out.getvalue()
