"""Demo e2e tests for the billing page (they only sleep)."""

import time


def test_billing_0() -> None:
    time.sleep(0.19)
    assert 0 + 1 > 0


def test_billing_1() -> None:
    time.sleep(0.39)
    assert 1 + 1 > 1


def test_billing_2() -> None:
    time.sleep(0.42)
    assert 2 + 1 > 2


def test_billing_3() -> None:
    time.sleep(0.29)
    assert 3 + 1 > 3
