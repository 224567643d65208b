"""A fleet of real OpenSSH ``sshd`` processes on this machine, one per fake machine.

Each fake machine ``h1..hN`` listens on its own loopback address (127.0.0.2, 127.0.0.3, …) with its own
host key; all share one client key, one ``authorized_keys`` and one ``known_hosts``. ``SetEnv`` in each
``sshd_config`` tells a session which machine it is on (``FLEETSHARD_TEST_HOST``), how slow to be
(``FLEETSHARD_TEST_SPEED``) and which fleet started it (``FLEETSHARD_TEST_FLEET``), so tests can find
every process a run left behind.

Slow machines are really slow: where the cgroup v1 ``cpu`` controller is writable (``/sys/fs/cgroup/cpu``),
each machine's sshd, and so every session it starts, runs in its own cgroup whose CPU quota
(``cpu.cfs_quota_us``) is ``cpu_cores / speed`` cores, so CPU-bound work (the probe's calibration, a real
test suite) takes ``speed`` times longer there. Where cgroups are not writable (or
``FLEETSHARD_TEST_CGROUPS=0``), only the sleep-based slowness remains: fake suites multiply their sleeps by
``FLEETSHARD_TEST_SPEED`` in both cases. ``FLEETSHARD_TEST_CPU`` in a session says which applies (the
quota in cores, or ``none``). The cgroups are removed at teardown; empty ones a killed run left are
swept when the next fleet starts.

Used by the integration tests (``tests/conftest.py``) and by the benchmarks in ``bench/``::

    with SshFleet(Path(tmp), n=4, speeds=[1, 1, 2, 3]) as fleet:
        inventory = fleet.write_inventory(Path(tmp) / "machines.yaml", suite={...})
        ...
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

SSHD = Path("/usr/sbin/sshd")
TEST_USER = "fleetshard-test"
HOST_ENV = "FLEETSHARD_TEST_HOST"
SPEED_ENV = "FLEETSHARD_TEST_SPEED"
FLEET_ENV = "FLEETSHARD_TEST_FLEET"
CPU_ENV = "FLEETSHARD_TEST_CPU"
CGROUPS_SWITCH_ENV = "FLEETSHARD_TEST_CGROUPS"
CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
CGROUP_PREFIX = "fleetshard-test-"
CFS_PERIOD_US = 10_000  # a short period: even a 10 ms CPU burst (the probe's calibration) meets the quota
SHARES_PER_CORE = 4096  # cpu.shares of a cgroup per core of quota (a process outside any has 1024)
PRIVSEP_DIR = Path("/run/sshd")
START_TIMEOUT = 10.0

__all__ = [
    "CPU_ENV",
    "FLEET_ENV",
    "HOST_ENV",
    "SPEED_ENV",
    "FleetMachine",
    "MakeFleet",
    "SshFleet",
    "WriteInventory",
    "cgroup_skip_reason",
    "skip_reason",
]


def skip_reason() -> str | None:
    """Why the fleet cannot run here, or None when it can."""
    if not (SSHD.is_file() and os.access(SSHD, os.X_OK)):
        return f"OpenSSH server not installed ({SSHD} missing; apt-get install openssh-server)"
    if shutil.which("ssh-keygen") is None:
        return "ssh-keygen not found (apt-get install openssh-client)"
    return None


def cgroup_skip_reason(root: Path = CGROUP_CPU) -> str | None:
    """Why machines cannot get CPU quotas here (cgroup v1 ``cpu``), or None when they can."""
    if os.environ.get(CGROUPS_SWITCH_ENV, "1").strip().lower() in ("0", "no", "false", "off"):
        return f"{CGROUPS_SWITCH_ENV}=0"
    if not (root / "cpu.cfs_quota_us").is_file():
        return f"no cgroup v1 cpu controller at {root}"
    if not os.access(root, os.W_OK):
        return f"{root} is not writable"
    return None


def _sweep_stale_cgroups(root: Path) -> None:
    """Remove empty cgroups of fleets that are gone (a killed test run cannot clean up after itself)."""
    with contextlib.suppress(OSError):
        for entry in root.iterdir():
            if entry.name.startswith(CGROUP_PREFIX) and entry.is_dir():
                with contextlib.suppress(OSError):
                    if not (entry / "cgroup.procs").read_text().strip():
                        entry.rmdir()


@dataclass
class FleetMachine:
    """One fake machine: an ``sshd`` on its own loopback address."""

    name: str
    address: str
    port: int
    speed: float
    host_key_path: Path
    host_pubkey: str  # "ssh-ed25519 AAAA…"
    workdir: Path
    config_path: Path
    log_path: Path
    cpu_quota: float | None = None  # cores this machine's sessions may use; None: not confined
    cgroup: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.running and self.process is not None else None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


# --------------------------------------------------------------------------------------------------
# /proc helpers


def _proc_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    rest = data[data.rfind(b")") + 2 :].split()
    if len(rest) < 2:
        return None
    return rest[0].decode(), int(rest[1])


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for pid in _proc_pids():
        st = _stat(pid)
        if st is not None:
            children.setdefault(st[1], []).append(pid)
    return children


def _descendants(roots: Iterable[int], children: Mapping[int, list[int]] | None = None) -> set[int]:
    """Every descendant of ``roots`` (not the roots themselves)."""
    if children is None:
        children = _children_map()
    found: set[int] = set()
    stack = list(roots)
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _environ(pid: int) -> dict[str, str] | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            data = f.read()
    except OSError:  # gone, or not ours to read
        return None
    env: dict[str, str] = {}
    for item in data.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _wait_stopped(pids: Iterable[int], timeout: float = 1.0) -> None:
    """Wait until each process is stopped, a zombie, or gone (SIGSTOP is delivered asynchronously)."""
    pending = set(pids)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            st = _stat(pid)
            if st is None or st[0] in ("T", "t", "Z", "X"):
                pending.discard(pid)
        if pending:
            time.sleep(0.002)


def _freeze(collect: Callable[[], set[int]], *, rounds: int = 50) -> set[int]:
    """SIGSTOP everything ``collect`` returns until it returns nothing new, so nothing forks away."""
    frozen: set[int] = set()
    for _ in range(rounds):
        new = collect() - frozen - {os.getpid()}
        if not new:
            break
        for pid in new:
            _signal(pid, signal.SIGSTOP)
        _wait_stopped(new)
        frozen |= new
    return frozen


def _free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        port: int = s.getsockname()[1]
    return port


def _banner(address: str, port: int, timeout: float = 0.5) -> bytes | None:
    """The SSH identification line, or None if nothing answers yet."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as s:
            data = b""
            while b"\n" not in data and len(data) < 512:
                chunk = s.recv(256)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    return data if data.startswith(b"SSH-") else None


