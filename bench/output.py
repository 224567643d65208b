"""Shard output through the coordinator: throughput of plain output, and one huge line.

On a one-machine sshd fleet, a shard prints ``--mb`` MB of short lines; measured side by side:

* OpenSSH's client copying the same output to a file (``ssh h1 CMD > file``): the peer;
* ``fleetshard run`` of that command (one shard; the log keeps every byte), less the time (and the
  coordinator's CPU) of the same run of ``true`` (connect, probe, set-up, report), so what is left is
  the output's own cost; on a shared 2-core machine the wall time also pays for sshd and the remote
  command, so "MB per cpu s" (the coordinator's own CPU) is the steadier figure;
* ``fleetshard run --stream`` of one line of ``--mb`` MB without a newline: the coordinator's peak
  memory (the line is cut on the terminal, kept whole in the log) and what reached the terminal.

    python bench/output.py [--mb 200] [--quick]
"""

from __future__ import annotations

import argparse
import json
import shlex
import tempfile
from pathlib import Path

from common import fleet, fleetshard_argv, note, ssh_config, table, timed

LINE = "a line of test output, about sixty bytes long, like most are"


def lines_command(mb: int) -> str:
    return f"yes {shlex.quote(LINE)} | head -c {mb * 1_000_000}"


def huge_line_command(mb: int) -> str:
    return f"head -c {mb * 1_000_000} /dev/zero | tr '\\000' x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="a small size, for a smoke test")
    args = parser.parse_args()
    mb = 5 if args.quick else args.mb
    with tempfile.TemporaryDirectory(prefix="fleetshard-bench-out-") as tmp, fleet(1, first_octet_start=230) as f:
        work = Path(tmp)
        cfg = ssh_config(f, work / "ssh_config")

        def inventory(command: str) -> Path:
            return f.write_inventory(work / "machines.yaml", slots=1,
                                     suite={"command": command, "shards": 1, "timeout": 600})

        note(f"OpenSSH client, {mb} MB of lines to a file")
        peer = timed(["sh", "-c", f"ssh -F {cfg} h1 {shlex.quote(lines_command(mb))} > {work / 'peer.out'}"])
        note("fleetshard run of `true` (fixed costs)")
        base = timed(fleetshard_argv("run", "-i", inventory("true"), "--no-live", "-q"), cwd=work)
        note(f"fleetshard run, {mb} MB of lines")
        js = work / "r.json"
        run = timed(fleetshard_argv("run", "-i", inventory(lines_command(mb)), "--no-live", "-q",
                                    "--json-report", js), cwd=work)
        log = Path(json.loads(js.read_text())["attempts"][0]["log_path"])
        kept = log.stat().st_size
        note(f"fleetshard run --stream, one line of {mb} MB")
        huge = timed(fleetshard_argv("run", "-i", inventory(huge_line_command(mb)), "--no-live", "--stream",
                                     "--json-report", js), cwd=work)
        huge_log = Path(json.loads(js.read_text())["attempts"][0]["log_path"]).stat().st_size

    own = max(run.wall - base.wall, 1e-6)
    own_cpu = max(run.cpu - base.cpu, 1e-6)
    huge_cpu = max(huge.cpu - base.cpu, 1e-6)
    rows = [
        ("OpenSSH client > file", peer.wall, mb / peer.wall, f"{peer.cpu:.1f}", mb / max(peer.cpu, 1e-6), "-"),
        ("fleetshard run (less fixed costs)", own, mb / own, f"{own_cpu:.1f}", mb / own_cpu,
         f"{run.maxrss_kb // 1024}"),
        ("fleetshard run, fixed costs only", base.wall, "-", f"{base.cpu:.1f}", "-", f"{base.maxrss_kb // 1024}"),
        ("fleetshard --stream, one huge line", max(huge.wall - base.wall, 1e-6),
         mb / max(huge.wall - base.wall, 1e-6), f"{huge_cpu:.1f}", mb / huge_cpu, f"{huge.maxrss_kb // 1024}"),
    ]
    print(table(("output of one shard", "seconds", "MB/s", "client cpu s", "MB per cpu s", "peak MB"), rows))
    print(f"fleetshard / OpenSSH client throughput: {(mb / own) / (mb / peer.wall):.2f}")
    print(f"log kept {kept / 1e6:.1f} MB of lines and {huge_log / 1e6:.1f} MB of the huge line; "
          f"the terminal got {len(huge.out) / 1e3:.1f} kB of it")


if __name__ == "__main__":
    main()
