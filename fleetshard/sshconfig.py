"""A small reader for OpenSSH client configuration files (``~/.ssh/config``).

Only what fleetshard needs to resolve an inventory host the way ``ssh`` would:

* ``Host`` blocks with several patterns per line, ``*`` / ``?`` wildcards and ``!negation``
  (a block applies when one positive pattern matches and no negated one does), matched
  case-insensitively against the host as written;
* ``Match all`` / ``Match host`` / ``Match originalhost`` (any other ``Match`` criterion is treated
  as not matching, so its block is skipped);
* ``Keyword value`` and ``Keyword=value`` forms, case-insensitive keywords, quoted values and
  comments;
* ``Include`` (globs; relative paths are taken from ``~/.ssh``), nested up to 16 deep;
* first obtained value wins, except ``IdentityFile`` (and the other list-valued keywords), which
  accumulate in order;
* tokens ``%h %n %p %r %u %d %l %%`` and a leading ``~`` in ``IdentityFile``; ``%h`` and ``%%`` in
  ``HostName``.

:func:`lookup` returns the settings that apply to one host, keyed by *lower-case* keyword
(``hostname``, ``user``, ``port``, ``identityfile``, ``proxyjump``, ...). Values are strings except the
list-valued keywords, which are lists of strings.
"""

from __future__ import annotations

import getpass
import glob
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from fleetshard.errors import ConfigError

__all__ = ["SSHConfig", "lookup", "parse"]

#: Keywords that may be given more than once, every occurrence adding to a list.
LIST_KEYWORDS = frozenset({
    "identityfile", "certificatefile", "localforward", "remoteforward", "dynamicforward", "sendenv", "setenv",
})
_MAX_INCLUDE_DEPTH = 16
_LINE_RE = re.compile(r"\s*([^\s=]+)\s*(?:=\s*)?(.*)$")


@dataclass(frozen=True)
class _Condition:
    """The ``Host`` or ``Match`` line a setting sits under (``kind == "all"`` before any of them)."""

    kind: str  # "all" | "host" | "match"
    patterns: tuple[str, ...] = ()
    criteria: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def applies(self, host: str) -> bool:
        if self.kind == "all":
            return True
        if self.kind == "host":
            return _match_pattern_list(host, self.patterns)
        for criterion, args in self.criteria:
            if criterion == "all":
                continue
            if criterion in ("host", "originalhost"):
                pats = tuple(p for arg in args for p in arg.split(",") if p)
                if not _match_pattern_list(host, pats):
                    return False
            else:  # exec, user, localuser, canonical, final, ...: not evaluated here
                return False
        return True


@dataclass(frozen=True)
class _Setting:
    keyword: str  # lower case
    args: tuple[str, ...]
    conditions: tuple[_Condition, ...]  # every one must apply (an Include inside a Host block nests)


@dataclass
class SSHConfig:
    """A parsed configuration file (with its includes), ready for :meth:`lookup`."""

    path: Path
    settings: list[_Setting] = field(default_factory=list)

    def lookup(self, host: str) -> dict[str, str | list[str]]:
        """Settings that apply to ``host``, with tokens expanded (see the module docstring)."""
        result: dict[str, str | list[str]] = {}
        for setting in self.settings:
            if not setting.args or not all(c.applies(host) for c in setting.conditions):
                continue
            if setting.keyword in LIST_KEYWORDS:
                values = result.setdefault(setting.keyword, [])
                assert isinstance(values, list)
                values.append(setting.args[0])
            elif setting.keyword not in result:
                result[setting.keyword] = " ".join(setting.args)
        _expand_tokens(result, host)
        return result


def parse(path: str | Path) -> SSHConfig:
    """Read ``path`` (and the files it includes). Raises :class:`ConfigError` if it cannot be read."""
    config = SSHConfig(Path(path))
    _read(Path(path), config.settings, (), 0)
    return config


def lookup(host: str, path: Path) -> dict[str, str | list[str]]:
    """The settings of the configuration file ``path`` that apply to ``host``."""
    return parse(path).lookup(host)


# --- reading ---------------------------------------------------------------------------------------


