"""Per-operator profiles: minrt-run -p times every kernel, harness run --profile lists them,
the results store keeps them and the dashboard shows the slowest."""

from __future__ import annotations

import json
import subprocess
import sys

from harness.results.dashboard import render_dashboard
from harness.models.examples import write_examples
from harness.results.store import ResultStore

HARNESS = [sys.executable, "-m", "harness.cli"]


def test_run_profile_lists_every_kernel_and_adds_up_to_the_run(tmp_path):
    model = write_examples(tmp_path, ["dscnn"])["dscnn"]
    store = tmp_path / "results.sqlite"
    proc = subprocess.run([*HARNESS, "run", "--target", "x86_64", "--toolchain", "host", "--model", str(model),
                           "--iters", "20", "--profile", "--json", "--results", str(store), "--batch", "p1"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = json.loads(proc.stdout)
    from harness.compile.model import compile_model

    graph = json.loads(compile_model(model, "x86_64").graph_json.read_text())
    kernels = {i for i, n in enumerate(graph["nodes"])
               if n["op"] == "tvm_op" and n["attrs"]["func_name"] != "__nop"}
    profile = result["profile"]
    assert {p["node"] for p in profile} == kernels and all(p["us"] > 0 for p in profile)
    assert {p["kernel"] for p in profile} == {graph["nodes"][i]["attrs"]["func_name"] for i in kernels}
    assert abs(sum(p["share"] for p in profile) - 1.0) < 1e-6
    # the kernels are what a run is made of: their times add up to (nearly) the whole run's
    ratio = sum(p["us"] for p in profile) / result["latency_us"]["mean"]
    assert 0.8 <= ratio <= 1.02, (ratio, profile, result["latency_us"])

    text = subprocess.run([*HARNESS, "run", "--target", "x86_64", "--toolchain", "host", "--model",
                           str(model), "--iters", "2", "--profile"], capture_output=True, text=True, timeout=900)
    assert f"profile: {len(kernels)} kernel(s)" in text.stdout and "% of the mean latency" in text.stdout

    rows = ResultStore(store)
    (run,) = rows.runs(batch="p1")
    stored = rows.profile(run.id)
    assert len(stored) == len(kernels) and stored[0]["us"] >= stored[-1]["us"]
    page = render_dashboard(rows)
    assert 'id="profiles"' in page and 'data-model="dscnn"' in page and stored[0]["name"] in page
