"""Transports: how the harness talks to a device. One small interface: put, run, get, close."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

from ..errors import TargetError
from .base import CommandResult, Transport

if TYPE_CHECKING:
    from ..targets import Target

__all__ = ["CommandResult", "Transport", "open_transport"]

#: A console shell has no private per-run directory (see the serial transport's notes).
SERIAL_WORKDIR = "/tmp/minrt"


def _split_host(host: str, default_user: str) -> tuple[str, str, int | None]:
    """'user@address[:port]' -> (user, address, port)."""
    user, _, address = host.rpartition("@")
    port = None
    if address.count(":") == 1:  # not an IPv6 literal
        address, _, port_text = address.partition(":")
        if not port_text.isdigit():
            raise TargetError(f"--host '{host}': port '{port_text}' is not a number")
        port = int(port_text)
    return user or default_user, address, port


@contextmanager
def open_transport(target: "Target", kind: str | None = None, host: str | None = None,
                   trust_on_first_use: bool = False) -> Iterator[Transport]:
    """Open the transport a target names (or `kind`, e.g. "serial" for a board's console).

    SSH host keys are verified against known_hosts; `trust_on_first_use` (or the target
    option of that name) records an unknown key instead, but a changed key is always refused.
    """
    opts = target.transport.options
    kind = kind or target.transport.kind
    if kind == "local":
        from .local import LocalTransport

        transport: Transport = LocalTransport()
    elif kind == "qemu-user":
        from .local import QemuUserTransport

        transport = QemuUserTransport(cpu=opts.get("cpu", "cortex-a7"))
    elif kind in ("ssh", "serial") and "board" in opts:
        from ..board import ensure_board

        board = ensure_board(opts["board"], instance=str(opts.get("board_instance", "0")))
        # no workdir option: SSH makes a private one per connection (mktemp -d), removed after
        workdir = opts.get("workdir")
        if kind == "ssh":
            transport = board.transport(workdir=workdir)
        else:
            from .serial import SerialTransport

            transport = SerialTransport(board.console_url, workdir=workdir or SERIAL_WORKDIR)
    elif kind == "ssh":
        from .ssh import SSHTransport

        address = host or opts.get("host")
        if not address:
            raise TargetError(f"target '{target.name}' needs a device address: pass --host user@ADDRESS")
        user, hostname, port = _split_host(address, opts.get("user", "root"))
        transport = SSHTransport(host=hostname, port=port or int(opts.get("port", 22)), user=user,
                                 workdir=opts.get("workdir"),
                                 known_hosts=opts.get("known_hosts"),
                                 key_filename=opts.get("key_file"),
                                 trust_on_first_use=trust_on_first_use or bool(opts.get("trust_on_first_use")))
    elif kind == "serial":
        from .serial import SerialTransport

        url = host or opts.get("url")
        if not url:
            raise TargetError(f"target '{target.name}' needs a serial port: pass --host /dev/ttyUSB0 or a pyserial URL")
        transport = SerialTransport(url, workdir=opts.get("workdir", SERIAL_WORKDIR))
    else:
        raise TargetError(f"target '{target.name}': transport '{kind}' is not supported")
    try:
        yield transport
    finally:
        transport.close()
