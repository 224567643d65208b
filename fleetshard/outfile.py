"""Writing a report to a path the user gave: the one helper every report writer uses.

* a regular file (or a path that does not exist yet) is written atomically: a temporary file in the
  same directory, then a rename; the file gets the mode the umask gives a new file (or keeps the mode
  of the file it replaces), not the private mode of a temporary file;
* a symlink is followed: its target is written (atomically, when it is or will be a regular file);
* a special file (``/dev/stdout``, a FIFO, a terminal, anything below ``/dev`` or ``/proc``) is written
  through, never replaced; ``/dev/full`` gives a clear error;
* a directory, or a parent directory that does not exist, is refused (exit 2): the command line
  checks every report path with :func:`check_output_path` before the run starts.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import tempfile
import threading
import time
from pathlib import Path

from .errors import UsageError

FIFO_WAIT = 10.0            # seconds to wait for a reader to open a FIFO before giving up
_umask_lock = threading.Lock()


class OutputPathError(UsageError, OSError):
    """A report path that cannot be written (a usage error before the run, an I/O error after it)."""


def _umask() -> int:
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _through(path: Path) -> bool:
    """Is ``path`` written through (a special file) rather than replaced?"""
    text = str(path)
    if text.startswith(("/dev/", "/proc/")):
        return True
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def check_output_path(path: Path, option: str = "") -> None:
    """Refuse, before any work, a path that can never be written: a directory, a missing parent."""
    what = f"{option} {path}" if option else str(path)
    if _through(path):
        return
    target = Path(os.path.realpath(path))
    if target.is_dir():
        raise OutputPathError(f"{what}: is a directory (give a file name)")
    parent = target.parent
    if not parent.is_dir():
        raise OutputPathError(f"{what}: directory {parent} does not exist (create it first)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what}: directory {parent} is not writable")


def write_output(path: Path, data: bytes, *, make_parents: bool = False) -> None:
    """Write ``data`` to ``path`` as described in the module docstring. Raises OutputPathError."""
    path = Path(path)
    try:
        if _through(path):
            _write_through(path, data)
            return
        target = Path(os.path.realpath(path))
        if _through(target):
            _write_through(target, data)
            return
        if target.is_dir():
            raise OutputPathError(f"{path}: is a directory (give a file name)")
        if make_parents:
            target.parent.mkdir(parents=True, exist_ok=True)
        elif not target.parent.is_dir():
            raise OutputPathError(f"{path}: directory {target.parent} does not exist (create it first)")
        _write_atomic(target, data)
    except OutputPathError:
        raise
    except OSError as exc:
        raise OutputPathError(f"{path}: cannot write: {exc.strerror or exc}") from exc


def _write_atomic(target: Path, data: bytes) -> None:
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _write_through(path: Path, data: bytes) -> None:
    deadline = time.monotonic() + FIFO_WAIT
    while True:
        try:
            # Non-blocking open: a FIFO with no reader must not hang the run (ENXIO, retried a while).
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY)
            break
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            if time.monotonic() >= deadline:
                raise OutputPathError(f"{path}: no process reads this FIFO (waited {FIFO_WAIT:g} s)") from exc
            time.sleep(0.05)
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
    finally:
        os.close(fd)
