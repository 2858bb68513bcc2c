"""Where C compiler commands run: on this host, or inside a target's Docker toolchain image.

A toolchain runs one argv at a time in a working directory. Every path in the argv is an
absolute host path under the source tree or the cache; the Docker toolchain mounts both at
the same paths inside the container, so a command line means the same thing in both places.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Sequence

from harness.errors import BuildError

if TYPE_CHECKING:
    from harness.config.targets import Target

log = logging.getLogger(__name__)

#: The toolchain every command, the farm, the nightly job and the pytest plugin use unless told
#: otherwise: the target's Docker image, so sizes and binaries come from one pinned compiler
#: whoever runs them. "host" uses this machine's compilers (faster; results say which).
DEFAULT_TOOLCHAIN = "docker"
TOOLCHAINS = ("docker", "host")


class Toolchain(Protocol):
    name: str

    def run(self, argv: Sequence[str], cwd: Path) -> str:
        """Run argv in cwd; return its stdout; raise BuildError naming the command on failure."""
        ...

    def describe(self) -> str:
        """A one-line description (compiler version) recorded with results."""
        ...


@dataclass
class HostToolchain:
    """Runs the compiler installed on this host (e.g. Debian's arm-linux-gnueabihf-gcc)."""

    name: str = "host"
    compiler: str = "gcc"  # named in describe(): a compiler upgrade changes cache keys

    def run(self, argv: Sequence[str], cwd: Path) -> str:
        if shutil.which(argv[0]) is None:
            raise BuildError(
                f"compiler '{argv[0]}' is not installed on this host "
                "(run ci/setup, or use the Docker toolchain with --toolchain docker)"
            )
        log.debug("host$ %s", " ".join(argv))
        proc = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(
                f"command failed (exit {proc.returncode}): {' '.join(argv)}\n{proc.stderr.strip()}"
            )
        return proc.stdout

    def describe(self) -> str:
        try:
            proc = subprocess.run([self.compiler, "--version"], capture_output=True, text=True, timeout=30)
            version = proc.stdout.splitlines()[0] if proc.stdout else "unknown version"
        except (OSError, subprocess.TimeoutExpired):
            version = "not installed"
        return f"host {version}"


def get_toolchain(kind: str, target: Target) -> Toolchain:
    """The toolchain named by `kind` for `target`: "host" (this machine's compilers) or
    "docker" (the target's toolchain image, built on first use)."""
    if kind == "host":
        log.info("building with this host's compilers (--toolchain host), not the '%s' Docker image",
                 target.toolchain_image)
        return HostToolchain(compiler=target.cc.tool("gcc"))
    if kind == "docker":
        from harness.build.docker import DockerToolchain

        return DockerToolchain(target.toolchain_image, compiler=target.cc.tool("gcc"))
    raise BuildError(f"unknown toolchain '{kind}' (choose one of {', '.join(TOOLCHAINS)})")
