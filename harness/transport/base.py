"""The one interface every transport implements."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence


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
