"""Demo e2e tests for the cart page (they only sleep)."""

import time


def test_cart_0() -> None:
    time.sleep(0.15)
    assert 0 + 1 > 0


def test_cart_1() -> None:
    time.sleep(0.39)
    assert 1 + 1 > 1


def test_cart_2() -> None:
    time.sleep(0.55)
    assert 2 + 1 > 2


def test_cart_3() -> None:
    time.sleep(0.21)
    assert 3 + 1 > 3
