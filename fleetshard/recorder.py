"""The run record, built from the run's events, and the result files written from it.

:class:`Recorder` subscribes to the event stream like any view: every ``ShardFinished`` becomes one
:class:`AttemptRecord`. At the end it adds what the scheduler settled (shard states, queue times) and
the machines, and :func:`write_results` writes the JSON report, merged JUnit, HTML and history.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .context import RunContext
from .errors import HistoryError
from .events import Event, ShardFinished
from .model import Shard
from .record import AttemptRecord, MachineRecord, RunRecord, ShardRecord, redact_argv
from .scheduler import Scheduler


class Recorder:
    """A subscriber: one AttemptRecord per ShardFinished, in wall-clock time."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.attempts: list[AttemptRecord] = []

    def handle(self, event: Event) -> None:
        if isinstance(event, ShardFinished):
            wall = self.ctx.wall
            self.attempts.append(AttemptRecord(
                shard_id=event.shard.id, attempt=event.attempt, machine=event.machine, outcome=str(event.outcome),
                started=wall(event.started_at),
                ended=wall(event.at if event.ended_at is None else event.ended_at), exit_status=event.exit_status,
                signal=event.signal, reason=event.reason, log_path=event.log_path, junit_path=event.junit_path,
                speculative=event.speculative, command=event.command, artifacts=list(event.artifacts),
                released=wall(event.at)))

    def record(self, sched: Scheduler, shards: Sequence[Shard], machine_records: Sequence[MachineRecord],
               strategy: str, code: int, expected: float | None, lower: float | None) -> RunRecord:
        ctx = self.ctx
        shard_records = [
            ShardRecord(id=s.id, index=s.index, total=s.total, files=list(s.files), expected=s.expected,
                        state=str(sched.state(s.id)), reason=sched.not_run.get(s.id, ""), flaky=s.id in sched.flaky)
            for s in shards]
        states = {(r.shard_id, r.attempt): r for r in sched.records}
        for a in self.attempts:
            seen = states.get((a.shard_id, a.attempt))
            if seen is not None:
                a.queued, a.assigned = ctx.wall(seen.queued_at), ctx.wall(seen.assigned_at)
        return RunRecord(
            run_id=ctx.run_id, started=ctx.t0_wall, ended=time.time(), argv=redact_argv(ctx.opts.argv),
            inventory=str(ctx.inv.path), strategy=strategy, mode=ctx.suite.mode, command=ctx.suite.command,
            exit_code=code, machines=list(machine_records), shards=shard_records,
            attempts=sorted(self.attempts, key=lambda a: (a.started, a.shard_id)),
            expected_makespan=expected, lower_bound=lower, run_dir=str(ctx.run_dir), commit=ctx.commit,
            notes=list(ctx.notes), runner=ctx.suite.runner)


def write_results(ctx: RunContext, record: RunRecord, history: Any) -> None:
    """Result files, history, CI outputs, webhook: each failure is a notice, none loses the run."""
    from . import results
    from .ci import ci_outputs, notify
    from .report import write_html

    try:
        notes = results.tests_from_record(record, ctx.suite.adapter, ctx.listing)
        if ctx.suite.uses_junit:   # else "no JUnit" is expected, not news
            record.notes.extend(n for n in notes if n not in record.notes)
    except Exception as exc:  # a broken JUnit file is a note, never a lost run
        record.notes.append(f"JUnit not read: {exc}")
    opts = ctx.opts
    outputs: list[tuple[str, Callable[[], None]]] = [
        ("JSON report", lambda: results.write_json_report(record, ctx.run_dir / "report.json"))]
    if opts.junit:
        junit = opts.junit
        outputs.append(("JUnit", lambda: _merge(record, junit)))
    if opts.json_report:
        report = opts.json_report
        outputs.append(("JSON report", lambda: results.write_json_report(record, report)))
    if opts.html:
        html = opts.html
        outputs.append(("HTML report", lambda: write_html(record, html)))
    for what, write in outputs:
        try:
            write()
        except (OSError, ValueError) as exc:
            ctx.notice(f"{what} not written: {exc}", "error")
    if history is not None:
        try:
            history.record_run(record)
        except HistoryError as exc:
            ctx.notice(f"run not recorded in history: {exc} (results files were written)", "warning")
    ci_outputs(record, ctx.notice)
    notify(record, opts.notify or ctx.inv.notify, ctx.notice)


def _merge(record: RunRecord, out: Path) -> None:
    from . import results

    stats = results.merge_junit(record, out)
    for note in getattr(stats, "notes", []):
        if note not in record.notes:
            record.notes.append(note)
