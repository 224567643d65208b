"""The one way fleetshard makes a rich Console for its output."""

from __future__ import annotations

import sys
from typing import TextIO

from rich.console import Console

LOG_WIDTH = 140     # a CI log is not a terminal: never squash tables to 80 columns there


def make_console(file: TextIO | None = None) -> Console:
    console = Console(file=file or sys.stdout, highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, LOG_WIDTH)
    return console
