"""A fake test suite for runs on the sshd fleet: test "files" whose behaviour comes from a spec.

Each test file name maps to a spec: ``duration`` (seconds at speed 1; multiplied by the machine's
FLEETSHARD_TEST_SPEED), ``fail`` (always fail), ``fail_once`` (fail the first attempt only: flaky),
``exit`` (exit with this code, e.g. 255 for an infra failure), ``fail_on`` (machine names where it fails).
The runner prints every argument it received, so tests can check quoting, and writes JUnit XML.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

RUNNER = r'''
import hashlib, json, os, sys, time, xml.etree.ElementTree as ET
args = sys.argv[1:]
junit = None
if args and args[0] == "--junit":
    junit, args = args[1], args[2:]
spec_path = os.environ.get("FAKE_SPEC") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "spec.json")
with open(spec_path) as fh:
    spec = json.load(fh)
host = os.environ.get("FLEETSHARD_TEST_HOST", "?")
speed = float(os.environ.get("FLEETSHARD_TEST_SPEED", "1"))
print("HOST " + host + " PID " + str(os.getpid()) + " PGID " + str(os.getpgid(0)), flush=True)
for a in args:
    print("ARG " + json.dumps(a), flush=True)
suite = ET.Element("testsuite", name="fake")
failed = 0
code = None
for name in args:
    s = spec.get(name, {})
    start = time.time()
    time.sleep(float(s.get("duration", 0.05)) * speed)
    case = ET.SubElement(suite, "testcase", name="test_" + os.path.basename(name), classname="fake", file=name)
    bad = s.get("fail") or host in s.get("fail_on", [])
    if s.get("fail_once"):
        key = hashlib.sha1(name.encode()).hexdigest() + "-" + str(s["fail_once"])
        marker = os.path.join(os.path.dirname(spec_path), "once-" + key)
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            os.close(fd)
            bad = True
        except FileExistsError:
            pass
    if bad:
        failed += 1
        ET.SubElement(case, "failure", message="boom in " + name)
        print("FAIL " + name, flush=True)
    else:
        print("PASS " + name, flush=True)
    case.set("time", "%.3f" % (time.time() - start))
    if "exit" in s:
        code = int(s["exit"])
suite.set("tests", str(len(suite)))
suite.set("failures", str(failed))
if junit:
    d = os.path.dirname(junit)
    if d:
        os.makedirs(d, exist_ok=True)
    ET.ElementTree(suite).write(junit)
sys.exit(code if code is not None else (1 if failed else 0))
'''


class FakeSuite:
    def __init__(self, project: Path, shared: Path, specs: Mapping[str, Mapping[str, Any]]) -> None:
        self.project = project                    # the inventory's directory: test files live here
        self.dir = shared / f"suite-{uuid.uuid4().hex[:8]}"
        self.dir.mkdir(parents=True)
        os.chmod(self.dir, 0o777)
        self.runner = self.dir / "runner.py"
        self.runner.write_text(RUNNER)
        (self.dir / "spec.json").write_text(json.dumps(dict(specs)))
        for name in specs:
            path = project / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"# fake test {name}\n")
        for p in (self.runner, self.dir / "spec.json"):
            os.chmod(p, 0o644)

    def suite(self, **extra: Any) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "tests": "tests/**/*.test",
            "command": f"python3 {self.runner} --junit {{junit}} {{files}}",
            "timeout": 60,
            "kill_grace": 2,
        }
        cfg.update(extra)
        return cfg

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def specs(n: int, duration: float = 0.1, **overrides: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``n`` test files tests/tNN.test, each with ``duration``; overrides by name."""
    out: dict[str, dict[str, Any]] = {f"tests/t{i:02d}.test": {"duration": duration} for i in range(1, n + 1)}
    for name, spec in overrides.items():
        out.setdefault(name, {}).update(spec)
    return out
