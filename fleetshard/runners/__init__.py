"""Runner adapters: what fleetshard knows about pytest, Playwright and jest (``suite.runner``).

``command`` (the default) is an opaque command judged by its JUnit and exit code, as before adapters.
"""

from __future__ import annotations

from .base import (
    LIST_FILE_THRESHOLD,
    Adapter,
    CollectionProblem,
    FailedCase,
    Listing,
    TestArgs,
    TestId,
    strip_placeholder_words,
)
from .jest import JestAdapter
from .playwright import PlaywrightAdapter
from .pytest import PytestAdapter

RUNNERS: dict[str, Adapter] = {
    "command": Adapter(),
    "pytest": PytestAdapter(),
    "playwright": PlaywrightAdapter(),
    "jest": JestAdapter(),
}


def adapter_for(name: str | None) -> Adapter:
    """The adapter of ``suite.runner`` (``command`` when unset)."""
    return RUNNERS[name or "command"]


__all__ = [
    "LIST_FILE_THRESHOLD",
    "RUNNERS",
    "Adapter",
    "CollectionProblem",
    "FailedCase",
    "JestAdapter",
    "Listing",
    "PlaywrightAdapter",
    "PytestAdapter",
    "TestArgs",
    "TestId",
    "adapter_for",
    "strip_placeholder_words",
]
