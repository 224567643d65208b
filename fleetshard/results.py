"""Results of a run: per-shard JUnit collection and merge, the JSON report, exit code descriptions.

Which attempt speaks for a shard: the last attempt that was not cancelled, except that a shard that
passed is spoken for by its (last) passing attempt. A test that failed in an earlier attempt of the
same shard and passed in the deciding one is *flaky*: reported as such, never hidden.

A malformed or missing JUnit file is never fatal: it becomes a note and a placeholder testcase.
"""

from __future__ import annotations

import copy
import json
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import __version__
from .logtext import strip_ansi
from .model import (
    Outcome,
    TestFailure,
    verdict_of,
)
from .record import AttemptRecord, RunRecord, ShardRecord, TestRecord
from .runners import Adapter, CollectionProblem, FailedCase, Listing, adapter_for

FAILING = frozenset({"failed", "error"})


class JunitError(ValueError):
    """A JUnit XML file could not be read or is not JUnit XML."""


@dataclass(frozen=True)
class ParsedCase:
    name: str
    classname: str
    file: str | None
    time: float
    outcome: str                      # passed | failed | error | skipped
    message: str = ""
    line: int | None = None           # as the JUnit writes it (pytest's xunit1: 0-based)
    text: str = ""                    # the failure's body (first 4000 characters)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.file or "", self.classname, self.name)


@dataclass
class MergeStats:
    tests: int = 0
    failures: int = 0
    errors: int = 0
    skipped: int = 0
    time: float = 0.0                 # sum of the testcase times
    shards: int = 0
    flaky: int = 0
    notes: list[str] = field(default_factory=list)


# --- helpers ---------------------------------------------------------------------------------------

_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_MODULE_EXT = re.compile(
    r"\.(py|ts|tsx|js|jsx|mjs|cjs|mts|cts|rb|go|java|kt|cs|php|rs|feature|robot)$", re.IGNORECASE)


def xml_text(text: str) -> str:
    """``text`` without ANSI escapes and the characters XML 1.0 cannot carry."""
    return _XML_INVALID.sub("", strip_ansi(text))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a report file: atomically for regular files, through for special ones (see outfile)."""
    from .outfile import write_output

    write_output(Path(path), data, make_parents=True)


def _float(value: str | None) -> float:
    if not value:
        return 0.0
    try:
        result = float(value.replace(",", ""))
    except ValueError:
        return 0.0
    return result if math.isfinite(result) and result >= 0 else 0.0


def _file_from_classname(classname: str) -> str | None:
    """A test file guessed from a classname that looks like a path or a Python test module."""
    name = classname.strip()
    if not name:
        return None
    if "/" in name or "\\" in name or _MODULE_EXT.search(name):
        return name.split("::", 1)[0]
    parts = name.split(".")
    if not all(p.isidentifier() for p in parts):
        return None
    while parts and parts[-1][:1].isupper():
        parts.pop()                   # classes: tests.test_api.TestLogin -> tests.test_api
    if parts and (parts[-1].startswith("test") or parts[-1].endswith("_test")):
        return "/".join(parts) + ".py"
    return None


def _outcome_of(case: ET.Element) -> tuple[str, str, str]:
    for tag, outcome in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
        child = case.find(tag)
        if child is not None:
            message = child.get("message") or (child.text or "").strip().split("\n", 1)[0]
            return outcome, message[:1000], (child.text or "")[:4000]
    return "passed", "", ""


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _load(path: str | Path) -> list[tuple[ParsedCase, ET.Element]]:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise JunitError(f"{path}: not well-formed XML ({exc})") from exc
    except OSError as exc:
        raise JunitError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if root.tag not in ("testsuites", "testsuite"):
        raise JunitError(f"{path}: not JUnit XML (root element <{root.tag}>)")
    found: list[tuple[ParsedCase, ET.Element]] = []

    def walk(suite: ET.Element, suite_file: str | None) -> None:
        suite_file = suite.get("file") or suite_file
        for child in suite:
            if child.tag in ("testsuite", "testsuites"):
                walk(child, suite_file)
            elif child.tag == "testcase":
                classname = child.get("classname") or ""
                file = child.get("file") or suite_file or _file_from_classname(classname)
                outcome, message, text = _outcome_of(child)
                found.append((ParsedCase(name=child.get("name") or "", classname=classname, file=file,
                                         time=_float(child.get("time")), outcome=outcome,
                                         message=message, line=_int(child.get("line")), text=text), child))

    walk(root, None)
    return found


def parse_junit(path: str | Path) -> list[ParsedCase]:
    """The testcases of one JUnit XML file (``<testsuites>`` or a bare ``<testsuite>``, nested suites).

    Raises :class:`JunitError` when the file cannot be read or is not well-formed JUnit XML.
    """
    return [case for case, _ in _load(path)]


def _module_parts(path: str) -> list[str]:
    stem = re.sub(r"\.[^./\\]+$", "", path.replace("\\", "/").lstrip("./"))
    return [p for p in stem.split("/") if p]


def match_file(case_file: str | None, classname: str, shard_files: Sequence[str]) -> str | None:
    """The shard file a testcase belongs to, when it can be told; otherwise ``case_file`` as reported."""
    if not shard_files:
        return case_file
    if case_file is not None:
        if case_file in shard_files:
            return case_file
        norm = case_file.replace("\\", "/").removeprefix("./")
        hits = [f for f in shard_files
                if f == norm or f.endswith("/" + norm) or norm.endswith("/" + f.removeprefix("./"))]
        if len(hits) == 1:
            return hits[0]
    parts = classname.split(".") if classname and "/" not in classname else []
    if parts:
        hits = []
        for f in shard_files:
            mod = _module_parts(f)
            if not mod:
                continue
            n = len(mod)
            if parts[:n] == mod:
                hits.append(f)
                continue
            # the runner's rootdir may hide leading packages: tests/unit/test_a.py vs unit.test_a.Cls
            for k in range(len(parts), 0, -1):
                if mod[-k:] == parts[:k]:
                    hits.append(f)
                    break
        if len(set(hits)) == 1:
            return hits[0]
    return case_file


def attempts_by_shard(record: RunRecord) -> dict[str, list[AttemptRecord]]:
    """Each shard's attempts, oldest first."""
    result: dict[str, list[AttemptRecord]] = {}
    for attempt in sorted(record.attempts, key=lambda a: (a.attempt, a.started, a.ended)):
        result.setdefault(attempt.shard_id, []).append(attempt)
    return result


