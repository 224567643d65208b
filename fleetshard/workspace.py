"""Per-machine workspace steps around the shards, and what a run tells the outside world.

- prepare: create the workdir, copy ``suite.sync`` into it, run ``suite.setup`` (once per machine);
- teardown: run ``suite.teardown`` once per prepared machine, also after failures and Ctrl-C;
- artifacts: download ``suite.artifacts`` globs after each shard;
- CI: a GitHub step summary and ``::error`` annotations; a webhook notification.

A failing setup is an infrastructure failure of that machine; a failing teardown, artifact download or
webhook is a warning. None of them ever fails the run on its own.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConnectError
from .model import Shard
from .record import RunRecord
from .suite import render
from .transport.base import remote_path

if TYPE_CHECKING:
    from .runner import Run, _MachineState

ARTIFACT_MAX_BYTES = 200 * 1024 * 1024
SYNC_SKIP = frozenset({".git", ".hg", ".svn", ".fleetshard"})   # never copied by suite.sync


def _workdir(st: _MachineState) -> str:
    return st.workdir


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


TEARDOWN_TIMEOUT = 300.0       # a hanging teardown must not hold the exit (after Ctrl-C, say) for long


async def _step(run: Run, st: _MachineState, what: str, command: str) -> str | None:
    """Run a setup/teardown command with the run's env, log its output; why it failed, or None."""
    env = run._env(st, None, 0, None)
    timeout = run.suite.config.timeout if run.suite else None
    if what == "teardown":
        timeout = min(timeout or TEARDOWN_TIMEOUT, TEARDOWN_TIMEOUT)
    result, out = await st.transport.run(command, cwd=_workdir(st), env=env, timeout=timeout)
    log = run.run_dir / "logs" / f"{what}-{st.machine.name}.log"
    log.write_text(f"# {st.machine.name}: {command}\n{out}", encoding="utf-8")
    if result.exit_status == 0:
        return None
    why = result.error or (f"killed by signal {result.signal}" if result.signal
                           else f"exit code {result.exit_status}")
    last = _last_line(out)
    return f"{what} failed on {st.machine.name} ({why}){': ' + last if last else ''} (log: {log})"


async def prepare_machine(run: Run, st: _MachineState) -> str | None:
    """Make the machine ready for its first shard. Returns why it cannot run shards, or None."""
    assert run.suite is not None
    cfg = run.suite.config
    needs_dir = st.machine.workdir is not None
    if needs_dir:
        result, out = await st.transport.run(f"mkdir -p -- {remote_path(_workdir(st))}", timeout=30)
        if result.exit_status != 0:
            return f"cannot create workdir {_workdir(st)} on {st.machine.name}: {result.error or _last_line(out)}"
    if cfg.sync:
        try:
            copied = await sync_dir(run.inv.base_dir / cfg.sync, st)
        except (OSError, ConnectError) as exc:
            return f"sync of {cfg.sync} to {st.machine.name} failed: {exc}"
        run.notice(f"{st.machine.name}: synced {copied} changed file(s) from {cfg.sync}", machine=st.machine.name)
    if cfg.setup:
        run.notice(f"{st.machine.name}: running setup", machine=st.machine.name)
        problem = await _step(run, st, "setup", cfg.setup)
        if problem:
            return problem
    return None


async def teardown_machine(run: Run, st: _MachineState) -> None:
    if run.suite is None or not run.suite.config.teardown or st.ready is None:
        return
    try:
        problem = await _step(run, st, "teardown", run.suite.config.teardown)
    except ConnectError as exc:
        problem = f"teardown on {st.machine.name} not run: {exc}"
    if problem:
        run.notice(problem, "warning", st.machine.name)


def _static_prefix(pattern: str) -> str:
    """The leading directories of a glob that hold no wildcard: where to look for its matches."""
    parts = []
    for part in pattern.split("/")[:-1]:
        if any(ch in part for ch in "*?["):
            break
        parts.append(part)
    return "/".join(parts) or "."


