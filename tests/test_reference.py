"""The host references are checked against each other before they judge a device: real
executors (onnx's ReferenceEvaluator, onnxruntime, TVM's Relax VM) on real models where they
really differ, and real `harness run`s on this host that are judged by the majority."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from harness.errors import HarnessError
from harness.check.reference import RELAX_VM, ReferenceRun, consensus, try_reference

ort = pytest.importorskip("onnxruntime", reason="onnxruntime (a project dependency) is not installed")

HARNESS = [sys.executable, "-m", "harness.cli"]


def save(graph: onnx.GraphProto, opset: int, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def softmax_opset11(tmp_path_factory) -> Path:
    """Softmax before opset 13 flattens from axis 1 (here: over 3x4 values); onnx's
    ReferenceEvaluator applies opset 13's per-last-axis rule instead."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4])
    graph = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"])], "softmax11", [x], [y])
    return save(graph, 11, tmp_path_factory.mktemp("softmax") / "softmax11.onnx")


@pytest.fixture(scope="module")
def qdq_model(tmp_path_factory) -> Path:
    """A conv+relu quantized by onnxruntime's quantize_static (QDQ, int8, opset 17) with a
    real calibration data reader: ReferenceEvaluator has no DequantizeLinear for opset 17."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    root = tmp_path_factory.mktemp("qdq")
    rng = np.random.default_rng(3)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])
    w = numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32), "w")
    b = numpy_helper.from_array((rng.standard_normal(4) * 0.1).astype(np.float32), "b")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
                               helper.make_node("Relu", ["c"], ["y"])], "qconv", [x], [y], [w, b])
    float_model = root / "float.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, float_model)

    class Calibration(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(16)])

        def get_next(self):
            return next(self.batches, None)

    quantized = root / "qconv_qdq.onnx"
    quantize_static(str(float_model), str(quantized), Calibration(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    ops = {n.op_type for n in onnx.load(quantized).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    return quantized


def inputs_for(shape: tuple[int, ...], seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


def test_softmax_opset11_reference_evaluator_is_the_odd_one_out(softmax_opset11):
    feeds = inputs_for((2, 3, 4))
    runs = [try_reference(name, softmax_opset11, feeds) for name in ("onnx-reference", "onnxruntime")]
    assert not np.allclose(runs[0].outputs[0], runs[1].outputs[0], atol=1e-3)  # they really disagree
    agreed = consensus(runs, tiebreak=lambda: try_reference(RELAX_VM, softmax_opset11, feeds))
    assert [r.name for r in agreed.judges] == ["onnxruntime", RELAX_VM]
    status = {s.name: s.status for s in agreed.statuses}
    assert status == {"onnx-reference": "odd one out", "onnxruntime": "agrees", RELAX_VM: "agrees"}
    assert "onnx-reference is the odd one out" in agreed.note
    # the majority is right: opset-11 Softmax normalizes over the flattened 3x4 values
    flat = feeds["x"].reshape(2, 12).astype(np.float64)
    want = (np.exp(flat) / np.exp(flat).sum(axis=1, keepdims=True)).reshape(2, 3, 4)
    np.testing.assert_allclose(agreed.judges[0].outputs[0], want, rtol=1e-5, atol=1e-6)


def test_qdq_model_reference_evaluator_is_unavailable_not_a_traceback(qdq_model):
    feeds = inputs_for((1, 3, 8, 8))
    runs = [try_reference(name, qdq_model, feeds) for name in ("onnx-reference", "onnxruntime")]
    assert runs[0].outputs is None and "DequantizeLinear" in runs[0].unavailable
    asked = []
    agreed = consensus(runs, tiebreak=lambda: asked.append(1) or try_reference(RELAX_VM, qdq_model, feeds))
    assert not asked  # one reference left, nothing to disagree with
    assert [r.name for r in agreed.judges] == ["onnxruntime"]
    assert {s.name: s.status for s in agreed.statuses} == {"onnx-reference": "unavailable", "onnxruntime": "agrees"}
    assert "onnx-reference cannot run this model" in agreed.note


def arrays(*values: float) -> list[np.ndarray]:
    return [np.array(values, dtype=np.float32)]


def test_two_references_that_disagree_with_no_third_opinion_judge_together():
    runs = [ReferenceRun("a", arrays(1.0, 2.0)), ReferenceRun("b", arrays(1.0, 3.0))]
    agreed = consensus(runs, tiebreak=lambda: ReferenceRun(RELAX_VM, unavailable="cannot build"))
    assert [r.name for r in agreed.judges] == ["a", "b"]  # a device must match both to pass
    assert {s.status for s in agreed.statuses if s.name != RELAX_VM} == {"no majority"}
    assert "no majority" in agreed.note


def test_no_reference_at_all_is_a_clear_error():
    runs = [ReferenceRun("a", unavailable="no kernel"), ReferenceRun("b", unavailable="no op")]
    with pytest.raises(HarnessError, match="no host reference can run the model.*a: no kernel"):
        consensus(runs, tiebreak=lambda: ReferenceRun(RELAX_VM, unavailable="cannot build"))


def harness_run_json(model: Path, tmp_path: Path) -> tuple[int, dict, str]:
    proc = subprocess.run([*HARNESS, "run", "--model", str(model), "--target", "x86_64",
                           "--toolchain", "host", "--iters", "1", "--json"],
                          capture_output=True, text=True, timeout=600)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)[0], proc.stderr


def test_device_run_of_softmax_opset11_passes_against_the_majority(softmax_opset11, tmp_path):
    code, result, stderr = harness_run_json(softmax_opset11, tmp_path)
    assert code == 0 and result["passed"], (result, stderr)
    assert {o["reference"] for o in result["outputs"]} == {"onnxruntime", RELAX_VM}
    assert {r["name"]: r["status"] for r in result["references"]}["onnx-reference"] == "odd one out"
    assert "odd one out" in result["reference_note"]
    text = subprocess.run([*HARNESS, "run", "--model", str(softmax_opset11), "--target", "x86_64",
                           "--toolchain", "host", "--iters", "1"], capture_output=True, text=True, timeout=600)
    assert text.returncode == 0, text.stderr
    assert "  reference onnx-reference: odd one out (disagrees with onnxruntime, tvm-relax-vm)" in text.stdout
    assert "  note: onnx-reference is the odd one out" in text.stdout


def test_device_run_of_a_qdq_model_is_judged_by_onnxruntime(qdq_model, tmp_path):
    # TVM's ONNX frontend compiles this QDQ model, so minrt runs it end to end
    code, result, stderr = harness_run_json(qdq_model, tmp_path)
    assert code == 0 and result["passed"], (result, stderr)
    assert {o["reference"] for o in result["outputs"]} == {"onnxruntime"}
    standing = {r["name"]: r for r in result["references"]}
    assert standing["onnx-reference"]["status"] == "unavailable"
    assert "DequantizeLinear" in standing["onnx-reference"]["detail"]
    assert "onnx-reference cannot run this model" in result["reference_note"]
