"""Smoke runs of the benchmarks in bench/ with tiny sizes (--quick): they start, run and print a table.

No timing is asserted: absolute times on a shared machine are noise. Peers that are not installed
(GNU parallel, parallel-ssh) are skipped by the benchmarks themselves.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fleet import skip_reason

BENCH = Path(__file__).resolve().parent.parent / "bench"

pytestmark = pytest.mark.fleet


@pytest.mark.parametrize(("script", "expect"), [
    ("dispatch.py", "fleetshard / raw asyncssh"),
    ("makespan.py", "lower bound"),
    ("scale.py", "orchestrator cpu s"),
    ("output.py", "fleetshard / OpenSSH client throughput"),
    ("dashboard.py", "a page that stopped reading"),
    ("startup.py", "process start to first shard start"),
    ("transports.py", "fleetshard openssh / ssh throughput"),
])
def test_benchmark_quick(script: str, expect: str) -> None:
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    proc = subprocess.run([sys.executable, str(BENCH / script), "--quick"], capture_output=True, text=True,
                          timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert expect in proc.stdout
    assert "fleetshard" in proc.stdout
