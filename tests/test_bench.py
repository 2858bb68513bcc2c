"""`harness bench` in miniature (one model, one round): minrt and onnxruntime measured side by
side, the ratio stored in the results store and shown on the dashboard. The real benchmark
(all models, more rounds, tuned) is ci/bench_kernels; no timing is asserted here."""

from __future__ import annotations

from harness.bench.vs_onnxruntime import bench_models
from harness.models.resolve import resolve_models
from harness.results.dashboard import render_dashboard
from harness.results.store import ResultStore, bench_trend, record_bench
from harness.config.targets import load_target


def test_bench_measures_both_runtimes_and_the_dashboard_shows_the_ratio(tmp_path, monkeypatch):
    monkeypatch.setenv("MINRT_NO_TUNING", "1")
    models = resolve_models(["mlp", "lenet5"], out_dir=tmp_path / "models")
    report = bench_models(models, load_target("x86_64"), rounds=2, iters=3)
    assert [m.model for m in report.models] == ["mlp", "lenet5"]
    for m in report.models:
        assert m.error is None, m.error
        assert 0 < m.minrt_min_us <= m.minrt_median_us and 0 < m.ort_min_us <= m.ort_median_us
        assert m.ratio_min == m.minrt_min_us / m.ort_min_us
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
    import pytest

    from harness.errors import HarnessError

    with pytest.raises(HarnessError, match="nosuch"):
        resolve_models(["nosuch"], out_dir=tmp_path)


def test_a_tflite_model_is_refused_by_name(tmp_path):
    """onnxruntime, the bench's baseline, cannot read a .tflite: the model's row says so and
    where .tflite models are measured (it used to be onnxruntime's InvalidProtobuf after a
    whole compile); the other models still run."""
    from harness.models.tflite_builder import int8_examples

    tflite = next(iter(int8_examples(tmp_path / "tfl").values()))
    models = [tflite, *resolve_models(["mlp"], out_dir=tmp_path / "models")]
    report = bench_models(models, load_target("x86_64"), rounds=1, iters=1)
    refused, mlp = report.models
    assert refused.error and tflite.name in refused.error and "ci/bench_tflm" in refused.error
    assert mlp.error is None and mlp.ratio_min


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

    import pytest

    from harness import REPO_ROOT
    from harness.bench.instructions import count_models
    from harness.errors import HarnessError

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
