"""The comparison rules that decide pass/fail of a device's outputs."""

import numpy as np
import pytest

from harness.check.compare import compare_output


def test_float_within_tolerance_passes():
    want = np.array([1.0, -2.0, 1e-3], dtype=np.float32)
    got = want + np.float32(5e-6)
    check = compare_output("y", "ref", got, want, atol=1e-5, rtol=1e-5)
    assert check.passed
    assert 4e-6 < check.max_abs_err < 6e-6


def test_float_beyond_tolerance_fails_and_reports_error():
    want = np.zeros((2, 3), dtype=np.float32)
    got = want.copy()
    got[1, 2] = 1e-3
    check = compare_output("y", "ref", got, want, atol=1e-5, rtol=0)
    assert not check.passed
    assert abs(check.max_abs_err - 1e-3) < 1e-9


def test_relative_tolerance_scales_with_magnitude():
    want = np.array([1000.0], dtype=np.float32)
    got = np.array([1000.005], dtype=np.float32)
    assert compare_output("y", "ref", got, want, atol=1e-5, rtol=1e-5).passed
    assert not compare_output("y", "ref", got, want, atol=1e-5, rtol=0).passed


def test_integers_must_match_exactly():
    want = np.array([1, 2, 3], dtype=np.int32)
    assert compare_output("y", "ref", want.copy(), want).passed
    check = compare_output("y", "ref", np.array([1, 2, 4], dtype=np.int32), want, atol=10, rtol=10)
    assert not check.passed and check.atol == 0


@pytest.mark.parametrize("dtype", [np.int64, np.uint64])
def test_integers_above_2_53_are_compared_exactly(dtype):
    """2**53 and 2**53 + 1 are one float64: the comparison is in the integers themselves."""
    want = np.array([2**53 + 1, 7], dtype=dtype)
    got = np.array([2**53, 7], dtype=dtype)
    check = compare_output("y", "ref", got, want)
    assert not check.passed and check.max_abs_err == 1.0
    assert compare_output("y", "ref", want.copy(), want).passed
    big = np.array([2**63 - 1 if dtype == np.int64 else 2**64 - 1], dtype=dtype)
    assert compare_output("y", "ref", big - 1, big).max_abs_err == 1.0


def test_shape_and_dtype_mismatches_are_named():
    want = np.zeros((2, 2), dtype=np.float32)
    shape = compare_output("y", "ref", np.zeros((4,), dtype=np.float32), want)
    assert not shape.passed and "shape [4]" in shape.problem
    dtype = compare_output("y", "ref", np.zeros((2, 2), dtype=np.float64), want)
    assert not dtype.passed and "dtype float64" in dtype.problem


def test_nan_where_reference_is_finite_fails():
    want = np.array([1.0, 2.0], dtype=np.float32)
    got = np.array([1.0, np.nan], dtype=np.float32)
    check = compare_output("y", "ref", got, want)
    assert not check.passed and "NaN" in check.problem


def test_identical_infinities_pass_and_other_infinities_fail():
    want = np.array([np.inf, -np.inf, 1.0, np.nan], dtype=np.float32)
    same = compare_output("y", "ref", want.copy(), want)
    assert same.passed and same.max_abs_err == 0.0  # inf - inf is not an error of NaN
    for got in ([-np.inf, -np.inf, 1.0, np.nan], [3e38, -np.inf, 1.0, np.nan], [np.inf, -np.inf, 1.0, 0.0]):
        assert not compare_output("y", "ref", np.array(got, dtype=np.float32), want).passed, got
    # a device infinity where the reference is finite fails too, even with a large rtol
    assert not compare_output("y", "ref", np.array([np.inf], np.float32), np.array([5.0], np.float32), rtol=10).passed


def test_mismatch_summary_names_the_first_failing_output():
    """The one line a farm's FAIL row and JUnit message carry for a mismatch."""
    from harness.check.compare import mismatch_summary

    want = np.zeros((2, 3), dtype=np.float32)
    got = want.copy()
    got[1, 2] = 1e-3
    ok = compare_output("a", "onnxruntime", want, want).to_dict()
    bad = compare_output("b", "onnxruntime", got, want, atol=1e-5, rtol=0).to_dict()
    assert mismatch_summary([ok, bad]) == \
        "output b vs onnxruntime: 1 of 6 values differ (max abs 0.001, atol 1e-05, rtol 0)"
    shape = compare_output("c", "onnx-reference", np.zeros(4, np.float32), want).to_dict()
    assert mismatch_summary([shape]).startswith("output c vs onnx-reference: ") and "shape [4]" in mismatch_summary([shape])
    assert mismatch_summary([ok]) == ""
    # an int8 output is judged in units and has no float tolerances (they are None): it used to
    # raise TypeError here, in the farm's summary and JUnit report
    from harness.check.quantized import QuantizedCheck

    units = QuantizedCheck(name="y", reference="tflite-micro", shape=[1, 10], dtype="int8", passed=False,
                           differing=2, max_units=3, tolerance_units=1).to_dict()
    assert mismatch_summary([ok, units]) == \
        "output y vs tflite-micro: 2 value(s) differ, by up to 3 unit(s) (pass: within 1)"
