"""Integer kernels for quantized models (harness.compile.int8): TFLite's fixed-point
arithmetic checked against its definition, the integer kernels the MLPerf Tiny int8 models
compile to (int8 weights in params.bin, no float instruction on Cortex-M), and the QDQ ONNX
examples with integer convolutions."""

from __future__ import annotations

import math
import re
import subprocess

import numpy as np
import pytest

from harness.compile import int8
from harness.compile.model import compile_model
from harness.models import mlperf_tiny
from harness.models.tflite_builder import svdf_keyword_model


def test_quantize_multiplier_is_tflites():
    # frexp significand rounded to 31 bits; 1.0 is 0.5 * 2**1
    assert int8.quantize_multiplier(0.5) == (1 << 30, 0)
    assert int8.quantize_multiplier(1.0) == (1 << 30, 1)
    assert int8.quantize_multiplier(0.75) == (1610612736, 0)
    assert int8.quantize_multiplier(0.0) == (0, 0)
    # a significand that rounds up to 2**31 becomes 2**30 with the exponent one higher
    assert int8.quantize_multiplier(1.0 - 2.0 ** -40) == (1 << 30, 1)
    q, shift = int8.quantize_multiplier(0.0012345)
    assert abs(q * 2.0 ** (shift - 31) - 0.0012345) < 1e-12


def test_fixed_point_reference_definitions():
    srdhm = int8.srdhm_ref
    assert srdhm(int8.INT32_MIN, int8.INT32_MIN) == int8.INT32_MAX  # the one saturation
    assert srdhm(1 << 30, 1 << 30) == 1 << 29  # 0.5 * 0.5 in Q0.31
    assert srdhm(-3, 1 << 30) == -1 and srdhm(3, 1 << 30) == 2  # ties away from zero
    rdbpot = int8.rounding_divide_by_pot_ref
    assert [rdbpot(v, 1) for v in (5, -5, 6, -6, 7, -7)] == [3, -3, 3, -3, 4, -4]
    # exp in Q0.31 of Q5.26 inputs, against math.exp
    for value in (0.0, -0.1, -0.25, -1.0, -3.5, -10.0):
        got = int8.exp_on_negative_values_ref(int(value * (1 << 26))) / 2 ** 31
        assert got == pytest.approx(math.exp(value), abs=5e-7), value  # a 4th-order Taylor step


def _host_requantize(expr, n: int):
    """`expr(x, m, s)` over n int32 lanes, built by TVM for this host: (xs, ms, ss) -> list."""
    import tvm
    from tvm import te

    x, m, s = (te.placeholder((n,), "int32", name=name) for name in "xms")
    out = te.compute((n,), lambda i: expr(x[i], m[i], s[i]), name="out")
    func = te.create_prim_func([x, m, s, out]).with_attr("global_symbol", "requantize")
    with tvm.transform.PassContext(config={"tirx.disable_assert": True}):
        lib = tvm.compile(tvm.IRModule({"requantize": func}), target=tvm.target.Target({"kind": "llvm"}))

    def run(xs: np.ndarray, ms: np.ndarray, ss: np.ndarray) -> list[int]:
        got = tvm.runtime.tensor(np.zeros(n, np.int32))
        lib["requantize"](*[tvm.runtime.tensor(a) for a in (xs, ms, ss)], got)
        return got.numpy().tolist()

    return run


def test_tir_arithmetic_matches_the_definition():
    n = 1024
    requantize = _host_requantize(int8.multiply_by_quantized_multiplier, n)
    rng = np.random.default_rng(0)
    xs = rng.integers(-2 ** 31, 2 ** 31, n).astype(np.int32)
    ms = rng.integers(1 << 30, 2 ** 31, n).astype(np.int32)
    ss = rng.integers(-31, 8, n).astype(np.int32)
    # edges: the extreme accumulators, a zero shift, the largest multiplier (multipliers are
    # positive: QuantizeMultiplier's significand is in [2**30, 2**31))
    xs[:4], ms[:2], ss[:2] = [int8.INT32_MIN, int8.INT32_MAX, 0, -1], int8.INT32_MAX, 0
    want = [int8.multiply_by_quantized_multiplier_ref(int(a), int(b), int(c)) for a, b, c in zip(xs, ms, ss)]
    assert requantize(xs, ms, ss) == want


