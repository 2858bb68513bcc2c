"""Default schedules (harness.compile.schedule): every kernel of the examples and the MLPerf-Tiny-like
zoo is rewritten (tiled and vectorized, padding and epilogues inside the consuming loop), the
workspace stays within the largest activation, and the zoo still matches onnxruntime and the
onnx reference on this host with those kernels. (The examples are checked on x86_64 and
qemu-armv7 by tests/test_run.py and tests/test_compile.py.)"""

from __future__ import annotations

import json
import re

import pytest

from harness.compile.kernels import kernel_target
from harness.compile.source import relax_module
from harness.models.examples import write_examples
from harness.run import run_on_target
from harness.compile.schedule import schedule_kernel, simd_lanes
from harness.config.targets import load_target
from harness.models.zoo import ZOO, write_zoo

# Kernels the rules leave scalar: a row reduction with one output row (softmax, a global
# mean over a 1x1 output, layer norm's statistics). They are a few hundred flops each.
SCALAR_OK = re.compile(r"^(softmax|mean|layer_norm|concatenate)\d*$")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("models")
    return {**write_examples(d / "examples"), **write_zoo(d / "zoo")}


def test_zoo_models_are_deterministic_and_valid(tmp_path):
    import onnx

    first = write_zoo(tmp_path / "a")
    second = write_zoo(tmp_path / "b")
    assert set(first) == set(ZOO) == {"lenet5", "kws_dscnn", "resnet8", "autoencoder", "mobilenet_v1_025", "attention"}
    for name in ZOO:
        assert first[name].read_bytes() == second[name].read_bytes()
        onnx.checker.check_model(onnx.load(first[name]), full_check=True)


@pytest.mark.parametrize("target_name, lanes", [("x86_64", 8), ("qemu-armv7", 4), ("cortex-m4-qemu", 1),
                                               ("cortex-m7-qemu", 1)])
def test_simd_lanes_follow_the_target(target_name, lanes):
    assert simd_lanes(kernel_target(load_target(target_name))) == lanes


@pytest.mark.parametrize("target_name", ["x86_64", "qemu-armv7"])
def test_every_heavy_kernel_is_tiled_and_vectorized(models, target_name):
    import tvm

    target = load_target(target_name)
    lanes = simd_lanes(kernel_target(target))
    for model, path in models.items():
        mod = relax_module(path, target.tvm_target)
        for gvar, func in mod.functions.items():
            if not isinstance(func, tvm.tirx.PrimFunc):
                continue
            name = gvar.name_hint
            text = func.script()
            scheduled, rule = schedule_kernel(func, lanes)
            out = scheduled.script()
            if "conv2d" in name or "matmul" in name or "pool" in name:
                assert rule.rule == "tiled", (model, name, rule)
                assert "T.vectorized(" in out, (model, name)
                assert "T.parallel(" not in out
            elif not SCALAR_OK.match(name) and "reshape" not in name:
                assert rule.rule in ("tiled", "vectorized"), (model, name, rule)
            # Padding is computed inside the tiled loop nest (its size shows in the workspace,
            # checked below), or inlined when there is nothing to pad.
            if "pad_temp = T.sblock_alloc_buffer" in text:
                assert rule.rule == "tiled" and "pad computed in loop" in rule.detail or "pad_temp" not in out, (model, name, rule)
            # Elementwise epilogues were folded into the kernel's main loop nest.
            assert out.count("T.sblock(\"T_add") <= text.count("T.sblock(\"T_add")


@pytest.mark.parametrize("model", list(ZOO))
def test_zoo_model_matches_the_references_on_this_host(models, model, monkeypatch):
    monkeypatch.setenv("MINRT_NO_TUNING", "1")
    result = run_on_target(models[model], load_target("x86_64"), iters=2, seed=3, atol=1e-4, rtol=1e-4)
    assert result.error is None, result.error
    assert result.passed, json.dumps(result.outputs, indent=1)


@pytest.mark.parametrize("model", list(ZOO))
def test_zoo_workspace_is_no_larger_than_the_largest_activation(models, model, monkeypatch):
    from harness.bench.vs_onnxruntime import _largest_activation
    from harness.compile.model import compile_model

    monkeypatch.setenv("MINRT_NO_TUNING", "1")
    artifact = compile_model(models[model], "x86_64")
    meta = artifact.metadata
    assert meta["workspace_bytes"] <= _largest_activation(artifact), (model, meta["workspace_bytes"])
    assert all(v["source"] == "default" for v in meta["schedules"].values())
    assert set(meta["schedules"]) == set(meta["kernels"])