def _machine_address(index: int, first_octet_start: int) -> str:
    """Loopback address of machine ``index`` (0-based): 127.0.0.2…254, then 127.0.1.2…254, …"""
    offset = first_octet_start - 2 + index
    if offset < 0:
        raise ValueError("first_octet_start must be at least 2 (127.0.0.1 is left alone)")
    third, fourth = divmod(offset, 253)
    if third > 255:
        raise ValueError("too many machines for 127.0.0.0/16")
    return f"127.0.{third}.{fourth + 2}"


def _format_speed(speed: float) -> str:
    return f"{speed:g}"


# --------------------------------------------------------------------------------------------------
# the login user


def _ensure_test_user() -> str:
    """The user sessions log in as: a system user with ``/bin/sh`` and no rc files (root only)."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    if subprocess.run(["id", "-u", TEST_USER], capture_output=True).returncode != 0:
        proc = subprocess.run(
            ["useradd", "--system", "--create-home", "--shell", "/bin/sh", "--password", "*", TEST_USER],
            capture_output=True,
            text=True,
        )
        if proc.returncode not in (0, 9):  # 9: created meanwhile by a concurrent run
            raise RuntimeError(f"useradd {TEST_USER} failed ({proc.returncode}): {proc.stderr.strip()}")
    entry = pwd.getpwnam(TEST_USER)
    # Without PAM, sshd refuses accounts whose password field is locked ("!…"): use "*" (no password).
    with contextlib.suppress(OSError):
        for line in Path("/etc/shadow").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == TEST_USER and fields[1].startswith("!"):
                subprocess.run(["usermod", "--password", "*", TEST_USER], check=True, capture_output=True)
    # sshd chdirs to the home directory and complains on stderr when it is missing.
    home = Path(entry.pw_dir)
    if not home.is_dir():
        home.mkdir(parents=True, exist_ok=True)
        os.chown(home, entry.pw_uid, entry.pw_gid)
    return TEST_USER


# --------------------------------------------------------------------------------------------------


class SshFleet:
    """N real ``sshd`` processes on loopback addresses, with faults to inject.

    ``root`` holds keys, configs, logs and each machine's scratch workdir (``root/work/<name>``).
    It is made world-traversable, so it must not live below a private directory such as pytest's
    ``tmp_path`` (use ``tempfile.mkdtemp()``).
    """

    def __init__(
        self,
        root: Path,
        n: int = 4,
        *,
        speeds: Sequence[float] | None = None,
        first_octet_start: int = 2,
        cgroups: bool | None = None,
        cpu_cores: float = 1.0,
        max_sessions: int = 100,
    ) -> None:
        """``cgroups``: confine each machine to ``cpu_cores / speed`` cores (None: where writable;
        True: required, an error where not writable; False: never). ``max_sessions``: sshd's
        ``MaxSessions`` (channels per connection)."""
        if n < 1:
            raise ValueError("a fleet needs at least one machine")
        if speeds is not None and len(speeds) != n:
            raise ValueError(f"speeds has {len(speeds)} entries for {n} machines")
        self.root = Path(root).resolve()
        self.n = n
        self.speeds: list[float] = [float(s) for s in speeds] if speeds is not None else [1.0] * n
        self.first_octet_start = first_octet_start
        self.max_sessions = max_sessions
        if cpu_cores <= 0:
            raise ValueError("cpu_cores must be positive")
        self.cpu_cores = float(cpu_cores)
        self._want_cgroups = cgroups
        self.cgroups = False  # whether the machines' CPU is really confined (decided at start)
        self.fleet_id = secrets.token_hex(6)
        self.user = TEST_USER if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        self.client_key = self.root / "client_ed25519"
        self.authorized_keys = self.root / "authorized_keys"
        self.known_hosts = self.root / "known_hosts"
        self.machines: list[FleetMachine] = []
        self._by_name: dict[str, FleetMachine] = {}
        self._paused: dict[str, set[int]] = {}
        self._started = False
        self._stopped = False

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> SshFleet:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> SshFleet:
        if self._started:
            raise RuntimeError("fleet already started")
        reason = skip_reason()
        if reason is not None:
            raise RuntimeError(reason)
        self._started = True
        atexit.register(self.stop)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.user = _ensure_test_user()
        if os.geteuid() == 0:
            PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        self._make_traversable()
        for sub in ("hostkeys", "config", "logs", "work"):
            (self.root / sub).mkdir(exist_ok=True)
        os.chmod(self.root / "work", 0o755)

        # Keys: the client key and one host key per machine, generated concurrently.
        names = [f"h{i + 1}" for i in range(self.n)]
        keygen: list[tuple[Path, subprocess.Popen[bytes]]] = []
        key_paths = [self.client_key] + [self.root / "hostkeys" / f"{name}_ed25519" for name in names]
        for path in key_paths:
            for stale in (path, path.with_name(path.name + ".pub")):
                stale.unlink(missing_ok=True)
            cmd = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)]
            keygen.append(
                (
                    path,
                    subprocess.Popen(
                        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
                    ),
                )
            )
        for path, proc in keygen:
            out, _ = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"ssh-keygen for {path} failed: {out.decode(errors='replace')}")
        client_pub = self.client_key.with_name(self.client_key.name + ".pub").read_text().strip()
        self.authorized_keys.write_text(client_pub + "\n")
        os.chmod(self.authorized_keys, 0o644)

        for i, name in enumerate(names):
            address = _machine_address(i, self.first_octet_start)
            host_key = self.root / "hostkeys" / f"{name}_ed25519"
            pub = host_key.with_name(host_key.name + ".pub").read_text().split()
            workdir = self.root / "work" / name
            workdir.mkdir(exist_ok=True)
            os.chmod(workdir, 0o777)
            machine = FleetMachine(
                name=name,
                address=address,
                port=_free_port(address),
                speed=self.speeds[i],
                host_key_path=host_key,
                host_pubkey=f"{pub[0]} {pub[1]}",
                workdir=workdir,
                config_path=self.root / "config" / f"{name}.sshd_config",
                log_path=self.root / "logs" / f"{name}.log",
            )
            self.machines.append(machine)
            self._by_name[name] = machine

        self._setup_cgroups()
        for machine in self.machines:
            machine.log_path.write_bytes(b"")
            self._spawn(machine)
        self._wait_ready(self.machines, fixed_port=False)
        self.write_known_hosts(self.known_hosts)

    def stop(self) -> None:
        """Kill every sshd of the fleet, all their sessions and every process carrying this fleet's env."""
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        self._kill(self.machines)
        self._paused.clear()
        self._remove_cgroups()

    # ---------------------------------------------------------------- cgroups

    def _setup_cgroups(self) -> None:
        if self._want_cgroups is False:
            return
        reason = cgroup_skip_reason()
        if reason is not None:
            if self._want_cgroups:
                raise RuntimeError(f"CPU quotas for the fleet's machines are not possible: {reason}")
            return
        _sweep_stale_cgroups(CGROUP_CPU)
        try:
            for machine in self.machines:
                machine.cpu_quota = self.cpu_cores / machine.speed if machine.speed > 0 else self.cpu_cores
                machine.cgroup = CGROUP_CPU / f"{CGROUP_PREFIX}{self.fleet_id}-{machine.name}"
                self._ensure_cgroup(machine)
        except OSError as exc:
            self._remove_cgroups()
            for machine in self.machines:
                machine.cpu_quota = machine.cgroup = None
            if self._want_cgroups:
                raise RuntimeError(f"CPU quotas for the fleet's machines failed: {exc}") from exc
            return
        self.cgroups = True

    def _ensure_cgroup(self, machine: FleetMachine) -> None:
        """Create the machine's cgroup (again, if a sweep removed it) with its CPU quota."""
        if machine.cgroup is None or machine.cpu_quota is None:
            return
        machine.cgroup.mkdir(exist_ok=True)
        (machine.cgroup / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
        quota = max(1000, round(CFS_PERIOD_US * machine.cpu_quota))
        (machine.cgroup / "cpu.cfs_quota_us").write_text(str(quota))
        # A cgroup competes with each process outside it as one: weigh it like a few busy processes
        # (fewer on slower machines), so a busy host does not starve the fleet's sessions.
        (machine.cgroup / "cpu.shares").write_text(str(max(2, round(SHARES_PER_CORE * machine.cpu_quota))))

    def _remove_cgroups(self) -> None:
        """rmdir every machine's cgroup; killed tasks leave it asynchronously, so retry briefly."""
        pending = [m.cgroup for m in self.machines if m.cgroup is not None and m.cgroup.exists()]
        deadline = time.monotonic() + 5
        while pending:
            still = []
            for path in pending:
                try:
                    path.rmdir()
                except FileNotFoundError:
                    pass
                except OSError:
                    still.append(path)
            pending = still
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(0.02)

    def cgroup_pids(self, name: str) -> list[int]:
        """Pids in a machine's cgroup (empty when it has none)."""
        cgroup = self.machine(name).cgroup
        if cgroup is None:
            return []
        try:
            return sorted(int(p) for p in (cgroup / "cgroup.procs").read_text().split())
        except OSError:
            return []

    # ---------------------------------------------------------------- spawning

    def _make_traversable(self) -> None:
        """The login user reads authorized_keys and writes workdirs below root: it must reach them."""
        os.chmod(self.root, 0o755)
        if os.geteuid() != 0 or self.user != TEST_USER:
            return
        for parent in self.root.parents:
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                raise RuntimeError(
                    f"{parent} is not traversable by other users, so {self.user} cannot reach the fleet "
                    f"directory {self.root}; put the fleet below /tmp (tempfile.mkdtemp())"
                )

    def _write_config(self, machine: FleetMachine) -> None:
        lines = [
            f"ListenAddress {machine.address}:{machine.port}",
            f"HostKey {machine.host_key_path}",
            f"PidFile {self.root / 'config' / (machine.name + '.pid')}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "StrictModes no",
            "UsePAM no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password",
            f"AllowUsers {self.user}",
            "Subsystem sftp internal-sftp",
            f"MaxSessions {self.max_sessions}",
            "MaxStartups 200",
            "LogLevel ERROR",
            "PrintMotd no",
            "PrintLastLog no",
            "UseDNS no",
            f"SetEnv {HOST_ENV}={machine.name} {SPEED_ENV}={_format_speed(machine.speed)} "
            f"{FLEET_ENV}={self.fleet_id} "
            f"{CPU_ENV}={'none' if machine.cpu_quota is None else f'{machine.cpu_quota:.3g}'}",
            "ClientAliveInterval 0",
            "",
        ]
        machine.config_path.write_text("\n".join(lines))

    def _spawn(self, machine: FleetMachine) -> None:
        self._write_config(machine)
        self._ensure_cgroup(machine)
        with open(machine.log_path, "ab") as log:
            machine.process = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(machine.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        if machine.cgroup is not None:
            # Before the first connection (the readiness poll), so every session inherits the quota.
            try:
                (machine.cgroup / "cgroup.procs").write_text(str(machine.process.pid))
            except OSError as exc:
                machine.process.kill()
                machine.process.wait()
                raise RuntimeError(f"cannot put {machine.name}'s sshd into {machine.cgroup}: {exc}") from exc

    def _wait_ready(self, machines: Sequence[FleetMachine], *, fixed_port: bool) -> None:
        """Poll until each sshd sends its banner; re-pick a port taken meanwhile (unless fixed)."""
        pending = list(machines)
        retries = {m.name: 0 for m in machines}
        deadline = time.monotonic() + START_TIMEOUT
        while pending:
            still: list[FleetMachine] = []
            for machine in pending:
                proc = machine.process
                assert proc is not None
                if proc.poll() is not None:
                    log = machine.log()
                    in_use = "Address already in use" in log or "Cannot bind any address" in log
                    if in_use and retries[machine.name] < 5 and time.monotonic() < deadline:
                        retries[machine.name] += 1
                        if not fixed_port:
                            machine.port = _free_port(machine.address)
                        else:
                            time.sleep(0.1)
                        self._spawn(machine)
                        still.append(machine)
                        continue
                    raise RuntimeError(
                        f"sshd for {machine.name} ({machine.address}:{machine.port}) exited with "
                        f"{proc.returncode}:\n{log}"
                    )
                if _banner(machine.address, machine.port) is None:
                    still.append(machine)
            pending = still
            if pending:
                if time.monotonic() > deadline:
                    details = "\n".join(f"{m.name}: {m.log()}" for m in pending)
                    raise RuntimeError(f"sshd did not come up within {START_TIMEOUT}s:\n{details}")
                time.sleep(0.01)

    # ---------------------------------------------------------------- lookups

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.machines]

    def machine(self, name: str) -> FleetMachine:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no machine {name!r} in the fleet ({', '.join(self.names)})") from None

    def __getitem__(self, name: str) -> FleetMachine:
        return self.machine(name)

    def ssh_args(self, name: str, *, known_hosts: Path | None = None) -> list[str]:
        """An OpenSSH client command line (without the remote command) for one machine."""
        m = self.machine(name)
        return [
            "ssh",
            "-i",
            str(self.client_key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={known_hosts or self.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "LogLevel=ERROR",
            "-p",
            str(m.port),
            f"{self.user}@{m.address}",
        ]

    def write_known_hosts(self, path: Path, *, wrong: Collection[str] = ()) -> Path:
        """A known_hosts file; machines named in ``wrong`` get another machine's (or a fresh) key."""
        lines = []
        for i, m in enumerate(self.machines):
            key = m.host_pubkey
            if m.name in wrong:
                key = self._other_key(i)
            lines.append(f"[{m.address}]:{m.port} {key}")
        path.write_text("\n".join(lines) + "\n")
        return path

    def _other_key(self, index: int) -> str:
        if len(self.machines) > 1:
            return self.machines[(index + 1) % len(self.machines)].host_pubkey
        spare = self.root / "hostkeys" / "spare_ed25519"
        if not spare.exists():
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(spare)],
                check=True,
                capture_output=True,
            )
        parts = spare.with_name(spare.name + ".pub").read_text().split()
        return f"{parts[0]} {parts[1]}"

    def write_inventory(
        self,
        path: Path,
        *,
        machines: Sequence[str] | None = None,
        slots: int | Mapping[str, int] | None = 2,
        suite: Mapping[str, Any] | None = None,
        health: Mapping[str, Any] | None = None,
        extra_machine_keys: Mapping[str, Mapping[str, Any]] | None = None,
        top: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write a ``machines.yaml`` (DESIGN.md §3) pointing at (a subset of) the fleet.

        ``slots``: one number for all, a per-machine mapping (machines not in it get none), or None
        (probe cores). ``extra_machine_keys[name]`` is merged into that machine's entry (it may name a
        machine outside the fleet, e.g. an unreachable one with its own ``host``/``port``). ``top`` is
        merged last into the top level.
        """
        chosen = list(machines) if machines is not None else self.names
        doc: dict[str, Any] = {
            "defaults": {
                "user": self.user,
                "identity_file": str(self.client_key),
                "known_hosts": str(self.known_hosts),
                "connect_timeout": 3,
            }
        }
        # All fake machines share this machine's CPU, which other work keeps busy: a test that wants an
        # unhealthy machine sets its own thresholds.
        doc["health"] = {"max_load_per_core": 1000, **dict(health or {})}
        entries: dict[str, dict[str, Any]] = {}
        for name in chosen:
            m = self.machine(name)
            entry: dict[str, Any] = {"host": m.address, "port": m.port}
            if isinstance(slots, int):
                entry["slots"] = slots
            elif slots is not None and name in slots:
                entry["slots"] = slots[name]
            entry["workdir"] = str(m.workdir)
            entries[name] = entry
        for name, extra in (extra_machine_keys or {}).items():
            entries.setdefault(name, {}).update(dict(extra))
        doc["machines"] = entries
        if suite is not None:
            doc["suite"] = dict(suite)
        if top:
            doc.update(dict(top))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False))
        return path

    # ---------------------------------------------------------------- processes

    def processes(self, name: str | None = None) -> list[int]:
        """Pids of live processes started in a session of this fleet (of machine ``name``, or of any)."""
        if name is not None:
            self.machine(name)
        return self._env_pids({name} if name is not None else set(self._by_name))

    def _env_pids(self, wanted: Collection[str]) -> list[int]:
        me = os.getpid()
        found: list[int] = []
        for pid in _proc_pids():
            if pid == me:
                continue
            env = _environ(pid)
            if not env or env.get(FLEET_ENV) != self.fleet_id or env.get(HOST_ENV) not in wanted:
                continue
            st = _stat(pid)
            if st is None or st[0] in ("Z", "X"):
                continue
            found.append(pid)
        return sorted(found)

    def wait_no_processes(self, timeout: float = 5.0, name: str | None = None) -> list[int]:
        """Poll until no process of the fleet (or of ``name``) is left; return the survivors."""
        deadline = time.monotonic() + timeout
        while True:
            left = self.processes(name)
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.02)

    def session_pids(self, name: str) -> list[int]:
        """Every descendant of a machine's sshd listener (connections, sessions, their children)."""
        pid = self.machine(name).pid
        return sorted(_descendants([pid])) if pid is not None else []

    def _tree(self, machines: Sequence[FleetMachine], *, listeners: bool) -> set[int]:
        """Listeners (optionally), their descendants, and processes carrying these machines' env."""
        children = _children_map()
        roots = [m.process.pid for m in machines if m.process is not None and m.process.poll() is None]
        pids = _descendants(roots, children)
        if listeners:
            pids |= set(roots)
        return pids | set(self._env_pids({m.name for m in machines}))

    def _kill(self, machines: Sequence[FleetMachine]) -> None:
        frozen = _freeze(lambda: self._tree(machines, listeners=True))
        for pid in frozen:
            _signal(pid, signal.SIGKILL)
        for m in machines:
            if m.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    m.process.wait(timeout=5)
        # Whatever slipped through (forked between scans): kill until none is left.
        names = {m.name for m in machines}
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            left = self._env_pids(names)
            if not left:
                break
            for pid in left:
                _signal(pid, signal.SIGKILL)
            time.sleep(0.01)
        for m in machines:
            self._paused.pop(m.name, None)

    # ---------------------------------------------------------------- faults

    def stop_machine(self, name: str) -> None:
        """A lost machine: SIGKILL its sshd, every session and every process started on it."""
        self._kill([self.machine(name)])

    def restart_machine(self, name: str) -> None:
        """Bring a stopped machine back on the same address, port and host key."""
        machine = self.machine(name)
        if self._stopped or not self._started:
            raise RuntimeError("the fleet is not running")
        if machine.running:
            self.stop_machine(name)
        self._spawn(machine)
        self._wait_ready([machine], fixed_port=True)

    def pause_sessions(self, name: str) -> list[int]:
        """A hang: SIGSTOP every session process of the machine (the listener keeps accepting)."""
        machine = self.machine(name)
        frozen = _freeze(lambda: self._tree([machine], listeners=False))
        self._paused.setdefault(name, set()).update(frozen)
        return sorted(frozen)

    def resume_sessions(self, name: str) -> None:
        machine = self.machine(name)
        pids = self._paused.pop(name, set()) | self._tree([machine], listeners=False)
        for pid in pids:
            _signal(pid, signal.SIGCONT)

    def unused_address(self) -> tuple[str, int]:
        """A loopback address and port with nothing listening (an unreachable machine)."""
        used = {m.address for m in self.machines}
        address = next(a for a in ("127.0.0.250", "127.0.250.250", "127.0.251.250") if a not in used)
        return address, _free_port(address)


MakeFleet = Callable[..., SshFleet]
"""The ``make_fleet`` fixture: ``make_fleet(n=2, speeds=None, **SshFleet kwargs) -> SshFleet``."""
WriteInventory = Callable[..., Path]
"""The ``fleet_inventory`` fixture: ``fleet_inventory(path=None, **write_inventory kwargs) -> Path``."""
