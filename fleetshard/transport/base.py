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
import codecs
import re
import secrets
import shlex
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

PGID_MARKER = "__fleetshard_pgid__"
EXIT_MARKER = "__fleetshard_exit__"
NODIR_MARKER = "__fleetshard_nodir__"
LINGER = 1.0            # seconds a finished shard's leftover children may keep its output open
LINE_LIMIT = 4096       # characters of one line kept for the terminal, the tail and JUnit excerpts
CHUNK = 1 << 18         # bytes read from a channel at a time
PREAMBLE_LIMIT = 1 << 16  # bytes looked through for the process-group line before giving up on it
SIGNAL_WAIT = 10.0      # seconds a kill waits for the process-group line it needs
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

LineHandler = Callable[[str], None]


@runtime_checkable
class OutputSink(Protocol):
    """Where a shard's output goes: its text in order, in pieces of any size (not split at lines)."""

    def write(self, text: str) -> None: ...


OutputTarget = LineHandler | OutputSink


def new_token() -> str:
    """A per-attempt random token: marker lines carry it, so no output of a test can pass for one."""
    return secrets.token_hex(8)


@dataclass(frozen=True)
class ProcessResult:
    """How a process ended. ``exit_status`` is None when it never reported one."""

    exit_status: int | None
    signal: str | None = None
    error: str | None = None          # e.g. "connection lost: ..." when the channel died
    warning: str | None = field(default=None, compare=False)   # e.g. the output could not be kept


def cut_line(line: str, limit: int = LINE_LIMIT, dropped: int = 0) -> str:
    """A line as the terminal, the tail and JUnit excerpts show it: at most ``limit`` characters."""
    extra = max(0, len(line) - limit) + dropped
    if not extra:
        return line
    return line[:limit] + f" … [{extra} more characters]"


class Lines:
    """Turns a text stream into lines for ``on_line``, each cut at ``limit`` characters; memory is
    bounded by the limit whatever the length of a line."""

    def __init__(self, on_line: LineHandler, limit: int = LINE_LIMIT) -> None:
        self.on_line = on_line
        self.limit = limit
        self._partial = ""
        self._dropped = 0

    def write(self, text: str) -> None:
        if "\n" not in text:
            self._add(text)
            return
        first, *middle, last = text.split("\n")
        self._add(first)
        self._emit()
        for line in middle:
            self.on_line(cut_line(line[:-1] if line.endswith("\r") else line, self.limit))
        self._add(last)

    def _add(self, text: str) -> None:
        room = self.limit - len(self._partial)
        if room >= len(text):
            self._partial += text
        else:
            self._partial += text[:max(room, 0)]
            self._dropped += len(text) - max(room, 0)

    def _emit(self) -> None:
        partial = self._partial[:-1] if self._partial.endswith("\r") else self._partial
        line = cut_line(partial, self.limit, self._dropped)
        self._partial, self._dropped = "", 0
        self.on_line(line)

    def flush(self) -> None:
        """The stream ended: a last line without a newline is a line too."""
        if self._partial or self._dropped:
            self._emit()


def as_sink(target: OutputTarget) -> OutputSink:
    if isinstance(target, OutputSink):
        return target
    return Lines(target)


NEWLINE_RELEASE = 0.05      # seconds a line's newline waits for the rest of a possible exit marker
_PGID_LINE = re.compile(rb"(?:^|\n)(__fleetshard_(pgid|nodir)__ ([0-9a-f]+)(?: ([0-9]+))?)\n")


