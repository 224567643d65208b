"""Workspace steps (setup, sync, teardown, artifacts) and CI outputs, on the real sshd fleet."""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from clihelp import fleetshard
from fakesuite import FakeSuite, specs
from fleet import SshFleet, WriteInventory


def shared_dir(fleet: SshFleet, name: str) -> Path:
    d = fleet.root / f"{name}-{time.monotonic_ns()}"
    d.mkdir()
    os.chmod(d, 0o777)
    return d


def test_setup_runs_once_per_machine_with_run_env_and_teardown_at_end(
        fleet: SshFleet, fleet_inventory: WriteInventory, tmp_path: Path) -> None:
    out = shared_dir(fleet, "setup")
    fs = FakeSuite(tmp_path, fleet.root, specs(8, 0.05))
    suite = fs.suite(
        setup=f'echo "$FLEETSHARD_MACHINE $FLEETSHARD_COMMIT $FLEETSHARD_RUN_ID" >> {out}/setup-$FLEETSHARD_MACHINE',
        teardown=f"echo done >> {out}/teardown-$FLEETSHARD_MACHINE")
    inv = fleet_inventory(machines=["h1", "h2"], suite=suite)
    js = tmp_path / "r.json"
    res = fleetshard("run", "-i", inv, "--commit", "abc123", "--json-report", js)
    assert res.code == 0, res.out + res.err
    run_id = json.loads(js.read_text())["run_id"]
    for m in ("h1", "h2"):
        assert (out / f"setup-{m}").read_text().splitlines() == [f"{m} abc123 {run_id}"]
        assert (out / f"teardown-{m}").read_text() == "done\n"
    logs = Path(json.loads(js.read_text())["run_dir"]) / "logs"
    assert (logs / "setup-h1.log").exists()
    fs.cleanup()


def test_failing_setup_drains_the_machine(fleet: SshFleet, fleet_inventory: WriteInventory, tmp_path: Path) -> None:
    fs = FakeSuite(tmp_path, fleet.root, specs(6, 0.05))
    suite = fs.suite(setup='[ "$FLEETSHARD_MACHINE" != h2 ] || { echo "npm ci: disk full" >&2; exit 3; }')
    inv = fleet_inventory(machines=["h1", "h2"], suite=suite)
    js = tmp_path / "r.json"
    res = fleetshard("run", "-i", inv, "--json-report", js)
    assert res.code == 0, res.out + res.err
    data = json.loads(js.read_text())
    assert all(s["state"] == "passed" for s in data["shards"])
    assert {a["machine"] for a in data["attempts"] if a["outcome"] == "passed"} == {"h1"}
    h2 = next(m for m in data["machines"] if m["name"] == "h2")
    assert h2["status"] == "drained"
    assert "setup failed on h2" in res.out and "disk full" in res.out
    fs.cleanup()


def test_sync_copies_only_changed_files(fleet: SshFleet, fleet_inventory: WriteInventory, tmp_path: Path) -> None:
    src = tmp_path / "app"
    (src / "sub dir").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n")
    (src / "sub dir" / "b.txt").write_text("beta\n")
    work = shared_dir(fleet, "sync")
    inv = fleet_inventory(machines=["h1"], extra_machine_keys={"h1": {"workdir": str(work)}},
                          suite={"command": "cat a.txt 'sub dir/b.txt'", "shards": 1, "sync": "app"})
    res = fleetshard("run", "-i", inv, "-v")
    assert res.code == 0, res.out + res.err
    assert (work / "a.txt").read_text() == "alpha\n" and (work / "sub dir" / "b.txt").read_text() == "beta\n"
    assert "synced 2 changed file(s)" in res.out
    time.sleep(1.1)
    (src / "a.txt").write_text("alpha two\n")
    res2 = fleetshard("run", "-i", inv, "-v")
    assert res2.code == 0, res2.out + res2.err
    assert "synced 1 changed file(s)" in res2.out
    assert (work / "a.txt").read_text() == "alpha two\n"


def test_artifacts_are_collected_per_shard(fleet: SshFleet, fleet_inventory: WriteInventory,
                                           tmp_path: Path) -> None:
    tag = f"art{time.monotonic_ns()}"
    cmd = (f"mkdir -p {tag}/s{{shard}} && echo trace-{{shard}} > {tag}/s{{shard}}/trace.txt && "
           f"[ {{shard}} != 2 ] || head -c 300000 /dev/zero > {tag}/s2/big.bin")
    inv = fleet_inventory(machines=["h1", "h2"], suite={"command": cmd, "shards": 3,
                                                        "artifacts": [f"{tag}/s{{shard}}/**", "missing/**"]})
    js = tmp_path / "r.json"
    res = fleetshard("run", "-i", inv, "--json-report", js)
    assert res.code == 0, res.out + res.err
    data = json.loads(js.read_text())
    run_dir = Path(data["run_dir"])
    for a in data["attempts"]:
        assert a["artifacts"], a
        for path in a["artifacts"]:
            p = Path(path)
            assert p.is_file() and p.is_relative_to(run_dir / "artifacts" / a["machine"] / a["shard_id"])
    traces = sorted(p.read_text().strip() for p in (run_dir / "artifacts").rglob("trace.txt"))
    assert traces == ["trace-1", "trace-2", "trace-3"]


def test_github_step_summary_and_annotations(fleet: SshFleet, fleet_inventory: WriteInventory,
                                             tmp_path: Path) -> None:
    fs = FakeSuite(tmp_path, fleet.root, specs(4, 0.01, **{"tests/t02.test": {"fail": True}}))
    inv = fleet_inventory(machines=["h1", "h2"], suite=fs.suite())
    summary = tmp_path / "summary.md"
    res = fleetshard("run", "-i", inv, env={"GITHUB_STEP_SUMMARY": str(summary), "GITHUB_ACTIONS": "true"})
    assert res.code == 1
    text = summary.read_text()
    assert "## fleetshard: tests failed" in text and "| h1 |" in text and "tests/t02.test" in text
    assert "::error file=tests/t02.test,title=fake%3A%3Atest_t02.test failed on h" in res.out
    fs.cleanup()


class _Hook(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def webhook() -> Iterator[str]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Hook.received = []
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()
    thread.join()


def test_notify_posts_a_summary(fleet: SshFleet, fleet_inventory: WriteInventory, tmp_path: Path,
                                webhook: str) -> None:
    fs = FakeSuite(tmp_path, fleet.root, specs(3, 0.01))
    inv = fleet_inventory(machines=["h1"], suite=fs.suite())
    res = fleetshard("run", "-i", inv, "--notify", webhook)
    assert res.code == 0, res.out + res.err
    (payload,) = _Hook.received
    assert payload["verdict"] == "passed" and payload["exit_code"] == 0
    assert payload["counts"]["passed"] == 3 and "fleetshard run" in payload["text"]
    fs.cleanup()


def test_failing_webhook_is_only_a_warning(fleet: SshFleet, fleet_inventory: WriteInventory,
                                           tmp_path: Path) -> None:
    addr, port = fleet.unused_address()
    fs = FakeSuite(tmp_path, fleet.root, specs(2, 0.01))
    inv = fleet_inventory(machines=["h1"], suite=fs.suite(), top={"notify": f"http://{addr}:{port}/x"})
    res = fleetshard("run", "-i", inv)
    assert res.code == 0, res.out + res.err
    assert "notification to webhook failed" in res.out + res.err
    fs.cleanup()
