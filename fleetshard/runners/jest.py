"""jest: ``--listTests`` (files), jest-junit for JUnit, reruns by path plus ``--testNamePattern``."""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Sequence

from .base import Adapter, FailedCase, Listing, TestArgs, TestId, strip_placeholder_words

_OWN_FLAGS = re.compile(r"^(--listTests|--ci|--passWithNoTests|--reporters(=.*)?|--testNamePattern(=.*)?)$")
_ENV = re.compile(r"^JEST_JUNIT_\w+=")
SEP = "::"


class JestAdapter(Adapter):
    name = "jest"
    lists_tests = False               # jest lists files only; a file's tests run together
    reruns_tests = True

    def default_command(self, args: str) -> str:
        extra = f" {args}" if args else ""
        return ("JEST_JUNIT_OUTPUT_FILE={junit} JEST_JUNIT_ADD_FILE_ATTRIBUTE=true "
                "JEST_JUNIT_REPORT_TEST_SUITE_ERRORS=true "
                f"npx jest --ci --passWithNoTests --reporters=default --reporters=jest-junit{extra} {{tests}}")

    def listing_command(self, command: str) -> str:
        base = strip_placeholder_words(command)
        words = [w for w in shlex.split(base) if not _OWN_FLAGS.match(w) and not _ENV.match(w)]
        return " ".join(shlex.quote(w) for w in words) + " --listTests"

    def parse_listing(self, stdout: str, stderr: str = "", exit_code: int = 0, base_dir: str = ".") -> Listing:
        tests: list[TestId] = []
        for raw in stdout.splitlines():
            line = raw.strip()
            if not line or not (line.startswith("/") or "." in posixpath.basename(line)):
                continue
            rel = posixpath.relpath(line, base_dir) if posixpath.isabs(line) and posixpath.isabs(base_dir) else line
            if rel.startswith("../"):
                rel = line
            tests.append(TestId(id=rel, file=rel, name=rel))
        return Listing(tests=tuple(tests))

    def listing_failed(self, exit_code: int, listing: Listing) -> bool:
        return exit_code != 0

    def test_args(self, ids: Sequence[str], list_file: str) -> TestArgs:
        files: dict[str, None] = {}
        names: dict[str, None] = {}
        for test_id in ids:
            file, _, name = test_id.partition(SEP)
            files.setdefault(file, None)
            if name:
                names.setdefault(name, None)
        words = [*files]
        if names:
            words += ["--testNamePattern", "^(?:" + "|".join(re.escape(n) for n in names) + ")$"]
        return TestArgs(tuple(words))

    def no_tests(self, exit_code: int | None, output: str) -> bool:
        return exit_code == 1 and "No tests found" in output

    def rerun_ids(self, failed: Sequence[FailedCase], listing: Listing | None) -> list[str] | None:
        ids: list[str] = []
        for case in failed:
            if not case.file:
                return None
            if case.classname == "Test suite failed to run":
                ids.append(case.file)     # the file did not load: rerun it whole
            else:
                ids.append(f"{case.file}{SEP}{case.name.strip()}")
        # a file rerun whole already covers its named tests
        whole = {i for i in ids if SEP not in i}
        return list(dict.fromkeys(i for i in ids if i.partition(SEP)[0] not in whole or SEP not in i))

    def file_of(self, classname: str, name: str, listing: Listing | None) -> str | None:
        return None

    def display_name(self, classname: str, name: str) -> str:
        return name.strip() or classname.strip()
