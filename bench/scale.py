"""Scale: many machines, and many shards.

    python bench/scale.py [--machines 64] [--shards 10000] [--repeat 3] [--quick]

1. Health over 64 sshd machines, each as a whole process (interpreter start-up included):
   `fleetshard health`; parallel-ssh -p 64 and GNU parallel (-j 64, one `ssh host probe` per machine)
   running the same probe script; the bare asyncssh script (bench/raw_asyncssh.py --probe). The slowest single
   machine's probe inside fleetshard's run (its own `probe_s`) and `fleetshard health` on one machine
   are shown for reference.
2. A trivial run over the 64 machines (`true`, 2 shards per machine), with and without health probes.
3. 10 000 shards of `true` on 4 machines x 8 slots (native sharding): the orchestrator's CPU time and
   peak memory (wait4 rusage of the fleetshard process alone: sshd and the remote commands excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    PYTHON,
    Timed,
    fleet,
    fleetshard_argv,
    gnu_parallel,
    note,
    parallel_env,
    pssh_binary,
    ssh_config,
    table,
    timed,
)
from dispatch import machines_json

from fleetshard.probes import PROBE_SCRIPT

HERE = Path(__file__).resolve().parent
RELAXED = {"max_load_per_core": 1000, "max_mem_used_pct": 100, "min_disk_free_pct": 0, "timeout": 20}


def best(runs: list[Timed]) -> Timed:
    return min(runs, key=lambda t: t.wall)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--machines", type=int, default=64)
    ap.add_argument("--shards", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    ap.add_argument("--no-peers", action="store_true")
    args = ap.parse_args(argv)
    n = 4 if args.quick else args.machines
    shards = 100 if args.quick else args.shards
    repeat = 1 if args.quick else args.repeat
    work = Path(tempfile.mkdtemp(prefix="fleetshard-bench-scale-"))
    health_rows: list[list[Any]] = []
    other_rows: list[list[Any]] = []
    # The probe as it runs remotely, with the same env and /bin/sh as fleetshard's.
    probe = "FLEETSHARD_PROBE_DIR='~' exec /bin/sh -c " + shlex.quote(PROBE_SCRIPT)

    with fleet(n) as f:
        inv = f.write_inventory(work / "machines.yaml", slots=2, health=RELAXED,
                                suite={"command": "true", "timeout": 60})
        one = f.write_inventory(work / "one.yaml", machines=["h1"], slots=2, health=RELAXED)
        mj = machines_json(f, work / "machines.json")
        cfg = ssh_config(f, work / "ssh_config")
        hosts = work / "hosts"
        hosts.write_text("\n".join(f.names) + "\n")
        par, pssh = gnu_parallel(), pssh_binary()
        penv = parallel_env(work)

        def fs_health() -> Timed:
            return timed(fleetshard_argv("health", "-i", inv, "--json"), cwd=work, check=False)

        timed(fleetshard_argv("health", "-i", inv), cwd=work, check=False)     # warm-up
        runs: dict[str, list[Timed]] = {"fleetshard": [], "one": [], "raw": [], "pssh": [], "parallel": []}
        for _ in range(repeat):
            runs["fleetshard"].append(fs_health())
            runs["one"].append(timed(fleetshard_argv("health", "-i", one, "--json"), cwd=work, check=False))
            runs["raw"].append(timed([PYTHON, str(HERE / "raw_asyncssh.py"), str(mj), "--probe", PROBE_SCRIPT]))
            if pssh and not args.no_peers:
                out = work / "pssh-out"
                runs["pssh"].append(timed([pssh, "-p", str(n), "-h", str(hosts), "-x", f"-F {cfg}", "-t", "60",
                                           "-o", str(out), probe], check=False))
            if par and not args.no_peers:
                runs["parallel"].append(timed(
                    [par, "--will-cite", "-q", "-j", str(n), "ssh", "-F", str(cfg), "{}", probe, ":::", *f.names],
                    env=penv, check=False))
        fs = best(runs["fleetshard"])
        reports = json.loads(fs.out)["machines"]
        healthy = sum(r["healthy"] for r in reports)
        slowest = max(r["probe_s"] or 0.0 for r in reports)
        health_rows.append([f"fleetshard health ({healthy}/{n} healthy)", fs.wall,
                            statistics.median(t.wall for t in runs["fleetshard"]), fs.cpu])
        health_rows.append(["  slowest machine's probe inside that run", slowest, "", ""])
        o = best(runs["one"])
        health_rows.append(["fleetshard health, one machine", o.wall,
                            statistics.median(t.wall for t in runs["one"]), o.cpu])
        r = best(runs["raw"])
        health_rows.append([f"bare asyncssh script ({json.loads(r.out)['ok']}/{n} ok)", r.wall,
                            statistics.median(t.wall for t in runs["raw"]), r.cpu])
        for key, label in (("pssh", f"parallel-ssh -p {n}"), ("parallel", f"GNU parallel -j {n} ssh")):
            if not runs[key]:
                note(f"{label}: not installed or skipped")
                continue
            t = best(runs[key])
            health_rows.append([f"{label} (exit {t.code})", t.wall, statistics.median(x.wall for x in runs[key]),
                                t.cpu])
        # ssh clients of the peers are children of the peer: their CPU is included in cpu s.

        # A trivial run over every machine.
        for label, flags in (("fleetshard run, 2 shards/machine, health probes", []),
                             ("fleetshard run, 2 shards/machine, --skip-health-checks", ["--skip-health-checks"])):
            t = timed(fleetshard_argv("run", "-i", inv, "--shards", str(2 * n), "--no-live", "-q", *flags), cwd=work)
            other_rows.append([f"{label} ({n} machines)", t.wall, t.cpu, t.maxrss_kb // 1024])

    # Many shards on 4 machines.
    with fleet(4) as f:
        inv4 = f.write_inventory(work / "four.yaml", slots=8, suite={"command": "true", "timeout": 60})
        t = timed(fleetshard_argv("run", "-i", inv4, "--shards", str(shards), "--skip-health-checks", "--no-live",
                                  "-q"), cwd=work, timeout=1800)
        other_rows.append([f"fleetshard run, {shards} shards, 4 machines x 8 slots", t.wall, t.cpu,
                           t.maxrss_kb // 1024])
        note(f"{shards} shards: {shards / t.wall:.0f} shards/s, {1000 * t.cpu / shards:.2f} ms CPU per shard")

    shutil.rmtree(work, ignore_errors=True)
    print(f"\nscale: {n} sshd machines on loopback, {os.cpu_count()} cores; best (and median) of {repeat}; "
          f"whole processes\n")
    print(table(["health", "best s", "median s", "cpu s"], health_rows))
    print()
    print(table(["run", "wall s", "orchestrator cpu s", "peak MiB"], other_rows))
    if runs["pssh"]:
        print(f"\nfleetshard health / parallel-ssh: {fs.wall / best(runs['pssh']).wall:.2f} (target <= 0.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
