"""Per-machine workspace steps around the shards, each given a machine handle.

- prepare: create the workdir, copy ``suite.sync`` into it, run ``suite.setup`` (once per machine);
- teardown: run ``suite.teardown`` once per prepared machine, also after failures and Ctrl-C;
- artifacts: download ``suite.artifacts`` globs after each shard.

A failing setup is an infrastructure failure of that machine; a failing teardown or artifact download
is a warning. None of them ever fails the run on its own.
"""

from __future__ import annotations

import fnmatch
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConnectError
from .machines import MachineHandle
from .model import Shard
from .suite import render
from .transport.base import remote_path

if TYPE_CHECKING:
    from .context import RunContext

ARTIFACT_MAX_BYTES = 200 * 1024 * 1024
SYNC_SKIP = frozenset({".git", ".hg", ".svn", ".fleetshard"})   # never copied by suite.sync


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


TEARDOWN_TIMEOUT = 300.0       # a hanging teardown must not hold the exit (after Ctrl-C, say) for long


async def _step(st: MachineHandle, what: str, command: str) -> str | None:
    """Run a setup/teardown command with the run's env, log its output; why it failed, or None."""
    run = st.ctx
    env = st.env()
    timeout = run.suite.config.timeout
    if what == "teardown":
        timeout = min(timeout or TEARDOWN_TIMEOUT, TEARDOWN_TIMEOUT)
    result, out = await st.transport.run(command, cwd=st.workdir, env=env, timeout=timeout)
    log = run.run_dir / "logs" / f"{what}-{st.machine.name}.log"
    log.write_text(f"# {st.machine.name}: {command}\n{out}", encoding="utf-8")
    if result.exit_status == 0:
        return None
    why = result.error or (f"killed by signal {result.signal}" if result.signal
                           else f"exit code {result.exit_status}")
    last = _last_line(out)
    hint = _hint(out)
    return (f"{what} failed on {st.machine.name} ({why}){': ' + last if last else ''} (log: {log})"
            + (f"; {hint}" if hint else ""))


_GIT_MISSING_COMMIT = ("reference is not a tree", "unknown revision", "bad object", "not our ref",
                       "did not match any file(s) known to git", "couldn't find remote ref",
                       "no such commit", "invalid reference")


def _hint(out: str) -> str | None:
    """What to do about a setup failure fleetshard recognises."""
    low = out.lower()
    if any(s in low for s in _GIT_MISSING_COMMIT):
        return ("hint: the machine's git checkout does not have this commit: push it first (git push), "
                "so that setup can fetch $FLEETSHARD_COMMIT")
    return None


async def prepare_machine(st: MachineHandle) -> str | None:
    """Make the machine ready for its first shard. Returns why it cannot run shards, or None."""
    run = st.ctx
    cfg = run.suite.config
    needs_dir = st.machine.workdir is not None
    if needs_dir:
        result, out = await st.transport.run(f"mkdir -p -- {remote_path(st.workdir)}", timeout=30)
        if result.exit_status != 0:
            return f"cannot create workdir {st.workdir} on {st.machine.name}: {result.error or _last_line(out)}"
    if cfg.sync:
        try:
            copied = await sync_dir(run.inv.base_dir / cfg.sync, st)
        except (OSError, ConnectError) as exc:
            return f"sync of {cfg.sync} to {st.machine.name} failed: {exc}"
        run.notice(f"synced {copied} changed file(s) from {cfg.sync}", machine=st.machine.name)
    if cfg.setup:
        run.notice("running setup", machine=st.machine.name)
        problem = await _step(st, "setup", cfg.setup)
        if problem:
            return problem
    return None


async def teardown_machine(st: MachineHandle) -> None:
    run = st.ctx
    if not run.suite.config.teardown or not st.prepared:
        return
    try:
        problem = await _step(st, "teardown", run.suite.config.teardown)
    except ConnectError as exc:
        problem = f"teardown on {st.machine.name} not run: {exc}"
    if problem:
        run.notice(problem, "warning", st.machine.name)


async def remove_run_dir(st: MachineHandle) -> None:
    """Remove the run's own files on the machine (``.fleetshard/<run id>/`` in its workdir: JUnit files and
    test lists), and ``.fleetshard/`` itself when nothing else is left in it. Failing is only a notice."""
    run = st.ctx
    rel = f".fleetshard/{run.run_id}"
    script = (f"rm -rf -- {shlex.quote(rel)} && {{ rmdir .fleetshard 2>/dev/null; true; }}")
    try:
        result, out = await st.transport.run(script, cwd=st.workdir, timeout=st.machine.connect_timeout + 30)
    except ConnectError as exc:
        run.notice(f"{rel} not removed: {exc}", "warning", st.machine.name)
        return
    if result.exit_status != 0:
        run.notice(f"{rel} not removed: {result.error or _last_line(out) or result.exit_status}", "warning",
                   st.machine.name)


