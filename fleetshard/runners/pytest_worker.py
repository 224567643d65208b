"""fleetshard's warm pytest worker: a pytest plugin that runs on the machines (``suite.workers: warm``).

fleetshard copies this file into the run's directory on each machine and starts one pytest per slot
with ``-p fleetshard_worker``. That pytest starts once (imports, conftest, plugins) and then, instead of
collecting and running the whole suite, reads requests from its stdin, one JSON object per line:

    {"token": "...", "quiet": 60}                      first line: the token its messages carry, and
                                                       how long the coordinator may stay silent
    {"op": "ping"}                                     the coordinator is there (at least every quiet/4 s)
    {"op": "run", "id": 7, "args": ["tests/test_a.py"]}   collect these node ids or files, run them
    {"op": "quit"}                                     finish the session and exit

and answers on its stdout with lines ``__fleetshard_w__ <token> <json>``:

    {"ev": "ready", "pid": 123}                        started, waiting for work
    {"ev": "start", "id": 7, "test": "tests/test_a.py::test_x"}
    {"ev": "report", "id": 7, "test": "...", "when": "call", "outcome": "passed", "duration": 0.01}
    {"ev": "done", "id": 7, "status": 1, "junit": "<?xml ...>"}   pytest's exit code for the batch

Each batch is collected on its own (module and class fixtures run once per file; session fixtures live
as long as the worker) and gets a JUnit XML of its own, written by pytest's own junitxml writer.

A test's output never reaches the message stream: the messages go to a private copy of the original
stdout, and each carries the token, which only the coordinator and this process know. A watcher
process owns the channel's stdin and hands its lines on: when it closes (the coordinator is gone),
the watcher ends the worker's whole process group, even a stopped one.

Only the standard library and pytest are needed on the machine.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time
from typing import Any

import pytest

PREFIX = "__fleetshard_w__"
PLUGIN = "fleetshard_worker"


def _own_environment() -> None:
    """Tests that start pytest themselves must not get a worker: take this plugin out of the env."""
    addopts = os.environ.get("PYTEST_ADDOPTS", "")
    cleaned = addopts.replace(f"-p {PLUGIN}", "", 1).strip()
    if cleaned:
        os.environ["PYTEST_ADDOPTS"] = cleaned
    else:
        os.environ.pop("PYTEST_ADDOPTS", None)
    here = os.path.dirname(os.path.abspath(__file__))
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if parts and os.path.abspath(parts[0]) == here:
        parts = parts[1:]
        if parts:
            os.environ["PYTHONPATH"] = os.pathsep.join(parts)
        else:
            os.environ.pop("PYTHONPATH", None)


def _watch(stdin: int, forward: int, parent: int) -> None:
    """The watcher: stdin -> ``forward`` until stdin closes, then the worker's group goes. After the
    first line (the hello, which says how long the coordinator may stay silent: it pings more often),
    silence counts as a closed stdin too: a coordinator cut off by a partition, which sshd may never
    notice, leaves nothing running."""
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    # only stdin and the pipe stay open: the channel's output must close when the worker ends
    os.closerange(3, forward)
    os.closerange(forward + 1, 1 << 16)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    quiet: float | None = None
    heard = time.monotonic()
    first = b""
    while True:
        ready, _, _ = select.select([stdin], [], [], 1.0)
        if not ready:
            if os.getppid() != parent:            # the worker ended by itself
                os._exit(0)
            if quiet is not None and time.monotonic() - heard > quiet:
                break
            continue
        data = os.read(stdin, 1 << 16)
        if not data:
            break
        heard = time.monotonic()
        if quiet is None:
            first += data
            if b"\n" in first:
                try:
                    quiet = float(json.loads(first.split(b"\n", 1)[0]).get("quiet") or 0) or None
                except (ValueError, AttributeError):
                    pass
                quiet = quiet or 1e9
        try:
            while data:
                data = data[os.write(forward, data):]
        except OSError:
            os._exit(0)
    group = os.getpgrp()
    for sig in (signal.SIGTERM, signal.SIGCONT):
        try:
            os.killpg(group, sig)
        except OSError:
            pass
    time.sleep(2.0)
    try:
        os.killpg(group, signal.SIGKILL)
    except OSError:
        pass
    os._exit(0)


class _KeepSession:
    """The "next item" after a batch's last test: tear down everything but the session, so module and
    class fixtures end with their file while session fixtures serve the next batch too."""

    def __init__(self, session: pytest.Session) -> None:
        self.session = session

    def listchain(self) -> list[Any]:
        return [self.session]


class Worker:
    def __init__(self) -> None:
        _own_environment()
        self.out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
        read, write = os.pipe()
        parent = os.getpid()
        if os.fork() == 0:
            os.close(read)
            _watch(0, write, parent)
        os.close(write)
        self.requests = os.fdopen(read, "r", encoding="utf-8", errors="replace")
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)                  # tests read nothing from the coordinator's channel
        os.close(devnull)
        hello = self._read()
        self.token = str(hello.get("token", "")) if hello else ""
        self.batch: int | None = None
        self.reports: list[Any] = []

    def _read(self) -> dict[str, Any] | None:
        while True:
            line = self.requests.readline()
            if not line:
                return None
            line = line.strip()
            if not line:
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if isinstance(msg, dict):
                return msg

    def send(self, **msg: Any) -> None:
        self.out.write(f"\n{PREFIX} {self.token} {json.dumps(msg, separators=(',', ':'))}\n")
        self.out.flush()

    # -- pytest hooks ---------------------------------------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_collection(self, session: pytest.Session) -> bool:
        session.items = []                   # nothing up front: each batch collects what it runs
        return True

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool:
        self.send(ev="ready", pid=os.getpid())
        while True:
            msg = self._read()
            if msg is None or msg.get("op") == "quit":
                break
            if msg.get("op") == "run":
                self.run_batch(session, int(msg.get("id", 0)), [str(a) for a in msg.get("args", [])])
        return True

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.batch is None:
            return
        if report.when == "call" or report.outcome != "passed":
            self.send(ev="report", id=self.batch, test=report.nodeid, when=report.when, outcome=report.outcome,
                      duration=round(float(report.duration), 6))

    # -- one batch ------------------------------------------------------------------------------------
    def run_batch(self, session: pytest.Session, batch: int, args: list[str]) -> None:
        from _pytest.junitxml import LogXML

        config = session.config
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"junit-{os.getpid()}-{batch}.xml")
        xml = LogXML(path, config.option.junitprefix, config.getini("junit_suite_name"),
                     config.getini("junit_logging"), config.getini("junit_duration_report"),
                     config.getini("junit_family"), config.getini("junit_log_passing_tests"))
        config.pluginmanager.register(xml, f"fleetshard-junit-{batch}")
        xml.pytest_sessionstart()
        self.batch = batch
        session.testsfailed = 0
        for name in ("shouldstop", "shouldfail"):      # -x / --maxfail apply per shard, as in a plain run
            if hasattr(session, f"_{name}"):
                setattr(session, f"_{name}", False)   # pytest >= 8 refuses to unset them publicly
            else:
                setattr(session, name, False)
        status = 0
        ran = 0
        try:
            try:
                items = list(session.perform_collect(args))
            except pytest.UsageError as exc:
                sys.stderr.write(f"ERROR: {exc}\n")
                items, status = [], 4
            for i, item in enumerate(items):
                nextitem: Any = items[i + 1] if i + 1 < len(items) else _KeepSession(session)
                self.send(ev="start", id=batch, test=item.nodeid)
                item.config.hook.pytest_runtest_protocol(item=item, nextitem=nextitem)
                ran += 1
                if session.shouldfail or session.shouldstop:
                    break
            if status == 0:
                if session.testsfailed:
                    status = 1
                elif not items:
                    status = 5
        except KeyboardInterrupt:
            status = 2
        finally:
            self.batch = None
            config.pluginmanager.unregister(xml)
            junit = ""
            try:
                xml.pytest_sessionfinish()
                with open(path, encoding="utf-8") as f:
                    junit = f.read()
                os.unlink(path)
            except OSError as exc:
                sys.stderr.write(f"fleetshard worker: JUnit not written: {exc}\n")
            session.items = []
            self.send(ev="done", id=batch, status=status, ran=ran, junit=junit)


# Set up at import, which pytest does for ``-p`` plugins before it starts capturing output: the message
# stream is a copy of the real stdout, not of a capture file.
_WORKER: Worker | None = Worker() if os.environ.pop("FLEETSHARD_WARM_WORKER", "") == "1" else None


def pytest_configure(config: pytest.Config) -> None:
    if _WORKER is not None and not config.pluginmanager.has_plugin("fleetshard-worker"):
        config.pluginmanager.register(_WORKER, "fleetshard-worker")
