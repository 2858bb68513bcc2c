"""The runtimes minrt is timed against on this host, set up and timed one way for every benchmark
(`harness bench`, `ci/bench_tflm`):

- onnxruntime on an ONNX model (CPU provider, `threads` intra-op threads, one inter-op thread);
- LiteRT (ai-edge-litert's Interpreter, its default XNNPACK delegate, `threads` threads) on a
  .tflite model.

Each is a Baseline: `invoke()` runs one inference on inputs fixed at set-up (what is timed,
around the call from Python), `outputs()` reads the last inference's outputs (not timed).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.errors import HarnessError

ONNXRUNTIME = "onnxruntime"
LITERT = "litert"
#: how the reports name them
LABELS = {ONNXRUNTIME: "onnxruntime", LITERT: "LiteRT"}


@dataclass
class Baseline:
    name: str  # ONNXRUNTIME or LITERT
    model: Path  # the form of the model it runs
    invoke: Callable[[], None]
    outputs: Callable[[], list[np.ndarray]]


def time_calls(call: Callable[[], object], iters: int) -> tuple[float, float]:
    """(min, mean) microseconds of `iters` calls, each timed on its own."""
    best, total = math.inf, 0.0
    for _ in range(iters):
        t0 = time.perf_counter_ns()
        call()
        us = (time.perf_counter_ns() - t0) / 1000.0
        best, total = min(best, us), total + us
    return best, total / iters


def _checked(model: Path, wanted: Sequence[tuple[Sequence[int], str]], values: Sequence[np.ndarray]) -> None:
    """The inputs, in the model's input order, fit it (the other form of a model may differ)."""
    if len(values) != len(wanted):
        raise HarnessError(f"{model.name}: {len(wanted)} input(s), given {len(values)}")
    for k, ((shape, dtype), value) in enumerate(zip(wanted, values)):
        if list(value.shape) != list(shape) or str(value.dtype) != dtype:
            raise HarnessError(f"{model.name}: input {k} is {dtype}{list(shape)}, given {value.dtype}{list(value.shape)}")


def onnxruntime_baseline(model: Path, values: Sequence[np.ndarray], threads: int = 1) -> Baseline:
    """onnxruntime on `model` (.onnx), the inputs in the model's input order."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])
    if len(session.get_inputs()) != len(values):
        raise HarnessError(f"{model.name}: {len(session.get_inputs())} input(s), given {len(values)}")
    feeds = {i.name: v for i, v in zip(session.get_inputs(), values)}
    last: list[list[np.ndarray]] = [[]]

    def invoke() -> None:
        last[0] = session.run(None, feeds)

    return Baseline(ONNXRUNTIME, model, invoke, lambda: [np.asarray(o) for o in last[0]])


def litert_baseline(model: Path, values: Sequence[np.ndarray], threads: int = 1) -> Baseline:
    """LiteRT (XNNPACK) on `model` (.tflite), the inputs in the model's input order; a model
    LiteRT must not run (harness.compile.tflite_import.litert_refusal) is refused."""
    from ai_edge_litert.interpreter import Interpreter

    from harness.compile.source import load_model
    from harness.compile.tflite_import import litert_refusal

    refusal = litert_refusal(load_model(model).model)
    if refusal:
        raise HarnessError(f"{model.name}: LiteRT not run: {refusal}")
    interpreter = Interpreter(model_path=str(model), num_threads=threads)
    interpreter.allocate_tensors()
    ins = interpreter.get_input_details()
    _checked(model, [(d["shape"], np.dtype(d["dtype"]).name) for d in ins], values)
    pairs = [(d["index"], np.ascontiguousarray(v)) for d, v in zip(ins, values)]
    outs = [d["index"] for d in interpreter.get_output_details()]

    def invoke() -> None:
        for index, value in pairs:
            interpreter.set_tensor(index, value)
        interpreter.invoke()

    return Baseline(LITERT, model, invoke, lambda: [np.array(interpreter.get_tensor(i)) for i in outs])


def baseline_forms(model: Path) -> dict[str, Path | None]:
    """The form each baseline runs: the model itself, or its other form beside it
    (`<stem>.onnx` / `<stem>.tflite`), None where there is none."""
    model = Path(model)
    forms: dict[str, Path | None] = {}
    for name, suffix in ((ONNXRUNTIME, ".onnx"), (LITERT, ".tflite")):
        other = model.with_suffix(suffix)
        forms[name] = model if model.suffix.lower() == suffix else (other if other.is_file() else None)
    return forms


SETUP = {ONNXRUNTIME: onnxruntime_baseline, LITERT: litert_baseline}
