"""Command-line values converted without pydantic, where the conversion is plain.

Recent typer versions convert every option value through a pydantic ``TypeAdapter``, and importing
pydantic to build the first one costs a tenth to a fifth of a second of every ``fleetshard`` command,
more than the rest of parsing. Most values need nothing of it: an option left out (``None``), a string,
a path, a decimal number within its bounds, one of an enum's names. :func:`install` gives each parameter
of the command tree a converter that does those itself, exactly as typer's own would (the same
functions for paths and choices), and hands every other value, and every value it cannot convert
without doubt, to typer's converter, which is built on first use. So whatever is wrong with a value is
reported by typer, word for word as before; only the common, valid values skip the import.

Where typer has no such lazy converter (older versions, built on click), nothing is changed.
"""

from __future__ import annotations

import enum
import re
from pathlib import Path
from typing import Any

_INT = re.compile(r"-?[0-9]+\Z", re.ASCII)
_FLOAT = re.compile(r"-?[0-9]+(?:\.[0-9]+)?\Z", re.ASCII)


class _Unsure(Exception):
    """The value is left to typer's own converter."""


class QuickParam:
    """A parameter's converter: the plain cases here, the rest through typer's (built when first needed)."""

    def __init__(self, descriptor: Any) -> None:
        self.descriptor = descriptor
        self._real: Any = None

    def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
        try:
            return self._quick(value, param, ctx)
        except Exception:                   # _Unsure, or anything typer words itself
            return self._typer().coerce(value, param=param, ctx=ctx)

    def _typer(self) -> Any:
        if self._real is None:
            from typer._coercion import build_runtime_param

            self._real = build_runtime_param(self.descriptor)
        return self._real

    def _quick(self, value: Any, param: Any, ctx: Any) -> Any:
        multi = bool(param.multiple or param.nargs == -1)
        if value is None:
            return () if multi else None
        info = self.descriptor.parameter_info
        if multi or getattr(info, "parser", None) is not None \
                or getattr(self.descriptor, "file_annotation", None) is not None:
            raise _Unsure
        annotation = self.descriptor.annotation
        text = isinstance(value, str)
        if annotation is str and text:
            return value
        if annotation is int and (type(value) is int or (text and _INT.match(value))):
            return _bounded(int(value), info)
        if annotation is float and (type(value) in (int, float) or (text and _FLOAT.match(value))):
            return _bounded(float(value), info)
        if annotation is Path and getattr(info, "path_type", None) is None and (text or isinstance(value, Path)):
            from typer._param_types import coerce_cli_path

            return coerce_cli_path(Path(value), info, path_type=Path, param=param, ctx=ctx)
        if isinstance(annotation, type) and issubclass(annotation, enum.Enum) and \
                (text or isinstance(value, annotation)):
            from typer._param_types import coerce_cli_choice

            return coerce_cli_choice(value, choices=list(annotation), case_sensitive=info.case_sensitive,
                                     ctx=ctx)
        raise _Unsure


def _bounded(number: float, info: Any) -> float:
    if number != number or number in (float("inf"), float("-inf")):
        raise _Unsure
    low, high = getattr(info, "min", None), getattr(info, "max", None)
    if getattr(info, "clamp", False) or (low is not None and number < low) or (high is not None and number > high):
        raise _Unsure                       # typer clamps, or says what the bound is
    return number


def install() -> bool:
    """Make every typer parameter (the help options typer adds as it parses too) convert with a
    QuickParam. False where this typer has no lazy per-parameter converter to stand in for."""
    try:
        from typer.core import _TyperParameter
    except ImportError:                     # pragma: no cover - typer on click
        return False
    current = getattr(_TyperParameter, "get_runtime_param", None)
    if current is None:
        return False                        # pragma: no cover - another typer
    if getattr(current, "quick", False):
        return True

    def get_runtime_param(self: Any) -> Any:
        if getattr(self, "_runtime_param", None) is None:
            self._runtime_param = QuickParam(self.type_descriptor)
        return self._runtime_param

    get_runtime_param.quick = True          # type: ignore[attr-defined]
    _TyperParameter.get_runtime_param = get_runtime_param  # type: ignore[method-assign]
    return True
