"""The run journal: every attempt recorded as it starts and as it ends, so a run survives its coordinator.

``.fleetshard/runs/<run id>/journal.jsonl`` gets one JSON line per fact, appended with one ``write``
each (in the kernel as soon as written, so a ``kill -9`` of the coordinator loses nothing written):

    {"kind": "run", ...}        the plan: shards, machines, command, argv (secrets redacted)
    {"kind": "started", ...}    an attempt started
    {"kind": "finished", ...}   an attempt ended (its whole AttemptRecord)
    {"kind": "end", ...}        the run ended and its results were written
    {"kind": "recovered"}       a later fleetshard recorded this interrupted run in history
    {"kind": "swept", ...}      a later run swept this run's processes from a machine

The coordinator holds an exclusive ``flock`` on the journal while the run lives; the kernel drops it
when the process dies. A journal without an end whose lock is free is a run whose coordinator is gone:
:func:`recover_runs` records it in history as interrupted (exit 130), with the attempts that finished,
and writes its report.json, so ``history``, ``report RUN`` and ``run --resume RUN`` work on it.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .context import RunContext
from .events import Event, RunFinished, RunStarted, ShardFinished, ShardStarted
from .record import AttemptRecord, MachineRecord, RunRecord, ShardRecord

JOURNAL = "journal.jsonl"
INTERRUPTED = "interrupted: the coordinator stopped before the run ended"
RECENT_RUNS = 50           # run directories looked at for interrupted runs, newest first
TAIL_BYTES = 4096          # bytes at the end of a journal looked through for its end entry


class Journal:
    """A subscriber of the run's events that appends them to the journal."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.fd: int | None = None
        self.failed = False

    def handle(self, event: Event) -> None:
        ctx = self.ctx
        if isinstance(event, RunStarted):
            self._open()
            from .record import redact_argv

            self._write({
                "kind": "run", "run_id": ctx.run_id, "started": ctx.t0_wall, "pid": os.getpid(),
                "argv": redact_argv(ctx.opts.argv), "inventory": str(ctx.inv.path), "strategy": event.strategy,
                "mode": ctx.suite.mode, "command": ctx.suite.command, "commit": ctx.commit,
                "expected_makespan": event.expected_makespan, "lower_bound": event.lower_bound,
                "shards": [{"id": s.id, "index": s.index, "total": s.total, "files": list(s.files),
                            "expected": s.expected} for s in event.shards],
                "machines": [{"name": m.name, "slots": m.slots, "speed": m.speed, "status": m.status,
                              "reason": m.reason} for m in event.machines]})
        elif isinstance(event, ShardStarted):
            self._write({"kind": "started", "shard_id": event.shard.id, "attempt": event.attempt,
                         "machine": event.machine, "at": ctx.wall(event.at), "command": event.command,
                         "log_path": event.log_path, "speculative": event.speculative})
        elif isinstance(event, ShardFinished):
            self._write({"kind": "finished", "record": {
                "shard_id": event.shard.id, "attempt": event.attempt, "machine": event.machine,
                "outcome": str(event.outcome), "started": ctx.wall(event.started_at), "ended": ctx.wall(event.at),
                "exit_status": event.exit_status, "signal": event.signal, "reason": event.reason,
                "log_path": event.log_path, "junit_path": event.junit_path, "speculative": event.speculative,
                "command": event.command, "artifacts": list(event.artifacts)}})
        elif isinstance(event, RunFinished):
            self._write({"kind": "end", "exit_code": event.exit_code, "at": ctx.wall(event.at)})
            self.close()

    def _open(self) -> None:
        path = self.ctx.run_dir / JOURNAL
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._fail(exc)

    def _write(self, entry: dict[str, Any]) -> None:
        if self.fd is None or self.failed:
            return
        try:
            os.write(self.fd, (json.dumps(entry, default=str) + "\n").encode())
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        self.failed = True
        self.ctx.warn_once("journal", f"run journal not written ({exc.strerror or exc}): if fleetshard is "
                                      f"killed, this run cannot be recovered")

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            try:
                os.close(fd)
            except OSError:
                pass


# --- reading journals back -----------------------------------------------------------------------------

