"""Text from terminals and logs: the one pattern of ANSI escape sequences, a line made plain, the tail
of an attempt's log file. Used by the renderers, the reports and the JUnit writer alike."""

from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path

from .record import RunRecord

TERMINAL_TAIL_LINES = 10
"""Lines of a failed shard's log shown in the end-of-run summary."""

ANSI_RE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def clean_line(line: str) -> str:
    """One output line made safe for plain text: no escape sequences, no carriage returns, no controls.

    Of a line re-drawn with ``\\r`` (a progress bar), keeps what a terminal would finally show.
    """
    line = ANSI_RE.sub("", line).rstrip("\r\n")
    if "\r" in line:
        parts = [p for p in line.split("\r") if p]
        line = parts[-1] if parts else ""
    return _CONTROL_RE.sub("", line.replace("\t", "    "))


def strip_ansi(text: str) -> str:
    """``text`` without ANSI escape sequences (colours, cursor moves, titles)."""
    return ANSI_RE.sub("", text)


def local_path(path: str, record: RunRecord) -> Path:
    candidate = Path(path).expanduser()
    if candidate.is_absolute():
        return candidate
    if record.run_dir:
        in_run = Path(record.run_dir).expanduser() / candidate
        if in_run.exists():
            return in_run
    return Path.cwd() / candidate


def tail_lines(path: Path, count: int) -> list[str] | None:
    """The last ``count`` lines of a text file, ANSI escapes removed; None when it cannot be read."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 256 * 1024))
            data = fh.read()
    except OSError:
        return None
    lines = ANSI_RE.sub("", data.decode("utf-8", errors="replace")).replace("\r\n", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    from .transport.base import cut_line

    return [cut_line(line) for line in lines[-count:]]


def fmt_time(ts: float, *, date: bool = False) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S")
