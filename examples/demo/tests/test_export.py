"""Demo e2e tests for the export page (they only sleep)."""

import time


def test_export_0() -> None:
    time.sleep(0.31)
    assert 0 + 1 > 0


def test_export_1() -> None:
    time.sleep(0.26)
    assert 1 + 1 > 1


def test_export_2() -> None:
    time.sleep(0.39)
    assert 2 + 1 > 2


def test_export_3() -> None:
    time.sleep(0.33)
    assert 3 + 1 > 3
