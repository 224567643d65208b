"""Progress during a real run: a pseudo-terminal shows the live display; health re-probes drain and rejoin."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

from clihelp import fleetshard
from fakesuite import FakeSuite, specs
from fleet import SshFleet, WriteInventory

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def run_in_pty(args: list[str], timeout: float = 90) -> tuple[int, str]:
    master, slave = pty.openpty()
    env = dict(os.environ, COLUMNS="140", LINES="40", TERM="xterm-256color")
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([sys.executable, "-m", "fleetshard", *args], stdin=slave, stdout=slave, stderr=slave,
                            env=env, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    code = proc.wait(timeout=10)
    os.close(master)
    return code, b"".join(chunks).decode("utf-8", "replace")


def test_live_display_in_a_terminal(fleet: SshFleet, fleet_inventory: WriteInventory, tmp_path: Path) -> None:
    fs = FakeSuite(tmp_path, fleet.root, specs(12, 0.4, **{"tests/t05.test": {"fail": True}}))
    inv = fleet_inventory(suite=fs.suite())
    code, raw = run_in_pty(["run", "-i", str(inv)])
    assert code == 1, raw
    assert "\x1b[" in raw                         # a live, coloured display...
    screen = ANSI.sub("", raw)
    for name in ("h1", "h2", "h3", "h4"):          # ...with a row per machine
        assert re.search(rf"\b{name}\b.*(healthy|running|s\d\d\d)", screen), name
    assert "ETA" in screen
    assert "t05.test" in screen and "FAIL" in screen          # the failure announced with its output
    assert "FAILED: 1 of" in screen and "util" in screen          # the final summary table
    fs.cleanup()


def test_plain_lines_when_not_a_terminal(fleet: SshFleet, fleet_inventory: WriteInventory, tmp_path: Path) -> None:
    fs = FakeSuite(tmp_path, fleet.root, specs(6, 0.05))
    inv = fleet_inventory(suite=fs.suite())
    res = fleetshard("run", "-i", inv, "--stream")
    assert res.code == 0, res.out + res.err
    assert "\x1b" not in res.out and "\r" not in res.out
    assert re.search(r"^\[\+\d\d:\d\d\] ", res.out, re.M)
    assert re.search(r"^\[h\d s\d{3}\] PASS tests/t01.test$", res.out, re.M)
    quiet = fleetshard("run", "-i", inv, "-q")
    assert quiet.code == 0 and len(quiet.out.splitlines()) < len(res.out.splitlines()) and "PASSED" in quiet.out
    fs.cleanup()


def test_reprobe_drains_an_unhealthy_machine_and_it_rejoins(fleet: SshFleet, fleet_inventory: WriteInventory,
                                                           tmp_path: Path) -> None:
    flag_dir = fleet.root / f"maint-{time.monotonic_ns()}"
    flag_dir.mkdir()
    os.chmod(flag_dir, 0o777)
    fs = FakeSuite(tmp_path, fleet.root, specs(32, 0.4))
    inv = fleet_inventory(machines=["h1", "h2"], slots=1, suite=fs.suite(shards=32),
                          health={"interval": 0.5, "check": f'[ ! -e {flag_dir}/"$FLEETSHARD_MACHINE" ]'})
    js = tmp_path / "r.json"
    proc = subprocess.Popen([sys.executable, "-m", "fleetshard", "run", "-i", str(inv), "--json-report", str(js)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30              # h2 has started shards (a busy machine starts slowly)
    while not fleet.processes("h2") and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)
    flag = flag_dir / "h2"
    flag.write_text("maintenance\n")
    down_at = time.time()
    time.sleep(4.0)
    flag.unlink()
    up_at = time.time()
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, out + err
    assert "h2" in out and "unhealthy" in out and "health check" in out
    starts = [a["started"] for a in json.loads(js.read_text())["attempts"] if a["machine"] == "h2"]
    assert any(s < down_at for s in starts) and any(s > up_at for s in starts)
    # while in maintenance (after a probe interval or so to notice, on a busy CI machine), h2 took no new shard
    assert not [s for s in starts if down_at + 2.0 < s < up_at]
    fs.cleanup()
