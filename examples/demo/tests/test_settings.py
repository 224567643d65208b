"""Demo e2e tests for the settings page (they only sleep)."""

import time


def test_settings_0() -> None:
    time.sleep(0.39)
    assert 0 + 1 > 0


def test_settings_1() -> None:
    time.sleep(0.12)
    assert 1 + 1 > 1


def test_settings_2() -> None:
    time.sleep(0.21)
    assert 2 + 1 > 2


def test_settings_3() -> None:
    time.sleep(0.38)
    assert 3 + 1 > 3
