"""TFLite operators beyond what TVM's frontend imports as it is, and beyond the MLPerf Tiny
models: one-operator int8 models written with harness.models.tflite_builder, run on the host
and on ARMv7 under qemu-user, judged against TFLite Micro's interpreter (bit exact).

SVDF is stateful in TFLM; minrt computes each inference from the reset state, so every
comparison is with one invoke of a fresh (or reset) TFLM interpreter."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness.compile import int8
from harness.compile.model import compile_model
from harness.compile.source import load_model
from harness.compile.tflite_import import litert_refusal
from harness.config.targets import load_target
from harness.errors import CompileError
from harness.models.tflite_builder import (
    INT8_EXAMPLES,
    int8_examples,
    logistic_model,
    requantize_model,
    softmax16_model,
    svdf_keyword_model,
    svdf_model,
)
from harness.run import run_on_target

# the integer kernel each model must compile to (none: data movement only)
KERNELS = {"tfl-fc4d": "int8_dense", "tfl-pad": None, "tfl-transpose": None, "tfl-concat": None,
           "tfl-logistic": "int8_logistic", "tfl-svdf": "int8_svdf"}


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


@pytest.mark.parametrize("state_dtype", ["int16", "int8"])
def test_svdf_arithmetic_is_tflms_first_invoke_after_reset(state_dtype):
    """The host mirror of the SVDF kernel (the tables folded at compile time, TFLM's rounding,
    the state saturated and, for int8, wrapped as TFLM stores it) against TFLM on 300 inputs,
    each one invoke after reset; extreme rows saturate the int8 state."""
    from tflite_micro.python.tflite_micro import runtime

    graph = svdf_model(np.random.default_rng(19), state_dtype, activation=1)
    micro = runtime.Interpreter.from_bytes(graph.to_bytes())
    tensor = {t.name: (k, t) for k, t in enumerate(graph.tensors)}
    wf = np.frombuffer(graph.buffers[tensor["weights_feature"][1].buffer], np.int8).reshape(8, 6)
    wt = np.frombuffer(graph.buffers[tensor["weights_time"][1].buffer], state_dtype).reshape(8, 5)
    bias = np.frombuffer(graph.buffers[tensor["bias"][1].buffer], np.int32)
    q = {name: (tensor[name][1].scale[0], tensor[name][1].zero_point[0])
         for name in ("input", "weights_feature", "weights_time", "activation_state", "output")}
    tables = int8.svdf_reset_tables(wf, wt, bias, rank=2, zero_in=q["input"][1], zero_state=q["activation_state"][1],
                                    zero_out=q["output"][1], state_dtype=state_dtype,
                                    scales=tuple(q[n][0] for n in ("input", "weights_feature", "activation_state",
                                                                   "weights_time", "output")))
    rng = np.random.default_rng(7)
    first_outputs = set()
    for trial in range(300):
        x = rng.integers(-128, 128, (2, 6)).astype(np.int8)
        if trial < 2:
            x[1] = np.where(wf[trial] >= 0, 127, -128)  # the largest feature value of a filter: saturates
        micro.reset()
        micro.set_input(x, 0)
        micro.invoke()
        want = micro.get_output(0)
        assert np.array_equal(int8.svdf_reference(x, wf, tables), want), (trial, x)
        first_outputs.add(want.tobytes())
    assert len(first_outputs) == 300  # the inputs reach the output (nothing saturates everything)


@pytest.mark.parametrize("target_name", ["x86_64", "qemu-armv7"])
@pytest.mark.parametrize("variant", ["int8", "float32"])
def test_svdf_variants_match_tflm(tmp_path, variant, target_name):
    """SVDF with int8 time weights and state (TFLM's 8-bit keyword model has it; LiteRT runs it
    as if the state were int16, so TFLM alone judges), and all float32 (both references)."""
    path = tmp_path / f"svdf_{variant}.tflite"
    path.write_bytes(svdf_model(np.random.default_rng(19), variant, activation=1).to_bytes())
    result = run_on_target(path, load_target(target_name), toolchain="host", iters=1, seed=5)
    assert result.error is None, result.error
    assert result.passed, json.dumps(result.outputs, indent=1)
    (out,) = result.outputs
    assert out["reference"] == "tflite-micro", out
    if variant == "int8":
        assert (out["dtype"], out["differing"]) == ("int8", 0), out
        assert "int8 SVDF" in (litert_refusal(load_model(path).model) or ""), "LiteRT would overrun the int8 state"
        kernels = compile_model(path, target_name).metadata["kernels"]
        assert any("int8_svdf" in k for k in kernels) and not any("quantize" in k for k in kernels), kernels
    else:
        assert out["max_abs_err"] <= 1e-5, out


def test_svdf_with_an_initial_state_is_refused_in_one_line(tmp_path):
    """minrt starts SVDF from the reset state: a state tensor that carries data is refused."""
    graph = svdf_model(np.random.default_rng(19))
    state = next(t for t in graph.tensors if t.name == "activation_state")
    graph.buffers.append(np.ones(state.shape, np.int16).tobytes())
    state.buffer = len(graph.buffers) - 1
    path = tmp_path / "svdf_state.tflite"
    path.write_bytes(graph.to_bytes())
    with pytest.raises(CompileError) as err:
        compile_model(path, "x86_64")
    message = str(err.value)
    assert "svdf_state.tflite" in message and "SVDF" in message and "reset state" in message, message
    assert "\n" not in message


@pytest.mark.parametrize("target_name", ["x86_64", "qemu-armv7"])
@pytest.mark.parametrize(("in_dtype", "out_dtype"), [("int16", "int32"), ("int16", "int8"), ("int8", "int16")])
def test_integer_requantize_is_tflms(tmp_path, in_dtype, out_dtype, target_name):
    """QUANTIZE between integer types, int16 or int32 on a side: TFLM's Requantize, exact."""
    path = tmp_path / f"requantize_{in_dtype}_{out_dtype}.tflite"
    path.write_bytes(requantize_model(in_dtype, out_dtype).to_bytes())
    result = run_on_target(path, load_target(target_name), toolchain="host", iters=1, seed=5)
    assert result.error is None, result.error
    assert result.passed, json.dumps(result.outputs, indent=1)
    (out,) = result.outputs
    assert (out["reference"], out["dtype"], out["differing"]) == ("tflite-micro", out_dtype, 0), out
    kernels = compile_model(path, target_name).metadata["kernels"]
    assert any("int8_requantize" in k for k in kernels) and not any("quantize_" in k for k in kernels), kernels


