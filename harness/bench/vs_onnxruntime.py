"""`harness bench`: minrt against onnxruntime and LiteRT, side by side in one run.

For each model: compile it for the target (tuning records used unless MINRT_NO_TUNING=1),
build minrt-run, take one set of inputs (the model's own samples beside it, as MLPerf Tiny's,
else seeded random ones), then alternate rounds: minrt-run on the target's device (`iters`
inferences, timed by the runner itself after one untimed first run, as each baseline is warmed
up; its kernels' parallel loops on `threads` threads) and
each baseline on this host with `threads` threads, the same inputs, `iters` inferences timed
around the call (harness.bench.baselines): like with like. The baselines are onnxruntime where
the model has an ONNX form and LiteRT (XNNPACK) where it has a .tflite form: the model itself,
or its other form beside it (`<stem>.onnx` / `<stem>.tflite`; no converter between the two is
installed: those on PyPI need tensorflow). Interleaving means a slow phase of the machine hits
all of them. Per runtime: min = the fastest single inference over all rounds, median = the
median of the per-round means. A ratio is minrt / baseline (below 1 means minrt is faster);
across models the geometric mean of the ratios. minrt's outputs are checked against the host
references as `harness run` checks them. The baselines run on the host, so the ratio is
meaningful when the target runs on the host too (x86_64); for other targets it is recorded all
the same, labelled with the target.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from harness.bench.baselines import LABELS, LITERT, ONNXRUNTIME, SETUP, Baseline, baseline_forms, time_calls
from harness.config.targets import Target
from harness.errors import HarnessError
from harness.formats import tensorfile
from harness.formats.text import EMULATED, duration, ratio, table

log = logging.getLogger(__name__)

#: why an ONNX model has no .tflite form (nor a .tflite model an ONNX one) unless one lies beside it
NO_CONVERTER = "no ONNX/TFLite converter is installed: those on PyPI (onnx2tf, tf2onnx) need tensorflow"
#: a baseline's figures in ModelBench: <field>_min_us, <field>_median_us
_FIELD = {ONNXRUNTIME: "ort", LITERT: "litert"}


@dataclass
class ModelBench:
    model: str
    target: str
    minrt_min_us: float = 0.0
    minrt_median_us: float = 0.0
    ort_min_us: float = 0.0  # 0: onnxruntime did not run (baseline_notes says why)
    ort_median_us: float = 0.0
    litert_min_us: float = 0.0  # 0: LiteRT did not run (baseline_notes says why)
    litert_median_us: float = 0.0
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
    #: minrt's outputs against the host references (as `harness run` judges them): "pass", or
    #: the first mismatch; None when the model did not get that far
    output_check: str | None = None
    #: baseline -> why it did not run on this model
    baseline_notes: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    def baseline_us(self, baseline: str, which: str) -> float:
        return float(getattr(self, f"{_FIELD[baseline]}_{which}_us"))

    def ratio(self, baseline: str, which: str = "min") -> float | None:
        """minrt / the baseline, min or median; None when either is missing."""
        mine, theirs = getattr(self, f"minrt_{which}_us"), self.baseline_us(baseline, which)
        return mine / theirs if mine and theirs else None

    @property
    def ratio_min(self) -> float | None:
        return self.ratio(ONNXRUNTIME, "min")

    @property
    def ratio_median(self) -> float | None:
        return self.ratio(ONNXRUNTIME, "median")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for prefix, baseline in (("", ONNXRUNTIME), ("litert_", LITERT)):
            for which in ("min", "median"):
                d[f"{prefix}ratio_{which}"] = self.ratio(baseline, which)
        return d


@dataclass
class BenchReport:
    target: str
    models: list[ModelBench] = field(default_factory=list)
    #: minrt ran on an emulator (harness.config.readiness.is_emulated)
    emulated: bool = False

    def geomean(self, which: str = "min", baseline: str = ONNXRUNTIME) -> float | None:
        ratios = [m.ratio(baseline, which) for m in self.models]
        ratios = [r for r in ratios if r]
        return math.exp(sum(math.log(r) for r in ratios) / len(ratios)) if ratios else None

    def table(self) -> str:
        headers = ["model", "threads", "minrt min", "ort min", "ratio", "LiteRT min", "ratio", "minrt median",
                   "ort median", "ratio", "LiteRT median", "ratio", "tuned", "workspace", "largest act", "compile",
                   "outputs"]
        rows, errors = [], []
        notes: dict[tuple[str, str], list[str]] = {}  # (baseline, why) -> models
        for m in self.models:
            if m.error:
                errors.append(f"{m.model}: ERROR {m.error}")
                continue
            cells = [m.model, str(m.threads)]
            for which in ("min", "median"):
                cells.append(duration(getattr(m, f"minrt_{which}_us")))
                for baseline in SETUP:
                    us = m.baseline_us(baseline, which)
                    cells += [duration(us) if us else "-", ratio(m.ratio(baseline, which))]
            rows.append(cells + [f"{m.tuned_kernels}/{m.kernels}", f"{m.workspace_bytes:,} B",
                                 f"{m.largest_activation_bytes:,} B", f"{m.compile_seconds:.1f} s",
                                 m.output_check or "-"])
            for b, why in m.baseline_notes.items():
                notes.setdefault((b, why), []).append(m.model)
        lines = [table(headers, rows, right=range(1, 16))] if rows else []
        lines += errors + [f"{LABELS[b]} not run on {', '.join(models)}: {why}" for (b, why), models in notes.items()]
        if self.emulated:
            lines.append(f"minrt times on {self.target} are {EMULATED} (wall time of an emulator, not a device's "
                         "latency); the baselines run on this host")
        for baseline in SETUP:
            gmin, gmed = self.geomean("min", baseline), self.geomean("median", baseline)
            if gmin:
                lines.append(f"geometric mean minrt/{LABELS[baseline]} ({self.target}): min {ratio(gmin)}x, "
                             f"median {ratio(gmed)}x")
        return "\n".join(lines)


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


def _start_baselines(model: Path, values: list[Any], threads: int,
                     result: ModelBench) -> list[Baseline]:
    """Each baseline that has a form of the model to run and runs it (warmed up: the first run
    allocates); why the others do not goes into result.baseline_notes."""
    started = []
    for name, form in baseline_forms(model).items():
        if form is None:
            kind = ".onnx" if name == ONNXRUNTIME else ".tflite"
            result.baseline_notes[name] = f"no {kind} form beside the model ({NO_CONVERTER})"
            continue
        try:
            baseline = SETUP[name](form, values, threads)
            baseline.invoke()
            baseline.invoke()
        except Exception as exc:  # noqa: BLE001 - a runtime that cannot run a model fails in many ways
            first = (str(exc).strip().splitlines() or [""])[0]
            result.baseline_notes[name] = f"{type(exc).__name__}: {first}"[:300]
            log.warning("bench %s: %s cannot run %s: %s", model.stem, LABELS[name], form.name,
                        result.baseline_notes[name])
            continue
        started.append(baseline)
    return started


def _check_minrt(model: Path, inputs: Mapping[str, Any], out_blob: bytes, artifact: Any) -> str:
    """minrt's outputs against the host references, as `harness run` judges them."""
    from harness.check.compare import DEFAULT_ATOL, DEFAULT_RTOL, mismatch_summary
    from harness.run import check_outputs

    got = list(tensorfile.loads(out_blob, where="outputs.bin").values())
    checks, _ = check_outputs(model, inputs, got, artifact.outputs, DEFAULT_ATOL, DEFAULT_RTOL)
    if all(c.passed for c in checks):
        return "pass"
    return "FAIL: " + mismatch_summary([c.to_dict() for c in checks])


