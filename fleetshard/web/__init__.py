"""The web dashboard: a pure event-to-view model (:mod:`.model`), the live page of a run
(``fleetshard run --serve``) and the history pages (``fleetshard serve``).

Only :mod:`.model` and :mod:`.whatif` work without the ``web`` extra; the servers need aiohttp
(``pip install 'fleetshard[web]'``), checked by :func:`require_aiohttp` with a clear message.
"""

from __future__ import annotations

from ..errors import UsageError

WEB_EXTRA_HINT = "the dashboard needs aiohttp: pip install 'fleetshard[web]'"


def require_aiohttp() -> None:
    """Raise a UsageError (exit 2) naming the extra to install when aiohttp is missing."""
    try:
        import aiohttp  # noqa: F401
    except ImportError as exc:
        raise UsageError(WEB_EXTRA_HINT) from exc
