"""Demo e2e tests for the sharing page (they only sleep)."""

import time


def test_sharing_0() -> None:
    time.sleep(0.22)
    assert 0 + 1 > 0


def test_sharing_1() -> None:
    time.sleep(0.19)
    assert 1 + 1 > 1


def test_sharing_2() -> None:
    time.sleep(0.49)
    assert 2 + 1 > 2
