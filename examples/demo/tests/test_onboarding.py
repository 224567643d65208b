"""Demo e2e tests for the onboarding page (they only sleep)."""

import time


def test_onboarding_0() -> None:
    time.sleep(0.46)
    assert 0 + 1 > 0


def test_onboarding_1() -> None:
    time.sleep(0.38)
    assert 1 + 1 > 1


def test_onboarding_2() -> None:
    time.sleep(0.41)
    assert 2 + 1 > 2


def test_onboarding_3() -> None:
    time.sleep(0.35)
    assert 3 + 1 > 3
