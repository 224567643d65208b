"""The one way fleetshard makes a rich Console for its output.

Standard output is wrapped so that a closed or failing terminal (``fleetshard run | head -3``, a full
disk behind a redirection) is one warning on stderr, after which the output is dropped: the run goes
on, is recorded, and exits with the code it would have had.
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

from rich.console import Console

LOG_WIDTH = 140     # a CI log is not a terminal: never squash tables to 80 columns there


class SafeStream:
    """A text stream that stops writing, with one warning, when its first write or flush fails."""

    def __init__(self, stream: TextIO, name: str = "stdout") -> None:
        self._stream = stream
        self._name = name
        self.failed: str | None = None

    def _fail(self, exc: OSError) -> None:
        if self.failed is None:
            self.failed = exc.strerror or str(exc)
            try:
                sys.stderr.write(f"fleetshard: warning: {self._name} not writable ({self.failed}): its output "
                                 f"is dropped; the run goes on and is recorded\n")
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            silence(self._stream)

    def write(self, text: str) -> int:
        if self.failed is None:
            try:
                self._stream.write(text)
            except (OSError, ValueError) as exc:
                self._fail(exc if isinstance(exc, OSError) else OSError(str(exc)))
        return len(text)

    def flush(self) -> None:
        if self.failed is None:
            try:
                self._stream.flush()
            except (OSError, ValueError) as exc:
                self._fail(exc if isinstance(exc, OSError) else OSError(str(exc)))

    def isatty(self) -> bool:
        try:
            return self.failed is None and self._stream.isatty()
        except (OSError, ValueError):
            return False

    def fileno(self) -> int:
        return self._stream.fileno()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def silence(stream: TextIO) -> None:
    """Point a broken stream's file descriptor at /dev/null, so that writes (and the interpreter's
    flush at exit) no longer fail."""
    try:
        fd = stream.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError, AttributeError):
        return
    try:
        os.dup2(devnull, fd)
    except OSError:
        pass
    finally:
        os.close(devnull)


_stdout: SafeStream | None = None


def safe_stdout() -> TextIO:
    """sys.stdout behind one shared SafeStream (one warning per process, whoever writes)."""
    global _stdout
    if _stdout is None or _stdout._stream is not sys.stdout:
        _stdout = SafeStream(sys.stdout)
    return _stdout  # type: ignore[return-value]


def make_console(file: TextIO | None = None) -> Console:
    console = Console(file=file or safe_stdout(), highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, LOG_WIDTH)
    return console
