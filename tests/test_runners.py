"""Runner adapters on recorded runner output (tests/fixtures/runners): listings, commands, reruns."""

from __future__ import annotations

import shlex
from pathlib import Path

from fleetshard.runners import FailedCase, adapter_for, strip_placeholder_words
from fleetshard.runners.pytest import junit_key

FIX = Path(__file__).parent / "fixtures" / "runners"


def read(name: str) -> str:
    return (FIX / name).read_text()


# --- pytest ------------------------------------------------------------------------------------------

def test_pytest_listing_has_ids_files_and_module_level_skips() -> None:
    listing = adapter_for("pytest").parse_listing(read("pytest-collect-networkx.txt"))
    assert len(listing.tests) == 196
    first = listing.tests[0]
    assert first.id.startswith("networkx/algorithms/tree/tests/") and "::" in first.id
    assert first.file == first.id.split("::")[0]
    skipped = {p.file: p for p in listing.skipped}
    assert set(skipped) == {
        "networkx/algorithms/tree/tests/test_branchings.py", "networkx/drawing/tests/test_agraph.py",
        "networkx/drawing/tests/test_image_comparison_pylab_mpl.py", "networkx/drawing/tests/test_layout.py",
        "networkx/drawing/tests/test_pydot.py", "networkx/drawing/tests/test_pylab.py"}
    assert "matplotlib" in skipped["networkx/drawing/tests/test_pylab.py"].message
    assert listing.errors == ()
    # skipped files are units too: running them lets pytest report the skip in its own JUnit
    assert set(skipped) <= set(listing.files)


def test_pytest_listing_keeps_collection_errors_with_the_message() -> None:
    adapter = adapter_for("pytest")
    listing = adapter.parse_listing(read("pytest-collect-import-error.txt"), exit_code=2)
    assert [(e.file, e.message) for e in listing.errors] == [(
        "networkx/algorithms/tree/tests/test_broken_import.py",
        "ImportError: cannot import name 'no_such_module' from 'networkx.algorithms' "
        "(/tmp/rec/nx/networkx/algorithms/__init__.py)")]
    assert "networkx/algorithms/tree/tests/test_broken_import.py" in listing.files
    assert not adapter.listing_failed(2, listing)
    assert adapter.listing_failed(4, adapter.parse_listing("ERROR: usage"))


def test_pytest_selected_listing() -> None:
    listing = adapter_for("pytest").parse_listing(read("pytest-collect-selected.txt"), exit_code=2)
    assert len(listing.tests) == 44
    assert all("center" in t.id.lower() or "prufer" in t.id.lower() for t in listing.tests)


def test_pytest_junit_key_matches_pytest_junit() -> None:
    assert junit_key("a/b/test_c.py::TestX::test_y[1::2]") == ("a.b.test_c.TestX", "test_y[1::2]")
    assert junit_key("a/test_c.py::test_z") == ("a.test_c", "test_z")


def test_pytest_commands() -> None:
    adapter = adapter_for("pytest")
    command = adapter.default_command("-m smoke")
    assert command is not None and "{tests}" in command and "{junit}" in command and "-m smoke" in command
    listing_cmd = adapter.listing_command("venv/bin/python -m pytest -q -m 'not slow' {tests} --junitxml={junit}")
    assert shlex.split(listing_cmd) == ["venv/bin/python", "-m", "pytest", "-m", "not slow", "--collect-only",
                                        "-q", "-rsE"]
    short = adapter.test_args(["t/test_a.py::test_x", "t/test_a.py::test_x", "t/test_b.py"], ".fs/list.txt")
    assert short.words == ("t/test_a.py::test_x", "t/test_b.py") and not short.files
    many = [f"tests/test_{i}.py::test_with_a_long_name_{i}" for i in range(2000)]
    long = adapter.test_args(many, ".fs/list.txt")
    assert long.words == ("@.fs/list.txt",)
    assert long.files[".fs/list.txt"].splitlines() == many
    assert adapter.no_tests(5, "") and not adapter.no_tests(1, "")
    assert 5 in adapter.extra_ok_exit_codes


def test_pytest_rerun_ids_from_junit_cases() -> None:
    adapter = adapter_for("pytest")
    listing = adapter.parse_listing(read("pytest-collect-networkx.txt"))
    node = next(t for t in listing.tests if "::Test" in t.id and "[" in t.id)
    classname, name = junit_key(node.id)
    assert adapter.rerun_ids([FailedCase(classname, name, None)], listing) == [node.id]
    # without a listing: from xunit1's file attribute
    ids = adapter.rerun_ids([FailedCase("pkg.tests.test_m.TestA", "test_b[x]", "pkg/tests/test_m.py"),
                             FailedCase("", "pkg.tests.test_broken", "pkg/tests/test_broken.py")], None)
    assert ids == ["pkg/tests/test_m.py::TestA::test_b[x]", "pkg/tests/test_broken.py"]
    assert adapter.rerun_ids([FailedCase("x.y", "z", None)], None) is None


