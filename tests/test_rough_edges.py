"""Rough edges of the inventory and of messages, each pinned by a test."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from fleetshard.errors import ConfigError
from fleetshard.inventory import load_inventory


def load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "machines.yaml"
    path.write_text(textwrap.dedent(text))
    empty = tmp_path / "ssh_config"
    empty.write_text("")
    return load_inventory(path, ssh_config=empty)


def test_x_keys_hold_yaml_anchors(tmp_path: Path) -> None:
    inv = load(tmp_path, """\
        x-arm: &arm {speed: 0.3, tags: [arm], slots: 2}
        x-anything: [whatever, {is: ignored}]
        machines:
          pi4: {<<: *arm, host: pi4.lan}
          pi5: {<<: *arm, host: pi5.lan, speed: 0.5}
        """)
    pi4, pi5 = inv.machines
    assert (pi4.speed, pi4.tags, pi4.slots, pi4.host) == (0.3, ("arm",), 2, "pi4.lan")
    assert pi5.speed == 0.5


def test_other_unknown_top_keys_still_fail(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match='unknown key "y-arm"'):
        load(tmp_path, "y-arm: 1\nmachines: {a: {}}\n")


def test_health_interval_zero_is_accepted_and_negative_refused(tmp_path: Path) -> None:
    assert load(tmp_path, "health: {interval: 0}\nmachines: {a: {}}\n").health.interval == 0
    with pytest.raises(ConfigError, match=r"health\.interval"):
        load(tmp_path, "health: {interval: -1}\nmachines: {a: {}}\n")
