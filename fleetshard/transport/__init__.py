"""Transports run commands on machines: over SSH (asyncssh) or as local subprocesses."""

from __future__ import annotations

from ..inventory import Machine
from .base import ProcessResult, RemoteProcess, Transport, shell_wrapper
from .local import LocalTransport
from .ssh import SshTransport


def transport_for(machine: Machine, *, accept_new_host_keys: bool = False) -> Transport:
    """The transport a machine's inventory entry asks for."""
    if machine.transport == "local":
        return LocalTransport(machine)
    if machine.transport == "openssh":
        from .openssh import OpenSshTransport

        return OpenSshTransport(machine, accept_new_host_keys=accept_new_host_keys)
    return SshTransport(machine, accept_new_host_keys=accept_new_host_keys)


__all__ = ["LocalTransport", "ProcessResult", "RemoteProcess", "SshTransport", "Transport",
           "shell_wrapper", "transport_for"]
