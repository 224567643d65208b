"""Demo e2e tests for the reports page (they only sleep)."""

import time


def test_reports_0() -> None:
    time.sleep(0.39)
    assert 0 + 1 > 0


def test_reports_1() -> None:
    time.sleep(0.38)
    assert 1 + 1 > 1
