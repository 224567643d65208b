"""Health probes: one script per machine, one round trip, and a verdict against the thresholds."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ConnectError
from .inventory import HealthThresholds, Machine
from .transport import Transport
from .transport.handshake import handshake_slot

CONNECT_SLACK = 1.0     # seconds past a phase's own bound before the probe stops waiting for it

# POSIX sh; Linux first, macOS/BSD fallbacks. Prints key=value lines. The directory to measure comes
# in as $FLEETSHARD_PROBE_DIR (a leading ~ means the remote home), falling back to $HOME.
PROBE_SCRIPT = r"""
d=${FLEETSHARD_PROBE_DIR:-$HOME}
case $d in "~"|"~/"*) d="$HOME${d#\~}";; esac
[ -d "$d" ] || d=$HOME
c=$(getconf _NPROCESSORS_ONLN 2>/dev/null || nproc 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null)
echo "cores=$c"
if [ -r /proc/loadavg ]; then read l1 rest < /proc/loadavg; echo "load1=$l1"
else echo "load1=$(sysctl -n vm.loadavg 2>/dev/null | tr -d '{}' | awk '{print $1}')"; fi
if [ -r /proc/meminfo ]; then
  while read k v rest; do
    case $k in MemTotal:) echo "mem_total_kb=$v";; MemAvailable:) echo "mem_avail_kb=$v";; esac
  done < /proc/meminfo
fi
df -Pk "$d" 2>/dev/null | awk 'NR==2 {print "disk_total_kb=" $2; print "disk_avail_kb=" $4}'
echo "os=$(uname -s)"
echo "arch=$(uname -m)"
echo "dir=$d"
if [ -n "${FLEETSHARD_CALIBRATE:-}" ]; then
  # The fastest of three rounds: a busy moment on a shared host slows one round, a slow CPU all three.
  b=; r=0
  while [ $r -lt 3 ]; do
    s=$(date +%s%N 2>/dev/null); i=0
    while [ $i -lt 4000 ]; do i=$((i+1)); done
    e=$(date +%s%N 2>/dev/null)
    case "$s$e" in *N*|"") ;; *) t=$((e - s)); if [ -z "$b" ] || [ $t -lt $b ]; then b=$t; fi;; esac
    r=$((r+1))
  done
  [ -n "$b" ] && echo "calib_ns=$b"
fi
if [ -n "${FLEETSHARD_HEALTH_CHECK:-}" ]; then
  out=$(/bin/sh -c "$FLEETSHARD_HEALTH_CHECK" 2>&1 </dev/null); rc=$?
  echo "check_exit=$rc"
  echo "check_out=$(printf '%s\n' "$out" | tail -n 1)"
