"""The command line as users meet it: help, version, completion, and bad input (exit 2, one line)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clihelp import fleetshard
from fleet import SshFleet, WriteInventory

from fleetshard import __version__


def test_help_version_and_completion() -> None:
    res = fleetshard("--help")
    assert res.code == 0
    for cmd in ("health", "run", "plan", "history", "report"):
        assert cmd in res.out
    assert "130 interrupted" in res.out
    assert fleetshard("--version").out.strip() == f"fleetshard {__version__}"
    assert "--show-completion" in res.out and "--install-completion" in res.out
    run_help = fleetshard("run", "--help").out
    for flag in ("--max-retries", "--strategy", "--skip-health-checks", "--fail-fast", "--junit", "--json-report",
                 "--no-live", "--resume", "--retry-failed-tests", "--timeout", "--speculate", "--stream",
                 "--dry-run", "--notify", "--commit", "--accept-new-host-keys", "-m", "-i"):
        assert flag in run_help, flag


@pytest.mark.parametrize(("text", "expected"), [
    ("machines:\n  pi: {host: pi.lan, slots: four}\n",
     'machines.yaml:2: machines.pi.slots: expected a positive integer, got "four"'),
    ("machines: [\n", "machines.yaml:"),
    ("- a\n- b\n", "machines.yaml:1:"),
    ("", "no machines defined"),
    ("machines:\n  pi: {host: pi.lan, slot: 2}\n", 'did you mean "slots"?'),
    ("machines:\n  pi: {host: a}\n  pi: {host: b}\n", 'duplicate machine "pi"'),
])
def test_bad_inventory_is_one_line_exit_2(tmp_path: Path, text: str, expected: str) -> None:
    inv = tmp_path / "machines.yaml"
    inv.write_text(text)
    for args in (["health"], ["run"], ["plan"]):
        res = fleetshard(*args, "-i", inv)
        assert res.code == 2, res.err
        assert expected in res.err
        assert "Traceback" not in res.err and len(res.err.strip().splitlines()) == 1


def test_missing_inventory_and_env_default(tmp_path: Path) -> None:
    res = fleetshard("health", cwd=tmp_path)
    assert res.code == 2 and "machines.yaml: file not found" in res.err
    inv = tmp_path / "elsewhere.yaml"
    inv.write_text("machines:\n  here: {transport: local}\nhealth: {max_load_per_core: 100, min_disk_free_pct: 0}\n")
    ok = fleetshard("health", "--json", cwd=tmp_path, env={"FLEETSHARD_INVENTORY": str(inv)})
    assert ok.code == 0, ok.err


def test_unknown_option_is_usage_error(tmp_path: Path) -> None:
    res = fleetshard("run", "--max-retry", "3", cwd=tmp_path)
    assert res.code == 2 and "Traceback" not in res.err


def test_second_ctrl_c_kills_at_once(fleet: SshFleet, fleet_inventory: WriteInventory) -> None:
    # Shards that ignore TERM: the first Ctrl-C would wait the 30 s grace; the second one kills now.
    inv = fleet_inventory(machines=["h1", "h2"], suite={
        "command": "trap '' TERM; echo started; sleep 60", "shards": 4, "kill_grace": 30})
    proc = subprocess.Popen([sys.executable, "-m", "fleetshard", "run", "-i", str(inv), "--no-live"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len([p for p in fleet.processes() if _is_sleep(p)]) < 4:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    time.sleep(1.0)
    assert proc.poll() is None                      # still in the grace period
    proc.send_signal(signal.SIGINT)
    start = time.monotonic()
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, out + err
    assert time.monotonic() - start < 10
    assert fleet.wait_no_processes(5) == []


def _is_sleep(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep")
    except OSError:
        return False


def test_webhook_urls_never_reach_reports() -> None:
    from fleetshard.runner import redact_argv

    assert redact_argv(["run", "--notify", "https://hooks/T0/secret", "--notify=https://x/secret", "-q"]) == [
        "run", "--notify", "***", "--notify=***", "-q"]
