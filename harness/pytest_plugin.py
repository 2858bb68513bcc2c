"""pytest plugin: on-device tests of a model on a minrt target.

    pytest --minrt-target rpi-qemu tests/on_device/
    pytest --minrt-target rpi --minrt-host pi@192.0.2.7 tests/on_device/

Fixtures (all session-scoped, all prefixed so they do not collide with labgrid's `target` or
pytest-embedded's `--target`):
- `minrt_target`: the `harness.config.targets.Target` named by --minrt-target (default: the harness'
  default target).
- `minrt_device`: an open transport to that target for the whole session (for `rpi-qemu` the
  emulated board is booted if needed and left running; `harness board down` stops it).
- `minrt_run`: a function `minrt_run(model, **options) -> harness.run.RunResult` that compiles
  the ONNX model, builds minrt for the target, runs it on `minrt_device` and compares every
  output with the host references. Options are those of `harness.run.run_on_target` (iters,
  seed, input_files, atol, rtol, timeout). A user's test asserts on it in one line:

      def test_keyword_spotter(minrt_run):
          assert minrt_run("models/kws.onnx").passed

Registered through the `pytest11` entry point `harness`; without the installed entry point,
use `pytest -p harness.pytest_plugin`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from harness.errors import HarnessError
from harness.config.targets import DEFAULT_TARGET, Target, load_target
from harness.build.toolchain import DEFAULT_TOOLCHAIN, TOOLCHAINS
from harness.device.open import open_transport
from harness.transport import Transport

MARKERS = {
    "board": "boots or uses the emulated ARMv7 board (qemu-system-arm)",
    "docker": "builds or runs in a Docker toolchain image (needs a running Docker engine)",
    "network": "starts network servers on loopback (SSH, serial-over-TCP, labgrid)",
    "slow": "takes more than ~30 s on a 2-core machine",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("minrt", "minrt harness")
    group.addoption("--minrt-target", default=None, metavar="NAME",
                    help=f"minrt target for the minrt_* fixtures: a name in targets/ or a path "
                         f"to a .toml file (default: {DEFAULT_TARGET})")
    group.addoption("--minrt-host", default=None, metavar="USER@ADDRESS",
                    help="address of the device, for targets that need one (e.g. rpi)")
    group.addoption("--minrt-transport", default=None, metavar="KIND",
                    help="transport to the device (default: the target's own, e.g. ssh)")
    group.addoption("--minrt-toolchain", default=DEFAULT_TOOLCHAIN, choices=TOOLCHAINS,
                    help=f"where minrt-run is compiled (default: {DEFAULT_TOOLCHAIN})")


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")


@pytest.fixture(scope="session")
def minrt_target(request: pytest.FixtureRequest) -> Target:
    name = request.config.getoption("--minrt-target") or DEFAULT_TARGET
    try:
        return load_target(name)
    except HarnessError as exc:
        raise pytest.UsageError(f"--minrt-target: {exc}") from None


@pytest.fixture(scope="session")
def minrt_device(request: pytest.FixtureRequest, minrt_target: Target) -> Iterator[Transport]:
    with open_transport(minrt_target, kind=request.config.getoption("--minrt-transport"),
                        host=request.config.getoption("--minrt-host")) as transport:
        yield transport


@pytest.fixture(scope="session")
def minrt_run(request: pytest.FixtureRequest, minrt_target: Target,
              minrt_device: Transport) -> Callable[..., Any]:
    from harness.run import RunResult, run_on_target

    toolchain = request.config.getoption("--minrt-toolchain")
    transport = request.config.getoption("--minrt-transport")

    def run(model: str | Path, **options: Any) -> RunResult:
        return run_on_target(Path(model), minrt_target, transport=transport, toolchain=toolchain,
                             device=minrt_device, **options)

    return run
