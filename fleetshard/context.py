"""What every part of one run shares: its options, identity, clock, suite and the one event queue.

A :class:`RunContext` holds no machine, shard or attempt state: those have their owners (the machine
handles, the attempts, the scheduler). Producers hand their events to :meth:`RunContext.emit`; only the
coordinator loop takes them off the queue and fans them out to the subscribers.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .inventory import Inventory

if TYPE_CHECKING:
    from .runners import Listing
    from .suite import Suite


@dataclass(frozen=True)
class RunOptions:
    """Everything `fleetshard run` and `fleetshard plan` take from the command line."""

    selector: str | None = None
    max_retries: int | None = None
    strategy: str | None = None
    shards: int | None = None
    skip_health_checks: bool = False
    fail_fast: bool = False
    retry_failed_tests: int = 0
    timeout: float | None = None
    speculate: bool = False
    junit: Path | None = None
    json_report: Path | None = None
    html: Path | None = None
    live: bool | None = None
    stream: bool = False
    quiet: bool = False
    verbose: bool = False
    resume: str | None = None
    dry_run: bool = False
    as_json: bool = False             # plan --json: the plan as JSON on stdout
    keep_remote_dir: bool = False     # keep each machine's .fleetshard/<run id>/ (debugging)
    commit: str | None = None
    notify: str | None = None
    accept_new_host_keys: bool = False
    command: str | None = None
    argv: tuple[str, ...] = ()
    console: Any = None               # a rich Console to render on (tests); default stdout
    backoff_jitter: bool = True
    serve: str | None = None          # [HOST:]PORT of the live dashboard (--serve)
    serve_grace: float = 30.0         # after the run, serve the report this long at most while pages are open


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


@dataclass
class RunContext:
    inv: Inventory
    opts: RunOptions
    suite: Suite
    clock: Callable[[], float] = time.monotonic
    run_id: str = field(default_factory=new_run_id)
    commit: str | None = None
    timeout: float | None = None      # per attempt; None = no limit
    kill_grace: float = 10.0          # seconds between TERM and KILL
    hurry: bool = False               # a second Ctrl-C: KILL at once, no grace period
    notes: list[str] = field(default_factory=list)     # for the run record ("no JUnit from s003")
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    output: bool = False              # emit OutputLine events (a subscriber wants the output)
    t0: float = 0.0
    t0_wall: float = 0.0
    listing: Listing | None = None    # the runner's own listing, from discovery (runner suites)
    warned: set[str] = field(default_factory=set)   # kinds of warning already shown (once per run)

    def __post_init__(self) -> None:
        self.t0 = self.clock()
        self.t0_wall = time.time()
        self.kill_grace = self.suite.config.kill_grace

    def now(self) -> float:
        return self.clock()

    def wall(self, t: float) -> float:
        """A monotonic timestamp of this run as wall-clock seconds since the epoch."""
        return self.t0_wall + (t - self.t0)

    @property
    def run_dir(self) -> Path:
        return self.inv.base_dir / ".fleetshard" / "runs" / self.run_id

    def emit(self, event: Any) -> None:
        """Put an event (or a scheduler input) on the run's one queue; the coordinator loop takes it off,
        feeds the scheduler and hands it to the subscribers."""
        self.queue.put_nowait(event)

    def notice(self, text: str, level: str = "info", machine: str | None = None) -> None:
        from .events import Notice

        self.emit(Notice(text=text, at=self.now(), level=level, machine=machine))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def warn_once(self, kind: str, text: str) -> None:
        """A warning shown once per run per kind (a full disk fails every log; say it once), and noted."""
        if kind not in self.warned:
            self.warned.add(kind)
            self.notice(text, "warning")
            self.note(text)

    def token(self, shard_id: str, attempt: int) -> str:
        return f"{self.run_id}.{shard_id}.{attempt}."
