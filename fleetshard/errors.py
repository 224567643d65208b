"""fleetshard's one error tree.

Every error fleetshard raises on purpose derives from :class:`FleetshardError`; the CLI catches that
base class, prints ``str(error)`` as one line (no traceback) and exits with ``error.exit_code``.

    FleetshardError                 exit 2 unless a subclass says otherwise
    ├── ConfigError                 bad inventory / bad input: names file, line and field (exit 2)
    ├── UsageError                  bad command-line usage (exit 2)
    ├── HistoryError                history database corrupt, locked or unreadable (exit 2)
    ├── NothingToResume             --resume of a run where everything passed: a message, exit 0
    └── InfraError                  something about the machines, not the tests (exit 3)
        ├── ConnectError            could not connect: refused, unreachable, timed out, DNS
        │   ├── HostKeyError        host key unknown or changed; message says what to do
        │   └── AuthError           authentication failed: agent, identity file, passphrase
        └── NoHealthyMachineError   nothing left to run on

A machine that fails during a run is *data* (an event, a row in a table), never an exception that
stops the other machines: transports raise these errors, the runner turns them into events.
"""

from __future__ import annotations


class FleetshardError(Exception):
    """Base of every error fleetshard raises on purpose."""

    exit_code = 2

    def __init__(self, message: str, *, machine: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.machine = machine

    def __str__(self) -> str:
        return self.message


class ConfigError(FleetshardError):
    """Malformed inventory or input file. Message form: ``file:line: field: problem``."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        parts = []
        if file is not None:
            parts.append(f"{file}:{line}" if line is not None else file)
        if field:
            parts.append(field)
        parts.append(message)
        super().__init__(": ".join(parts))
        self.file = file
        self.line = line
        self.field = field


class UsageError(FleetshardError):
    """Bad command-line usage."""


class HistoryError(FleetshardError):
    """The history database could not be used."""


class NothingToResume(FleetshardError):
    """``--resume RUN`` where every shard of RUN passed: not an error, there is just nothing to do."""

    exit_code = 0


class InfraError(FleetshardError):
    """A problem with the machines or the network, not with the tests."""

    exit_code = 3


class ConnectError(InfraError):
    """Could not establish a connection to a machine."""


class HostKeyError(ConnectError):
    """The machine's host key is unknown or does not match known_hosts."""


class AuthError(ConnectError):
    """Authentication was refused or the key could not be used."""


class NoHealthyMachineError(InfraError):
    """No machine is left to run on."""
