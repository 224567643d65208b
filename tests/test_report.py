"""`fleetshard history`, `fleetshard report` and the self-contained HTML report."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from html.parser import HTMLParser
from io import StringIO
from pathlib import Path
from typing import Any, cast

import pytest
from rich.console import Console

from fleetshard.errors import UsageError
from fleetshard.history import History
from fleetshard.record import AttemptRecord, MachineRecord, RunRecord, ShardRecord, TestRecord
from fleetshard.report import history_command, history_path, report_command, write_html

T0 = 1_700_000_000.0
CHROMIUM = Path("/usr/bin/chromium")
EVIL = '<script>alert("x")</script>'


@dataclass
class FakeInventory:
    """The two things the report commands read from an inventory."""

    path: Path
    history: str | None = None

    @property
    def base_dir(self) -> Path:
        return self.path.parent


def inventory(tmp_path: Path, history: str | None = None) -> Any:
    return cast(Any, FakeInventory(tmp_path / "machines.yaml", history))


def console() -> Console:
    return Console(file=StringIO(), width=200, force_terminal=False, color_system=None)


def output(con: Console) -> str:
    file = con.file
    assert isinstance(file, StringIO)
    return file.getvalue()


def make_record(tmp_path: Path, run_id: str = "20240101-120000-ab12", started: float = T0) -> RunRecord:
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    log = logs / f"{run_id}-s002-1.log"
    log.write_text("".join(f"output line {i}\n" for i in range(1, 101)) + "\x1b[31mE   assert 1 == 2\x1b[0m\n")
    artifact = tmp_path / "artifacts" / "s002" / "trace one.zip"
    artifact.parent.mkdir(parents=True, exist_ok=True)
    artifact.write_bytes(b"zip")

    def at(shard: str, n: int, machine: str, outcome: str, start: float, end: float, **kw: Any) -> AttemptRecord:
        return AttemptRecord(shard, n, machine, outcome, started + start, started + end, **kw)

    return RunRecord(
        run_id=run_id, started=started, ended=started + 60, argv=["run"], inventory="machines.yaml",
        strategy="dynamic", mode="files", command="pytest {files}", exit_code=1,
        machines=[MachineRecord("h1", 2, 1.0, "healthy"), MachineRecord("h2", 1, 0.5, "drained", "2 infra failures"),
                  MachineRecord("h3 <b>", 1, 2.0, "healthy")],
        shards=[ShardRecord("s001", 1, 4, ["tests/test_a.py"], 20.0, "passed", flaky=True),
                ShardRecord("s002", 2, 4, ["tests/test_b.py"], 20.0, "failed", reason=EVIL),
                ShardRecord("s003", 3, 4, ["tests/test_c.py"], 10.0, "not-run", reason="no machine left"),
                ShardRecord("s004", 4, 4, ["tests/test_d.py"], 10.0, "passed")],
        attempts=[at("s001", 1, "h1", "tests-failed", 0, 20, exit_status=1, log_path=str(log)),
                  at("s001", 2, "h1", "passed", 21, 40, exit_status=0),
                  at("s002", 1, "h1", "tests-failed", 0, 30, exit_status=1, log_path=str(log),
                     artifacts=[str(artifact)]),
                  at("s003", 1, "h2", "infra-failed", 0, 2, reason="connection lost"),
                  at("s003", 2, "h2", "timed-out", 5, 35, reason="timed out after 30 s"),
                  at("s004", 1, "h3 <b>", "passed", 0, 25, exit_status=0),
                  at("s004", 1, "h1", "cancelled", 40, 45, speculative=True)],
        tests=[TestRecord("test_flaky", "tests.test_a", "tests/test_a.py", 1.0, "passed", "s001", 2, "h1",
                          flaky=True),
               TestRecord("test_bad", "tests.test_b", "tests/test_b.py", 1.0, "failed", "s002", 1, "h1",
                          message="assert 1 == 2 <oops>")],
        expected_makespan=42.0, lower_bound=35.0, notes=["shard s004 produced no JUnit XML"])


class StrictParser(HTMLParser):
    """Collects problems html.parser tolerates silently: mismatched or unclosed tags."""

    VOID = frozenset({"meta", "br", "hr", "img", "input", "link", "col", "area", "base", "source", "wbr"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.lanes: list[str] = []
        self.blocks: list[dict[str, str | None]] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        classes = (values.get("class") or "").split()
        if "lane" in classes:
            self.lanes.append(values.get("data-machine") or "")
        if "block" in classes:
            self.blocks.append(values)
        if tag == "a":
            self.links.append(values.get("href") or "")
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> (open: {self.stack[-3:]})")
            return
        self.stack.pop()

    def check(self, text: str) -> StrictParser:
        self.feed(text)
        self.close()
        if self.stack:
            self.errors.append(f"unclosed: {self.stack}")
        return self


# --- HTML --------------------------------------------------------------------------------------------

def test_html_is_well_formed_with_one_lane_per_machine(tmp_path: Path) -> None:
    record = make_record(tmp_path)
    out = tmp_path / "report" / "run.html"
    write_html(record, out, speeds={"h1": 1.25})
    page = out.read_text(encoding="utf-8")
    parsed = StrictParser().check(page)
    assert parsed.errors == []
    assert parsed.lanes == ["h1", "h2", "h3 <b>"]
    assert len(parsed.blocks) == len(record.attempts)
    classes = {(b["data-shard"], b["data-attempt"]): (b["class"] or "").split() for b in parsed.blocks}
    assert "passed" in classes[("s001", "2")] and "retry" in classes[("s001", "2")]
    assert "failed" in classes[("s001", "1")] and "retry" not in classes[("s001", "1")]
    assert "infra" in classes[("s003", "1")] and "infra" in classes[("s003", "2")]
    s004 = [(b["class"] or "").split() for b in parsed.blocks if b["data-shard"] == "s004"]
    assert sorted("cancelled" in c and "speculative" in c for c in s004) == [False, True]
    title = next(b["title"] for b in parsed.blocks if b["data-shard"] == "s003" and b["data-attempt"] == "2")
    assert title is not None and "attempt 2" in title and "timed out after 30 s" in title
    assert "1.25" in page                                  # the learned speed factor
    assert "expected: 42s" in page and "lower bound: 35s" in page
    assert "output line 100" in page and "output line 72\n" in page and "output line 71\n" not in page
    assert "\x1b" not in page
    assert "test_flaky" in page and "no machine left" in page


def test_html_escapes_user_text(tmp_path: Path) -> None:
    record = make_record(tmp_path)
    out = tmp_path / "run.html"
    write_html(record, out)
    page = out.read_text(encoding="utf-8")
    assert EVIL not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert page.count("<script") == 1                      # only the report's own inline script
    assert "h3 <b>" not in page and "h3 &lt;b&gt;" in page
    assert "&lt;oops&gt;" in page


def test_html_is_self_contained_with_relative_links(tmp_path: Path) -> None:
    record = make_record(tmp_path)
    out = tmp_path / "report" / "run.html"
    write_html(record, out)
    page = out.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<link" not in page and "@import" not in page and "url(" not in page
    links = StrictParser().check(page).links
    assert "../artifacts/s002/trace%20one.zip" in links
    assert any(link.startswith("../logs/") for link in links)
    for link in links:
        assert (out.parent / link.replace("%20", " ")).exists()


def test_html_of_an_empty_run(tmp_path: Path) -> None:
    record = RunRecord("r0", T0, T0, [], "machines.yaml", "static", "native", "true", 3)
    out = tmp_path / "empty.html"
    write_html(record, out)
    assert StrictParser().check(out.read_text()).errors == []


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (Debian package `chromium`)")
@pytest.mark.timeout(60)
def test_html_renders_in_headless_chromium(tmp_path: Path) -> None:
    record = make_record(tmp_path)
    out = tmp_path / "run.html"
    write_html(record, out)
    profile = tmp_path / "profile"
    argv = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
            "--dump-dom", out.resolve().as_uri()]
    env = {**os.environ, "HOME": str(tmp_path)}
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env, check=False)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    parsed = StrictParser()
    parsed.feed(dom)
    assert parsed.lanes == ["h1", "h2", "h3 <b>"]
    problems = [line for line in result.stderr.splitlines()
                if "Uncaught" in line or "CONSOLE" in line or "Content Security Policy" in line]
    assert problems == []


# --- history / report commands ---------------------------------------------------------------------

def test_history_path(tmp_path: Path) -> None:
    assert history_path(inventory(tmp_path)) == tmp_path / ".fleetshard" / "history.db"
    assert history_path(inventory(tmp_path, "data/h.db")) == tmp_path / "data" / "h.db"
    assert history_path(inventory(tmp_path, "/abs/h.db")) == Path("/abs/h.db")


def test_history_without_runs_is_friendly(tmp_path: Path) -> None:
    con = console()
    assert history_command(inventory(tmp_path), limit=5, as_json=False, console=con) == 0
    assert "No runs recorded yet" in output(con)
    assert not (tmp_path / ".fleetshard").exists()          # looking does not create the database
    con = console()
    assert history_command(inventory(tmp_path), limit=5, as_json=True, console=con) == 0
    assert json.loads(output(con)) == []


def _record_two(tmp_path: Path) -> tuple[RunRecord, RunRecord]:
    first = make_record(tmp_path, "20240101-120000-ab12", T0)
    second = make_record(tmp_path, "20240102-120000-cd34", T0 + 86400)
    second.exit_code = 0
    with History(history_path(inventory(tmp_path))) as history:
        history.record_run(first)
        history.record_run(second)
    return first, second


def test_history_lists_runs(tmp_path: Path) -> None:
    _record_two(tmp_path)
    con = console()
    assert history_command(inventory(tmp_path), limit=10, as_json=False, console=con) == 0
    text = output(con)
    assert text.index("20240102-120000-cd34") < text.index("20240101-120000-ab12")
    assert "h1, h2, h3 <b>" in text and "1m 00s" in text
    con = console()
    history_command(inventory(tmp_path), limit=1, as_json=True, console=con)
    data = json.loads(output(con))
    assert [r["id"] for r in data] == ["20240102-120000-cd34"]
    assert data[0]["counts"]["failed"] == 1 and data[0]["exit_code"] == 0


def test_report_command(tmp_path: Path) -> None:
    _record_two(tmp_path)
    con = console()
    html_out = tmp_path / "out.html"
    assert report_command(inventory(tmp_path), "20240101", html=html_out, console=con) == 0
    text = output(con)
    assert "20240101-120000-ab12" in text and "tests failed" in text
    assert EVIL in text                                       # plain terminal text, not markup
    assert "output line 100" in text and "E   assert 1 == 2" in text
    assert "test_flaky" in text and "no machine left" in text
    assert "h3 <b>" in text
    assert html_out.exists() and StrictParser().check(html_out.read_text()).errors == []


def test_report_unknown_run_lists_recent_ids(tmp_path: Path) -> None:
    _record_two(tmp_path)
    with pytest.raises(UsageError) as info:
        report_command(inventory(tmp_path), "nope", console=console())
    assert "20240101-120000-ab12" in str(info.value) and "20240102-120000-cd34" in str(info.value)


def test_report_without_history(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no runs recorded yet"):
        report_command(inventory(tmp_path), None, console=console())
