"""The SSH transport (asyncssh).

One connection per machine carries every command as its own channel. sshd refuses channels past its
``MaxSessions`` (10 by default), so a machine with more slots than fit on one connection gets a
further connection per ``CHANNELS_PER_CONNECTION`` channels; a small fleet never needs more than one.

Host keys are checked against the machine's known_hosts file. An unknown key is refused unless the
user passed ``--accept-new-host-keys``, which records it (as OpenSSH's ``accept-new``); a key that
differs from the recorded one is always refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import shlex
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import asyncssh

from ..errors import AuthError, ConnectError, HostKeyError
from ..inventory import JumpHost, Machine
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
from .handshake import handshake_slot
from .slots import WAKE, SlotProcess, SlotShell, launcher

_T = TypeVar("_T")

CHANNELS_PER_CONNECTION = 8
CONNECT_BACKOFF = 0.25      # first wait before connecting again; doubles up to CONNECT_BACKOFF_MAX
CONNECT_BACKOFF_MAX = 2.0
CHANNEL_TRIES = 6           # channel requests refused in a row before a command gives up
KEEPALIVE_COUNT_MAX = 3
# AES-GCM first: with AES-NI it costs the client about a third less CPU per packet than asyncssh's
# default chacha20-poly1305 (bench/dispatch.py); every other algorithm stays acceptable.
ENCRYPTION_ALGS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
                   "aes256-ctr", "aes192-ctr", "aes128-ctr")


def _sh(script: str) -> str:
    """Run ``script`` with /bin/sh whatever the user's login shell is."""
    return "exec /bin/sh -c " + shlex.quote(script)


def _sftp_path(remote: str) -> str:
    """SFTP does not expand ``~``; relative paths are relative to the login directory."""
    if remote == "~":
        return "."
    return remote[2:] if remote.startswith("~/") else remote


def _known_host_pattern(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


class _Client(asyncssh.SSHClient):
    """Records the key the server presented, and accepts it when the user opted in and it is new."""

    def __init__(self, known_hosts: Path, accept_new: bool, also_trusted: tuple[str, ...] = ()) -> None:
        self.known_hosts = known_hosts
        self.also_trusted = also_trusted         # further files (UserKnownHostsFile 2nd.., GlobalKnownHostsFile)
        self.accept_new = accept_new
        self.presented: asyncssh.SSHKey | None = None
        self.host_known = False
        self.accepted = False

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        self.presented = key
        # Known with another key in any trusted file is a changed key, never a new one.
        self.host_known = any(_host_has_entry(Path(f), host, addr, port)
                              for f in (str(self.known_hosts), *self.also_trusted))
        if self.accept_new and not self.host_known:
            _record_host_key(self.known_hosts, host, port, key)
            self.accepted = True
            return True
        return False


def _host_has_entry(known_hosts: Path, host: str, addr: str, port: int) -> bool:
    if not known_hosts.exists():
        return False
    try:
        keys = asyncssh.read_known_hosts(str(known_hosts))
    except (OSError, ValueError):
        return False
    matched = keys.match(host, addr, port)
    return any(matched[:3])


def _record_host_key(known_hosts: Path, host: str, port: int, key: asyncssh.SSHKey) -> None:
    known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    line = f"{_known_host_pattern(host, port)} {key.export_public_key('openssh').decode().strip()}\n"
    with known_hosts.open("a", encoding="utf-8") as fh:
        fh.write(line)


class _Proxy:
    """A ProxyCommand: run as ssh runs it (``/bin/sh -c "exec …"``, in its own session), talking SSH on one
    end of a socket pair; its stderr is kept (the last lines) for the error message."""

    def __init__(self, proc: asyncio.subprocess.Process, sock: socket.socket) -> None:
        self.proc = proc
        self.sock = sock
        self._stderr: list[str] = []
        self._reader = asyncio.ensure_future(self._read_stderr())

    @classmethod
    async def start(cls, command: str) -> _Proxy:
        ours, theirs = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                "/bin/sh", "-c", "exec " + command, stdin=theirs.fileno(), stdout=theirs.fileno(),
                stderr=asyncio.subprocess.PIPE, start_new_session=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return cls(proc, ours)

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self._stderr = [*self._stderr[-4:], line.decode(errors="replace").strip()]

    def stderr_note(self) -> str:
        lines = [line for line in self._stderr if line]
        return f" (ProxyCommand said: {lines[-1]})" if lines else ""

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 2)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._reader, 1)
        self.sock.close()


