"""Demo e2e tests for the search page (they only sleep)."""

import time


def test_search_0() -> None:
    time.sleep(0.38)
    assert 0 + 1 > 0


def test_search_1() -> None:
    time.sleep(0.13)
    assert 1 + 1 > 1
