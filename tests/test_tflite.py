""".tflite and quantized models: import, MLPerf Tiny by name with its sample inputs, references
that speak int8 (TFLite Micro's interpreter, LiteRT, onnxruntime on QDQ), comparison in
quantized units, and real runs on the host and ARMv7 under qemu-user judged against TFLM."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.check.quantized import compare_quantized, units_apart
from harness.compile.model import compile_model
from harness.compile.source import load_model
from harness.config.targets import load_target
from harness.errors import CompileError, HarnessError
from harness.models import mlperf_tiny
from harness.models.qdq import write_qdq_examples
from harness.run import run_on_target

HARNESS = [sys.executable, "-m", "harness.cli"]


def _need_mlperf() -> Path:
    why = mlperf_tiny.available()
    if why:
        pytest.skip(why)
    return mlperf_tiny.mlperf_tiny_dir()


@pytest.fixture(scope="module")
def mlperf(tmp_path_factory) -> dict[str, Path]:
    _need_mlperf()
    return mlperf_tiny.write_mlperf_tiny(tmp_path_factory.mktemp("mlperf_tiny"))


@pytest.fixture(scope="module")
def qdq(tmp_path_factory) -> dict[str, Path]:
    return write_qdq_examples(tmp_path_factory.mktemp("qdq"))


# --- import and metadata ---------------------------------------------------------------------

def test_tflite_inputs_outputs_and_quantization_match_litert(mlperf):
    from ai_edge_litert.interpreter import Interpreter

    source = load_model(mlperf["mlperf-kws"])
    litert = Interpreter(model_path=str(mlperf["mlperf-kws"]))
    (want_in,), (want_out,) = litert.get_input_details(), litert.get_output_details()
    (got_in,), (got_out,) = source.inputs, source.outputs
    for got, want in ((got_in, want_in), (got_out, want_out)):
        assert got.name == want["name"] and list(got.shape) == list(want["shape"])
        assert np.dtype(got.dtype) == want["dtype"] == np.int8
        assert got.scale == (pytest.approx(want["quantization"][0]),)
        assert got.zero_point == (want["quantization"][1],)
    assert source.kind == "tflite" and "CONV_2D" in source.op_types and "SOFTMAX" in source.op_types


def test_compile_records_scale_and_zero_point(mlperf, tmp_path):
    artifact = compile_model(mlperf["mlperf-ad"], "x86_64")
    meta = artifact.metadata
    assert meta["format"] == "tflite"
    source = load_model(mlperf["mlperf-ad"])
    assert meta["inputs"][0]["quantization"] == {"scale": list(source.inputs[0].scale),
                                                 "zero_point": list(source.inputs[0].zero_point)}
    assert meta["outputs"][0]["dtype"] == "int8" and meta["outputs"][0]["quantization"]["zero_point"] == [96]


def test_not_a_tflite_file_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "broken.tflite"
    bad.write_bytes(b"\x10\x00\x00\x00NOPE" + bytes(64))
    with pytest.raises(CompileError, match="not a TFLite model"):
        load_model(bad)
    proc = subprocess.run([*HARNESS, "compile", "--target", "x86_64", str(bad)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "broken.tflite: not a TFLite model" in proc.stderr


def test_unsupported_operator_is_named_exit_2(tmp_path):
    where = _need_mlperf()
    # The float KWS is dynamic-range quantized (int8 weights, float activations): TVM's TFLite
    # frontend refuses its operators.
    model = tmp_path / "kws_dynamic.tflite"
    model.write_bytes((where / "kws_ref_model_float32.tflite").read_bytes())
    proc = subprocess.run([*HARNESS, "compile", "--target", "x86_64", str(model)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if "cannot import operator" in ln]
    assert len(errors) == 1 and "CONV_2D" in errors[0] and "dynamic range" in errors[0], proc.stderr


def test_mlperf_names_resolve_with_their_sample_inputs(monkeypatch, tmp_path):
    _need_mlperf()
    from harness.models.resolve import resolve_models

    monkeypatch.setenv("MINRT_CACHE", str(tmp_path / "cache"))
    (kws,) = resolve_models(["mlperf-kws"])
    assert kws.name == "mlperf-kws.tflite" and kws.read_bytes()[4:8] == b"TFL3"
    files = mlperf_tiny.sample_input_files(kws, ["input_1"])
    sample = np.load(files["input_1"])
    assert sample.shape == (1, 49, 10, 1) and sample.dtype == np.int8
    monkeypatch.setenv(mlperf_tiny.ENV_DIR, str(tmp_path / "nowhere"))
    with pytest.raises(HarnessError, match="MLPerf Tiny models are not in .*nowhere"):
        resolve_models(["mlperf-vww"])


def test_bench_and_qdq_names_resolve_through_the_one_resolver(monkeypatch, tmp_path):
    _need_mlperf()
    from harness.bench import vs_tflm
    from harness.models.resolve import resolve_models

    monkeypatch.setenv("MINRT_CACHE", str(tmp_path / "cache"))
    # `harness bench` resolves with default="all": the same names as `harness run`
    kws, qdq = resolve_models(["mlperf-kws", "cnn-qdq"], default="all")
    assert kws.name == "mlperf-kws.tflite" and qdq.name == "cnn-qdq.onnx" and qdq.is_file()
    with pytest.raises(HarnessError, match="an MLPerf Tiny model .*mlperf-kws.* or a QDQ example .*cnn-qdq"):
        resolve_models(["mlperf-nope"])
    # ci/bench_tflm reads the same table of MLPerf Tiny names
    assert vs_tflm.resolve_models(["mlperf-kws"])[0].tflite.name == f"{mlperf_tiny.MLPERF_TINY['mlperf-kws']}.tflite"


def test_input_shape_on_a_tflite_model_may_only_repeat_its_shape(mlperf):
    model = mlperf["mlperf-ad"]
    (given,) = load_model(model).inputs
    assert load_model(model, {given.name: list(given.shape)}).input_names == [given.name]
    with pytest.raises(CompileError, match=r"input shapes are static; 'input_1' is \[1, 640\]"):
        load_model(model, {given.name: [2, 640]})
    with pytest.raises(CompileError, match="--input-shape names 'x', not an input"):
        load_model(model, {"x": [1, 640]})
    proc = subprocess.run([*HARNESS, "compile", "--target", "x86_64", str(model), "--input-shape", "input_1=2,640"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "mlperf-ad.tflite: --input-shape input_1=2,640: a .tflite model's input shapes are static" in proc.stderr


# --- comparison in quantized units -------------------------------------------------------------

def test_int8_outputs_are_compared_in_units():
    want = np.array([[-128, 0, 5, 127]], dtype=np.int8)
    got = np.array([[-127, 0, 3, 127]], dtype=np.int8)
    check = compare_quantized("y", "tflite-micro", got, want, {"scale": [0.5], "zero_point": [0]})
    assert not check.passed and check.differing == 2 and check.max_units == 2
    assert check.worst_index == [0, 2] and check.expected == 5 and check.got == 3
    one_off = compare_quantized("y", "tflite-micro", (want + (want < 127)).astype(np.int8), want, None)
    assert one_off.passed and one_off.max_units == 1 and one_off.differing == 3


def test_dequantized_floats_are_compared_per_channel_units():
    scale = np.array([0.1, 0.01], dtype=np.float32)
    want = (np.array([[3, 7], [-2, 100]], dtype=np.float32) * scale).astype(np.float32)
    got = want + np.array([[0.1, 0.02], [0.0, -0.01]], dtype=np.float32)  # 1, 2, 0, 1 units
    units = units_apart(got, want, {"scale": scale.tolist(), "axis": 1})
    assert units.tolist() == [[1, 2], [0, 1]]
    check = compare_quantized("y", "onnxruntime", got, want,
                              {"scale": scale.tolist(), "zero_point": [0, 0], "axis": 1,
                               "quantized_dtype": "int8"})
    assert not check.passed and check.max_units == 2 and check.differing == 3
    # the atol of 1e-5 a float output gets would fail even one unit (0.0039 for 1/256)
    assert compare_quantized("y", "r", np.float32([0.00390625]), np.float32([0.0]),
                             {"scale": [0.00390625], "zero_point": [0], "quantized_dtype": "int8"}).passed


# --- real runs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("target_name", ["x86_64", "qemu-armv7"])
@pytest.mark.parametrize("model", ["cnn-qdq", "cnn-qdq-perchannel"])
def test_qdq_onnx_matches_onnxruntime_in_units(qdq, target_name, model):
    result = run_on_target(qdq[model], load_target(target_name), iters=1, seed=3)
    assert result.error is None, result.error
    assert result.passed, json.dumps(result.outputs, indent=1)
    (out,) = result.outputs
    assert out["reference"] == "onnxruntime" and out["max_units"] <= out["tolerance_units"] == 1
    assert "within 1 quantized unit" in out["rule"]
    # convolutions and the dense layer run as integer kernels, their weights int8
    kernels = compile_model(qdq[model], target_name).metadata["kernels"]
    assert any("int8_conv2d" in k for k in kernels) and any("int8_dense" in k for k in kernels), kernels
    # max pooling and the reshape share their input's quantization: on int8 as they are, no
    # dequantize / quantize around them
    assert "max_pool2d" in kernels and not any(("max_pool" in k or "reshape" in k) and "quantize" in k
                                               for k in kernels), kernels


# every target class: the host, ARMv7 Linux under qemu-user, Cortex-M4 firmware under QEMU,
# KWS on a Cortex-M3 with no FPU (soft-float build: the int8 kernels need no float) and on a
# Cortex-M7 (FPv5, mps2-an500). The emulated board runs one in tests/test_board_run.py.
MLPERF_CASES = ([(m, t) for t in ("x86_64", "qemu-armv7") for m in mlperf_tiny.INT8_MODELS + mlperf_tiny.FLOAT_MODELS]
                + [(m, "cortex-m4-qemu") for m in mlperf_tiny.INT8_MODELS]
                + [("mlperf-kws", "cortex-m3-qemu"), ("mlperf-kws", "cortex-m7-qemu")])


@pytest.mark.parametrize(("model", "target_name"), MLPERF_CASES)
def test_mlperf_tiny_matches_tflite_micro(mlperf, target_name, model):
    result = run_on_target(mlperf[model], load_target(target_name), iters=1)
    assert result.error is None, result.error
    print(f"{model} on {target_name}: " + "; ".join(
        f"{o['name']}: {o.get('differing', '-')} differ, max {o.get('max_units', o.get('max_abs_err'))}"
        for o in result.outputs) + f"; arena {result.arena_bytes} B, params {result.footprint.get('flash_weights')} B"
        + (f", {result.latency_counts['mean']:,.0f} {result.count_unit}" if result.latency_counts else ""))
    assert result.passed, json.dumps(result.outputs, indent=1)
    assert {o["reference"] for o in result.outputs} == {"tflite-micro"}
    if model in mlperf_tiny.INT8_MODELS:  # integer kernels with TFLM's arithmetic: bit exact
        (out,) = result.outputs
        assert out["dtype"] == "int8" and out["differing"] == 0, out
