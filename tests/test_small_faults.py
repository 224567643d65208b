"""The smaller items of a hostile world: each refused clearly (exit 2) or reported with its real reason."""

from __future__ import annotations

from pathlib import Path

from clihelp import fleetshard
from fleet import SshFleet, WriteInventory


def test_a_double_dash_command_without_files_in_file_mode(fleet: SshFleet, fleet_inventory: WriteInventory,
                                                           tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "a.test").write_text("")
    inv = fleet_inventory(machines=["h1"], suite={"tests": "tests/*.test", "command": "cat {files}"})
    res = fleetshard("run", "-i", inv, "--", "true")
    assert res.code == 2 and "must contain {files}" in res.err and "Traceback" not in res.err, res.err
    assert not (tmp_path / ".fleetshard" / "runs").exists()


def test_an_empty_machine_selection(fleet: SshFleet, fleet_inventory: WriteInventory) -> None:
    inv = fleet_inventory(machines=["h1"], suite={"command": "true", "shards": 1})
    for nothing in ("", ","):
        for command in (["run"], ["health"], ["plan"]):
            res = fleetshard(*command, "-i", inv, "-m", nothing)
            assert res.code == 2 and "names no machine" in res.err, (command, nothing, res.err)


def test_notify_only_http(fleet: SshFleet, fleet_inventory: WriteInventory) -> None:
    inv = fleet_inventory(machines=["h1"], suite={"command": "true", "shards": 1})
    for url in ("ftp://example.invalid/hook", "file:///etc/passwd", "example.invalid/hook"):
        res = fleetshard("run", "-i", inv, "--notify", url)
        assert res.code == 2 and "http:// or https://" in res.err, res.err
        assert "passwd" not in res.err and "example.invalid" not in res.err   # the URL may hold a secret


def test_unknown_host_key_with_skip_health_checks(fleet: SshFleet, fleet_inventory: WriteInventory,
                                                 tmp_path: Path) -> None:
    known = fleet.write_known_hosts(tmp_path / "known_hosts", wrong=["h1"])
    inv = fleet_inventory(machines=["h1"], slots=None, suite={"command": "true", "shards": 1},
                          extra_machine_keys={"h1": {"known_hosts": str(known)}})
    res = fleetshard("run", "-i", inv, "--skip-health-checks", "--no-live")
    assert res.code == 3, res.out + res.err
    text = res.out + res.err
    assert "HOST KEY CHANGED" in text and "no machine selected" not in text, text
