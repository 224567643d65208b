"""suite.services in real runs on the sshd fleet: one service per machine on its own port, shards that use
it, a service that never gets ready drains its machine with its output, Ctrl-C stops every service."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from clihelp import fleetshard
from fleet import MakeFleet

FETCH = ("python3 -c \"import os, urllib.request; "
         "print(urllib.request.urlopen('http://127.0.0.1:' + os.environ['PORT'] + '/').status)\"")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def per_machine_ports(names: list[str]) -> dict[str, dict[str, Any]]:
    return {n: {"env": {"PORT": str(p)}} for n, p in zip(names, free_ports(len(names)), strict=True)}


SERVER = {"command": "echo starting on {machine}; exec python3 -m http.server $PORT --bind 127.0.0.1",
          "ready": "http://127.0.0.1:$PORT/", "timeout": 20}


def test_each_machine_serves_its_shards_and_nothing_is_left(make_fleet: MakeFleet, tmp_path: Path) -> None:
    f = make_fleet(2)
    inv = f.write_inventory(tmp_path / "machines.yaml", slots=2, extra_machine_keys=per_machine_ports(f.names),
                            suite={"command": FETCH, "shards": 6, "services": [SERVER]})
    js = tmp_path / "r.json"
    res = fleetshard("run", "-i", inv, "--json-report", js, "--no-live")
    assert res.code == 0, res.out + res.err
    data = json.loads(js.read_text())
    assert {a["machine"] for a in data["attempts"]} == {"h1", "h2"}
    assert f.wait_no_processes(5) == []


def test_a_service_that_never_gets_ready_drains_its_machine(make_fleet: MakeFleet, tmp_path: Path) -> None:
    f = make_fleet(2)
    keys = per_machine_ports(f.names)
    keys["h2"]["env"]["BROKEN"] = "1"
    server = {**SERVER, "command": 'if [ -n "$BROKEN" ]; then echo "port {machine} is taken"; exit 4; fi; '
                                   + SERVER["command"]}
    inv = f.write_inventory(tmp_path / "machines.yaml", slots=1, extra_machine_keys=keys,
                            suite={"command": FETCH, "shards": 4, "services": [server]})
    js = tmp_path / "r.json"
    res = fleetshard("run", "-i", inv, "--json-report", js, "--no-live")
    assert res.code == 0, res.out + res.err
    data = json.loads(js.read_text())
    assert all(a["machine"] == "h1" for a in data["attempts"] if a["outcome"] == "passed")
    h2 = next(m for m in data["machines"] if m["name"] == "h2")
    assert h2["status"] == "drained"
    assert "exited before it was ready (exit 4)" in res.out and "port h2 is taken" in res.out
    assert f.wait_no_processes(5) == []


def test_ctrl_c_stops_the_services(make_fleet: MakeFleet, tmp_path: Path) -> None:
    f = make_fleet(2)
    # a service that must be TERMed (it ignores nothing) next to one that ignores TERM: KILL after the grace
    stubborn = {"command": "trap '' TERM; exec sleep 120"}
    inv = f.write_inventory(tmp_path / "machines.yaml", slots=1, extra_machine_keys=per_machine_ports(f.names),
                            suite={"command": "sleep 60", "shards": 2, "kill_grace": 1,
                                   "services": [SERVER, stubborn]})
    proc = subprocess.Popen([sys.executable, "-m", "fleetshard", "run", "-i", str(inv), "--no-live"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:            # both services and both shards are up
        if sum(1 for pid in f.processes() if _cmdline(pid).startswith("sleep 60")) == 2:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert f.wait_no_processes(5) == []


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
