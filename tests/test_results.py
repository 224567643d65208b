"""JUnit parsing and merging, the JSON report, exit code descriptions."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from fleetshard import __version__
from fleetshard import results as results_mod
from fleetshard.record import AttemptRecord, MachineRecord, RunRecord, ShardRecord
from fleetshard.results import (
    JunitError,
    exit_code_description,
    match_file,
    merge_junit,
    parse_junit,
    write_json_report,
)

T0 = 1_700_000_000.0


def junit(path: Path, cases: str, *, root: str = "testsuites") -> str:
    body = f'<testsuite name="pytest" tests="0">{cases}</testsuite>'
    if root == "testsuites":
        body = f"<testsuites>{body}</testsuites>"
    path.write_text(f'<?xml version="1.0" encoding="utf-8"?>{body}', encoding="utf-8")
    return str(path)


def passed(name: str, cls: str = "tests.test_a", time: float = 1.0) -> str:
    return f'<testcase classname="{cls}" name="{name}" time="{time}"/>'


def failed(name: str, cls: str = "tests.test_a", time: float = 1.0, msg: str = "assert 1 == 2") -> str:
    return (f'<testcase classname="{cls}" name="{name}" time="{time}">'
            f'<failure message="{msg}">Traceback...\n{msg}</failure></testcase>')


def attempt(shard: str, n: int, machine: str, outcome: str, start: float, end: float,
            junit_path: str | None = None, **kw: Any) -> AttemptRecord:
    kw.setdefault("exit_status", 0 if outcome == "passed" else 1)
    return AttemptRecord(shard_id=shard, attempt=n, machine=machine, outcome=outcome, started=T0 + start,
                         ended=T0 + end, junit_path=junit_path, **kw)


def build_record(tmp_path: Path) -> RunRecord:
    j = tmp_path / "junit"
    j.mkdir()
    s1 = junit(j / "s1.xml", passed("test_one") + passed("test_two", time=2.5)
               + '<testcase classname="tests.test_a" name="test_skip" time="0"><skipped message="no"/></testcase>')
    s2a = junit(j / "s2a.xml", passed("test_x", "tests.test_b") + failed("test_y", "tests.test_b"))
    s2b = junit(j / "s2b.xml", passed("test_x", "tests.test_b") + passed("test_y", "tests.test_b"),
                root="testsuite")
    s5 = junit(j / "s5.xml", passed("test_p", "tests.test_e") + failed("test_q", "tests.test_e", msg="boom"))
    shards = [
        ShardRecord("s001", 1, 5, ["tests/test_a.py"], 4.0, "passed"),
        ShardRecord("s002", 2, 5, ["tests/test_b.py"], 3.0, "passed", flaky=True),
        ShardRecord("s003", 3, 5, ["tests/test_c.py"], 2.0, "passed"),
        ShardRecord("s004", 4, 5, ["tests/test_d.py"], 2.0, "not-run", reason="infra failures on h1, h2"),
        ShardRecord("s005", 5, 5, ["tests/test_e.py"], 2.0, "failed", reason="tests failed"),
    ]
    attempts = [
        attempt("s001", 1, "h1", "passed", 0, 5, s1),
        attempt("s002", 1, "h2", "tests-failed", 0, 4, s2a),
        attempt("s002", 2, "h1", "passed", 5, 9, s2b),
        attempt("s003", 1, "h2", "passed", 4, 6, None),
        attempt("s004", 1, "h1", "infra-failed", 0, 1, None, exit_status=255, reason="connection lost"),
        attempt("s004", 2, "h2", "timed-out", 6, 8, None, exit_status=None, reason="timed out"),
        attempt("s005", 1, "h2", "passed", 8, 9, None, speculative=True),
        attempt("s005", 1, "h1", "tests-failed", 9, 12, s5),
    ]
    # the speculative copy above lost the race in this story: mark it cancelled
    attempts[6].outcome = "cancelled"
    return RunRecord(run_id="r1", started=T0, ended=T0 + 12, argv=["run"], inventory="machines.yaml",
                     strategy="dynamic", mode="files", command="pytest {files}", exit_code=1,
                     machines=[MachineRecord("h1", 2, 1.0, "healthy"), MachineRecord("h2", 2, 1.0, "healthy")],
                     shards=shards, attempts=attempts)


# --- parse_junit -------------------------------------------------------------------------------------

def test_parse_nested_suites_and_outcomes(tmp_path: Path) -> None:
    path = tmp_path / "j.xml"
    path.write_text("""<?xml version="1.0"?>