fi
"""


@dataclass(frozen=True)
class HealthReport:
    """What one probe found on one machine. A machine that failed is a value, never an exception."""

    machine: str
    transport: str
    address: str
    reachable: bool
    healthy: bool
    reasons: tuple[str, ...] = ()
    cores: int | None = None
    slots: int | None = None           # inventory slots, else probed cores
    load1: float | None = None
    mem_used_pct: float | None = None
    disk_free_pct: float | None = None
    os: str | None = None
    arch: str | None = None
    connect_s: float | None = None
    latency_ms: float | None = None
    probe_s: float | None = None
    calib_ms: float | None = None      # a fixed shell loop's time: a first guess of the machine's speed
    tags: tuple[str, ...] = field(default_factory=tuple)
    warnings: tuple[str, ...] = ()     # worth knowing, not a reason to leave the machine out

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["reasons"] = list(self.reasons)
        data["tags"] = list(self.tags)
        data["warnings"] = list(self.warnings)
        return data

    @property
    def status(self) -> str:
        if not self.reachable:
            return "unreachable"
        return "healthy" if self.healthy else "unhealthy"


def parse_probe_output(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.isidentifier():
            values[key] = value.strip()
    return values


def _num(values: Mapping[str, str], key: str) -> float | None:
    try:
        return float(values[key])
    except (KeyError, ValueError):
        return None


def metrics_from(values: Mapping[str, str]) -> dict[str, Any]:
    cores = _num(values, "cores")
    mem_total, mem_avail = _num(values, "mem_total_kb"), _num(values, "mem_avail_kb")
    disk_total, disk_avail = _num(values, "disk_total_kb"), _num(values, "disk_avail_kb")
    return {
        "cores": int(cores) if cores else None,
        "load1": _num(values, "load1"),
        "mem_used_pct": round(100.0 * (1 - mem_avail / mem_total), 1)
        if mem_total and mem_avail is not None else None,
        "disk_free_pct": round(100.0 * disk_avail / disk_total, 1)
        if disk_total and disk_avail is not None else None,
        "os": values.get("os") or None,
        "arch": values.get("arch") or None,
        "calib_ms": round(calib / 1e6, 2) if (calib := _num(values, "calib_ns")) and calib > 0 else None,
    }


def judge(metrics: Mapping[str, Any], thresholds: HealthThresholds) -> list[str]:
    """Reasons the machine is unhealthy; empty when it is healthy. Pure."""
    reasons = []
    disk = metrics.get("disk_free_pct")
    if disk is not None and disk <= thresholds.min_disk_free_pct:
        reasons.append(f"disk {disk:.1f}% free <= {thresholds.min_disk_free_pct:g}% (min_disk_free_pct)")
    mem = metrics.get("mem_used_pct")
    if mem is not None and mem >= thresholds.max_mem_used_pct:
        reasons.append(f"memory {mem:.1f}% used >= {thresholds.max_mem_used_pct:g}% (max_mem_used_pct)")
    load, cores = metrics.get("load1"), metrics.get("cores")
    if load is not None and cores:
        limit = thresholds.max_load_per_core * cores
        if load >= limit:
            reasons.append(f"load {load:.2f} >= {limit:g} ({thresholds.max_load_per_core:g} x {cores} cores, "
                           f"max_load_per_core)")
    if cores is None:
        reasons.append("probe did not report a core count")
    return reasons


def _address(machine: Machine) -> str:
    if machine.transport == "local":
        return "local"
    user = f"{machine.user}@" if machine.user else ""
    port = f":{machine.port}" if machine.port != 22 else ""
    return f"{user}{machine.host}{port}"


async def open_connection(machine: Machine, transport: Transport) -> float:
    """A probe's connect phase: wait for a handshake slot, then connect within the machine's connect timeout
    (plus CONNECT_SLACK; TimeoutError past it). Returns the seconds the transport took."""
    async with handshake_slot():            # the connect bound starts once a handshake may begin
        return await asyncio.wait_for(transport.connect(), machine.connect_timeout + CONNECT_SLACK)


async def probe(machine: Machine, transport: Transport, thresholds: HealthThresholds, *,
                calibrate: bool = False, connecting: Awaitable[float] | None = None) -> HealthReport:
    """Connect (or await ``connecting``, the same connect phase begun earlier), run the probe script and
    time three no-op round trips; never raises."""
    base: dict[str, Any] = dict(machine=machine.name, transport=machine.transport,
                                address=_address(machine), tags=machine.tags)
    budget = max(thresholds.timeout, 0.5)
    started = time.perf_counter()
    # Each phase has its own bound: the connect timeout bounds the handshake (the transport retries
    # within it), the probe's budget starts once connected, so a handshake slowed by load does not eat
    # the time of the probe itself.
    connect_limit = machine.connect_timeout + CONNECT_SLACK
    phase = "connect"
    try:
        connect_s = await (connecting if connecting is not None else open_connection(machine, transport))
        phase = "probe"
        probe_started = time.perf_counter()
        env = {"FLEETSHARD_PROBE_DIR": machine.workdir or "~", "FLEETSHARD_MACHINE": machine.name}
        if thresholds.check:
            env["FLEETSHARD_HEALTH_CHECK"] = thresholds.check
        if calibrate:
            env["FLEETSHARD_CALIBRATE"] = "1"
        result, out = await asyncio.wait_for(transport.run(PROBE_SCRIPT, env=env, timeout=budget),
                                             budget + CONNECT_SLACK)
        if result.exit_status != 0:
            why = result.error or f"probe exited with {result.exit_status or result.signal}"
            said = [line.strip() for line in out.splitlines() if line.strip()]
            if said and result.error is None:        # what the probe printed last (its stderr is merged)
                why += f": {' | '.join(said[-2:])[:300]}"
            return HealthReport(**base, reachable=result.error is None, healthy=False, reasons=(why,),
                                connect_s=connect_s)
        remaining = max(0.5, budget - (time.perf_counter() - probe_started))
        rtts = [await asyncio.wait_for(transport.rtt(), remaining) for _ in range(3)]
    except ConnectError as exc:         # reasons are shown beside the machine's name: not inside them too
        return HealthReport(**base, reachable=False, healthy=False,
                            reasons=(str(exc).removeprefix(f"{machine.name}: "),))
    except TimeoutError:
        limit = connect_limit - CONNECT_SLACK if phase == "connect" else budget
        what = "no answer" if phase == "connect" else "the probe did not finish"
        return HealthReport(**base, reachable=False, healthy=False,
                            reasons=(f"{what} within {limit:g} s ({phase} phase)",))
    except Exception as exc:  # a failing machine is data, whatever the failure
        return HealthReport(**base, reachable=False, healthy=False,
                            reasons=(f"probe failed: {type(exc).__name__}: {exc}",))
    values = parse_probe_output(out)
    metrics = metrics_from(values)
    reasons = judge(metrics, thresholds)
    if values.get("check_exit", "0") != "0":
        last = values.get("check_out", "")
        reasons.append(f"health check `{thresholds.check}` failed (exit {values['check_exit']})"
                       + (f": {last}" if last else ""))
    return HealthReport(**base, reachable=True, healthy=not reasons, reasons=tuple(reasons),
                        slots=machine.slots or metrics["cores"], connect_s=round(connect_s, 4),
                        latency_ms=round(statistics.median(rtts) * 1000, 2),
                        probe_s=round(time.perf_counter() - started, 4), **metrics)


CALIBRATION_NOISE = 1.3    # calibrated speeds within this factor of the median machine count as equal


def calibrated_speeds(reports: Sequence[HealthReport]) -> dict[str, float]:
    """First-run speed guesses from the probe's CPU loop, relative to the median machine (1.0).

    Only clear differences count (a Raspberry Pi next to a workstation); machines within
    CALIBRATION_NOISE of the median are taken as equal, as a loaded machine measures a little slow."""
    times = {r.machine: r.calib_ms for r in reports if r.calib_ms}
    if len(times) < 2:
        return {}
    median = statistics.median(times.values())
    speeds = {}
    for name, ms in times.items():
        speed = median / ms
        if not 1 / CALIBRATION_NOISE < speed < CALIBRATION_NOISE:
            speeds[name] = round(speed, 2)
    return speeds


async def probe_all(machines: Sequence[Machine], transports: Mapping[str, Transport],
                    thresholds: HealthThresholds, *, calibrate: Collection[str] = (),
                    connecting: Mapping[str, Awaitable[float]] | None = None) -> list[HealthReport]:
    """Probe every machine at once; results in inventory order. Machines named in ``calibrate`` also
    time a short CPU loop (``calib_ms``); ``connecting`` holds connect phases already begun."""
    begun = connecting or {}
    return list(await asyncio.gather(*(probe(m, transports[m.name], thresholds, calibrate=m.name in calibrate,
                                             connecting=begun.get(m.name)) for m in machines)))
