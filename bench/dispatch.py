"""Dispatch overhead: many trivial shards (`true`) over 4 sshd machines with 8 slots each.

    python bench/dispatch.py [--shards 400] [--repeat 3] [--quick]

Measured in the same run, each as a whole process (interpreter start-up included) and, where the tool
is Python, in-process as well:

- fleetshard run --shards N --skip-health-checks --no-live -q, with the command `true`;
- a minimal hand-written asyncssh loop (bench/raw_asyncssh.py): one connection per machine, 8 channels;
- the same loop with AES-GCM, the cipher fleetshard's transport prefers (asyncssh's default is chacha20);
- GNU parallel -S 8/h1,…: a new ssh connection per command (at most 200 shards: same rate, less waiting),
  and with ssh ControlMaster (multiplexed).

Prints shards/s for each and the ratio fleetshard / raw asyncssh (best of --repeat for the Python tools).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    PYTHON,
    close_masters,
    fleet,
    fleetshard_argv,
    gnu_parallel,
    note,
    parallel_env,
    ssh_config,
    table,
    timed,
)

HERE = Path(__file__).resolve().parent
MACHINES = 4
SLOTS = 8
GCM = "aes128-gcm@openssh.com"      # the cipher fleetshard's transport prefers
NO_MASTER_CAP = 200                 # a new ssh connection per shard is slow: fewer shards, same rate


def machines_json(f: object, path: Path) -> Path:
    from fleet import SshFleet

    assert isinstance(f, SshFleet)
    path.write_text(json.dumps([{"host": m.address, "port": m.port, "user": f.user, "key": str(f.client_key),
                                 "known_hosts": str(f.known_hosts)} for m in f.machines]))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=400)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    ap.add_argument("--no-peers", action="store_true", help="fleetshard and raw asyncssh only")
    args = ap.parse_args(argv)
    shards = 24 if args.quick else args.shards
    repeat = 1 if args.quick else args.repeat
    work = Path(tempfile.mkdtemp(prefix="fleetshard-bench-dispatch-"))
    rows: list[list[object]] = []
    rates: dict[str, float] = {}

    def add(name: str, seconds: list[float], ok: int | None = None) -> None:
        best = min(seconds)
        rates[name] = shards / best
        rows.append([name, best, statistics.median(seconds), shards / best,
                     "" if ok is None else f"{ok}/{shards}"])

    with fleet(MACHINES) as f:
        inv = f.write_inventory(work / "machines.yaml", slots=SLOTS, suite={"command": "true", "timeout": 60})
        mj = machines_json(f, work / "machines.json")
        run_args = ["run", "-i", str(inv), "--shards", str(shards), "--skip-health-checks", "--no-live", "-q"]

        # Warm-up: page cache, sshd's first connections.
        timed(fleetshard_argv(*run_args), cwd=work)
        timed([PYTHON, str(HERE / "raw_asyncssh.py"), str(mj), "--shards", str(shards), "--slots", str(SLOTS)])

        fs_whole: list[float] = []
        fs_in: list[float] = []
        raw_whole: dict[str, list[float]] = {"": [], GCM: []}
        raw_in: dict[str, list[float]] = {"": [], GCM: []}
        raw_ok: dict[str, int] = {}
        for _ in range(repeat):
            t = timed(fleetshard_argv(*run_args), cwd=work)
            fs_whole.append(t.wall)
            t = timed([PYTHON, str(HERE / "inproc.py"), *run_args], cwd=work)
            fs_in.append(json.loads(t.err.strip().splitlines()[-1])["inproc"])
            for cipher in ("", GCM):
                t = timed([PYTHON, str(HERE / "raw_asyncssh.py"), str(mj), "--shards", str(shards),
                           "--slots", str(SLOTS), *(["--ciphers", cipher] if cipher else [])])
                data = json.loads(t.out)
                raw_whole[cipher].append(t.wall)
                raw_in[cipher].append(data["elapsed"])
                raw_ok[cipher] = data["ok"]
        add("fleetshard run (whole process)", fs_whole, shards)
        add("fleetshard run (in-process)", fs_in, shards)
        add("raw asyncssh (whole process)", raw_whole[""], raw_ok[""])
        add("raw asyncssh (in-process)", raw_in[""], raw_ok[""])
        add("raw asyncssh, AES-GCM (whole process)", raw_whole[GCM], raw_ok[GCM])
        add("raw asyncssh, AES-GCM (in-process)", raw_in[GCM], raw_ok[GCM])

        par = gnu_parallel()
        if par is None or args.no_peers:
            note("GNU parallel not installed: skipped" if par is None else "peers skipped (--no-peers)")
        else:
            env = parallel_env(work)
            logins = ",".join(f"{SLOTS}/{name}" for name in f.names)
            for label, control in (("GNU parallel -S (ssh per shard)", None),
                                   ("GNU parallel -S + ControlMaster", work / "cm")):
                count = shards if control is not None else min(shards, NO_MASTER_CAP)
                if control is not None:
                    control.mkdir(exist_ok=True)
                cfg = ssh_config(f, work / f"ssh_config{'_cm' if control else ''}", control=control)
                (work / "inputs").write_text("\n".join(str(i) for i in range(1, count + 1)) + "\n")
                argv_par = [par, "--will-cite", "--ssh", f"ssh -F {cfg}", "-S", logins, "-a", str(work / "inputs"),
                            "true"]
                try:
                    t = timed(argv_par, env=env, check=False, timeout=600)
                finally:
                    if control is not None:
                        close_masters(cfg, f.names)
                rates[label] = count / t.wall
                rows.append([label, t.wall, t.wall, count / t.wall, f"{count}/{count}" if t.code == 0 else "failed"])
                if t.code != 0:
                    note(f"{label}: exit {t.code}: {t.err[-500:]}")

    shutil.rmtree(work, ignore_errors=True)
    print(f"\ndispatch: {shards} shards of `true`, {MACHINES} sshd machines x {SLOTS} slots, "
          f"{os.cpu_count()} cores; best of {repeat} for the Python tools\n")
    print(table(["tool", "best s", "median s", "shards/s", "ok"], rows))
    whole = rates["fleetshard run (whole process)"] / rates["raw asyncssh (whole process)"]
    inproc = rates["fleetshard run (in-process)"] / rates["raw asyncssh (in-process)"]
    whole_gcm = rates["fleetshard run (whole process)"] / rates["raw asyncssh, AES-GCM (whole process)"]
    inproc_gcm = rates["fleetshard run (in-process)"] / rates["raw asyncssh, AES-GCM (in-process)"]
    print(f"\nfleetshard / raw asyncssh: {whole:.2f} as whole processes, {inproc:.2f} in-process "
          f"(asyncssh's default cipher); {whole_gcm:.2f} and {inproc_gcm:.2f} against the same AES-GCM cipher")
    return 0


if __name__ == "__main__":
    sys.exit(main())
