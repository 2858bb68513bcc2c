"""Whether a target is ready, for `harness targets`: its compiler and host programs are there
AND its device is reachable (a serial port that exists, an SSH address that answers), and
whether what it measures comes from an emulator."""

from __future__ import annotations

import os
import shutil
import socket
from dataclasses import asdict, dataclass
from urllib.parse import urlparse

from harness.config.targets import Target
from harness.errors import TargetError
from harness.transport import transport_kind

#: seconds a TCP probe of a device address may take
PROBE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Readiness:
    target: str
    status: str  # "ready", "needs" (something to install or an address), "unreachable" (no device answers)
    transport: str
    emulated: bool
    note: str

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    def to_dict(self) -> dict:
        return {**asdict(self), "ready": self.ready}


def is_emulated(target: Target, kind: str | None = None) -> bool:
    """The target's device is an emulator on this host (qemu-user, QEMU firmware, the emulated
    board): its wall times and counts are not a device's latency."""
    kind = kind or target.transport.kind
    return transport_kind(kind).emulator or ("board" in target.transport.options and transport_kind(kind).board)


def _tcp_answers(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None if host:port accepts a TCP connection, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{host}:{port} does not answer ({exc.strerror or exc})"


def _device_problem(target: Target, address: str | None) -> str | None:
    """Why the device at `address` (or the target file's) cannot be reached, None if it can."""
    opts = target.transport.options
    kind = target.transport.kind
    if kind == "ssh":
        from harness.transport.ssh import split_address

        try:
            _, host, port = split_address(str(address or opts.get("host")), "root")
        except TargetError as exc:
            return str(exc)
        return _tcp_answers(host, port or int(opts.get("port", 22)))
    url = address or opts.get("url")
    if url is None:
        return None
    parsed = urlparse(str(url))
    if parsed.scheme in ("socket", "rfc2217") and parsed.hostname and parsed.port:
        return _tcp_answers(parsed.hostname, parsed.port)
    if not parsed.scheme and not os.path.exists(str(url)):
        return f"no serial port {url} (is the board plugged in?)"
    return None


def check_readiness(target: Target, *, address: str | None = None, probe: bool = True) -> Readiness:
    """What the target needs before a run, and with `probe` whether its device answers."""
    needs: list[str] = []
    compiler = target.cc.tool("gcc")
    has_docker = shutil.which("docker") is not None
    if shutil.which(compiler) is None:
        needs.append(f"C compiler '{compiler}' (ci/setup) or --toolchain docker"
                     + ("" if has_docker else " (no docker client either)"))
    opts = target.transport.options
    spec = transport_kind(target.transport.kind)
    for program in spec.needs:
        if shutil.which(program) is None:
            needs.append(f"{program} (ci/setup installs it)")
    on_board = "board" in opts
    if on_board and shutil.which("qemu-system-arm") is None:
        needs.append("qemu-system-arm (apt-get install qemu-system-arm)")
    has_address = bool(address or opts.get("host") or opts.get("url"))
    if spec.address and not on_board and not has_address:
        needs.append(f"--host {spec.address}")
    emulated = is_emulated(target)
    if needs:
        return Readiness(target.name, "needs", target.transport.kind, emulated, "needs " + "; ".join(needs))
    if spec.address and not on_board and probe:
        problem = _device_problem(target, address)
        if problem:
            return Readiness(target.name, "unreachable", target.transport.kind, emulated,
                             f"{compiler} found; device unreachable: {problem}")
    how = "emulated board, booted on demand" if on_board else spec.summary
    return Readiness(target.name, "ready", target.transport.kind, emulated, f"{compiler} found; {how}")


def check_target(target: Target) -> tuple[bool, str]:
    """(ready, what it needs or has), the device probed (see check_readiness)."""
    r = check_readiness(target)
    return r.ready, r.note