<testsuites>
  <testsuite name="outer" file="suite/file.py">
    <testsuite name="inner">
      <testcase classname="x.Y" name="t1" time="0.5"/>
      <testcase classname="x.Y" name="t2" time="1,250.5" file="given/file.py">
        <error message="setup failed">trace</error></testcase>
    </testsuite>
  </testsuite>
  <testsuite name="other">
    <testcase classname="tests.unit.test_api.TestLogin" name="t3" time="x"><skipped/></testcase>
    <testcase classname="e2e/login.spec.ts" name="t4"><failure>first line
second</failure></testcase>
    <testcase classname="com.example.FooTest" name="t5" time="2"/>
  </testsuite>
</testsuites>""")
    cases = parse_junit(path)
    assert [(c.name, c.outcome) for c in cases] == [
        ("t1", "passed"), ("t2", "error"), ("t3", "skipped"), ("t4", "failed"), ("t5", "passed")]
    assert cases[0].file == "suite/file.py"          # inherited from the enclosing suite
    assert cases[1].file == "given/file.py" and cases[1].time == 1250.5 and cases[1].message == "setup failed"
    assert cases[2].file == "tests/unit/test_api.py" and cases[2].time == 0.0
    assert cases[3].file == "e2e/login.spec.ts" and cases[3].message == "first line"
    assert cases[4].file is None


def test_parse_bare_testsuite(tmp_path: Path) -> None:
    cases = parse_junit(junit(tmp_path / "j.xml", passed("a") + failed("b"), root="testsuite"))
    assert [c.outcome for c in cases] == ["passed", "failed"]
    assert cases[0].file == "tests/test_a.py"


@pytest.mark.parametrize("content", ["<testsuites><testsuite>", "not xml at all", "<html></html>", ""])
def test_parse_malformed_raises_junit_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.xml"
    path.write_text(content)
    with pytest.raises(JunitError) as info:
        parse_junit(path)
    assert isinstance(info.value, ValueError)
    assert "bad.xml" in str(info.value)


def test_parse_missing_file_raises_junit_error(tmp_path: Path) -> None:
    with pytest.raises(JunitError, match="cannot read"):
        parse_junit(tmp_path / "missing.xml")


def test_match_file() -> None:
    files = ["tests/unit/test_api.py", "tests/test_b.py"]
    assert match_file("unit/test_api.py", "unit.test_api", files) == "tests/unit/test_api.py"
    assert match_file(None, "unit.test_api.TestX", files) == "tests/unit/test_api.py"
    assert match_file("tests/test_b.py", "whatever", files) == "tests/test_b.py"
    assert match_file("zzz.py", "zzz", files) == "zzz.py"
    assert match_file("a.py", "a", []) == "a.py"


# --- merge_junit ---------------------------------------------------------------------------------------

def _props(case: ET.Element) -> dict[str, str]:
    return {p.get("name", ""): p.get("value", "") for p in case.iter("property")}


def test_merge_junit(tmp_path: Path) -> None:
    record = build_record(tmp_path)
    out = tmp_path / "out" / "merged.xml"
    stats = merge_junit(record, out)
    root = ET.parse(out).getroot()
    assert root.tag == "testsuites" and root.get("name") == "fleetshard"
    suites = root.findall("testsuite")
    assert len(suites) == 5
    assert [s.get("name", "").split(":")[0] for s in suites] == ["s001", "s002", "s003", "s004", "s005"]
    for attr in ("tests", "failures", "errors", "skipped"):
        assert int(root.get(attr, "-1")) == sum(int(s.get(attr, "0")) for s in suites) == getattr(stats, attr)
    assert (stats.tests, stats.failures, stats.errors, stats.skipped) == (3 + 2 + 1 + 1 + 2, 1, 1, 1)

    s1, s2, s3, s4, s5 = suites
    assert s1.get("hostname") == "h1" and "tests/test_a.py" in s1.get("name", "")
    first = s1.find("testcase")
    assert first is not None
    assert _props(first) == {"fleetshard.machine": "h1", "fleetshard.attempt": "1", "fleetshard.shard": "s001"}

    # flaky shard: the passing attempt's cases, each once; the flaky one marked
    assert s2.get("hostname") == "h1"
    cases = {c.get("name"): c for c in s2.findall("testcase")}
    assert sorted(cases, key=str) == ["test_x", "test_y"]
    assert _props(cases["test_y"])["fleetshard.flaky"] == "true"
    assert _props(cases["test_y"])["fleetshard.attempt"] == "2"
    assert "fleetshard.flaky" not in _props(cases["test_x"])
    assert "failed on attempt 1 (h2)" in (cases["test_y"].findtext("system-out") or "")
    assert stats.flaky == 1

    # no JUnit, passed: a passing placeholder and a note
    (placeholder,) = s3.findall("testcase")
    assert placeholder.get("name") == "shard s003 (no JUnit produced)"
    assert placeholder.find("error") is None and placeholder.find("skipped") is None
    assert any("s003" in n and "no JUnit" in n for n in stats.notes)

    # not run: an error naming the reason
    (not_run,) = s4.findall("testcase")
    error = not_run.find("error")
    assert error is not None and error.get("message") == "not run: infra failures on h1, h2"

    # failed shard: the cancelled speculative copy is not the deciding attempt
    assert s5.get("hostname") == "h1"
    assert [c.get("name") for c in s5.findall("testcase")] == ["test_p", "test_q"]

    # the merged file is itself parseable JUnit, and no temporary file is left behind
    assert len(parse_junit(out)) == stats.tests
    assert [p.name for p in out.parent.iterdir()] == ["merged.xml"]


def test_merge_malformed_and_failed_without_failures(tmp_path: Path) -> None:
    record = build_record(tmp_path)
    bad = tmp_path / "bad.xml"
    bad.write_text("<testsuites><testcase")
    record.attempts[0].junit_path = str(bad)              # s001 passed, JUnit broken
    good = tmp_path / "allpass.xml"
    junit(good, passed("test_p", "tests.test_e"))
    record.attempts[-1].junit_path = str(good)            # s005 failed, but its JUnit shows no failure
    record.shards[4].reason = "exit 3 \x1b[31m<weird>\x01"
    out = tmp_path / "merged.xml"
    stats = merge_junit(record, out)
    root = ET.parse(out).getroot()
    s1 = root.findall("testsuite")[0]
    assert [c.get("name") for c in s1.findall("testcase")] == ["shard s001 (JUnit unusable)"]
    assert any("s001" in n and "bad.xml" in n for n in stats.notes)
    s5 = root.findall("testsuite")[4]
    names = [c.get("name") for c in s5.findall("testcase")]
    assert names == ["test_p", "shard s005 (failed outside its tests)"]
    error = s5.findall("testcase")[1].find("error")
    assert error is not None and error.get("message") == "shard failed: exit 3 <weird>"


def test_tests_from_record(tmp_path: Path) -> None:
    record = build_record(tmp_path)
    notes = results_mod.tests_from_record(record)
    assert any("s003" in n for n in notes)
    by_name = {t.name: t for t in record.tests}
    assert set(by_name) == {"test_one", "test_two", "test_skip", "test_x", "test_y", "test_p", "test_q"}
    assert by_name["test_y"].flaky and by_name["test_y"].attempt == 2 and by_name["test_y"].machine == "h1"
    assert not by_name["test_x"].flaky
    assert by_name["test_q"].outcome == "failed" and by_name["test_q"].message == "boom"
    assert by_name["test_two"].file == "tests/test_a.py" and by_name["test_two"].time == 2.5
    assert by_name["test_skip"].outcome == "skipped"


def test_write_json_report(tmp_path: Path) -> None:
    record = build_record(tmp_path)
    results_mod.tests_from_record(record)
    record.expected_makespan = float("nan")
    out = tmp_path / "r" / "report.json"
    write_json_report(record, out)
    data = json.loads(out.read_text())
    assert data["version"] == __version__
    assert data["run_id"] == "r1" and data["exit_code"] == 1
    assert data["started_at"].startswith("2023-11-14T22:13:20")
    assert data["attempts"][0]["ended_at"]
    assert data["counts"]["failed"] == 1
    assert data["expected_makespan"] is None
    assert [t["name"] for t in data["flaky_tests"]] == ["test_y"]
    assert data["exit_description"] == "tests failed"


def test_exit_code_description() -> None:
    assert exit_code_description(0) == "all tests passed"
    assert exit_code_description(1) == "tests failed"
    assert "infrastructure" in exit_code_description(3)
    assert exit_code_description(130) == "interrupted"
    assert exit_code_description(42) == "exit code 42"


def test_as_dict_equals_the_deep_conversion(tmp_path: Path) -> None:
    import dataclasses

    record = build_record(tmp_path)
    results_mod.tests_from_record(record)
    record.attempts[0].artifacts = ["a/b.zip"]
    assert record.as_dict() == {**dataclasses.asdict(record), "duration": record.duration,
                                "counts": record.counts()}
