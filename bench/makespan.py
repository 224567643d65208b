"""Makespan against the lower bound: skewed test durations on machines of different sizes and speeds.

    python bench/makespan.py [--tests 96] [--work 90] [--seed 2] [--quick]

96 fake test files with lognormal durations (sigma 1.0) totalling --work seconds at speed 1, on 4 sshd
machines with slots 4/6/1/1 and slowness 1/1/2/3 (the fleet's FLEETSHARD_TEST_SPEED: a test sleeps
duration x slowness). The inventory declares the machines' relative speeds (1, 1, 0.5, 0.33), as a
user who knows their Raspberry Pi would; one row shows a run without them.

Each test file holds one line per test case, and its number of cases follows its duration with noise
(lognormal, sigma 0.5), as in a real suite: fleetshard weighs files by size when it has no history.

Lower bound = max(total work / sum(slots x relative speed), longest test / fastest relative speed).
Rows: fleetshard static (core-weighted), dynamic, dynamic --speculate, each a first run in a fresh
directory (no history); dynamic again in the dynamic run's directory (history: durations and speeds
learned); GNU parallel -S with the same slots, in input order, over ssh ControlMaster.

Makespan is measured from the first test start to the last test end (fleetshard's JSON report, GNU
parallel's --joblog); the wall time of the whole command is shown too, and what of it is outside the tests
(wall minus makespan: start-up before the first test, wrap-up after the last).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
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
from fakesuite import FakeSuite

SLOTS = {"h1": 4, "h2": 6, "h3": 1, "h4": 1}
SLOWNESS = [1.0, 1.0, 2.0, 3.0]
CASE_LINE = "def test_case_{n:04d}(page):  # one test case of the fake suite, about sixty bytes\n"


def durations(n: int, total: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    raw = [rng.lognormvariate(0.0, 1.0) for _ in range(n)]
    scale = total / sum(raw)
    return [round(d * scale, 3) for d in raw]


def case_counts(durs: list[float], seed: int) -> list[int]:
    """Test cases per file: proportional to the file's duration, with lognormal noise (sigma 0.5)."""
    rng = random.Random(seed + 1)
    mean = sum(durs) / len(durs)
    return [max(1, round(8 * d / mean * rng.lognormvariate(0.0, 0.5))) for d in durs]


def lower_bound(durs: list[float]) -> float:
    rel = [1 / s for s in SLOWNESS]
    capacity = sum(slots * r for slots, r in zip(SLOTS.values(), rel, strict=True))
    return max(sum(durs) / capacity, max(durs) / max(rel))


def span_from_report(path: Path) -> float:
    data = json.loads(path.read_text())
    attempts = data["attempts"]
    return float(max(a["ended"] for a in attempts) - min(a["started"] for a in attempts))


