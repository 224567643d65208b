"""Demo e2e tests for the admin page (they only sleep)."""

import time


def test_admin_0() -> None:
    time.sleep(0.24)
    assert 0 + 1 > 0


def test_admin_1() -> None:
    time.sleep(0.17)
    assert 1 + 1 > 1