def own_outputs(run: RunContext, local: Path) -> set[str]:
    """Paths below the synced directory ``local`` (relative, POSIX) that are fleetshard's own outputs, never
    sent to the machines: the local report files (--junit, --json-report, --html) and the directory the
    suite's JUnit files are written to (``results/`` for ``results/junit-{shard}.xml``)."""
    skip: set[str] = set()
    root = local.resolve()
    opts = run.opts
    for path in (opts.junit, opts.json_report, opts.html):
        if path is None:
            continue
        full = Path(path).resolve()
        if full.is_relative_to(root) and full != root:
            parts = full.relative_to(root).parts
            skip.add(parts[0] if len(parts) > 1 else full.relative_to(root).as_posix())
    template = run.suite.config.junit
    if template:
        prefix = _static_prefix(template)
        if prefix not in (".", "") and "{" not in prefix and not prefix.startswith(("/", "~", "..")):
            skip.add(prefix.split("/", 1)[0])
    return skip


def _static_prefix(pattern: str) -> str:
    """The leading directories of a glob that hold no wildcard: where to look for its matches."""
    parts = []
    for part in pattern.split("/")[:-1]:
        if any(ch in part for ch in "*?["):
            break
        parts.append(part)
    return "/".join(parts) or "."


async def _remote_listing(st: MachineHandle, root: str, under: list[str] | None = None
                          ) -> dict[str, tuple[int, int]] | None:
    """path -> (size, mtime) of the files below ``under`` (default: all) in ``root`` on the machine;
    None when the listing failed (no GNU find)."""
    dirs = " ".join(shlex.quote(d) for d in sorted(set(under or ["."])))
    result, out = await st.transport.run(
        f"cd {remote_path(root)} 2>/dev/null || exit 0; for d in {dirs}; do [ -e \"$d\" ] && "
        f"find \"$d\" -type f -printf '%s %T@ %p\\n'; done; exit 0", timeout=120)
    if result.exit_status != 0:
        return None
    listing: dict[str, tuple[int, int]] = {}
    for line in out.splitlines():
        size, _, rest = line.partition(" ")
        mtime, _, path = rest.partition(" ")
        try:
            listing[path.removeprefix("./")] = (int(size), int(float(mtime)))
        except ValueError:
            continue
    return listing


async def sync_dir(local: Path, st: MachineHandle) -> int:
    """Copy the files of ``local`` that are new or changed (size or mtime) into the machine's workdir."""
    if not local.is_dir():
        raise OSError(f"{local} is not a directory")
    remote = await _remote_listing(st, st.workdir) or {}
    skip = SYNC_SKIP | own_outputs(st.ctx, local)
    changed: list[str] = []
    dirs: set[str] = set()
    for path in sorted(local.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(local).as_posix()
        if rel.split("/", 1)[0] in skip or rel in skip:
            continue
        stat = path.stat()
        if remote.get(rel) == (stat.st_size, int(stat.st_mtime)) or (
                rel in remote and remote[rel][0] == stat.st_size and remote[rel][1] >= int(stat.st_mtime)):
            continue
        changed.append(rel)
        if "/" in rel:
            dirs.add(rel.rsplit("/", 1)[0])
    ordered = sorted(dirs)
    for i in range(0, len(ordered), 200):                     # keep each command line short
        made = " ".join(remote_path(f"{st.workdir}/{d}") for d in ordered[i:i + 200])
        result, out = await st.transport.run(f"mkdir -p -- {made}", timeout=60)
        if result.exit_status != 0:
            raise OSError(f"cannot create directories in {st.workdir}: {result.error or _last_line(out)}")
    for rel in changed:
        await st.transport.put_file(str(local / rel), f"{st.workdir}/{rel}")
    return len(changed)


async def collect_artifacts(st: MachineHandle, shard: Shard, attempt: int) -> list[str]:
    """Download the suite's artifact globs after a shard; never raises. Returns local paths."""
    run = st.ctx
    if not run.suite.config.artifacts:
        return []
    values = {"shard": str(shard.index), "attempt": str(attempt), "run_id": run.run_id,
              "machine": st.machine.name}
    globs = [render(g, values).strip("'") for g in run.suite.config.artifacts]
    dest = run.run_dir / "artifacts" / st.machine.name / shard.id
    saved: list[str] = []
    try:
        listing = await _remote_listing(st, st.workdir, [_static_prefix(g) for g in globs])
        if listing is None:
            run.note(f"{st.machine.name}: artifacts not listed (needs GNU find)")
            return []
        for rel, (size, _) in sorted(listing.items()):
            if not any(fnmatch.fnmatchcase(rel, g) for g in globs):
                continue
            if size > ARTIFACT_MAX_BYTES:
                run.note(f"{shard.id}: artifact {rel} skipped ({size} bytes)")
                continue
            target = dest / rel
            if not target.resolve().is_relative_to(dest.resolve()):
                continue                          # a remote name must not write outside the run directory
            if await st.transport.get_file(f"{st.workdir}/{rel}", str(target)):
                saved.append(str(target))
    except Exception as exc:  # artifacts never fail the run
        run.note(f"{shard.id}: artifacts from {st.machine.name} not collected: {exc}")
    return saved
