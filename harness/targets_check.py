"""A one-line readiness check per target, for `harness targets`."""

from __future__ import annotations

import shutil

from .targets import Target


def check_target(target: Target) -> tuple[bool, str]:
    """(ready, what it needs or has) without touching any device."""
    needs: list[str] = []
    compiler = target.cc.tool("gcc")
    has_docker = shutil.which("docker") is not None
    if shutil.which(compiler) is None:
        needs.append(f"C compiler '{compiler}' (ci/setup) or --toolchain docker"
                     + ("" if has_docker else " (no docker client either)"))
    opts = target.transport.options
    kind = target.transport.kind
    if kind == "qemu-user" and shutil.which("qemu-arm") is None:
        needs.append("qemu-arm (apt-get install qemu-user)")
    if "board" in opts and shutil.which("qemu-system-arm") is None:
        needs.append("qemu-system-arm (apt-get install qemu-system-arm)")
    if kind == "ssh" and "board" not in opts and not opts.get("host"):
        needs.append("--host user@ADDRESS of the device")
    if kind == "serial" and not opts.get("url"):
        needs.append("--host with the serial port or URL")
    if needs:
        return False, "needs " + "; ".join(needs)
    how = {"local": "runs on this host", "qemu-user": "runs under qemu-arm on this host",
           "ssh": "emulated board, booted on demand" if "board" in opts else "over SSH",
           "serial": "over a serial console"}[kind]
    return True, f"{compiler} found; {how}"
