"""Where one attempt's output goes: its log (every byte, long lines whole), its tail (the last lines,
each cut at LINE_LIMIT characters) and, with ``--stream``, the terminal (cut lines too).

The transport hands the output over as text in pieces of any size (see transport.base.OutputSink).
Nothing here may stop the channel being read: a log that cannot be written (a full disk) is one
warning and the rest of the log is dropped; a view that fails is one warning and streaming stops. The
tail and the verdict are kept either way. Memory is bounded whatever the length of a line.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from .transport.base import LINE_LIMIT, Lines, cut_line

TAIL_LINES = 20

Warn = Callable[[str], None]


class Tail:
    """The last ``n`` lines of a text stream, each cut at ``limit``; a line's cost is C-speed splitting."""

    def __init__(self, n: int = TAIL_LINES, limit: int = LINE_LIMIT) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=n)
        self.limit = limit
        self._partial = ""
        self._dropped = 0

    def write(self, text: str) -> None:
        if "\n" not in text:
            self._grow(text)
            return
        parts = text.split("\n")
        n = self.lines.maxlen or 0
        if len(parts) - 1 <= n:
            self._grow(parts[0])
            self._push(self._partial, self._dropped)
            first = 1
        else:
            first = len(parts) - 1 - n
        for line in parts[first:-1]:
            self._push(line, 0)
        self._partial, self._dropped = "", 0
        self._grow(parts[-1])

    def _grow(self, text: str) -> None:
        room = self.limit - len(self._partial)
        if room >= len(text):
            self._partial += text
        else:
            self._partial += text[:max(room, 0)]
            self._dropped += len(text) - max(room, 0)

    def _push(self, line: str, dropped: int) -> None:
        self.lines.append(cut_line(line[:-1] if line.endswith("\r") else line, self.limit, dropped))

    def flush(self) -> None:
        if self._partial or self._dropped:
            self._push(self._partial, self._dropped)
            self._partial, self._dropped = "", 0


class ShardOutput:
    """An OutputSink for one attempt. ``stream`` gets each line (cut) when the user asked for them."""

    def __init__(self, log_path: Path, warn: Warn, stream: Callable[[str], None] | None = None) -> None:
        self.log_path = log_path
        self.warn = warn
        self.tail = Tail()
        self.log: TextIO | None = None
        self.log_error: str | None = None
        self._stream = Lines(self._publish) if stream is not None else None
        self._on_line = stream
        try:
            self.log = open(log_path, "w", encoding="utf-8", errors="replace")  # noqa: SIM115 (closed in close())
        except OSError as exc:
            self._log_failed(exc)

    # -- the sink -------------------------------------------------------------------------------------
    def write(self, text: str) -> None:
        if self.log is not None:
            try:
                self.log.write(text)
            except (OSError, ValueError) as exc:
                self._log_failed(exc)
        self.tail.write(text)
        if self._stream is not None:
            self._stream.write(text)

    def flush(self) -> None:
        """The output ended: its last line without a newline is a line too."""
        self.tail.flush()
        if self._stream is not None:
            self._stream.flush()

    def _publish(self, line: str) -> None:
        if self._on_line is None:
            return
        try:
            self._on_line(line)
        except Exception as exc:  # a failing view stops streaming, never the reading
            self._stream = self._on_line = None
            self.warn(f"output of {self.log_path.name} no longer shown: {type(exc).__name__}: {exc}")

    # -- fleetshard's own lines in the log ------------------------------------------------------------
    def note(self, text: str) -> None:
        """A line of fleetshard's own (``# machine: command``, ``# outcome: reason``) in the log."""
        if self.log is not None:
            try:
                self.log.write(text + "\n")
            except (OSError, ValueError) as exc:
                self._log_failed(exc)

    def close(self) -> None:
        if self.log is not None:
            log, self.log = self.log, None
            try:
                log.close()
            except OSError as exc:
                self._log_failed(exc)
                try:
                    log.close()             # the buffer is gone after a failed flush; close the file
                except OSError:
                    pass

    def _log_failed(self, exc: BaseException) -> None:
        if self.log_error is None:
            reason = getattr(exc, "strerror", None) or str(exc)
            self.log_error = f"log {self.log_path} not fully written ({reason}): the rest of its output is dropped"
            self.warn(self.log_error)
        if self.log is not None:
            log, self.log = self.log, None
            try:
                log.close()
            except (OSError, ValueError):
                try:
                    log.close()
                except (OSError, ValueError):
                    pass