def test_strip_placeholder_words() -> None:
    assert strip_placeholder_words("pytest -k 'a or b' {files} --junitxml={junit}") == "pytest -k 'a or b'"


# --- Playwright ----------------------------------------------------------------------------------------

def test_playwright_listing_of_the_todomvc_spec() -> None:
    adapter = adapter_for("playwright")
    listing = adapter.parse_listing(read("playwright-list-todomvc.json"), base_dir="/tmp/rec/pw")
    assert len(listing.tests) == 24
    assert {t.file for t in listing.tests} == {"tests/demo-todo-app.spec.ts"}
    first = listing.tests[0]
    assert first.id.startswith("[chromium] › demo-todo-app.spec.ts:") and first.id.endswith(
        "› New Todo › should allow me to add todo items")
    assert first.junit_key == ("demo-todo-app.spec.ts", "New Todo › should allow me to add todo items")


def test_playwright_listing_with_a_file_that_fails_to_load() -> None:
    adapter = adapter_for("playwright")
    listing = adapter.parse_listing(read("playwright-list-load-error.json"), exit_code=1, base_dir="/tmp/rec/pw")
    assert listing.tests == ()
    assert [(e.file, e.message, e.line) for e in listing.errors] == [
        ("tests/broken.spec.ts", "Error: Cannot find module './no-such-helper'", 2)]
    assert not adapter.listing_failed(1, listing)


def test_playwright_commands_and_reruns() -> None:
    adapter = adapter_for("playwright")
    command = adapter.default_command("--project=chromium")
    assert command is not None and "--pass-with-no-tests" in command and "junit" in command
    assert adapter.listing_command(command).endswith("npx playwright test --project=chromium --list --reporter=json")
    listing = adapter.parse_listing(read("playwright-list-extra.json"), base_dir="/tmp/rec/pw")
    args = adapter.test_args([t.id for t in listing.tests[:2]], ".fs/tests.txt")
    assert args.words == ("--test-list", ".fs/tests.txt", "extra\\.spec\\.ts")     # its file, as a filter
    assert args.files[".fs/tests.txt"].splitlines() == [
        "[chromium] › extra.spec.ts:4:7 › extra › fails on purpose", "[chromium] › extra.spec.ts:7:7 › extra › passes"]
    ids = adapter.rerun_ids([FailedCase("extra.spec.ts", "extra › fails on purpose", None)], listing)
    assert ids == ["[chromium] › extra.spec.ts:4:7 › extra › fails on purpose"]
    assert adapter.file_of("extra.spec.ts", "extra › passes", listing) == "tests/extra.spec.ts"
    assert adapter.no_tests(1, "Error: No tests found") and not adapter.no_tests(1, "1 failed")


def test_playwright_failure_first_line_is_the_error() -> None:
    from fleetshard.results import parse_junit

    cases = parse_junit(FIX / "playwright-junit-outcomes.xml")
    failed = next(c for c in cases if c.outcome == "failed")
    import xml.etree.ElementTree as ET

    body = "".join(ET.parse(FIX / "playwright-junit-outcomes.xml").getroot().itertext())
    assert adapter_for("playwright").first_line(failed.message, body) == "Error: arithmetic"


# --- jest ------------------------------------------------------------------------------------------------

def test_jest_listing_and_reruns() -> None:
    adapter = adapter_for("jest")
    listing = adapter.parse_listing(read("jest-list-tests.txt"), base_dir="/tmp/jestrec")
    assert [t.file for t in listing.tests] == ["src/math.test.js", "src/broken.test.js", "src/top.test.js"]
    ids = adapter.rerun_ids([FailedCase("math fails on purpose", "math fails on purpose", "src/math.test.js"),
                             FailedCase("Test suite failed to run", "src/broken.test.js", "src/broken.test.js"),
                             FailedCase(" top level", " top level", "src/top.test.js")], listing)
    assert ids == ["src/math.test.js::math fails on purpose", "src/broken.test.js", "src/top.test.js::top level"]
    args = adapter.test_args(ids or [], "x")
    assert args.words == ("src/math.test.js", "src/broken.test.js", "src/top.test.js", "--testNamePattern",
                          "^(?:math\\ fails\\ on\\ purpose|top\\ level)$")
    command = adapter.default_command("")
    assert command is not None and "--passWithNoTests" in command
    assert adapter.listing_command(command) == "npx jest --listTests"


def test_command_runner_is_opaque() -> None:
    adapter = adapter_for(None)
    assert adapter.name == "command" and not adapter.lists_tests and not adapter.reruns_tests
    assert adapter.default_command("") is None
    assert adapter.rerun_ids([FailedCase("a", "b", "f")], None) is None
