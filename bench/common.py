"""Shared plumbing of the benchmarks: a fleet of real sshd processes, timed child processes, peers, tables.

Every benchmark brings up its own fleet (``tests/fleet.py``) below ``/tmp`` and tears it down, and
measures fleetshard and its peers in the same run: compare the ratios, not absolute times.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from fleet import SshFleet  # noqa: E402

PYTHON = sys.executable


def _byte_compile() -> None:
    """Byte-compile the checkout, as pip does when it installs fleetshard. Where PYTHONDONTWRITEBYTECODE is
    set (as on the benchmark machine), every `python -m fleetshard` of a benchmark would otherwise compile
    each of its modules from source again, a third of a second that an installed fleetshard never pays."""
    import compileall

    compileall.compile_dir(str(ROOT / "fleetshard"), quiet=1)


_byte_compile()
# Every `python -m fleetshard` a benchmark starts runs this checkout, whatever copy pip installed last.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)


@contextlib.contextmanager
def fleet(n: int, *, speeds: Sequence[float] | None = None, first_octet_start: int = 2) -> Iterator[SshFleet]:
    """``n`` sshd machines on loopback addresses; everything is removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="fleetshard-bench-"))
    try:
        with SshFleet(root, n=n, speeds=speeds, first_octet_start=first_octet_start) as started:
            yield started
    finally:
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class Timed:
    """One child process: wall time, its CPU time and peak RSS (from getrusage of children)."""

    wall: float
    code: int
    out: str
    err: str
    cpu: float
    maxrss_kb: int


def timed(argv: Sequence[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None,
                 timeout: float = 600, check: bool = True) -> Timed:
    """Run ``argv`` to completion: wall time, and the child's own CPU time and peak RSS (``wait4``)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    with tempfile.TemporaryFile("w+") as out_f, tempfile.TemporaryFile("w+") as err_f:
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), cwd=cwd, env=full_env, stdout=out_f, stderr=err_f, text=True)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.005)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out_f.seek(0)
        err_f.seek(0)
        out, err = out_f.read(), err_f.read()
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} exited with {proc.returncode}:\n{out[-3000:]}\n"
                           f"{err[-3000:]}")
    return Timed(wall, proc.returncode, out, err, usage.ru_utime + usage.ru_stime, usage.ru_maxrss)


def fleetshard_argv(*args: str | Path) -> list[str]:
    return [PYTHON, "-m", "fleetshard", *map(str, args)]


def have(tool: str) -> str | None:
    return shutil.which(tool)


def pssh_binary() -> str | None:
    return have("parallel-ssh") or have("pssh")


def gnu_parallel() -> str | None:
    """GNU parallel (not moreutils' parallel, which has no -S)."""
    path = have("parallel")
    if path is None:
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return path if "GNU parallel" in out else None


def ssh_config(fleet: SshFleet, path: Path, *, control: Path | None = None,
               names: Sequence[str] | None = None) -> Path:
    """An OpenSSH client config with one ``Host`` alias per machine (``h1``…), pinned to the fleet's key
    and known_hosts; with ``control`` a directory for ControlMaster sockets (multiplexed sessions)."""
    lines = []
    for name in names or fleet.names:
        m = fleet.machine(name)
        lines += [f"Host {name}", f"  HostName {m.address}", f"  Port {m.port}", f"  User {fleet.user}",
                  f"  IdentityFile {fleet.client_key}", "  IdentitiesOnly yes",
                  f"  UserKnownHostsFile {fleet.known_hosts}", "  GlobalKnownHostsFile /dev/null",
                  "  StrictHostKeyChecking yes", "  BatchMode yes", "  ConnectTimeout 5", "  LogLevel ERROR"]
        if control is not None:
            lines += ["  ControlMaster auto", f"  ControlPath {control}/%C", "  ControlPersist 120"]
    path.write_text("\n".join(lines) + "\n")
    return path


def close_masters(config: Path, names: Sequence[str]) -> None:
    """Stop the ControlMaster processes an ssh config with ControlPersist left behind."""
    for name in names:
        subprocess.run(["ssh", "-F", str(config), "-O", "exit", name], capture_output=True, timeout=10,
                       check=False)


def parallel_env(work: Path) -> dict[str, str]:
    """GNU parallel keeps state in $HOME/.parallel; give it a private one and skip the citation notice."""
    home = work / "parallel-home"
    (home / ".parallel").mkdir(parents=True, exist_ok=True)
    (home / ".parallel" / "will-cite").write_text("")
    return {"HOME": str(home), "PARALLEL_HOME": str(home / ".parallel")}


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[_cell(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for k, r in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths,
                                                                                                    strict=True))))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