async def _remote_listing(st: _MachineState, root: str, under: list[str] | None = None
                          ) -> dict[str, tuple[int, int]] | None:
    """path -> (size, mtime) of the files below ``under`` (default: all) in ``root`` on the machine;
    None when the listing failed (no GNU find)."""
    dirs = " ".join(shlex.quote(d) for d in sorted(set(under or ["."])))
    result, out = await st.transport.run(
        f"cd {remote_path(root)} 2>/dev/null || exit 0; for d in {dirs}; do [ -e \"$d\" ] && "
        f"find \"$d\" -type f -printf '%s %T@ %p\\n'; done; exit 0", timeout=120)
    if result.exit_status != 0:
        return None
    listing: dict[str, tuple[int, int]] = {}
    for line in out.splitlines():
        size, _, rest = line.partition(" ")
        mtime, _, path = rest.partition(" ")
        try:
            listing[path.removeprefix("./")] = (int(size), int(float(mtime)))
        except ValueError:
            continue
    return listing


async def sync_dir(local: Path, st: _MachineState) -> int:
    """Copy the files of ``local`` that are new or changed (size or mtime) into the machine's workdir."""
    if not local.is_dir():
        raise OSError(f"{local} is not a directory")
    remote = await _remote_listing(st, _workdir(st)) or {}
    changed: list[str] = []
    dirs: set[str] = set()
    for path in sorted(local.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(local).as_posix()
        if rel.split("/", 1)[0] in SYNC_SKIP:
            continue
        stat = path.stat()
        if remote.get(rel) == (stat.st_size, int(stat.st_mtime)) or (
                rel in remote and remote[rel][0] == stat.st_size and remote[rel][1] >= int(stat.st_mtime)):
            continue
        changed.append(rel)
        if "/" in rel:
            dirs.add(rel.rsplit("/", 1)[0])
    ordered = sorted(dirs)
    for i in range(0, len(ordered), 200):                     # keep each command line short
        made = " ".join(remote_path(f"{_workdir(st)}/{d}") for d in ordered[i:i + 200])
        result, out = await st.transport.run(f"mkdir -p -- {made}", timeout=60)
        if result.exit_status != 0:
            raise OSError(f"cannot create directories in {_workdir(st)}: {result.error or _last_line(out)}")
    for rel in changed:
        await st.transport.put_file(str(local / rel), f"{_workdir(st)}/{rel}")
    return len(changed)


async def collect_artifacts(run: Run, st: _MachineState, shard: Shard, attempt: int) -> list[str]:
    """Download the suite's artifact globs after a shard; never raises. Returns local paths."""
    if run.suite is None or not run.suite.config.artifacts:
        return []
    values = {"shard": str(shard.index), "attempt": str(attempt), "run_id": run.run_id,
              "machine": st.machine.name}
    globs = [render(g, values).strip("'") for g in run.suite.config.artifacts]
    dest = run.run_dir / "artifacts" / st.machine.name / shard.id
    saved: list[str] = []
    try:
        listing = await _remote_listing(st, _workdir(st), [_static_prefix(g) for g in globs])
        if listing is None:
            run.notes.append(f"{st.machine.name}: artifacts not listed (needs GNU find)")
            return []
        for rel, (size, _) in sorted(listing.items()):
            if not any(fnmatch.fnmatchcase(rel, g) for g in globs):
                continue
            if size > ARTIFACT_MAX_BYTES:
                run.notes.append(f"{shard.id}: artifact {rel} skipped ({size} bytes)")
                continue
            target = dest / rel
            if not target.resolve().is_relative_to(dest.resolve()):
                continue                          # a remote name must not write outside the run directory
            if await st.transport.get_file(f"{_workdir(st)}/{rel}", str(target)):
                saved.append(str(target))
    except Exception as exc:  # artifacts never fail the run
        run.notes.append(f"{shard.id}: artifacts from {st.machine.name} not collected: {exc}")
    return saved


# -- the outside world -------------------------------------------------------------------------------
def summary_markdown(record: RunRecord) -> str:
    c = record.counts()
    verdict = {0: "passed", 1: "tests failed", 3: "infrastructure failure", 130: "interrupted"}.get(
        record.exit_code, f"exit {record.exit_code}")
    lines = [f"## fleetshard: {verdict}", "",
             f"Run `{record.run_id}`: {c['passed']} passed, {c['failed']} failed, {c['flaky']} flaky, "
             f"{c['not_run']} not run, {c['retries']} retries, in {record.duration:.0f} s "
             f"(exit {record.exit_code}).",
             "", "| machine | status | shards | passed | failed | busy |", "|---|---|---|---|---|---|"]
    for m in record.machines:
        mine = [a for a in record.attempts if a.machine == m.name]
        busy = sum(a.duration for a in mine)
        lines.append(f"| {m.name} | {m.status} | {len(mine)} | {sum(a.outcome == 'passed' for a in mine)} | "
                     f"{sum(a.outcome == 'tests-failed' for a in mine)} | {busy:.0f} s |")
    failed = [s for s in record.shards if s.state != "passed"]
    if failed:
        lines += ["", "### Failures", ""]
        for s in failed:
            lines.append(f"- `{s.id}` {s.state}: {s.reason or 'tests failed'}"
                         f"{' (' + ', '.join(s.files[:5]) + ')' if s.files else ''}")
    flaky = [f"{t.classname}.{t.name}" for t in record.tests if t.flaky] or [
        f"shard {s.id}" for s in record.shards if s.flaky]
    if flaky:
        lines += ["", "### Flaky", ""]
        lines += [f"- `{name}`" for name in flaky]
    return "\n".join(lines) + "\n"


def _annotation(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _annotation_property(text: str) -> str:
    return _annotation(text).replace(":", "%3A").replace(",", "%2C")


def error_annotation(message: str, *, title: str, file: str | None = None) -> str:
    """A GitHub Actions ``::error`` workflow command."""
    props = ([f"file={_annotation_property(file)}"] if file else []) + [f"title={_annotation_property(title)}"]
    return f"::error {','.join(props)}::{_annotation(message)}"


def ci_outputs(run: Run, record: RunRecord) -> None:
    """GitHub Actions: a step summary when GITHUB_STEP_SUMMARY is set; ::error annotations."""
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        try:
            with open(summary, "a", encoding="utf-8") as fh:
                fh.write(summary_markdown(record))
        except OSError as exc:
            run.notice(f"GITHUB_STEP_SUMMARY not written: {exc}", "warning")
    if os.environ.get("GITHUB_ACTIONS") == "true":
        failed_tests = [t for t in record.tests if t.outcome in ("failed", "error")]
        for t in failed_tests:
            print(error_annotation(t.message or "failed", file=t.file,
                                   title=f"{t.classname}.{t.name} failed on {t.machine}"), flush=True)
        for s in record.shards:
            if s.state == "not-run" or (s.state == "failed" and not failed_tests):
                print(error_annotation(s.reason or s.state, title=f"fleetshard: shard {s.id} {s.state}"), flush=True)


def notification(record: RunRecord) -> dict[str, Any]:
    c = record.counts()
    verdict = {0: "passed", 1: "failed", 3: "infrastructure failure", 130: "interrupted"}.get(
        record.exit_code, "failed")
    failures = [{"shard": s.id, "state": s.state, "reason": s.reason, "files": s.files}
                for s in record.shards if s.state != "passed"]
    report = str(Path(record.run_dir) / "report.json")
    return {
        "text": f"fleetshard run {record.run_id}: {verdict} (exit {record.exit_code}): "
                f"{c['passed']} passed, {c['failed']} failed, {c['flaky']} flaky, {c['not_run']} not run "
                f"in {record.duration:.0f} s",
        "run_id": record.run_id, "verdict": verdict, "exit_code": record.exit_code, "counts": c,
        "duration": record.duration, "failures": failures,
        "flaky": [s.id for s in record.shards if s.flaky] + [t.name for t in record.tests if t.flaky],
        "report": report,
    }


def notify(run: Run, record: RunRecord) -> None:
    url = run.opts.notify or run.inv.notify
    if not url:
        return
    body = json.dumps(notification(record)).encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
    except Exception as exc:  # a webhook never fails a run; its URL (a secret) is never printed
        run.notice(f"notification to webhook failed: {type(exc).__name__}: {str(exc).replace(url, '***')}",
                   "warning")
