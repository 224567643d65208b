"""Fixed costs of fleetshard itself: process start to the first shard's start, and the whole trivial run.

    python bench/startup.py [--repeat 5] [--quick]

On 4 sshd machines, one shard per machine whose command appends the machine clock
(``date +%s.%N``) to a shared file, measured in the same run, each as a whole process:

- fleetshard run (health probes on, the default), and with --skip-health-checks;
- a minimal asyncssh program (bench/raw_asyncssh.py --probe): import, connect to the 4 machines at once,
  start the one command on each.

"first start" = the earliest timestamp a shard wrote minus the moment the process was spawned (all fake
machines share this machine's clock); "wall" = the whole process; "wrap-up" = wall end minus the last
timestamp. Medians of --repeat. The first fleetshard run of each kind (its first run in a fresh
directory) calibrates the machines' CPU; later ones have history.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PYTHON, fleet, fleetshard_argv, note, table

HERE = Path(__file__).resolve().parent
MACHINES = 4


def spawn_and_time(argv: list[str], stamps: Path, cwd: Path | None = None) -> tuple[float, float, float]:
    """(first start, wall, wrap-up) of one process, from the timestamps its shards appended to ``stamps``."""
    stamps.write_text("")
    os.chmod(stamps, 0o666)
    t0 = time.time()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)
    t1 = time.time()
    times = [float(x) for x in stamps.read_text().split()]
    if proc.returncode != 0 or len(times) < MACHINES:
        note(f"{argv[:4]}: exit {proc.returncode}, {len(times)} starts: {proc.stdout[-600:]}{proc.stderr[-600:]}")
    if not times:
        return float("nan"), t1 - t0, float("nan")
    return min(times) - t0, t1 - t0, t1 - max(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="two repeats (a smoke test)")
    args = ap.parse_args(argv)
    repeat = 2 if args.quick else args.repeat
    work = Path(tempfile.mkdtemp(prefix="fleetshard-bench-startup-"))
    os.chmod(work, 0o777)
    stamps = work / "stamps"
    command = f"date +%s.%N >> {stamps}"
    results: dict[str, list[tuple[float, float, float]]] = {"probes": [], "skip": [], "raw": []}
    with fleet(MACHINES) as f:
        invs = {}
        for kind in ("probes", "skip"):
            d = work / kind
            d.mkdir()
            invs[kind] = f.write_inventory(d / "machines.yaml", slots=1,
                                           suite={"command": command, "shards": MACHINES})
        mj = work / "machines.json"
        mj.write_text(json.dumps([{"host": m.address, "port": m.port, "user": f.user, "key": str(f.client_key),
                                   "known_hosts": str(f.known_hosts)} for m in f.machines]))
        raw = [PYTHON, str(HERE / "raw_asyncssh.py"), str(mj), "--probe", command]
        spawn_and_time(raw, stamps)                                        # warm-up: page cache, sshd
        for _ in range(repeat):
            results["raw"].append(spawn_and_time(raw, stamps))
            results["probes"].append(spawn_and_time(
                fleetshard_argv("run", "-i", invs["probes"], "--no-live", "-q"), stamps, cwd=invs["probes"].parent))
            results["skip"].append(spawn_and_time(
                fleetshard_argv("run", "-i", invs["skip"], "--no-live", "-q", "--skip-health-checks"), stamps,
                cwd=invs["skip"].parent))
    shutil.rmtree(work, ignore_errors=True)

    def med(kind: str, i: int) -> float:
        return statistics.median(r[i] for r in results[kind])

    labels = {"raw": "minimal asyncssh program", "probes": "fleetshard run (health probes)",
              "skip": "fleetshard run --skip-health-checks"}
    rows = [[labels[k], med(k, 0), med(k, 0) / med("raw", 0), med(k, 1), med(k, 1) / med("raw", 1), med(k, 2)]
            for k in ("raw", "probes", "skip")]
    print(f"\nstart-up: {MACHINES} sshd machines, one trivial shard each, {os.cpu_count()} cores; "
          f"medians of {repeat}\n")
    print(table(["process", "first start s", "x raw", "wall s", "x raw", "wrap-up s"], rows))
    print(f"\nprocess start to first shard start: fleetshard {med('probes', 0) / med('raw', 0):.2f} x the minimal "
          f"asyncssh program ({med('skip', 0) / med('raw', 0):.2f} with --skip-health-checks; target <= 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