def _read(path: Path, out: list[_Setting], outer: tuple[_Condition, ...], depth: int) -> None:
    if depth > _MAX_INCLUDE_DEPTH:
        raise ConfigError(f"Include nested more than {_MAX_INCLUDE_DEPTH} deep", file=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", file=str(path)) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a file", file=str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not valid UTF-8 ({exc.reason})", file=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read file: {exc.strerror or exc}", file=str(path)) from None

    current = _Condition("all")
    for lineno, raw in enumerate(text.splitlines(), start=1):
        m = _LINE_RE.match(raw)
        if not m or m.group(1).startswith("#"):
            continue
        keyword = m.group(1).lower()
        try:
            args = tuple(_split_args(m.group(2)))
        except ValueError as exc:
            raise ConfigError(str(exc), file=str(path), line=lineno, field=m.group(1)) from None
        if keyword == "host":
            current = _Condition("host", patterns=args)
        elif keyword == "match":
            current = _Condition("match", criteria=_parse_match(args))
        elif keyword == "include":
            for arg in args:
                for included in _include_paths(arg):
                    _read(included, out, (*outer, current), depth + 1)
        else:
            out.append(_Setting(keyword, args, (*outer, current)))


def _split_args(text: str) -> list[str]:
    """Split a value into words: whitespace separates, quotes group, ``#`` starts a comment."""
    words: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        if ch == "#":
            break
        word: list[str] = []
        while i < n and not text[i].isspace():
            ch = text[i]
            if ch in "\"'":
                end = text.find(ch, i + 1)
                if end < 0:
                    raise ValueError("unterminated quote")
                word.append(text[i + 1 : end])
                i = end + 1
            else:
                word.append(ch)
                i += 1
        words.append("".join(word))
    return words


def _parse_match(args: tuple[str, ...]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    criteria: list[tuple[str, tuple[str, ...]]] = []
    i = 0
    while i < len(args):
        name = args[i].lower()
        if name in ("all", "canonical", "final"):
            criteria.append((name, ()))
            i += 1
        else:
            criteria.append((name, args[i + 1 : i + 2]))
            i += 2
    return tuple(criteria)


def _include_paths(arg: str) -> list[Path]:
    expanded = os.path.expanduser(arg)
    if not os.path.isabs(expanded):
        expanded = os.path.join(os.path.expanduser("~/.ssh"), expanded)
    return [Path(p) for p in sorted(glob.glob(expanded)) if os.path.isfile(p)]


# --- matching --------------------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = ("." if c == "?" else ".*" if c == "*" else re.escape(c) for c in pattern.lower())
    return re.compile("".join(parts) + r"\Z", re.DOTALL)


def _match_pattern_list(host: str, patterns: tuple[str, ...]) -> bool:
    host = host.lower()
    matched = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if _pattern_regex(pattern[1:] if negated else pattern).match(host):
            if negated:
                return False
            matched = True
    return matched


# --- tokens ----------------------------------------------------------------------------------------


def _expand_tokens(result: dict[str, str | list[str]], host: str) -> None:
    hostname = result.get("hostname")
    if isinstance(hostname, str):
        hostname = _substitute(hostname, {"h": host})
        result["hostname"] = hostname
    else:
        hostname = host
    identity = result.get("identityfile")
    if not isinstance(identity, list):
        return
    local_user = _local_user()
    user = result.get("user")
    port = result.get("port")
    tokens = {
        "h": hostname,
        "n": host,
        "p": port if isinstance(port, str) else "22",
        "r": user if isinstance(user, str) else local_user,
        "u": local_user,
        "d": os.path.expanduser("~"),
        "l": socket.gethostname().split(".")[0],
    }
    result["identityfile"] = [os.path.expanduser(_substitute(p, tokens)) for p in identity]


def _substitute(text: str, tokens: dict[str, str]) -> str:
    def repl(m: re.Match[str]) -> str:
        key = m.group(1)
        if key == "%":
            return "%"
        return tokens.get(key, m.group(0))

    return re.sub(r"%(.)", repl, text)


def _local_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid()) if hasattr(os, "getuid") else "user"
