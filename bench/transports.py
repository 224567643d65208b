"""The two SSH transports side by side: `transport: ssh` (asyncssh) against `transport: openssh` (the
system ssh client over one ControlMaster per machine), with GNU parallel over ssh ControlMaster as the peer.

    python bench/transports.py [--shards 200] [--repeat 3] [--quick]

Each runs N trivial shards (`true`) over 4 sshd machines with 4 slots each, as a whole process. Prints
shards/s for each and the ratios openssh / ssh and openssh / GNU parallel + ControlMaster.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import close_masters, fleet, fleetshard_argv, gnu_parallel, note, parallel_env, ssh_config, table, timed

MACHINES = 4
SLOTS = 4


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    args = ap.parse_args(argv)
    shards = 16 if args.quick else args.shards
    repeat = 1 if args.quick else args.repeat
    work = Path(tempfile.mkdtemp(prefix="fleetshard-bench-transports-"))
    rows: list[list[object]] = []
    rates: dict[str, float] = {}
    with fleet(MACHINES) as f:
        for transport in ("ssh", "openssh"):
            inv = f.write_inventory(work / f"{transport}.yaml", slots=SLOTS,
                                    suite={"command": "true", "timeout": 60},
                                    extra_machine_keys={n: {"transport": transport} for n in f.names})
            run_args = ["run", "-i", str(inv), "--shards", str(shards), "--skip-health-checks", "--no-live", "-q"]
            timed(fleetshard_argv(*run_args), cwd=work)                 # warm-up
            walls = [timed(fleetshard_argv(*run_args), cwd=work).wall for _ in range(repeat)]
            label = f"fleetshard, transport: {transport}"
            rates[label] = shards / min(walls)
            rows.append([label, min(walls), statistics.median(walls), shards / min(walls)])
        par = gnu_parallel()
        if par is None:
            note("GNU parallel not installed: skipped")
        else:
            control = work / "cm"
            control.mkdir()
            cfg = ssh_config(f, work / "ssh_config_cm", control=control)
            logins = ",".join(f"{SLOTS}/{name}" for name in f.names)
            (work / "inputs").write_text("\n".join(str(i) for i in range(1, shards + 1)) + "\n")
            walls = []
            try:
                for _ in range(repeat):
                    t = timed([par, "--will-cite", "--ssh", f"ssh -F {cfg}", "-S", logins, "-a",
                               str(work / "inputs"), "true"], env=parallel_env(work), check=False, timeout=600)
                    walls.append(t.wall)
            finally:
                close_masters(cfg, f.names)
            label = "GNU parallel -S + ControlMaster"
            rates[label] = shards / min(walls)
            rows.append([label, min(walls), statistics.median(walls), shards / min(walls)])
    shutil.rmtree(work, ignore_errors=True)
    print(f"\ntransports: {shards} shards of `true`, {MACHINES} sshd machines x {SLOTS} slots, "
          f"{os.cpu_count()} cores; best of {repeat}, whole processes\n")
    print(table(["tool", "best s", "median s", "shards/s"], rows))
    ssh, openssh = rates["fleetshard, transport: ssh"], rates["fleetshard, transport: openssh"]
    print(f"\nfleetshard openssh / ssh throughput: {openssh / ssh:.2f}")
    peer = rates.get("GNU parallel -S + ControlMaster")
    if peer:
        print(f"fleetshard openssh / GNU parallel + ControlMaster throughput: {openssh / peer:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
