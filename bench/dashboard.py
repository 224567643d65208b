"""What the live dashboard costs a run: the same run without `--serve`, with `--stream` (which also makes
every output line an event), with `--serve` and no page open, with a page that reads every event, and with a
page that stopped reading (a stalled browser).

On a four-machine sshd fleet, a suite of ``--shards`` shards each printing ``--lines`` lines (with ``--serve``
every line is an event, for the pages' output tails) runs five times side by side; the table shows wall time and the
coordinator's CPU time, and each against the run without ``--serve`` (the peer here is fleetshard itself).

    python bench/dashboard.py [--shards 40] [--lines 20000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from common import fleet, fleetshard_argv, note, table

LINE = "a line of test output, about sixty bytes long, like most are"


def run(argv: list[str], viewer: str | None) -> tuple[float, float]:
    """Wall and CPU seconds of one run; ``viewer``: None, "reader" (reads every event), "stalled"."""
    with tempfile.TemporaryFile("w+") as out:
        began = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        assert proc.stderr is not None
        sock: socket.socket | None = None
        if viewer is not None:
            url = ""
            while not url:
                line = proc.stderr.readline()
                if not line:
                    raise RuntimeError("no dashboard URL printed")
                match = re.search(r"live dashboard at http://([\d.]+):(\d+)/", line)
                url = match.group(0) if match else ""
            host, port = match.group(1), int(match.group(2))  # type: ignore[union-attr]
            sock = socket.create_connection((host, port))
            if viewer == "stalled":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(f"GET /events HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
            if viewer == "reader":
                reader = sock

                def drain() -> None:
                    try:
                        while reader.recv(65536):
                            pass
                    except OSError:
                        pass

                threading.Thread(target=drain, daemon=True).start()
        threading.Thread(target=lambda: proc.stderr.read() if proc.stderr else None, daemon=True).start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - began
        proc.returncode = os.waitstatus_to_exitcode(status)
        if sock is not None:
            sock.close()
        if proc.returncode != 0:
            out.seek(0)
            raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}: {out.read()[-2000:]}")
        return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=40)
    parser.add_argument("--lines", type=int, default=20000)
    parser.add_argument("--quick", action="store_true", help="a small size, for a smoke test")
    args = parser.parse_args()
    shards, lines = (8, 500) if args.quick else (args.shards, args.lines)
    with tempfile.TemporaryDirectory(prefix="fleetshard-bench-dash-") as tmp, fleet(4, first_octet_start=240) as f:
        work = Path(tmp)
        command = f"yes '{LINE}' | head -n {lines}"
        inv = f.write_inventory(work / "machines.yaml", slots=2,
                                suite={"command": command, "shards": shards, "timeout": 600})
        base = fleetshard_argv("run", "-i", inv, "--no-live", "-q")
        serve = [*base, "--serve", "127.0.0.1:0", "--serve-grace", "0"]
        results = {}
        runs = [("fleetshard run", base, None),
                ("fleetshard run --stream (every line an event)", [*base, "--stream"], None),
                ("--serve, no page open", serve, None),
                ("--serve, a page reading every event", serve, "reader"),
                ("--serve, a page that stopped reading", serve, "stalled")]
        if args.quick:                                # the smoke test: the first and the last
            runs = [runs[0], runs[-1]]
        for label, argv, viewer in runs:
            note(label)
            results[label] = run(argv, viewer)
    plain_wall, plain_cpu = results["fleetshard run"]
    rows = [(label, wall, wall / plain_wall, cpu, cpu / plain_cpu) for label, (wall, cpu) in results.items()]
    print(table(("run", "seconds", "x plain", "cpu s", "cpu x plain"), rows))
    print(f"{shards} shards x {lines} lines = {shards * lines} output events; "
          f"fleetshard with a stalled page / fleetshard run: "
          f"{results['--serve, a page that stopped reading'][0] / plain_wall:.2f}")


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
