"""The suite: what to run, how to find its test files, and how a shard's command is built.

A command template is a shell line. Its placeholders are filled with quoted values, never pasted:
``{files}`` becomes the shard's files, each passed through :func:`shlex.quote`; ``{tests}`` its test ids
(a runner's own ids, or a list file on the machine when they are many; the files without a runner).

Placeholders: {shard} {total} {files} {tests} {junit} {machine} {run_id} {attempt}

With ``suite.runner`` set, the runner's adapter (fleetshard/runners) gives the default command, lists the
tests with the runner's own collection (``args`` and any selection in the command apply to it), and
builds the command that reruns given test ids.
"""

from __future__ import annotations

import glob
import re
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from .errors import ConfigError, UsageError
from .inventory import Inventory, SuiteConfig
from .model import Shard
from .runners import Adapter, Listing, TestArgs, adapter_for, strip_placeholder_words

PLACEHOLDERS = ("shard", "total", "files", "tests", "junit", "machine", "run_id", "attempt")
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
    adapter: Adapter = field(default_factory=Adapter)

    @property
    def uses_junit(self) -> bool:
        return "{junit}" in self.command or self.config.junit is not None

    @property
    def runner(self) -> str:
        return self.adapter.name

    @property
    def ok_exit_codes(self) -> frozenset[int]:
        """Exit codes that pass when the JUnit shows no failing test (``suite.ok_exit_codes`` + the runner's)."""
        return frozenset(self.config.ok_exit_codes) | self.adapter.extra_ok_exit_codes

    @property
    def rerun_command(self) -> str:
        """The template that reruns given test ids: the run command, in native mode without its shard words."""
        if self.mode == "files" and "{tests}" in self.command:
            return self.command
        base = strip_placeholder_words(self.command, ("shard", "total", "files", "tests"))
        return f"{base} {{tests}}"

    @property
    def listing_command(self) -> str | None:
        """The local command that lists the tests: ``suite.discover``, else the runner's own listing."""
        if self.config.discover:
            return self.config.discover
        if self.config.tests:
            return None
        return self.adapter.listing_command(self.command)


@dataclass(frozen=True)
class Discovery:
    """What discovery found: the files to plan, and the runner's parsed listing (None for globs)."""

    files: list[str]
    listing: Listing | None = None

    def counts(self) -> dict[str, int]:
        """Tests per file from the listing (for first-run estimates)."""
        if self.listing is None:
            return {}
        return {f: max(1, len(ids)) for f, ids in self.listing.by_file().items()}


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
    adapter = adapter_for(config.runner)
    if command is not None:
        config = replace(config, command=command)
        source = "the command line"
    elif config.command is None:
        config = replace(config, command=adapter.default_command(config.args))
        source = f"{inv.path}:{config.line}: suite.runner ({adapter.name}'s default command)"
    else:
        source = f"{inv.path}:{config.line}: suite.command"
    assert config.command is not None
    has_files = "{files}" in config.command or "{tests}" in config.command
    if has_files and not (config.tests or config.discover or adapter.lists_tests or adapter.name == "jest"):
        word = "{tests}" if "{tests}" in config.command else "{files}"
        raise UsageError(f"{source}: the command uses {word} but the suite has neither `tests` nor "
                         f"`discover` (nor a `runner`) to list them")
    if command is not None and not has_files and (config.tests or config.discover):
        # The inventory check refuses the same in suite.command: every shard would run no test and pass.
        which = "tests" if config.tests else "discover"
        raise UsageError(f"the command after `--` must contain {{files}} (or {{tests}}): the suite lists its "
                         f"tests with `{which}` ({inv.path}), so each shard gets a share of them")
    mode: Literal["native", "files"] = "files" if has_files else "native"
    return Suite(config=config, command=config.command, mode=mode, source=source, adapter=adapter)


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
    return discover(suite, base_dir).files


