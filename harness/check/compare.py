"""Compare a device's outputs with a reference: per-output error figures and a verdict."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

DEFAULT_ATOL = 1e-5
DEFAULT_RTOL = 1e-5


@dataclass(frozen=True)
class OutputCheck:
    name: str
    reference: str
    shape: list[int]
    dtype: str
    max_abs_err: float
    max_rel_err: float
    atol: float
    rtol: float
    passed: bool
    problem: str | None = None  # set when shapes or dtypes disagree
    #: how many values are outside the tolerance, of how many
    mismatched: int = 0
    total: int = 0
    #: the value furthest outside the tolerance (or, when all are within, with the largest
    #: error): its index, the reference's value and the device's
    worst_index: list[int] | None = None
    expected: float | None = None
    got: float | None = None

    def detail(self) -> str:
        """One line for people: the errors, and on a mismatch where and by how much."""
        if self.problem and not self.total:  # shapes or dtypes differ: no values to compare
            return self.problem
        text = (f"{self.problem}; " if self.problem else "") + f"max abs {self.max_abs_err:.3g}  max rel {self.max_rel_err:.3g}  (atol {self.atol:g}, rtol {self.rtol:g})"
        if not self.passed:
            text += (f"; {self.mismatched:,} of {self.total:,} values differ, worst at {self.worst_index}: "
                     f"expected {self.expected:.9g}, got {self.got:.9g}")
        return text

    def to_dict(self) -> dict:
        return asdict(self)


def units_detail(o: Mapping[str, Any]) -> str:
    """One line for people about an output judged in quantized units (a
    harness.check.quantized.QuantizedCheck, as a dict)."""
    return o.get("problem") or (f"{o['differing']} value(s) differ, by up to {o['max_units']} unit(s) "
                                f"(pass: within {o['tolerance_units']})")


def mismatch_summary(outputs: Sequence[Mapping[str, Any]]) -> str:
    """One line for a run whose outputs did not match (a RunResult's `outputs`, as dicts): the
    first failing output against its reference, with how many values differ, or "" if none did."""
    for o in outputs:
        if o.get("passed") is False:
            if "max_units" in o:  # judged in quantized units: no float tolerances to quote
                return f"output {o.get('name')} vs {o.get('reference')}: {units_detail(o)}"
            if o.get("problem") and not o.get("total"):
                return f"output {o.get('name')} vs {o.get('reference')}: {o['problem']}"
            return (f"output {o.get('name')} vs {o.get('reference')}: {o.get('mismatched', 0):,} of "
                    f"{o.get('total', 0):,} values differ (max abs {o.get('max_abs_err', 0):.3g}, "
                    f"atol {o.get('atol', 0):g}, rtol {o.get('rtol', 0):g})")
    return ""


def compare_output(
    name: str, reference: str, got: np.ndarray, want: np.ndarray,
    atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
) -> OutputCheck:
    """|got - want| <= atol + rtol * |want| elementwise; integers and bools must match exactly."""
    base = dict(name=name, reference=reference, shape=list(want.shape), dtype=str(want.dtype))
    if got.shape != want.shape:
        return OutputCheck(**base, max_abs_err=float("inf"), max_rel_err=float("inf"), atol=atol,
                           rtol=rtol, passed=False,
                           problem=f"shape {list(got.shape)} != reference {list(want.shape)}")
    if got.dtype != want.dtype:
        return OutputCheck(**base, max_abs_err=float("inf"), max_rel_err=float("inf"), atol=atol,
                           rtol=rtol, passed=False,
                           problem=f"dtype {got.dtype} != reference {want.dtype}")
    if not np.issubdtype(want.dtype, np.floating):
        return _compare_exact(base, got, want)
    g = got.astype(np.float64)
    w = want.astype(np.float64)
    if g.size == 0:
        return OutputCheck(**base, max_abs_err=0.0, max_rel_err=0.0, atol=atol, rtol=rtol, passed=True)
    if g.ndim == 0:
        g, w = g.reshape(1), w.reshape(1)
    nan_got, nan_want = np.isnan(g), np.isnan(w)
    # NaN on one side only is the largest error there is: inf, never a NaN figure (a NaN
    # max_abs_err would print as nan and reach --json as a bare NaN)
    one_nan = nan_got != nan_want
    with np.errstate(invalid="ignore"):  # inf - inf: equal infinities are handled below
        diff = np.abs(g - w)
    # NaN against NaN and an infinity against the same infinity are equal values
    diff = np.where((nan_got & nan_want) | (np.isinf(w) & (g == w)), 0.0, diff)
    diff = np.where(one_nan, np.inf, diff)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(np.isinf(diff), np.inf, diff / np.maximum(np.abs(w), np.finfo(np.float64).tiny))
        # an infinite reference value is matched only by the same infinity (rtol * inf is inf)
        within = (diff == 0) | (np.isfinite(w) & (diff <= atol + rtol * np.abs(w)))
    bad = ~within
    passed = not bool(np.any(bad))
    problems = [text for text, found in (("NaN where the reference has a number", np.any(nan_got & ~nan_want)),
                                         ("a number where the reference has NaN", np.any(nan_want & ~nan_got)))
                if found]
    # The worst value: the one furthest beyond its allowance (a one-sided NaN counts as furthest).
    with np.errstate(invalid="ignore"):
        excess = np.where(one_nan, np.inf, diff - (atol + rtol * np.abs(np.where(np.isinf(w), 0.0, w))))
    flat = int(np.argmax(np.where(bad, excess, -np.inf))) if not passed else int(np.argmax(diff))
    where = [int(i) for i in np.unravel_index(flat, w.shape)] if want.ndim else []
    return OutputCheck(
        **base,
        max_abs_err=float(diff.max()),
        max_rel_err=float(np.where(diff == 0, 0.0, rel).max()),
        atol=atol, rtol=rtol, passed=passed,
        problem="; ".join(problems) or None,
        mismatched=int(np.count_nonzero(bad)), total=int(want.size), worst_index=where,
        expected=float(w.flat[flat]), got=float(g.flat[flat]),
    )


def _compare_exact(base: dict, got: np.ndarray, want: np.ndarray) -> OutputCheck:
    """Integers and bools: equal in their own dtype (as float64, distinct int64 or uint64
    values above 2**53 would round to one), the error figures in exact integers."""
    wrong = got != want
    abs_err = [abs(int(g) - int(w)) for g, w in zip(got[wrong].tolist(), want[wrong].tolist())]
    rel_err = [d / max(abs(int(w)), 1) for d, w in zip(abs_err, want[wrong].tolist())]
    return OutputCheck(**base, max_abs_err=float(max(abs_err, default=0)), max_rel_err=max(rel_err, default=0.0),
                       atol=0.0, rtol=0.0, passed=not abs_err)
