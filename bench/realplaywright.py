"""A real Playwright suite (create-playwright's TodoMVC spec, tests/realsuites.py) over the sshd fleet
against local Playwright, with Debian's Chromium.

    python bench/realplaywright.py [--machines 3] [--repeat 1]

Measured in the same run, each as a whole process (best of --repeat):

- three local ``playwright test --shard=i/3`` processes at once (the reference: ratios are against it);
- one local ``playwright test`` (workers: 1, as the suite's config says);
- fleetshard, native ``--shard={shard}/{total}`` with ``shards: auto`` over --machines machines x 1 slot:
  a first run (one shard per slot) and a second run with history;
- fleetshard the same way with the TodoMVC app as a per-machine service (``suite.services``) that every
  shard reuses (``webServer.reuseExistingServer: true``), instead of each shard starting its own server.

Each row shows passed/skipped/failed from its JUnit and how many Playwright start-ups (runner processes)
it paid. All fake machines share this machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import fleet, fleetshard_argv, note, table, timed
from realpytest import counts
from realsuites import copy_suite, playwright_suite


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--machines", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args(argv)
    n, repeat = args.machines, args.repeat
    suite = playwright_suite()
    base = Path(tempfile.mkdtemp(prefix="fleetshard-bench-playwright-"))
    os.chmod(base, 0o755)
    project = copy_suite(suite, base / "project").root
    # The same config, but a server already on TODOMVC_PORT is reused (the services row).
    cfg = project / "playwright.config.ts"
    reuse = project / "playwright.reuse.config.ts"
    reuse.write_text(cfg.read_text().replace("reuseExistingServer: false", "reuseExistingServer: true"))
    reuse.chmod(0o666)
    rows: list[list[Any]] = []
    walls: dict[str, float] = {}

    def local_shards(label: str, total: int) -> None:
        runs = []
        for r in range(repeat):
            procs = []
            start = time.perf_counter()
            for i in range(1, total + 1):
                junit = base / f"local-{total}-{r}-{i}.xml"
                shard = f"--shard={i}/{total}" if total > 1 else ""
                procs.append((junit, subprocess.Popen(
                    f"PLAYWRIGHT_JUNIT_OUTPUT_FILE={junit} TODOMVC_PORT={free_port()} {suite.command} {shard} "
                    f"--reporter=junit --output=test-results/local-{i}", shell=True, cwd=project,
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)))
            for _, p in procs:
                p.wait(timeout=900)
            wall = time.perf_counter() - start
            got = [counts(j) for j, _ in procs]
            summed = [sum(int(c.split("/")[k]) for c in got if "/" in c) for k in range(3)]
            runs.append((wall, "/".join(map(str, summed))))
        wall, got_s = min(runs, key=lambda x: x[0])
        walls[label] = wall
        rows.append([label, wall, total, got_s])

    local_shards(f"{n} local playwright --shard processes at once", n)
    local_shards("1 local playwright process", 1)

    # The fleet's login user runs the fleetshard rows: a copy of its own, without the local runs' root-owned
    # test-results.
    project = copy_suite(suite, base / "fleet-project").root
    (project / "playwright.reuse.config.ts").write_text(reuse.read_text())
    (project / "playwright.reuse.config.ts").chmod(0o666)
    with fleet(n) as f:
        ports = {m: {"env": {"TODOMVC_PORT": str(free_port())}} for m in f.names}

        def inventory(label: str, services: bool) -> Path:
            d = base / label
            d.mkdir(mode=0o777)
            os.chmod(d, 0o777)
            config = "-c playwright.reuse.config.ts " if services else ""
            keys: dict[str, Any] = {
                "runner": "playwright", "timeout": 600,
                "command": f"PLAYWRIGHT_JUNIT_OUTPUT_FILE={{junit}} {suite.command} {config}--reporter=junit "
                           f"--output=test-results/{{machine}}-{{shard}}-{{attempt}} --shard={{shard}}/{{total}}",
                "junit": str(d / "junit-{run_id}-{shard}-{attempt}.xml")}
            if services:
                keys["services"] = [{"command": "exec python3 -m http.server $TODOMVC_PORT --bind 127.0.0.1 "
                                                "--directory app",
                                     "ready": "http://127.0.0.1:$TODOMVC_PORT/todomvc/", "timeout": 30}]
            extra = {m: {"workdir": str(project), **ports[m]} for m in f.names}
            return f.write_inventory(project / f"machines-{label}.yaml", slots=1, suite=keys,
                                     extra_machine_keys=extra, top={"history": str(d / "history.db")})

        def fleetshard_row(label: str, inv: Path, runs: int) -> None:
            results = []
            for i in range(runs):
                report, junit = inv.parent / f"r-{label}-{i}.json", base / f"j-{label}-{i}.xml"
                t = timed(fleetshard_argv("run", "-i", inv, "--no-live", "-q", "--json-report", report,
                                          "--junit", junit), cwd=project, check=False, timeout=1200)
                if t.code != 0:
                    note(f"{label}: exit {t.code}: {t.out[-800:]}{t.err[-800:]}")
                try:
                    data = json.loads(report.read_text())
                    startups = len(data["attempts"])
                except (OSError, ValueError, KeyError):
                    startups = 0
                results.append((t.wall, startups, counts(junit)))
            wall, startups, got = min(results, key=lambda x: x[0])
            walls[label] = wall
            rows.append([label, wall, startups, got])

        plain = inventory("plain", services=False)
        fleetshard_row(f"fleetshard, first run ({n} machines x 1 slot)", plain, 1)
        fleetshard_row(f"fleetshard, with history ({n} machines x 1 slot)", plain, repeat)
        served = inventory("services", services=True)
        fleetshard_row("fleetshard + services (server once per machine)", served, repeat)
    shutil.rmtree(base, ignore_errors=True)
    ref = walls[f"{n} local playwright --shard processes at once"]
    for r in rows:
        r.insert(2, r[1] / ref)
    print(f"\nreal Playwright suite: TodoMVC demo spec (24 tests, Debian's Chromium), {n} sshd machines x 1 slot, "
          f"{os.cpu_count()} cores; best of {repeat}\n")
    print(table(["run", "wall s", f"x {n} local shards", "start-ups", "passed/skipped/failed"], rows))
    first = walls[f"fleetshard, first run ({n} machines x 1 slot)"]
    print(f"\nfleetshard / {n} local --shard processes: first run {first / ref:.2f}, with history "
          f"{walls[f'fleetshard, with history ({n} machines x 1 slot)'] / ref:.2f}, with services "
          f"{walls['fleetshard + services (server once per machine)'] / ref:.2f} (target <= 1.0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
