"""The baseline: a minimal hand-written asyncssh dispatcher, run as its own process by the benchmarks.

One connection per machine, ``--slots`` concurrent channels on each, every command from one shared
queue. No logging, no retries, no process groups: the least any asyncssh-based tool could do.

    python bench/raw_asyncssh.py machines.json --shards 400 --slots 8 [--command true]
    python bench/raw_asyncssh.py machines.json --probe "script"      # one command per machine
    ... --ciphers aes128-gcm@openssh.com                              # instead of asyncssh's default

machines.json: ``[{"host": …, "port": …, "user": …, "key": …, "known_hosts": …}, …]``.
Prints one JSON line: {"elapsed": seconds in-process (connect + commands), "ok": commands that exited 0}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import asyncssh

CIPHERS: list[str] | None = None     # None: asyncssh's default order (chacha20-poly1305 first)


async def _connect(m: dict[str, Any]) -> Any:
    extra: dict[str, Any] = {"encryption_algs": CIPHERS} if CIPHERS else {}
    return await asyncssh.connect(m["host"], port=m["port"], username=m["user"], client_keys=[m["key"]],
                                  known_hosts=m["known_hosts"], config=[], agent_path=None, **extra)


async def dispatch(machines: list[dict[str, Any]], shards: int, slots: int, command: str) -> int:
    conns = await asyncio.gather(*(_connect(m) for m in machines))
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(shards):
        queue.put_nowait(i)
    ok = 0

    async def worker(conn: Any) -> None:
        nonlocal ok
        while True:
            try:
                queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            result = await conn.run(command, check=False)
            ok += result.exit_status == 0

    await asyncio.gather(*(worker(c) for c in conns for _ in range(slots)))
    for c in conns:
        c.close()
    return ok


async def probe(machines: list[dict[str, Any]], script: str) -> int:
    async def one(m: dict[str, Any]) -> bool:
        try:
            async with await _connect(m) as conn:
                result = await conn.run(script, check=False)
                return bool(result.exit_status == 0)
        except (OSError, asyncssh.Error):
            return False

    return sum(await asyncio.gather(*(one(m) for m in machines)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("machines")
    ap.add_argument("--shards", type=int, default=400)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--command", default="true")
    ap.add_argument("--probe")
    ap.add_argument("--ciphers", help="comma-separated encryption algorithms, in order of preference")
    args = ap.parse_args(argv)
    global CIPHERS
    CIPHERS = args.ciphers.split(",") if args.ciphers else None
    with open(args.machines) as fh:
        machines = json.load(fh)
    start = time.perf_counter()
    if args.probe is not None:
        ok = asyncio.run(probe(machines, args.probe))
    else:
        ok = asyncio.run(dispatch(machines, args.shards, args.slots, args.command))
    print(json.dumps({"elapsed": time.perf_counter() - start, "ok": ok}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
