"""The inventory: ``machines.yaml`` loaded into frozen dataclasses.

:func:`load_inventory` reads the file, walks the YAML node tree itself so that every value knows its
line, and validates it against small field tables. Every problem is a :class:`ConfigError` whose
message is one line naming the file, the line and the field::

    machines.yaml:14: machines.pi.slots: expected a positive integer, got "four"

Machine settings come, in order of precedence, from the machine itself, from ``~/.ssh/config`` (for
``ssh`` machines: ``HostName``, ``User``, ``Port``, ``IdentityFile``, ``ProxyJump``), from the
inventory's ``defaults`` and from built-in defaults. ``env`` is the exception: the machine's
variables are merged over those of ``defaults`` (a ``null`` value removes a default variable).
An explicit ``null`` on a machine (``slots: null``, ``workdir: null``, ``jump: null``) sets the field
to its built-in default, ignoring ``defaults`` and ``~/.ssh/config``.

Local paths written in the inventory (``identity_file``, ``known_hosts``, ``history``) have ``~``
expanded and, when relative, are taken from the inventory's directory. ``workdir`` is a remote path
and is kept as written.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import shlex
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from fleetshard import sshconfig
from fleetshard.errors import ConfigError, UsageError

__all__ = [
    "HealthThresholds",
    "Inventory",
    "JumpHost",
    "Machine",
    "RetryPolicyConfig",
    "SuiteConfig",
    "Transport",
    "load_inventory",
    "select_machines",
]

Transport = Literal["ssh", "openssh", "local"]
Strategy = Literal["static", "dynamic"]

INVENTORY_ENV = "FLEETSHARD_INVENTORY"
DEFAULT_INVENTORY = "machines.yaml"
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"


# --- models ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JumpHost:
    """One hop of a ``ProxyJump`` / ``jump`` chain, resolved through ~/.ssh/config like the target."""

    host: str
    port: int = 22
    user: str | None = None
    identity_files: tuple[str, ...] = ()
    alias: str | None = None  # the hop as written, when ~/.ssh/config resolved it to another host


@dataclass(frozen=True)
class Machine:
    """One machine of the fleet, with every default already applied."""

    name: str
    transport: Transport = "ssh"
    host: str | None = None  # address to connect to (ssh_config HostName applied); None for local
    alias: str | None = None  # `host` as written, when ~/.ssh/config resolved it to something else
    port: int = 22
    user: str | None = None  # None -> the current local user
    identity_files: tuple[str, ...] = ()  # local paths, '~' expanded
    known_hosts: str = os.path.expanduser(DEFAULT_KNOWN_HOSTS)
    connect_timeout: float = 5.0
    workdir: str | None = None  # remote path as written ('~' expanded remotely); None = home
    env: tuple[tuple[str, str], ...] = ()  # sorted (name, value) pairs
    slots: int | None = None  # None -> probed cores
    speed: float | None = None  # relative speed, 1.0 = reference; None = unknown
    tags: tuple[str, ...] = ()
    jumps: tuple[JumpHost, ...] = ()  # ProxyJump chain, first hop first
    line: int = 0  # line of the inventory where the machine is defined
    # From ~/.ssh/config only (no inventory key):
    proxy_command: str | None = None  # tokens expanded; run with /bin/sh -c
    identity_agent: str | None = None  # agent socket; None -> $SSH_AUTH_SOCK; "none" -> no agent
    certificate_files: tuple[str, ...] = ()
    extra_known_hosts: tuple[str, ...] = ()  # further files trusted (UserKnownHostsFile 2nd.., Global..)
    server_alive_interval: float | None = None  # None -> fleetshard's keepalive (connect_timeout)
    server_alive_count_max: int | None = None
    ssh_config: str | None = None  # the OpenSSH config file the machine was resolved with
    from_ssh_config: frozenset[str] = frozenset()  # fields above whose value came from ssh_config
    warnings: tuple[str, ...] = ()  # ssh_config keywords this machine's transport does not honour

    @property
    def jump(self) -> JumpHost | None:
        """The first hop, if any."""
        return self.jumps[0] if self.jumps else None

    @property
    def destination(self) -> str | None:
        """The host as written in the inventory (the alias ssh_config is looked up with)."""
        return self.alias or self.host

    def env_dict(self) -> dict[str, str]:
        return dict(self.env)


@dataclass(frozen=True)
class HealthThresholds:
    min_disk_free_pct: float = 10.0
    max_mem_used_pct: float = 95.0
    max_load_per_core: float = 2.0
    timeout: float = 5.0
    interval: float = 30.0
    check: str | None = None           # a command run by each probe: non-zero exit = unhealthy


@dataclass(frozen=True)
class RetryPolicyConfig:
    max_retries: int = 2
    backoff_base: float = 5.0
    backoff_factor: float = 2.0
    backoff_max: float = 120.0
    jitter: float = 1.0  # seconds of random jitter added to each backoff
    drain_after: int = 2  # infra failures on one machine before it is drained
    infra_exit_codes: tuple[int, ...] = (127, 255)


@dataclass(frozen=True)
class ServiceConfig:
    """A background command started once per machine after setup and kept running for the run."""

    command: str                # shell line; {machine} and the machine's env work in it
    ready: str | None = None    # a command, or an http(s):// URL, polled until it succeeds
    timeout: float = 30.0       # seconds to become ready
    line: int = 0

    @property
    def ready_url(self) -> bool:
        return self.ready is not None and self.ready.startswith(("http://", "https://"))


@dataclass(frozen=True)
class SuiteConfig:
    command: str | None = None  # template: {shard} {total} {files} {junit} {machine} {run_id}
    tests: tuple[str, ...] = ()  # globs, relative to the inventory's directory
    discover: str | None = None  # local command printing test files / ids, one per line
    shards: int | None = None  # None = auto
    junit: str | None = None  # remote path template of a shard's JUnit file
    timeout: float | None = 1800.0  # per shard, seconds; None = no limit
    kill_grace: float = 10.0  # seconds between TERM and KILL
    setup: str | None = None
    teardown: str | None = None
    sync: str | None = None  # local directory (relative to the inventory's directory) copied to each workdir
    artifacts: tuple[str, ...] = ()  # remote globs relative to the workdir
    strategy: Strategy | None = None
    runner: str | None = None  # pytest | playwright | jest | command (None: command)
    args: str = ""  # extra runner arguments (shell words) for the listing and every run
    ok_exit_codes: tuple[int, ...] = (0,)  # exit codes that pass when the JUnit shows no failing test
    split_files: bool | None = None  # split a long file by test id (None: where the runner says it may)
    services: tuple[ServiceConfig, ...] = ()
    workers: str = "process"  # process: a runner process per shard | warm: a long-lived pytest per slot
    line: int = 0


@dataclass(frozen=True)
class Inventory:
    path: Path  # the file loaded, as given
    machines: tuple[Machine, ...]  # in file order
    health: HealthThresholds
    retry: RetryPolicyConfig
    suite: SuiteConfig | None
    history: str | None = None  # sqlite path; None -> <inventory dir>/.fleetshard/history.db
    notify: str | None = None  # webhook URL

    @property
    def base_dir(self) -> Path:
        """Directory of the inventory file (relative paths in it are taken from here)."""
        return self.path.parent

    def machine(self, name: str) -> Machine:
        for machine in self.machines:
            if machine.name == name:
                return machine
        names = ", ".join(m.name for m in self.machines)
        raise UsageError(f'no machine named "{name}" in {self.path} (machines: {names})')


# --- selection -------------------------------------------------------------------------------------


def select_machines(inv: Inventory, selector: str | None) -> tuple[Machine, ...]:
    """Machines named or tagged by the comma-separated ``selector`` (all if empty), in file order."""
    terms = [t.strip() for t in (selector or "").split(",") if t.strip()]
    if not terms:
        if selector is not None:                 # `-m ''` or `-m ,`: a selection of nothing, not of all
            raise UsageError(f"-m/--machines {selector!r} names no machine: give machine names or tags, "
                             f"comma-separated (or leave -m out for every machine)")
        return inv.machines
    chosen: set[str] = set()
    for term in terms:
        hits = [m.name for m in inv.machines if m.name == term or term in m.tags]
        if not hits:
            names = ", ".join(m.name for m in inv.machines)
            tags = sorted({t for m in inv.machines for t in m.tags})
            known = f"machines: {names}" + (f"; tags: {', '.join(tags)}" if tags else "")
            raise UsageError(f'no machine or tag named "{term}" in {inv.path} ({known})')
        chosen.update(hits)
    return tuple(m for m in inv.machines if m.name in chosen)


# --- YAML walking ----------------------------------------------------------------------------------

_MERGE_TAG = "tag:yaml.org,2002:merge"
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+\Z")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


@dataclass(frozen=True)
class _Entry:
    key: str
    key_node: Node
    value: Node

    @property
    def line(self) -> int:
        return _line(self.key_node)


class _Ctx:
    """The file being read: builds errors and turns scalar nodes into Python values."""

    def __init__(self, file: str) -> None:
        self.file = file
        self._constructor = SafeConstructor()

    def error(self, message: str, line: int | None, field: str | None) -> ConfigError:
        return ConfigError(message, file=self.file, line=line, field=field or None)

    def scalar(self, node: Node, field: str) -> object:
        """The Python value of a scalar node; lists and mappings are returned as the nodes themselves."""
        if not isinstance(node, ScalarNode):
            return node
        try:
            return self._constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError) as exc:
            problem = str(getattr(exc, "problem", None) or exc)
            raise self.error(_one_line(problem), _line(node), field) from None

    def describe(self, node: Node, field: str) -> str:
        """How a value is shown in messages: ``"four"``, ``4.5``, ``true``, ``null``, ``a list``."""
        if isinstance(node, SequenceNode):
            return "a list"
        if isinstance(node, MappingNode):
            return "a mapping"
        value = self.scalar(node, field)
        if isinstance(value, str):
            return f'"{value}"'
        if value is None:
            return "null"
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(node.value)

    def mapping(self, node: Node, field: str, *, what: str = "a mapping",
                kind: str = "key", _seen: frozenset[int] = frozenset()) -> dict[str, _Entry]:
        """The entries of a mapping node, with ``<<`` merges applied and duplicate keys refused.

        A null value counts as an empty mapping.
        """
        if isinstance(node, ScalarNode) and self.scalar(node, field) is None:
            return {}
        if not isinstance(node, MappingNode):
            raise self.error(f"expected {what}, got {self.describe(node, field)}", _line(node), field)
        if id(node) in _seen:
            raise self.error("recursive merge", _line(node), field)
        seen = _seen | {id(node)}
        entries: dict[str, _Entry] = {}
        merged: list[_Entry] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
                for source in sources:
                    if not isinstance(source, MappingNode):
                        raise self.error("<< (merge) expects a mapping or a list of mappings",
                                         _line(source), field)
                    merged.extend(self.mapping(source, field, what=what, kind=kind, _seen=seen).values())
                continue
            if not isinstance(key_node, ScalarNode):
                raise self.error(f"expected a {kind} name, got {self.describe(key_node, field)}",
                                 _line(key_node), field)
            key = str(key_node.value)
            if key in entries:
                first = entries[key].line
                sub = f"{field}.{key}" if field else key
                if kind == "machine":
                    raise self.error(f'duplicate machine "{key}" (first defined at line {first})',
                                     _line(key_node), sub)
                raise self.error(f'duplicate key "{key}" (first at line {first})', _line(key_node), sub)
            entries[key] = _Entry(key, key_node, value_node)
        for entry in merged:  # explicit keys win; earlier merge sources win over later ones
            entries.setdefault(entry.key, entry)
        return entries


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _unknown_key(ctx: _Ctx, entry: _Entry, allowed: Mapping[str, object], prefix: str) -> ConfigError:
    close = difflib.get_close_matches(entry.key, list(allowed), n=1, cutoff=0.6)
    if not close:
        close = [k for k in allowed if k.lower() == entry.key.lower()]
    hint = f' (did you mean "{close[0]}"?)' if close else ""
    return ctx.error(f'unknown key "{entry.key}"{hint}', entry.line, prefix)


# --- field converters: (ctx, node, field) -> value, raising ConfigError -----------------------------

Converter = Callable[[_Ctx, Node, str], Any]


def _bad(ctx: _Ctx, node: Node, field: str, expected: str) -> ConfigError:
    return ctx.error(f"expected {expected}, got {ctx.describe(node, field)}", _line(node), field)


def _number(ctx: _Ctx, node: Node, field: str, expected: str, *, integer: bool = False) -> float:
    value = ctx.scalar(node, field)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(ctx, node, field, expected)
    if integer and not isinstance(value, int):
        raise _bad(ctx, node, field, expected)
    if not math.isfinite(value):
        raise _bad(ctx, node, field, expected)
    return value


def _pos_int(ctx: _Ctx, node: Node, field: str) -> int:
    value = _number(ctx, node, field, "a positive integer", integer=True)
    if value <= 0:
        raise _bad(ctx, node, field, "a positive integer")
    return int(value)


def _nonneg_int(ctx: _Ctx, node: Node, field: str) -> int:
    value = _number(ctx, node, field, "a non-negative integer", integer=True)
    if value < 0:
        raise _bad(ctx, node, field, "a non-negative integer")
    return int(value)


def _port(ctx: _Ctx, node: Node, field: str) -> int:
    value = _number(ctx, node, field, "a port number (1-65535)", integer=True)
    if not 1 <= value <= 65535:
        raise _bad(ctx, node, field, "a port number (1-65535)")
    return int(value)


def _pos_float(ctx: _Ctx, node: Node, field: str) -> float:
    value = _number(ctx, node, field, "a positive number")
    if value <= 0:
        raise _bad(ctx, node, field, "a positive number")
    return float(value)


def _nonneg_float(ctx: _Ctx, node: Node, field: str) -> float:
    value = _number(ctx, node, field, "a non-negative number")
    if value < 0:
        raise _bad(ctx, node, field, "a non-negative number")
    return float(value)


def _at_least_one(ctx: _Ctx, node: Node, field: str) -> float:
    value = _number(ctx, node, field, "a number >= 1")
    if value < 1:
        raise _bad(ctx, node, field, "a number >= 1")
    return float(value)


def _pct(ctx: _Ctx, node: Node, field: str) -> float:
    value = _number(ctx, node, field, "a percentage (0-100)")
    if not 0 <= value <= 100:
        raise _bad(ctx, node, field, "a percentage (0-100)")
    return float(value)


def _str(ctx: _Ctx, node: Node, field: str) -> str:
    value = ctx.scalar(node, field)
    if not isinstance(value, str):
        raise _bad(ctx, node, field, "a string")
    if not value.strip():
        raise ctx.error("must not be empty", _line(node), field)
    return value


def _host(ctx: _Ctx, node: Node, field: str) -> str:
    value = _str(ctx, node, field)
    if any(c.isspace() for c in value) or "@" in value:
        raise _bad(ctx, node, field, "a host name or address (put the user in user:)")
    if ":" in value and not _is_ipv6(value):
        raise _bad(ctx, node, field, "a host name or address (put the port in port:)")
    return value


def _is_ipv6(value: str) -> bool:
    try:
        ipaddress.IPv6Address(value.strip("[]"))
    except ValueError:
        return False
    return True


def _user(ctx: _Ctx, node: Node, field: str) -> str:
    value = _str(ctx, node, field)
    if not value or any(c.isspace() for c in value) or "@" in value or ":" in value:
        raise _bad(ctx, node, field, "a user name")
    return value


def _str_list(ctx: _Ctx, node: Node, field: str) -> tuple[str, ...]:
    if isinstance(node, SequenceNode):
        return tuple(_str(ctx, item, f"{field}[{i}]") for i, item in enumerate(node.value))
    if isinstance(ctx.scalar(node, field), str):
        return (_str(ctx, node, field),)
    raise _bad(ctx, node, field, "a string or a list of strings")


def _tags(ctx: _Ctx, node: Node, field: str) -> tuple[str, ...]:
    value = ctx.scalar(node, field)
    if isinstance(value, str):
        items = [(t.strip(), node, field) for t in value.split(",") if t.strip()]
    elif isinstance(node, SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            sub = f"{field}[{i}]"
            if not isinstance(ctx.scalar(item, sub), str):
                raise _bad(ctx, item, sub, "a tag (string)")
            items.append((str(ctx.scalar(item, sub)).strip(), item, sub))
    else:
        raise _bad(ctx, node, field, "a list of tags or a comma-separated string")
    tags: list[str] = []
    for tag, item, sub in items:
        if not _NAME_RE.match(tag):
            raise ctx.error(f'invalid tag "{tag}": use letters, digits, "_", "." and "-"', _line(item), sub)
        if tag not in tags:
            tags.append(tag)
    return tuple(tags)


def _choice(*options: str) -> Converter:
    def convert(ctx: _Ctx, node: Node, field: str) -> str:
        value = ctx.scalar(node, field)
        if value not in options:
            raise _bad(ctx, node, field, "one of " + ", ".join(f'"{o}"' for o in options))
        return str(value)

    return convert


def _env(ctx: _Ctx, node: Node, field: str) -> dict[str, str | None]:
    """name -> value as written (None: remove the variable inherited from defaults)."""
    result: dict[str, str | None] = {}
    for name, entry in ctx.mapping(node, field, what="a mapping of variable names to values").items():
        sub = _join(field, name)
        if not _ENV_NAME_RE.match(name):
            raise ctx.error(f'invalid environment variable name "{name}"', entry.line, sub)
        if not isinstance(entry.value, ScalarNode):
            raise _bad(ctx, entry.value, sub, "a string, number or boolean")
        value = ctx.scalar(entry.value, sub)
        if value is None:
            result[name] = None
        elif isinstance(value, str):
            result[name] = value
        else:  # numbers, booleans, dates: exactly as written (1.10 stays "1.10", yes stays "yes")
            result[name] = str(entry.value.value)
    return result


def _jump_spec(ctx: _Ctx, node: Node, field: str) -> tuple[_Hop, ...]:
    text = _str(ctx, node, field)
    try:
        return _parse_jumps(text)
    except ValueError as exc:
        raise ctx.error(f'{exc}, got "{text}"', _line(node), field) from None


def _shards(ctx: _Ctx, node: Node, field: str) -> int | None:
    value = ctx.scalar(node, field)
    if value is None or value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _bad(ctx, node, field, '"auto" or a positive integer')
    return value


def _exit_codes(ctx: _Ctx, node: Node, field: str) -> tuple[int, ...]:
    items = node.value if isinstance(node, SequenceNode) else [node]
    codes: list[int] = []
    for i, item in enumerate(items):
        sub = f"{field}[{i}]" if isinstance(node, SequenceNode) else field
        code = _number(ctx, item, sub, "an exit code (0-255)", integer=True)
        if not 0 <= code <= 255:
            raise _bad(ctx, item, sub, "an exit code (0-255)")
        codes.append(int(code))
    return tuple(codes)


def _valid_url(value: str) -> bool:
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not any(c.isspace() for c in value)


def _url(ctx: _Ctx, node: Node, field: str) -> str:
    value = _str(ctx, node, field)
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise _bad(ctx, node, field, "an http:// or https:// URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in value):
        raise _bad(ctx, node, field, "an http:// or https:// URL")
    return value


def _bool(ctx: _Ctx, node: Node, field: str) -> bool:
    value = ctx.scalar(node, field)
    if not isinstance(value, bool):
        raise _bad(ctx, node, field, "true or false")
    return value


def _args(ctx: _Ctx, node: Node, field: str) -> str:
    """Runner arguments: one shell line as written, or a list of words (each quoted)."""
    if isinstance(node, SequenceNode):
        return " ".join(shlex.quote(w) for w in _str_list(ctx, node, field))
    value = _str(ctx, node, field)
    try:
        shlex.split(value)
    except ValueError as exc:
        raise ctx.error(f"is not a valid shell line ({exc})", _line(node), field) from None
    return value


def _services(ctx: _Ctx, node: Node, field: str) -> tuple[ServiceConfig, ...]:
    """A list of {command, ready, timeout} mappings (a bare string is a command with no ready check)."""
    if not isinstance(node, SequenceNode):
        raise _bad(ctx, node, field, "a list of services ({command: ..., ready: ..., timeout: ...})")
    services = []
    for i, item in enumerate(node.value):
        sub = f"{field}[{i}]"
        if isinstance(item, ScalarNode):
            services.append(ServiceConfig(command=_str(ctx, item, sub), line=_line(item)))
            continue
        entries = ctx.mapping(item, sub, what="a mapping with command, ready and timeout")
        values = _fields(ctx, entries, _SERVICE_FIELDS, sub)
        if "command" not in values:
            raise ctx.error("missing: command", _line(item), _join(sub, "command"))
        ready = values.get("ready")
        if isinstance(ready, str) and ready.startswith(("http://", "https://")):
            # $PORT / ${PORT} (the machine's env) and {machine} are filled in per machine: check the rest
            probe = re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", "1", ready).replace("{machine}", "m")
            if not _valid_url(probe):
                raise _bad(ctx, entries["ready"].value, _join(sub, "ready"), "an http:// or https:// URL")
        services.append(ServiceConfig(line=_line(item), **values))
    return tuple(services)


@dataclass(frozen=True)
class _Field:
    convert: Converter
    nullable: bool = False  # an explicit null is accepted and stored as None


_MACHINE_FIELDS: dict[str, _Field] = {
    "host": _Field(_host, nullable=True),
    "port": _Field(_port),
    "user": _Field(_user, nullable=True),
    "identity_file": _Field(_str_list, nullable=True),
    "known_hosts": _Field(_str),
    "connect_timeout": _Field(_pos_float),
    "workdir": _Field(_str, nullable=True),
    "env": _Field(_env, nullable=True),
    "transport": _Field(_choice("ssh", "openssh", "local")),
    "slots": _Field(_pos_int, nullable=True),
    "speed": _Field(_pos_float, nullable=True),
    "tags": _Field(_tags, nullable=True),
    "jump": _Field(_jump_spec, nullable=True),
}
_NOT_IN_DEFAULTS = frozenset({"host"})
_DEFAULTS_FIELDS = {k: v for k, v in _MACHINE_FIELDS.items() if k not in _NOT_IN_DEFAULTS}

_HEALTH_FIELDS: dict[str, _Field] = {
    "min_disk_free_pct": _Field(_pct),
    "max_mem_used_pct": _Field(_pct),
    "max_load_per_core": _Field(_pos_float),
    "timeout": _Field(_pos_float),
    "interval": _Field(_nonneg_float),     # 0: no re-probes during a run
    "check": _Field(_str, nullable=True),
}

_RETRY_FIELDS: dict[str, _Field] = {
    "max_retries": _Field(_nonneg_int),
    "backoff_base": _Field(_nonneg_float),
    "backoff_factor": _Field(_at_least_one),
    "backoff_max": _Field(_nonneg_float),
    "jitter": _Field(_nonneg_float),
    "drain_after": _Field(_pos_int),
    "infra_exit_codes": _Field(_exit_codes),
}

_SUITE_FIELDS: dict[str, _Field] = {
    "command": _Field(_str),
    "tests": _Field(_str_list),
    "discover": _Field(_str),
    "shards": _Field(_shards, nullable=True),
    "junit": _Field(_str, nullable=True),
    "timeout": _Field(_pos_float, nullable=True),
    "kill_grace": _Field(_nonneg_float),
    "setup": _Field(_str, nullable=True),
    "teardown": _Field(_str, nullable=True),
    "sync": _Field(_str, nullable=True),
    "artifacts": _Field(_str_list),
    "strategy": _Field(_choice("static", "dynamic"), nullable=True),
    "runner": _Field(_choice("pytest", "playwright", "jest", "command"), nullable=True),
    "args": _Field(_args),
    "ok_exit_codes": _Field(_exit_codes),
    "split_files": _Field(_bool, nullable=True),
    "services": _Field(_services),
    "workers": _Field(_choice("process", "warm")),
}

_SERVICE_FIELDS: dict[str, _Field] = {
    "command": _Field(_str),
    "ready": _Field(_str, nullable=True),
    "timeout": _Field(_pos_float),
}

_TOP_FIELDS = ("defaults", "health", "retry", "machines", "suite", "history", "notify")


def _fields(ctx: _Ctx, entries: Mapping[str, _Entry], spec: Mapping[str, _Field], prefix: str,
            *, forbidden: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Convert every entry by its field spec; unknown keys are errors (with a did-you-mean)."""
    values: dict[str, Any] = {}
    for key, entry in entries.items():
        if forbidden and key in forbidden:
            raise ctx.error(forbidden[key], entry.line, _join(prefix, key))
        field_spec = spec.get(key)
        if field_spec is None:
            raise _unknown_key(ctx, entry, spec, prefix)
        sub = _join(prefix, key)
        if field_spec.nullable and ctx.scalar(entry.value, sub) is None:
            values[key] = None
        else:
            values[key] = field_spec.convert(ctx, entry.value, sub)
    return values


