"""Persistent shells: one long-lived shell per slot runs shard after shard over one SSH channel.

A channel per shard costs a channel open and close, sshd's session set-up (a fork and the login
shell's exec) and the wrapper's own shells: on the test fleet about 5 ms of CPU on the machine and
2.5 ms on the coordinator for a trivial shard. A slot shell pays that once; each shard then costs two
forks of the shell on the machine and a message each way (about 3 ms and 1.2 ms; bench/dispatch.py).

The shell is bash with job control (``set -m``), so that every shard, a background job, runs in a
process group of its own: the group the wrapper reports and kill_script TERMs and KILLs. POSIX sh
has no way to make a process group without a terminal (``setsid`` would exec a program per shard),
so a machine without bash keeps a channel per shard (ssh.py).

Protocol. The coordinator writes the shard's wrapper script (transport.base.shell_wrapper: cd,
exports, process-group line, exit trap, eval of the command) after a header line that carries the
attempt's random token and the script's length in bytes::

    __fleetshard_run__ TOKEN LENGTH

The shell reads the script and starts a waiter for it (a job: a process group of its own), which
starts the shard as a job of its own (another group) and waits for it; the shell goes back to reading
its stdin. The shard reports its group and its exit status on the usual marker lines (OutputParser).
When it has ended, the waiter prints::

    __fleetshard_done__ TOKEN STATUS LEFT

STATUS is the shard's wait status (128+n: killed by signal n), LEFT is 1 when processes of its group
outlived it. The shard is over at that line. With LEFT=0 the shell takes the next shard; with LEFT=1
the leftovers' output still goes to the attempt for LINGER seconds, then the channel is closed, and
the shell ends them (below): a shard never leaves anything behind for the next one to inherit.

When its stdin closes (the coordinator closed the channel, or is gone: the connection of a SIGKILLed
coordinator drops), the shell TERMs the last waiter, which TERMs its shard's group, KILLs what is left
after 2 s, and exits: the wrapper watcher's guarantee, for every shard of the slot. Output written
between two shards (by a process that left its group) belongs to no attempt and is dropped; the marker
lines of an attempt carry its token, so nothing a test prints can pass for one.
"""

from __future__ import annotations

import asyncio
import shlex
import signal as signals
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncssh

from .base import CHUNK, LINGER, PREAMBLE_LIMIT, SIGNAL_WAIT, OutputParser, OutputTarget, ProcessResult, known_pgid

SLOT_MARKER = "__fleetshard_slot__"
NOSLOT_MARKER = "__fleetshard_noslot__"
DONE_MARKER = "__fleetshard_done__"

# The slot shell (bash); its variables start with fs_, and fd 19 is its queue (a FIFO it opened and
# unlinked): a forwarder copies the channel's stdin into it, and each shard's exit trap writes its wake
# line there, so one blocking read waits for "a script came" and "the shard ended" alike. A shard that
# ends without its trap (killed, or it exec'ed) is noticed by polling (POLL) or at the coordinator's
# poke after a kill. `read -N` reads a script in one go (a line-by-line read costs a system call per
# byte), in the C locale so that characters are bytes; the shard gets the caller's LC_ALL back. With
# job control on, `wait` also returns when a job stops: a stopped shard is not over.
SERVER = r"""
exec 2>/dev/null
set -m
case $- in *m*) ;; *) printf '%s %s\n' __fleetshard_noslot__ "$1"; exit 0 ;; esac
fs_d=$(mktemp -d) && mkfifo "$fs_d/q" && exec 19<>"$fs_d/q"
fs_rc=$?
rm -rf "$fs_d"
[ "$fs_rc" -eq 0 ] || { printf '%s %s\n' __fleetshard_noslot__ "$1"; exit 0; }
trap : PIPE HUP
{ cat; printf '\ne\n'; } >&19 &
exec </dev/null
fs_lc=${LC_ALL+set} fs_lcv=${LC_ALL-}
LC_ALL=C
fs_pg= fs_t= fs_last= fs_acc= fs_seen=$SECONDS fs_quiet=$2
fs_end() {
  wait "$fs_pg"; fs_s=$?
  kill -0 "$fs_pg" 2>/dev/null && return 0
  fs_left=0
  if kill -0 -- "-$fs_pg" 2>/dev/null; then fs_left=1; fs_last=$fs_pg; fi
  fs_pg=
  printf '__fleetshard_done__ %s %d %d\n' "$fs_t" "$fs_s" "$fs_left"
}
fs_reap() { [ -n "$fs_pg" ] && ! kill -0 "$fs_pg" 2>/dev/null && fs_end; }
fs_kill() { for fs_g in $fs_pg $fs_last; do kill "-$1" -- "-$fs_g"; kill -CONT -- "-$fs_g"; done 2>/dev/null; }
fs_any() { for fs_g in $fs_pg $fs_last; do kill -0 -- "-$fs_g" 2>/dev/null && return 0; done; return 1; }
printf '%s %s\n' __fleetshard_slot__ "$1"
while :; do
  if [ -n "$fs_pg" ]; then fs_to=POLL; else fs_to=1; fi
  IFS= read -r -t "$fs_to" -u 19 fs_l
  fs_rc=$?
  if [ "$fs_rc" -gt 128 ]; then
    fs_acc=$fs_acc$fs_l
    fs_reap
    [ $((SECONDS - fs_seen)) -gt "$fs_quiet" ] && break
    continue
  fi
  [ "$fs_rc" -eq 0 ] || break
  fs_seen=$SECONDS
  fs_l=$fs_acc$fs_l fs_acc=
  case $fs_l in
    "r "*)
      fs_l=${fs_l#r }
      fs_n=${fs_l#* } fs_l=${fs_l%% *}
      fs_x=
      IFS= read -r -N "$fs_n" -u 19 fs_x || break
      fs_reap
      [ -n "$fs_pg" ] && continue
      fs_t=$fs_l
      (
        if [ -n "$fs_lc" ]; then LC_ALL=$fs_lcv; else unset LC_ALL; fi
        eval "$fs_x"
      ) </dev/null &
      fs_pg=$! ;;
    "w $fs_t") [ -n "$fs_pg" ] && fs_end ;;
    p) fs_reap ;;
    e) break ;;
  esac
done
fs_kill TERM
fs_i=0
while fs_any && [ "$fs_i" -lt 20 ]; do sleep 0.1; fs_i=$((fs_i+1)); done
fs_kill KILL
""".replace("POLL", "0.25")

