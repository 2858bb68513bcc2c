"""`harness bench` in miniature (small models, few rounds): minrt beside onnxruntime and LiteRT
(real runtimes, real compiles, x86_64), the ratios stored in the results store and shown on the
dashboard. The real benchmark (all models, more rounds, tuned) is ci/bench_kernels; no timing is
asserted here."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.bench.baselines import LITERT, ONNXRUNTIME
from harness.bench.vs_onnxruntime import bench_models
from harness.config.targets import load_target
from harness.errors import HarnessError
from harness.models.resolve import resolve_models
from harness.results.dashboard import render_dashboard
from harness.results.store import ResultStore, bench_trend, record_bench


def test_bench_measures_both_runtimes_and_the_dashboard_shows_the_ratio(tmp_path, monkeypatch):
    monkeypatch.setenv("MINRT_NO_TUNING", "1")
    models = resolve_models(["mlp", "lenet5"], out_dir=tmp_path / "models")
    report = bench_models(models, load_target("x86_64"), rounds=2, iters=3)
    assert [m.model for m in report.models] == ["mlp", "lenet5"]
    for m in report.models:
        assert m.error is None, m.error
        assert 0 < m.minrt_min_us <= m.minrt_median_us and 0 < m.ort_min_us <= m.ort_median_us
        assert m.ratio_min == m.minrt_min_us / m.ort_min_us and m.output_check == "pass"
        # no .tflite form beside these ONNX models: no LiteRT figure, and the row says why
        assert m.litert_min_us == 0 and m.ratio(LITERT) is None and ".tflite form" in m.baseline_notes[LITERT]
        assert m.kernels > 0 and m.tuned_kernels == 0 and m.workspace_bytes <= m.largest_activation_bytes
    assert report.geomean("min") > 0 and "geometric mean" in report.table()

    store = ResultStore(tmp_path / "results.sqlite")
    assert record_bench(store, [m.to_dict() for m in report.models], commit="abc", batch="night-1") == 2
    assert record_bench(store, [m.to_dict() for m in report.models], commit="abd", batch="night-2") == 2
    trend = bench_trend(store, "x86_64")
    assert set(trend) == {"mlp", "lenet5", "geomean"}
    assert [p["batch"] for p in trend["lenet5"]] == ["night-1", "night-2"]
    html = render_dashboard(store)
    assert 'id="bench"' in html and "lenet5" in html and "geomean" in html


def test_unknown_bench_model_is_named(tmp_path):
    with pytest.raises(HarnessError, match="nosuch"):
        resolve_models(["nosuch"], out_dir=tmp_path)


def _fc_both_forms(out_dir: Path) -> tuple[Path, Path]:
    """One float fully connected layer (24 -> 5, same weights) as fc.onnx and fc.tflite beside
    it: an ONNX model with a .tflite form."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from harness.models.tflite_builder import TfliteGraph

    rng = np.random.default_rng(20)
    w, b = rng.standard_normal((5, 24)).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["input", "w", "b"], ["output"], transB=1)], "fc",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 24])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 5])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "fc.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), onnx_path)
    g = TfliteGraph()
    x = g.tensor("input", (1, 24), "float32")
    y = g.tensor("output", (1, 5), "float32")
    g.op("FULLY_CONNECTED", [x, g.tensor("w", (5, 24), "float32", data=w), g.tensor("b", (5,), "float32", data=b)],
         [y], ("FullyConnectedOptions", {"FusedActivationFunction": 0}))
    g.inputs, g.outputs = [x], [y]
    tflite_path = onnx_path.with_suffix(".tflite")
    tflite_path.write_bytes(g.to_bytes())
    return onnx_path, tflite_path


