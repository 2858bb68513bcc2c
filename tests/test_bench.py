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
