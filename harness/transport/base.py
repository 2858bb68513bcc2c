"""The one interface every transport implements."""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

from harness.errors import DeviceError, RunnerError, TargetError

log = logging.getLogger(__name__)



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

    def run_model(self, runner: str, graph: bytes, params: bytes, inputs: bytes, iters: int,
                  workspace: int, timeout: float, profile: bool = False,
                  threads: int | None = None) -> tuple[bytes, dict[str, Any]]:
        """Run a model with the minrt-run already put at `runner` on the device: returns (the
        outputs blob, the runner's timing line; with `profile`, its "profile" holds each
        kernel's mean time where the transport can get it). `threads`: the threads the
        kernels' parallel loops run on (minrt-run -t; 0 or None: the device's cores) where the
        runner has threads (Linux file mode; firmware and the serial protocol run one). A runner that refuses the model
        or its inputs raises RunnerError; a device that fails, DeviceError. Transports that
        move files use RunsModelWithFiles; the serial console speaks the framed protocol."""
        ...


#: Exit codes of minrt-run (runtime_c/runner): 1 load/input error, 2 usage, 3 run error.
RUNNER_EXIT = {1: "load or input error", 2: "usage error", 3: "run error"}


def parse_timing(stdout: str) -> dict[str, Any]:
    """The runner's last stdout line is a JSON object with its timing and arena size; with
    -p, the line before it is {"profile": [...]}, which goes into the result as "profile"."""
    lines = [line.strip() for line in stdout.strip().splitlines() if line.strip().startswith("{")]
    try:
        timing = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        raise DeviceError(f"minrt-run printed no timing line; its output was:\n{stdout[-2000:]}") from None
    if len(lines) > 1 and lines[-2].startswith('{"profile"'):
        try:
            timing["profile"] = json.loads(lines[-2])["profile"]
        except (json.JSONDecodeError, KeyError):
            raise DeviceError(f"minrt-run printed a malformed profile line: {lines[-2][:200]}") from None
    return timing


class RunsModelWithFiles:
    """`run_model` for transports with put/run/get: the model's files go to the workdir and
    minrt-run runs in its file mode."""

    workdir: str
    name: str = "device"

    def run_model(self, runner: str, graph: bytes, params: bytes, inputs: bytes, iters: int,
                  workspace: int, timeout: float, profile: bool = False,
                  threads: int | None = None) -> tuple[bytes, dict[str, Any]]:
        wd = self.workdir
        with tempfile.TemporaryDirectory(prefix="minrt-io-") as tmp:
            for name, data in (("graph.json", graph), ("params.bin", params), ("inputs.bin", inputs)):
                local = Path(tmp) / name
                local.write_bytes(data)
                self.put(local, f"{wd}/{name}")  # type: ignore[attr-defined]
            argv = [runner, f"{wd}/graph.json", f"{wd}/params.bin", f"{wd}/inputs.bin",
                    f"{wd}/outputs.bin", "-n", str(iters), "-w", str(workspace), "-t", str(threads or 0),
                    *(["-p"] if profile else [])]
            log.debug("running %d iteration(s)", iters)
            result = self.run(argv, timeout=timeout)  # type: ignore[attr-defined]
            if result.returncode != 0:
                what = RUNNER_EXIT.get(result.returncode, f"exit status {result.returncode}")
                detail = result.stderr.strip() or result.stdout.strip()
                if result.returncode in RUNNER_EXIT:
                    raise RunnerError(f"minrt-run failed ({what}): {detail}")
                raise DeviceError(f"minrt-run failed ({what}) on {self.name}: {detail}")
            timing = parse_timing(result.stdout)
            out_path = Path(tmp) / "outputs.bin"
            self.get(f"{wd}/outputs.bin", out_path)  # type: ignore[attr-defined]
            return out_path.read_bytes(), timing


#: Options of a [transport] table that put the device on an emulated board (harness.device.board),
#: for kinds with `board=True`; harness.device.open boots the board and asks it for the address.
#: `board_cores`: the CPUs the board boots with (QEMU -smp; default: the board recipe's).
BOARD_OPTIONS: Mapping[str, type | tuple[type, ...]] = {"board": str, "board_instance": (str, int),
                                                       "board_cores": int}
#: The most CPUs `-M virt` gives a 32-bit guest (its GICv2 interrupt controller serves eight).
BOARD_MAX_CORES = 8


def check_board_cores(cores: object, where: str) -> int:
    """`cores` as a board's CPU count, or a TargetError naming `where` (the file and key)."""
    if isinstance(cores, bool) or not isinstance(cores, int) or not 1 <= cores <= BOARD_MAX_CORES:
        raise TargetError(f"{where} must be an integer from 1 to {BOARD_MAX_CORES}, got {cores!r} "
                          f"(the CPUs -M virt gives a 32-bit guest)")
    return cores

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
    #: the device is this host (no network, nothing to hang): a health check runs in-process
    on_host: bool = False
    #: the device is an emulator on this host (qemu-user, QEMU firmware): its times and counts
    #: say how the emulator ran, not how fast a device is, and are labelled "emulated"
    emulator: bool = False