# --- loading ---------------------------------------------------------------------------------------


def load_inventory(path: str | Path | None = None, *, ssh_config: str | Path | None = None) -> Inventory:
    """Load and validate an inventory.

    ``path`` defaults to ``$FLEETSHARD_INVENTORY``, else ``./machines.yaml``. ``ssh_config`` defaults
    to ``~/.ssh/config`` when that file exists; it is applied to ``ssh`` machines.
    """
    if path is None:
        path = os.environ.get(INVENTORY_ENV) or DEFAULT_INVENTORY
    inv_path = Path(path)
    ctx = _Ctx(str(inv_path))
    text = _read_text(ctx, inv_path)
    root = _compose(ctx, text)

    if root is None or (isinstance(root, ScalarNode) and ctx.scalar(root, "") is None):
        raise ctx.error("no machines defined", None, None)
    top = ctx.mapping(root, "", what="a mapping at the top level (machines:, suite:, ...)")
    for entry in top.values():
        if entry.key not in _TOP_FIELDS and not entry.key.startswith("x-"):   # x-*: anchors, free-form
            raise _unknown_key(ctx, entry, dict.fromkeys(_TOP_FIELDS), "")

    ssh = _LazySSHConfig(ssh_config)
    base_dir = inv_path.parent

    defaults: dict[str, Any] = {}
    if "defaults" in top:
        forbidden = {k: f'"{k}" cannot be set in defaults (set it on each machine)' for k in _NOT_IN_DEFAULTS}
        defaults = _fields(ctx, ctx.mapping(top["defaults"].value, "defaults"), _DEFAULTS_FIELDS,
                           "defaults", forbidden=forbidden)

    health = HealthThresholds()
    if "health" in top:
        health = HealthThresholds(**_fields(ctx, ctx.mapping(top["health"].value, "health"),
                                            _HEALTH_FIELDS, "health"))
    retry = RetryPolicyConfig()
    if "retry" in top:
        retry = RetryPolicyConfig(**_fields(ctx, ctx.mapping(top["retry"].value, "retry"),
                                            _RETRY_FIELDS, "retry"))

    if "machines" not in top:
        raise ctx.error("no machines defined", _line(root), None)
    machines_entry = top["machines"]
    machine_entries = ctx.mapping(machines_entry.value, "machines",
                                  what="a mapping of machine names to settings", kind="machine")
    if not machine_entries:
        raise ctx.error("no machines defined", machines_entry.line, "machines")
    machines = tuple(
        _machine(ctx, entry, defaults, ssh, base_dir) for entry in machine_entries.values()
    )

    suite = None
    if "suite" in top and ctx.scalar(top["suite"].value, "suite") is not None:
        suite = _suite(ctx, top["suite"])
    history = notify = None
    if "history" in top and ctx.scalar(top["history"].value, "history") is not None:
        history = _local_path(_str(ctx, top["history"].value, "history"), base_dir)
    if "notify" in top and ctx.scalar(top["notify"].value, "notify") is not None:
        notify = _url(ctx, top["notify"].value, "notify")

    return Inventory(path=inv_path, machines=machines, health=health, retry=retry, suite=suite,
                     history=history, notify=notify)