def deciding_attempt(shard: ShardRecord, attempts: Sequence[AttemptRecord]) -> AttemptRecord | None:
    """The attempt whose result the shard carries (see the module docstring)."""
    live = [a for a in attempts if a.outcome != Outcome.CANCELLED]
    if shard.state == "passed":
        passed = [a for a in live if a.outcome == Outcome.PASSED]
        if passed:
            return passed[-1]
    return live[-1] if live else None


def _junit_note(attempt: AttemptRecord, exc: JunitError) -> str:
    return (f"shard {attempt.shard_id}: JUnit XML of attempt {attempt.attempt} on {attempt.machine} "
            f"is unusable: {exc}")


def _no_junit_note(shard: ShardRecord, attempt: AttemptRecord) -> str:
    return f"shard {shard.id} produced no JUnit XML (attempt {attempt.attempt} on {attempt.machine})"


def _dedupe(cases: Iterable[tuple[ParsedCase, ET.Element]]) -> list[tuple[ParsedCase, ET.Element]]:
    """Each testcase once: a repeated (file, classname, name) keeps its last report, at its first place."""
    order: dict[tuple[str, str, str], tuple[ParsedCase, ET.Element]] = {}
    for case, element in cases:
        order[case.key] = (case, element)
    return list(order.values())


@dataclass
class _Case:
    parsed: ParsedCase
    element: ET.Element
    attempt: AttemptRecord            # the attempt whose report this is


@dataclass
class _ShardResult:
    shard: ShardRecord
    deciding: AttemptRecord | None
    cases: list[_Case]
    flaky_from: dict[tuple[str, str, str], AttemptRecord]
    junit_ok: bool


def _contributing(attempts: Sequence[AttemptRecord], deciding: AttemptRecord) -> list[AttemptRecord]:
    """The attempts whose testcases make up the shard's result, oldest first, the deciding one last.

    A retry of failed tests reports only those tests: the shard's result is every test's latest report
    over its attempts that ran (never cancelled copies), so each test appears once, however often it ran.
    """
    ran = [a for a in attempts if a is not deciding and a.outcome in (Outcome.PASSED, Outcome.TESTS_FAILED)
           and a.junit_path and a.attempt < deciding.attempt]
    return [*ran, deciding]