# What a shard's exit trap runs last: the wake line on the shell's queue.
WAKE = "; echo w {token} >&19"


def launcher(token: str, quiet: float = 30) -> str:
    """The sh line that starts the slot shell, or says it cannot (no bash, no job control). The shell
    gives up (as at the end of its input) after ``quiet`` seconds without a line from the coordinator,
    which pokes it more often than that (SshTransport): a coordinator cut off by a partition leaves
    nothing running there, even where sshd never notices that the connection is dead."""
    return (f"unset BASH_ENV ENV; command -v bash >/dev/null 2>&1 || {{ echo {NOSLOT_MARKER} {token}; exit 0; }}; "
            f"exec bash --noprofile --norc -c {shlex.quote(SERVER)} fleetshard-slot {token} {int(quiet)}")


Kill = Callable[[Sequence[int], str], Awaitable[None]]


def _signal_name(number: int) -> str:
    try:
        return signals.Signals(number).name.removeprefix("SIG")
    except ValueError:
        return str(number)


def _partial(data: bytes, prefix: bytes) -> int:
    """How many bytes at the end of ``data`` may begin ``prefix`` (held back until the next read)."""
    if data.find(prefix[:1], max(0, len(data) - len(prefix) + 1)) < 0:
        return 0
    for n in range(min(len(prefix) - 1, len(data)), 0, -1):
        if data.endswith(prefix[:n]):
            return n
    return 0


class SlotShell:
    """One slot shell on its channel: runs one shard at a time, reads the channel for all of them."""

    def __init__(self, proc: Any, token: str, *, kill: Kill, release: Callable[[], None],
                 lost: Callable[[], str | None], idle: Callable[[SlotShell], None]) -> None:
        self.proc = proc
        self.kill = kill
        self._release = release
        self._lost = lost
        self._idle = idle
        self.current: SlotProcess | None = None
        self.closed = False
        self.error: str | None = None
        self.said_no = False                 # the machine cannot run one (no bash, no job control)
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._hello = f"{SLOT_MARKER} {token}\n".encode()
        self._no = f"{NOSLOT_MARKER} {token}\n".encode()
        self._pre = b""
        self._released = False
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                data = await self.proc.stdout.read(CHUNK)
                if not data:
                    break
                self._feed(data)
        except (asyncssh.Error, OSError) as exc:
            text = str(exc).strip() or type(exc).__name__
            self.error = f"connection lost: {text.splitlines()[0]}"
        finally:
            self._ended()

    def _feed(self, data: bytes) -> None:
        if not self.ready.done():
            pre = self._pre + data
            if self._hello in pre:
                self._pre = b""
                self.ready.set_result(True)
            elif self._no in pre or len(pre) > PREAMBLE_LIMIT:
                self.said_no = True
                self.ready.set_result(False)
            else:
                self._pre = pre
            return
        if self.current is not None:
            self.current.feed(data)
        # Otherwise: written between two shards by a process that left its group; no attempt's output.

    def _ended(self) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_result(False)
        if self.current is not None:
            self.current.channel_ended(self.error or self._lost() or "connection lost")
        self._free()

    def _free(self) -> None:
        if not self._released:
            self._released = True
            self._release()

    def start(self, script: str, token: str, on_line: OutputTarget) -> SlotProcess:
        if self.current is not None or self.closed:
            raise RuntimeError("slot shell busy or closed")
        proc = SlotProcess(self, token, on_line)
        self.current = proc
        body = script.encode()
        self.proc.stdin.write(f"r {token} {len(body)}\n".encode() + body)
        return proc

    def poke(self) -> None:
        """Have the shell look at once whether its shard has ended (after a kill: no exit trap ran)."""
        if not self.closed and not self.proc.is_closing():
            self.proc.stdin.write(b"p\n")

    def finished(self, proc: SlotProcess, reusable: bool) -> None:
        if self.current is proc:
            self.current = None
        if reusable and not self.closed:
            self._idle(self)
        else:
            self.close()

    def close(self) -> None:
        """End the shell: its stdin closes, it stops what is left of its shards and exits."""
        self.closed = True
        try:
            if not self.proc.is_closing():
                self.proc.close()
        except Exception:  # pragma: no cover - a channel of a dead connection
            pass
        self._free()


