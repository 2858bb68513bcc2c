"""Host reference executors, and the consensus of them that a device is judged against.

The references are onnx's ReferenceEvaluator and onnxruntime (when installed) for an ONNX
model, TFLite Micro's host interpreter and LiteRT for a .tflite model; each runs the original
model on the host. (Quantized models are judged in quantized units against one primary
reference: harness.check.quantized.) They are not infallible: ReferenceEvaluator applies
opset-13 defaults to some older operators (Softmax's axis before opset 13) and has no
DequantizeLinear below opset 19. So the references are first compared with each other; when
they disagree, TVM's Relax VM on the host (harness.check.relax_vm) runs the model as a third
opinion, and the device is judged against the agreeing majority. The one that disagrees is
reported as the odd one out, one that cannot run the model as unavailable.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from harness.check.compare import DEFAULT_ATOL, DEFAULT_RTOL, compare_output
from harness.errors import HarnessError

log = logging.getLogger(__name__)

RELAX_VM = "tvm-relax-vm"
TFLM = "tflite-micro"
LITERT = "litert"
#: ONNX operators that make a model quantized (QDQ): onnxruntime then runs it with its graph
#: optimizations off, so it computes what the graph says instead of fusing Q/DQ into its own
#: integer kernels.
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def reference_names(model: Path | None = None) -> list[str]:
    """The host executors for a model, the primary one first (TFLM for .tflite)."""
    if model is not None and Path(model).suffix.lower() == ".tflite":
        return [TFLM, LITERT]
    names = ["onnx-reference"]
    try:
        import onnxruntime  # noqa: F401

        names.append("onnxruntime")
    except ImportError:
        log.info("onnxruntime is not installed: comparing with onnx's ReferenceEvaluator only")
    return names


def run_reference(name: str, model: Path, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run `model` on the host with the named executor; outputs in the model's output order."""
    if name == "onnx-reference":
        from onnx.reference import ReferenceEvaluator

        return [np.asarray(o) for o in ReferenceEvaluator(str(model)).run(None, dict(inputs))]
    if name == "onnxruntime":
        import onnx
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if any(n.op_type in QDQ_OPS for n in onnx.load(str(model), load_external_data=False).graph.node):
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        return [np.asarray(o) for o in session.run(None, dict(inputs))]
    if name in (TFLM, LITERT):
        return _run_tflite(name, Path(model), inputs)
    if name == RELAX_VM:
        from harness.check.relax_vm import run_relax_vm

        return run_relax_vm(model, inputs)
    raise ValueError(f"unknown reference executor '{name}'")