def _collect(record: RunRecord, notes: list[str]) -> list[_ShardResult]:
    by_shard = attempts_by_shard(record)
    results = []
    for shard in record.shards:
        attempts = by_shard.get(shard.id, [])
        deciding = deciding_attempt(shard, attempts)
        merged: dict[tuple[str, str, str], _Case] = {}
        flaky_from: dict[tuple[str, str, str], AttemptRecord] = {}
        junit_ok = False
        if deciding is not None and shard.state != "not-run":
            if not deciding.junit_path:
                notes.append(_no_junit_note(shard, deciding))
            else:
                try:
                    _load(deciding.junit_path)
                    junit_ok = True
                except JunitError as exc:
                    notes.append(_junit_note(deciding, exc))
            if junit_ok:
                failed_before: dict[tuple[str, str, str], AttemptRecord] = {}
                for attempt in _contributing(attempts, deciding):
                    assert attempt.junit_path is not None
                    try:
                        loaded = _dedupe(_load(attempt.junit_path))
                    except JunitError as exc:
                        notes.append(_junit_note(attempt, exc))
                        continue
                    for parsed, element in loaded:
                        previous = merged.get(parsed.key)
                        if previous is not None and previous.parsed.outcome in FAILING:
                            failed_before.setdefault(parsed.key, previous.attempt)
                        merged[parsed.key] = _Case(parsed, element, attempt)
                flaky_from = {k: failed_before[k] for k, c in merged.items()
                              if c.parsed.outcome == "passed" and k in failed_before}
        results.append(_ShardResult(shard, deciding, list(merged.values()), flaky_from, junit_ok))
    return results


def tests_from_record(record: RunRecord, adapter: Adapter | None = None, listing: Listing | None = None
                      ) -> list[str]:
    """Fill ``record.tests`` from the deciding attempts' JUnit files, flaky tests marked.

    Returns notes about JUnit files that were missing or unusable (the same wording as
    :func:`merge_junit` uses, so a caller can add each to ``record.notes`` once).
    """
    notes: list[str] = []
    tests: list[TestRecord] = []
    adapter = adapter or adapter_for(record.runner)
    for result in _collect(record, notes):
        deciding = result.deciding
        if deciding is None:
            continue
        for c in result.cases:
            case = c.parsed
            fc = FailedCase(case.classname, case.name, case.file, case.message)
            test_id = adapter.test_id_of(fc, listing) if adapter.lists_tests or case.file else None
            message = adapter.first_line(case.message, case.text) if case.outcome in FAILING else case.message
            file = match_file(case.file or adapter.file_of(case.classname, case.name, listing), case.classname,
                              result.shard.files)
            tests.append(TestRecord(
                name=case.name, classname=case.classname, file=file, time=case.time,
                outcome=case.outcome, shard_id=result.shard.id, attempt=c.attempt.attempt,
                machine=c.attempt.machine, flaky=case.key in result.flaky_from, message=message,
                id=test_id or "",
                line=adapter.junit_line(case.line) if case.line is not None else _listed_line(case, listing)))
    record.tests = tests
    return notes


tests_from_record.__test__ = False  # type: ignore[attr-defined]  # not a test, for pytest's collector


# --- merged JUnit ------------------------------------------------------------------------------------

def files_summary(shard: ShardRecord, limit: int = 3) -> str:
    if not shard.files:
        return f"shard {shard.index}/{shard.total}"
    shown = ", ".join(shard.files[:limit])
    more = len(shard.files) - limit
    return f"{shown} (+{more} more)" if more > 0 else shown


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _junit_time(ts: float) -> str:
    """Local time without an offset, as the JUnit schema (and pytest) write it."""
    return datetime.fromtimestamp(ts).isoformat(timespec="seconds")


def _add_properties(case: ET.Element, props: Sequence[tuple[str, str]]) -> None:
    holder = case.find("properties")
    if holder is None:
        holder = ET.Element("properties")
        case.insert(0, holder)
    for name, value in props:
        ET.SubElement(holder, "property", name=name, value=xml_text(value))


