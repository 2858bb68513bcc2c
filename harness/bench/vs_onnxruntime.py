"""`harness bench`: minrt against onnxruntime, side by side in one run.

For each model: compile it for the target (tuning records used unless MINRT_NO_TUNING=1),
build minrt-run, make one set of seeded inputs, then alternate rounds: minrt-run on the
target's device (`iters` inferences, timed by the runner itself, its kernels' parallel loops
on `threads` threads) and onnxruntime on this host (`threads` intra-op threads, one inter-op
thread, the same inputs, `iters` inferences timed around `session.run`): like with like. Interleaving means a slow phase of the machine hits both. Per runtime:
min = the fastest single inference over all rounds, median = the median of the per-round
means. The ratio is minrt / onnxruntime (below 1 means minrt is faster); across models the
geometric mean of the ratios. onnxruntime runs on the host, so the ratio is meaningful when
the target runs on the host too (x86_64); for other targets it is recorded all the same,
labelled with the target.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from harness.config.targets import Target
from harness.errors import HarnessError
from harness.formats import tensorfile
from harness.formats.text import EMULATED, duration, ratio, table

log = logging.getLogger(__name__)


@dataclass
class ModelBench:
    model: str
    target: str
    minrt_min_us: float = 0.0
    minrt_median_us: float = 0.0
    ort_min_us: float = 0.0
    ort_median_us: float = 0.0
    rounds: int = 0
    iters: int = 0
    threads: int = 1
    threads_used: int = 0  # threads minrt-run reports its kernels ran on
    tuned_kernels: int = 0
    kernels: int = 0
    workspace_bytes: int = 0
    largest_activation_bytes: int = 0
    compile_seconds: float = 0.0
    schedule_seconds: float = 0.0
    error: str | None = None

    @property
    def ratio_min(self) -> float | None:
        return self.minrt_min_us / self.ort_min_us if self.ort_min_us and self.minrt_min_us else None

    @property
    def ratio_median(self) -> float | None:
        return self.minrt_median_us / self.ort_median_us if self.ort_median_us and self.minrt_median_us else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio_min"], d["ratio_median"] = self.ratio_min, self.ratio_median
        return d


@dataclass
class BenchReport:
    target: str
    models: list[ModelBench] = field(default_factory=list)
    #: minrt ran on an emulator (harness.config.readiness.is_emulated)
    emulated: bool = False

    def geomean(self, which: str = "min") -> float | None:
        ratios = [getattr(m, f"ratio_{which}") for m in self.models]
        ratios = [r for r in ratios if r]
        return math.exp(sum(math.log(r) for r in ratios) / len(ratios)) if ratios else None

    def table(self) -> str:
        headers = ["model", "threads", "minrt min", "ort min", "ratio", "minrt median", "ort median", "ratio", "tuned",
                   "workspace", "largest act", "compile"]
        rows, errors = [], []
        for m in self.models:
            if m.error:
                errors.append(f"{m.model}: ERROR {m.error}")
                continue
            rows.append([m.model, str(m.threads), duration(m.minrt_min_us), duration(m.ort_min_us), ratio(m.ratio_min),
                         duration(m.minrt_median_us), duration(m.ort_median_us), ratio(m.ratio_median),
                         f"{m.tuned_kernels}/{m.kernels}", f"{m.workspace_bytes:,} B",
                         f"{m.largest_activation_bytes:,} B", f"{m.compile_seconds:.1f} s"])
        lines = [table(headers, rows, right=range(1, 12))] if rows else []
        lines += errors
        if self.emulated:
            lines.append(f"minrt times on {self.target} are {EMULATED} (wall time of an emulator, not a device's "
                         "latency); onnxruntime runs on this host")
        gmin, gmed = self.geomean("min"), self.geomean("median")
        if gmin:
            lines.append(f"geometric mean minrt/onnxruntime ({self.target}): min {ratio(gmin)}x, median {ratio(gmed)}x")
        return "\n".join(lines)


def _ort_session(model: Path, threads: int = 1) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])


def _ort_round(session: Any, feeds: dict[str, Any], iters: int) -> tuple[float, float]:
    times = []
    for _ in range(iters):
        t0 = time.perf_counter_ns()
        session.run(None, feeds)
        times.append((time.perf_counter_ns() - t0) / 1000.0)
    return min(times), sum(times) / len(times)


def _largest_activation(artifact: Any) -> int:
    """Bytes of the largest tensor the graph holds (an input, intermediate or output)."""
    import json

    import numpy as np

    from harness.formats.dtypes import dtype_nbytes

    graph = json.loads(artifact.graph_json.read_text())
    shapes = graph["attrs"]["shape"][1]
    dtypes = graph["attrs"]["dltype"][1]
    arg_entries = {graph["node_row_ptr"][n] for n in graph["arg_nodes"]}
    inputs = {s["name"] for s in artifact.inputs}
    names = [n["name"] for n in graph["nodes"]]
    best = 0
    for nid, node in enumerate(graph["nodes"]):
        for i in range(graph["node_row_ptr"][nid + 1] - graph["node_row_ptr"][nid]):
            e = graph["node_row_ptr"][nid] + i
            if e in arg_entries and names[nid] not in inputs:
                continue  # a weight
            best = max(best, int(np.prod(shapes[e], dtype=np.int64)) * dtype_nbytes(dtypes[e]))
    return best


def _check_counts(rounds: int, iters: int) -> None:
    """0 rounds or iterations measure nothing (min() of no times)."""
    for what, value in (("rounds", rounds), ("iters", iters)):
        if int(value) < 1:
            raise HarnessError(f"bench: --{what} must be at least 1, got {value}")


def bench_model(model: Path, target: Target, *, toolchain: str = "host", rounds: int = 5,
                iters: int = 20, seed: int = 0, transport: str | None = None,
                input_shapes: Mapping[str, Sequence[int]] | None = None, threads: int = 1) -> ModelBench:
    """Benchmark one model: interleaved rounds of minrt (on the target) and onnxruntime, both
    on `threads` threads."""
    from harness.build.runner import build_runner
    from harness.compile.model import compile_model
    from harness.run import execute, random_inputs
    from harness.build.toolchain import get_toolchain
    from harness.device.open import open_transport

    _check_counts(rounds, iters)
    if model.suffix.lower() == ".tflite":
        # before the compile: onnxruntime cannot read one, and would only say InvalidProtobuf
        raise HarnessError(f"bench: {model.name} is a .tflite model and onnxruntime, the baseline of "
                           "`harness bench`, runs ONNX only; ci/bench_tflm measures .tflite models "
                           "against LiteRT, TFLM and onnxruntime")
    result = ModelBench(model=model.stem, target=target.name, rounds=rounds, iters=iters, threads=threads)
    started = time.monotonic()
    artifact = compile_model(model, target, input_shapes=input_shapes)
    meta = artifact.metadata
    result.compile_seconds = float(meta.get("compile_seconds", time.monotonic() - started))
    result.schedule_seconds = float(meta.get("schedule_seconds", 0.0))
    result.kernels = len(meta.get("kernels", []))
    result.tuned_kernels = len(meta.get("tuned_kernels", []))
    result.workspace_bytes = int(meta.get("workspace_bytes", 0))
    result.largest_activation_bytes = _largest_activation(artifact)
    runner = build_runner(target, artifact, get_toolchain(toolchain, target))
    inputs = random_inputs(artifact.inputs, seed)
    blob = tensorfile.dumps({s["name"]: inputs[s["name"]] for s in artifact.inputs})
    session = _ort_session(model, threads)
    feeds = dict(inputs)
    _ort_round(session, feeds, 2)  # warm-up: first run allocates
    m_min, m_mean, o_min, o_mean = [], [], [], []
    with open_transport(target, kind=transport) as device:
        for r in range(rounds):
            _, timing = execute(device, runner, artifact, blob, iters, threads=threads)
            result.threads_used = int(timing.get("threads_used", 1))
            m_min.append(float(timing["min_us"]))
            m_mean.append(float(timing["mean_us"]))
            lo, mean = _ort_round(session, feeds, iters)
            o_min.append(lo)
            o_mean.append(mean)
            log.info("bench %s round %d/%d: minrt min %s, onnxruntime min %s",
                     model.stem, r + 1, rounds, duration(m_min[-1]), duration(lo))
    result.minrt_min_us, result.minrt_median_us = min(m_min), statistics.median(m_mean)
    result.ort_min_us, result.ort_median_us = min(o_min), statistics.median(o_mean)
    return result


def bench_models(models: Sequence[Path], target: Target, **kwargs: Any) -> BenchReport:
    """Benchmark each model (bench_model's options); a model that fails is recorded with its
    error and the others still run."""
    from harness.config.readiness import is_emulated

    _check_counts(kwargs.get("rounds", 1), kwargs.get("iters", 1))
    report = BenchReport(target=target.name, emulated=is_emulated(target, kwargs.get("transport")))
    for model in models:
        log.info("bench %s on %s", model.stem, target.name)
        try:
            report.models.append(bench_model(model, target, **kwargs))
        except Exception as exc:  # noqa: BLE001 - one model's failure is recorded, the rest run
            first = (str(exc).strip().splitlines() or [""])[0]
            log.error("bench %s: %s: %s", model.stem, type(exc).__name__, first)
            report.models.append(ModelBench(model=model.stem, target=target.name, error=f"{type(exc).__name__}: {first}"))
    return report