def _run_tflite(name: str, model: Path, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """TFLite Micro's own interpreter (PyPI tflite-micro) or LiteRT (ai-edge-litert) on a .tflite."""
    from harness.compile.source import load_model

    source = load_model(model)
    missing = [n for n in source.input_names if n not in inputs]
    if missing:
        raise HarnessError(f"{model}: no value given for input(s) {', '.join(missing)}")
    ordered = [np.ascontiguousarray(inputs[n]) for n in source.input_names]
    if name == TFLM:
        from tflite_micro.python.tflite_micro import runtime

        # one invoke of a fresh interpreter: a stateful operator (SVDF) runs from its reset
        # state, as minrt computes it
        interpreter = runtime.Interpreter.from_file(str(model))
        for k, value in enumerate(ordered):
            interpreter.set_input(value, k)
        interpreter.invoke()
        return [np.array(interpreter.get_output(k)) for k in range(len(source.outputs))]
    from ai_edge_litert.interpreter import Interpreter

    from harness.compile.tflite_import import litert_refusal

    refusal = litert_refusal(source.model)
    if refusal:
        raise HarnessError(f"{model}: LiteRT not run: {refusal}")
    interpreter = Interpreter(model_path=str(model))
    interpreter.allocate_tensors()
    for detail, value in zip(interpreter.get_input_details(), ordered):
        interpreter.set_tensor(detail["index"], value)
    interpreter.invoke()
    return [np.array(interpreter.get_tensor(d["index"])) for d in interpreter.get_output_details()]


@dataclass
class ReferenceRun:
    """One executor's outputs for the model, or why it could not produce them."""

    name: str
    outputs: list[np.ndarray] | None = None
    unavailable: str | None = None  # one line: why this executor cannot run this model


def try_reference(name: str, model: Path, inputs: Mapping[str, np.ndarray],
                  expected_outputs: int | None = None,
                  runner: Callable[[str, Path, Mapping[str, np.ndarray]], list[np.ndarray]] = run_reference,
                  ) -> ReferenceRun:
    """Run one reference; any failure makes it unavailable for this model (with the reason)."""
    try:
        outputs = runner(name, model, inputs)
    except Exception as exc:  # noqa: BLE001 - an executor that cannot run a model fails in many ways
        first = (str(exc).strip().splitlines() or [""])[0]
        log.warning("reference %s cannot run %s: %s: %s", name, model.name, type(exc).__name__, first)
        return ReferenceRun(name, unavailable=f"{type(exc).__name__}: {first}"[:300])
    if expected_outputs is not None and len(outputs) != expected_outputs:
        return ReferenceRun(name, unavailable=f"returned {len(outputs)} outputs, the model has {expected_outputs}")
    return ReferenceRun(name, outputs=outputs)


def outputs_agree(a: Sequence[np.ndarray], b: Sequence[np.ndarray], atol: float, rtol: float) -> bool:
    """Two executors agree when every output matches within the tolerance (both ways round,
    since the relative tolerance scales with the value taken as the reference)."""
    return len(a) == len(b) and all(
        compare_output("", "", x, y, atol, rtol).passed and compare_output("", "", y, x, atol, rtol).passed
        for x, y in zip(a, b))


@dataclass
class ReferenceStatus:
    name: str
    status: str  # "agrees" | "odd one out" | "unavailable" | "no majority"
    detail: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Consensus:
    """What the device is judged against: `judges` (names of agreeing references, with their
    outputs), every reference's status, and a note when it is not simply all of them."""

    judges: list[ReferenceRun]
    statuses: list[ReferenceStatus] = field(default_factory=list)
    note: str | None = None


def _groups(runs: Sequence[ReferenceRun], atol: float, rtol: float) -> list[list[ReferenceRun]]:
    groups: list[list[ReferenceRun]] = []
    for run in runs:
        assert run.outputs is not None
        for group in groups:
            if outputs_agree(group[0].outputs or [], run.outputs, atol, rtol):
                group.append(run)
                break
        else:
            groups.append([run])
    return groups


def consensus(runs: Sequence[ReferenceRun], atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
              tiebreak: Callable[[], ReferenceRun] | None = None) -> Consensus:
    """Compare the references with each other and pick the ones the device is judged against.

    All available ones agree: all of them. They disagree: `tiebreak()` (TVM's Relax VM) adds
    an opinion, and the largest group that agrees, if it is a strict majority of two or more,
    judges; the others are the odd ones out. No majority: the device is judged against every
    available reference (and fails unless it matches all), flagged. None available: the
    tiebreak alone judges, flagged; without one, a HarnessError.
    """
    runs = list(runs)
    statuses = {r.name: ReferenceStatus(r.name, "unavailable", r.unavailable) for r in runs if r.outputs is None}
    available = [r for r in runs if r.outputs is not None]
    notes = [f"{name} cannot run this model: judged without it" for name in statuses]
    groups = _groups(available, atol, rtol)
    if len(groups) > 1 or not available:
        names = ", ".join(r.name for r in available) or "no reference"
        log.warning("the host references disagree or none could run (%s): asking %s", names,
                    "TVM's Relax VM" if tiebreak else "nobody else")
        if tiebreak is not None:
            extra = tiebreak()
            runs.append(extra)
            if extra.outputs is None:
                statuses[extra.name] = ReferenceStatus(extra.name, "unavailable", extra.unavailable)
                notes.append(f"{extra.name} cannot run this model either")
            else:
                available.append(extra)
                groups = _groups(available, atol, rtol)
    if not available:
        why = "; ".join(f"{s.name}: {s.detail}" for s in statuses.values())
        raise HarnessError(f"no host reference can run the model ({why})")
    groups.sort(key=len, reverse=True)
    majority = groups[0] if (len(groups) == 1 or (len(groups[0]) >= 2 and len(groups[0]) > len(groups[1]))) else None
    if majority is None:
        for run in available:
            statuses[run.name] = ReferenceStatus(run.name, "no majority", "the references disagree with each other")
        notes.append(f"the references disagree ({', '.join(r.name for r in available)}) and no majority "
                     f"agrees: the device is judged against each of them")
        judges = available
    else:
        judges = majority
        for run in available:
            if run in majority:
                statuses[run.name] = ReferenceStatus(run.name, "agrees")
            else:
                statuses[run.name] = ReferenceStatus(
                    run.name, "odd one out", f"disagrees with {', '.join(r.name for r in majority)}")
                notes.append(f"{run.name} is the odd one out (disagrees with "
                             f"{' and '.join(r.name for r in majority)}): judged against the majority")
        if len(majority) == 1 and len(available) == 1 and majority[0].name == RELAX_VM:
            notes.append(f"only {RELAX_VM} (TVM itself) could run the model")
    ordered = [statuses[r.name] for r in runs if r.name in statuses]
    return Consensus(judges=judges, statuses=ordered, note="; ".join(notes) or None)