def _append_system_out(case: ET.Element, text: str) -> None:
    out = case.find("system-out")
    if out is None:
        out = ET.SubElement(case, "system-out")
        out.text = text
    else:
        out.text = ((out.text or "").rstrip("\n") + "\n" + text) if out.text else text


def _placeholder(shard: ShardRecord, attempt: AttemptRecord | None, label: str,
                 problem: str | None) -> ET.Element:
    case = ET.Element("testcase", classname="fleetshard", name=f"shard {shard.id} ({label})",
                      time=f"{attempt.duration:.3f}" if attempt else "0")
    if len(shard.files) == 1:
        case.set("file", xml_text(shard.files[0]))
    props = [("fleetshard.shard", shard.id)]
    if attempt is not None:
        props[:0] = [("fleetshard.machine", attempt.machine), ("fleetshard.attempt", str(attempt.attempt))]
    _add_properties(case, props)
    if problem is not None:
        error = ET.SubElement(case, "error", message=xml_text(problem))
        details = [problem, f"files: {files_summary(shard, 20)}"]
        if attempt is not None:
            details.append(f"machine: {attempt.machine}, attempt {attempt.attempt}, outcome {attempt.outcome}, "
                           f"exit {attempt.exit_status}")
            if attempt.log_path:
                details.append(f"log: {attempt.log_path}")
        error.text = xml_text("\n".join(details))
    return case


def _failure_reason(shard: ShardRecord, attempt: AttemptRecord | None) -> str:
    if shard.reason:
        return shard.reason
    if attempt is None:
        return "no attempt was made"
    if attempt.exit_status is not None:
        return f"{attempt.outcome} (exit {attempt.exit_status})"
    return attempt.outcome + (f" ({attempt.reason})" if attempt.reason else "")


def _suite_for(result: _ShardResult, stats: MergeStats) -> ET.Element:
    shard, deciding = result.shard, result.deciding
    suite = ET.Element("testsuite", name=xml_text(f"{shard.id}: {files_summary(shard)}"),
                       hostname=xml_text(deciding.machine if deciding else ""))
    if deciding is not None:
        suite.set("timestamp", _junit_time(deciding.started))
    cases: list[ET.Element] = []
    if shard.state == "not-run":
        reason = shard.reason or (deciding.reason if deciding else "") or "unknown reason"
        cases.append(_placeholder(shard, deciding, "not run", f"not run: {reason}"))
    elif not result.junit_ok:
        label = "no JUnit produced" if deciding is None or not deciding.junit_path else "JUnit unusable"
        problem = None if shard.state == "passed" else f"shard failed: {_failure_reason(shard, deciding)}"
        cases.append(_placeholder(shard, deciding, label, problem))
    else:
        assert deciding is not None
        for c in result.cases:
            parsed, element, by = c.parsed, c.element, c.attempt
            case = copy.deepcopy(element)
            props = [("fleetshard.machine", by.machine), ("fleetshard.attempt", str(by.attempt)),
                     ("fleetshard.shard", shard.id)]
            earlier = result.flaky_from.get(parsed.key)
            if earlier is not None:
                props.append(("fleetshard.flaky", "true"))
            _add_properties(case, props)
            if earlier is not None:
                _append_system_out(case, xml_text(
                    f"fleetshard: flaky: failed on attempt {earlier.attempt} ({earlier.machine}), "
                    f"passed on attempt {by.attempt} ({by.machine})"))
                stats.flaky += 1
            cases.append(case)
        if shard.state != "passed" and not any(c.parsed.outcome in FAILING for c in result.cases):
            # the shard failed but its JUnit names no failing test: keep the verdict visible
            cases.append(_placeholder(shard, deciding, "failed outside its tests",
                                      f"shard failed: {_failure_reason(shard, deciding)}"))
    counts = {"tests": len(cases), "failures": 0, "errors": 0, "skipped": 0}
    total_time = 0.0
    for case in cases:
        if case.find("failure") is not None:
            counts["failures"] += 1
        elif case.find("error") is not None:
            counts["errors"] += 1
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        total_time += _float(case.get("time"))
        suite.append(case)
    for key, value in counts.items():
        suite.set(key, str(value))
    suite.set("time", f"{total_time:.3f}")
    stats.tests += counts["tests"]
    stats.failures += counts["failures"]
    stats.errors += counts["errors"]
    stats.skipped += counts["skipped"]
    stats.time += total_time
    stats.shards += 1
    return suite


