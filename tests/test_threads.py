"""Every core: the runner runs kernels' parallel loops on N threads (runtime_c/runner/pool.c,
`minrt-run -t N`), with minrt's core unchanged. On x86_64 and qemu-armv7 a model whose heavy
kernels have parallel loops (the default schedules on Linux targets) gives the same bytes at 1
and 2 threads, matching the references, and on a real-sized CNN the runner reports that two
threads did run kernel work; shufflenet's small kernels get parallel loops of enough iterations.
The emulated board boots with the cores its target names, and a run there uses them all."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from harness.build.runner import build_runner
from harness.build.toolchain import get_toolchain
from harness.compile.model import compile_model
from harness.compile.schedule import PARALLEL_MIN_ITERATIONS
from harness.config.targets import load_target
from harness.device.open import open_transport
from harness.formats import tensorfile
from harness.models.zoo import LIGHT_ZOO, light_zoo_path, write_zoo
from harness.run import execute, random_inputs, run_on_target


def _needs(target_name: str) -> None:
    if target_name == "qemu-armv7" and (shutil.which("arm-linux-gnueabihf-gcc") is None
                                        or shutil.which("qemu-arm") is None):
        pytest.skip("arm-linux-gnueabihf-gcc or qemu-arm is not installed")


@pytest.mark.parametrize("target_name", ["x86_64", "qemu-armv7"])
@pytest.mark.parametrize("model", ["resnet8", "light_squeezenet", "light_shufflenet"])
def test_outputs_are_identical_at_one_and_two_threads(tmp_path, monkeypatch, target_name, model):
    monkeypatch.setenv("MINRT_NO_TUNING", "1")
    _needs(target_name)
    path = light_zoo_path(model) if model in LIGHT_ZOO else write_zoo(tmp_path, [model])[model]
    (one, timing1), (two, timing2) = _runs_at(load_target(target_name), path, (1, 2))
    assert (timing1["threads"], timing1["threads_used"]) == (1, 1)
    assert timing2["threads"] == 2
    if model in LIGHT_ZOO:
        # Tasks of milliseconds: the second thread takes some. (A small model's tasks may all
        # be taken by the launching thread before the other wakes on a busy machine: the pool
        # hands out tasks to whichever thread is running.)
        assert timing2["threads_used"] == 2
    assert one == two  # each output element is computed the same way by whichever thread
    result = run_on_target(path, load_target(target_name), toolchain="host", iters=1, threads=2)
    assert result.passed, result.error or json.dumps(result.outputs, indent=1)


def _runs_at(target, path, thread_counts) -> list[tuple[bytes, dict]]:
    """The model at `path`, compiled for `target` (every heavy kernel with a parallel loop), run
    on one input with each of `thread_counts` (None: the device's cores): (outputs, timing) each."""
    artifact = compile_model(path, target)
    parallel = [k for k, v in artifact.metadata["schedules"].items() if "parallel" in v.get("detail", "")]
    assert parallel, "no kernel of the model got a parallel loop"
    runner = build_runner(target, artifact, get_toolchain("host", target))
    inputs = random_inputs(artifact.inputs, 5)
    blob = tensorfile.dumps({s["name"]: inputs[s["name"]] for s in artifact.inputs})
    with open_transport(target) as device:
        return [execute(device, runner, artifact, blob, 3, threads=n) for n in thread_counts]


def test_the_board_boots_with_its_targets_cores_and_runs_on_them(shared_board, tmp_path, monkeypatch):
    """rpi-qemu's `board_cores` reaches QEMU (-smp) and the kernel brings every CPU up; on the
    board 2 threads give the bytes of 1, a run given no thread count uses every core, and a
    2-thread run matches the host reference."""
    monkeypatch.setenv("MINRT_NO_TUNING", "1")
    target = load_target("rpi-qemu")
    cores = target.transport.options["board_cores"]
    assert cores >= 2
    probe = "nproc; grep -c ^processor /proc/cpuinfo; cat /sys/devices/system/cpu/online"
    with open_transport(target) as device:
        online = device.run(["sh", "-c", probe], timeout=30)
    assert online.stdout.split() == [str(cores), str(cores), f"0-{cores - 1}"], online
    model = write_zoo(tmp_path, ["resnet8"])["resnet8"]
    (one, timing1), (two, timing2), (default, timing0) = _runs_at(target, model, (1, 2, None))
    assert (timing1["threads"], timing2["threads"], timing0["threads"]) == (1, 2, cores)
    assert one == two == default
    result = run_on_target(model, target, toolchain="host", iters=2, threads=2)
    assert result.passed, result.error or json.dumps(result.outputs, indent=1)
    assert result.threads == 2


@pytest.mark.parametrize("target_name", ["x86_64", "qemu-armv7"])
def test_shufflenets_small_kernels_get_parallel_loops_of_enough_iterations(monkeypatch, target_name):
    """Shufflenet's kernels are small: below 2M multiply-adds each, its depthwise convs, pools,
    channel shuffles and classifier ran on one thread while onnxruntime splits them. Work now
    counts the elements a kernel moves, elementwise kernels get parallel loops too, and a
    parallel loop too short for 4 tasks per thread (a 7-row conv) is fused with the loops
    inside it. Linux targets alike (firmware: test_firmware_kernels_have_no_parallel_loops)."""
    monkeypatch.setenv("MINRT_NO_TUNING", "1")
    artifact = compile_model(light_zoo_path("light_shufflenet"), load_target(target_name))
    iterations = {name: [int(n) for n in re.findall(r"parallel (\d+)", v.get("detail", ""))]
                  for name, v in artifact.metadata["schedules"].items()}
    # below the old threshold of 2M multiply-adds: a 7x7 depthwise conv of 544 channels (240k),
    # the 1000x544 classifier (544k), a padded 3x3 average pool of 7x7 outputs (120k), the
    # first channel shuffle (351k elements)
    schedules = artifact.metadata["schedules"]
    first_shuffle = next(name for name, v in schedules.items() if "transpose" in name and "rows of 6272" in v["detail"])
    graph = json.loads((artifact.dir / "graph.json").read_text())
    shapes, rows = graph["attrs"]["shape"][1], graph["node_row_ptr"]
    depthwise_7x7 = next(node["attrs"]["func_name"] for node in graph["nodes"] if node["op"] == "tvm_op" and "conv2d" in node["name"]
                         and shapes[rows[node["inputs"][1][0]] + node["inputs"][1][1]] == [544, 1, 3, 3]
                         and shapes[rows[node["inputs"][0][0]] + node["inputs"][0][1]] == [1, 544, 7, 7])
    for name in (depthwise_7x7, "fused_matmul_add11", "avg_pool2d2", first_shuffle):
        assert iterations[name], (name, iterations)
    # the 1x1 group conv of 7x7 outputs was "parallel 7" (2 threads: 4 rows against 3)
    assert all(n >= PARALLEL_MIN_ITERATIONS for loops in iterations.values() for n in loops), iterations
    # a kernel of a few thousand elements stays serial: the softmax of 1000, the global pool
    assert not iterations["softmax"] and not iterations["avg_pool2d3"], iterations


def test_firmware_kernels_have_no_parallel_loops(tmp_path, monkeypatch):
    """Cortex-M firmware is single-threaded: its kernels are compiled without parallel loops."""
    monkeypatch.setenv("MINRT_NO_TUNING", "1")
    artifact = compile_model(write_zoo(tmp_path, ["resnet8"])["resnet8"], load_target("cortex-m4-qemu"))
    assert not any("parallel" in v.get("detail", "") for v in artifact.metadata["schedules"].values())
    assert subprocess.run(["nm", str(artifact.kernels_obj)], capture_output=True, text=True,
                          check=True).stdout.count("TVMBackendParallelLaunch") == 0


def test_thread_count_usage_errors(tmp_path, monkeypatch):
    """-t takes 0 (the CPUs the process may run on) to RUNNER_MAX_THREADS; anything else is a
    usage error."""
    monkeypatch.setenv("MINRT_NO_TUNING", "1")
    target = load_target("x86_64")
    artifact = compile_model(write_zoo(tmp_path, ["lenet5"])["lenet5"], target)
    runner = build_runner(target, artifact, get_toolchain("host", target))
    inputs = random_inputs(artifact.inputs, 0)
    tensorfile.save(tmp_path / "in.bin", inputs)
    base = [str(runner), str(artifact.graph_json), str(artifact.params_bin), str(tmp_path / "in.bin"),
            str(tmp_path / "out.bin"), "-w", str(artifact.metadata["workspace_bytes"])]
    for bad in ("-1", "x", "", "65"):
        proc = subprocess.run([*base, "-t", bad], capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 2 and proc.stderr.startswith("minrt-run: usage"), (bad, proc.stderr)
    proc = subprocess.run([*base, "-t", "0"], capture_output=True, text=True, timeout=60, check=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["threads"] == len(os.sched_getaffinity(0))
    # 0 counts the CPUs the process may run on, as nproc does: pinned to one (as the board's
    # serial console shell is), it starts one thread rather than crowding that CPU
    proc = subprocess.run(["taskset", "-c", str(min(os.sched_getaffinity(0))), *base, "-t", "0"],
                          capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(proc.stdout.splitlines()[-1])["threads"] == 1
