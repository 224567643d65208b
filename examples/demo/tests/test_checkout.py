"""Demo e2e tests for the checkout page (they only sleep)."""

import time


def test_checkout_0() -> None:
    time.sleep(0.32)
    assert 0 + 1 > 0


def test_checkout_1() -> None:
    time.sleep(0.13)
    assert 1 + 1 > 1