def merge_junit(record: RunRecord, out: Path) -> MergeStats:
    """Write one JUnit XML file for the whole run: one ``<testsuite>`` per shard. Atomic."""
    stats = MergeStats()
    results = _collect(record, stats.notes)
    root = ET.Element("testsuites", name="fleetshard")
    for result in results:
        root.append(_suite_for(result, stats))
    root.set("tests", str(stats.tests))
    root.set("failures", str(stats.failures))
    root.set("errors", str(stats.errors))
    root.set("skipped", str(stats.skipped))
    root.set("time", f"{stats.time:.3f}")
    root.set("timestamp", _junit_time(record.started))
    ET.indent(root)
    data = ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"
    atomic_write_bytes(Path(out), data)
    return stats


# --- JSON report, exit codes -------------------------------------------------------------------------

def flaky_tests(record: RunRecord) -> list[dict[str, Any]]:
    return [{"name": t.name, "classname": t.classname, "file": t.file, "shard_id": t.shard_id,
             "machine": t.machine, "attempt": t.attempt, "id": t.label} for t in record.tests if t.flaky]


def dumps(data: Any, *, indent: int | None = None) -> str:
    """JSON text; NaN and infinities (never valid JSON) become null."""
    try:
        return json.dumps(data, indent=indent, default=str, allow_nan=False)
    except ValueError:
        return json.dumps(json_safe(data), indent=indent, default=str, allow_nan=False)


def write_json_report(record: RunRecord, out: Path) -> None:
    """The JSON report (:func:`json_report_data`), written atomically."""
    text = dumps(json_report_data(record), indent=2) + "\n"
    atomic_write_bytes(Path(out), text.encode("utf-8"))


def json_report_data(record: RunRecord) -> dict[str, Any]:
    """``record.as_dict()`` plus version, ISO timestamps, exit description and flaky tests."""
    data = record.as_dict()
    data["version"] = __version__
    data["started_at"] = _iso(record.started)
    data["ended_at"] = _iso(record.ended)
    data["exit_description"] = exit_code_description(record.exit_code)
    data["flaky_tests"] = flaky_tests(record)
    for attempt in data["attempts"]:
        attempt["started_at"] = _iso(attempt["started"])
        attempt["ended_at"] = _iso(attempt["ended"])
    return data


