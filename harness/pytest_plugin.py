"""pytest plugin: let a test suite take a minrt target from the command line.

    pytest --target rpi-qemu tests/on_device/
    pytest --target rpi --target-host pi@192.168.1.20 tests/on_device/

Fixtures:
- `target`: the `harness.targets.Target` named by --target (default: the harness' default target).
- `device`: an open Transport to that target for the whole session (for `rpi-qemu` the emulated
  board is booted if needed and left running for the next session; `harness board down`
  stops it).

Registered through the `pytest11` entry point `harness`; without the installed entry point,
use `pytest -p harness.pytest_plugin`.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from .errors import HarnessError
from .targets import DEFAULT_TARGET, Target, load_target
from .transport import Transport, open_transport


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "minrt harness")
    group.addoption("--target", default=None, metavar="NAME",
                    help=f"minrt target for the `target`/`device` fixtures: a name in targets/ "
                         f"or a path to a .toml file (default: {DEFAULT_TARGET})")
    group.addoption("--target-host", default=None, metavar="USER@ADDRESS",
                    help="address of the device, for targets that need one (e.g. rpi)")


@pytest.fixture(scope="session")
def target(request: pytest.FixtureRequest) -> Target:
    name = request.config.getoption("--target") or DEFAULT_TARGET
    try:
        return load_target(name)
    except HarnessError as exc:
        raise pytest.UsageError(f"--target: {exc}") from None


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest, target: Target) -> Iterator[Transport]:
    with open_transport(target, host=request.config.getoption("--target-host")) as transport:
        yield transport
