"""Per-operator profiles: minrt-run -p times every kernel, harness run --profile lists them,
the results store keeps them and the dashboard shows the slowest."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from harness.build.runner import runner_command
from harness.compile.model import compile_model
from harness.config.targets import load_target
from harness.formats import tensorfile
from harness.formats.signatures import SIGNATURES_C
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


def test_kernels_shorter_than_the_clock_tick_are_listed(tmp_path):
    """On a coarse clock (Linux's CLOCK_MONOTONIC_COARSE, one tick per jiffy) mlp's kernels
    take less than a tick and most sum to 0 us; each is still in the profile (they were
    left out), at 0 us."""
    model = write_examples(tmp_path, ["mlp"])["mlp"]
    target = load_target("x86_64")
    artifact = compile_model(model, target)
    coarse = tmp_path / "coarse_clock.h"
    coarse.write_text("#define _GNU_SOURCE\n#include <time.h>\n"
                      "#undef CLOCK_MONOTONIC\n#define CLOCK_MONOTONIC CLOCK_MONOTONIC_COARSE\n")
    runner = tmp_path / "minrt-run-coarse"
    argv = runner_command(target, artifact.kernels_obj, runner, artifact.dir / SIGNATURES_C)
    argv[1:1] = ["-include", str(coarse)]
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=300)
    inputs = {s["name"]: np.ones(s["shape"], s["dtype"]) for s in artifact.inputs}
    tensorfile.save(tmp_path / "in.bin", inputs)
    proc = subprocess.run([str(runner), str(artifact.graph_json), str(artifact.params_bin), str(tmp_path / "in.bin"),
                           str(tmp_path / "out.bin"), "-n", "3", "-w", str(artifact.metadata["workspace_bytes"]),
                           "-p"], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    profile = json.loads(proc.stdout.strip().splitlines()[-2])["profile"]
    graph = json.loads(artifact.graph_json.read_text())
    kernels = {i for i, n in enumerate(graph["nodes"]) if n["op"] == "tvm_op" and n["attrs"]["func_name"] != "__nop"}
    assert {p["node"] for p in profile} == kernels, profile
    print(f"coarse clock: {sum(p['us'] == 0 for p in profile)} of {len(kernels)} kernels at 0 us")
