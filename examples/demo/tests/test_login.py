"""Demo e2e tests for the login page (they only sleep)."""

import time


def test_login_0() -> None:
    time.sleep(0.57)
    assert 0 + 1 > 0


def test_login_1() -> None:
    time.sleep(0.3)
    assert 1 + 1 > 1


def test_login_2() -> None:
    time.sleep(0.12)
    assert 2 + 1 > 2
