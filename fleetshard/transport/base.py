"""The transport seam: what the runner and the probes need from a machine, and nothing more.

A command is always sent as one POSIX ``sh`` script built here with every user-supplied value passed
through :func:`shlex.quote`. The script starts the shard in the machine's workdir with the inventory's
env, reports its process-group id on the first output line, ``eval``s the command in that same shell (so
the reported id is the group every child of the shard belongs to), and reports the command's exit status
on a last marker line: a shard is over when its command is, even if a background child it forgot still
holds the output open.
"""

from __future__ import annotations

import asyncio
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

PGID_MARKER = "__fleetshard_pgid__"
EXIT_MARKER = "__fleetshard_exit__"
NODIR_MARKER = "__fleetshard_nodir__"
LINGER = 1.0            # seconds a finished shard's leftover children may keep its output open
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

LineHandler = Callable[[str], None]


@dataclass(frozen=True)
class ProcessResult:
    """How a process ended. ``exit_status`` is None when it never reported one."""

    exit_status: int | None
    signal: str | None = None
    error: str | None = None          # e.g. "connection lost: ..." when the channel died


class OutputParser:
    """Reads a shard's output lines: takes the wrapper's marker lines out, passes the rest on."""

    def __init__(self, on_line: LineHandler) -> None:
        self.on_line = on_line
        self.pgid: int | None = None
        self.exit_status: int | None = None
        self.nodir = False
        self.pgid_seen = asyncio.Event()
        self.exited = asyncio.Event()

    def feed(self, line: str) -> None:
        if self.pgid is None and not self.pgid_seen.is_set():
            self.pgid_seen.set()
            if line.startswith(PGID_MARKER):
                try:
                    self.pgid = int(line.split()[1])
                except (IndexError, ValueError):
                    pass
                return
        if line == NODIR_MARKER:
            self.nodir = True
            return
        before, marker, after = line.rpartition(EXIT_MARKER + " ")
        if marker and after.strip().isdigit():
            if before:
                self.on_line(before)              # the command's last output had no newline
            self.exit_status = int(after)
            self.exited.set()
            return
        self.on_line(line)

    def result(self, fallback: ProcessResult) -> ProcessResult:
        if self.nodir:
            return ProcessResult(None, None, "workdir is missing")
        if self.exit_status is not None:
            return ProcessResult(self.exit_status)
        return fallback

    def close(self) -> None:
        self.pgid_seen.set()


async def settle(reader: asyncio.Task[None], parser: OutputParser, kill_leftovers: Callable[[], object]) -> None:
    """Wait until the output ends, or until the command exited and its leftovers had LINGER seconds."""
    exited = asyncio.ensure_future(parser.exited.wait())
    try:
        await asyncio.wait({reader, exited}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        exited.cancel()
    if reader.done():
        return
    done, _ = await asyncio.wait({reader}, timeout=LINGER)
    if not done:
        await kill_leftovers()  # type: ignore[misc]
        done, _ = await asyncio.wait({reader}, timeout=LINGER)
        if not done:
            reader.cancel()


def remote_path(path: str) -> str:
    """A remote path as a shell word: a leading ``~`` expands remotely, the rest is quoted."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def _cd(workdir: str) -> str:
    return "cd " + remote_path(workdir)


def shell_wrapper(command: str, *, cwd: str | None = None, env: Mapping[str, str] | None = None,
                  report_pgid: bool = True) -> str:
    """The sh script that runs ``command`` (a shell line) in ``cwd`` with ``env``.

    ``command`` is a shell line on purpose (the suite's command template, whose placeholders were
    filled with quoted values); it is passed to ``eval`` as one quoted argument, never spliced.
    """
    parts: list[str] = []
    if cwd:
        fail = f"{{ echo {NODIR_MARKER}; exit 97; }}" if report_pgid else "exit 97"
        parts.append(f"{_cd(cwd)} || {fail}")
    for key, value in (env or {}).items():
        if not _ENV_NAME.fullmatch(key):
            raise ValueError(f"invalid environment variable name: {key!r}")
        parts.append(f"export {key}={shlex.quote(value)}")
    if report_pgid:
        # The exit status is reported by an EXIT trap, so it comes even when the command calls `exit`.
        parts.append(f"echo {PGID_MARKER} $$; trap 'echo {EXIT_MARKER} $?' EXIT")
    # eval, not `exec /bin/sh -c`: one shell fewer per shard (a fifth of the remote cost of a trivial
    # shard, bench/dispatch.py); the command still runs in the reported process group.
    parts.append("eval " + shlex.quote(command))
    return "; ".join(parts)



def kill_script(pgids: Sequence[int], signal: str, *, markers: Sequence[str] = ()) -> str:
    """Signal every listed process group (and the rest of its session, where pkill exists).

    Stopped processes get SIGCONT too, so a hung (SIGSTOPped) shard can act on TERM. Each marker is
    an environment assignment (``FLEETSHARD_RUN_ID=…``): on Linux, every process whose environment
    holds it is signalled as well, which catches children that left the group (daemonised browsers).
    """
    if signal not in {"TERM", "KILL", "INT", "HUP"}:
        raise ValueError(signal)
    cmds = []
    for pgid in pgids:
        pgid = int(pgid)
        cmds.append(f"kill -{signal} -{pgid} 2>/dev/null; pkill -{signal} -s {pgid} 2>/dev/null; "
                    f"kill -CONT -{pgid} 2>/dev/null")
    for marker in markers:
        cmds.append(
            f"for f in $(grep -lsa -e {shlex.quote(marker)} /proc/[0-9]*/environ 2>/dev/null); do "
            f"p=${{f#/proc/}}; p=${{p%/environ}}; [ \"$p\" = $$ ] || kill -{signal} \"$p\" 2>/dev/null; "
            f"kill -CONT \"$p\" 2>/dev/null; done")
    return "; ".join(cmds) + "; true"


class RemoteProcess(Protocol):
    """A running shard. Output arrives through the ``on_line`` handler given to ``start``."""

    @property
    def pgid(self) -> int | None: ...

    async def wait(self) -> ProcessResult: ...

    async def signal_group(self, signal: str) -> None: ...


class Transport(Protocol):
    """One machine. Every method is safe to call concurrently for many shards."""

    name: str

    async def connect(self) -> float:
        """Open the connection (if any) and return the seconds it took. Raises ConnectError."""
        ...

    async def start(self, command: str, *, cwd: str | None, env: Mapping[str, str],
                    on_line: LineHandler) -> RemoteProcess:
        """Start ``command`` (a shell line) in its own process group."""
        ...

    async def run(self, command: str, *, cwd: str | None = None, env: Mapping[str, str] | None = None,
                  stdin: str | None = None, timeout: float | None = None) -> tuple[ProcessResult, str]:
        """Run a short command to completion and return its result and combined output."""
        ...

    async def kill_groups(self, pgids: Sequence[int], signal: str, *, markers: Sequence[str] = ()) -> None:
        """Send ``signal`` to process groups, and to processes carrying a marker (see kill_script)."""
        ...

    async def get_file(self, remote: str, local: str) -> bool:
        """Copy a remote file (relative paths: to the login directory) to ``local``; False if absent."""
        ...

    async def put_file(self, local: str, remote: str) -> None: ...

    async def rtt(self) -> float:
        """One no-op round trip, in seconds."""
        ...

    async def close(self) -> None: ...