def span_from_joblog(path: Path) -> tuple[float, int]:
    starts, ends, ok = [], [], 0
    for line in path.read_text().splitlines()[1:]:
        cols = line.split("\t")
        start, runtime, code = float(cols[2]), float(cols[3]), int(cols[6])
        starts.append(start)
        ends.append(start + runtime)
        ok += code == 0
    return max(ends) - min(starts), ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tests", type=int, default=96)
    ap.add_argument("--work", type=float, default=90.0, help="total seconds of work at speed 1")
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    ap.add_argument("--no-peers", action="store_true")
    args = ap.parse_args(argv)
    n, work = (12, 3.0) if args.quick else (args.tests, args.work)
    durs = durations(n, work, args.seed)
    cases = case_counts(durs, args.seed)
    lb = lower_bound(durs)
    names = [f"tests/t{i:03d}.test" for i in range(1, n + 1)]
    specs = {name: {"duration": d} for name, d in zip(names, durs, strict=True)}
    base = Path(tempfile.mkdtemp(prefix="fleetshard-bench-makespan-"))
    os.chmod(base, 0o755)
    rows: list[list[Any]] = []
    results: dict[str, float] = {}
    walls: dict[str, float] = {}

    with fleet(4, speeds=SLOWNESS) as f:
        shared = FakeSuite(base / "shared-project", f.root, specs)

        def project(label: str, *, speeds: bool = True) -> Path:
            d = base / label
            d.mkdir()
            for name, count in zip(names, cases, strict=True):
                path = d / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("".join(CASE_LINE.format(n=k) for k in range(count)))
            extra = {"h3": {"speed": 0.5}, "h4": {"speed": round(1 / 3, 3)}} if speeds else None
            f.write_inventory(d / "machines.yaml", slots=SLOTS, suite=shared.suite(timeout=600),
                              extra_machine_keys=extra)
            return d

        def run_fleetshard(label: str, d: Path, *flags: str) -> None:
            report = d / f"report-{len(rows)}.json"
            t = timed(fleetshard_argv("run", "-i", d / "machines.yaml", "--skip-health-checks", "--no-live", "-q",
                                      "--json-report", report, *flags), cwd=d)
            span = span_from_report(report)
            results[label] = span
            walls[label] = t.wall
            rows.append([label, span, span / lb, t.wall, t.wall / lb, t.wall - span])
            note(f"{label}: {span:.2f} s ({span / lb:.2f} x LB)")

        run_fleetshard("fleetshard static (core-weighted)", project("static"), "--strategy", "static")
        dyn = project("dynamic")
        run_fleetshard("fleetshard dynamic, first run", dyn, "--strategy", "dynamic")
        run_fleetshard("fleetshard dynamic --speculate, first run", project("speculate"), "--strategy", "dynamic",
                       "--speculate")
        run_fleetshard("fleetshard dynamic, speeds not declared", project("nospeeds", speeds=False),
                       "--strategy", "dynamic")
        plan = subprocess.run(fleetshard_argv("plan", "-i", dyn / "machines.yaml", "--skip-health-checks"),
                              cwd=dyn, capture_output=True, text=True, check=False)
        for line in plan.stdout.splitlines()[-3:]:
            note(f"plan with history: {line.strip()}")
        run_fleetshard("fleetshard dynamic, with history (2nd run)", dyn, "--strategy", "dynamic")

        par = gnu_parallel()
        if par is None or args.no_peers:
            note("GNU parallel not installed: skipped" if par is None else "peers skipped (--no-peers)")
        else:
            control = base / "cm"
            control.mkdir()
            cfg = ssh_config(f, base / "ssh_config", control=control)
            joblog = base / "joblog"
            logins = ",".join(f"{slots}/{name}" for name, slots in SLOTS.items())
            (base / "inputs").write_text("\n".join(names) + "\n")
            try:
                t = timed([par, "--will-cite", "--ssh", f"ssh -F {cfg}", "-S", logins, "--joblog", str(joblog),
                           "-a", str(base / "inputs"), "python3", str(shared.runner)], env=parallel_env(base),
                          check=False)
            finally:
                close_masters(cfg, f.names)
            span, ok = span_from_joblog(joblog)
            results["GNU parallel"] = span
            rows.append([f"GNU parallel -S, input order ({ok}/{n} ok)", span, span / lb, t.wall, t.wall / lb,
                         t.wall - span])
        shared.cleanup()
    shutil.rmtree(base, ignore_errors=True)

    rel = [round(1 / s, 2) for s in SLOWNESS]
    print(f"\nmakespan: {n} tests, {sum(durs):.1f} s of work at speed 1 (lognormal sigma 1, longest "
          f"{max(durs):.2f} s), slots {list(SLOTS.values())}, relative speeds {rel}, {os.cpu_count()} cores")
    print(f"lower bound: {lb:.2f} s = max(work / {sum(s * r for s, r in zip(SLOTS.values(), rel, strict=True)):.2f}"
          f" slot-speed, longest test {max(durs):.2f} s)\n")
    print(table(["run", "makespan s", "x LB", "wall s", "wall x LB", "outside tests s"], rows))
    firsts = ("fleetshard dynamic, first run", "fleetshard dynamic --speculate, first run")
    first = min(results[k] for k in firsts)
    hist_label = "fleetshard dynamic, with history (2nd run)"
    hist = results[hist_label]
    line = (f"\nfirst run (best of dynamic / --speculate) {first / lb:.2f} x LB, with history {hist / lb:.2f} x LB; "
            f"as whole processes {min(walls[k] for k in firsts) / lb:.2f} and {walls[hist_label] / lb:.2f} x LB")
    if "GNU parallel" in results:
        line += f"; GNU parallel {results['GNU parallel'] / lb:.2f} x LB"
    print(line)
    if math.isnan(first):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
