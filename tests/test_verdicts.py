"""Verdicts from tests (pure): JUnit decides, the exit code only without one; retries by id merge into one
testcase per test; failures are named by test. On recorded runner output (tests/fixtures/runners)."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

from fleetshard.ci import error_annotation, notification, summary_markdown
from fleetshard.model import Outcome, TestFailure
from fleetshard.record import AttemptRecord, RunRecord, ShardRecord
from fleetshard.results import (
    add_collection_errors,
    failed_tests_by_shard,
    judge,
    merge_junit,
    name_failures,
    tests_from_record,
)
from fleetshard.runners import CollectionProblem, adapter_for

FIX = Path(__file__).parent / "fixtures" / "runners"
PYTEST = adapter_for("pytest")
COMMAND = adapter_for("command")


def write(path: Path, body: str) -> str:
    path.write_text(f'<?xml version="1.0"?><testsuites><testsuite name="pytest">{body}</testsuite></testsuites>')
    return str(path)


def test_pytest_outcomes_junit_names_each_failure_with_its_first_line() -> None:
    v = judge(Outcome.TESTS_FAILED, "exit code 1", 1, str(FIX / "pytest-junit-outcomes.xml"),
              ok_exit_codes={0, 5}, adapter=PYTEST)
    assert v.outcome is Outcome.TESTS_FAILED and v.reason == "3 tests failed (exit 1)"
    named = {f.name: f for f in v.failures}
    assert named["networkx/algorithms/tree/tests/test_outcomes_extra.py::test_fails"].message == \
        "AssertionError: arithmetic is broken"
    broken = named["networkx/algorithms/tree/tests/test_broken_import.py"]
    assert broken.message.startswith("ImportError: cannot import name 'no_such_module' from 'networkx.algorithms'")
    assert broken.file == "networkx/algorithms/tree/tests/test_broken_import.py"
    strict = named["networkx/algorithms/tree/tests/test_outcomes_extra.py::test_xpass_strict"]
    assert strict.message == "[XPASS(strict)] must fail" and strict.line == 13
    assert v.rerun == ("networkx/algorithms/tree/tests/test_broken_import.py",
                       "networkx/algorithms/tree/tests/test_outcomes_extra.py::test_fails",
                       "networkx/algorithms/tree/tests/test_outcomes_extra.py::test_xpass_strict")


def test_exit_5_of_a_shard_of_skipped_files_is_a_pass(tmp_path: Path) -> None:
    junit = write(tmp_path / "j.xml", '<testcase classname="" name="pkg.test_m"><skipped message="collection '
                                      'skipped"/></testcase>')
    v = judge(Outcome.TESTS_FAILED, "exit code 5", 5, junit, ok_exit_codes=PYTEST.extra_ok_exit_codes | {0},
              adapter=PYTEST)
    assert v.outcome is Outcome.PASSED and not v.failures


def test_failed_outside_its_tests_and_exit_code_without_junit(tmp_path: Path) -> None:
    junit = write(tmp_path / "j.xml", '<testcase classname="t.a" name="test_ok"/>')
    v = judge(Outcome.TESTS_FAILED, "exit code 3", 3, junit, ok_exit_codes={0}, adapter=COMMAND,
              files=("t/a.py",))
    assert v.outcome is Outcome.TESTS_FAILED and v.reason.startswith("failed outside its tests (exit 3")
    assert v.failures == (TestFailure(name="t/a.py", file="t/a.py"),)
    assert judge(Outcome.TESTS_FAILED, "exit code 3", 3, junit, ok_exit_codes={0, 3}, adapter=COMMAND
                 ).outcome is Outcome.PASSED
    # exit 0 with a failing testcase: the JUnit decides
    bad = write(tmp_path / "b.xml", '<testcase classname="t.a" name="test_x"><failure message="no"/></testcase>')
    assert judge(Outcome.PASSED, "", 0, bad, ok_exit_codes={0}, adapter=COMMAND).outcome is Outcome.TESTS_FAILED
    # no JUnit: the exit code alone, the failures are the shard's files
    v = judge(Outcome.TESTS_FAILED, "exit code 1", 1, None, ok_exit_codes={0}, adapter=COMMAND,
              files=("a.py", "b.py"))
    assert v.outcome is Outcome.TESTS_FAILED and [f.name for f in v.failures] == ["a.py", "b.py"]
    assert v.rerun is None
    # infrastructure outcomes pass through
    assert judge(Outcome.INFRA_FAILED, "lost", None, None, ok_exit_codes={0}, adapter=PYTEST).reason == "lost"


def test_playwright_failures_get_file_and_line_from_the_listing(tmp_path: Path) -> None:
    adapter = adapter_for("playwright")
    listing = adapter.parse_listing((FIX / "playwright-list-extra.json").read_text(), base_dir="/tmp/rec/pw")
    v = judge(Outcome.TESTS_FAILED, "exit code 1", 1, str(FIX / "playwright-junit-outcomes.xml"),
              ok_exit_codes={0}, adapter=adapter, listing=listing)
    assert [(f.name, f.message, f.file, f.line) for f in v.failures] == [
        ("tests/extra.spec.ts:4 › extra › fails on purpose", "Error: arithmetic", "tests/extra.spec.ts", 4)]
    assert v.rerun == ("[chromium] › extra.spec.ts:4:7 › extra › fails on purpose",)


def test_a_spec_that_fails_to_load_becomes_a_failing_testcase(tmp_path: Path) -> None:
    adapter = adapter_for("playwright")
    listing = adapter.parse_listing((FIX / "playwright-list-load-error.json").read_text(), exit_code=1,
                                    base_dir="/tmp/rec/pw")
    out = add_collection_errors(None, listing.errors, tmp_path / "with-errors.xml")
    assert out is not None
    v = judge(Outcome.TESTS_FAILED, "exit code 1", 1, out, ok_exit_codes={0}, adapter=adapter, listing=listing)
    assert v.outcome is Outcome.TESTS_FAILED
    assert [(f.file, f.message) for f in v.failures] == [
        ("tests/broken.spec.ts", "Error: Cannot find module './no-such-helper'")]
    # already reported by the runner's JUnit: nothing added
    junit = write(tmp_path / "j.xml", '<testcase classname="tests/x.py" name="m" file="tests/x.py">'
                                      '<error message="boom"/></testcase>')
    assert add_collection_errors(junit, [CollectionProblem("tests/x.py", "boom")], tmp_path / "o.xml") == junit


def _record(tmp_path: Path, attempts: list[AttemptRecord], state: str = "passed") -> RunRecord:
    return RunRecord("r1", 0.0, 10.0, [], "machines.yaml", "dynamic", "files", "pytest {tests}", 0,
                     shards=[ShardRecord("s001", 1, 1, ["t/test_a.py"], None, state)], attempts=attempts,
                     runner="pytest")


def test_a_retry_of_failed_tests_merges_into_one_testcase_per_test(tmp_path: Path) -> None:
    first = write(tmp_path / "1.xml",
                  '<testcase classname="t.test_a" name="test_ok" file="t/test_a.py" line="3"/>'
                  '<testcase classname="t.test_a" name="test_flaky" file="t/test_a.py" line="7">'
                  '<failure message="assert 0">boom</failure></testcase>')
    retry = write(tmp_path / "2.xml", '<testcase classname="t.test_a" name="test_flaky" file="t/test_a.py"/>')
    cancelled = write(tmp_path / "3.xml", '<testcase classname="t.test_a" name="test_ok" file="t/test_a.py">'
                                          '<failure message="never counted"/></testcase>')
    record = _record(tmp_path, [
        AttemptRecord("s001", 1, "h1", "tests-failed", 0, 1, exit_status=1, junit_path=first),
        AttemptRecord("s001", 2, "h2", "passed", 1, 2, exit_status=0, junit_path=retry),
        AttemptRecord("s001", 3, "h3", "cancelled", 1, 2, junit_path=cancelled, speculative=True)])
    tests_from_record(record)
    by_name = {t.name: t for t in record.tests}
    assert sorted(by_name) == ["test_flaky", "test_ok"]
    assert by_name["test_flaky"].flaky and by_name["test_flaky"].machine == "h2"
    assert by_name["test_ok"].outcome == "passed" and by_name["test_ok"].attempt == 1
    assert by_name["test_flaky"].id == "t/test_a.py::test_flaky"
    stats = merge_junit(record, tmp_path / "merged.xml")
    assert (stats.tests, stats.failures, stats.flaky) == (2, 0, 1)
    names = [c.get("name") for c in ET.parse(tmp_path / "merged.xml").getroot().iter("testcase")]
    assert names == ["test_ok", "test_flaky"]


def test_failures_named_in_every_summary(tmp_path: Path) -> None:
    shutil.copy(FIX / "pytest-junit-outcomes.xml", tmp_path / "j.xml")
    record = _record(tmp_path, [AttemptRecord("s001", 1, "h1", "tests-failed", 0, 1, exit_status=1,
                                              junit_path=str(tmp_path / "j.xml"))], state="failed")
    record.exit_code = 1
    tests_from_record(record)
    named = failed_tests_by_shard(record)["s001"]
    assert [f.name for f in named][:1] == ["networkx/algorithms/tree/tests/test_broken_import.py"]
    text = name_failures(named, limit=1)
    assert text.startswith("networkx/algorithms/tree/tests/test_broken_import.py (ImportError: cannot import")
    assert text.endswith("(+2 more)")
    md = summary_markdown(record)
    assert "`networkx/algorithms/tree/tests/test_outcomes_extra.py::test_fails`: AssertionError: arithmetic" in md
    payload = notification(record)
    assert payload["failures"][0]["tests"][1]["name"].endswith("test_outcomes_extra.py::test_fails")
    assert error_annotation("boom", title="t", file="a.py", line=5) == "::error file=a.py,line=5,title=t::boom"


def test_without_junit_the_shards_files_are_named(tmp_path: Path) -> None:
    record = _record(tmp_path, [AttemptRecord("s001", 1, "h1", "tests-failed", 0, 1, exit_status=1)],
                     state="failed")
    assert failed_tests_by_shard(record) == {"s001": [TestFailure(name="t/test_a.py", file="t/test_a.py")]}


def test_history_keeps_per_test_flaky_counts_and_lists_the_flakiest(tmp_path: Path) -> None:
    import io

    from rich.console import Console

    from fleetshard.history import History
    from fleetshard.inventory import load_inventory
    from fleetshard.record import TestRecord
    from fleetshard.report import history_command

    (tmp_path / "machines.yaml").write_text("machines:\n  local: {transport: local}\n")
    inv = load_inventory(tmp_path / "machines.yaml")
    with History(tmp_path / ".fleetshard" / "history.db") as history:
        for n, flaky in enumerate(([True, False], [True, True], [False, False])):
            record = _record(tmp_path, [])
            record.run_id, record.started = f"r{n}", float(n)
            record.tests = [TestRecord("test_a", "t.test_a", "t/test_a.py", 0.5, "passed", "s001", 2, "h1",
                                       flaky=flaky[0], id="t/test_a.py::test_a"),
                            TestRecord("test_b", "t.test_a", "t/test_a.py", 1.5, "passed", "s001", 1, "h1",
                                       flaky=flaky[1], id="t/test_a.py::test_b")]
            history.record_run(record)
        rows = history.flaky_tests()
        assert [(r.label, r.flaky, r.runs) for r in rows] == [("t/test_a.py::test_a", 2, 3),
                                                              ("t/test_a.py::test_b", 1, 3)]
        assert history.test_durations()["t/test_a.py::test_b"] == 1.5
    out = io.StringIO()
    assert history_command(inv, flaky=True, console=Console(file=out, width=120)) == 0
    text = out.getvalue()
    assert "Flakiest tests" in text and text.index("test_a.py::test_a") < text.index("test_a.py::test_b")
