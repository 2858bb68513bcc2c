"""pytest plugin: on-device tests of a model on a minrt target.

    pytest --minrt-target rpi-qemu tests/on_device/
    pytest --minrt-target rpi --minrt-host pi@192.0.2.7 tests/on_device/

Fixtures (all session-scoped, all prefixed so they do not collide with labgrid's `target` or
pytest-embedded's `--target`):
- `minrt_target`: the `harness.config.targets.Target` named by --minrt-target (default: the harness'
  default target). A test runs on several targets in one session with the marker
  `@pytest.mark.minrt_target("x86_64", "qemu-armv7")` (one test item per target, ids
  `test_x[x86_64]`...), or `@pytest.mark.parametrize("minrt_target", [...], indirect=True)`;
  `--minrt-target a,b` does the same for every test that uses the fixtures. An unknown target
  stops the session once, before any test runs.
- `minrt_device`: an open transport to that target for the whole session (for `rpi-qemu` the
  emulated board is booted if needed and left running; `harness board down` stops it).
- `minrt_run`: a function `minrt_run(model, **options) -> harness.run.RunResult` that compiles
  the ONNX model, builds minrt for the target, runs it on `minrt_device` and compares every
  output with the host references. Options are those of `harness.run.run_on_target` (iters,
  seed, input_files, input_shapes, atol, rtol, timeout, outputs_dir); `input_shapes` may be a
  dict or `["x=1,16"]` strings as `harness run --input-shape` takes them. Every failure
  of the model or the run comes back in the result (`passed` False, `error` saying why), never
  as an exception; `--minrt-input-shape` sets input shapes for every call. A user's test
  asserts on it in one line:

      def test_keyword_spotter(minrt_run):
          assert minrt_run("models/kws.onnx").passed

Registered through the `pytest11` entry point `harness`; without the installed entry point,
use `pytest -p harness.pytest_plugin`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from harness.build.toolchain import DEFAULT_TOOLCHAIN, TOOLCHAINS
from harness.cli_options import parse_input_shapes
from harness.config.targets import DEFAULT_TARGET, Target, load_target
from harness.device.open import open_transport
from harness.errors import HarnessError
from harness.transport import Transport

MARKERS = {
    "board": "boots or uses the emulated ARMv7 board (qemu-system-arm)",
    "docker": "builds or runs in a Docker toolchain image (needs a running Docker engine)",
    "network": "starts network servers on loopback (SSH, serial-over-TCP, labgrid)",
    "slow": "takes more than ~30 s on a 2-core machine",
    "minrt_target": "minrt_target(*names): run the test once on each of these minrt targets",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("minrt", "minrt harness")
    group.addoption("--minrt-target", default=None, metavar="NAME[,NAME...]",
                    help=f"minrt target(s) for the minrt_* fixtures: names in targets/ or paths "
                         f"to .toml files, comma-separated to run each test on each "
                         f"(default: {DEFAULT_TARGET}; a test's minrt_target marker wins)")
    group.addoption("--minrt-host", default=None, metavar="USER@ADDRESS",
                    help="address of the device, for targets that need one (e.g. rpi)")
    group.addoption("--minrt-transport", default=None, metavar="KIND",
                    help="transport to the device (default: the target's own, e.g. ssh)")
    group.addoption("--minrt-toolchain", default=DEFAULT_TOOLCHAIN, choices=TOOLCHAINS,
                    help=f"where minrt-run is compiled (default: {DEFAULT_TOOLCHAIN})")
    group.addoption("--minrt-input-shape", action="append", default=[], metavar="NAME=D1,D2",
                    help="fix a dynamic model input's shape in every minrt_run (repeatable)")


def _target_names(config: pytest.Config) -> list[str]:
    text = config.getoption("--minrt-target") or ""
    return [n.strip() for n in text.split(",") if n.strip()]


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    # A bad target or input shape stops the session once, before collection, not every test.
    for name in _target_names(config):
        try:
            load_target(name)
        except HarnessError as exc:
            raise pytest.UsageError(f"--minrt-target: {exc}") from None
    try:
        parse_input_shapes(config.getoption("--minrt-input-shape"))
    except HarnessError as exc:
        raise pytest.UsageError(str(exc).replace("--input-shape", "--minrt-input-shape", 1)) from None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """One test item per target, from the minrt_target marker or a comma-separated --minrt-target."""
    if "minrt_target" not in metafunc.fixturenames:
        return
    if any(m.name == "parametrize" and "minrt_target" in str(m.args[0] if m.args else "")
           for m in metafunc.definition.iter_markers()):
        return  # the test parametrizes minrt_target itself (indirect=True)
    marker = metafunc.definition.get_closest_marker("minrt_target")
    if marker is not None:
        names = [str(n) for n in marker.args]
        if not names:
            raise pytest.UsageError(f"{metafunc.definition.nodeid}: @pytest.mark.minrt_target needs target names")
    else:
        names = _target_names(metafunc.config)
        if len(names) < 2:
            return  # one target: the session fixture as it is, no test id suffix
    metafunc.parametrize("minrt_target", names, indirect=True, scope="session", ids=names)


@pytest.fixture(scope="session")
def minrt_target(request: pytest.FixtureRequest) -> Target:
    names = _target_names(request.config)
    name = getattr(request, "param", None) or (names[0] if names else DEFAULT_TARGET)
    try:
        return load_target(name)
    except HarnessError as exc:
        # a marker's unknown target: one clean error for the tests that ask for it
        raise pytest.UsageError(f"minrt_target {name!r}: {exc}") from None


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
    session_shapes = parse_input_shapes(request.config.getoption("--minrt-input-shape"))

    def run(model: str | Path, **options: Any) -> RunResult:
        model = Path(model)
        try:
            shapes = options.pop("input_shapes", None)
            if shapes is not None and not isinstance(shapes, dict):
                shapes = parse_input_shapes(list(shapes))
            shapes = {**session_shapes, **(shapes or {})}
            return run_on_target(model, minrt_target, transport=transport, toolchain=toolchain,
                                 device=minrt_device, input_shapes=shapes or None, **options)
        except HarnessError as exc:
            # the model does not load or compile, an option is wrong: the same answer as a
            # run that failed later (a bad input name), so a test asserts on one thing
            return RunResult(model=model.stem, target=minrt_target.name,
                             transport=transport or minrt_target.transport.kind,
                             error=str(exc), error_kind=type(exc).__name__)

    return run