def _read_text(ctx: _Ctx, path: Path) -> str:
    if path.is_dir():
        raise ctx.error("is a directory, not an inventory file", None, None)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ctx.error(f"file not found (set -i/--inventory or {INVENTORY_ENV})", None, None) from None
    except OSError as exc:
        raise ctx.error(f"cannot read file: {exc.strerror or exc}", None, None) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ctx.error(f"not valid UTF-8 (byte 0x{data[exc.start]:02x})", line, None) from None


def _compose(ctx: _Ctx, text: str) -> Node | None:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or "syntax error"
        if exc.context:
            at = ""
            if exc.context_mark is not None and exc.context_mark is not mark:
                at = f" at line {exc.context_mark.line + 1}"
            if problem.startswith("but "):  # "expected a single document ... but found another document"
                problem = f"{exc.context}{at} {problem}"
            else:
                problem += f" ({exc.context}{at})"
        line = mark.line + 1 if mark is not None else None
        raise ctx.error(_one_line(f"invalid YAML: {problem}"), line, None) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        char = exc.character
        what = f"character #x{char:04x}" if isinstance(char, int) else "character"
        raise ctx.error(_one_line(f"invalid YAML: unacceptable {what}: {exc.reason}"), line, None) from None
    except yaml.YAMLError as exc:
        raise ctx.error(_one_line(f"invalid YAML: {exc}"), None, None) from None


