"""Shared pytest fixtures."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest

# ---------------------------------------------------------------------------------------------
# Model fixtures: the example ONNX models and their compiled artifacts, made once per session.
# Artifacts go to the normal cache (harness.cache.cache_dir()), so later sessions and other
# test modules that compile the same model for the same target reuse them.


class CompiledModels:
    """Compiles (model, target) on first use and remembers the artifact."""

    def __init__(self, models: dict[str, Path]) -> None:
        self.models = models
        self._artifacts: dict[tuple[str, str], object] = {}

    def get(self, model: str, target: str):
        from harness.compile.model import compile_model

        key = (model, target)
        if key not in self._artifacts:
            self._artifacts[key] = compile_model(self.models[model], target)
        return self._artifacts[key]


@pytest.fixture(scope="session")
def example_models(tmp_path_factory) -> dict[str, Path]:
    from harness.models.examples import write_examples

    return write_examples(tmp_path_factory.mktemp("example_models"))


@pytest.fixture(scope="session")
def compiled_models(example_models) -> CompiledModels:
    return CompiledModels(example_models)


@pytest.fixture
def mlp_with_wrong_weights(tmp_path, monkeypatch) -> Path:
    """The mlp example, compiled for x86_64 into a cache of its own (MINRT_CACHE, set for the
    test and the processes it starts) whose params.bin has 1.0 added to every element of one
    weight: whatever runs that artifact disagrees with the references by far more than any
    tolerance. A deliberate mismatch, where tolerance 0 would only catch float noise."""
    import numpy as np

    from harness.compile.model import compile_model
    from harness.formats import tensorfile
    from harness.models.examples import write_examples

    monkeypatch.setenv("MINRT_CACHE", str(tmp_path / "cache"))
    model = write_examples(tmp_path / "models", ["mlp"])["mlp"]
    artifact = compile_model(model, "x86_64")
    params = artifact.params()
    name = next(n for n, a in params.items() if a.dtype == np.float32 and a.size > 1)
    params[name] = params[name] + np.float32(1.0)
    tensorfile.save(artifact.params_bin, params, aligned=True)
    # sealed again, as if compiled so: the cache would otherwise notice the edit and recompile
    from harness.cache import SEAL, seal

    seal(artifact.dir, [p.name for p in artifact.dir.iterdir() if p.name != SEAL])
    return model


# ---------------------------------------------------------------------------------------------
# Acting when the code under test got somewhere, not after a guessed sleep: a fault injected
# after `time.sleep(N)` lands elsewhere on a loaded machine (before the device was even
# reached, or after the run ended).


class _LogLine(logging.Handler):
    """Sets `seen` the first time a record containing `text` is logged (from any thread)."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.DEBUG)
        self.text = text
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


@pytest.fixture
def device_running():
    """An Event set when a transport logs that the device starts running the model ("running
    N iteration(s)", a debug line, logged right before minrt-run or a firmware's RUN): a test
    that kills the device waits on it, with a generous liveness bound, instead of sleeping a
    guess of how long compiling, building and uploading take."""
    logger = logging.getLogger("harness.transport")
    handler, level = _LogLine("iteration(s)"), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler.seen
    logger.removeHandler(handler)
    logger.setLevel(level)


# ---------------------------------------------------------------------------------------------
# The shared emulated board (instance "0", the one `harness run --target rpi-qemu` uses).
# Tests that need it call `shared_board`; a board this session booted is powered off at the
# end of the session, one that was already running (a developer's) is left alone.

SHARED_BOARD_INSTANCE = "0"


@pytest.fixture(scope="session")
def shared_board():
    from harness.config.targets import load_target
    from harness.device.board import board_status, ensure_board, stop_board

    was_up = board_status(instance=SHARED_BOARD_INSTANCE)["state"] == "up"
    # with rpi-qemu's cores, so the tests' runs on that target do not boot it again
    cores = load_target("rpi-qemu").transport.options.get("board_cores")
    board = ensure_board(instance=SHARED_BOARD_INSTANCE, boot_timeout=300, cores=cores)
    yield board
    if not was_up:
        stop_board(instance=SHARED_BOARD_INSTANCE)


# ---------------------------------------------------------------------------------------------
# Markers (registered by the harness plugin): every test that boots the board, uses Docker or
# serves on loopback is marked, so a developer can select (`-m "not board"`). CI runs them all.

_MODULE_MARKS = {
    "test_board.py": ("board", "network", "slow"),
    "test_board_run.py": ("board", "network", "slow"),
    "test_board_faults.py": ("board", "network", "slow"),
    "test_toolchain.py": ("docker",),
    "test_ssh.py": ("network",),
    "test_serial.py": ("network",),
    "test_farm.py": ("network",),
    "test_farm_health.py": ("network",),
}
_FIXTURE_MARKS = {"shared_board": ("board", "network", "slow"), "board": ("board", "network", "slow")}


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        names = set(_MODULE_MARKS.get(item.path.name, ()))
        for fixture in getattr(item, "fixturenames", ()):
            names.update(_FIXTURE_MARKS.get(fixture, ()))
        for name in sorted(names):
            item.add_marker(name)


# In CI (CI=true) a skipped test is a failure that names its reason: CI's machine is set up by
# ci/setup, so a missing tool there is a setup bug, not a reason to pass quietly.
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which must run every test: {reason}"
