"""Playwright Test: ``--list --reporter=json`` listings, ``--test-list`` files, JUnit via its reporter."""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ..logtext import strip_ansi
from .base import Adapter, CollectionProblem, FailedCase, Listing, TestArgs, TestId, strip_placeholder_words

_OWN_FLAGS = re.compile(r"^(--list|--reporter(=.*)?|--pass-with-no-tests|--test-list(=.*)?)$")
SEP = " › "
_REGEX_META = re.compile(r"[.*+?^${}()|\[\]\\]")      # file filters are regular expressions to it
_TEST_FILE = re.compile(r"\.(spec|test)\.[cm]?[jt]sx?$")


def _rel(path: str, base_dir: str) -> str:
    if not posixpath.isabs(path) or not posixpath.isabs(base_dir):
        return path
    rel = posixpath.relpath(path, base_dir)
    return path if rel.startswith("../") else rel


def _walk(suite: Mapping[str, Any], titles: list[str]) -> Iterator[tuple[list[str], Mapping[str, Any]]]:
    for spec in suite.get("specs") or ():
        yield [*titles, str(spec.get("title", ""))], spec
    for child in suite.get("suites") or ():
        yield from _walk(child, [*titles, str(child.get("title", ""))])


class PlaywrightAdapter(Adapter):
    name = "playwright"
    lists_tests = True
    reruns_tests = True

    def default_command(self, args: str) -> str:
        extra = f" {args}" if args else ""
        return (f"PLAYWRIGHT_JUNIT_OUTPUT_FILE={{junit}} npx playwright test{extra} --reporter=line,junit "
                f"--pass-with-no-tests {{tests}}")

    def listing_command(self, command: str) -> str:
        base = strip_placeholder_words(command)
        words = [w for w in shlex.split(base)
                 if not _OWN_FLAGS.match(w) and not w.startswith("PLAYWRIGHT_JUNIT_OUTPUT_FILE=")]
        return " ".join(shlex.quote(w) for w in words) + " --list --reporter=json"

    def parse_listing(self, stdout: str, stderr: str = "", exit_code: int = 0, base_dir: str = ".") -> Listing:
        start = stdout.find("{")
        try:
            data: dict[str, Any] = json.loads(stdout[start:]) if start >= 0 else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"the Playwright listing is not JSON ({exc})") from exc
        root_dir = str((data.get("config") or {}).get("rootDir") or "")
        projects = (data.get("config") or {}).get("projects") or []
        many_projects = len(projects) > 1
        tests: list[TestId] = []
        for file_suite in data.get("suites") or ():
            for titles, spec in _walk(file_suite, []):
                spec_file = str(spec.get("file") or file_suite.get("file") or "")
                file = _rel(posixpath.join(root_dir, spec_file), base_dir) if root_dir else spec_file
                line, column = int(spec.get("line") or 0), int(spec.get("column") or 0)
                path = SEP.join(titles)
                for test in spec.get("tests") or ():
                    project = str(test.get("projectName") or "")
                    location = f"{spec_file}:{line}:{column}"
                    test_id = f"[{project}]{SEP}{location}{SEP}{path}" if project else f"{location}{SEP}{path}"
                    shown = (f"[{project}] " if many_projects and project else "") + f"{file}:{line}{SEP}{path}"
                    tests.append(TestId(id=test_id, file=file, name=shown, line=line,
                                        junit_key=(spec_file, path)))
        errors: dict[str, CollectionProblem] = {}
        raw_errors: list[Mapping[str, Any]] = list(data.get("errors") or [])
        for err in raw_errors:
            where: Mapping[str, Any] = err.get("location") or {}
            file = _rel(str(where.get("file") or ""), base_dir) or "(playwright)"
            message = strip_ansi(str(err.get("message") or "")).strip().splitlines()
            errors.setdefault(file, CollectionProblem(file, message[0] if message else "load error",
                                                      where.get("line")))
        parallel = bool((data.get("config") or {}).get("fullyParallel"))
        return Listing(tests=tuple(tests), errors=tuple(errors.values()), independent=parallel)

    def test_dirs(self, stdout: str) -> list[str]:
        start = stdout.find("{")
        try:
            data: dict[str, Any] = json.loads(stdout[start:]) if start >= 0 else {}
        except json.JSONDecodeError:
            return []
        projects: list[Mapping[str, Any]] = list((data.get("config") or {}).get("projects") or [])
        return list(dict.fromkeys(str(p["testDir"]) for p in projects if p.get("testDir")))

    def is_test_file(self, name: str) -> bool:
        return _TEST_FILE.search(name) is not None      # Playwright's default testMatch

    def listing_failed(self, exit_code: int, listing: Listing) -> bool:
        return exit_code != 0 and not listing.errors

    def test_args(self, ids: Sequence[str], list_file: str) -> TestArgs:
        # --test-list selects exactly these tests (a file:line on the command line may select several)
        unique = tuple(dict.fromkeys(ids))
        # the files too, as filters: Playwright loads every test file before it applies --test-list, and
        # a file that fails to load elsewhere in the suite would stop the run
        files: dict[str, None] = {}
        for test_id in unique:
            rest = test_id.split(SEP, 1)[1] if test_id.startswith("[") and SEP in test_id else test_id
            file = rest.split(SEP, 1)[0].rsplit(":", 2)[0] if ":" in rest.split(SEP, 1)[0] else ""
            if file:
                files.setdefault(_REGEX_META.sub(r"\\\g<0>", file), None)
        return TestArgs(("--test-list", list_file, *files), {list_file: "".join(i + "\n" for i in unique)})

    def no_tests(self, exit_code: int | None, output: str) -> bool:
        return exit_code == 1 and "No tests found" in output

    def rerun_ids(self, failed: Sequence[FailedCase], listing: Listing | None) -> list[str] | None:
        if listing is None:
            return None
        ids: list[str] = []
        for case in failed:
            found = listing.by_junit_key.get((case.classname, case.name))
            if not found:
                return None
            ids.extend(t.id for t in found)
        return list(dict.fromkeys(ids))

    def test_id_of(self, case: FailedCase, listing: Listing | None) -> str | None:
        if listing is None:
            return None
        found = listing.by_junit_key.get((case.classname, case.name))
        return found[0].name if found else None

    def file_of(self, classname: str, name: str, listing: Listing | None) -> str | None:
        if listing is not None:
            found = listing.by_junit_key.get((classname, name))
            if found:
                return found[0].file
            for f in listing.files:
                if f == classname or f.endswith("/" + classname):
                    return f
        return classname or None

    def display_name(self, classname: str, name: str) -> str:
        return f"{classname}{SEP}{name}" if classname else name

    def first_line(self, message: str, text: str) -> str:
        # the JUnit message is only "file:line:col title"; the error is in the body
        for line in strip_ansi(text).splitlines():
            stripped = line.strip()
            if stripped.startswith(("Error:", "TimeoutError:", "Test timeout")):
                return stripped
        return super().first_line(message, text)