def test_bench_measures_tflite_models_against_litert_and_stores_the_ratios(tmp_path, monkeypatch):
    """A .tflite model is measured against LiteRT (onnxruntime cannot read it: without an ONNX
    form beside it, its row says so; bench used to refuse it); a model with both forms side by
    side gets both baselines, whichever form is benched. minrt's outputs are checked, the rows stored
    with their baseline, and the dashboard charts minrt / LiteRT beside minrt / onnxruntime."""
    import json
    import subprocess
    import sys

    from harness import REPO_ROOT
    from harness.models.tflite_builder import int8_examples

    monkeypatch.setenv("MINRT_NO_TUNING", "1")
    int8 = int8_examples(tmp_path / "tfl", ["tfl-fc4d"])["tfl-fc4d"]
    fc_onnx, fc_tflite = _fc_both_forms(tmp_path / "fc")
    report = bench_models([int8, fc_tflite, fc_onnx], load_target("x86_64"), rounds=2, iters=3)
    assert [m.model for m in report.models] == ["tfl-fc4d", "fc", "fc"]
    for m in report.models:
        assert m.error is None, m.error
        assert m.output_check == "pass"
        assert 0 < m.litert_min_us <= m.litert_median_us
        assert m.ratio(LITERT) == m.minrt_min_us / m.litert_min_us
    int8_row, float_row, onnx_row = report.models
    assert int8_row.ort_min_us == 0 and int8_row.ratio_min is None
    assert ".onnx form" in int8_row.baseline_notes[ONNXRUNTIME]
    # fc.tflite and fc.onnx lie side by side: whichever is benched, both baselines run
    for m in (float_row, onnx_row):
        assert m.ratio_min == m.minrt_min_us / m.ort_min_us and not m.baseline_notes
    assert report.geomean("min", LITERT) > 0
    text = report.table()
    assert "geometric mean minrt/LiteRT" in text and "geometric mean minrt/onnxruntime" in text

    store = ResultStore(tmp_path / "results.sqlite")
    assert record_bench(store, [m.to_dict() for m in report.models], commit="abc", batch="night-1") == 3
    litert = bench_trend(store, "x86_64", baseline=LITERT)
    assert set(litert) == {"tfl-fc4d", "fc", "geomean"}
    assert litert["tfl-fc4d"][0]["ratio_min"] == pytest.approx(int8_row.ratio(LITERT))
    assert set(bench_trend(store, "x86_64")) == {"fc", "geomean"}  # onnxruntime: not the int8 model
    html = render_dashboard(store)
    bench = html[html.index('id="bench"'):]
    assert "x86_64: minrt / LiteRT" in bench and "x86_64: minrt / onnxruntime" in bench and "tfl-fc4d" in bench
    with pytest.raises(HarnessError, match="no bench baseline 'tflm'"):
        bench_trend(store, "x86_64", baseline="tflm")

    # the command: the same row, its LiteRT geomean in --json, stored under its own batch
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "bench", str(int8), "--target", "x86_64",
                           "--rounds", "1", "--iters", "2", "--json", "--results", str(store.path), "--batch", "cli"],
                          capture_output=True, text=True, timeout=600, cwd=REPO_ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["litert_geomean_min"] > 0
    assert [p["batch"] for p in bench_trend(store, "x86_64", baseline=LITERT)["tfl-fc4d"]] == ["night-1", "cli"]


def test_overhead_benchmark_runs_on_a_small_chain():
    """ci/bench_overhead end to end on a 4-op chain (real TVM kernels, the real runner under
    callgrind, the straight-line C beside it): it runs and reports both counts. The figures
    themselves are for reports, not asserted."""
    import json
    import subprocess
    import sys

    from harness import REPO_ROOT

    proc = subprocess.run([sys.executable, str(REPO_ROOT / "ci" / "bench_overhead"), "--ops", "4",
                           "--runs", "5", "--json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    counts = report["instructions_per_inference"]
    assert report["operators"] == 4 and counts["minrt"] > 0 and counts["straight_line_c"] > 0
    assert report["arena_bytes"] >= report["arena_graph_bytes"] > 0


def test_count_instructions_on_qemu_armv7_is_exact_and_repeatable(tmp_path, monkeypatch):
    """`harness bench --count-instructions`: minrt's instructions per inference on qemu-armv7,
    counted by the instruction-count plugin: two counts of one build agree within 0.5% whatever
    the host's load (not to the instruction: the runner's own work around the inference, such
    as parsing /proc/self/status for its peak memory, varies by up to ~1,000 instructions),
    and a target without qemu-user is refused in one line."""
    import json
    import shutil
    import subprocess
    import sys

    from harness import REPO_ROOT
    from harness.bench.instructions import count_models

    if shutil.which("arm-linux-gnueabihf-gcc") is None or shutil.which("qemu-arm") is None:
        pytest.skip("arm-linux-gnueabihf-gcc or qemu-arm is not installed (run ci/setup)")
    monkeypatch.setenv("MINRT_NO_TUNING", "1")
    models = resolve_models(["lenet5"], out_dir=tmp_path / "models")
    first, second = count_models(models * 2, load_target("qemu-armv7"))
    assert first.error is None and second.error is None, (first.error, second.error)
    # LeNet-5 is ~0.4 M multiply-adds: one inference is that order of instructions
    assert 50_000 < first.instructions < 50_000_000
    assert abs(first.instructions - second.instructions) <= first.instructions / 200
    with pytest.raises(HarnessError, match="qemu-user target"):
        count_models(models, load_target("x86_64"))

    proc = subprocess.run([sys.executable, "-m", "harness.cli", "bench", str(models[0]), "--target", "qemu-armv7",
                           "--count-instructions", "--json"], capture_output=True, text=True, timeout=600,
                          cwd=REPO_ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    counted = json.loads(proc.stdout)["models"][0]["instructions"]
    assert abs(counted - first.instructions) <= first.instructions / 200