def test_narrow_rounding_matches_the_definition_where_the_host_allows_it():
    """The int32 rounding (multiply_by_quantized_multiplier_narrow) gives TFLite's result for
    every accumulator in the range narrow_rounding_is_exact admits, up to its edges."""
    n = 4096
    requantize = _host_requantize(int8.multiply_by_quantized_multiplier_narrow, n)
    rng = np.random.default_rng(1)
    ss = rng.integers(-31, 0, n).astype(np.int32)
    limit = 2 ** 30 - 1  # the largest |x| admitted
    xs = (rng.uniform(-1, 1, n) * limit).astype(np.int64)
    xs[:10] = [limit, -limit, 0, -1, 1, 5, -5, -6, -2, -3]  # tiny negatives: s = 0 > x
    xs = xs.astype(np.int32)
    ms = rng.integers(1 << 30, 2 ** 31, n).astype(np.int32)
    ms[:3], ms[3] = int8.INT32_MAX, 1 << 30  # x = -1, m = 2**30: s = 0 > x
    want = [int8.multiply_by_quantized_multiplier_ref(int(a), int(b), int(c)) for a, b, c in zip(xs, ms, ss)]
    assert requantize(xs, ms, ss) == want


def test_narrow_rounding_is_exact_only_for_right_shifts_and_bounded_sums():
    table, how = int8.requant_table(np.array([100, -200]), np.array([0.01, 0.002]))
    assert int8.narrow_rounding_is_exact(table, how, 576)  # shifts -6 and -8, small sums
    assert not int8.narrow_rounding_is_exact(table, how, 1 << 16)  # 2**16 products of 2**14
    table, how = int8.requant_table(np.array([2 ** 30 - 2 ** 10, 0]), np.array([0.01, 0.02]))
    assert not int8.narrow_rounding_is_exact(table, how, 64)  # a bias near INT32_MAX
    table, how = int8.requant_table(np.array([1, 2]), np.array([0.75, 0.01]))
    assert not int8.narrow_rounding_is_exact(table, how, 64)  # shift 0: no rounding division
    table, how = int8.requant_table(np.array([1, 2]), None)
    assert not int8.narrow_rounding_is_exact(table, how, 64)  # onnxruntime's float scales


@pytest.mark.parametrize(("channels", "bias_bound", "octaves", "shift_bytes", "inverted"), [
    # with TFLM's multipliers the biases are int32 (requant_table: TVM's vectorizer and the
    # half-word read); int16 biases are for onnxruntime's tables (the test below)
    (64, 1000, 1, True, False),  # KWS-like: bias, multiplier, an int8 shift: 9 B per channel
    (64, 1000, 1, True, True),  # the shift bytes as ~shift (for_narrow_rounding)
    (7, 2 ** 24, 1, False, False),  # an odd count, int32 shifts: 12 B per channel
    (9, 1000, 12, False, True),
    (3, 2 ** 30, 30, True, False),  # a bias near INT32_MIN, shifts from -20 to 10
    (3, 2 ** 30, 30, False, True),
    (5, 1000, 0, True, False),  # one multiplier for all (per-tensor weights): 4 B per channel + 8
])
def test_requant_table_layouts_read_back_in_the_kernel(channels, bias_bound, octaves, shift_bytes, inverted):
    """Every layout of the per-channel tables gives each channel's bias, multiplier and shift
    back exactly, on the host (read_requant_table) and in a compiled kernel (RequantReader)."""
    import tvm
    from tvm import te

    rng = np.random.default_rng(channels)
    bias = rng.integers(-bias_bound, bias_bound, channels)
    bias[0] = -bias_bound  # the extremes of the range
    real = 2.0 ** rng.uniform(-20, -20 + octaves, channels)
    tables, how = int8.requant_table(bias, real, shift_bytes=shift_bytes)
    if inverted:
        tables, how = int8.for_narrow_rounding(tables, how)
        assert how.inverted_shifts
    per_tensor = octaves == 0
    assert not how.bias16 and tables[0].shape == (how.words,) and how.per_tensor == per_tensor
    assert len(tables) == (2 if shift_bytes and not per_tensor else 1)
    pairs = [int8.quantize_multiplier(float(r)) for r in real]
    want = np.array([bias, [p[0] for p in pairs], [p[1] for p in pairs]], dtype=np.int64)
    host = int8.read_requant_table(tables, how)
    assert np.array_equal(np.array([host["bias"], host["multiplier"], host["shift"]]), want)
    # bytes per channel: bias 4, multiplier 4, shift 1 or 4 (or one multiplier and shift for all)
    per_channel = 0 if per_tensor else 4 + (1 if shift_bytes else 4)
    assert sum(t.nbytes for t in tables) <= channels * (4 + per_channel) + 8  # 2 words
    holders = [te.placeholder(t.shape, str(t.dtype), name=f"t{k}") for k, t in enumerate(tables)]
    reader = how.reader(*holders)
    out = te.compute((3, channels), lambda r, c: tvm.tirx.Select(
        r == 0, reader.bias(c), tvm.tirx.Select(r == 1, reader.multiplier(c), reader.shift(c))), name="out")
    func = te.create_prim_func([*holders, out], index_dtype_override="int64").with_attr("global_symbol", "read")
    with tvm.transform.PassContext(config={"tirx.disable_assert": True}):
        lib = tvm.compile(tvm.IRModule({"read": func}), target=tvm.target.Target({"kind": "llvm"}))
    got = tvm.runtime.tensor(np.zeros((3, channels), np.int32))
    lib["read"](*(tvm.runtime.tensor(t) for t in tables), got)
    assert np.array_equal(got.numpy(), want)


