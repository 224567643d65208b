"""A tiny test runner for the bundled demo suite: runs the test_* functions of the files it is given
and writes a JUnit XML report. Real suites use their own runner (pytest, Playwright, jest)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--junit")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    suite = ET.Element("testsuite", name="demo")
    failures = 0
    for path in args.files:
        spec = importlib.util.spec_from_file_location(Path(path).stem, path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for name in sorted(n for n in vars(module) if n.startswith("test_")):
            start = time.perf_counter()
            case = ET.SubElement(suite, "testcase", name=name, classname=Path(path).stem, file=path)
            try:
                getattr(module, name)()
                print(f"PASS {path}::{name}", flush=True)
            except Exception as exc:
                failures += 1
                ET.SubElement(case, "failure", message=str(exc)).text = traceback.format_exc()
                print(f"FAIL {path}::{name}: {exc}", flush=True)
            case.set("time", f"{time.perf_counter() - start:.3f}")
    suite.set("tests", str(len(suite)))
    suite.set("failures", str(failures))
    if args.junit:
        Path(args.junit).parent.mkdir(parents=True, exist_ok=True)
        ET.ElementTree(suite).write(args.junit, encoding="utf-8", xml_declaration=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