class SlotProcess:
    """A shard running in a slot shell (a RemoteProcess)."""

    def __init__(self, shell: SlotShell, token: str, on_line: OutputTarget) -> None:
        self._shell = shell
        self._parser = OutputParser(on_line, token)
        self._prefix = f"{DONE_MARKER} {token} ".encode()
        self._held = b""
        self._done: tuple[int, bool] | None = None
        self._result: asyncio.Future[ProcessResult] = asyncio.get_running_loop().create_future()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def pgid(self) -> int | None:
        return self._parser.pgid

    def write(self, text: str) -> None:
        """Nothing: a shard's stdin is /dev/null (stdin=True starts never use a slot shell)."""

    def close_stdin(self) -> None:
        """Nothing (see write)."""

    # -- the channel's bytes, up to this shard's done line ----------------------------------------
    def feed(self, data: bytes) -> None:
        if self._result.done():
            return
        if self._done is not None:             # leftovers lingering: their output is still this attempt's
            self._parser.feed_bytes(data)
            return
        data, self._held = self._held + data, b""
        prefix = self._prefix
        start = 0
        while True:
            i = data.find(prefix, start)
            if i < 0:
                break
            j = data.find(b"\n", i + len(prefix))
            if j < 0:
                if len(data) - i - len(prefix) <= 8:        # the rest of the line may follow
                    self._parser.feed_bytes(data[:i])
                    self._held = data[i:]
                    return
                start = i + 1
                continue
            fields = data[i + len(prefix):j].split(b" ")
            if len(fields) == 2 and all(f.isdigit() and len(f) <= 3 for f in fields):
                self._parser.feed_bytes(data[:i])
                self._on_done(int(fields[0]), fields[1] == b"1", data[j + 1:])
                return
            start = i + 1
        n = _partial(data, prefix)
        if n:
            self._held = data[-n:]
            data = data[:-n]
        if data:
            self._parser.feed_bytes(data)

    def _on_done(self, status: int, left: bool, rest: bytes) -> None:
        self._done = (status, left)
        if not left:
            self._finish(True)
            return
        if rest:
            self._parser.feed_bytes(rest)
        # Leftovers: LINGER seconds, then the channel closes and the shell ends them (TERM, then KILL).
        self._set_timer(LINGER, lambda: self._finish(False))

    def channel_ended(self, reason: str) -> None:
        if self._done is None and self._held:
            self._parser.feed_bytes(self._held)
            self._held = b""
        self._finish(False, ProcessResult(None, None, reason))

    def _set_timer(self, delay: float, callback: Callable[[], None]) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(delay, callback)

    def _finish(self, reusable: bool, fallback: ProcessResult | None = None) -> None:
        if self._result.done():
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._parser.close()
        if self._done is not None:
            status = self._done[0]
            if status > 128:
                fallback = ProcessResult(None, _signal_name(status - 128))
                if self._parser.exit_status != status:
                    # bash runs the exit trap when a signal kills it, with the status before the signal:
                    # its exit line is no exit of the command.
                    self._parser.exit_status = None
            else:
                fallback = ProcessResult(status)
        elif fallback is None:
            fallback = ProcessResult(None, None, "connection lost: no exit status from the machine")
        self._result.set_result(self._parser.result(fallback))
        self._shell.finished(self, reusable)

    # -- RemoteProcess -----------------------------------------------------------------------------
    async def wait(self) -> ProcessResult:
        return await asyncio.shield(self._result)

    async def signal_group(self, signal: str) -> None:
        pgid = await known_pgid(self._parser)
        if pgid is not None:
            await self._shell.kill([pgid], signal)
        if signal == "KILL":
            self.killed()

    def killed(self) -> None:
        """Its group was sent KILL: it is reaped at once, so no done line within SIGNAL_WAIT means the
        shell itself is stuck or gone; the channel is given up then (closing it ends what is left)."""
        if not self._result.done() and self._timer is None:
            self._set_timer(SIGNAL_WAIT, lambda: self._finish(False))
