"""Judging a quantized model's outputs in quantized units, against one primary reference.

A quantized model's outputs are integers (a full-integer .tflite), or floats that come
straight out of a dequantization (a QDQ ONNX model's usual last op). Either way the honest
unit of difference is one quantization step: a float tolerance of 1e-5 fails a one-step
difference of 0.0039, and says nothing of how many values moved. So every such output is
reported as how many values differ and by how many units, and passes when no value is more
than `tolerance_units` (default 1) away from the primary reference:

- .tflite: TFLite Micro's host interpreter is the primary reference (it is what embedded
  teams run); LiteRT is asked too, and TVM's Relax VM when they disagree or TFLM cannot run.
- QDQ ONNX: onnxruntime (graph optimizations off) is the primary; onnx's ReferenceEvaluator
  too, and the Relax VM when they disagree or onnxruntime cannot run.

The other references are reported (agrees / odd one out, with their distance in units from
the primary), never judged against: integer arithmetic differs between runtimes in rounding
(LiteRT's XNNPACK kernels vs TFLM's reference kernels), and the primary is the one a device
must match. Float outputs of these models (no quantization) use the float tolerance.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from harness.check.compare import DEFAULT_ATOL, DEFAULT_RTOL, compare_output
from harness.check.reference import (
    RELAX_VM,
    Consensus,
    ReferenceRun,
    ReferenceStatus,
    reference_names,
    try_reference,
)
from harness.errors import HarnessError

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE_UNITS = 1
PASS_RULE = "every value within {tol} quantized unit(s) of {primary}"


@dataclass(frozen=True)
class QuantizedCheck:
    """One output judged in quantized units (the fields of compare.OutputCheck that a run
    result shows, plus the unit figures)."""

    name: str
    reference: str
    shape: list[int]
    dtype: str
    passed: bool
    differing: int = 0  # values that differ from the reference by at least one unit
    max_units: int = 0  # the largest difference, in units
    tolerance_units: int = DEFAULT_TOLERANCE_UNITS
    scale: list[float] | None = None  # the unit (None: an integer output without quantization)
    worst_index: list[int] | None = None
    expected: float | None = None  # the reference's value at worst_index
    got: float | None = None
    rule: str = ""
    problem: str | None = None
    # the float figures every output check carries (results store, dashboard): the largest
    # difference in the output's own values, and the tolerance in them (rtol is not used)
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    atol: float | None = None
    rtol: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def in_units(spec: Mapping[str, Any]) -> bool:
    """An output is compared in units when it is an integer or a dequantized float."""
    q = spec.get("quantization")
    return not np.issubdtype(np.dtype(spec["dtype"]), np.floating) or bool(q and q.get("quantized_dtype"))


def units_apart(got: np.ndarray, want: np.ndarray, quantization: Mapping[str, Any] | None) -> np.ndarray:
    """|got - want| in quantization steps (int64): integer outputs directly, dequantized floats
    divided by their scale (per channel along `axis` when there are several)."""
    if not np.issubdtype(want.dtype, np.floating):
        return np.abs(got.astype(np.int64) - want.astype(np.int64))
    scale = np.asarray((quantization or {}).get("scale") or [1.0], dtype=np.float64)
    if scale.size > 1:
        axis = int(quantization.get("axis", 1)) % want.ndim  # type: ignore[union-attr]
        scale = scale.reshape([-1 if d == axis else 1 for d in range(want.ndim)])
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64)) / scale
    return np.rint(diff).astype(np.int64)


def compare_quantized(name: str, reference: str, got: np.ndarray, want: np.ndarray,
                      quantization: Mapping[str, Any] | None,
                      tolerance_units: int = DEFAULT_TOLERANCE_UNITS) -> QuantizedCheck:
    base = dict(name=name, reference=reference, shape=list(want.shape), dtype=str(want.dtype),
                tolerance_units=tolerance_units, scale=list((quantization or {}).get("scale") or []) or None,
                rule=PASS_RULE.format(tol=tolerance_units, primary=reference))
    if got.shape != want.shape:
        return QuantizedCheck(**base, passed=False, problem=f"shape {list(got.shape)} != reference {list(want.shape)}")
    if got.dtype != want.dtype:
        return QuantizedCheck(**base, passed=False, problem=f"dtype {got.dtype} != reference {want.dtype}")
    if got.size == 0:
        return QuantizedCheck(**base, passed=True)
    if np.issubdtype(want.dtype, np.floating) and (np.any(~np.isfinite(got)) or np.any(~np.isfinite(want))):
        return QuantizedCheck(**base, passed=False, problem="a non-finite value in a dequantized output")
    units = units_apart(got, want, quantization)
    worst = np.unravel_index(int(np.argmax(units)), units.shape)
    max_units = int(units[worst])
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    rel = diff / np.maximum(np.abs(want.astype(np.float64)), np.finfo(np.float64).tiny)
    unit = float(max(base["scale"] or [1.0])) if np.issubdtype(want.dtype, np.floating) else 1.0
    return QuantizedCheck(**base, passed=max_units <= tolerance_units, differing=int(np.count_nonzero(units)),
                          max_units=max_units, worst_index=[int(i) for i in worst],
                          expected=float(want[worst]), got=float(got[worst]),
                          max_abs_err=float(diff.max()), max_rel_err=float(np.where(diff == 0, 0.0, rel).max()),
                          atol=tolerance_units * unit)


def _distance(run: ReferenceRun, primary: ReferenceRun, specs: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
    """(values that differ, largest difference in units) of one reference from the primary,
    over the outputs compared in units (float outputs count any difference as one unit)."""
    assert run.outputs is not None and primary.outputs is not None
    differing = max_units = 0
    for spec, a, b in zip(specs, run.outputs, primary.outputs):
        if a.shape != b.shape:
            return -1, -1
        if in_units(spec):
            units = units_apart(a, b, spec.get("quantization"))
        else:
            ok = np.isclose(a, b, atol=DEFAULT_ATOL, rtol=DEFAULT_RTOL)
            units = (~ok).astype(np.int64)
        differing += int(np.count_nonzero(units))
        max_units = max(max_units, int(units.max(initial=0)))
    return differing, max_units


def check_quantized(model: Path, inputs: Mapping[str, np.ndarray], got: Sequence[np.ndarray],
                    output_specs: Sequence[Mapping[str, Any]], atol: float = DEFAULT_ATOL,
                    rtol: float = DEFAULT_RTOL, tolerance_units: int = DEFAULT_TOLERANCE_UNITS,
                    ) -> tuple[list[Any], Consensus]:
    """Judge the device's outputs against the primary reference (see the module doc): outputs
    in units with `tolerance_units`, plain float outputs with atol/rtol."""
    names = reference_names(model)
    if model.suffix.lower() != ".tflite" and "onnxruntime" in names:  # QDQ ONNX: onnxruntime leads
        names = ["onnxruntime"] + [n for n in names if n != "onnxruntime"]
    runs = [try_reference(name, model, inputs, expected_outputs=len(output_specs)) for name in names]
    primary = runs[0]
    others = [r for r in runs[1:] if r.outputs is not None]
    notes: list[str] = []
    need_vm = primary.outputs is None or any(_distance(r, primary, output_specs)[1] > tolerance_units
                                             for r in others)
    if need_vm:
        log.warning("%s: %s; asking TVM's Relax VM too", model.name,
                    f"{primary.name} cannot run the model" if primary.outputs is None
                    else f"the references differ by more than {tolerance_units} unit(s)")
        runs.append(try_reference(RELAX_VM, model, inputs, expected_outputs=len(output_specs)))
    judge = primary if primary.outputs is not None else next((r for r in runs[1:] if r.outputs is not None), None)
    if judge is None:
        why = "; ".join(f"{r.name}: {r.unavailable}" for r in runs)
        raise HarnessError(f"no host reference can run the model ({why})")
    if judge is not primary:
        notes.append(f"{primary.name} cannot run this model ({primary.unavailable}): judged against {judge.name}")
    statuses = []
    for run in runs:
        if run.outputs is None:
            statuses.append(ReferenceStatus(run.name, "unavailable", run.unavailable))
            if run is not primary:  # the primary's absence has its own note above
                notes.append(f"{run.name} cannot run this model: judged without it")
        elif run is judge:
            statuses.append(ReferenceStatus(run.name, "agrees", "the primary reference: the device is judged against it"))
        else:
            differing, units = _distance(run, judge, output_specs)
            detail = (f"{differing} value(s) differ from {judge.name}, by up to {units} unit(s)" if differing
                      else f"identical to {judge.name}")
            ok = 0 <= units <= tolerance_units
            statuses.append(ReferenceStatus(run.name, "agrees" if ok else "odd one out", detail))
            if not ok:
                notes.append(f"{run.name} {detail}")
    assert judge.outputs is not None
    if len(judge.outputs) != len(got):
        raise HarnessError(f"the device returned {len(got)} outputs, {judge.name} returned {len(judge.outputs)}")
    checks: list[Any] = []
    for spec, g, w in zip(output_specs, got, judge.outputs):
        if in_units(spec):
            checks.append(compare_quantized(spec["name"], judge.name, g, w, spec.get("quantization"), tolerance_units))
        else:
            checks.append(compare_output(spec["name"], judge.name, g, w, atol=atol, rtol=rtol))
    return checks, Consensus(judges=[judge], statuses=statuses, note="; ".join(notes) or None)


def judged_in_units(model: Path, output_specs: Sequence[Mapping[str, Any]]) -> bool:
    """A .tflite model (judged against TFLM) or a model with an output compared in units."""
    return Path(model).suffix.lower() == ".tflite" or any(
        spec.get("quantization") for spec in output_specs)
