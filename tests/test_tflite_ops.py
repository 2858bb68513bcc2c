"""TFLite operators beyond what TVM's frontend imports as it is, and beyond the MLPerf Tiny
models: one-operator int8 models written with harness.models.tflite_builder, run on the host
and on ARMv7 under qemu-user, judged against TFLite Micro's interpreter (bit exact)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness.compile import int8
from harness.compile.model import compile_model
from harness.config.targets import load_target
from harness.models.tflite_builder import INT8_EXAMPLES, int8_examples, logistic_model
from harness.run import run_on_target

# the integer kernel each model must compile to (none: data movement only)
KERNELS = {"tfl-fc4d": "int8_dense", "tfl-pad": None, "tfl-transpose": None, "tfl-concat": None,
           "tfl-logistic": "int8_logistic"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return int8_examples(tmp_path_factory.mktemp("tflite_ops"))


def test_builder_writes_models_tflm_and_litert_agree_on(models):
    """The written flatbuffers are valid TFLite: both interpreters load and run them alike."""
    from ai_edge_litert.interpreter import Interpreter
    from tflite_micro.python.tflite_micro import runtime

    assert set(models) == set(INT8_EXAMPLES) == set(KERNELS)
    for name, path in models.items():
        micro = runtime.Interpreter.from_file(str(path))
        lite = Interpreter(model_path=str(path))
        lite.allocate_tensors()
        rng = np.random.default_rng(3)
        for k, detail in enumerate(lite.get_input_details()):
            x = rng.integers(-128, 128, detail["shape"]).astype(np.int8)
            micro.set_input(x, k)
            lite.set_tensor(detail["index"], x)
        micro.invoke()
        lite.invoke()
        got = lite.get_tensor(lite.get_output_details()[0]["index"])
        assert np.array_equal(micro.get_output(0), got), name


@pytest.mark.parametrize(("scale", "zero"), [(0.0625, 5), (0.1, -20), (0.01, 0), (0.5, 100), (0.003, -128), (2.0, 0)])
def test_logistic_table_is_tflms_for_every_input(tmp_path, scale, zero):
    """The host's table of TFLM's fixed-point logistic, every int8 input, against TFLM itself
    (saturation beyond the input radius included)."""
    from tflite_micro.python.tflite_micro import runtime

    path = tmp_path / "logistic.tflite"
    path.write_bytes(logistic_model(scale, zero).to_bytes())
    micro = runtime.Interpreter.from_file(str(path))
    micro.set_input(np.arange(-128, 128, dtype=np.int8).reshape(1, 256), 0)
    micro.invoke()
    want = micro.get_output(0).reshape(-1)
    got = int8.logistic_table(scale, zero)
    assert np.array_equal(got, want), np.flatnonzero(got != want)[:8]


def test_fully_connected_with_keep_num_dims_off_flattens_any_rank(models):
    artifact = compile_model(models["tfl-fc4d"], "x86_64")
    assert artifact.metadata["inputs"][0]["shape"] == [1, 2, 3, 4]
    assert artifact.metadata["outputs"][0]["shape"] == [1, 5]


@pytest.mark.parametrize("target_name", ["x86_64", "qemu-armv7"])
@pytest.mark.parametrize("model", list(KERNELS))
def test_operator_is_integer_and_bit_exact_with_tflm(models, model, target_name):
    result = run_on_target(models[model], load_target(target_name), toolchain="host", iters=1, seed=5)
    assert result.error is None, result.error
    assert result.passed, json.dumps(result.outputs, indent=1)
    (out,) = result.outputs
    assert (out["reference"], out["dtype"], out["differing"]) == ("tflite-micro", "int8", 0), out
    kernels = compile_model(models[model], target_name).metadata["kernels"]
    assert not any("quantize" in k or "sigmoid" in k for k in kernels), kernels  # no float path
    if KERNELS[model]:
        assert any(KERNELS[model] in k for k in kernels), kernels
