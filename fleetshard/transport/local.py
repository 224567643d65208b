"""The ``local`` transport: the same interface as SSH, with subprocesses on this machine."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal as signal_mod
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..inventory import Machine
from .base import (
    SIGNAL_WAIT,
    OutputParser,
    OutputTarget,
    ProcessResult,
    kill_script,
    new_token,
    pump,
    settle,
    shell_wrapper,
)


def _expand(path: str) -> str:
    return os.path.expanduser(path)


class LocalProcess:
    def __init__(self, proc: asyncio.subprocess.Process, on_line: OutputTarget, token: str) -> None:
        self._proc = proc
        self.pgid: int | None = proc.pid          # start_new_session: pid == pgid == sid
        self._parser = OutputParser(on_line, token)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._proc.stdout is not None
        await pump(self._proc.stdout.read, self._parser)

    async def wait(self) -> ProcessResult:
        try:
            await settle(self._reader, self._parser, lambda: self.signal_group("TERM"))
            try:
                status = await asyncio.wait_for(self._proc.wait(), SIGNAL_WAIT)
            except TimeoutError:                  # the shell itself does not end: KILL its group
                await self.signal_group("KILL")
                status = await self._proc.wait()
        finally:
            self._close_stdin()
        if status < 0:
            fallback = ProcessResult(None, signal_mod.Signals(-status).name.removeprefix("SIG"))
        else:
            fallback = ProcessResult(status)
        return self._parser.result(fallback)

    def write(self, text: str) -> None:
        if self._proc.stdin is not None and not self._proc.stdin.is_closing():
            self._proc.stdin.write(text.encode())

    def close_stdin(self) -> None:
        self._close_stdin()

    def _close_stdin(self) -> None:
        """The session's end, as the wrapper's watcher sees it: it kills what is left of the group."""
        if self._proc.stdin is not None and not self._proc.stdin.is_closing():
            self._proc.stdin.close()

    async def signal_group(self, signal: str) -> None:
        if self.pgid is None:
            return
        sig = getattr(signal_mod, "SIG" + signal)
        for s in (sig, signal_mod.SIGCONT):
            try:
                os.killpg(self.pgid, s)
            except (ProcessLookupError, PermissionError):
                return


class LocalTransport:
    """Runs shards as subprocesses of this machine, each in its own session."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.name = machine.name

    async def connect(self) -> float:
        return 0.0

    async def _spawn(self, command: str, cwd: str | None, env: Mapping[str, str] | None,
                     token: str | None, stdin: bool = False, watch: bool = False) -> asyncio.subprocess.Process:
        script = shell_wrapper(command, cwd=_expand(cwd) if cwd else None, env=env, token=token, watch=watch)
        return await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", script,
            stdin=asyncio.subprocess.PIPE if stdin or watch else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True)

    async def start(self, command: str, *, cwd: str | None, env: Mapping[str, str],
                    on_line: OutputTarget, stdin: bool = False) -> LocalProcess:
        token = new_token()
        proc = await self._spawn(command, cwd, env, token=token, stdin=stdin, watch=not stdin)
        return LocalProcess(proc, on_line, token)

    async def run(self, command: str, *, cwd: str | None = None, env: Mapping[str, str] | None = None,
                  stdin: str | None = None, timeout: float | None = None) -> tuple[ProcessResult, str]:
        proc = await self._spawn(command, cwd, env, token=None, stdin=stdin is not None)
        try:
            out, _ = await asyncio.wait_for(
                proc.communicate(stdin.encode() if stdin is not None else None), timeout)
        except asyncio.CancelledError:            # Ctrl-C cutting a teardown: its group goes too
            try:
                os.killpg(proc.pid, signal_mod.SIGKILL)
            except ProcessLookupError:
                pass
            raise
        except TimeoutError:
            try:
                os.killpg(proc.pid, signal_mod.SIGKILL)
            except ProcessLookupError:
                pass
            await proc.wait()
            return ProcessResult(None, "KILL", f"timed out after {timeout:g} s"), ""
        status = proc.returncode
        assert status is not None
        if status < 0:
            return ProcessResult(None, signal_mod.Signals(-status).name.removeprefix("SIG")), out.decode(
                "utf-8", "replace")
        return ProcessResult(status), out.decode("utf-8", "replace")

    async def kill_groups(self, pgids: Sequence[int], signal: str, *, markers: Sequence[str] = ()) -> None:
        sig = getattr(signal_mod, "SIG" + signal)
        for pgid in pgids:
            for s in (sig, signal_mod.SIGCONT):
                try:
                    os.killpg(pgid, s)
                except (ProcessLookupError, PermissionError):
                    break
        if markers:
            await self.run(kill_script([], signal, markers=markers), timeout=10)

    def _path(self, remote: str) -> Path:
        path = Path(_expand(remote))
        return path if path.is_absolute() else Path.home() / path

    async def get_file(self, remote: str, local: str) -> bool:
        src = self._path(remote)
        if not src.is_file():
            return False
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(shutil.copyfile, src, local)
        return True

    async def put_file(self, local: str, remote: str) -> None:
        dst = self._path(remote)
        dst.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(shutil.copyfile, local, dst)

    async def rtt(self) -> float:
        start = time.perf_counter()
        await asyncio.sleep(0)
        return time.perf_counter() - start

    async def close(self) -> None:
        return None