def test_requant_reader_refuses_a_missing_or_extra_shift_array():
    tables, how = int8.requant_table(np.array([1, 2]), np.array([0.01, 0.002]), shift_bytes=True)
    assert how.shift_bytes and len(tables) == 2
    with pytest.raises(ValueError, match="needs"):
        how.reader(tables[0])
    tables, how = int8.requant_table(np.array([1, 2]), np.array([0.01, 0.01]))  # per-tensor
    with pytest.raises(ValueError, match="has no"):
        how.reader(tables[0], tables[0])


@pytest.mark.parametrize(("channels", "reduction", "shift_bytes", "narrow"), [
    (64, 576, True, True),  # KWS's pointwise convs: int8 shifts, stored as ~shift
    (16, 27, False, True),  # IC's first conv: int32 shifts, ~shift
    (64, 1 << 17, False, False),  # a reduction too long for the int32 rounding: int32 shifts as they are
])
def test_kernel_requant_lays_out_shifts_by_channels_and_rounding(channels, reduction, shift_bytes, narrow):
    rng = np.random.default_rng(channels)
    real = 2.0 ** rng.uniform(-12, -8, channels)
    rq = int8.kernel_requant(rng.integers(-5000, 5000, channels), real, reduction)
    assert (rq.layout.shift_bytes, rq.narrow, rq.layout.inverted_shifts) == (shift_bytes, narrow, narrow)
    assert len(rq.tables) == (2 if shift_bytes else 1) and not rq.left_shift
    shifts = int8.read_requant_table(rq.tables, rq.layout)["shift"]
    assert shifts.tolist() == [int8.quantize_multiplier(float(r))[1] for r in real]
    stored = rq.tables[1] if shift_bytes else rq.tables[0][2 * channels:]
    assert stored.tolist() == ((-1 - shifts) if narrow else shifts).tolist()


def test_requant_table_for_onnxruntime_holds_biases_only():
    (table,), how = int8.requant_table(np.array([5, -7, 40000]), None)
    assert not how.multipliers and not how.bias16 and table.tolist() == [5, -7, 40000]
    (table,), how = int8.requant_table(np.array([5, -7, 3]), None)
    assert how.bias16 and table.shape == (2,) and int8.read_requant_table([table], how)["bias"].tolist() == [5, -7, 3]


