"""OpenSSH client configuration (``~/.ssh/config``), read by asyncssh's own parser.

:func:`lookup` resolves one host the way asyncssh (and, for what it implements, ``ssh``) does:
``Host`` patterns (case-sensitive, ``!negation``), ``Match host`` (against the target after ``HostName``),
``originalhost``, ``user``, ``localuser``, ``exec``, ``final``, ``all``; ``Include``; first value wins;
``%`` tokens and ``${VAR}``. It also records which keywords applied to the host, and which of them
asyncssh does not know, so that the inventory can warn about what the ``ssh`` transport ignores.

:func:`concrete_hosts` lists the aliases of ``Host`` lines that are not patterns (for ``fleetshard init``).
"""

from __future__ import annotations

import getpass
import glob
import os
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetshard.errors import ConfigError

__all__ = ["HostConfig", "concrete_hosts", "lookup"]

_PARSE_ERROR_RE = re.compile(r"^(?P<path>.*) line (?P<line>\d+): (?P<reason>.*)$")


@dataclass(frozen=True)
class HostConfig:
    """What ``path`` says about one host.

    ``options`` is keyed by asyncssh's option names (``Hostname``, ``User``, ``Port``, ``IdentityFile``,
    ``ProxyCommand``, ...); a key present with the value None was set to ``none``.
    """

    path: Path
    options: Mapping[str, Any] = field(default_factory=dict)
    applied: frozenset[str] = frozenset()          # lower-case keywords that applied to the host
    unknown: tuple[str, ...] = ()                  # keywords that applied but asyncssh does not implement
    match_canonical: bool = False                  # a ``Match canonical`` block was seen

    def get(self, option: str, default: Any = None) -> Any:
        return self.options.get(option, default)

    def has(self, option: str) -> bool:
        return option in self.options


def _local_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _config_class() -> Any:
    """asyncssh's client-config parser, with a record of the keywords it applied and skipped."""
    from asyncssh.config import SSHClientConfig

    class _Recording(SSHClientConfig):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            self.applied: set[str] = set()
            self.unknown: dict[str, None] = {}
            self.match_canonical = False
            handlers = type(self)._handlers
            recorder = self

            class _Handlers(dict[str, tuple[str, Callable[..., None]]]):
                # The parser looks a keyword up only where the current Host/Match block applies.
                def __missing__(self, key: str) -> tuple[str, Callable[..., None]]:
                    recorder.unknown.setdefault(recorder._spelling(key), None)
                    raise KeyError(key)

                def __getitem__(self, key: str) -> tuple[str, Callable[..., None]]:
                    if key in ("host", "match", "include"):
                        if key == "match":
                            recorder._note_match()
                        return dict.__getitem__(self, key)
                    recorder.applied.add(key)
                    return dict.__getitem__(self, key) if dict.__contains__(self, key) else self.__missing__(key)

            self._handlers = _Handlers(handlers)
            self._line_text = ""

        def _spelling(self, key: str) -> str:
            try:
                with open(self._path, encoding="utf-8", errors="replace") as fh:
                    for lineno, line in enumerate(fh, start=1):
                        if lineno == self._line_no:
                            word = re.split(r"[\s=]", line.strip(), maxsplit=1)[0]
                            return word or key
            except OSError:
                pass
            return key

        def _note_match(self) -> None:
            try:
                with open(self._path, encoding="utf-8", errors="replace") as fh:
                    for lineno, line in enumerate(fh, start=1):
                        if lineno == self._line_no:
                            words = [w.lower().lstrip("!") for w in shlex.split(line, comments=True)]
                            if "canonical" in words[1:]:
                                self.match_canonical = True
                            return
            except (OSError, ValueError):
                pass

    return _Recording


def lookup(host: str, path: str | Path, *, user: str | None = None, port: int | None = None,
           final: bool = False) -> HostConfig:
    """The settings of ``path`` (and its includes) that apply to ``host``.

    ``user`` and ``port`` are values the caller already has (they win, and they are what ``%r``/``%p`` and
    ``Match user`` see). Raises :class:`ConfigError` naming the file and line for a malformed file.
    """
    from asyncssh.config import ConfigParseError
    from asyncssh.misc import IllegalUserName

    path = Path(path)
    if path.is_dir():
        raise ConfigError("is a directory, not a file", file=str(path))
    if not path.exists():
        raise ConfigError("file not found", file=str(path))
    cls = _config_class()
    try:
        config = cls.load(None, [path], False, False, final, _local_user(),
                          user if user is not None else (), host, port if port is not None else ())
        if not final and config.has_match_final():
            # asyncssh (like ssh) reads the file again for `Match final`; do the same.
            again = cls.load(None, [path], False, False, True, _local_user(),
                             user if user is not None else (), host, port if port is not None else ())
            again.applied |= config.applied
            again.unknown.update(config.unknown)
            again.match_canonical |= config.match_canonical
            config = again
    except ConfigParseError as exc:
        m = _PARSE_ERROR_RE.match(str(exc))
        if m:
            raise ConfigError(m.group("reason"), file=m.group("path"), line=int(m.group("line"))) from None
        raise ConfigError(str(exc), file=str(path)) from None
    except RecursionError:
        raise ConfigError("Include loop (a file includes itself)", file=str(path)) from None
    except IllegalUserName as exc:
        raise ConfigError(str(exc), file=str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not valid UTF-8 ({exc.reason})", file=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read file: {exc.strerror or exc}", file=str(exc.filename or path)) from None
    options: dict[str, Any] = dict(config._options)  # asyncssh keeps them there
    return HostConfig(path=path, options=options, applied=frozenset(config.applied),
                      unknown=tuple(config.unknown), match_canonical=config.match_canonical)


def concrete_hosts(path: str | Path) -> list[str]:
    """Aliases named on ``Host`` lines of ``path`` and its includes, patterns and negations left out."""
    seen: dict[str, None] = {}
    _scan_hosts(Path(path), seen, 0)
    return list(seen)


def _scan_hosts(path: Path, seen: dict[str, None], depth: int) -> None:
    if depth > 16:
        return
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            words = shlex.split(line.replace("=", " ", 1), comments=True)
        except ValueError:
            continue
        if not words:
            continue
        keyword = words[0].lower()
        if keyword == "host":
            for pattern in (p for w in words[1:] for p in w.split(",")):
                if pattern and not any(c in pattern for c in "*?!"):
                    seen.setdefault(pattern, None)
        elif keyword == "include":
            for arg in words[1:]:
                expanded = os.path.expanduser(arg)
                if not os.path.isabs(expanded):
                    expanded = os.path.join(os.path.expanduser("~/.ssh"), expanded)
                for included in sorted(glob.glob(expanded)):
                    _scan_hosts(Path(included), seen, depth + 1)