@pytest.mark.parametrize("target_name", ["x86_64", "qemu-armv7"])
def test_softmax_to_int16_is_tflms(tmp_path, target_name):
    """int8 -> int16 SOFTMAX (TFLM's keyword model's last layer) as TFLM's integer softmax."""
    path = tmp_path / "softmax16.tflite"
    path.write_bytes(softmax16_model().to_bytes())
    result = run_on_target(path, load_target(target_name), toolchain="host", iters=1, seed=5)
    assert result.error is None, result.error
    assert result.passed, json.dumps(result.outputs, indent=1)
    (out,) = result.outputs
    assert (out["reference"], out["dtype"], out["differing"]) == ("tflite-micro", "int16", 0), out
    kernels = compile_model(path, target_name).metadata["kernels"]
    assert any("int8_softmax" in k for k in kernels) and not any("quantize" in k for k in kernels), kernels


@pytest.mark.parametrize("target_name", ["x86_64", "qemu-armv7", "cortex-m4-qemu"])
def test_svdf_keyword_model_is_tflms(tmp_path, target_name):
    """A model shaped like TFLM's keyword benchmark (int16 features -> QUANTIZE -> SVDF ->
    FULLY_CONNECTED -> int16 SOFTMAX -> int32 scores), exact against TFLM and LiteRT."""
    path = tmp_path / "svdf_keyword.tflite"
    path.write_bytes(svdf_keyword_model(np.random.default_rng(19)).to_bytes())
    result = run_on_target(path, load_target(target_name), toolchain="host", iters=1, seed=5)
    assert result.error is None, result.error
    assert result.passed, json.dumps(result.outputs, indent=1)
    (out,) = result.outputs
    assert (out["reference"], out["dtype"], out["differing"]) == ("tflite-micro", "int32", 0), out
