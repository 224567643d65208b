"""README's first command: `fleetshard run` on the bundled demo (local transport, no SSH set-up)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from clihelp import fleetshard

REPO = Path(__file__).resolve().parents[1]


def test_the_bundled_demo_runs_end_to_end(tmp_path: Path) -> None:
    shutil.copy(REPO / "machines.yaml", tmp_path / "machines.yaml")
    shutil.copytree(REPO / "examples" / "demo", tmp_path / "examples" / "demo")
    js, junit = tmp_path / "report.json", tmp_path / "junit.xml"
    res = fleetshard("run", "--json-report", js, "--junit", junit, cwd=tmp_path)
    assert res.code == 0, res.out + res.err
    assert "PASSED" in res.out
    data = json.loads(js.read_text())
    assert {a["machine"] for a in data["attempts"]} == {"alpha", "beta"}
    assert len(data["tests"]) == sum(1 for f in (tmp_path / "examples/demo/tests").glob("test_*.py")
                                     for line in f.read_text().splitlines() if line.startswith("def test_"))
    assert fleetshard("history", cwd=tmp_path).code == 0