def read_journal(path: Path) -> list[dict[str, Any]]:
    """The journal's entries; a last line cut short by a crash is ignored."""
    entries = []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def _alive(path: Path) -> bool:
    """Does a coordinator still hold this journal's lock?"""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _ended(path: Path) -> bool:
    """Did the run end? Its ``end`` entry is its last line (only interrupted runs get lines after the
    last one written by their coordinator): the file's tail says, without reading a long journal."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - TAIL_BYTES))
            tail = fh.read()
    except OSError:
        return False
    for line in reversed(tail.splitlines()):
        if b'"kind": "end"' not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("kind") == "end":
            return True
    return False


def _append(path: Path, entry: dict[str, Any]) -> None:
    _scans.clear()
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
    except OSError:
        pass


def interrupted_journals(runs_dir: Path) -> Iterator[tuple[Path, list[dict[str, Any]]]]:
    """Journals of runs whose coordinator is gone without ending them, newest first."""
    try:
        dirs = sorted((d for d in runs_dir.iterdir() if d.is_dir()), key=lambda d: d.name, reverse=True)
    except OSError:
        return
    for d in dirs[:RECENT_RUNS]:
        path = d / JOURNAL
        if not path.is_file() or _ended(path):
            continue
        entries = read_journal(path)
        if not entries or entries[0].get("kind") != "run" or any(e.get("kind") == "end" for e in entries):
            continue
        if _alive(path):
            continue
        yield path, entries


def record_from_journal(entries: list[dict[str, Any]], run_dir: Path) -> RunRecord:
    """The run record of an interrupted run: what finished, and everything else not run."""
    head = entries[0]
    finished = [AttemptRecord(**e["record"]) for e in entries if e.get("kind") == "finished"]
    done = {(a.shard_id, a.attempt) for a in finished}
    last = max([head.get("started", 0.0)] + [e.get("at", 0.0) for e in entries if e.get("kind") == "started"]
               + [a.ended for a in finished])
    try:
        last = max(last, (run_dir / JOURNAL).stat().st_mtime)
    except OSError:
        pass
    attempts = list(finished)
    for e in entries:
        if e.get("kind") == "started" and (e["shard_id"], e["attempt"]) not in done:
            attempts.append(AttemptRecord(
                shard_id=e["shard_id"], attempt=e["attempt"], machine=e["machine"], outcome="cancelled",
                started=e["at"], ended=last, reason=INTERRUPTED, log_path=e.get("log_path", ""),
                command=e.get("command", ""), speculative=bool(e.get("speculative"))))
    shards = []
    for s in head.get("shards", []):
        mine = [a for a in finished if a.shard_id == s["id"]]
        if any(a.outcome == "passed" for a in mine):
            state, reason = "passed", ""
        elif mine and mine[-1].outcome == "tests-failed":
            state, reason = "failed", mine[-1].reason
        else:
            state, reason = "not-run", INTERRUPTED
        shards.append(ShardRecord(id=s["id"], index=s["index"], total=s["total"], files=list(s["files"]),
                                  expected=s.get("expected"), state=state, reason=reason))
    machines = [MachineRecord(name=m["name"], slots=m["slots"], speed=m["speed"], status=m["status"],
                              reason=m.get("reason", "")) for m in head.get("machines", [])]
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last))
    return RunRecord(
        run_id=head["run_id"], started=head["started"], ended=last, argv=list(head.get("argv", [])),
        inventory=head.get("inventory", ""), strategy=head.get("strategy", ""), mode=head.get("mode", ""),
        command=head.get("command", ""), exit_code=130, machines=machines, shards=shards,
        attempts=sorted(attempts, key=lambda a: (a.started, a.shard_id)),
        expected_makespan=head.get("expected_makespan"), lower_bound=head.get("lower_bound"),
        run_dir=str(run_dir), commit=head.get("commit"),
        notes=[f"recovered from the run journal: the coordinator (pid {head.get('pid')}) stopped at about "
               f"{when} before the run ended (killed?); what had not finished is listed as not run"])


def recover_runs(base_dir: Path, history: Any) -> list[str]:
    """Record interrupted runs (coordinator gone) in history and write their report.json; their ids."""
    from . import results

    recovered = []
    for path, entries in interrupted_journals(base_dir / ".fleetshard" / "runs"):
        if any(e.get("kind") == "recovered" for e in entries):
            continue
        record = record_from_journal(entries, path.parent)
        try:
            results.write_json_report(record, path.parent / "report.json")
        except OSError:
            pass
        if history is not None:
            try:
                history.record_run(record)
            except Exception:  # history is reported unusable by its own callers
                continue
        _append(path, {"kind": "recovered", "at": time.time()})
        recovered.append(record.run_id)
    return recovered


SCAN_FRESH = 2.0           # seconds one look for interrupted runs serves every machine of a starting run
_scans: dict[Path, tuple[float, int, list[tuple[Path, list[dict[str, Any]]]]]] = {}


def _interrupted_now(runs_dir: Path) -> list[tuple[Path, list[dict[str, Any]]]]:
    """:func:`interrupted_journals`, looked up once for all the machines of a run that start together
    (again after SCAN_FRESH seconds, once a run directory was added, or after anything was appended)."""
    try:
        listed = runs_dir.stat().st_mtime_ns
    except OSError:
        listed = 0
    now = time.monotonic()
    hit = _scans.get(runs_dir)
    if hit is None or now - hit[0] > SCAN_FRESH or hit[1] != listed:
        hit = (now, listed, list(interrupted_journals(runs_dir)))
        _scans[runs_dir] = hit
    return hit[2]


def dead_runs_on(base_dir: Path, machine: str) -> list[tuple[Path, str]]:
    """Interrupted runs that used ``machine`` and whose processes there were not swept yet."""
    found = []
    for path, entries in _interrupted_now(base_dir / ".fleetshard" / "runs"):
        used = {e.get("machine") for e in entries if e.get("kind") == "started"}
        swept = {e.get("machine") for e in entries if e.get("kind") == "swept"}
        if machine in used and machine not in swept:
            found.append((path, str(entries[0]["run_id"])))
    return found


def mark_swept(path: Path, machine: str) -> None:
    _append(path, {"kind": "swept", "machine": machine, "at": time.time()})