class _LazySSHConfig:
    """~/.ssh/config, looked at the first time an ssh machine asks: an inventory of local machines never
    depends on it. Each lookup goes through asyncssh's own parser (fleetshard.sshconfig)."""

    def __init__(self, path: str | Path | None) -> None:
        self._path = path
        self._resolved: Path | None = None
        self._checked = False

    @property
    def path(self) -> Path | None:
        if not self._checked:
            self._checked = True
            if self._path is None:
                default = Path(os.path.expanduser("~/.ssh/config"))
                self._resolved = default if default.is_file() else None
            else:
                self._resolved = Path(self._path)
                if not self._resolved.exists():
                    raise ConfigError("file not found", file=str(self._resolved))
                if self._resolved.is_dir():
                    raise ConfigError("is a directory, not a file", file=str(self._resolved))
        return self._resolved

    def lookup(self, host: str, *, user: str | None = None, port: int | None = None) -> sshconfig.HostConfig:
        path = self.path
        if path is None:
            return sshconfig.HostConfig(path=Path())
        return sshconfig.lookup(host, path, user=user, port=port)


def _local_path(path: str, base_dir: Path) -> str:
    expanded = os.path.expanduser(path)
    return expanded if os.path.isabs(expanded) else str(base_dir / expanded)


_Hop = tuple[str | None, str, int | None]


