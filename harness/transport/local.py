"""Transports for programs that run on this host: natively, or under qemu-user."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
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
        """Run argv and count the guest instructions it executes, exactly: QEMU translates one
        instruction per block (-one-insn-per-tb, -singlestep before QEMU 8.1) and logs every
        block it enters (-d exec,nochain: no chained block skips the log), so the log has one
        "Trace" line per executed instruction. The log goes through a pipe and is counted here,
        never stored. Debian ships no TCG plugins (contrib/plugins' insn counter), hence this."""
        r, w = os.pipe()
        full = [self.qemu, "-cpu", self.cpu, "-L", self.sysroot, _one_insn_flag(self.qemu),
                "-d", "exec,nochain", "-D", f"/dev/fd/{w}", *argv]
        log.debug("%s$ %s", self.name, " ".join(full))
        try:
            proc = subprocess.Popen(full, cwd=self.workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    pass_fds=(w,))
        except OSError as exc:
            os.close(r)
            os.close(w)
            raise DeviceError(f"{self.name}: cannot start '{full[0]}': {exc.strerror}") from None
        os.close(w)
        streams: dict[str, bytes] = {}
        reader = threading.Thread(target=lambda: streams.update(zip(("out", "err"), proc.communicate())))
        reader.start()
        count, tail = 0, b""
        deadline = time.monotonic() + timeout
        try:
            with os.fdopen(r, "rb", buffering=0) as logged:
                while chunk := logged.read(1 << 20):
                    data = tail + chunk
                    count += data.count(b"Trace ")
                    tail = data[-5:]  # shorter than the marker: counted once, with what follows
                    if time.monotonic() > deadline:
                        proc.kill()
                        raise DeviceError(f"{self.name}: '{argv[0]}' did not finish within {timeout:g} s "
                                          "(counting instructions)")
        finally:
            reader.join()
        text = {k: v.decode(errors="replace") for k, v in streams.items()}
        return CommandResult(proc.returncode, text.get("out", ""), text.get("err", "")), count


def _one_insn_flag(qemu: str) -> str:
    try:
        usage = subprocess.run([qemu, "-h"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DeviceError(f"cannot run '{qemu} -h': {exc}") from None
    return "-one-insn-per-tb" if "-one-insn-per-tb" in usage else "-singlestep"


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
