"""Shared fixtures: the test fleet of real sshd processes (see tests/fleet.py and DESIGN.md §7)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from fleet import MakeFleet, SshFleet, WriteInventory, skip_reason

FLEET_FIXTURES = frozenset({"fleet", "make_fleet", "fleet_inventory"})

# Every `python -m fleetshard` the tests start runs this checkout, whatever copy pip installed last.
_REPO = str(Path(__file__).resolve().parents[1])
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_REPO, os.environ.get("PYTHONPATH")) if p)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if FLEET_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.fleet)


def _require_fleet() -> None:
    reason = skip_reason()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"the test fleet cannot run on CI: {reason}", pytrace=False)
    pytest.skip(reason)


def _fleet_root() -> Path:
    # Not below tmp_path: the fleet's login user must be able to traverse to its files.
    return Path(tempfile.mkdtemp(prefix="fleetshard-fleet-"))


@pytest.fixture(scope="session")
def fleet() -> Iterator[SshFleet]:
    """Four machines h1..h4 with speeds 1, 1, 2, 3, shared by the session: do not break them."""
    _require_fleet()
    root = _fleet_root()
    try:
        with SshFleet(root, n=4, speeds=[1, 1, 2, 3]) as started:
            yield started
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def make_fleet() -> Iterator[MakeFleet]:
    """A factory of private fleets for destructive tests; each is torn down after the test."""
    _require_fleet()
    made: list[tuple[SshFleet, Path]] = []

    def make(n: int = 2, speeds: Sequence[float] | None = None, **kwargs: Any) -> SshFleet:
        kwargs.setdefault("first_octet_start", 100 + 10 * len(made))
        root = _fleet_root()
        new = SshFleet(root, n, speeds=speeds, **kwargs)
        made.append((new, root))
        return new.start()

    try:
        yield make
    finally:
        for made_fleet, root in reversed(made):
            made_fleet.stop()
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def fleet_inventory(tmp_path: Path, fleet: SshFleet) -> WriteInventory:
    """``fleet_inventory(**write_inventory kwargs)`` writes ``tmp_path/machines.yaml`` for the fleet."""

    def write(path: Path | None = None, **kwargs: Any) -> Path:
        return fleet.write_inventory(path or tmp_path / "machines.yaml", **kwargs)

    return write
