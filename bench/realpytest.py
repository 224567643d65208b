"""A real pytest suite (networkx's own tests, tests/realsuites.py) over the sshd fleet against its local peers.

    python bench/realpytest.py [--machines 4] [--slots 1] [--repeat 2] [--no-xdist]

Measured in the same run, each as a whole process, best of --repeat:

- serial: one local pytest over the whole suite (the reference: ratios are against it);
- pytest-xdist ``-n N`` locally (N = machines × slots), and ``-n 2`` (this machine's cores);
- pytest-xdist ``--tx ssh`` to the same fleet, one worker per slot (execnet over OpenSSH);
- fleetshard ``run`` in file mode, a first run (no history) and a second run with history.

Every tool runs the same files and writes JUnit; the table shows each one's counts (passed / skipped /
failed, xfail counted as skipped), so the verdicts can be compared, and how many pytest start-ups each
paid (fleetshard: its shards; xdist: its workers). All fake machines share this machine's cores, so the
only speed-up available is the idle core: any wall time above the serial run's is overhead.

Every row uses one virtualenv of the benchmark's own (built once next to the real suites' cache, from
PyPI): pytest, pytest-xdist and networkx's wheel without its optional dependencies (for its entry
points; the source tree is what is imported). It is made from the system's ``/usr/bin/python3`` when
there is one, so that the fleet's login user can run it too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PYTHON, fleet, fleetshard_argv, note, ssh_config, table, timed
from realsuites import NETWORKX, PYTEST_FOR_SUITE, cache_dir, copy_suite, pytest_suite

XDIST = "pytest-xdist>=3.6,<4"
SYSTEM_PYTHON = Path("/usr/bin/python3")


def bench_python() -> Path:
    """The benchmark's virtualenv (built once, cached): pytest, pytest-xdist, networkx's wheel."""
    venv = cache_dir() / "bench-realpytest-venv"
    python = venv / "bin" / "python"
    if (venv / "ready").exists():
        return python
    shutil.rmtree(venv, ignore_errors=True)
    base = str(SYSTEM_PYTHON) if SYSTEM_PYTHON.exists() else PYTHON
    subprocess.run([base, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    PYTEST_FOR_SUITE, XDIST, NETWORKX], check=True, capture_output=True, timeout=600)
    subprocess.run(["chmod", "-R", "a+rX", str(venv)], check=True)
    (venv / "ready").write_text("")
    return python


def counts(junit: Path) -> str:
    """passed/skipped/failed from a JUnit file (or several merged into one)."""
    try:
        root = ET.parse(junit).getroot()
    except (OSError, ET.ParseError):
        return "no JUnit"
    passed = skipped = failed = 0
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed += 1
        elif case.find("skipped") is not None:
            skipped += 1
        else:
            passed += 1
    return f"{passed}/{skipped}/{failed}"


def best(runs: list[tuple[float, Any]]) -> tuple[float, Any]:
    return min(runs, key=lambda r: r[0])  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--machines", type=int, default=4)
    ap.add_argument("--slots", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--no-xdist", action="store_true")
    ap.add_argument("--quick", action="store_true", help="one repeat, two machines (a smoke test)")
    args = ap.parse_args(argv)
    machines, repeat = (2, 1) if args.quick else (args.machines, args.repeat)
    workers = machines * args.slots
    suite = pytest_suite()
    base = Path(tempfile.mkdtemp(prefix="fleetshard-bench-realpytest-"))
    os.chmod(base, 0o755)
    project = copy_suite(suite, base / "project").root
    (project / ".fleetshard").mkdir()
    os.chmod(project / ".fleetshard", 0o1777)   # the machines share the project as their workdir
    files = sorted(str(p.relative_to(project)) for t in suite.tests for p in (project / t).glob("test_*.py"))
    xpy = bench_python()
    command = f"{xpy} -m pytest -p no:cacheprovider"
    pytest_cmd = command.split()
    rows: list[list[Any]] = []
    walls: dict[str, float] = {}

    def local(label: str, argv_: list[str], startups: int, paths: list[str] | None = None) -> None:
        runs = []
        for i in range(repeat):
            junit = base / f"junit-{len(rows)}-{i}.xml"
            t = timed([*argv_, "-q", f"--junitxml={junit}", *(paths or files)], cwd=project, check=False)
            if t.code not in (0, 1):
                note(f"{label}: exit {t.code}: {t.out[-800:]}{t.err[-800:]}")
            runs.append((t.wall, counts(junit)))
        wall, got = best(runs)
        walls[label] = wall
        rows.append([label, wall, startups, got])

    local("serial local pytest", pytest_cmd, 1)
    if not args.no_xdist:
        local(f"pytest -n {workers} (xdist, local)", [str(xpy), "-m", "pytest", "-p", "no:cacheprovider",
                                                      "-n", str(workers)], workers)
        if workers != 2:
            local("pytest -n 2 (xdist, local)", [str(xpy), "-m", "pytest", "-p", "no:cacheprovider", "-n", "2"], 2)

    with fleet(machines) as f:
        if not args.no_xdist:
            cfg = ssh_config(f, base / "ssh_config")
            # xdist ships the code under test to each worker's directory (the machine's workdir)
            tx: list[str] = ["--rsyncdir", str(project / "networkx")]
            for name in f.names:
                for _ in range(args.slots):
                    tx += ["--tx", f"ssh=-F {cfg} {name}//python={xpy}//chdir={f.machine(name).workdir}"]
            local(f"pytest-xdist --tx ssh ({workers} workers on the fleet)",
                  [str(xpy), "-m", "pytest", "-p", "no:cacheprovider", "-d", *tx], workers,
                  [str(project / p) for p in files])     # below the rsync root, as xdist wants them

        def fleetshard_rows(label: str, inv: Path, runs_: int) -> list[tuple[float, tuple[int, str]]]:
            results = []
            for i in range(runs_):
                report, junit = inv.parent / f"report-{i}.json", inv.parent / f"junit-{i}.xml"
                t = timed(fleetshard_argv("run", "-i", inv, "--no-live", "-q", "--json-report", report,
                                          "--junit", junit), cwd=project, check=False)
                if t.code not in (0, 1):
                    note(f"{label}: exit {t.code}: {t.out[-800:]}{t.err[-800:]}")
                try:
                    shards = len(json.loads(report.read_text())["shards"])
                except (OSError, ValueError, KeyError):
                    shards = 0
                results.append((t.wall, (shards, counts(junit))))
            return results

        def inventory(label: str, **extra: Any) -> Path:
            d = base / label
            d.mkdir(mode=0o777)
            os.chmod(d, 0o777)
            # the inventory sits in the project (the runner's listing runs there), its history in d
            return f.write_inventory(
                project / f"machines-{label}.yaml", slots=args.slots,
                suite={"runner": "pytest", "timeout": 300,
                       "command": f"{command} -q --junitxml={{junit}} {{tests}}",
                       "discover": f"{command} --collect-only -q -rsE {' '.join(files)}",
                       "junit": str(d / "junit-{run_id}-{shard}-{attempt}.xml"), **extra},
                extra_machine_keys={n: {"workdir": str(project)} for n in f.names},
                top={"history": str(d / "history.db")})

        def first_and_history(key: str, warm: bool) -> None:
            """A first run on each of ``repeat`` fresh histories, then ``repeat`` runs on the first one's."""
            invs = [inventory(f"{key}-{i}".replace(" ", "-").replace(",", ""), **({"workers": "warm"} if warm else {}))
                    for i in range(repeat)]
            first: list[tuple[float, tuple[int, str]]] = []
            for inv in invs:
                first += fleetshard_rows(f"{key}, first run", inv, 1)
            again = fleetshard_rows(f"{key}, with history", invs[0], repeat)
            for when, results in (("first run", first), ("with history", again)):
                wall, (shards, got) = best(results)
                walls[f"{key}, {when}"] = wall
                if warm:        # one pytest per slot, started once, every file a shard of its own
                    rows.append([f"fleetshard, warm workers, {when} ({shards} shards)", wall, workers, got])
                else:
                    rows.append([f"fleetshard, {when} ({machines} machines x {args.slots} slot)", wall, shards, got])

        first_and_history("fleetshard", warm=False)
        first_and_history("fleetshard warm", warm=True)

    shutil.rmtree(base, ignore_errors=True)
    serial = walls["serial local pytest"]
    for r in rows:
        r.insert(2, r[1] / serial)
    print(f"\nreal pytest suite: networkx {', '.join(suite.tests)} ({len(files)} files), {machines} sshd machines "
          f"x {args.slots} slot(s), {os.cpu_count()} cores; best of {repeat}\n")
    print(table(["run", "wall s", "x serial", "start-ups", "passed/skipped/failed"], rows))
    print(f"\nfleetshard / serial local: first run {walls['fleetshard, first run'] / serial:.2f}, "
          f"with history {walls['fleetshard, with history'] / serial:.2f} (target <= 0.8)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