class OutputParser:
    """Reads a shard's raw output: takes the wrapper's marker lines out, passes the rest on.

    A marker counts only as a whole line in the wrapper's format with this attempt's token, so
    nothing a test prints can pass for one. The wrapper prints the exit marker after a newline of
    its own: that newline is taken out with the marker, so output without a final newline is kept
    exactly. The sink is called from the channel reader: if it fails (a full disk, a closed terminal),
    the failure is kept as a warning and the output dropped; the reading goes on.
    """

    def __init__(self, target: OutputTarget, token: str) -> None:
        self.sink = as_sink(target)
        self.token = token
        self.pgid: int | None = None
        self.exit_status: int | None = None
        self.nodir = False
        self.pgid_seen = asyncio.Event()
        self.exited = asyncio.Event()
        self.sink_error: str | None = None
        self._exit_prefix = f"\n{EXIT_MARKER} {token} ".encode()
        self._held = b""
        self._held_sent = 0          # bytes of _held already delivered (a newline released by the timer)
        self._release: asyncio.TimerHandle | None = None
        self._preamble = True
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    # -- delivery ---------------------------------------------------------------------------------
    def _deliver(self, data: bytes, final: bool = False) -> None:
        if self.sink_error is not None:
            return
        text = self._decoder.decode(data, final)
        if not text:
            return
        try:
            self.sink.write(text)
        except Exception as exc:  # the sink's failure must never stop the reading
            self.sink_error = f"output not kept after {type(exc).__name__}: {exc}"

    # -- parsing ----------------------------------------------------------------------------------
    def feed_bytes(self, chunk: bytes) -> None:
        if self._release is not None:
            self._release.cancel()
            self._release = None
        data = self._held + chunk
        sent, self._held, self._held_sent = self._held_sent, b"", 0
        if self._preamble:
            data = self._scan_preamble(data)
            if self._preamble:
                return
        if self.exited.is_set():
            self._deliver(data[sent:])
            return
        prefix = self._exit_prefix
        start = 0
        while True:
            i = data.find(prefix, start)
            if i < 0:
                break
            j = data.find(b"\n", i + len(prefix))
            if j < 0:
                if len(data) - i - len(prefix) <= 4:    # the rest of a marker line may follow
                    self._deliver(data[sent:i])
                    self._held, self._held_sent = data[i:], max(0, sent - i)
                    return
                start = i + 1
                continue
            status = data[i + len(prefix):j]
            if status.isdigit() and len(status) <= 3:
                self._deliver(data[sent:i])
                self.exit_status = int(status)
                self.exited.set()
                self._deliver(data[j + 1:])
                return
            start = i + 1
        # Hold back what may be the start of a marker line split between two reads.
        k = data.rfind(b"\n")
        if k >= 0 and len(data) - k <= len(prefix) + 4:
            tail = data[k:]
            if prefix.startswith(tail) or tail.startswith(prefix):
                self._deliver(data[sent:k])
                self._held, self._held_sent = tail, max(0, sent - k)
                if tail == b"\n" and not self._held_sent:
                    self._release_later()
                return
        self._deliver(data[sent:])

    def _release_later(self) -> None:
        """A held newline usually ends a line of output: deliver it if no read follows at once, so a
        line is never kept back until the command prints the next one. It stays held for matching: if
        it was the marker's own newline after all, it only ended the command's last line early."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:                       # fed outside an event loop (tests): wait for more
            return
        self._release = loop.call_later(NEWLINE_RELEASE, self._release_newline)

    def _release_newline(self) -> None:
        self._release = None
        if self._held == b"\n" and not self._held_sent:
            self._deliver(self._held)
            self._held_sent = 1

    def _scan_preamble(self, data: bytes) -> bytes:
        """Before the command starts: the process-group line (or the missing-workdir line)."""
        for m in _PGID_LINE.finditer(data):
            if m.group(3).decode() != self.token:
                continue
            if m.group(2) == b"pgid" and m.group(4) is not None:
                self.pgid = int(m.group(4))
            elif m.group(2) == b"nodir" and m.group(4) is None:
                self.nodir = True
            else:
                continue
            self._preamble = False
            self.pgid_seen.set()
            self._deliver(data[:m.start(1)])
            return data[m.end():]
        if len(data) > PREAMBLE_LIMIT:             # something else printed first; the group stays unknown
            self._preamble = False
            self.pgid_seen.set()
            return data
        self._held = data
        return b""

    def feed(self, line: str) -> None:
        """One line of output (tests and simple callers)."""
        self.feed_bytes(line.encode() + b"\n")

    def result(self, fallback: ProcessResult) -> ProcessResult:
        warning = self.sink_error
        if self.nodir:
            return ProcessResult(None, None, "workdir is missing", warning)
        if self.exit_status is not None:
            return ProcessResult(self.exit_status, warning=warning)
        if warning and fallback.warning is None:
            return ProcessResult(fallback.exit_status, fallback.signal, fallback.error, warning)
        return fallback

    def close(self) -> None:
        """The output ended: deliver what was held back, end the last line."""
        if self._release is not None:
            self._release.cancel()
            self._release = None
        if self._held:
            held, sent, self._held, self._held_sent = self._held, self._held_sent, b"", 0
            self._preamble = False
            self._deliver(held[sent:])
        self._deliver(b"", final=True)
        flush = getattr(self.sink, "flush", None)
        if flush is not None and self.sink_error is None:
            try:
                flush()
            except Exception as exc:
                self.sink_error = f"output not kept after {type(exc).__name__}: {exc}"
        self.pgid_seen.set()


async def known_pgid(parser: OutputParser) -> int | None:
    """The process group the wrapper reported on its first line, waited for at most SIGNAL_WAIT seconds
    (None: it never came)."""
    try:
        await asyncio.wait_for(parser.pgid_seen.wait(), SIGNAL_WAIT)
    except TimeoutError:
        pass
    return parser.pgid


async def pump(read: Callable[[int], Awaitable[bytes]], parser: OutputParser) -> None:
    """Read a process's output by chunks into ``parser`` until it ends (a line may be longer than any
    buffer), then close the parser, whatever the reading raised."""
    try:
        while True:
            data = await read(CHUNK)
            if not data:
                break
            parser.feed_bytes(data)
    finally:
        parser.close()


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
                  token: str | None = None, watch: bool = False, pid: str = "$$", wake: str = "") -> str:
    """The sh script that runs ``command`` (a shell line) in ``cwd`` with ``env``.

    ``command`` is a shell line on purpose (the suite's command template, whose placeholders were
    filled with quoted values); it is passed to ``eval`` as one quoted argument, never spliced.

    With a ``token`` (a shard), the script reports its process group first and the command's exit
    status last, on marker lines that carry the token. With ``watch``, a watcher reads the session's
    stdin, which the coordinator holds open and never writes: when it closes (the coordinator is
    gone, or closed the channel), the watcher TERMs the script's process group, then KILLs it; the
    command itself gets /dev/null as its stdin.

    ``pid`` is the shell word the process-group line reports: ``$$`` for a shell that sshd started
    (a session and group leader), ``$BASHPID`` for a job of a slot shell (see slots.py); ``wake`` is
    a command the exit trap runs last (a slot shell's job tells its shell it is over).
    """
    parts: list[str] = ["exec 2>&1"]          # one stream, in the order things were written
    if cwd:
        fail = f"{{ echo {NODIR_MARKER} {token}; exit 97; }}" if token else "exit 97"
        parts.append(f"{_cd(cwd)} 2>/dev/null || {fail}")
    for key, value in (env or {}).items():
        if not _ENV_NAME.fullmatch(key):
            raise ValueError(f"invalid environment variable name: {key!r}")
        parts.append(f"export {key}={shlex.quote(value)}")
    if token is not None and not re.fullmatch(r"[0-9a-f]+", token):
        raise ValueError(f"invalid token: {token!r}")
    if token:
        parts.append(f"echo {PGID_MARKER} {token} {pid}")
    if watch:
        # A background list's stdin is /dev/null unless redirected: the session's stdin goes through fd 3.
        parts.append("exec 3<&0 </dev/null")
        parts.append("( trap '' TERM INT HUP; while read -r _; do :; done; "
                     "kill -TERM -$$; kill -CONT -$$; sleep 2; kill -KILL -$$ ) <&3 >/dev/null 2>&1 &"
                     " fleetshard_w=$!; exec 3<&-")
    # The script ends normally: its watcher goes with it (leftover children are the coordinator's job).
    unwatch = "kill -KILL $fleetshard_w 2>/dev/null; " if watch else ""
    if token:
        # An EXIT trap reports the status even when the command calls `exit`; the newline before the
        # marker puts it on a line of its own when the command's output did not end with one.
        parts.append(f"trap 'fleetshard_s=$?; {unwatch}"
                     f"printf \"\\n{EXIT_MARKER} {token} %d\\n\" $fleetshard_s{wake}' EXIT")
    elif watch:
        parts.append(f"trap 'fleetshard_s=$?; {unwatch}exit $fleetshard_s' EXIT")
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
            f"for f in $(grep -lsaF -e {shlex.quote(marker)} /proc/[0-9]*/environ 2>/dev/null); do "
            f"p=${{f#/proc/}}; p=${{p%/environ}}; [ \"$p\" = $$ ] || kill -{signal} \"$p\" 2>/dev/null; "
            f"kill -CONT \"$p\" 2>/dev/null; done")
    return "; ".join(cmds) + "; true"


class RemoteProcess(Protocol):
    """A running shard. Output arrives through the ``on_line`` handler given to ``start``.

    Started with ``stdin=True``, ``write`` sends text to the command's stdin and ``close_stdin`` ends it;
    otherwise stdin belongs to the wrapper's watcher and both do nothing."""

    @property
    def pgid(self) -> int | None: ...

    def write(self, text: str) -> None: ...

    def close_stdin(self) -> None: ...

    async def wait(self) -> ProcessResult: ...

    async def signal_group(self, signal: str) -> None: ...


class Transport(Protocol):
    """One machine. Every method is safe to call concurrently for many shards."""

    name: str

    async def connect(self) -> float:
        """Open the connection (if any) and return the seconds it took. Raises ConnectError."""
        ...

    async def start(self, command: str, *, cwd: str | None, env: Mapping[str, str],
                    on_line: OutputTarget, stdin: bool = False) -> RemoteProcess:
        """Start ``command`` (a shell line) in its own process group; its output goes to ``on_line``
        (an OutputSink, or a callable that gets it line by line, cut at LINE_LIMIT).

        ``stdin=True``: the command reads the channel's stdin (see RemoteProcess.write) and has no
        watcher: it must end its own group when its stdin closes (the warm pytest worker does)."""
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
