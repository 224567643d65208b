"""Run inside a fresh network namespace by test_faults.py: a two-machine sshd fleet, a run, and a
partition of h2 (iptables DROP of its address) while its shards run. Prints one JSON line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fakesuite import FakeSuite, specs
from fleet import SshFleet


def shards_on(fleet: SshFleet, name: str) -> bool:
    for pid in fleet.processes(name):
        try:
            if b"runner.py" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
        except OSError:
            continue
    return False


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="fleetshard-fleet-"))
    project = Path(tempfile.mkdtemp(prefix="fleetshard-partition-"))
    try:
        with SshFleet(root, n=2, first_octet_start=40) as fleet:
            fs = FakeSuite(project, fleet.root, specs(8, 2.0))
            inv = fleet.write_inventory(project / "machines.yaml", slots=2, suite=fs.suite(shards=8, timeout=60),
                                        health={"interval": 0})
            js = project / "r.json"
            start = time.monotonic()
            proc = subprocess.Popen([sys.executable, "-m", "fleetshard", "run", "-i", str(inv), "--json-report",
                                     str(js), "--no-live"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not shards_on(fleet, "h2"):
                time.sleep(0.05)
            address = fleet.machine("h2").address
            rule = ["INPUT", "-d", address, "-j", "DROP"]
            subprocess.run(["iptables", "-A", *rule], check=True)
            try:
                out, _ = proc.communicate(timeout=120)
                elapsed = time.monotonic() - start
            finally:
                subprocess.run(["iptables", "-D", *rule], check=False)
            left = fleet.wait_no_processes(15)
            data = json.loads(js.read_text()) if js.exists() else {}
            print(json.dumps({"code": proc.returncode, "elapsed": elapsed, "left": left, "report": data,
                              "out": out[-4000:]}))
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(project, ignore_errors=True)


if __name__ == "__main__":
    main()