def discover(suite: Suite, base_dir: Path) -> Discovery:
    """The suite's test files (and, with a runner, its test ids), relative to ``base_dir``."""
    cfg = suite.config
    listing_command = suite.listing_command
    if listing_command:
        field_name = "suite.discover" if cfg.discover else f"suite.runner ({suite.runner} listing)"
        try:
            proc = subprocess.run(listing_command, shell=True, cwd=base_dir, capture_output=True, text=True,
                                  timeout=600, check=False, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise UsageError(f"{field_name}: `{listing_command}` did not finish in 600 s") from exc
        if suite.adapter.name == "command":
            if proc.returncode != 0:
                raise UsageError(f"{field_name}: `{listing_command}` exited with {proc.returncode}: "
                                 f"{_tail(proc)}")
            files = files_from_listing(proc.stdout)
            if not files:
                raise UsageError(f"{field_name}: `{listing_command}` listed no tests")
            return Discovery(files)
        try:
            listing = suite.adapter.parse_listing(proc.stdout, proc.stderr, proc.returncode,
                                                  str(base_dir.resolve()))
        except ValueError as exc:
            raise UsageError(f"{field_name}: `{listing_command}`: {exc}: {_tail(proc)}") from exc
        if suite.adapter.listing_failed(proc.returncode, listing):
            raise UsageError(f"{field_name}: `{listing_command}` exited with {proc.returncode}: {_tail(proc)}")
        if listing.errors and not listing.tests:
            listing = _relist_without_broken(suite, listing_command, proc.stdout, listing, base_dir)
        if not listing.files:
            raise UsageError(f"{field_name}: `{listing_command}` listed no tests")
        return Discovery(listing.files, listing)
    files = []
    for pattern in cfg.tests:
        matches = sorted(glob.glob(pattern, root_dir=base_dir, recursive=True))
        files.extend(m for m in matches if (base_dir / m).is_file())
    files = list(dict.fromkeys(files))
    if not files:
        raise UsageError(f"suite.tests: {', '.join(cfg.tests)} matched no files under {base_dir}")
    return Discovery(files)


_REGEX_META = re.compile(r"[.*+?^${}()|\[\]\\]")      # file filters are regular expressions to the runner


def _relist_without_broken(suite: Suite, command: str, stdout: str, listing: Listing, base_dir: Path
                           ) -> Listing:
    """A runner that lists nothing when one file fails to load (Playwright) is asked again for the
    other test files by name, so that they are not lost; the broken files stay as errors."""
    dirs = suite.adapter.test_dirs(stdout)
    if not dirs:
        return listing
    broken = {p.file for p in listing.errors}
    root = base_dir.resolve()
    others: list[str] = []
    for d in dirs:
        for path in sorted(Path(d).rglob("*")):
            if "node_modules" in path.parts or not path.is_file() or not suite.adapter.is_test_file(path.name):
                continue
            try:
                rel = path.relative_to(root).as_posix()
            except ValueError:
                rel = str(path)
            if rel not in broken:
                others.append(rel)
    if not others:
        return listing
    again = f"{command} " + " ".join(shlex.quote(_REGEX_META.sub(r"\\\g<0>", f)) for f in others)
    try:
        proc = subprocess.run(again, shell=True, cwd=base_dir, capture_output=True, text=True, timeout=600,
                              check=False, stdin=subprocess.DEVNULL)
        second = suite.adapter.parse_listing(proc.stdout, proc.stderr, proc.returncode, str(root))
    except (subprocess.TimeoutExpired, ValueError):
        return listing
    return Listing(tests=second.tests, skipped=second.skipped, errors=(*listing.errors, *second.errors),
                   independent=second.independent or listing.independent)


def _tail(proc: subprocess.CompletedProcess[str]) -> str:
    lines = (proc.stderr or proc.stdout or "").strip().splitlines()
    return lines[-1] if lines else ""


def assign_tests(shards: Sequence[Shard], listing: Listing | None) -> list[Shard]:
    """Give each shard the test ids of its files (a file with none, skipped or broken, stands for itself)."""
    if listing is None or not listing.tests:
        return list(shards)
    by_file = listing.by_file()
    out = []
    for shard in shards:
        if shard.tests:
            out.append(shard)
            continue
        ids: list[str] = []
        for f in shard.files:
            in_file = by_file.get(f) or []
            if in_file:
                ids.extend(t.id for t in in_file)
            else:
                ids.append(f)
        out.append(replace(shard, tests=tuple(ids)))
    return out


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
              "attempt": str(attempt), "machine": "", "files": "", "tests": "", "junit": ""}
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


def list_file_path(run_id: str, shard: Shard, attempt: int) -> str:
    """Remote path (relative to the workdir) of the list of test ids of a long ``{tests}``."""
    return f".fleetshard/{run_id}/tests-{shard.id}-{attempt}.txt"


@dataclass(frozen=True)
class Invocation:
    """A shard attempt's command line, and the files to write on the machine before it (path -> text)."""

    command: str
    files: Mapping[str, str] = field(default_factory=dict)


def shard_invocation(suite: Suite, *, shard: Shard, machine: str, run_id: str, attempt: int, junit: str,
                     only: Sequence[str] | None = None) -> Invocation:
    """The command of one attempt. ``only``: rerun exactly these test ids (``--retry-failed-tests``)."""
    template = suite.command
    ids: Sequence[str] = shard.tests or shard.files
    if only is not None:
        template, ids = suite.rerun_command, only
    args = TestArgs(tuple(ids))
    if "{tests}" in template and (shard.tests or only is not None):
        args = suite.adapter.test_args(ids, list_file_path(run_id, shard, attempt))
    values: dict[str, str | Sequence[str]] = {
        "shard": str(shard.index), "total": str(shard.total), "files": shard.files, "junit": junit,
        "machine": machine, "run_id": run_id, "attempt": str(attempt), "tests": args.words}
    return Invocation(render(template, values), dict(args.files))


def shard_command(suite: Suite, *, shard: Shard, machine: str, run_id: str, attempt: int,
                  junit: str) -> str:
    return shard_invocation(suite, shard=shard, machine=machine, run_id=run_id, attempt=attempt,
                            junit=junit).command