def json_safe(value: Any) -> Any:
    """JSON has no NaN or infinity: such floats become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def exit_code_description(code: int) -> str:
    return verdict_of(code).description


# --- verdicts from tests ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    """How an attempt that ran ended, judged from its tests: JUnit first, the exit code only without one."""

    outcome: Outcome
    reason: str
    failures: tuple[TestFailure, ...] = ()
    rerun: tuple[str, ...] | None = None      # ids that rerun exactly the failures; None: the whole shard


def _listed_line(case: ParsedCase, listing: Listing | None) -> int | None:
    """The line the runner's listing gives a test (Playwright's JUnit has none)."""
    if listing is None:
        return None
    found = listing.by_junit_key.get((case.classname, case.name))
    return found[0].line if found and found[0].line else None


def failures_of(cases: Sequence[ParsedCase], adapter: Adapter, listing: Listing | None) -> list[TestFailure]:
    """The failing testcases, named as the runner names them, with their first message line."""
    out = []
    for case in cases:
        if case.outcome not in FAILING:
            continue
        fc = FailedCase(case.classname, case.name, case.file, case.message)
        name = adapter.test_id_of(fc, listing) or adapter.display_name(case.classname, case.name)
        listed = adapter.file_of(case.classname, case.name, listing) if listing is not None else None
        file = listed or case.file or adapter.file_of(case.classname, case.name, None)
        line = adapter.junit_line(case.line) if case.line is not None else _listed_line(case, listing)
        out.append(TestFailure(name=name, message=adapter.first_line(case.message, case.text), file=file,
                               line=line))
    return out


def judge(outcome: Outcome, reason: str, exit_status: int | None, junit: str | None, *,
          ok_exit_codes: Collection[int], adapter: Adapter, listing: Listing | None = None,
          files: Sequence[str] = ()) -> Verdict:
    """The verdict of an attempt that ran to its end (``outcome`` PASSED or TESTS_FAILED by exit code).

    With a usable JUnit: a failing testcase fails it; with none, an exit code in ``ok_exit_codes``
    passes it and any other fails it "outside its tests". Without JUnit the exit code decides, and the
    failures are the shard's files. Infrastructure outcomes are returned as they are.
    """
    if outcome not in (Outcome.PASSED, Outcome.TESTS_FAILED):
        return Verdict(outcome, reason)
    ok = exit_status in ok_exit_codes
    cases: list[ParsedCase] | None = None
    if junit is not None:
        try:
            cases = [c for c, _ in _dedupe(_load(junit))]
        except JunitError:
            cases = None
    if cases is None:
        if ok:
            return Verdict(Outcome.PASSED, "")
        return Verdict(Outcome.TESTS_FAILED, reason or f"exit code {exit_status}",
                       tuple(TestFailure(name=f, file=f) for f in files))
    failures = failures_of(cases, adapter, listing)
    if failures:
        failed = [FailedCase(c.classname, c.name, c.file, c.message) for c in cases if c.outcome in FAILING]
        rerun = adapter.rerun_ids(failed, listing) if adapter.reruns_tests else None
        n = len(failures)
        return Verdict(Outcome.TESTS_FAILED, f"{n} test{'s' if n != 1 else ''} failed (exit {exit_status})",
                       tuple(failures), tuple(rerun) if rerun else None)
    if ok:
        return Verdict(Outcome.PASSED, "")
    return Verdict(Outcome.TESTS_FAILED, f"failed outside its tests (exit {exit_status}, no failing testcase)",
                   tuple(TestFailure(name=f, file=f) for f in files))


def add_collection_errors(junit: str | None, problems: Sequence[CollectionProblem], out: Path) -> str | None:
    """Add a failing testcase for each file that failed to load and that ``junit`` does not report.

    Some runners (Playwright) stop without a testcase when a spec file fails to load; the listing saw
    the error, and a broken file must never be dropped. Writes ``out`` (the JUnit plus those testcases)
    and returns its path, or returns ``junit`` unchanged when nothing is missing.
    """
    if not problems:
        return junit
    root: ET.Element | None = None
    reported: set[str] = set()
    if junit is not None:
        try:
            root = ET.parse(junit).getroot()
            for parsed, _ in _load(junit):
                reported.update(x for x in (parsed.file, parsed.classname) if x)
        except (ET.ParseError, OSError, JunitError):
            root = None
    missing = [p for p in problems
               if not any(r == p.file or p.file.endswith("/" + r) or r.endswith(p.file) for r in reported)]
    if not missing:
        return junit
    if root is None or root.tag not in ("testsuites", "testsuite"):
        root = ET.Element("testsuites")
    holder = root if root.tag == "testsuite" else ET.SubElement(root, "testsuite", name="collection errors")
    for p in missing:
        added = ET.SubElement(holder, "testcase", classname=xml_text(p.file), name="(failed to load)", time="0",
                              file=xml_text(p.file))
        if p.line is not None:
            added.set("line", str(p.line))
        error = ET.SubElement(added, "error", message=xml_text(p.message or "failed to load"))
        error.text = xml_text(p.message)
    atomic_write_bytes(out, ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n")
    return str(out)


FAILURES_SHOWN = 5
"""How many failing tests an announcement or a summary names before "+N more"."""


def failed_tests_by_shard(record: RunRecord) -> dict[str, list[TestFailure]]:
    """The failing tests of each failed shard (from the merged JUnit); the shard's files without JUnit."""
    out: dict[str, list[TestFailure]] = {}
    for t in record.tests:
        if t.outcome in FAILING:
            out.setdefault(t.shard_id, []).append(
                TestFailure(name=t.label, message=t.message, file=t.file, line=t.line))
    for s in record.shards:
        if s.state == "failed" and s.id not in out:
            out[s.id] = [TestFailure(name=f, file=f) for f in s.files]
    return out


def name_failures(failures: Sequence[TestFailure], limit: int = FAILURES_SHOWN) -> str:
    """``tests/a.py::test_x (assert 1 == 2); tests/b.py::test_y (+3 more)``: for one-line reports."""
    shown = [f"{f.name} ({f.message})" if f.message else f.name for f in failures[:limit]]
    more = len(failures) - limit
    return "; ".join(shown) + (f" (+{more} more)" if more > 0 else "")
