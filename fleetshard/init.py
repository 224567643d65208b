"""``fleetshard init``: write a commented ``machines.yaml`` for the project in the current directory.

Machines come from ``~/.ssh/config`` (its concrete ``Host`` aliases; patterns are skipped) or from an
Ansible inventory (through ``ansible-inventory --list``; groups become tags). The suite is guessed from
what the directory holds (Playwright, Jest or pytest configuration). Each machine is probed once to fill
in ``slots``; one that cannot be reached is written all the same, with the reason in a comment. The file is
checked with fleetshard's own loader before it is written, and an existing file is kept unless ``force``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, UsageError

__all__ = ["Candidate", "SuiteGuess", "ansible_hosts", "guess_suite", "init_command", "render"]

GITIGNORE_LINE = ".fleetshard/"
_NAME_RE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass
class Candidate:
    """A machine to write: its name and the keys it needs beyond what ~/.ssh/config already says."""

    name: str
    keys: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    note: str | None = None          # a comment written above the machine (e.g. why it has no slots)


@dataclass(frozen=True)
class SuiteGuess:
    runner: str                      # pytest | playwright | jest | command
    why: str
    command: str | None = None


# --- sources -----------------------------------------------------------------------------------


def ssh_config_hosts(path: Path) -> list[Candidate]:
    from .sshconfig import concrete_hosts

    if not path.is_file():
        raise UsageError(f"--from-ssh-config: {path} not found")
    return [Candidate(name=_machine_name(h), keys={} if _machine_name(h) == h else {"host": h})
            for h in concrete_hosts(path)]


def ansible_hosts(listing: Mapping[str, Any]) -> list[Candidate]:
    """Machines from ``ansible-inventory --list`` JSON: ansible_host/port/user/key file, groups as tags."""
    hostvars: Mapping[str, Any] = listing.get("_meta", {}).get("hostvars", {})
    groups_of: dict[str, list[str]] = {}

    def walk(group: str, inherited: list[str], seen: frozenset[str]) -> None:
        if group in seen:
            return
        entry = listing.get(group) or {}
        tags = inherited + ([group] if group not in ("all", "ungrouped") else [])
        for host in entry.get("hosts", []):
            known = groups_of.setdefault(host, [])
            known.extend(t for t in tags if t not in known)
        for child in entry.get("children", []):
            walk(child, tags, seen | {group})

    walk("all", [], frozenset())
    for host in hostvars:
        groups_of.setdefault(host, [])
    candidates = []
    for host, tags in groups_of.items():
        hv: Mapping[str, Any] = hostvars.get(host, {}) or {}
        name = _machine_name(host)
        keys: dict[str, Any] = {}
        address = hv.get("ansible_host") or hv.get("ansible_ssh_host")
        if address and str(address) != name:
            keys["host"] = str(address)
        elif name != host:
            keys["host"] = host
        port = hv.get("ansible_port") or hv.get("ansible_ssh_port")
        if port:
            keys["port"] = int(port)
        user = hv.get("ansible_user") or hv.get("ansible_ssh_user")
        if user:
            keys["user"] = str(user)
        key_file = hv.get("ansible_ssh_private_key_file")
        if key_file:
            keys["identity_file"] = str(key_file)
        connection = hv.get("ansible_connection")
        if connection == "local":
            keys = {"transport": "local"}
        candidates.append(Candidate(name=name, keys=keys, tags=[_tag(t) for t in tags]))
    return candidates


def run_ansible_inventory(inventory: str, which: Callable[[str], str | None] = shutil.which) -> list[Candidate]:
    exe = which("ansible-inventory")
    if exe is None:
        raise UsageError("--from-ansible needs ansible-inventory, which is not installed (pip install "
                         "ansible-core); or list the machines with --from-ssh-config or by hand")
    try:
        proc = subprocess.run([exe, "-i", inventory, "--list"], capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        raise UsageError(f"ansible-inventory -i {inventory} --list did not finish within 120 s") from None
    if proc.returncode != 0:
        said = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise UsageError(f"ansible-inventory -i {inventory} --list failed: {said}")
    try:
        listing = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise UsageError(f"ansible-inventory printed no JSON: {exc}") from None
    hosts = ansible_hosts(listing)
    if not hosts:
        raise UsageError(f"{inventory}: no hosts in this Ansible inventory")
    return hosts


def _machine_name(host: str) -> str:
    name = _NAME_RE.sub("-", host).strip("-") or "machine"
    return name if name.strip(".") else "machine"


def _tag(group: str) -> str:
    return _NAME_RE.sub("-", group).strip("-") or "group"


# --- suite -------------------------------------------------------------------------------------


def guess_suite(directory: Path) -> SuiteGuess:
    """Which runner the project uses, from its configuration files (Playwright, then Jest, then pytest)."""
    for pattern in ("playwright.config.ts", "playwright.config.js", "playwright.config.mjs",
                    "playwright.config.cjs", "playwright.config.mts", "playwright.config.cts"):
        if (directory / pattern).is_file():
            return SuiteGuess("playwright", f"found {pattern}")
    for pattern in ("jest.config.js", "jest.config.ts", "jest.config.mjs", "jest.config.cjs", "jest.config.json"):
        if (directory / pattern).is_file():
            return SuiteGuess("jest", f"found {pattern}")
    package = directory / "package.json"
    if package.is_file():
        try:
            if "jest" in json.loads(package.read_text(encoding="utf-8")):
                return SuiteGuess("jest", "found a jest section in package.json")
        except (OSError, ValueError):
            pass
    for name, marker in (("pytest.ini", None), ("pyproject.toml", "[tool.pytest.ini_options]"),
                         ("setup.cfg", "[tool:pytest]"), ("tox.ini", "[pytest]"), ("conftest.py", None)):
        path = directory / name
        if path.is_file():
            if marker is None:
                return SuiteGuess("pytest", f"found {name}")
            try:
                if marker in path.read_text(encoding="utf-8", errors="replace"):
                    return SuiteGuess("pytest", f"found {marker} in {name}")
            except OSError:
                pass
    for tests in ("tests", "test"):
        d = directory / tests
        if d.is_dir() and (any(d.rglob("test_*.py")) or any(d.rglob("*_test.py"))):
            return SuiteGuess("pytest", f"found test_*.py files under {tests}/")
    return SuiteGuess("command", "no pytest, Playwright or Jest configuration found",
                      command="./run-tests.sh --shard {shard}/{total}")


# --- rendering ---------------------------------------------------------------------------------


def render(machines: Sequence[Candidate], suite: SuiteGuess, *, source: str) -> str:
    """The commented machines.yaml."""
    out = [
        "# fleetshard inventory: the machines to split the suite across, and the suite.",
        f"# Written by `fleetshard init` ({source}). Reference: docs/inventory.md",
        "#",
        "# Settings of a machine come from its own entry, then ~/.ssh/config, then `defaults`.",
        "# Check it with `fleetshard health`, then `fleetshard plan`.",
        "",
        "defaults:",
        "  connect_timeout: 5",
        "  # user: ci",
        "  # identity_file: ~/.ssh/id_ed25519      # without one: the ssh-agent and ~/.ssh/id_* keys",
        "  # workdir: ~/src/project               # a checkout of this repository on each machine",
        "",
        "machines:",
    ]
    if not machines:
        out += ["  # No machine found: add one per host you can ssh into, e.g.",
                "  #   box: {host: box.lan, slots: 8}",
                "  local: {transport: local}            # this machine, to try the suite"]
    for c in machines:
        if c.note:
            out.append(f"  # {c.note}")
        entry = dict(c.keys)
        if c.tags:
            entry["tags"] = c.tags
        if entry:
            out.append(f"  {_yaml_key(c.name)}: {_flow(entry)}")
        else:
            out.append(f"  {_yaml_key(c.name)}: {{}}")
    out += ["", "suite:", f"  # {suite.why}"]
    if suite.runner == "command":
        out += ["  # Replace with the command that runs one shard of your tests, writing JUnit to {junit}.",
                "  runner: command",
                f"  command: {_scalar(suite.command or 'true')}",
                "  junit: results/junit-{shard}.xml"]
    else:
        out += [f"  runner: {suite.runner}",
                "  # args: \"\"                           # extra arguments for the runner (selections)"]
    out += ["  # setup: \"git fetch -q && git checkout -q $FLEETSHARD_COMMIT\"",
            "  # timeout: 1800", ""]
    return "\n".join(out)


def _flow(mapping: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(mapping), default_flow_style=True, sort_keys=False, width=1000).strip()


def _scalar(value: str) -> str:
    return yaml.safe_dump(value, default_style='"').strip().removesuffix("\n...")


def _yaml_key(name: str) -> str:
    dumped: str = yaml.safe_dump(name).strip().removesuffix("\n...").strip()
    return dumped


# --- the command -------------------------------------------------------------------------------


def init_command(*, output: Path, from_ssh_config: bool, from_ansible: str | None, force: bool,
                 probe: bool, gitignore: bool, accept_new_host_keys: bool = False,
                 ssh_config: Path | None = None, echo: Callable[[str], None] = print) -> int:
    if from_ssh_config and from_ansible:
        raise UsageError("give --from-ssh-config or --from-ansible, not both")
    if output.exists() and not force:
        raise UsageError(f"{output} exists; not overwritten (use --force to replace it)")
    directory = output.parent if output.parent != Path("") else Path(".")
    if from_ansible:
        machines = run_ansible_inventory(from_ansible)
        source = f"machines from Ansible inventory {from_ansible}"
    elif from_ssh_config:
        path = ssh_config or Path(os.path.expanduser("~/.ssh/config"))
        machines = ssh_config_hosts(path)
        source = f"machines from {path}"
    else:
        machines = []
        source = "no machine source given"
    suite = guess_suite(directory.resolve())
    text = render(machines, suite, source=source)
    inv = _check(text, directory, ssh_config)          # the loader must accept what we write
    if _prefer_openssh(inv, machines):
        text = render(machines, suite, source=source)
        inv = _check(text, directory, ssh_config)
    if probe and machines:
        _probe_slots(inv, machines, accept_new_host_keys, echo)
        text = render(machines, suite, source=source)
        _check(text, directory, ssh_config)
    _write(output, text)
    echo(f"wrote {output}: {len(machines) or 'no'} machine(s), suite runner {suite.runner} ({suite.why})")
    _offer_gitignore(directory, gitignore, echo)
    echo(f"next: fleetshard health -i {output}, then fleetshard plan -i {output}")
    return 0


def _prefer_openssh(inv: Any, machines: Sequence[Candidate]) -> bool:
    """Machines whose ~/.ssh/config uses keywords the built-in transport ignores get ``transport: openssh``
    (when the ssh client is installed), with the reason as a comment."""
    changed = False
    by_name = {c.name: c for c in machines}
    for machine in inv.machines:
        c = by_name.get(machine.name)
        unsupported = [w for w in machine.warnings if "not supported by the ssh transport" in w]
        if c is None or not unsupported or "transport" in c.keys or shutil.which("ssh") is None:
            continue
        keywords = unsupported[0].split(": ", 1)[-1].split(" not supported", 1)[0]
        c.keys = {"transport": "openssh", **c.keys}
        c.note = f"transport: openssh, since ~/.ssh/config uses {keywords} for it (the ssh transport ignores it)"
        changed = True
    return changed


def _check(text: str, directory: Path, ssh_config: Path | None) -> Any:
    from .inventory import load_inventory

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=directory, delete=False, encoding="utf-8") as fh:
        fh.write(text)
        tmp = Path(fh.name)
    try:
        return load_inventory(tmp, ssh_config=ssh_config)
    except ConfigError as exc:      # a bug of init's, or a host the loader cannot take: say which
        raise UsageError(f"the inventory init would write does not load: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _probe_slots(inv: Any, machines: Sequence[Candidate], accept_new: bool, echo: Callable[[str], None]) -> None:
    from .probes import probe
    from .transport import transport_for

    async def one(machine: Any) -> Any:
        transport = transport_for(machine, accept_new_host_keys=accept_new)
        try:
            return await probe(machine, transport, inv.health)
        finally:
            await transport.close()

    async def all_() -> list[Any]:
        return list(await asyncio.gather(*(one(m) for m in inv.machines)))

    echo(f"probing {len(inv.machines)} machine(s) once to fill in slots...")
    reports = {r.machine: r for r in asyncio.run(all_())}
    for c in machines:
        report = reports.get(c.name)
        if report is None:
            continue
        if report.reachable and report.cores:
            c.keys["slots"] = int(report.cores)
        else:
            reason = "; ".join(report.reasons) or "unreachable"
            note = f"not reachable during init, slots left to the probe: {_one_line(reason)}"
            c.note = f"{c.note}; {note}" if c.note else note
            echo(f"  {c.name}: {_one_line(reason)}")


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]


def _write(output: Path, text: str) -> None:
    from .outfile import write_output

    write_output(output, text.encode("utf-8"))


def _offer_gitignore(directory: Path, apply: bool, echo: Callable[[str], None]) -> None:
    path = directory / ".gitignore"
    try:
        lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    except OSError:
        lines = []
    if any(line.strip() in (GITIGNORE_LINE, ".fleetshard", "/.fleetshard/", "/.fleetshard") for line in lines):
        return
    if apply:
        prefix = "" if not lines or path.read_text(encoding="utf-8").endswith("\n") else "\n"
        with path.open("a", encoding="utf-8") as fh:
            fh.write(f"{prefix}{GITIGNORE_LINE}\n")
        echo(f"added {GITIGNORE_LINE} to {path}")
    else:
        echo(f"fleetshard keeps its history and results in .fleetshard/: add the line `{GITIGNORE_LINE}` to "
             f"{path} (or rerun with --gitignore)")
