"""The harness pytest plugin, used the way a user's own suite uses it: from outside this tree."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

from harness.models.examples import write_examples


def _plugin_args() -> list[str]:
    registered = any(ep.value == "harness.pytest_plugin"
                     for ep in importlib.metadata.entry_points(group="pytest11"))
    return [] if registered else ["-p", "harness.pytest_plugin"]


def _pytest(args: list[str], cwd, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", *_plugin_args(), "-p", "no:cacheprovider", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_help_names_prefixed_options_only(tmp_path):
    proc = _pytest(["--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "--minrt-target" in proc.stdout and "--minrt-toolchain" in proc.stdout
    assert "  --target" not in proc.stdout  # would collide with pytest-embedded's option
    markers = _pytest(["--markers"], tmp_path).stdout
    for name in ("board", "docker", "network", "slow"):
        assert f"@pytest.mark.{name}:" in markers


def test_a_users_suite_runs_an_example_on_x86_64_in_one_line(tmp_path):
    model = write_examples(tmp_path / "models", ["mlp"])["mlp"]
    (tmp_path / "test_on_device.py").write_text(
        "def test_mlp_matches(minrt_run, minrt_target):\n"
        "    assert minrt_target.name == 'x86_64'\n"
        f"    result = minrt_run({str(model)!r}, iters=2)\n"
        "    assert result.passed, result.error\n"
        "    assert result.latency_us['min'] > 0 and result.outputs\n")
    proc = _pytest(["-q", "--minrt-target", "x86_64", str(tmp_path / "test_on_device.py")], tmp_path)
    assert "1 passed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_a_model_that_does_not_load_comes_back_in_the_result(tmp_path):
    """A missing file or a broken model is a failed result, like a bad input name, not a
    CompileError traceback out of the test."""
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    (tmp_path / "test_bad_models.py").write_text(
        "def test_missing(minrt_run):\n"
        "    result = minrt_run('nope.onnx')\n"
        "    assert not result.passed and 'nope.onnx' in result.error, result\n"
        "    assert result.error_kind == 'CompileError'\n"
        "def test_broken(minrt_run):\n"
        f"    result = minrt_run({str(broken)!r})\n"
        "    assert not result.passed and 'not an ONNX model' in result.error\n"
        "def test_bad_shape_option(minrt_run):\n"
        "    result = minrt_run('nope.onnx', input_shapes=['x=1,a'])\n"
        "    assert not result.passed and 'expected NAME=D1,D2' in result.error\n")
    proc = _pytest(["-q", "--minrt-target", "x86_64", str(tmp_path / "test_bad_models.py")], tmp_path)
    assert "3 passed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_an_unknown_target_stops_the_session_once(tmp_path):
    (tmp_path / "test_many.py").write_text(
        "".join(f"def test_{i}(minrt_run):\n    pass\n" for i in range(5)))
    proc = _pytest(["-q", "--minrt-target", "nosuch", str(tmp_path / "test_many.py")], tmp_path)
    assert proc.returncode == 4, proc.stdout + proc.stderr  # pytest's usage error: nothing ran
    text = proc.stdout + proc.stderr
    assert text.count("--minrt-target: ") == 1 and "nosuch" in text
    assert "passed" not in proc.stdout and "error" not in proc.stdout.lower().replace("usageerror", "")


def test_one_test_runs_on_x86_64_and_qemu_armv7_in_one_session(tmp_path):
    model = write_examples(tmp_path / "models", ["mlp"])["mlp"]
    (tmp_path / "test_targets.py").write_text(
        "import pytest\n"
        "seen = []\n"
        "@pytest.mark.minrt_target('x86_64', 'qemu-armv7')\n"
        "def test_mlp_everywhere(minrt_run, minrt_target):\n"
        f"    result = minrt_run({str(model)!r}, iters=2)\n"
        "    assert result.passed, result.error\n"
        "    assert result.target == minrt_target.name\n"
        "    seen.append(minrt_target.name)\n"
        "def test_both_ran():\n"
        "    assert sorted(seen) == ['qemu-armv7', 'x86_64']\n")
    proc = _pytest(["-v", "--minrt-toolchain", "host", str(tmp_path / "test_targets.py")], tmp_path)
    assert "3 passed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "test_mlp_everywhere[x86_64] PASSED" in proc.stdout
    assert "test_mlp_everywhere[qemu-armv7] PASSED" in proc.stdout


def test_comma_separated_targets_parametrize_every_test(tmp_path):
    model = write_examples(tmp_path / "models", ["mlp"])["mlp"]
    (tmp_path / "test_option.py").write_text(
        "def test_mlp(minrt_run, minrt_target):\n"
        f"    assert minrt_run({str(model)!r}, iters=1).target == minrt_target.name\n")
    proc = _pytest(["-v", "--minrt-toolchain", "host", "--minrt-target", "x86_64,qemu-armv7",
                    str(tmp_path / "test_option.py")], tmp_path)
    assert "test_mlp[x86_64] PASSED" in proc.stdout and "test_mlp[qemu-armv7] PASSED" in proc.stdout, \
        proc.stdout[-3000:] + proc.stderr[-3000:]


def test_input_shapes_fix_a_dynamic_batch(tmp_path):
    (tmp_path / "test_dynamic.py").write_text(
        "import numpy as np, onnx\n"
        "from onnx import TensorProto, helper, numpy_helper\n"
        "def _model(path):\n"
        "    w = numpy_helper.from_array(np.ones((16, 4), np.float32), 'W')\n"
        "    g = helper.make_graph([helper.make_node('MatMul', ['x', 'W'], ['y'])], 'dyn',\n"
        "        [helper.make_tensor_value_info('x', TensorProto.FLOAT, ['N', 16])],\n"
        "        [helper.make_tensor_value_info('y', TensorProto.FLOAT, ['N', 4])], [w])\n"
        "    m = helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)])\n"
        "    m.ir_version = 8\n"
        "    onnx.save(m, path)\n"
        "    return path\n"
        "def test_dynamic(minrt_run, tmp_path):\n"
        "    model = _model(tmp_path / 'dyn.onnx')\n"
        "    refused = minrt_run(model)\n"
        "    assert not refused.passed and '--input-shape x=1,16' in refused.error\n"
        "    result = minrt_run(model, input_shapes={'x': [3, 16]}, iters=1)\n"
        "    assert result.passed, result.error\n"
        "    assert result.outputs[0]['shape'] == [3, 4]\n")
    proc = _pytest(["-q", "--minrt-target", "x86_64", "--minrt-toolchain", "host",
                    str(tmp_path / "test_dynamic.py")], tmp_path)
    assert "1 passed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_a_users_suite_sees_a_mismatch(tmp_path, mlp_with_wrong_weights):
    """A model whose device weights are wrong (by 1.0, not float noise) fails at the default
    tolerances, its outputs' errors in the result."""
    (tmp_path / "test_mismatch.py").write_text(
        "def test_wrong_weights_do_not_match(minrt_run):\n"
        f"    result = minrt_run({str(mlp_with_wrong_weights)!r}, iters=1)\n"
        "    assert not result.passed and not result.error\n"
        "    assert all(o['max_abs_err'] > 0.01 for o in result.outputs), result.outputs\n")
    proc = _pytest(["-q", "--minrt-target", "x86_64", str(tmp_path / "test_mismatch.py")], tmp_path)
    assert "1 passed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