def _parse_jumps(text: str) -> tuple[_Hop, ...]:
    """``[ssh://][user@]host[:port][,...]`` -> one (user, host, port) per hop, first hop first."""
    hops = tuple(_parse_hop(part) for part in text.split(","))
    return hops


def _parse_hop(text: str) -> _Hop:
    hop = text.strip()
    hop = hop.removeprefix("ssh://")
    user: str | None = None
    if "@" in hop:
        user, hop = hop.rsplit("@", 1)
        if not user:
            raise ValueError("expected [user@]host[:port]")
    port_text: str | None = None
    if hop.startswith("["):  # [ipv6]:port
        end = hop.find("]")
        if end < 0:
            raise ValueError("expected [user@]host[:port]")
        host, rest = hop[1:end], hop[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError("expected [user@]host[:port]")
            port_text = rest[1:]
    elif hop.count(":") == 1:
        host, port_text = hop.split(":")
    else:
        host = hop
    if not host or any(c.isspace() for c in host):
        raise ValueError("expected [user@]host[:port]")
    port: int | None = None
    if port_text is not None:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError("expected [user@]host[:port] with a port number (1-65535)")
        port = int(port_text)
    return user, host, port


#: Keywords that do not change where fleetshard connects, as whom, or how the host is verified: fleetshard
#: already does what they ask (batch mode, one multiplexed connection per machine), or they only concern
#: an interactive terminal. They are ignored without a warning (docs/inventory.md lists them).
_NO_EFFECT_KEYWORDS = frozenset({
    "batchmode", "loglevel", "visualhostkey", "hashknownhosts", "escapechar", "addkeystoagent", "usekeychain",
    "forwardx11", "forwardx11trusted", "forwardx11timeout", "controlmaster", "controlpath", "controlpersist",
    "requesttty", "sessiontype", "stdinnull", "forkafterauthentication", "permitlocalcommand", "localcommand",
    "updatehostkeys", "checkhostip", "numberofpasswordprompts", "xauthlocation", "enableescapecommandline",
    "obscurekeystroketiming",
})
#: Keywords the ssh (asyncssh) transport reads but overrides by fleetshard's own rules, with the reason.
_OVERRIDDEN = {
    "stricthostkeychecking": "StrictHostKeyChecking is ignored: host keys are always verified "
                             "(--accept-new-host-keys records new ones)",
    "canonicalizehostname": "CanonicalizeHostname is not supported: the host is resolved as written",
    "remotecommand": "RemoteCommand is ignored: fleetshard runs its own commands",
    "forwardagent": "ForwardAgent is ignored: the agent is never forwarded to test machines",
    "sendenv": "SendEnv is ignored: use env in the inventory",
    "setenv": "SetEnv is ignored: use env in the inventory",
}


def _config_warnings(transport: Transport, cfg: sshconfig.HostConfig, written: str) -> tuple[str, ...]:
    """What the machine's transport will not do of what ssh_config says for it (one line per problem)."""
    notes: list[str] = []
    if cfg.has("UserKnownHostsFile") and not cfg.get("UserKnownHostsFile"):
        notes.append("UserKnownHostsFile none is ignored: host keys are always verified (against known_hosts)")
    if transport == "openssh":
        if "stricthostkeychecking" in cfg.applied:
            notes.append(_OVERRIDDEN["stricthostkeychecking"])
        return tuple(f"{cfg.path}: {n} (Host {written})" for n in notes)
    if cfg.match_canonical:
        notes.append("Match canonical is not supported: the host is resolved as written, so those blocks "
                     "are not applied")
    for keyword in sorted(cfg.applied):
        if keyword in _OVERRIDDEN:
            notes.append(_OVERRIDDEN[keyword])
    unknown = [k for k in cfg.unknown if k.lower() not in _NO_EFFECT_KEYWORDS and k.lower() not in _OVERRIDDEN]
    if unknown:
        notes.append(f"{', '.join(unknown)} not supported by the ssh transport, ignored "
                     f"(transport: openssh uses the system ssh client, which honours them)")
    return tuple(f"{cfg.path}: {n} (Host {written})" for n in notes)


def _cfg_expand(value: str) -> str:
    return os.path.expanduser(value)


def _agent(value: Any) -> str:
    """IdentityAgent as a socket path, or "none"."""
    if value is None or str(value).lower() == "none":
        return "none"
    text = str(value)
    if text == "SSH_AUTH_SOCK" or text.startswith("$"):
        return os.environ.get(text.lstrip("$").strip("{}"), "") or "none"
    return _cfg_expand(text)


def _machine(ctx: _Ctx, entry: _Entry, defaults: Mapping[str, Any],
             lazy_ssh: _LazySSHConfig, base_dir: Path) -> Machine:
    name = entry.key
    prefix = _join("machines", name)
    if not _NAME_RE.match(name) or not name.strip("."):
        raise ctx.error(f'invalid machine name "{name}": use letters, digits, "_", "." and "-"',
                        entry.line, "machines")
    own = _fields(ctx, ctx.mapping(entry.value, prefix, what="a mapping of machine settings"),
                  _MACHINE_FIELDS, prefix)

    def setting(key: str, builtin: Any = None) -> Any:
        if key in own:
            return own[key]
        if key in defaults and defaults[key] is not None:
            return defaults[key]
        return builtin

    transport: Transport = setting("transport", "ssh")
    inherited = {} if "env" in own and own["env"] is None else (defaults.get("env") or {})   # env: null
    env: dict[str, str | None] = {**inherited, **(own.get("env") or {})}
    identity_files: tuple[str, ...] = setting("identity_file") or ()
    common: dict[str, Any] = {
        "name": name,
        "transport": transport,
        "workdir": setting("workdir"),
        "env": tuple(sorted((k, v) for k, v in env.items() if v is not None)),
        "slots": setting("slots"),
        "speed": setting("speed"),
        "tags": setting("tags") or (),
        "line": entry.line,
    }

    if transport == "local":
        for key in ("host", "jump"):
            if own.get(key) is not None:
                raise ctx.error(f"{key} is not used with transport: local", entry.line, _join(prefix, key))
        return Machine(user=setting("user"), port=setting("port", 22),
                       identity_files=tuple(_local_path(p, base_dir) for p in identity_files),
                       known_hosts=_local_path(setting("known_hosts", DEFAULT_KNOWN_HOSTS), base_dir),
                       connect_timeout=setting("connect_timeout", 5.0), **common)

    written = own.get("host") or name
    own_user = own.get("user") if isinstance(own.get("user"), str) else None
    own_port = own.get("port") if isinstance(own.get("port"), int) else None
    lazy_ssh.path  # noqa: B018 - a missing or unreadable config file is its own error
    try:
        cfg = lazy_ssh.lookup(written, user=own_user, port=own_port)
    except ConfigError as exc:
        raise _ssh_config_error(exc, ctx, entry.line, prefix) from None
    where = str(cfg.path)
    host = cfg.get("Hostname") or written
    sourced: set[str] = set()

    def resolved(key: str, cfg_value: Any, builtin: Any = None) -> Any:
        """Machine value > ~/.ssh/config > defaults > built-in."""
        if key in own:
            return own[key]
        if cfg_value is not None:
            sourced.add(key)
            return cfg_value
        return setting(key, builtin)

    cfg_port = cfg.get("Port") if own_port is None else None
    if cfg_port is not None and not (isinstance(cfg_port, int) and 1 <= cfg_port <= 65535):
        raise ctx.error(f'{where} sets Port "{cfg_port}" for {written}, expected 1-65535', entry.line, prefix)
    cfg_identities = tuple(_cfg_expand(p) for p in cfg.get("IdentityFile") or ()) or None
    own_identities = resolved("identity_file", None)
    if "identity_file" not in own and cfg_identities is not None:
        identities = cfg_identities
        sourced.add("identity_file")
    else:
        identities = tuple(_local_path(p, base_dir) for p in (own_identities or ()))

    # known_hosts: the machine's > UserKnownHostsFile > defaults > ~/.ssh/known_hosts; new keys go to the first.
    cfg_known = [_cfg_expand(p) for p in cfg.get("UserKnownHostsFile") or ()]
    extra_known: list[str] = [_cfg_expand(p) for p in cfg.get("GlobalKnownHostsFile") or ()]
    if "known_hosts" not in own and cfg_known:
        known_hosts = cfg_known[0]
        extra_known = cfg_known[1:] + extra_known
        sourced.add("known_hosts")
    else:
        known_hosts = _local_path(setting("known_hosts", DEFAULT_KNOWN_HOSTS), base_dir)

    # How to reach it: the machine's jump > ProxyJump / ProxyCommand > defaults' jump.
    hops: tuple[_Hop, ...] = ()
    proxy_command: str | None = None
    if "jump" in own:
        hops = own["jump"] or ()
    elif cfg.has("ProxyJump") or cfg.has("ProxyCommand"):
        cfg_jump = cfg.get("ProxyJump")
        if cfg_jump is not None:
            try:
                hops = _parse_jumps(str(cfg_jump))
            except ValueError as exc:
                raise ctx.error(f'{where} sets ProxyJump "{cfg_jump}" for {written}: {exc}',
                                entry.line, prefix) from None
            sourced.add("jumps")
        elif cfg.get("ProxyCommand") is not None:
            proxy_command = str(cfg.get("ProxyCommand"))
            sourced.add("proxy_command")
    else:
        hops = defaults.get("jump") or ()
    jumps = tuple(_jump_host(ctx, hop, lazy_ssh, identities, entry.line, prefix) for hop in hops)

    cfg_timeout = cfg.get("ConnectTimeout")
    interval = cfg.get("ServerAliveInterval")
    count = cfg.get("ServerAliveCountMax")
    certificates = tuple(_cfg_expand(p) for p in cfg.get("CertificateFile") or ())
    agent = _agent(cfg.get("IdentityAgent")) if cfg.has("IdentityAgent") else None
    if cfg.has("Ciphers"):
        sourced.add("ciphers")
    for key, present in (("certificate_files", certificates), ("identity_agent", agent is not None),
                         ("server_alive_interval", interval is not None)):
        if present:
            sourced.add(key)

    return Machine(
        host=host,
        alias=written if host != written else None,
        port=resolved("port", cfg_port, 22),
        user=resolved("user", cfg.get("User")),
        identity_files=identities,
        known_hosts=known_hosts,
        connect_timeout=resolved("connect_timeout", float(cfg_timeout) if cfg_timeout else None, 5.0),
        jumps=jumps,
        proxy_command=proxy_command,
        identity_agent=agent,
        certificate_files=certificates,
        extra_known_hosts=tuple(extra_known),
        server_alive_interval=float(interval) if interval is not None else None,
        server_alive_count_max=int(count) if count is not None else None,
        ssh_config=str(cfg.path) if lazy_ssh.path is not None else None,
        from_ssh_config=frozenset(sourced),
        warnings=_config_warnings(transport, cfg, written) if lazy_ssh.path is not None else (),
        **common,
    )


def _ssh_config_error(exc: ConfigError, ctx: _Ctx, line: int, field: str) -> ConfigError:
    """An error in ssh_config, named by its own file and line, with the machine that read it."""
    where = f"{exc.file}:{exc.line}: " if exc.line is not None else f"{exc.file}: "
    reason = str(exc).removeprefix(where)
    return ConfigError(f"{reason} (read for {field}, {ctx.file}:{line})", file=exc.file, line=exc.line)


def _jump_host(ctx: _Ctx, spec: _Hop, ssh: _LazySSHConfig, fallback_identities: tuple[str, ...],
               line: int, prefix: str) -> JumpHost:
    """Resolve a jump host through ~/.ssh/config like ssh does; values written in the spec win.

    Without an IdentityFile for the jump host in ~/.ssh/config, the machine's own identity files are used.
    """
    user, written, port = spec
    try:
        cfg = ssh.lookup(written, user=user, port=port)
    except ConfigError as exc:
        raise _ssh_config_error(exc, ctx, line, prefix) from None
    cfg_port = cfg.get("Port")
    if port is None and isinstance(cfg_port, int) and 1 <= cfg_port <= 65535:
        port = cfg_port
    cfg_identity = tuple(_cfg_expand(p) for p in cfg.get("IdentityFile") or ())
    host = cfg.get("Hostname") or written
    return JumpHost(
        host=host,
        port=port if port is not None else 22,
        user=user if user is not None else cfg.get("User"),
        identity_files=cfg_identity or fallback_identities,
        alias=written if host != written else None,
    )


def _suite(ctx: _Ctx, entry: _Entry) -> SuiteConfig:
    values = _fields(ctx, ctx.mapping(entry.value, "suite"), _SUITE_FIELDS, "suite")
    entries = ctx.mapping(entry.value, "suite")

    def line_of(key: str) -> int:
        return entries[key].line if key in entries else entry.line

    command: str | None = values.get("command")
    runner = values.get("runner")
    if runner == "command":
        runner = values["runner"] = None
    if values.get("tests") and values.get("discover") is not None:
        raise ctx.error("give tests or discover, not both", line_of("discover"), "suite.discover")
    if values.get("args") and runner is None:
        raise ctx.error("needs a runner (pytest, playwright or jest): with runner: command, put the "
                        "arguments in command", line_of("args"), "suite.args")
    if values.get("workers") == "warm":
        if runner != "pytest":
            raise ctx.error("warm workers need runner: pytest", line_of("workers"), "suite.workers")
        if command is not None and "{tests}" not in command and "{files}" not in command:
            raise ctx.error("warm workers run the suite file by file: the command must contain {tests}",
                            line_of("command"), "suite.command")
    if runner is not None:
        if command is not None and "{junit}" not in command and values.get("junit") is None:
            raise ctx.error(f"must contain {{junit}} (or set suite.junit) for the {runner} runner, whose "
                            "JUnit decides the verdict", line_of("command"), "suite.command")
        return SuiteConfig(line=entry.line, **values)
    file_mode = bool(values.get("tests")) or values.get("discover") is not None
    if command is None and not file_mode:
        raise ctx.error("needs a command (with tests or discover for file mode), or a runner",
                        entry.line, "suite")
    if command is None:
        raise ctx.error("missing: tests/discover need a command containing {files}", entry.line,
                        "suite.command")
    has_files = "{files}" in command or "{tests}" in command
    if has_files and not file_mode:
        which_ph = "{tests}" if "{tests}" in command else "{files}"
        raise ctx.error(f"uses {which_ph} but the suite has neither tests nor discover",
                        line_of("command"), "suite.command")
    if file_mode and not has_files:
        which = "tests" if values.get("tests") else "discover"
        raise ctx.error(f"must contain {{files}} when {which} is given", line_of("command"), "suite.command")
    return SuiteConfig(line=entry.line, **values)
