"""Transports for programs that run on this host: natively, or under qemu-user."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from harness.errors import DeviceError
from harness.transport.base import CommandResult, RunsModelWithFiles, TransportKind

log = logging.getLogger(__name__)


class LocalTransport(RunsModelWithFiles):
    """The host itself. `workdir` is a fresh temporary directory, removed on close."""

    name = "local"

    def __init__(self, workdir: str | None = None) -> None:
        self._owned = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="minrt-local-")

    def _path(self, remote: str) -> Path:
        path = Path(remote)
        return path if path.is_absolute() else Path(self.workdir) / path

    def put(self, local: Path, remote: str) -> None:
        shutil.copy2(local, self._path(remote))

    def get(self, remote: str, local: Path) -> None:
        src = self._path(remote)
        if not src.exists():
            raise DeviceError(f"{self.name}: no file '{remote}' to fetch")
        shutil.copy2(src, local)

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """The argv actually executed on the host."""
        return list(argv)

    def run(self, argv: Sequence[str], timeout: float) -> CommandResult:
        full = self.wrap(argv)
        log.debug("%s$ %s", self.name, " ".join(full))
        try:
            proc = subprocess.run(full, cwd=self.workdir, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"{self.name}: '{argv[0]}' did not finish within {timeout:g} s") from None
        except OSError as exc:
            raise DeviceError(f"{self.name}: cannot start '{full[0]}': {exc.strerror}") from None
        return CommandResult(proc.returncode, proc.stdout, proc.stderr)

    def close(self) -> None:
        if self._owned:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "LocalTransport":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class QemuUserTransport(LocalTransport):
    """ARM binaries on this host through qemu-user (`qemu-arm`), one process per command."""

    name = "qemu-user"

    def __init__(self, cpu: str = "cortex-a7", qemu: str = "qemu-arm",
                 sysroot: str = "/usr/arm-linux-gnueabihf", workdir: str | None = None) -> None:
        if shutil.which(qemu) is None:
            raise DeviceError(f"qemu-user: '{qemu}' is not installed (run ci/setup, or apt-get install qemu-user)")
        super().__init__(workdir)
        self.cpu, self.qemu, self.sysroot = cpu, qemu, sysroot

    def wrap(self, argv: Sequence[str]) -> list[str]:
        return [self.qemu, "-cpu", self.cpu, "-L", self.sysroot, *argv]

    def count_instructions(self, argv: Sequence[str], timeout: float) -> tuple[CommandResult, int]:
        """Run argv and count the guest instructions it executes, exactly: a TCG plugin of our
        own (insn_count_plugin.c, built once for this host) adds each translated block's
        instruction count to a counter as the block runs, and writes the total to a pipe at
        exit. (The count per block is exact for blocks run to their end; the run's count
        includes QEMU's start of the program, the same for every run, so differences of two
        runs are exact.) ~100x faster than logging every instruction (-d exec), which took
        over 10 minutes for one light_squeezenet inference."""
        plugin = insn_count_plugin()
        r, w = os.pipe()
        full = [self.qemu, "-cpu", self.cpu, "-L", self.sysroot, "-plugin", f"{plugin},fd={w}", *argv]
        log.debug("%s$ %s", self.name, " ".join(full))
        try:
            proc = subprocess.Popen(full, cwd=self.workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    pass_fds=(w,))
        except OSError as exc:
            os.close(r)
            os.close(w)
            raise DeviceError(f"{self.name}: cannot start '{full[0]}': {exc.strerror}") from None
        os.close(w)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            os.close(r)
            raise DeviceError(f"{self.name}: '{argv[0]}' did not finish within {timeout:g} s "
                              "(counting instructions)") from None
        with os.fdopen(r, "rb") as counted:
            reported = counted.read().decode(errors="replace").strip()
        result = CommandResult(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))
        if not reported.isdigit():
            raise DeviceError(f"{self.name}: the instruction-count plugin reported nothing for '{argv[0]}' "
                              f"(exit {proc.returncode}: {result.stderr.strip()[-300:]})")
        return result, int(reported)


def insn_count_plugin() -> Path:
    """The instruction-count plugin for qemu-user, built with the host's gcc into the cache
    (named by its source's hash)."""
    from harness.cache import cache_dir, content_hash

    source = Path(__file__).with_name("insn_count_plugin.c")
    path = cache_dir() / "tools" / f"insn_count-{content_hash([source.read_bytes()])}.so"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    done = subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-std=c99", str(source), "-o", str(tmp)],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        raise DeviceError(f"cannot build the qemu instruction-count plugin: {done.stderr.strip()[:300]}")
    os.replace(tmp, path)
    return path


def _open_local(options: Mapping[str, Any], address: str | None, trust_on_first_use: bool) -> LocalTransport:
    return LocalTransport()


def _open_qemu_user(options: Mapping[str, Any], address: str | None,
                    trust_on_first_use: bool) -> QemuUserTransport:
    return QemuUserTransport(cpu=options.get("cpu", "cortex-a7"))


TRANSPORT_KINDS = (
    TransportKind("local", "runs on this host", _open_local, on_host=True),
    TransportKind("qemu-user", "runs under qemu-arm on this host", _open_qemu_user,
                  options={"cpu": str}, needs=("qemu-arm",), on_host=True, emulator=True),
)