def test_softmax_exp_table_is_trimmed_to_its_last_nonzero_and_one_zero():
    table = int8.softmax_exp_table(int8.softmax_spec(0.5))  # exp(-0.5 d) underflows Q0.31 early
    trimmed = int8.trim_exp_table(table)
    assert trimmed.size < 100 and trimmed[-1] == 0 and trimmed[-2] != 0
    assert np.array_equal(trimmed, table[: trimmed.size]) and not table[trimmed.size:].any()
    full = int8.softmax_exp_table(int8.softmax_spec(0.01))
    assert int8.trim_exp_table(full).size == 256


def test_softmax_exp_table_is_monotonic_and_exact_at_zero():
    spec = int8.softmax_spec(0.1447)
    table = int8.softmax_exp_table(spec)
    assert table[0] == int8.INT32_MAX and np.all(np.diff(table.astype(np.int64)) <= 0)
    assert table[10] / 2 ** 31 == pytest.approx(math.exp(-10 * 0.1447), abs=1e-6)


# --- the MLPerf Tiny int8 models -----------------------------------------------------------------

@pytest.fixture(scope="module")
def mlperf(tmp_path_factory):
    why = mlperf_tiny.available()
    if why:
        pytest.skip(why)
    return mlperf_tiny.write_mlperf_tiny(tmp_path_factory.mktemp("mlperf_tiny"), mlperf_tiny.INT8_MODELS)


def _weights_and_biases(path) -> tuple[int, int]:
    """Bytes of the model's int8 weights and int32 biases, and the number of biases (output
    channels), from the flatbuffer itself."""
    import tflite

    model = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
    graph = model.Subgraphs(0)
    total = channels = 0
    seen = set()
    for k in range(graph.OperatorsLength()):
        for t in graph.Operators(k).InputsAsNumpy()[1:]:
            tensor = graph.Tensors(int(t)) if t >= 0 else None
            if tensor is None or t in seen or model.Buffers(tensor.Buffer()).DataLength() == 0:
                continue
            seen.add(t)
            size = int(np.prod(tensor.ShapeAsNumpy()))
            total += size * {9: 1, 2: 4}.get(tensor.Type(), 0)  # INT8, INT32
            channels += size if tensor.Type() == 2 else 0
    return total, channels


@pytest.mark.parametrize("model", mlperf_tiny.INT8_MODELS)
def test_int8_model_keeps_int8_weights(mlperf, model):
    artifact = compile_model(mlperf[model], "x86_64")
    params = artifact.params()
    assert not any(a.dtype == np.float32 for a in params.values()), "a float weight in a full-integer model"
    int8_bytes = sum(a.nbytes for a in params.values() if a.dtype == np.int8)
    weights, channels = _weights_and_biases(mlperf[model])
    size = artifact.params_bin.stat().st_size
    print(f"{model}: params.bin {size} B, int8 weights + int32 biases {weights} B ({size / weights:.3f}x), "
          f"int8 {int8_bytes} B, {channels} output channels")
    # every int8 weight is there once, as int8 (beside the int8 shifts); besides, per output
    # channel a bias, Q31 multiplier and shift (harness.compile.int8.RequantLayout: 9 B with an
    # int8 shift in layers of 64 channels or more that round in int32, else 12 B, 4 when one
    # multiplier serves all; TFLM's flatbuffer
    # keeps 12 B per channel besides the bias: a float scale and an int64 zero point); per
    # tensor its name, dtype and size (~20 B) and padding to 64 bytes.
    assert int8_bytes <= weights
    # The bound, 10% over the weights and biases (VWW 1.096x, IC 1.043x, AD 1.004x).
    # KWS (24 KB of weights, 590 channels) misses it, at 1.165x: its 576 Q31 multipliers are
    # 2,304 B (9.5%), its shifts 576 B, its softmax exp table 504 B, the container ~460 B; a
    # narrower multiplier would not be bit-exact with TFLM.
    assert size <= weights * {"mlperf-kws": 1.17}.get(model, 1.10)


