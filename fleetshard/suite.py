"""The suite: what to run, how to find its test files, and how a shard's command is built.

A command template is a shell line. Its placeholders are filled with quoted values, never pasted:
``{files}`` becomes the shard's files, each passed through :func:`shlex.quote`.

Placeholders: {shard} {total} {files} {junit} {machine} {run_id} {attempt}
"""

from __future__ import annotations

import glob
import re
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from .errors import ConfigError, UsageError
from .inventory import Inventory, SuiteConfig
from .model import Shard

PLACEHOLDERS = ("shard", "total", "files", "junit", "machine", "run_id", "attempt")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
_FILE_OF_ID = re.compile(r"^(?P<file>.+?)(?:::|:\d+(?::\d+)?\b|: \d+$)")
_PROJECT_PREFIX = re.compile(r"^\[[^\]]*\]\s*(?:›|>)\s*")          # a runner's "[chromium] › " prefix
_SUMMARY = re.compile(r"^(=+|-+|\d+ (tests?|items?|files?)\b|collected \d+|no tests ran|Total:|Listing tests)",
                      re.IGNORECASE)


@dataclass(frozen=True)
class Suite:
    """The inventory's ``suite:`` with command-line overrides applied."""

    config: SuiteConfig
    command: str
    mode: Literal["native", "files"]
    source: str                       # where the command came from, for messages

    @property
    def uses_junit(self) -> bool:
        return "{junit}" in self.command or self.config.junit is not None


def command_from_argv(args: Sequence[str]) -> str:
    """Turn words typed after ``--`` into a command template, keeping placeholders live.

    One word is taken as a shell line as it stands; several words are quoted one by one, except the
    placeholders inside them, so ``--shard={shard}/{total}`` still gets its numbers.
    """
    if len(args) == 1:
        return args[0]
    words = []
    for word in args:
        pieces = _PLACEHOLDER.split(word)
        out = []
        for i, piece in enumerate(pieces):
            if i % 2:
                out.append("{" + piece + "}")
            elif piece:
                out.append(shlex.quote(piece))
        words.append("".join(out) or "''")
    return " ".join(words)


def resolve_suite(inv: Inventory, command: str | None = None) -> Suite:
    config = inv.suite
    if config is None and command is None:
        raise ConfigError("no suite defined: add a suite: section with a command, or pass the test "
                          "command after `--`", file=str(inv.path), field="suite")
    if config is None:
        config = SuiteConfig(command=command)
    if command is not None:
        config = replace(config, command=command)
        source = "the command line"
    else:
        source = f"{inv.path}:{config.line}: suite.command"
    assert config.command is not None
    has_files = "{files}" in config.command
    if has_files and not (config.tests or config.discover):
        raise UsageError(f"{source}: the command uses {{files}} but the suite has neither `tests` nor "
                         f"`discover` to list them")
    mode: Literal["native", "files"] = "files" if has_files else "native"
    return Suite(config=config, command=config.command, mode=mode, source=source)


def files_from_listing(text: str) -> list[str]:
    """Test files from a runner's own listing: one per line, test ids cut down to their file."""
    files: list[str] = []
    seen: set[str] = set()
    for raw in text.splitlines():
        line = _PROJECT_PREFIX.sub("", raw.strip())
        if not line or line.startswith("#") or _SUMMARY.match(line):
            continue
        match = _FILE_OF_ID.match(line)
        name = match.group("file") if match else line
        if " " in name and not Path(name).suffix:
            continue                  # a summary line such as "Total: 12 tests in 3 files"
        if name not in seen:
            seen.add(name)
            files.append(name)
    return files


def discover_files(suite: Suite, base_dir: Path) -> list[str]:
    """The suite's test files, relative to ``base_dir``, in a stable order."""
    cfg = suite.config
    if cfg.discover:
        try:
            proc = subprocess.run(cfg.discover, shell=True, cwd=base_dir, capture_output=True, text=True,
                                  timeout=600, check=False)
        except subprocess.TimeoutExpired as exc:
            raise UsageError(f"suite.discover: `{cfg.discover}` did not finish in 600 s") from exc
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
            raise UsageError(f"suite.discover: `{cfg.discover}` exited with {proc.returncode}: {tail[0]}")
        files = files_from_listing(proc.stdout)
        if not files:
            raise UsageError(f"suite.discover: `{cfg.discover}` listed no tests")
        return files
    files = []
    for pattern in cfg.tests:
        matches = sorted(glob.glob(pattern, root_dir=base_dir, recursive=True))
        files.extend(m for m in matches if (base_dir / m).is_file())
    files = list(dict.fromkeys(files))
    if not files:
        raise UsageError(f"suite.tests: {', '.join(cfg.tests)} matched no files under {base_dir}")
    return files


def file_sizes(files: Sequence[str], base_dir: Path) -> dict[str, int]:
    sizes = {}
    for f in files:
        try:
            sizes[f] = (base_dir / f).stat().st_size
        except OSError:
            continue
    return sizes


def junit_path(suite: Suite, *, run_id: str, shard: Shard, attempt: int) -> str:
    """Remote path (relative to the workdir) where this attempt writes its JUnit XML."""
    template = suite.config.junit or ".fleetshard/{run_id}/junit-{shard}-{attempt}.xml"
    values = {"shard": str(shard.index), "total": str(shard.total), "run_id": run_id,
              "attempt": str(attempt), "machine": "", "files": "", "junit": ""}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def render(command: str, values: Mapping[str, str | Sequence[str]]) -> str:
    """Fill the placeholders of ``command``; every value is quoted, a list word by word."""
    def sub(match: re.Match[str]) -> str:
        value = values.get(match.group(1))
        if value is None:
            return match.group(0)
        if isinstance(value, str):
            return value if value.isdigit() else shlex.quote(value)
        return " ".join(shlex.quote(v) for v in value)

    return _PLACEHOLDER.sub(sub, command)


def shard_command(suite: Suite, *, shard: Shard, machine: str, run_id: str, attempt: int,
                  junit: str) -> str:
    return render(suite.command, {"shard": str(shard.index), "total": str(shard.total), "files": shard.files,
                                  "junit": junit, "machine": machine, "run_id": run_id,
                                  "attempt": str(attempt)})
