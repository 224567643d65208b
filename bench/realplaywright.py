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
it paid. All fake machines share this machine's cores, and other work on the machine changes their speed
from minute to minute: so every fleetshard run is paired with three local ``--shard`` processes measured
right before it, and its ratio is against that pair's reference (``x paired ref``; the ``x 3 local shards``
column is against the best local reference). Per fleetshard run the bench also reports what the plan
chose and why (``fleetshard plan --json``), the start-up it had learned per machine, retries and
speculative copies, and its fixed costs: process start to the first shard's start, and the last shard's
end to the process's exit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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
    project = local_project = copy_suite(suite, base / "project").root
    # The same config, but a server already on TODOMVC_PORT is reused (the services row).
    cfg = project / "playwright.config.ts"
    reuse = project / "playwright.reuse.config.ts"
    reuse.write_text(cfg.read_text().replace("reuseExistingServer: false", "reuseExistingServer: true"))
    reuse.chmod(0o666)
    rows: list[list[Any]] = []
    walls: dict[str, float] = {}

    local_cgroup: list[Path] = []      # the local runs' cgroup, when the fleet's machines have theirs

    def local_shards(label: str, total: int, record: bool = True) -> float:
        runs = []
        enter = f"echo $$ > {local_cgroup[0] / 'cgroup.procs'} && exec " if local_cgroup else ""
        for r in range(repeat if record else 1):
            procs = []
            start = time.perf_counter()
            for i in range(1, total + 1):
                junit = base / f"local-{total}-{r}-{i}.xml"
                shard = f"--shard={i}/{total}" if total > 1 else ""
                procs.append((junit, subprocess.Popen(
                    f"{enter}env PLAYWRIGHT_JUNIT_OUTPUT_FILE={junit} TODOMVC_PORT={free_port()} "
                    f"{suite.command} {shard} "
                    f"--reporter=junit --output=test-results/local-{i}", shell=True, cwd=local_project,
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)))
            for _, p in procs:
                p.wait(timeout=900)
            wall = time.perf_counter() - start
            got = [counts(j) for j, _ in procs]
            summed = [sum(int(c.split("/")[k]) for c in got if "/" in c) for k in range(3)]
            runs.append((wall, "/".join(map(str, summed))))
        wall, got_s = min(runs, key=lambda x: x[0])
        if record:
            walls[label] = wall
            rows.append([label, wall, total, got_s, wall])
        return wall

    # The fleet's login user runs the fleetshard rows: a copy of its own, without the local runs' root-owned
    # test-results.
    project = copy_suite(suite, base / "fleet-project").root
    (project / "playwright.reuse.config.ts").write_text(reuse.read_text())
    (project / "playwright.reuse.config.ts").chmod(0o666)
    with fleet(n) as f, _cgroup_like(f) as cgroup:
        if cgroup is not None:
            local_cgroup.append(cgroup)
        local_shards(f"{n} local playwright --shard processes at once", n)
        local_shards("1 local playwright process", 1)
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
            written = f.write_inventory(project / f"machines-{label}.yaml", slots=1, suite=keys,
                                        extra_machine_keys=extra, top={"history": str(d / "history.db")})
            label_dir[written] = f"{label}/history.db"
            return written

        details: list[str] = []
        label_dir: dict[Path, str] = {}

        def fleetshard_row(label: str, inv: Path, runs: int) -> None:
            results = []
            for i in range(runs):
                paired = local_shards("paired reference", n, record=False)
                planned = timed(fleetshard_argv("plan", "-i", inv, "--json"), cwd=project, check=False, timeout=300)
                try:
                    why = json.loads(planned.out)["shards_why"]
                except (ValueError, KeyError):
                    why = f"(plan failed: {planned.err[-300:]})"
                learned = _startup(base / label_dir[inv], project)
                report, junit = inv.parent / f"r-{label}-{i}.json", base / f"j-{label}-{i}.xml"
                began = time.time()
                t = timed(fleetshard_argv("run", "-i", inv, "--no-live", "-q", "--json-report", report,
                                          "--junit", junit), cwd=project, check=False, timeout=1200)
                exited = began + t.wall
                if t.code != 0:
                    note(f"{label}: exit {t.code}: {t.out[-800:]}{t.err[-800:]}")
                try:
                    data = json.loads(report.read_text())
                    attempts = data["attempts"]
                except (OSError, ValueError, KeyError):
                    attempts = []
                startups = len(attempts)
                shards = len({a["shard_id"] for a in attempts})
                speculative = sum(bool(a.get("speculative")) for a in attempts)
                first = min((a["started"] for a in attempts), default=began) - began
                last = exited - max((a["ended"] for a in attempts), default=exited)
                details.append(f"{label} #{i + 1}: {t.wall:.1f}s = {t.wall / paired:.2f} x its paired reference "
                               f"({paired:.1f}s); {shards} shards, {startups - shards - speculative} retries, "
                               f"{speculative} speculative; process start to first shard {first:.2f}s, last "
                               f"shard end to exit {last:.2f}s; learned start-up {learned or 'none'}; plan: {why}")
                results.append((t.wall, startups, counts(junit), paired))
            wall, startups, got, paired = min(results, key=lambda x: x[0] / x[3])
            walls[label] = wall
            rows.append([label, wall, startups, got, paired])

        plain = inventory("plain", services=False)
        fleetshard_row(f"fleetshard, first run ({n} machines x 1 slot)", plain, 1)
        fleetshard_row(f"fleetshard, with history ({n} machines x 1 slot)", plain, repeat)
        served = inventory("services", services=True)
        fleetshard_row("fleetshard + services (server once per machine)", served, repeat)
    shutil.rmtree(base, ignore_errors=True)
    ref = min([walls[f"{n} local playwright --shard processes at once"], *(r[4] for r in rows)])
    ratio: dict[str, float] = {}
    for r in rows:
        paired = r.pop()
        ratio[r[0]] = r[1] / paired
        r[2:2] = [r[1] / ref, r[1] / paired]
    print(f"\nreal Playwright suite: TodoMVC demo spec (24 tests, Debian's Chromium), {n} sshd machines x 1 slot, "
          f"{os.cpu_count()} cores; best of {repeat}\n")
    print(table(["run", "wall s", f"x {n} local shards", "x paired ref", "start-ups", "passed/skipped/failed"],
                rows))
    print("\n" + "\n".join(details))
    print(f"\nfleetshard / {n} local --shard processes measured right before it: first run "
          f"{ratio[f'fleetshard, first run ({n} machines x 1 slot)']:.2f}, with history "
          f"{ratio[f'fleetshard, with history ({n} machines x 1 slot)']:.2f}, with services "
          f"{ratio['fleetshard + services (server once per machine)']:.2f} (target <= 1.0)")
    return 0