def _cortex_m_kernels_float_code(artifact, expected: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The float instructions and float library calls in a Cortex-M artifact's kernels
    (disassembled), after checking the `expected` kernels are there."""
    assert set(artifact.metadata["kernels"]), "no kernels"
    dump = subprocess.run(["arm-none-eabi-objdump", "-d", "-r", str(artifact.dir / "kernels.o")],
                          capture_output=True, text=True, check=True).stdout
    assert all(name in dump for name in expected), (expected, artifact.metadata["kernels"])
    # per function; TVM emits its fp16 conversion helpers into every object (weak, unused here)
    functions = re.split(r"^[0-9a-f]+ <([^>]+)>:$", dump, flags=re.MULTILINE)
    kernels = {name: body for name, body in zip(functions[1::2], functions[2::2])
               if name not in ("__truncsfhf2", "__extendhfsf2")}
    assert any(name.startswith("__tvm_ffi_") for name in kernels), sorted(kernels)
    code = "\n".join(kernels.values())
    floats = re.findall(r"^\s*[0-9a-f]+:.*\b(v[a-z]+\.f(?:32|64)|vcvt\S*|vmov\s+s\d+.*)$", code, re.MULTILINE)
    calls = re.findall(r"\b(__aeabi_[fd]\w+|expf?|logf?|__(?:add|sub|mul|div)[sd]f3)\b", code)
    return floats, sorted(set(calls))


def test_fully_quantized_cortex_m_kernels_have_no_float_instruction(mlperf):
    artifact = compile_model(mlperf["mlperf-kws"], "cortex-m4-qemu")
    floats, calls = _cortex_m_kernels_float_code(artifact, ("int8_conv2d", "int8_softmax"))
    assert not floats and not calls, (floats[:5], calls)


def test_svdf_keyword_model_cortex_m_kernels_have_no_float_instruction(tmp_path):
    """A model shaped like TFLM's keyword benchmark (int16 in, SVDF, int16 softmax, int32 out)
    compiles to integer kernels only."""
    path = tmp_path / "svdf_keyword.tflite"
    path.write_bytes(svdf_keyword_model(np.random.default_rng(19)).to_bytes())
    artifact = compile_model(path, "cortex-m4-qemu")
    floats, calls = _cortex_m_kernels_float_code(artifact, ("int8_svdf", "int8_softmax", "int8_requantize"))
    assert not floats and not calls, (floats[:5], calls)


def test_input_zero_point_folds_into_the_bias_exactly():
    # sum((x - zp) * w) + bias == sum(x * w) + folded bias, in int32's wrapping arithmetic,
    # and a padded tap holding zp adds nothing: the kernels multiply raw int8 values
    rng = np.random.default_rng(1)
    w = rng.integers(-128, 128, (6, 3, 3, 5)).astype(np.int8)
    x = rng.integers(-128, 128, (3, 3, 5)).astype(np.int8)
    x[0, :, :] = 9  # a padded row: the zero point
    bias = rng.integers(-2 ** 31, 2 ** 31, 6, dtype=np.int64).astype(np.int32)
    bias[0] = int8.INT32_MAX  # the fold wraps
    folded = int8.fold_input_zero_point(bias, w, 9, (1, 2, 3))
    assert folded.dtype == np.int32
    for oc in range(6):
        want = int(((x.astype(np.int64) - 9) * w[oc]).sum()) + int(bias[oc])
        got = int((x.astype(np.int64) * w[oc]).sum()) + int(folded[oc])
        assert (want - got) % (1 << 32) == 0, oc


def test_one_channel_conv_with_taps_innermost_matches_the_definition():
    """KWS's first conv (one input channel, 10x4 kernel, stride 2, padded with the input zero
    point) in _conv2d_one_channel_te's form, with the int32 rounding, scheduled and compiled,
    gives TFLite's result for every output, as conv2d_te's general form does."""
    import tvm
    from tvm import te

    from harness.compile import schedule

    rng = np.random.default_rng(3)
    w = rng.integers(-128, 128, (8, 10, 4, 1)).astype(np.int8)
    x = rng.integers(-128, 128, (1, 49, 10, 1)).astype(np.int8)
    bias = rng.integers(-5000, 5000, 8)
    zero_in, zero_out = -7, 3
    table, how = int8.requant_table(int8.fold_input_zero_point(bias, w, zero_in, (1, 2, 3)),
                                    2.0 ** rng.uniform(-12, -8, 8), shift_bytes=True)
    spec = int8.ConvSpec((2, 2), (4, 1, 5, 1), (1, 1), 1, "NHWC", zero_in, zero_out, left_shift=False,
                         narrow=int8.narrow_rounding_is_exact(table, how, 40))
    assert spec.narrow and int8.taps_innermost_fits(x.shape, w, spec)
    table, how = int8.for_narrow_rounding(table, how)  # the shift bytes as ~shift, as the compiler stores them
    assert how.shift_bytes and how.inverted_shifts
    # the definition: (x - zero_in) * w over the image padded with zero_in, TFLite's rounding
    padded = np.pad(x[0, :, :, 0].astype(np.int64) - zero_in, ((4, 5), (1, 1)))
    values = int8.read_requant_table(table, how)
    want = np.zeros((1, 25, 5, 8), np.int8)
    for y, xx, oc in np.ndindex(25, 5, 8):
        acc = int((padded[2 * y:2 * y + 10, 2 * xx:2 * xx + 4] * w[oc, :, :, 0]).sum()) + int(bias[oc])
        q = int8.multiply_by_quantized_multiplier_ref(acc, int(values["multiplier"][oc]), int(values["shift"][oc]))
        want[0, y, xx, oc] = min(max(q + zero_out, -128), 127)
    for taps, weights in ((False, w), (True, w.reshape(8, 10, 1, 4))):
        xp, wp, *tp = (te.placeholder(a.shape, str(a.dtype), name=f"a{k}") for k, a in enumerate((x, weights, *table)))
        y = int8.conv2d_te(xp, wp, how.reader(*tp), int8.replace(spec, taps_innermost=taps), int8.TFLM)
        func, _ = schedule.schedule_kernel(te.create_prim_func([xp, wp, *tp, y]), 1)
        with tvm.transform.PassContext(config={"tirx.disable_assert": True}):
            lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                              target=tvm.target.Target({"kind": "llvm"}))
        got = tvm.runtime.tensor(np.zeros((1, 25, 5, 8), np.int8))
        lib["main"](*(tvm.runtime.tensor(a) for a in (x, weights, *table)), got)
        assert np.array_equal(got.numpy(), want), taps
    assert len(np.unique(want)) > 20  # not all clamped


def test_dsp_targets_are_armv7e_m():
    from harness.compile.schedule import has_dsp
    from harness.config.targets import load_target

    assert has_dsp(load_target("cortex-m4-qemu").tvm_target) and has_dsp(load_target("cortex-m7-qemu").tvm_target)
    assert not has_dsp(load_target("cortex-m3-qemu").tvm_target)  # ARMv7-M: no DSP extension
    assert not has_dsp(load_target("qemu-armv7").tvm_target) and not has_dsp(load_target("x86_64").tvm_target)


def _functions(obj) -> dict[str, str]:
    dump = subprocess.run(["arm-none-eabi-objdump", "-d", str(obj)], capture_output=True, text=True, check=True).stdout
    parts = re.split(r"^[0-9a-f]+ <([^>]+)>:$", dump, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2]))


def test_cortex_m4_int8_kernels_use_smlad_and_cortex_m3_kernels_do_not(mlperf):
    # KWS's pointwise convolutions (64 input channels), its first conv (one input channel: 4
    # taps of a kernel row per word) and its dense layer multiply 4 int8 pairs per
    # SXTB16/SMLAD step on ARMv7E-M; the Cortex-M3 has no DSP extension
    m4 = compile_model(mlperf["mlperf-kws"], "cortex-m4-qemu")
    tiled = {k: v["detail"] for k, v in m4.metadata["schedules"].items() if "SMLAD" in v.get("detail", "")}
    assert len([k for k in tiled if "conv2d" in k]) == 2 and any("dense" in k for k in tiled), m4.metadata["schedules"]
    bodies = _functions(m4.dir / "kernels.o")
    for kernel in tiled:
        code = "\n".join(body for name, body in bodies.items() if kernel in name)
        assert re.search(r"\bsmlad\b", code) and re.search(r"\bsxtb16\b.*ror #8", code), kernel
    m3 = compile_model(mlperf["mlperf-kws"], "cortex-m3-qemu")
    assert not any("SMLAD" in v.get("detail", "") for v in m3.metadata["schedules"].values())
    assert not re.search(r"\b(smlad|sxtb16)\b", "\n".join(_functions(m3.dir / "kernels.o").values()))


@pytest.mark.parametrize("model", mlperf_tiny.INT8_MODELS)
def test_every_cortex_m4_int8_conv_and_dense_kernel_gets_the_int8_schedule(mlperf, model):
    # a kernel the int8 rule refuses falls back to inlining: scalar loops and whole-tensor
    # int32 accumulators as workspace (ResNet-8's padded 3x3 convolutions did: 84 KB)
    artifact = compile_model(mlperf[model], "cortex-m4-qemu")
    schedules = artifact.metadata["schedules"]
    macs = {k: v for k, v in schedules.items() if "conv2d" in k or "dense" in k}
    assert macs and all(v["detail"].startswith("int8 ") for v in macs.values()), schedules
    assert any("SMLAD" in v["detail"] for v in macs.values()), schedules
    assert artifact.metadata["workspace_bytes"] <= 4096, artifact.metadata["workspace_bytes"]


def test_int8_simd_steps_are_avx2_on_x86_64_and_neon_on_armv7():
    from harness.compile.schedule import AVX2_PAIRS16, NEON_PAIRS8, int8_pairs_intrinsic
    from harness.config.targets import load_target

    assert int8_pairs_intrinsic(load_target("x86_64").tvm_target) == (AVX2_PAIRS16, 8)
    assert int8_pairs_intrinsic(load_target("qemu-armv7").tvm_target) == (NEON_PAIRS8, 4)
    for name in ("cortex-m4-qemu", "cortex-m3-qemu"):  # Cortex-M: SMLAD (has_dsp) or scalar
        assert int8_pairs_intrinsic(load_target(name).tvm_target) is None


# per target: objdump, the dot-product step's instructions (a reduction over input channels),
# the channel-vector step's (depthwise convs, KWS's one-channel first conv: int16 products,
# of two widened vectors or of a vector and a broadcast byte, added widened), as patterns
SIMD_INSTRUCTIONS = {
    "x86_64": ("objdump", ["vpmaddwd", "vpmovsxbw"], ["vpmullw", "vpmovsxwd"]),
    "qemu-armv7": ("arm-linux-gnueabihf-objdump", [r"vmull\.s8", r"vpadal\.s16"],
                   [r"vmull\.s8|vmul\.i16", r"vaddw\.s16"]),
}


@pytest.mark.parametrize("target_name", sorted(SIMD_INSTRUCTIONS))
def test_kws_int8_kernels_use_the_targets_simd_multiply_accumulate(mlperf, target_name):
    # every conv and dense kernel of KWS gets an int8 SIMD schedule, and its disassembly has
    # the instructions the schedule's step stands for (not LLVM's int32 fallback: vpmulld on
    # sign-extended dwords, vmovl.s16 + vmla.i32)
    objdump, dot, lanes = SIMD_INSTRUCTIONS[target_name]
    artifact = compile_model(mlperf["mlperf-kws"], target_name)
    schedules = artifact.metadata["schedules"]
    macs = {k: v["detail"] for k, v in schedules.items() if "conv2d" in k or "dense" in k}
    assert macs and all(d.startswith("int8 ") for d in macs.values()), schedules
    dump = subprocess.run([objdump, "-d", str(artifact.dir / "kernels.o")], capture_output=True, text=True,
                          check=True).stdout
    parts = re.split(r"^[0-9a-f]+ <([^>]+)>:$", dump, flags=re.MULTILINE)
    bodies = dict(zip(parts[1::2], parts[2::2]))
    kinds = set()
    for kernel, detail in macs.items():
        # the exported wrapper and the body it calls (a parallel kernel's is `<name>_compute_`)
        code = "\n".join(body for name, body in bodies.items() if name in (f"__tvm_ffi_{kernel}", f"{kernel}_compute_"))
        assert code, (kernel, sorted(bodies))
        want = lanes if "output channels (vector)" in detail else dot
        kinds.add("lanes" if want is lanes else "dot")
        missing = [op for op in want if not re.search(rf"\s(?:{op})\s", code)]
        assert not missing, (target_name, kernel, detail, missing)
        assert not re.search(r"\s(vpmulld|vmla\.i32)\s", code), (kernel, "int32 multiplies")
    assert kinds == {"lanes", "dot"}, macs


@pytest.mark.parametrize(("shape", "weight", "groups", "strides", "padding", "rule"), [
    ((1, 9, 7, 32), (16, 1, 1, 32), 1, (1, 1), (0, 0, 0, 0), "across channels, 1 pixels x 16"),  # pointwise
    ((1, 5, 5, 6), (24, 1, 1, 6), 1, (1, 1), (0, 0, 0, 0), "across channels, 5 pixels x 8"),  # 3 vectors of 8
    ((1, 8, 8, 16), (16, 3, 3, 16), 1, (2, 2), (1, 1, 1, 1), "across channels"),  # 3x3, padded, strided
    ((1, 3, 3, 32), (16, 1, 1, 32), 1, (1, 1), (0, 0, 0, 0), "partial sums"),  # too few pixels to copy weights
    ((1, 9, 6, 32), (32, 3, 3, 1), 32, (1, 1), (1, 1, 1, 1), "depthwise"),  # depthwise
    ((1, 9, 6, 8), (8, 3, 3, 1), 8, (2, 1), (1, 1, 1, 1), "x 8 output channels (vector)"),  # depthwise, 8
    ((1, 10, 6, 3), (16, 3, 3, 3), 1, (2, 2), (0, 1, 1, 0), "(vector)"),  # 3 input channels
    ((1, 6, 6, 32), (32, 1, 1, 16), 2, (1, 1), (0, 0, 0, 0), "vpmaddwd"),  # 2 groups of 16 channels
    ((1, 6, 6, 32), (32, 3, 3, 8), 4, (1, 1), (1, 1, 1, 1), "across channels"),  # groups of 8
    ((1, 3, 3, 32), (32, 3, 3, 8), 4, (1, 1), (1, 1, 1, 1), "tile "),  # groups of 8, 9 pixels: the float rules' tile
])
def test_x86_64_int8_simd_schedules_compute_the_kernel_exactly(shape, weight, groups, strides, padding, rule):
    """Each SIMD int8 tiling (and the float rules' tile where none fits) gives the unscheduled
    kernel's int8 outputs exactly, on this host (x86_64, AVX2)."""
    import tvm
    from tvm import te

    from harness.compile.schedule import (
        int8_pairs_intrinsic,
        schedule_kernel,
        simd_lanes,
    )
    from harness.config.targets import load_target

    rng = np.random.default_rng(len(shape) + weight[0] + groups)
    target = tvm.target.Target(load_target("x86_64").tvm_target)
    table, layout = int8.requant_table(rng.integers(-5000, 5000, weight[0]), 2.0 ** rng.uniform(-12, -8, weight[0]))
    spec = int8.ConvSpec(strides=strides, padding=padding, dilation=(1, 1), groups=groups, layout="NHWC",
                         zero_in=-3, zero_out=5)
    x, w, *t = (te.placeholder(s, d, name=f"a{k}") for k, (s, d) in enumerate(
        ((shape, "int8"), (weight, "int8"), *((a.shape, str(a.dtype)) for a in table))))
    out = int8.conv2d_te(x, w, layout.reader(*t), spec, int8.TFLM)
    func = te.create_prim_func([x, w, *t, out])
    scheduled, how = schedule_kernel(func, simd_lanes(target), False, False, int8_simd=int8_pairs_intrinsic(target))
    assert rule in how.detail, how
    args = [rng.integers(-128, 128, shape).astype(np.int8), rng.integers(-128, 128, weight).astype(np.int8), *table]
    results = []
    for prim in (func, scheduled):
        with tvm.transform.PassContext(config={"tirx.disable_assert": True}):
            lib = tvm.compile(tvm.IRModule({"main": prim.with_attr("global_symbol", "main")}), target=target)
        got = tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], np.int8))
        lib["main"](*[tvm.runtime.tensor(a) for a in args], got)
        results.append(got.numpy())
    assert np.array_equal(results[0], results[1]) and len(np.unique(results[0])) > 10
