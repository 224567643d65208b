"""pytest: ``--collect-only -q -rsE`` listings, node ids, ``@file`` lists, exit code 5, xunit1 JUnit."""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence

from .base import (
    LIST_FILE_THRESHOLD,
    Adapter,
    CollectionProblem,
    FailedCase,
    Listing,
    TestArgs,
    TestId,
    dotted_module,
    strip_placeholder_words,
)

_SECTION = re.compile(r"^={3,} ?(?P<title>.*?) ?={3,}$")
_ERROR_HEADER = re.compile(r"^_{2,} ERROR collecting (?P<file>.+?) _{2,}$")
_SKIPPED = re.compile(r"^SKIPPED \[\d+\] (?P<file>.+?):(?P<line>\d+): (?P<reason>.*)$")
_ERROR_LINE = re.compile(r"^ERROR (?P<file>\S+?)(?: - (?P<message>.*))?$")
_VERBOSITY = re.compile(r"^(-q+|-v+|--quiet|--verbose|-r\w*|--collect-only|--co)$")


def junit_key(node_id: str) -> tuple[str, str]:
    """(classname, name) as pytest's JUnit writes a node id (its ``mangle_test_address``)."""
    path, bracket, params = node_id.partition("[")
    names = path.split("::")
    names[0] = re.sub(r"\.py$", "", names[0].replace("/", "."))
    names[-1] += bracket + params
    return ".".join(names[:-1]), names[-1]


class PytestAdapter(Adapter):
    name = "pytest"
    extra_ok_exit_codes = frozenset({5})      # "no tests collected": a shard of collection-skipped files
    lists_tests = True
    reruns_tests = True

    def default_command(self, args: str) -> str:
        extra = f" {args}" if args else ""
        # xunit1 testcases carry file= and line=; collection errors must not stop the shard's other files
        return (f"python3 -m pytest{extra} --continue-on-collection-errors -o junit_family=xunit1 "
                f"--junitxml={{junit}} {{tests}}")

    def listing_command(self, command: str) -> str:
        base = strip_placeholder_words(command)
        words = [w for w in shlex.split(base) if not _VERBOSITY.match(w) and not w.startswith("--junit")]
        return " ".join(shlex.quote(w) for w in words) + " --collect-only -q -rsE"

    def parse_listing(self, stdout: str, stderr: str = "", exit_code: int = 0, base_dir: str = ".") -> Listing:
        tests: list[TestId] = []
        skipped: dict[str, CollectionProblem] = {}
        errors: dict[str, CollectionProblem] = {}
        section = ""
        error_file: str | None = None
        for raw in stdout.splitlines():
            line = raw.rstrip()
            match = _SECTION.match(line)
            if match:
                section = match.group("title").lower()
                error_file = None
                continue
            if not section:
                if "::" in line and not line.startswith(" "):
                    file = line.split("::", 1)[0]
                    tests.append(TestId(id=line, file=file, name=line, junit_key=junit_key(line)))
                continue
            if section == "errors":
                header = _ERROR_HEADER.match(line)
                if header:
                    error_file = header.group("file")
                    errors.setdefault(error_file, CollectionProblem(error_file, ""))
                elif error_file and line.startswith("E ") and not errors[error_file].message:
                    errors[error_file] = CollectionProblem(error_file, line[1:].strip())
                continue
            if section.startswith("short test summary"):
                skip = _SKIPPED.match(line)
                if skip:
                    f = skip.group("file")
                    skipped.setdefault(f, CollectionProblem(f, skip.group("reason"), int(skip.group("line"))))
                    continue
                err = _ERROR_LINE.match(line)
                if err:
                    f = err.group("file")
                    known = errors.get(f)
                    message = (known.message if known and known.message else err.group("message") or "")
                    errors[f] = CollectionProblem(f, message or "collection failure")
        for f, problem in list(errors.items()):
            if not problem.message:
                errors[f] = CollectionProblem(f, "collection failure")
        with_tests = {t.file for t in tests}
        return Listing(tests=tuple(tests),
                       skipped=tuple(p for f, p in skipped.items() if f not in with_tests and f not in errors),
                       errors=tuple(errors.values()))

    def listing_failed(self, exit_code: int, listing: Listing) -> bool:
        """True when the listing's exit code means the runner could not list at all."""
        if exit_code in (0, 5):
            return False
        return not (exit_code in (1, 2) and (listing.errors or listing.tests))

    def test_args(self, ids: Sequence[str], list_file: str) -> TestArgs:
        unique = tuple(dict.fromkeys(ids))
        if sum(len(i) + 1 for i in unique) <= LIST_FILE_THRESHOLD:
            return TestArgs(unique)
        # pytest >= 8.2 reads arguments from @file, one per line
        return TestArgs((f"@{list_file}",), {list_file: "".join(i + "\n" for i in unique)})

    def no_tests(self, exit_code: int | None, output: str) -> bool:
        return exit_code == 5

    def rerun_ids(self, failed: Sequence[FailedCase], listing: Listing | None) -> list[str] | None:
        ids: list[str] = []
        for case in failed:
            node = self.test_id_of(case, listing)
            if node is None:
                return None
            ids.append(node)
        return list(dict.fromkeys(ids))

    def test_id_of(self, case: FailedCase, listing: Listing | None) -> str | None:
        if listing is not None:
            found = listing.by_junit_key.get((case.classname, case.name))
            if found:
                return found[0].id
        return self._node_from_case(case, listing)

    def _node_from_case(self, case: FailedCase, listing: Listing | None) -> str | None:
        file = case.file or self.file_of(case.classname, case.name, listing)
        if not file and not case.classname and all(p.isidentifier() for p in case.name.split(".")):
            file = case.name.replace(".", "/") + ".py"      # a module's collection error or skip
        if not file:
            return None
        if not case.classname:
            return file                   # a collection error or skip: the module itself
        module = dotted_module(file)
        rest = case.classname[len(module):].lstrip(".") if case.classname.startswith(module) else ""
        parts = [file, *(p for p in rest.split(".") if p), case.name]
        return "::".join(parts)

    def file_of(self, classname: str, name: str, listing: Listing | None) -> str | None:
        if listing is None:
            if not classname and name and all(p.isidentifier() for p in name.split(".")):
                return name.replace(".", "/") + ".py"
            return None
        found = listing.by_junit_key.get((classname, name))
        if found:
            return found[0].file
        dotted = classname or name
        best: str | None = None
        for f in listing.files:
            mod = dotted_module(f)
            if (dotted == mod or dotted.startswith(mod + ".")) and (best is None or len(f) > len(best)):
                best = f
        return best

    def first_line(self, message: str, text: str) -> str:
        if message.strip() in ("", "collection failure"):
            for line in text.splitlines():                # the error itself: "E   ImportError: ..."
                if line.startswith("E "):
                    return line[1:].strip()
        return super().first_line(message, text)

    def junit_line(self, line: int) -> int:
        return line + 1               # xunit1 writes the test function's 0-based line

    def display_name(self, classname: str, name: str) -> str:
        if not classname:
            return name
        return f"{classname}::{name}"
