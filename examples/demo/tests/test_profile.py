"""Demo e2e tests for the profile page (they only sleep)."""

import time


def test_profile_0() -> None:
    time.sleep(0.16)
    assert 0 + 1 > 0


def test_profile_1() -> None:
    time.sleep(0.21)
    assert 1 + 1 > 1


def test_profile_2() -> None:
    time.sleep(0.41)
    assert 2 + 1 > 2


def test_profile_3() -> None:
    time.sleep(0.57)
    assert 3 + 1 > 3
