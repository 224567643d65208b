"""What a finished run tells the outside world: a GitHub step summary, ``::error`` annotations and
a webhook notification. A failure of any of them is a warning, never a failed run.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .model import verdict_of
from .record import RunRecord, machine_summaries
from .results import FAILURES_SHOWN, failed_tests_by_shard

Notify = Callable[..., None]       # notice(text, level): how a warning reaches the user


def summary_markdown(record: RunRecord) -> str:
    c = record.counts()
    verdict = verdict_of(record.exit_code).word
    lines = [f"## fleetshard: {verdict}", "",
             f"Run `{record.run_id}`: {c['passed']} passed, {c['failed']} failed, {c['flaky']} flaky, "
             f"{c['not_run']} not run, {c['retries']} retries, in {record.duration:.0f} s "
             f"(exit {record.exit_code}).",
             "", "| machine | status | shards | passed | failed | busy |", "|---|---|---|---|---|---|"]
    known = {m.name for m in record.machines}
    for row in machine_summaries(record):
        if row.name in known:
            lines.append(f"| {row.name} | {row.status} | {row.shards} | {row.passed} | {row.failed} | "
                         f"{row.busy:.0f} s |")
    failed = [s for s in record.shards if s.state != "passed"]
    named = failed_tests_by_shard(record)
    if failed:
        lines += ["", "### Failures", ""]
        for s in failed:
            tests = named.get(s.id, [])
            lines.append(f"- `{s.id}` {s.state}: {s.reason or 'tests failed'}"
                         f"{' (' + ', '.join(s.files[:5]) + ')' if s.files and not tests else ''}")
            for f in tests[:FAILURES_SHOWN]:
                lines.append(f"  - `{_md(f.name)}`" + (f": {_md(f.message)}" if f.message else ""))
            if len(tests) > FAILURES_SHOWN:
                lines.append(f"  - +{len(tests) - FAILURES_SHOWN} more")
    flaky = [t.label for t in record.tests if t.flaky] or [
        f"shard {s.id}" for s in record.shards if s.flaky]
    if flaky:
        lines += ["", "### Flaky", ""]
        lines += [f"- `{name}`" for name in flaky]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("`", "'").replace("\n", " ")


def _annotation(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _annotation_property(text: str) -> str:
    return _annotation(text).replace(":", "%3A").replace(",", "%2C")


def error_annotation(message: str, *, title: str, file: str | None = None, line: int | None = None) -> str:
    """A GitHub Actions ``::error`` workflow command."""
    props = ([f"file={_annotation_property(file)}"] if file else []) + (
        [f"line={line}"] if file and line else []) + [f"title={_annotation_property(title)}"]
    return f"::error {','.join(props)}::{_annotation(message)}"


def ci_outputs(record: RunRecord, notice: Notify) -> None:
    """GitHub Actions: a step summary when GITHUB_STEP_SUMMARY is set; ::error annotations."""
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        try:
            with open(summary, "a", encoding="utf-8") as fh:
                fh.write(summary_markdown(record))
        except OSError as exc:
            notice(f"GITHUB_STEP_SUMMARY not written: {exc}", "warning")
    if os.environ.get("GITHUB_ACTIONS") == "true":
        failed_tests = [t for t in record.tests if t.outcome in ("failed", "error")]
        for t in failed_tests:
            print(error_annotation(t.message or "failed", file=t.file, line=t.line,
                                   title=f"{t.label} failed on {t.machine}"), flush=True)
        with_tests = {t.shard_id for t in failed_tests}
        for s in record.shards:
            if s.state == "not-run" or (s.state == "failed" and s.id not in with_tests):
                files = f" ({', '.join(s.files[:FAILURES_SHOWN])}{' …' if len(s.files) > FAILURES_SHOWN else ''})"
                print(error_annotation((s.reason or s.state) + (files if s.files else ""),
                                       title=f"fleetshard: shard {s.id} {s.state}"), flush=True)


def notification(record: RunRecord) -> dict[str, Any]:
    c = record.counts()
    verdict = verdict_of(record.exit_code).webhook
    named = failed_tests_by_shard(record)
    failures = [{"shard": s.id, "state": s.state, "reason": s.reason, "files": s.files,
                 "tests": [{"name": f.name, "message": f.message, "file": f.file, "line": f.line}
                           for f in named.get(s.id, [])[:50]],
                 "more_tests": max(0, len(named.get(s.id, [])) - 50)}
                for s in record.shards if s.state != "passed"]
    report = str(Path(record.run_dir) / "report.json")
    return {
        "text": f"fleetshard run {record.run_id}: {verdict} (exit {record.exit_code}): "
                f"{c['passed']} passed, {c['failed']} failed, {c['flaky']} flaky, {c['not_run']} not run "
                f"in {record.duration:.0f} s",
        "run_id": record.run_id, "verdict": verdict, "exit_code": record.exit_code, "counts": c,
        "duration": record.duration, "failures": failures,
        "flaky": [s.id for s in record.shards if s.flaky] + [t.label for t in record.tests if t.flaky],
        "report": report,
    }


def check_webhook_url(url: str, where: str) -> None:
    """Only http(s) webhooks: urllib would also open ftp:// and file:// URLs. Raises UsageError."""
    from urllib.parse import urlsplit

    from .errors import UsageError

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        shown = f"{parts.scheme}://…" if parts.scheme else "a URL without http:// or https://"
        raise UsageError(f"{where}: the webhook must be an http:// or https:// URL, not {shown}")


def notify(record: RunRecord, url: str | None, notice: Notify) -> None:
    if not url:
        return
    try:
        check_webhook_url(url, "notify")
    except Exception as exc:
        notice(f"notification not sent: {exc}", "warning")
        return
    body = json.dumps(notification(record)).encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
    except Exception as exc:  # a webhook never fails a run; its URL (a secret) is never printed
        notice(f"notification to webhook failed: {type(exc).__name__}: {str(exc).replace(url, '***')}",
                   "warning")
