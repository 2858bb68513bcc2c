"""Bringing a target's device to "connected": the strategy above resources and transports.

A target names a transport kind and its options (harness.transport); an emulated board
(`board = NAME` in [transport]) is booted first if needed (harness.device.board), and then gives the
address to connect to. This module is the one place that knows both, so neither the transport
package nor the board module imports the other's users.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

from harness.errors import TargetError
from harness.transport import Transport, open_kind, transport_kind

if TYPE_CHECKING:
    from harness.config.targets import Target

def _open_on_board(kind: str, options: dict[str, Any]) -> Transport:
    from harness.device.board import ensure_board

    private = kind == "ssh" and options.get("workdir") is None  # a private workdir (mktemp -d) per connection
    board = ensure_board(options.pop("board"), instance=str(options.pop("board_instance", "0")),
                         keep_connection=private, cores=options.pop("board_cores", None))
    if kind == "ssh":  # a fresh boot's readiness connection is this run's: one connection, not two
        return (board.take_connection() if private else None) or board.transport(workdir=options.get("workdir"))
    return open_kind(kind, {**options, "url": board.console_url})


@contextmanager
def open_transport(target: "Target", kind: str | None = None, host: str | None = None,
                   trust_on_first_use: bool = False) -> Iterator[Transport]:
    """Open the transport a target names (or `kind`, e.g. "serial" for a board's console),
    closed on exit.

    SSH host keys are verified against known_hosts; `trust_on_first_use` (or the target
    option of that name) records an unknown key instead, but a changed key is always refused.
    """
    name = kind or target.transport.kind
    spec = transport_kind(name)
    options = dict(target.transport.options)
    if "board" in options:
        if not spec.board:
            raise TargetError(f"target '{target.name}': transport '{name}' cannot reach an emulated board")
        transport = _open_on_board(name, options)
    else:
        transport = open_kind(name, options, host, trust_on_first_use)
    try:
        yield transport
    finally:
        transport.close()
