"""The one interface every transport implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

#: Where a transport puts the runner and the model when its target says nothing else.
DEFAULT_WORKDIR = "/tmp/minrt"


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


class Transport(Protocol):
    """A connection to one device.

    `workdir` is a directory on the device that the harness may write to. `run` takes an argv
    (never a shell string): a transport that goes through a remote shell quotes every word.
    Every call has a timeout and raises DeviceError (naming the device and the step) when the
    device does not answer in time or the connection is lost.
    """

    workdir: str

    def put(self, local: Path, remote: str) -> None: ...

    def run(self, argv: Sequence[str], timeout: float) -> CommandResult: ...

    def get(self, remote: str, local: Path) -> None: ...

    def close(self) -> None: ...


#: Options of a [transport] table that put the device on an emulated board (harness.board),
#: for kinds with `board=True`; harness.devices boots the board and asks it for the address.
BOARD_OPTIONS: Mapping[str, type | tuple[type, ...]] = {"board": str, "board_instance": (str, int)}

#: A transport factory: (the target's [transport] options, the --host address or None,
#: trust_on_first_use) -> an open Transport.
TransportFactory = Callable[[Mapping[str, Any], "str | None", bool], Transport]


@dataclass(frozen=True)
class TransportKind:
    """What the registry (harness.transport.transport_kinds) knows of one kind of transport:
    how to open it, which target options it takes, and what it can do."""

    name: str
    summary: str  # how `harness targets` describes a target reached this way
    open: TransportFactory
    #: keys a target's [transport] table may hold besides `kind`, with their TOML types
    options: Mapping[str, type | tuple[type, ...]] = field(default_factory=dict)
    #: what --host means for this kind ("user@address[:port]"), None if it takes no address
    address: str | None = None
    #: it can reach the emulated board (`board = NAME` in [transport]; the board gives the address)
    board: bool = False
    #: host programs it needs, for `harness targets`
    needs: tuple[str, ...] = ()
