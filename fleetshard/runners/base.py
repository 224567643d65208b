"""What every runner adapter knows, and the plain values it hands out. Pure: no I/O, no processes.

An adapter turns its runner's own listing into test ids (with their files, the files skipped at
collection, and collection errors), builds the command words for a set of test ids (a list file on the
machine when the list is long), tells what an exit code means, and maps JUnit testcases back to ids so
that only the failed ones are rerun.
"""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

#: {tests} longer than this (characters) goes through a list file on the machine
LIST_FILE_THRESHOLD = 16_000

_WORD_PLACEHOLDER = re.compile(r"\{(tests|files|junit|shard|total)\}")


@dataclass(frozen=True)
class TestId:
    """One test as its runner names it. ``id`` is what the runner accepts back to run exactly it."""

    __test__ = False                  # not a test class, for pytest's collector

    id: str
    file: str
    name: str = ""                    # the readable name: pytest's node id, Playwright's title path
    line: int | None = None
    junit_key: tuple[str, str] | None = None   # (classname, name) as the runner's JUnit writes it


@dataclass(frozen=True)
class CollectionProblem:
    """A file skipped as a whole at collection, or one that failed to load (its message first line)."""

    file: str
    message: str
    line: int | None = None


@dataclass(frozen=True)
class Listing:
    """A runner's own listing, parsed."""

    tests: tuple[TestId, ...] = ()
    skipped: tuple[CollectionProblem, ...] = ()      # whole files skipped at collection (module-level skip)
    errors: tuple[CollectionProblem, ...] = ()       # files that failed to load: never dropped
    independent: bool = False         # the runner says a file's tests may run apart (Playwright fullyParallel)

    @property
    def files(self) -> list[str]:
        """Every file the listing names, in order: with tests, skipped at collection, or broken."""
        seen: dict[str, None] = {}
        for t in self.tests:
            seen.setdefault(t.file, None)
        for p in (*self.skipped, *self.errors):
            seen.setdefault(p.file, None)
        return list(seen)

    @functools.cached_property
    def by_junit_key(self) -> dict[tuple[str, str], list[TestId]]:
        """Tests by the (classname, name) the runner's JUnit gives them."""
        out: dict[tuple[str, str], list[TestId]] = {}
        for t in self.tests:
            if t.junit_key is not None:
                out.setdefault(t.junit_key, []).append(t)
        return out

    def by_file(self) -> dict[str, list[TestId]]:
        out: dict[str, list[TestId]] = {f: [] for f in self.files}
        for t in self.tests:
            out[t.file].append(t)
        return out


@dataclass(frozen=True)
class TestArgs:
    """The words that stand for ``{tests}``, and files to write on the machine first (path -> text)."""

    __test__ = False

    words: tuple[str, ...]
    files: Mapping[str, str] = field(default_factory=dict)

    def shell(self) -> str:
        return " ".join(shlex.quote(w) for w in self.words)


@dataclass(frozen=True)
class FailedCase:
    """A failing JUnit testcase, reduced to what naming and rerunning need."""

    classname: str
    name: str
    file: str | None
    message: str = ""


class Adapter:
    """The ``command`` runner: an opaque command and its exit code (today's behaviour).

    Subclasses know their runner. Everything here is pure and works from text already captured.
    """

    name = "command"
    #: exit codes that mean "ran fine, nothing failed", beyond 0 (pytest: 5, nothing collected)
    extra_ok_exit_codes: frozenset[int] = frozenset()
    #: the runner can list tests by id (so selections and reruns are exact)
    lists_tests = False
    #: the runner can rerun single tests by id (--retry-failed-tests reruns only those)
    reruns_tests = False

    def default_command(self, args: str) -> str | None:
        """The command template used when the suite gives none (None: a command is required)."""
        return None

    def listing_command(self, command: str) -> str | None:
        """The runner's own listing derived from the suite's run command template."""
        return None

    def parse_listing(self, stdout: str, stderr: str = "", exit_code: int = 0, base_dir: str = ".") -> Listing:
        raise NotImplementedError(f"the {self.name} runner has no listing of its own")

    def test_dirs(self, stdout: str) -> list[str]:
        """Where the runner looks for test files (from its listing output), to list around broken ones."""
        return []

    def is_test_file(self, name: str) -> bool:
        return False

    def listing_failed(self, exit_code: int, listing: Listing) -> bool:
        """True when the listing's exit code means the runner could not list at all."""
        return exit_code != 0

    def test_args(self, ids: Sequence[str], list_file: str) -> TestArgs:
        """Words for ``{tests}``: the ids themselves, or a list file on the machine when they are many."""
        return TestArgs(tuple(dict.fromkeys(ids)))

    def no_tests(self, exit_code: int | None, output: str) -> bool:
        """True when the runner says it ran nothing (and that is not a failure in itself)."""
        return False

    def rerun_ids(self, failed: Sequence[FailedCase], listing: Listing | None) -> list[str] | None:
        """The ids that rerun exactly ``failed``; None when they cannot be told (rerun the shard)."""
        return None

    def test_id_of(self, case: FailedCase, listing: Listing | None) -> str | None:
        """The runner's id of a JUnit testcase, when it can be told."""
        ids = self.rerun_ids([case], listing)
        return ids[0] if ids and len(ids) == 1 else None

    def file_of(self, classname: str, name: str, listing: Listing | None) -> str | None:
        """The test file of a JUnit testcase, when the runner's naming tells it."""
        return None

    def junit_line(self, line: int) -> int:
        """A JUnit ``line`` attribute as a 1-based line number."""
        return line

    def display_name(self, classname: str, name: str) -> str:
        """A testcase's name as a person finds it in the runner's own output."""
        if classname and name:
            return f"{classname}::{name}"
        return name or classname

    def first_line(self, message: str, text: str) -> str:
        """The first meaningful line of a failure (the JUnit message, else its body)."""
        for candidate in (message, text):
            for line in candidate.splitlines():
                if line.strip():
                    return line.strip()
        return ""


def strip_placeholder_words(command: str,
                            names: Sequence[str] = ("tests", "files", "junit", "shard", "total")) -> str:
    """``command`` without the shell words that hold one of the given placeholders.

    ``venv/bin/python -m pytest -m smoke {tests} --junitxml={junit}`` becomes
    ``venv/bin/python -m pytest -m smoke``: the same runner and selection, for listing it.
    """
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    kept = [w for w in words
            if not any(f"{{{n}}}" in w for n in names)]
    return " ".join(_requote(w) for w in kept)


def _requote(word: str) -> str:
    """Quote a word again, its placeholders left live (``VAR={junit}`` stays an assignment)."""
    pieces = _WORD_PLACEHOLDER.split(word)
    out = []
    for i, piece in enumerate(pieces):
        if i % 2:
            out.append("{" + piece + "}")
        elif piece:
            out.append(shlex.quote(piece))
    return "".join(out) or "''"


def dotted_module(path: str) -> str:
    """``a/b/test_c.py`` -> ``a.b.test_c`` (how pytest's JUnit names a module)."""
    stem = re.sub(r"\.py$", "", path.replace("\\", "/").removeprefix("./"))
    return stem.replace("/", ".")