def bench_model(model: Path, target: Target, *, toolchain: str = "host", rounds: int = 5,
                iters: int = 20, seed: int = 0, transport: str | None = None,
                input_shapes: Mapping[str, Sequence[int]] | None = None, threads: int = 1) -> ModelBench:
    """Benchmark one model: interleaved rounds of minrt (on the target) and each baseline that
    has a form of the model (onnxruntime, LiteRT), all on `threads` threads."""
    from harness.build.runner import build_runner
    from harness.build.toolchain import get_toolchain
    from harness.compile.model import compile_model
    from harness.device.open import open_transport
    from harness.models.mlperf_tiny import sample_input_files
    from harness.run import execute, load_inputs, random_inputs

    _check_counts(rounds, iters)
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
    names = [s["name"] for s in artifact.inputs]
    samples = sample_input_files(model, names)  # a model's own sample inputs (MLPerf Tiny's) beside it
    inputs = load_inputs(artifact.inputs, samples) if samples else random_inputs(artifact.inputs, seed)
    blob = tensorfile.dumps({name: inputs[name] for name in names})
    baselines = _start_baselines(model, [inputs[name] for name in names], threads, result)
    m_min, m_mean = [], []
    b_min: dict[str, list[float]] = {b.name: [] for b in baselines}
    b_mean: dict[str, list[float]] = {b.name: [] for b in baselines}
    with open_transport(target, kind=transport) as device:
        for r in range(rounds):
            # iters timed runs after minrt-run's first (a cold start it times apart)
            out_blob, timing = execute(device, runner, artifact, blob, iters + 1, threads=threads)
            result.threads_used = int(timing.get("threads_used", 1))
            m_min.append(float(timing["min_us"]))
            m_mean.append(float(timing["mean_us"]))
            for b in baselines:
                lo, mean = time_calls(b.invoke, iters)
                b_min[b.name].append(lo)
                b_mean[b.name].append(mean)
            log.info("bench %s round %d/%d: minrt min %s%s", model.stem, r + 1, rounds, duration(m_min[-1]),
                     "".join(f", {LABELS[b]} min {duration(v[-1])}" for b, v in b_min.items()))
    result.minrt_min_us, result.minrt_median_us = min(m_min), statistics.median(m_mean)
    for b in baselines:
        setattr(result, f"{_FIELD[b.name]}_min_us", min(b_min[b.name]))
        setattr(result, f"{_FIELD[b.name]}_median_us", statistics.median(b_mean[b.name]))
    result.output_check = _check_minrt(model, inputs, out_blob, artifact)
    if result.output_check != "pass":
        log.error("bench %s: minrt's outputs %s", model.stem, result.output_check)
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
