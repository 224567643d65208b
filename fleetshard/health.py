"""`fleetshard health`: probe every selected machine at once and show the verdicts."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import TextIO

from .inventory import Inventory, Machine
from .model import EXIT_INFRA, EXIT_OK
from .probes import HealthReport, probe_all
from .transport import Transport, transport_for


async def check(inv: Inventory, machines: Sequence[Machine], *, accept_new_host_keys: bool = False
                ) -> list[HealthReport]:
    transports: dict[str, Transport] = {m.name: transport_for(m, accept_new_host_keys=accept_new_host_keys)
                                        for m in machines}
    try:
        reports = await probe_all(machines, transports, inv.health)
        return list(await asyncio.gather(*(_check_sessions(r, transports[r.machine]) for r in reports)))
    finally:
        await asyncio.gather(*(t.close() for t in transports.values()))


async def _check_sessions(report: HealthReport, transport: Transport) -> HealthReport:
    """Warn when sshd's MaxSessions cannot carry the machine's slots (and the SFTP session) on one
    connection: fleetshard copes (it opens more connections), but each costs a handshake."""
    from .transport.ssh import SshTransport

    if not report.reachable or not isinstance(transport, SshTransport) or not report.slots:
        return report
    want = min(report.slots + 1, transport.channels_per_connection)
    try:
        granted = await asyncio.wait_for(transport.session_limit(want), report_timeout(transport))
    except Exception:  # a machine that fails here is already judged by its probe
        return report
    if granted is None:
        return report
    connections = -(-(report.slots + 1) // max(granted, 1))
    text = (f"sshd allows {granted} session{'s' if granted != 1 else ''} per connection (MaxSessions): "
            f"fleetshard opens {connections} connections for {report.slots} slots and file transfer; "
            f"set MaxSessions {want} or more in its sshd_config")
    return dataclasses.replace(report, warnings=(*report.warnings, text))


def report_timeout(transport: Transport) -> float:
    machine = getattr(transport, "machine", None)
    return float(getattr(machine, "connect_timeout", 5.0)) + 10.0


def _fmt(value: float | None, fmt: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, fmt) + suffix


def render_table(reports: Sequence[HealthReport], out: TextIO | None = None) -> None:
    from rich.table import Table
    from rich.text import Text

    from .console import make_console

    console = make_console(out)
    table = Table(title="fleetshard health", title_justify="left")
    for col, justify in (("machine", "left"), ("status", "left"), ("address", "left"), ("cores", "right"),
                         ("slots", "right"), ("load", "right"), ("mem used", "right"),
                         ("disk free", "right"), ("os/arch", "left"), ("connect", "right"),
                         ("latency", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    style = {"healthy": "green", "unhealthy": "yellow", "unreachable": "red"}
    for r in reports:
        table.add_row(
            r.machine, f"[{style[r.status]}]{r.status}[/]", r.address, _fmt(r.cores, "d"),
            _fmt(r.slots, "d"), _fmt(r.load1, ".2f"), _fmt(r.mem_used_pct, ".1f", "%"),
            _fmt(r.disk_free_pct, ".1f", "%"), f"{r.os}/{r.arch}" if r.os else "-",
            _fmt(None if r.connect_s is None else r.connect_s * 1000, ".0f", " ms"),
            _fmt(r.latency_ms, ".1f", " ms"))
    console.print(table)
    for r in reports:
        for reason in r.reasons:
            console.print(Text.assemble((r.machine, style[r.status]), f": {reason}"), soft_wrap=True)
        for warning in r.warnings:
            console.print(Text.assemble((r.machine, "yellow"), f": warning: {warning}"), soft_wrap=True)
    healthy = sum(r.healthy for r in reports)
    console.print(f"{healthy}/{len(reports)} machines healthy")


def health_command(inv: Inventory, machines: Sequence[Machine], *, as_json: bool,
                   accept_new_host_keys: bool) -> int:
    reports = asyncio.run(check(inv, machines, accept_new_host_keys=accept_new_host_keys))
    if as_json:
        json.dump({"machines": [r.as_dict() for r in reports],
                   "healthy": all(r.healthy for r in reports)}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        render_table(reports)
    return EXIT_OK if all(r.healthy for r in reports) else EXIT_INFRA