@contextlib.contextmanager
def _cgroup_like(f: Any) -> Iterator[Path | None]:
    """A CPU cgroup for the local runs with the CPU weight of all the fleet's machines together.

    The fleet's machines run in cgroups of their own (``tests/fleet.py``) whose ``cpu.shares`` outweigh a
    process outside any: on a machine busy with other work, the fleet would get more of the CPU than local
    processes beside it and the ratios would flatter fleetshard by however loaded the machine was. In a
    cgroup of the same total weight (no quota) the local runs compete with the rest of the machine on the
    same terms. None where the fleet has no cgroups."""
    groups = [m.cgroup for m in f.machines if m.cgroup is not None]
    if not groups:
        yield None
        return
    path = groups[0].parent / f"fleetshard-bench-local-{os.getpid()}"
    try:
        path.mkdir()
        (path / "cpu.shares").write_text(str(sum(int((g / "cpu.shares").read_text()) for g in groups)))
    except OSError as exc:
        note(f"local runs outside a cgroup ({exc}): the fleet gets more of a loaded machine's CPU")
        yield None
        return
    try:
        yield path
    finally:
        for _ in range(50):
            try:
                path.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def _startup(db: Path, project: Path) -> dict[str, float]:
    """The start-up per machine that history has learned for this suite (what the next plan uses)."""
    if not db.exists():
        return {}
    from fleetshard.history import History

    history = History(db)
    try:
        return {m: round(v, 1) for m, v in history.machine_startup().items()}
    finally:
        history.close()


if __name__ == "__main__":
    sys.exit(main())