class SshProcess:
    def __init__(self, proc: Any, on_line: OutputTarget, connection: _Connection, token: str) -> None:
        self._proc = proc
        self._conn = connection
        self._error: str | None = None
        self._released = False
        self._parser = OutputParser(on_line, token)
        self._reader = asyncio.create_task(self._read())

    @property
    def pgid(self) -> int | None:
        return self._parser.pgid

    def write(self, text: str) -> None:
        if not self._proc.is_closing():
            self._proc.stdin.write(text.encode())

    def close_stdin(self) -> None:
        if not self._proc.is_closing():
            self._proc.stdin.write_eof()

    async def _read(self) -> None:
        """Read the channel to its end, whatever the sinks do (OutputParser keeps their failures)."""
        try:
            await pump(self._proc.stdout.read, self._parser)
        except (asyncssh.Error, OSError) as exc:
            self._error = f"connection lost: {_reason(exc)}"

    async def wait(self) -> ProcessResult:
        try:
            await settle(self._reader, self._parser, self._leftovers)
            # The output has ended; the exit status follows at once unless the link is gone.
            await asyncio.wait_for(self._proc.wait_closed(), self._conn.owner.machine.connect_timeout + SIGNAL_WAIT)
        except TimeoutError:
            self._error = self._error or "connection lost: no exit status from the machine"
        except (asyncssh.Error, OSError) as exc:
            self._error = self._error or f"connection lost: {_reason(exc)}"
        finally:
            self._end()
        status = self._proc.exit_status
        sig = self._proc.exit_signal
        if sig:
            fallback = ProcessResult(None, str(sig[0]))
        elif status is None or status == -1:
            fallback = ProcessResult(None, None, self._error or self._conn.lost_reason or "connection lost")
        else:
            fallback = ProcessResult(status)
        return self._parser.result(fallback)

    def _end(self) -> None:
        """Close the channel (the wrapper's watcher then ends what is left) and free its slot."""
        if not self._reader.done():
            self._reader.cancel()
        try:
            if not self._proc.is_closing():
                self._proc.close()
        except Exception:  # pragma: no cover - a channel of a dead connection
            pass
        if not self._released:
            self._released = True
            self._conn.release()

    async def _leftovers(self) -> None:
        """The command is over but something it started still holds the output: stop it, close up."""
        await self.signal_group("TERM")
        self._proc.close()

    async def signal_group(self, signal: str) -> None:
        pgid = await known_pgid(self._parser)
        if pgid is not None:
            await self._conn.owner.kill_groups([pgid], signal)


def _transient(exc: BaseException) -> bool:
    """Worth another try: refused, reset, timed out; not a key, an authentication or a name problem."""
    return type(exc) is ConnectError and "cannot resolve host" not in str(exc)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


class _Connection:
    def __init__(self, owner: SshTransport, conn: Any) -> None:
        self.owner = owner
        self.conn = conn
        self.channels = 0
        self.full = False                  # sshd refused a channel: none until one of its own closes
        self.lost_reason: str | None = None

    def release(self) -> None:
        self.channels -= 1
        if self.channels < self.owner.channels_per_connection:
            self.full = False
        self.owner._freed.set()            # whoever waits for a free channel looks again


