"""The ``openssh`` transport: the system ``ssh`` client, one ControlMaster per machine.

For what asyncssh cannot do (GSSAPI/Kerberos, FIDO keys, agents and proxies of every kind): ``connect``
starts a master (``ssh -M -N -f`` with ``ControlPersist``, ``BatchMode=yes``, its socket in a private
0700 directory); every command is then one ``ssh`` client multiplexed over it, running the same remote
wrapper as the ssh transport (``shell_wrapper``: process group, exit marker, stdin watcher), so the
interface is the same. Files go over the master with ``scp`` (SFTP protocol).

``ssh`` reads the user's ``~/.ssh/config`` (the file the inventory was resolved with) and
``/etc/ssh/ssh_config``; values the inventory sets are passed with ``-o`` and win, as documented. Host keys
are verified (``StrictHostKeyChecking=yes``, or ``accept-new`` with ``--accept-new-host-keys``) against the
machine's ``known_hosts``. ``close`` ends the master (``ssh -O exit``); masters still open when the
coordinator exits are ended by an ``atexit`` hook, and an orphaned one ends after ``CONTROL_PERSIST``
idle seconds.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import math
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import AuthError, ConnectError, HostKeyError
from ..inventory import Machine
from .base import (
    SIGNAL_WAIT,
    OutputParser,
    OutputTarget,
    ProcessResult,
    kill_script,
    known_pgid,
    new_token,
    pump,
    settle,
    shell_wrapper,
)

SSH = "ssh"
SCP = "scp"
CONTROL_PERSIST = 30        # seconds an idle master lives on if fleetshard could not end it
SYSTEM_CONFIG = "/etc/ssh/ssh_config"
KEEPALIVE_COUNT_MAX = 3

_masters: dict[str, list[str]] = {}     # control path -> the ssh options that reach it


def _end_masters_at_exit() -> None:
    for control, options in list(_masters.items()):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run([SSH, *options, "-O", "exit", "fleetshard"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=5, check=False)
        _masters.pop(control, None)


atexit.register(_end_masters_at_exit)


def _remote(script: str) -> str:
    """The one command word sent to sshd: ``script`` run by /bin/sh, whatever the login shell is."""
    return "exec /bin/sh -c " + shlex.quote(script)


def _config_word(value: str) -> str:
    """A value in ssh_config syntax: double quotes around anything with spaces (ssh has no escapes)."""
    if '"' in value or "\n" in value:
        raise ValueError(f"cannot be written in ssh_config: {value!r}")
    return f'"{value}"' if any(c.isspace() for c in value) or not value else value


def _scp_path(remote: str) -> str:
    """SFTP paths: relative ones are taken from the login directory, so ``~/`` is dropped."""
    if remote == "~":
        return "."
    return remote[2:] if remote.startswith("~/") else remote


class OpenSshProcess:
    def __init__(self, proc: asyncio.subprocess.Process, on_line: OutputTarget, token: str,
                 owner: OpenSshTransport) -> None:
        self._proc = proc
        self._owner = owner
        self._parser = OutputParser(on_line, token)
        self._reader = asyncio.create_task(self._read())

    @property
    def pgid(self) -> int | None:
        return self._parser.pgid

    async def _read(self) -> None:
        assert self._proc.stdout is not None
        await pump(self._proc.stdout.read, self._parser)

    async def wait(self) -> ProcessResult:
        try:
            await settle(self._reader, self._parser, self._leftovers)
            try:
                status = await asyncio.wait_for(self._proc.wait(),
                                                self._owner.machine.connect_timeout + SIGNAL_WAIT)
            except TimeoutError:
                self._kill_client()
                status = await self._proc.wait()
                return self._parser.result(ProcessResult(None, None, "connection lost: no exit status"))
        finally:
            self._close_stdin()
        if status == 255:       # ssh's own failure: the master or the link is gone
            fallback = ProcessResult(None, None, "connection lost: ssh exited with 255")
        elif status < 0:
            fallback = ProcessResult(None, None, "connection lost: ssh client killed")
        else:
            fallback = ProcessResult(status)
        return self._parser.result(fallback)

    def write(self, text: str) -> None:
        if self._proc.stdin is not None and not self._proc.stdin.is_closing():
            self._proc.stdin.write(text.encode())

    def close_stdin(self) -> None:
        self._close_stdin()

    def _close_stdin(self) -> None:
        """The session's end, as the remote wrapper's watcher sees it."""
        if self._proc.stdin is not None and not self._proc.stdin.is_closing():
            self._proc.stdin.close()

    def _kill_client(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()

    async def _leftovers(self) -> None:
        await self.signal_group("TERM")
        self._close_stdin()

    async def signal_group(self, signal: str) -> None:
        pgid = await known_pgid(self._parser)
        if pgid is not None:
            await self._owner.kill_groups([pgid], signal)


class OpenSshTransport:
    """A machine reached with the system ssh client over one ControlMaster."""

    def __init__(self, machine: Machine, *, accept_new_host_keys: bool = False) -> None:
        self.machine = machine
        self.name = machine.name
        self.accept_new = accept_new_host_keys
        self._dir: Path | None = None
        self._connected = False
        self._lock = asyncio.Lock()
        self.master_pid: int | None = None

    # -- command lines ------------------------------------------------------------------------
    @property
    def destination(self) -> str:
        m = self.machine
        dest = m.destination if m.ssh_config else m.host
        assert dest is not None
        return dest

    def _config_file(self, directory: Path) -> Path:
        """The config ssh reads. fleetshard's rules first (first value wins, and ``-o`` options do not reach
        the ``ssh -W`` that ProxyJump runs for each hop), then the jump hosts the inventory names, then the
        user's file (as the inventory was resolved), then the system's."""
        m = self.machine
        path = directory / "ssh_config"
        known = " ".join(_config_word(f) for f in (m.known_hosts, *m.extra_known_hosts))
        lines = [
            "Host *",
            "  BatchMode yes",
            "  PasswordAuthentication no",
            "  KbdInteractiveAuthentication no",
            f"  StrictHostKeyChecking {'accept-new' if self.accept_new else 'yes'}",
            f"  UserKnownHostsFile {known}",
            f"  ConnectTimeout {max(1, math.ceil(m.connect_timeout))}",
        ]
        if "jumps" not in m.from_ssh_config:
            for hop in m.jumps:
                lines.append(f"Host {_config_word(hop.alias or hop.host)}")
                if hop.user:
                    lines.append(f"  User {_config_word(hop.user)}")
                lines.append(f"  Port {hop.port}")
                lines += [f"  IdentityFile {_config_word(f)}" for f in hop.identity_files]
        lines.append("Host *")              # an Include inside a Host block is conditional on it: back to all
        if m.ssh_config:
            lines.append(f"Include {_config_word(m.ssh_config)}")
        if os.path.isfile(SYSTEM_CONFIG):
            lines.append(f"Include {SYSTEM_CONFIG}")
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def options(self) -> list[str]:
        """ssh options for every invocation: fleetshard's rules, then the values the inventory decided."""
        m = self.machine
        assert self._dir is not None
        known = " ".join(shlex.quote(f) for f in (m.known_hosts, *m.extra_known_hosts))
        opts: dict[str, str] = {
            "BatchMode": "yes",
            "PasswordAuthentication": "no",
            "KbdInteractiveAuthentication": "no",
            "StrictHostKeyChecking": "accept-new" if self.accept_new else "yes",
            "UserKnownHostsFile": known,
            "ConnectTimeout": str(max(1, math.ceil(m.connect_timeout))),
            "ControlPath": str(self._dir / "master"),
            "LogLevel": "ERROR",
        }
        if m.server_alive_interval is None:
            opts["ServerAliveInterval"] = str(max(1, math.ceil(m.connect_timeout)))
            opts["ServerAliveCountMax"] = str(KEEPALIVE_COUNT_MAX)
        sourced = m.from_ssh_config
        if "user" not in sourced and m.user:
            opts["User"] = m.user
        if "port" not in sourced:
            opts["Port"] = str(m.port)
        if "jumps" not in sourced and "proxy_command" not in sourced:
            if m.jumps:
                opts["ProxyJump"] = ",".join(
                    f"{j.user + '@' if j.user else ''}{j.alias or j.host}:{j.port}" for j in m.jumps)
            else:
                opts["ProxyJump"] = "none"
        args = ["-F", str(self._dir / "ssh_config")]
        for key, value in opts.items():
            args += ["-o", f"{key}={value}"]
        if "identity_file" not in sourced:
            for f in m.identity_files:
                args += ["-i", f]
        return args

    def _ssh(self, script: str) -> list[str]:
        return [SSH, *self.options(), "-o", "ControlMaster=no", "-T", self.destination, "--", _remote(script)]

    # -- connecting ---------------------------------------------------------------------------
    async def connect(self) -> float:
        start = time.perf_counter()
        async with self._lock:
            if not self._connected or not await self._master_alive():
                await self._start_master()
        return time.perf_counter() - start

    async def _start_master(self) -> None:
        if shutil.which(SSH) is None:
            raise ConnectError(f"{self.name}: transport openssh needs the ssh client, and `ssh` is not on PATH "
                               f"(install openssh-client)", machine=self.name)
        if self._dir is None:
            # Short and private: a Unix socket path has a length limit, and the socket must be ours alone.
            self._dir = Path(tempfile.mkdtemp(prefix="fleetshard-ssh-", dir="/tmp" if os.path.isdir("/tmp")
                                              else None))
            os.chmod(self._dir, 0o700)
            self._config_file(self._dir)
        log = self._dir / "master.log"
        argv = [SSH, *self.options(), "-o", "ControlMaster=yes", "-o", f"ControlPersist={CONTROL_PERSIST}",
                "-f", "-N", self.destination]
        budget = self.machine.connect_timeout + 10       # ConnectTimeout bounds the TCP part; this the rest
        with log.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                        stdout=asyncio.subprocess.DEVNULL, stderr=err,
                                                        start_new_session=True)
        try:
            status = await asyncio.wait_for(proc.wait(), budget)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise ConnectError(f"{self.name}: no answer from {self.destination} within {budget:g} s (ssh)",
                               machine=self.name) from None
        text = log.read_text(encoding="utf-8", errors="replace")
        if status != 0:
            raise self._error(text, status)
        _masters[str(self._dir / "master")] = self.options()
        self._connected = True
        self.master_pid = await self._check_pid()

    async def _check_pid(self) -> int | None:
        """The master's pid, from ``ssh -O check`` ("Master running (pid=N)")."""
        proc = await asyncio.create_subprocess_exec(
            SSH, *self.options(), "-O", "check", self.destination, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return None
        m = re.search(rb"pid=(\d+)", out)
        return int(m.group(1)) if m else None

    def _error(self, stderr: str, status: int) -> ConnectError:
        lines = [line.strip() for line in stderr.splitlines() if line.strip() and not line.startswith("@@@")]
        last = lines[-1] if lines else f"ssh exited with {status}"
        low = stderr.lower()
        m = self.machine
        dest = self.destination
        if "remote host identification has changed" in low:
            return HostKeyError(f"{self.name}: HOST KEY CHANGED for {dest}; this may be an attack. If the machine "
                                f"was reinstalled, remove the old key with `ssh-keygen -R` from {m.known_hosts} "
                                f"and connect again", machine=self.name)
        if "host key verification failed" in low or "no such host key" in low or "host key for" in low:
            return HostKeyError(f"{self.name}: unknown host key for {dest}, not in {m.known_hosts}. Verify it, "
                                f"then add it with ssh-keyscan, or rerun with --accept-new-host-keys to record "
                                f"new keys (ssh: {last})", machine=self.name)
        if "permission denied" in low or "too many authentication failures" in low:
            return AuthError(f"{self.name}: authentication refused for {dest} (ssh: {last}): check the user and "
                             f"identity_file in the inventory, the agent, and the machine's authorized_keys",
                             machine=self.name)
        if "could not resolve hostname" in low:
            return ConnectError(f"{self.name}: cannot resolve host {dest!r} (ssh: {last})", machine=self.name)
        if "connection refused" in low:
            return ConnectError(f"{self.name}: connection refused by {dest} (ssh: {last})", machine=self.name)
        if "timed out" in low:
            return ConnectError(f"{self.name}: no answer from {dest} within {m.connect_timeout:g} s (ssh: {last})",
                                machine=self.name)
        return ConnectError(f"{self.name}: cannot connect to {dest}: {last}", machine=self.name)

    async def _master_alive(self) -> bool:
        if self._dir is None:
            return False
        proc = await asyncio.create_subprocess_exec(
            SSH, *self.options(), "-O", "check", self.destination, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            return await asyncio.wait_for(proc.wait(), 5) == 0
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return False

    async def _ensure(self) -> None:
        if not self._connected:
            await self.connect()

    # -- running ------------------------------------------------------------------------------
    async def start(self, command: str, *, cwd: str | None, env: Mapping[str, str],
                    on_line: OutputTarget, stdin: bool = False) -> OpenSshProcess:
        await self._ensure()
        token = new_token()
        argv = self._ssh(shell_wrapper(command, cwd=cwd, env=env, token=token, watch=not stdin))
        # stdin stays open and unwritten: the wrapper's watcher ends the shard when it closes.
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        return OpenSshProcess(proc, on_line, token, self)

    async def run(self, command: str, *, cwd: str | None = None, env: Mapping[str, str] | None = None,
                  stdin: str | None = None, timeout: float | None = None) -> tuple[ProcessResult, str]:
        try:
            await self._ensure()
        except ConnectError as exc:
            return ProcessResult(None, None, f"connection lost: {exc}"), ""
        argv = self._ssh(shell_wrapper(command, cwd=cwd, env=env, watch=stdin is None))
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin is not None else None),
                                            timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()             # the channel closes: the remote watcher ends the command
            await proc.wait()
            return ProcessResult(None, None, f"timed out after {timeout:g} s"), ""
        finally:
            if proc.stdin is not None and not proc.stdin.is_closing():
                proc.stdin.close()
        text = out.decode("utf-8", "replace")
        status = proc.returncode
        assert status is not None
        if status == 255:
            said = text.strip().splitlines()[-1] if text.strip() else "ssh exited with 255"
            return ProcessResult(None, None, f"connection lost: {said}"), ""
        if status < 0:
            return ProcessResult(None, None, "connection lost: ssh client killed"), text
        return ProcessResult(status), text

    async def kill_groups(self, pgids: Sequence[int], signal: str, *, markers: Sequence[str] = ()) -> None:
        if not pgids and not markers:
            return
        await self.run(kill_script(pgids, signal, markers=markers), timeout=self.machine.connect_timeout + 5)

    async def rtt(self) -> float:
        await self._ensure()
        start = time.perf_counter()
        await self.run("true", timeout=self.machine.connect_timeout + 5)
        return time.perf_counter() - start

    # -- files --------------------------------------------------------------------------------
    async def _scp(self, *paths: str) -> tuple[int, str]:
        await self._ensure()
        proc = await asyncio.create_subprocess_exec(
            SCP, "-q", "-B", *self.options(), "-o", "ControlMaster=no", *paths,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 600)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise ConnectError(f"{self.name}: scp timed out", machine=self.name) from None
        return proc.returncode or 0, out.decode("utf-8", "replace")

    def _remote_spec(self, remote: str) -> str:
        dest = self.destination
        if ":" in dest:
            dest = f"[{dest}]"
        return f"{dest}:{_scp_path(remote)}"

    async def get_file(self, remote: str, local: str) -> bool:
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        status, out = await self._scp(self._remote_spec(remote), local)
        if status == 0:
            return True
        if "no such file" in out.lower() or "not found" in out.lower():
            return False
        raise ConnectError(f"{self.name}: cannot copy {remote}: {out.strip() or f'scp exited with {status}'}",
                           machine=self.name)

    async def put_file(self, local: str, remote: str) -> None:
        status, out = await self._scp(local, self._remote_spec(remote))
        if status != 0:
            raise ConnectError(f"{self.name}: cannot copy to {remote}: {out.strip() or f'scp exited with {status}'}",
                               machine=self.name)

    async def close(self) -> None:
        directory, self._dir = self._dir, None
        if directory is None:
            return
        control = str(directory / "master")
        if self._connected:
            self._dir = directory
            options = self.options()
            self._dir = None
            proc = await asyncio.create_subprocess_exec(
                SSH, *options, "-O", "exit", self.destination, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self._connected = False
        _masters.pop(control, None)
        shutil.rmtree(directory, ignore_errors=True)
        pid, self.master_pid = self.master_pid, None
        if pid is not None:             # `-O exit` asks; make sure the master is gone before returning
            await _wait_gone(pid)


async def _wait_gone(pid: int, timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while _alive(pid):
        if loop.time() >= deadline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, 9)
            return
        await asyncio.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b") ", 1)[1][:1]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")
