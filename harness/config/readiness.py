"""A one-line readiness check per target, for `harness targets`."""

from __future__ import annotations

import shutil

from harness.config.targets import Target
from harness.transport import transport_kind


def check_target(target: Target) -> tuple[bool, str]:
    """(ready, what it needs or has) without touching any device."""
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
    if spec.address and not on_board and not (opts.get("host") or opts.get("url")):
        needs.append(f"--host {spec.address}")
    if needs:
        return False, "needs " + "; ".join(needs)
    how = "emulated board, booted on demand" if on_board else spec.summary
    return True, f"{compiler} found; {how}"