class SshTransport:
    """A machine reached over SSH."""

    def __init__(self, machine: Machine, *, accept_new_host_keys: bool = False,
                 channels_per_connection: int = CHANNELS_PER_CONNECTION, persistent_shells: bool = True) -> None:
        self.machine = machine
        # Shards run in slot shells (slots.py) unless the machine cannot run one (then None -> False).
        self.persistent_shells: bool | None = None if persistent_shells else False
        self._idle: list[SlotShell] = []
        self._shells: set[SlotShell] = set()
        self._heartbeat: asyncio.Future[None] | None = None
        self.name = machine.name
        self.accept_new = accept_new_host_keys
        self.channels_per_connection = channels_per_connection
        self.learned_limit: int | None = None     # sshd's MaxSessions, once it refused a channel
        self._conns: list[_Connection] = []
        self._tunnel: Any = None
        self._hops: list[Any] = []
        self._proxies: list[_Proxy] = []
        self._lock = asyncio.Lock()
        self._freed = asyncio.Event()      # set when a channel is released
        self._closed = False
        self._sftp_conn: _Connection | None = None
        self._sftp_client: asyncio.Future[Any] | None = None

    # -- connecting ---------------------------------------------------------------------------
    async def _open(self, hop: JumpHost, timeout: float, tunnel: Any = None,
                    proxy_command: str | None = None, *, budget: float | None = None) -> Any:
        """One SSH connection to ``hop`` (the machine itself, or one of its jump hosts)."""
        m = self.machine
        known_hosts = Path(m.known_hosts)
        client = _Client(known_hosts, self.accept_new, m.extra_known_hosts)
        if m.identity_agent == "none":
            agent: str | None = None
        else:
            agent = m.identity_agent or os.environ.get("SSH_AUTH_SOCK") or None
        identity_files = hop.identity_files
        keys = [f for f in identity_files if os.path.exists(f)]
        missing = [f for f in identity_files if not os.path.exists(f)]
        if identity_files and not keys and not agent:
            raise AuthError(f"{self.name}: identity file {missing[0]} not found and no ssh-agent is running "
                            f"(SSH_AUTH_SOCK unset): fix identity_file in the inventory or run ssh-add",
                            machine=self.name)
        # No readable key file: () lets asyncssh use the agent and the default ~/.ssh/id_* keys (None would
        # turn public-key authentication off). With an agent, an encrypted key file is skipped: its key may
        # be in the agent, and fleetshard never prompts for a passphrase.
        client_keys: list[str] | tuple[()] = keys or ()
        certs = [f for f in m.certificate_files if os.path.exists(f)]
        # Known-hosts files that do not exist yet trust nothing (never "no verification").
        trusted_files = [f for f in (m.known_hosts, *m.extra_known_hosts) if os.path.isfile(f)]
        trusted: Any = trusted_files or asyncssh.import_known_hosts("")
        # With an OpenSSH config file, asyncssh reads it for this host too (the settings fleetshard has no
        # inventory key for: Ciphers, KexAlgorithms, HostKeyAlias, GSSAPI...); every value the inventory
        # resolved is passed explicitly, so the documented precedence holds.
        use_config = m.ssh_config is not None
        dest = (hop.alias or hop.host) if use_config else hop.host
        keepalive = m.server_alive_interval if m.server_alive_interval is not None else max(1.0, budget or timeout)
        options: dict[str, Any] = dict(
            port=hop.port, username=hop.user or _local_user(), known_hosts=trusted, client_keys=client_keys,
            client_certs=certs, ignore_encrypted=agent is not None,
            config=[m.ssh_config] if m.ssh_config else [], connect_timeout=timeout,
            keepalive_interval=keepalive, keepalive_count_max=m.server_alive_count_max or KEEPALIVE_COUNT_MAX,
            tunnel=tunnel, passphrase=None, agent_path=agent, canonicalize_hostname=False, proxy_command=None,
        )
        if "ciphers" not in m.from_ssh_config:
            options["encryption_algs"] = list(ENCRYPTION_ALGS)
        via = f" through ProxyCommand {proxy_command!r}" if proxy_command else ""
        target = f"{options['username']}@{hop.host}:{hop.port}{via}"
        proxy: _Proxy | None = None
        try:
            try:
                if proxy_command:
                    proxy = await _Proxy.start(proxy_command)
                    self._proxies.append(proxy)
                    options["sock"] = proxy.sock
                conn, _ = await asyncio.wait_for(asyncssh.create_connection(lambda: client, dest, **options),
                                                 timeout + 1)
                return conn
            except BaseException:
                if proxy is not None:
                    await proxy.stop()
                    via += proxy.stderr_note()
                    target += proxy.stderr_note()
                raise
        except asyncssh.HostKeyNotVerifiable as exc:
            raise self._host_key_error(client, hop.host, hop.port, known_hosts) from exc
        except asyncssh.PermissionDenied as exc:
            tried = ", ".join(keys) if keys else "the default keys ~/.ssh/id_*"
            if agent:
                tried += " and the ssh-agent's keys"
            raise AuthError(f"{self.name}: authentication refused for {target} (tried {tried}): check the "
                            f"user and identity_file in the inventory, and the machine's authorized_keys",
                            machine=self.name) from exc
        except asyncssh.KeyImportError as exc:
            if "passphrase" in str(exc).lower():
                raise AuthError(f"{self.name}: identity file {keys[0] if keys else ''} is encrypted and "
                                f"fleetshard never prompts: load it into ssh-agent with ssh-add",
                                machine=self.name) from exc
            raise AuthError(f"{self.name}: cannot read identity file: {_reason(exc)}",
                            machine=self.name) from exc
        except TimeoutError as exc:
            raise ConnectError(f"{self.name}: no answer from {hop.host}:{hop.port}{via} within {budget or timeout:g} s",
                               machine=self.name) from exc
        except socket.gaierror as exc:
            raise ConnectError(f"{self.name}: cannot resolve host {hop.host!r}: {exc.strerror}",
                               machine=self.name) from exc
        except ConnectionRefusedError as exc:
            raise ConnectError(f"{self.name}: connection refused by {hop.host}:{hop.port} (is sshd running?)",
                               machine=self.name) from exc
        except (OSError, asyncssh.Error) as exc:
            raise ConnectError(f"{self.name}: cannot connect to {target}: {_reason(exc)}",
                               machine=self.name) from exc
        except ValueError as exc:                  # e.g. a malformed line in known_hosts
            raise HostKeyError(f"{self.name}: cannot check the host key against {known_hosts}: {_reason(exc)}",
                               machine=self.name) from exc

    async def _open_retrying(self, hop: JumpHost, budget: float, tunnel: Any = None,
                             proxy_command: str | None = None) -> Any:
        """Connect, retrying refused, reset and timed-out attempts with tenacity's exponential backoff
        until ``budget`` seconds (the machine's connect_timeout) are spent: an sshd that restarts or
        starts a moment late is reached. Refused keys and authentication are never retried."""
        async with handshake_slot():                # the budget starts once a handshake may begin
            import tenacity

            loop = asyncio.get_running_loop()
            deadline = loop.time() + budget
            backoff = tenacity.wait_exponential(multiplier=CONNECT_BACKOFF, max=CONNECT_BACKOFF_MAX)

            def wait(state: tenacity.RetryCallState) -> float:
                # never sleep past the budget: the last try starts inside it, and its own error is the reason
                return max(0.0, min(backoff(state), deadline - CONNECT_BACKOFF - loop.time()))

            retrying = tenacity.AsyncRetrying(
                retry=tenacity.retry_if_exception(_transient),
                wait=wait,
                stop=lambda state: loop.time() + CONNECT_BACKOFF >= deadline,
                reraise=True)
            async for attempt in retrying:
                with attempt:
                    remaining = max(deadline - loop.time(), CONNECT_BACKOFF)
                    return await self._open(hop, remaining, tunnel, proxy_command, budget=budget)
            raise AssertionError("unreachable")  # pragma: no cover

    def _host_key_error(self, client: _Client, host: str, port: int, known_hosts: Path) -> HostKeyError:
        pattern = _known_host_pattern(host, port)
        fp = client.presented.get_fingerprint() if client.presented is not None else "unknown"
        if client.host_known:
            return HostKeyError(
                f"{self.name}: HOST KEY CHANGED for {pattern} (server presents {fp}); this may be an attack. "
                f"If the machine was reinstalled, remove the old key with "
                f"`ssh-keygen -R '{pattern}' -f {known_hosts}` and connect again", machine=self.name)
        return HostKeyError(
            f"{self.name}: unknown host key for {pattern} ({fp}), not in {known_hosts}. Verify it, then "
            f"add it with `ssh-keyscan -p {port} {host} >> {known_hosts}`, or rerun with "
            f"--accept-new-host-keys to record new keys", machine=self.name)

    async def _new_connection(self) -> _Connection:
        m = self.machine
        tunnel = None
        if m.jumps:
            if self._tunnel is None or self._tunnel.is_closed():
                self._tunnel = await self._open_jumps()
            tunnel = self._tunnel
        assert m.host is not None
        me = JumpHost(m.host, m.port, m.user, m.identity_files, m.alias)
        conn = await self._open_retrying(me, m.connect_timeout, tunnel, None if tunnel else m.proxy_command)
        wrapper = _Connection(self, conn)
        self._conns.append(wrapper)
        return wrapper

    async def _open_jumps(self) -> Any:
        """The ProxyJump chain, hop by hop: each hop is reached through the one before it."""
        conn: Any = None
        for hop in self.machine.jumps:
            try:
                nxt = await self._open_retrying(hop, self.machine.connect_timeout, conn)
            except BaseException:
                for c in self._hops:
                    c.close()
                self._hops = []
                raise
            self._hops.append(nxt)
            conn = nxt
        return conn

    async def connect(self) -> float:
        start = time.perf_counter()
        async with self._lock:
            if not self._live():
                await self._new_connection()
        return time.perf_counter() - start

    def _live(self) -> list[_Connection]:
        live = []
        for c in self._conns:
            if c.conn.is_closed():
                c.lost_reason = c.lost_reason or "connection closed"
            else:
                live.append(c)
        self._conns = [c for c in self._conns if c.channels > 0 or not c.conn.is_closed()]
        return live

    async def _acquire(self) -> _Connection:
        """A connection with a free channel, opening another one when all are full."""
        if self._closed:
            raise ConnectError(f"{self.name}: transport closed", machine=self.name)
        while True:
            async with self._lock:
                self._freed.clear()
                live = self._live()
                for c in live:
                    if c.channels < self.channels_per_connection and not c.full:
                        c.channels += 1
                        return c
                if not live or len(live) * self.channels_per_connection < 1024:
                    c = await self._new_connection()
                    c.channels += 1
                    return c
            # Every connection is full and no more may be opened: wait for a release (bounded, so a
            # connection that closed without releasing is noticed too) instead of spinning.
            try:
                await asyncio.wait_for(self._freed.wait(), 1.0)
            except TimeoutError:
                pass

    async def _channel(self, open_: Callable[[Any], Awaitable[_T]]) -> tuple[_Connection, _T]:
        """Open a channel with ``open_(conn)`` on a connection with room for it.

        sshd refuses sessions past its ``MaxSessions``: when it refuses one, the number of channels the
        connection holds is that server's limit; it is learned (for every later channel of this
        machine) and the channel goes to another connection.
        """
        limit = self.machine.connect_timeout + SIGNAL_WAIT
        last: BaseException | None = None
        for n in range(CHANNEL_TRIES):
            c = await self._acquire()
            try:
                return c, await asyncio.wait_for(open_(c.conn), limit)
            except asyncssh.ChannelOpenError as exc:
                c.release()
                last = exc
                if c.channels < 1:
                    # Refused on an idle connection: sshd may not have freed a session that just closed.
                    await asyncio.sleep(0.1 * 2 ** n)
                    continue
                if c.channels < self.channels_per_connection:
                    self.channels_per_connection = c.channels
                    self.learned_limit = c.channels
                c.full = True                      # this one takes no new channel until one closes
            except TimeoutError as exc:
                c.release()
                raise ConnectError(f"{self.name}: no answer to the channel request within {limit:g} s",
                                   machine=self.name) from exc
            except BaseException:
                c.release()
                raise
        reason = _reason(last) if last is not None else "refused"
        raise ConnectError(f"{self.name}: sshd refused a session channel ({reason}): raise MaxSessions "
                           f"in its sshd_config", machine=self.name)

    # -- running ------------------------------------------------------------------------------
    async def start(self, command: str, *, cwd: str | None, env: Mapping[str, str],
                    on_line: OutputTarget, stdin: bool = False) -> SshProcess | SlotProcess:
        token = new_token()
        if not stdin and self.persistent_shells is not False:
            shell = await self._slot_shell()
            if shell is not None:
                script = shell_wrapper(command, cwd=cwd, env=env, token=token, pid="$BASHPID",
                                       wake=WAKE.format(token=token))
                return shell.start(script, token, on_line)
        script = _sh(shell_wrapper(command, cwd=cwd, env=env, token=token, watch=not stdin))
        try:
            # stdin stays open and unwritten: the wrapper's watcher ends the shard when it closes.
            c, proc = await self._channel(lambda conn: conn.create_process(
                script, stderr=asyncssh.STDOUT, encoding=None))
        except (asyncssh.Error, OSError) as exc:
            raise ConnectError(f"{self.name}: cannot start command: {_reason(exc)}", machine=self.name) from exc
        return SshProcess(proc, on_line, c, token)

    async def _slot_shell(self) -> SlotShell | None:
        """An idle slot shell, or a new one; None when this machine cannot run one (no bash)."""
        while self._idle:
            shell = self._idle.pop()
            if not shell.closed:
                return shell
        token = new_token()
        quiet = self._heartbeat_interval() * (self.machine.server_alive_count_max or KEEPALIVE_COUNT_MAX) + 5
        try:
            c, proc = await self._channel(lambda conn: conn.create_process(
                _sh(launcher(token, quiet)), stderr=asyncssh.STDOUT, encoding=None))
        except (asyncssh.Error, OSError) as exc:
            raise ConnectError(f"{self.name}: cannot start command: {_reason(exc)}", machine=self.name) from exc
        shell = SlotShell(proc, token, kill=self.kill_groups, release=c.release, lost=lambda: c.lost_reason,
                          idle=self._idle.append)
        self._shells = {s for s in self._shells if not s.closed}
        self._shells.add(shell)
        try:
            ok = await asyncio.wait_for(asyncio.shield(shell.ready), self.machine.connect_timeout + SIGNAL_WAIT)
        except TimeoutError:
            ok = False
        except BaseException:
            shell.close()
            raise
        if not ok:
            shell.close()
            self._shells.discard(shell)
            if shell.said_no or shell.error is None:
                self.persistent_shells = False          # a channel per shard from now on
            return None
        self.persistent_shells = True
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.ensure_future(self._poke_shells())
        return shell

    def _heartbeat_interval(self) -> float:
        m = self.machine
        return m.server_alive_interval if m.server_alive_interval is not None else max(1.0, m.connect_timeout)

    async def _poke_shells(self) -> None:
        """A line to every slot shell once per keepalive interval: a shell that hears nothing for a few
        of them takes its coordinator for gone (see slots.launcher)."""
        while self._shells:
            await asyncio.sleep(self._heartbeat_interval())
            for shell in list(self._shells):
                shell.poke()
            self._shells = {s for s in self._shells if not s.closed}

    async def run(self, command: str, *, cwd: str | None = None, env: Mapping[str, str] | None = None,
                  stdin: str | None = None, timeout: float | None = None) -> tuple[ProcessResult, str]:
        # Without input, the wrapper watches stdin: a command that times out dies with its channel.
        script = _sh(shell_wrapper(command, cwd=cwd, env=env, watch=stdin is None))
        try:
            c, proc = await self._channel(lambda conn: conn.create_process(
                script, input=stdin, stderr=asyncssh.STDOUT, encoding="utf-8", errors="replace"))
        except (asyncssh.Error, OSError) as exc:
            return ProcessResult(None, None, f"connection lost: {_reason(exc)}"), ""
        try:
            result = await proc.wait(check=False, timeout=timeout)
        except asyncssh.TimeoutError:
            return ProcessResult(None, None, f"timed out after {timeout:g} s"), ""
        except (asyncssh.Error, OSError) as exc:
            return ProcessResult(None, None, f"connection lost: {_reason(exc)}"), ""
        finally:
            if not proc.is_closing():
                proc.close()                      # a timed-out command must not keep its session open
            c.release()
        out = result.stdout if isinstance(result.stdout, str) else ""
        if result.exit_signal:
            return ProcessResult(None, str(result.exit_signal[0])), out
        if result.exit_status is None:
            return ProcessResult(None, None, "connection lost"), out
        return ProcessResult(result.exit_status), out

    async def kill_groups(self, pgids: Sequence[int], signal: str, *, markers: Sequence[str] = ()) -> None:
        if not pgids and not markers:
            return
        try:
            await self.run(kill_script(pgids, signal, markers=markers), timeout=self.machine.connect_timeout + 5)
        except ConnectError:
            pass
        for shell in list(self._shells):
            if shell.current is not None and shell.current.pgid in pgids:
                shell.poke()
                if signal == "KILL":
                    shell.current.killed()

    async def rtt(self) -> float:
        c = await self._acquire()
        try:
            start = time.perf_counter()
            # A global request answered by sshd itself: a round trip with no process behind it.
            request = getattr(c.conn, "_make_global_request", None)
            if request is not None:
                await asyncio.wait_for(request(b"keepalive@openssh.com"), self.machine.connect_timeout)
            else:  # pragma: no cover - older or newer asyncssh without it: a no-op command instead
                await c.conn.run("true", check=False)
            return time.perf_counter() - start
        finally:
            c.release()

    async def session_limit(self, want: int) -> int | None:
        """How many session channels sshd grants on one connection, counted up to ``want``: the number
        granted when it refuses one (its ``MaxSessions``), None when all ``want`` were granted."""
        async with self._lock:
            if not self._live():
                await self._new_connection()
            c = self._live()[0]
        opened: list[Any] = []
        limit = self.machine.connect_timeout + SIGNAL_WAIT
        try:
            for _ in range(max(0, want - c.channels)):
                try:
                    opened.append(await asyncio.wait_for(c.conn.create_process("exec cat >/dev/null"), limit))
                except asyncssh.ChannelOpenError:
                    return c.channels + len(opened)
            return None
        finally:
            for proc in opened:
                proc.close()

    # -- files --------------------------------------------------------------------------------
    async def _sftp(self) -> Any:
        """One SFTP session per machine, opened on first use and kept: every shard's JUnit file and
        every synced file goes over it (a session per file costs a channel, a remote sftp-server and
        several round trips). It holds one channel of its connection for as long as it lives."""
        if self._sftp_conn is not None and self._sftp_conn.conn.is_closed():
            self._drop_sftp()
        if self._sftp_client is None:                 # set before any await: concurrent callers share it
            self._sftp_client = asyncio.ensure_future(self._open_sftp())
        try:
            return await asyncio.shield(self._sftp_client)
        except (asyncssh.Error, OSError, ConnectError):
            self._drop_sftp()
            raise

    async def _open_sftp(self) -> Any:
        self._sftp_conn, client = await self._channel(lambda conn: conn.start_sftp_client())
        return client

    def _drop_sftp(self) -> None:
        if self._sftp_conn is not None:
            self._sftp_conn.release()
        self._sftp_conn = self._sftp_client = None

    async def get_file(self, remote: str, local: str) -> bool:
        sftp = await self._sftp()
        carrier = self._sftp_conn
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        copy = asyncio.ensure_future(sftp.get(_sftp_path(remote), local))
        try:
            await asyncio.shield(copy)
        except asyncssh.SFTPNoSuchFile:
            return False
        except asyncio.CancelledError:
            if not copy.done():
                self._cut_transfer(carrier, copy)
            raise
        return True

    def _cut_transfer(self, carrier: _Connection | None, copy: asyncio.Future[Any]) -> None:
        """A transfer given up midway (Ctrl-C, a download timeout). Cancelling the copy alone would
        wait for the replies to all its requests in flight, and on a slow link anything sent on that
        connection afterwards (the end-of-run sweep) would queue behind them: the connection carrying
        it is aborted instead; the next channel opens a fresh one."""
        copy.add_done_callback(lambda t: t.cancelled() or t.exception())
        if carrier is None:
            copy.cancel()
            return
        if carrier is self._sftp_conn:
            self._drop_sftp()
        carrier.lost_reason = "a file transfer was cut short"
        carrier.conn.abort()

    async def put_file(self, local: str, remote: str) -> None:
        sftp = await self._sftp()
        await sftp.put(local, _sftp_path(remote))

    async def close(self) -> None:
        self._closed = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        for shell in list(self._shells):
            shell.close()
        self._shells.clear()
        self._idle.clear()
        client = self._sftp_client
        if client is not None and client.done() and not client.cancelled() and client.exception() is None:
            client.result().exit()
        self._sftp_client = self._sftp_conn = None
        for c in self._conns:
            c.conn.close()
        for c in self._conns:
            try:
                await asyncio.wait_for(c.conn.wait_closed(), 2)
            except (TimeoutError, asyncssh.Error, OSError):
                pass
        self._conns = []
        for hop in reversed(self._hops):
            hop.close()
        self._hops = []
        self._tunnel = None
        for proxy in self._proxies:
            await proxy.stop()
        self._proxies = []


def _local_user() -> str:
    return getpass.getuser()
