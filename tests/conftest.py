"""Shared pytest fixtures."""

from __future__ import annotations

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
        from harness.compile import compile_model

        key = (model, target)
        if key not in self._artifacts:
            self._artifacts[key] = compile_model(self.models[model], target)
        return self._artifacts[key]


@pytest.fixture(scope="session")
def example_models(tmp_path_factory) -> dict[str, Path]:
    from harness.examples import write_examples

    return write_examples(tmp_path_factory.mktemp("example_models"))


@pytest.fixture(scope="session")
def compiled_models(example_models) -> CompiledModels:
    return CompiledModels(example_models)


# ---------------------------------------------------------------------------------------------
# The shared emulated board (instance "0", the one `harness run --target rpi-qemu` uses).
# Tests that need it call `shared_board`; a board this session booted is powered off at the
# end of the session, one that was already running (a developer's) is left alone.

SHARED_BOARD_INSTANCE = "0"


@pytest.fixture(scope="session")
def shared_board():
    from harness.board import board_status, ensure_board, stop_board

    was_up = board_status(instance=SHARED_BOARD_INSTANCE)["state"] == "up"
    board = ensure_board(instance=SHARED_BOARD_INSTANCE, boot_timeout=300)
    yield board
    if not was_up:
        stop_board(instance=SHARED_BOARD_INSTANCE)
