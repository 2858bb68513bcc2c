"""End to end: every example model through compile -> build -> run -> compare, on the two
targets that need no board (the host and ARMv7 under qemu-user), and the CLI around it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from harness.formats import tensorfile
from harness.errors import HarnessError, RunnerError
from harness.models.examples import write_examples
from harness.run import load_inputs, run_on_target
from harness.config.targets import load_target

EXAMPLES = ["mlp", "cnn", "dscnn", "residual", "concat", "batchnorm", "multi_io"]
HARNESS = [sys.executable, "-m", "harness.cli"]


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> dict[str, Path]:
    return write_examples(tmp_path_factory.mktemp("examples"))


def test_examples_cover_the_issue_list(examples):
    assert set(EXAMPLES) <= set(examples)


@pytest.mark.parametrize("target_name", ["x86_64", "qemu-armv7"])
@pytest.mark.parametrize("model", EXAMPLES)
def test_example_matches_reference(examples, target_name, model):
    result = run_on_target(examples[model], load_target(target_name), iters=2, seed=1)
    assert result.error is None, result.error
    assert result.passed, json.dumps(result.outputs, indent=1)
    # every output checked against every reference executor, float32 error within 1e-5
    graph_outputs = {o.name for o in onnx.load(examples[model]).graph.output}
    assert {o["name"] for o in result.outputs} == graph_outputs
    assert {o["reference"] for o in result.outputs} >= {"onnx-reference"}
    for out in result.outputs:
        assert out["max_abs_err"] <= 1e-5, out
    assert result.iters == 2
    # of 2 runs the first (a cold start) is timed apart: min, mean and max are the second's
    lat = result.latency_us
    assert lat["first"] > 0 and 0 < lat["min"] == lat["mean"] == lat["max"], lat
    assert result.arena_bytes and result.arena_bytes > 0
    assert result.sizes["minrt_text"] > 0 and result.sizes["kernels_text"] > 0


def test_one_run_is_its_own_first_and_more_are_timed_after_it(examples):
    one = run_on_target(examples["mlp"], load_target("x86_64"), iters=1, seed=1).latency_us
    assert 0 < one["first"] == one["min"] == one["mean"] == one["max"], one
    five = run_on_target(examples["mlp"], load_target("x86_64"), iters=5, seed=1).latency_us
    assert five["first"] > 0 and 0 < five["min"] <= five["mean"] <= five["max"], five


def test_cli_run_json_and_exit_status(examples):
    proc = subprocess.run([*HARNESS, "run", "--target", "x86_64", "--model", str(examples["mlp"]),
                           "--iters", "3", "--json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert len(results) == 1 and results[0]["passed"] and results[0]["iters"] == 3
    # progress of the long steps goes to stderr
    assert "compiling" in proc.stderr and "building" in proc.stderr and "running" in proc.stderr


def test_cli_input_from_npy_is_used_and_checked(examples, tmp_path):
    model = examples["mlp"]
    spec = onnx.load(model).graph.input[0]
    dims = [d.dim_value for d in spec.type.tensor_type.shape.dim]
    good = tmp_path / "x.npy"
    np.save(good, np.full(dims, 0.25, dtype=np.float32))
    proc = subprocess.run([*HARNESS, "run", "--target", "x86_64", "--model", str(model),
                           "--input", f"{spec.name}={good}", "--json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros([d + 1 for d in dims], dtype=np.float32))
    proc = subprocess.run([*HARNESS, "run", "--target", "x86_64", "--model", str(model),
                           "--input", f"{spec.name}={bad}"], capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "shape" in proc.stderr and spec.name in proc.stderr


def test_load_inputs_rejects_unknown_names(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.zeros(3, dtype=np.float32))
    with pytest.raises(HarnessError, match="not inputs of the model"):
        load_inputs([{"name": "x", "shape": [3], "dtype": "float32"}], {"y": path})


def test_non_onnx_file_is_a_clear_error(tmp_path):
    junk = tmp_path / "notes.onnx"
    junk.write_text("this is not a model")
    proc = subprocess.run([*HARNESS, "run", "--target", "x86_64", "--model", str(junk)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "notes.onnx" in proc.stderr and "Traceback" not in proc.stderr


def test_unsupported_operator_is_named(tmp_path):
    node = helper.make_node("Det", ["x"], ["y"], name="determinant")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    path = tmp_path / "det.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    proc = subprocess.run([*HARNESS, "run", "--target", "x86_64", "--model", str(path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "Det" in proc.stderr and "determinant" in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_target_lists_known_ones():
    proc = subprocess.run([*HARNESS, "run", "--target", "no-such-board"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown target 'no-such-board'" in proc.stderr and "x86_64" in proc.stderr


def test_runner_rejects_inputs_of_the_wrong_shape(examples, tmp_path):
    """A wrong-shaped input blob reaching the device is refused by minrt-run, not run."""
    from harness.build.runner import build_runner
    from harness.compile.model import compile_model
    from harness.run import execute
    from harness.build.toolchain import HostToolchain
    from harness.transport.local import LocalTransport

    target = load_target("x86_64")
    artifact = compile_model(examples["mlp"], target)
    runner = build_runner(target, artifact, HostToolchain())
    spec = artifact.inputs[0]
    wrong = {spec["name"]: np.zeros([d + 1 for d in spec["shape"]], dtype=spec["dtype"])}
    with LocalTransport() as device, pytest.raises(RunnerError, match="minrt-run failed"):
        execute(device, runner, artifact, tensorfile.dumps(wrong), iters=1, timeout=60)
