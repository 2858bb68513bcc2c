"""Integer kernels for quantized models: a Relax dataflow-pattern rewrite before legalization.

TVM's frontends import a quantized operator as dequantize -> float operator -> quantize, and
legalization then computes it in float with the int8 weights folded back into float32. This
pass matches those chains (tvm.relax.dpl) and replaces each with one integer kernel (a TE
compute, called through call_tir): int8 inputs and int8 weights, products accumulated in
int32, then requantized to int8 with the source format's arithmetic:

- "tflm" (.tflite): TFLite Micro's reference kernels. The real multiplier of each output
  channel (input scale x weight scale / output scale, in double) becomes a Q31 multiplier and
  a power-of-two shift on the host (TFLite's QuantizeMultiplier); on the device the int32
  accumulator goes through gemmlowp's saturating rounding doubling high multiply and a
  rounding right shift, in 32/64-bit integers inside the kernel. Add, average pooling and
  softmax follow TFLM's integer definitions too, so the outputs match TFLM bit for bit.
- "onnxruntime" (QDQ ONNX): onnxruntime computes a QDQ graph as written, in float32, and
  rounds half to even when it quantizes; the kernels requantize the exact int32 accumulator
  the same way (within a unit of it: onnxruntime's float sum rounds on the way).

Weights stay int8 in params.bin; per output channel the kernels read bias and multiplier
from one int32 table per layer and the shift from an int8 array, laid out to take the fewest
bytes (RequantLayout). An operator with no integer kernel here stays on the float path,
logged once per operator.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)

TFLM = "tflm"
ONNXRUNTIME = "onnxruntime"
INT32_MIN = -(2 ** 31)
INT32_MAX = 2 ** 31 - 1


# ---------------------------------------------------------------------------------------------
# Host side: real multipliers -> Q31 multiplier and shift (compile time)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """A positive real multiplier as (Q31 significand, power-of-two exponent) with
    real ~= significand * 2**(exponent - 31): TFLite's QuantizeMultiplier (frexp, then the
    significand rounded half away from zero to 31 bits)."""
    if real == 0.0:
        return 0, 0
    significand, exponent = math.frexp(real)
    q = math.floor(abs(significand) * (1 << 31) + 0.5) * (1 if significand >= 0 else -1)
    if q == 1 << 31:
        q //= 2
        exponent += 1
    if exponent < -31:
        return 0, 0
    if exponent > 30:
        return INT32_MAX, 30
    return q, exponent


INT16_MIN, INT16_MAX = -(2 ** 15), 2 ** 15 - 1
#: Each integer type's range (saturation bounds)
INT_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (INT16_MIN, INT16_MAX), "int32": (INT32_MIN, INT32_MAX)}


@dataclass(frozen=True)
class RequantLayout:
    """Where a kernel finds each output channel's bias, Q31 multiplier and shift, chosen per
    layer at compile time to take the fewest bytes (these tables are most of what params.bin
    holds beyond the weights: 12 B per channel laid out plainly). A flat int32 table:

    - biases: int32 words, or two int16 per word (channel 2k in the low half) when every bias
      fits in 16 bits;
    - then (absent for onnxruntime's arithmetic, which takes float scales) an int32 Q31
      multiplier per channel; or, when every channel has the same multiplier and shift
      (per-tensor weights, as in most fully connected layers), the one multiplier and the one
      shift (2 words).

    With per-channel multipliers in a layer of SHIFT_BYTES_MIN_CHANNELS or more whose kernel
    rounds in int32 (kernel_requant), the shifts are a second kernel argument, one int8 per
    channel (`shift_bytes`), else int32 words after the multipliers. A byte load costs what the
    word load did, where four int8 shifts packed in one
    int32 word took ~15 more Cortex-M4 instructions per output to unpack (KWS 8.31 M -> 9.39 M,
    VWW 22.8 M -> 25.5 M), and packing the shift into the multiplier word's two spare bits (the
    significand has bit 30 set) cost 12% more (16.9 M -> 18.9 M); nor would two bits hold VWW's
    shifts, which span up to 31 octaves in a layer (its dead channels' -31 beside -3). The
    shift in the low byte of a 24-bit bias's word (one load for both, the bias an operand
    shift of the add) took 4 B less per channel than int32 words but cost KWS +0.75% M4
    instructions against int32 words (6.79 M), where the int8 array saved 1.1%; in layers
    under 64 channels it cost VWW 0.9% and IC 0.03% against int32 words: not done.

    2 to 12 B per channel.
    """

    channels: int
    bias16: bool
    multipliers: bool
    per_tensor: bool = False
    # per-channel shifts: an int8 array of their own (a second kernel argument), else int32
    # words after the multipliers
    shift_bytes: bool = False
    # the shifts are stored as ~shift = -1 - shift, the int32 rounding's right shift less one
    # (for_narrow_rounding): the narrow kernel then shifts by the value as loaded
    inverted_shifts: bool = False

    @property
    def bias_words(self) -> int:
        return (self.channels + 1) // 2 if self.bias16 else self.channels

    @property
    def words(self) -> int:
        if not self.multipliers:
            return self.bias_words
        if self.per_tensor:
            return self.bias_words + 2
        return self.bias_words + self.channels * (1 if self.shift_bytes else 2)

    def reader(self, table: Any, shifts: Any = None) -> RequantReader:
        if self.shift_bytes != (shifts is not None):  # one more kernel argument, or one less
            raise ValueError(f"this layout {'needs' if self.shift_bytes else 'has no'} int8 shift array")
        return RequantReader(self, table, shifts)


@dataclass(frozen=True)
class RequantReader:
    """A kernel's view of its tables (TE placeholders): TIR expressions for a channel's values."""

    layout: RequantLayout
    table: Any
    shifts: Any = None  # int8 per channel (layout.shift_bytes)

    def bias(self, channel: Any) -> Any:
        if not self.layout.bias16:
            return self.table[channel]
        # the channel's half down, then sign-extended (no shift of a negative value)
        down = (channel % 2).astype("int32") * _c(16)
        return (self.table[channel // 2] >> down).astype("int16").astype("int32")

    def multiplier(self, channel: Any) -> Any:
        return self.table[self.layout.bias_words + (0 if self.layout.per_tensor else channel)]

    def shift(self, channel: Any) -> Any:
        if self.layout.per_tensor:
            return self.table[self.layout.bias_words + 1]
        if self.layout.shift_bytes:
            stored = self.shifts[channel].astype("int32")
        else:
            stored = self.table[self.layout.bias_words + self.layout.channels + channel]
        return _c(-1) - stored if self.layout.inverted_shifts else stored


#: The fewest output channels whose shifts take an int8 array of their own (kernel_requant). On
#: a Cortex-M4, LLVM indexes the table per channel instead of off one base beside the byte
#: array, and reloads its pointer: in every layer that cost IC +1.1% and VWW +0.2% emulated
#: instructions against int32 words; from 64 channels on, IC -0.7%, VWW -1.2%, KWS -1.1%.
SHIFT_BYTES_MIN_CHANNELS = 64


def requant_table(bias: np.ndarray, real_multipliers: np.ndarray | None,
                  shift_bytes: bool = False) -> tuple[list[np.ndarray], RequantLayout]:
    """The arrays a kernel reads per output channel (see RequantLayout) and their layout: the
    int32 table of the bias with, for TFLM's arithmetic, the Q31 multiplier and shift of each
    real multiplier (None: onnxruntime's arithmetic, bias only); with per-channel multipliers
    and `shift_bytes`, the shifts as an int8 array after it."""
    bias = np.asarray(bias).astype(np.int64).reshape(-1)
    channels = bias.size
    # int16 biases only beside onnxruntime's float scales: with TFLM's requantization TVM
    # 0.27's vectorizer fails on the half-word read (lanes of two widths), and the biases,
    # with the input zero point folded in, seldom fit 16 bits anyway
    bias16 = (real_multipliers is None and bool(channels)
              and int(bias.min()) >= INT16_MIN and int(bias.max()) <= INT16_MAX)
    if bias16:
        halves = np.zeros(2 * ((channels + 1) // 2), dtype=np.int16)
        halves[:channels] = bias
        words = [halves.view("<u4").astype(np.int64)]
    else:
        words = [bias]
    if real_multipliers is None:
        return [_int32_words(words)], RequantLayout(channels, bias16, multipliers=False)
    pairs = [quantize_multiplier(float(m)) for m in real_multipliers]
    if channels and len(set(pairs)) == 1:
        words.append(np.array(pairs[0], dtype=np.int64))
        return [_int32_words(words)], RequantLayout(channels, bias16, multipliers=True, per_tensor=True)
    multipliers = np.array([p[0] for p in pairs], dtype=np.int64)
    # quantize_multiplier's exponents lie in [-31, 30]: an int8 each
    shifts = np.array([p[1] for p in pairs], dtype=np.int64)
    layout = RequantLayout(channels, bias16, multipliers=True, shift_bytes=shift_bytes)
    if shift_bytes:
        return [_int32_words([bias, multipliers]), shifts.astype(np.int8)], layout
    return [_int32_words([bias, multipliers, shifts])], layout


@dataclass(frozen=True)
class KernelRequant:
    """A conv's or dense's requantization tables as its kernel reads them, and how it rounds."""

    tables: list[np.ndarray]
    layout: RequantLayout
    left_shift: bool = True  # some channel's shift is positive
    narrow: bool = False  # narrow_rounding_is_exact


def kernel_requant(bias: np.ndarray, real_multipliers: np.ndarray | None, reduction: int) -> KernelRequant:
    """The tables for a conv or dense kernel of `reduction` int8 products per output. When the
    kernel rounds in int32 (narrow_rounding_is_exact) the shifts are stored as ~shift
    (for_narrow_rounding), as an int8 array in layers of SHIFT_BYTES_MIN_CHANNELS or more. The
    64-bit rounding keeps int32 words: ARMv7's NEON requantization widens int8 shifts to 64-bit
    lanes through scalar moves (VWW's layers with a shift of 0 took 8.30 M -> 8.51 M qemu-armv7
    instructions with int8 shifts, for 3.9 KB of params)."""
    tables, layout = requant_table(bias, real_multipliers)
    if real_multipliers is None:
        return KernelRequant(tables, layout)
    narrow = narrow_rounding_is_exact(tables, layout, reduction)
    left = _any_left_shift(tables, layout)
    if narrow and int(np.size(bias)) >= SHIFT_BYTES_MIN_CHANNELS:
        tables, layout = requant_table(bias, real_multipliers, shift_bytes=True)
    if narrow:
        tables, layout = for_narrow_rounding(tables, layout)
    return KernelRequant(tables, layout, left, narrow)


def _int32_words(parts: list[np.ndarray]) -> np.ndarray:
    """Words given as integers (signed or unsigned 32-bit values) -> one int32 array."""
    return (np.concatenate(parts).astype(np.int64) & 0xFFFFFFFF).astype(np.uint32).view(np.int32)


def read_requant_table(tables: list[np.ndarray], layout: RequantLayout) -> dict[str, np.ndarray]:
    """The tables' values per channel (bias, and multiplier and shift when they have them), as
    the kernels decode them: the host's mirror of RequantReader, for tests and reports."""
    words = np.asarray(tables[0], dtype=np.int32)
    c, at = layout.channels, layout.bias_words
    bias = words[:at].view(np.int16)[:c].astype(np.int32) if layout.bias16 else words[:c]
    out = {"bias": bias}
    if layout.multipliers:
        if layout.per_tensor:
            out["multiplier"] = np.full(c, words[at], dtype=np.int32)
            out["shift"] = np.full(c, words[at + 1], dtype=np.int32)
        else:
            out["multiplier"] = words[at : at + c]
            shifts = np.asarray(tables[1], dtype=np.int8) if layout.shift_bytes else words[at + c : at + 2 * c]
            out["shift"] = (~shifts if layout.inverted_shifts else shifts).astype(np.int32)
    return out


def for_narrow_rounding(tables: list[np.ndarray], layout: RequantLayout) -> tuple[list[np.ndarray], RequantLayout]:
    """The tables of a kernel that rounds in int32 (narrow_rounding_is_exact), with its
    per-channel shifts stored as ~shift, the amount that kernel shifts right by: one instruction
    less per output channel and tile than negating the shift in the kernel."""
    if not layout.multipliers or layout.per_tensor or layout.inverted_shifts:
        return tables, layout
    if layout.shift_bytes:
        return [tables[0], ~np.asarray(tables[1], dtype=np.int8)], replace(layout, inverted_shifts=True)
    words = np.array(tables[0], dtype=np.int32)
    at = layout.bias_words + layout.channels
    words[at:] = ~words[at:]
    return [words], replace(layout, inverted_shifts=True)


def _any_left_shift(tables: list[np.ndarray], layout: RequantLayout) -> bool:
    """Whether some channel's requantization shifts left (shift > 0): without one, the kernels
    leave the left shift out."""
    return layout.multipliers and bool(np.any(read_requant_table(tables, layout)["shift"] > 0))


# ---------------------------------------------------------------------------------------------
# The fixed-point arithmetic, twice: in Python integers (host: tables computed at compile
# time, and the yardstick the tests hold the kernels to) and as TIR expressions (device).
# Each operand is read several times; the expressions stay small because operands are
# buffer reads (bound with a Let they would be duplicated by vectorization and TVM's bound
# analysis rejects that).


def srdhm_ref(a: int, b: int) -> int:
    """gemmlowp's SaturatingRoundingDoublingHighMul: the high 32 bits of 2*a*b, rounded to
    nearest (ties away from zero), saturating the one overflow (INT32_MIN * INT32_MIN)."""
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudged = ab + ((1 << 30) if ab >= 0 else 1 - (1 << 30))
    return (abs(nudged) >> 31) * (1 if nudged >= 0 else -1)  # divided by 2**31, toward zero


def rounding_divide_by_pot_ref(x: int, exponent: int) -> int:
    """gemmlowp's RoundingDivideByPOT: x / 2**exponent rounded to nearest, ties away from zero."""
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def multiply_by_quantized_multiplier_ref(x: int, multiplier: int, shift: int) -> int:
    """TFLite's MultiplyByQuantizedMultiplier: x * multiplier * 2**(shift - 31), rounded
    (x shifted left in int32, wrapping as the C code does)."""
    shifted = _wrap32(x * (1 << max(shift, 0)))
    return rounding_divide_by_pot_ref(srdhm_ref(shifted, multiplier), max(-shift, 0))


def _wrap32(v: int) -> int:
    return (v + (1 << 31)) % (1 << 32) - (1 << 31)


def _c(value: int, dtype: str = "int32") -> Any:
    import tvm

    return tvm.tirx.const(value, dtype)


def _select(cond: Any, a: Any, b: Any) -> Any:
    import tvm

    return tvm.tirx.Select(cond, a, b)


def srdhm(a: Any, b: Any) -> Any:
    """srdhm_ref in TIR, in one 64-bit expression: for every product, adding the nudge and
    truncating toward zero equals (a*b + 2**30) >> 31 with an arithmetic shift. The
    saturation (a == b == INT32_MIN) is left out: every multiplier in these kernels is
    positive or a constant other than INT32_MIN. (Each operand read once: TVM's simplifier
    is slow on expressions that repeat theirs.)"""
    return ((a.astype("int64") * b.astype("int64") + _c(1 << 30, "int64")) >> _c(31, "int64")).astype("int32")


def rounding_divide_by_pot(x: Any, exponent: Any) -> Any:
    """rounding_divide_by_pot_ref in TIR: (x + 2**(e-1) - [x < 0]) >> e, in 64 bits (no
    overflow near INT32_MAX), x unchanged for e = 0."""
    import tvm

    wide = x.astype("int64")
    if isinstance(exponent, int):
        if exponent == 0:
            return x
        nudge = _c(1 << (exponent - 1), "int64") - _select(wide < _c(0, "int64"), _c(1, "int64"), _c(0, "int64"))
        return ((wide + nudge) >> _c(exponent, "int64")).astype("int32")
    e = exponent.astype("int64")
    half = (_c(1, "int64") << tvm.tirx.max(e - _c(1, "int64"), _c(0, "int64")))
    nudge = _select(e > _c(0, "int64"), half - _select(wide < _c(0, "int64"), _c(1, "int64"), _c(0, "int64")),
                    _c(0, "int64"))
    return ((wide + nudge) >> e).astype("int32")


def multiply_by_quantized_multiplier(x: Any, multiplier: Any, shift: Any) -> Any:
    """multiply_by_quantized_multiplier_ref in TIR, both roundings in one 64-bit shift: with
    P = x * multiplier + 2**30 (srdhm = P >> 31, and srdhm < 0 exactly when P < 0), the
    rounding division by 2**e of srdhm is (P + c * 2**31) >> (31 + e), c = 2**(e-1) - [P < 0]
    (0 for e = 0): nested floor divisions by powers of two are one floor division. Written so
    because TVM's simplifier assumes a narrowing cast never overflows and, given srdhm's
    32-bit result, carries the rest on in 64 bits anyway, or wrongly; here nothing is narrowed
    before the end. On a Cortex-M: a 32x32->64 multiply, 64-bit adds and one 64-bit shift."""
    import tvm

    left = tvm.tirx.max(shift, _c(0))
    right = tvm.tirx.max(-shift, _c(0))
    product = (x * (_c(1) << left)).astype("int64") * multiplier.astype("int64") + _c(1 << 30, "int64")
    half = _c(1) << tvm.tirx.max(right - _c(1), _c(0))
    nudge = _select(right > _c(0), half - _select(product < _c(0, "int64"), _c(1), _c(0)), _c(0))
    return ((product + (nudge.astype("int64") << _c(31, "int64"))) >> (right.astype("int64") + _c(31, "int64"))).astype("int32")


def multiply_by_quantized_multiplier_narrow(x: Any, multiplier: Any, shift: Any) -> Any:
    """multiply_by_quantized_multiplier for a right shift e = -shift of at least 1 and |x| <
    2**30 (narrow_rounding_is_exact: the host knows both from the table and the accumulator's
    range), in 32-bit steps. srdhm(x, m) = floor((x*m + 2**30) / 2**31) is the high word of
    2x*m + 2**31 (2x fits int32): one SMMULR on a Cortex-M4. The rounding division by 2**e,
    floor((s + 2**(e-1) - [s < 0]) / 2**e), is ((t >> (e-1)) + 1) >> 1 with t = s - [s < 0]
    (nested floor divisions), which cannot overflow (taking [x < 0] for [s < 0], also exact,
    kept x live longer: KWS +160 K instructions). The one 64-bit shift by 31 + e this
    replaces took ~18 more instructions per output on a Cortex-M4 (a 64-bit shift by a variable)."""
    import tvm

    # through reinterpretations: TVM's simplifier and LLVM would otherwise fold the doubling
    # into the 64-bit product (an SMULL and a 64-bit shift again) and carry `s` on in 64 bits
    doubled = tvm.tirx.reinterpret("int32", tvm.tirx.reinterpret("uint32", x) << tvm.tirx.const(1, "uint32"))
    s = ((doubled.astype("int64") * multiplier.astype("int64") + _c(1 << 31, "int64")) >> _c(32, "int64")).astype("int32")
    s = tvm.tirx.reinterpret("int32", tvm.tirx.reinterpret("uint32", s))
    if isinstance(shift, int):  # known at compile time (add_te): 0 is no rounding division
        if shift == 0:
            return s
        shift = _c(shift)
    t = s + (s >> _c(31))
    return ((t >> (_c(-1) - shift)) + _c(1)) >> _c(1)


def narrow_rounding_is_exact(tables: list[np.ndarray], layout: RequantLayout, reduction: int) -> bool:
    """Whether multiply_by_quantized_multiplier_narrow gives TFLM's result for every input: each
    channel's shift is at most -1, and |acc + bias| < 2**30 for every accumulator of `reduction`
    int8 x int8 products (|product| <= 2**14; nor does acc + bias wrap in int32 then)."""
    if not layout.multipliers:
        return False
    values = read_requant_table(tables, layout)
    shift = values["shift"].astype(np.int64)
    if shift.size == 0 or np.any(shift > -1) or np.any(shift < -31):
        return False
    bound = np.abs(values["bias"].astype(np.int64)) + reduction * (1 << 14)
    return bool(np.all(bound < (1 << 30)))


def _to_int8(value: Any, lo: int = -128, hi: int = 127) -> Any:
    import tvm

    return tvm.tirx.max(tvm.tirx.min(value, _c(hi)), _c(lo)).astype("int8")


def _requantize(acc: Any, table: RequantReader, channel: Any, zero_out: int, arithmetic: str,
                real: Any = None, left_shift: bool = True, narrow: bool = False) -> Any:
    """int32 accumulator (bias not yet added) of output `channel` -> int8; `table` reads the
    channel's bias, multiplier and shift (RequantReader). Without `left_shift` (no channel's
    shift is positive, as the host knows from the table) the multiplier's left shift is left
    out: the product is then one 32x32->64 multiply. With `narrow` (narrow_rounding_is_exact)
    the rounding is done in int32 (multiply_by_quantized_multiplier_narrow)."""
    import tvm

    total = acc + table.bias(channel)
    if arithmetic == TFLM:
        shift = table.shift(channel) if left_shift else tvm.tirx.min(table.shift(channel), _c(0))
        # TVM's simplifier assumes int32 sums never overflow and would widen `acc + bias` into
        # a 64-bit sum and a 64x64-bit product; through a reinterpretation it stays one int32
        # (wrapping, as TFLM's does) and the product one 32x32->64 multiply (SMULL)
        total = tvm.tirx.reinterpret("int32", tvm.tirx.reinterpret("uint32", total))
        if narrow:
            return _to_int8(multiply_by_quantized_multiplier_narrow(total, table.multiplier(channel),
                                                                    table.shift(channel)) + _c(zero_out))
        return _to_int8(multiply_by_quantized_multiplier(total, table.multiplier(channel), shift) + _c(zero_out))
    # onnxruntime: float32 product, rounded half to even, then the zero point
    scaled = total.astype("float32") * real[channel]
    return _to_int8(tvm.tirx.nearbyint(scaled).astype("int32") + _c(zero_out))


# ---------------------------------------------------------------------------------------------
# The kernels (TE)


@dataclass
class ConvSpec:
    strides: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, left, bottom, right
    dilation: tuple[int, int]
    groups: int
    layout: str  # "NHWC" | "NCHW"
    zero_in: int
    zero_out: int
    left_shift: bool = True  # some channel's requantization shift is positive
    narrow: bool = False  # the rounding fits int32 (narrow_rounding_is_exact)
    # one input channel (KWS's first conv): the weights come as [O, KH, 1, KW] and the kernel
    # row's taps are the reduction's innermost, contiguous axis (see conv2d_te)
    taps_innermost: bool = False


def fold_input_zero_point(bias: np.ndarray, w: np.ndarray, zero_in: int, reduce_axes: tuple[int, ...]) -> np.ndarray:
    """bias - zero_in * sum(w) per output channel, wrapped to int32: sum((x - zero_in) * w) +
    bias equals sum(x * w) + this, exactly in int32's wrapping arithmetic, so the kernels'
    inner loop multiplies raw int8 values (and padding holds zero_in, which adds nothing)."""
    total = bias.astype(np.int64) - int(zero_in) * w.astype(np.int64).sum(axis=reduce_axes)
    return ((total + (1 << 31)) % (1 << 32) - (1 << 31)).astype(np.int32)


def conv2d_te(x: Any, w: Any, table: Any, spec: ConvSpec, arithmetic: str, real: Any = None) -> Any:
    """Grouped 2-D convolution of int8 `x` (NHWC or NCHW) with int8 `w` [O, KH, KW, C/groups]:
    sum(x * w) in int32 over the image padded with zero_in (a stage of its own, which the
    schedule computes row by row), then requantized per output channel. The table's bias has
    the input zero point folded in (fold_input_zero_point). The reduction is innermost over
    input channels, contiguous in NHWC data and in the weights: 4 of them are one word (the
    Cortex-M DSP schedule's dual multiply-accumulate)."""
    import tvm
    from tvm import te

    nhwc = spec.layout == "NHWC"
    n, h, wd = ([int(d) for d in x.shape[:3]] if nhwc else
                [int(x.shape[0]), int(x.shape[2]), int(x.shape[3])])
    o, kh, kw, cg = (int(d) for d in w.shape)
    sh, sw = spec.strides
    dh, dw = spec.dilation
    pt, pl, pb, pr = spec.padding
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    og = o // spec.groups
    rc = te.reduce_axis((0, cg), "rc")
    rh = te.reduce_axis((0, kh), "rh")
    rw = te.reduce_axis((0, kw), "rw")

    if spec.taps_innermost:
        return _conv2d_one_channel_te(x, w, table, spec, arithmetic, real)
    if any(spec.padding):
        c = int(x.shape[3]) if nhwc else int(x.shape[1])
        ph, pw = h + pt + pb, wd + pl + pr

        def padded(b: Any, y: Any, xx: Any, ch: Any) -> Any:
            iy, ix = y - pt, xx - pl
            inside = tvm.tirx.all(iy >= 0, iy < h, ix >= 0, ix < wd)
            value = x[b, iy, ix, ch] if nhwc else x[b, ch, iy, ix]
            return tvm.tirx.if_then_else(inside, value, tvm.tirx.const(spec.zero_in, "int8"))

        if nhwc:
            xp = te.compute((n, ph, pw, c), padded, name="pad")
        else:
            xp = te.compute((n, c, ph, pw), lambda b, ch, y, xx: padded(b, y, xx, ch), name="pad")
    else:
        xp = x

    def read(b: Any, y: Any, xx: Any, ch: Any) -> Any:
        return xp[b, y, xx, ch] if nhwc else xp[b, ch, y, xx]

    def acc(b: Any, y: Any, xx: Any, oc: Any) -> Any:
        iy = y * sh + rh * dh
        ix = xx * sw + rw * dw
        ch = (oc // og) * cg + rc if spec.groups > 1 else rc
        return te.sum(read(b, iy, ix, ch).astype("int32") * w[oc, rh, rw, rc].astype("int32"), axis=[rh, rw, rc])

    if nhwc:
        accum = te.compute((n, oh, ow, o), acc, name="acc")
        return te.compute((n, oh, ow, o), lambda b, y, xx, oc: _requantize(
            accum[b, y, xx, oc], table, oc, spec.zero_out, arithmetic, real, spec.left_shift, spec.narrow), name="requant")
    accum = te.compute((n, o, oh, ow), lambda b, oc, y, xx: acc(b, y, xx, oc), name="acc")
    return te.compute((n, o, oh, ow), lambda b, oc, y, xx: _requantize(
        accum[b, oc, y, xx], table, oc, spec.zero_out, arithmetic, real, spec.left_shift, spec.narrow), name="requant")


def taps_innermost_fits(x_shape: tuple[int, ...], w: np.ndarray, spec: ConvSpec) -> bool:
    """Whether a conv can take _conv2d_one_channel_te's form: NHWC with one input channel, no
    groups or dilation, kernel rows of a multiple of 4 taps (one SMLAD word each on a DSP core)."""
    return (spec.layout == "NHWC" and len(x_shape) == 4 and int(x_shape[3]) == 1 and spec.groups == 1
            and spec.dilation == (1, 1) and w.shape[3] == 1 and w.shape[2] % 4 == 0)


def _conv2d_one_channel_te(x: Any, w: Any, table: Any, spec: ConvSpec, arithmetic: str, real: Any) -> Any:
    """conv2d_te for one input channel (taps_innermost_fits), weights [O, KH, 1, KW]: the image
    padded as [N, H, W] (no channel axis) so a kernel row's taps, the reduction's innermost
    axis, are contiguous bytes in both operands, as input channels are in conv2d_te (the
    Cortex-M schedule's SMLAD words; KWS's 10x4 first conv otherwise takes a byte per tap)."""
    import tvm
    from tvm import te

    n, h, wd = (int(d) for d in x.shape[:3])
    o, kh, _, kw = (int(d) for d in w.shape)
    sh, sw = spec.strides
    pt, pl, pb, pr = spec.padding
    oh = (h + pt + pb - kh) // sh + 1
    ow = (wd + pl + pr - kw) // sw + 1

    def padded(b: Any, y: Any, xx: Any) -> Any:
        iy, ix = y - pt, xx - pl
        inside = tvm.tirx.all(iy >= 0, iy < h, ix >= 0, ix < wd)
        return tvm.tirx.if_then_else(inside, x[b, iy, ix, 0], tvm.tirx.const(spec.zero_in, "int8"))

    xp = te.compute((n, h + pt + pb, wd + pl + pr), padded, name="pad")
    rh = te.reduce_axis((0, kh), "rh")
    rw = te.reduce_axis((0, 1), "rw")
    rc = te.reduce_axis((0, kw), "rc")
    accum = te.compute((n, oh, ow, o), lambda b, y, xx, oc: te.sum(
        xp[b, y * sh + rh, xx * sw + rw + rc].astype("int32") * w[oc, rh, rw, rc].astype("int32"),
        axis=[rh, rw, rc]), name="acc")
    return te.compute((n, oh, ow, o), lambda b, y, xx, oc: _requantize(
        accum[b, y, xx, oc], table, oc, spec.zero_out, arithmetic, real, spec.left_shift, spec.narrow), name="requant")


def dense_te(x: Any, w: Any, table: Any, zero_in: int, zero_out: int, arithmetic: str, real: Any = None,
             left_shift: bool = True, narrow: bool = False) -> Any:
    """int8 x [N, K] times int8 w, given transposed as [M, K] (the reduction contiguous, as in
    conv2d_te): sum(x * w) in int32, requantized per column; the table's bias has the input
    zero point folded in (fold_input_zero_point)."""
    from tvm import te

    n, k = (int(d) for d in x.shape)
    m = int(w.shape[0])
    rk = te.reduce_axis((0, k), "rk")
    accum = te.compute((n, m), lambda i, j: te.sum(
        x[i, rk].astype("int32") * w[j, rk].astype("int32"), axis=rk), name="acc")
    return te.compute((n, m), lambda i, j: _requantize(accum[i, j], table, j, zero_out, arithmetic, real,
                                                       left_shift, narrow), name="requant")


@dataclass
class AddSpec:
    zero_a: int
    zero_b: int
    zero_out: int
    lo: int  # the fused activation's range
    hi: int
    # tflm: (multiplier, shift) of each input and the output, with inputs shifted left by 20
    mult_a: tuple[int, int] = (0, 0)
    mult_b: tuple[int, int] = (0, 0)
    mult_out: tuple[int, int] = (0, 0)
    # onnxruntime: the real scales
    scales: tuple[float, float, float] = (1.0, 1.0, 1.0)


ADD_LEFT_SHIFT = 20  # TFLM's int8 Add: inputs widened by 2**20 before rescaling


def add_table(spec: AddSpec) -> np.ndarray:
    """The int32 [6] table TFLM's add reads: (multiplier, shift) of input a, input b, output.
    A kernel argument rather than literals: TVM's simplifier overflows int32 folding them."""
    return np.array([*spec.mult_a, *spec.mult_b, *spec.mult_out], dtype=np.int32)


def add_te(a: Any, b: Any, spec: AddSpec, arithmetic: str, table: Any = None) -> Any:
    """Elementwise sum of two int8 tensors of one shape with their own quantization."""
    import tvm
    from tvm import te

    def tflm(*idx: Any) -> Any:
        xa = (a[idx].astype("int32") - _c(spec.zero_a)) * _c(1 << ADD_LEFT_SHIFT)
        xb = (b[idx].astype("int32") - _c(spec.zero_b)) * _c(1 << ADD_LEFT_SHIFT)
        # the shifts are known here: without a left shift each product is one 32x32->64
        # multiply instead of a 64-bit shift and a 64x64-bit multiply
        def rescale(x: Any, k: int, shift: int) -> Any:
            if shift <= 0:
                # |inputs| <= 255 * 2**20 and |rescaled sums| < 2**29: the int32 form is exact
                # (multiply_by_quantized_multiplier_narrow); ResNet-8's adds took ~120
                # Cortex-M4 instructions per element with the 64-bit one
                return multiply_by_quantized_multiplier_narrow(x, table[k], shift)
            return multiply_by_quantized_multiplier(x, table[k], table[k + 1] if shift > 0 else
                                                    tvm.tirx.min(table[k + 1], _c(0)))

        sa = rescale(xa, 0, spec.mult_a[1])
        sb = rescale(xb, 2, spec.mult_b[1])
        out = rescale(sa + sb, 4, spec.mult_out[1])
        return _to_int8(out + _c(spec.zero_out), spec.lo, spec.hi)

    def ort(*idx: Any) -> Any:
        s_a, s_b, s_y = (tvm.tirx.const(s, "float32") for s in spec.scales)
        fa = (a[idx].astype("int32") - _c(spec.zero_a)).astype("float32") * s_a
        fb = (b[idx].astype("int32") - _c(spec.zero_b)).astype("float32") * s_b
        value = tvm.tirx.max(fa + fb, tvm.tirx.const(0.0, "float32")) if spec.lo > -128 else fa + fb
        q = tvm.tirx.nearbyint(value / s_y).astype("int32") + _c(spec.zero_out)
        return _to_int8(q, spec.lo, spec.hi)

    return te.compute(tuple(int(d) for d in a.shape), tflm if arithmetic == TFLM else ort, name="add")


def avg_pool_te(x: Any, pool: tuple[int, int], strides: tuple[int, int],
                padding: tuple[int, int, int, int], layout: str) -> Any:
    """TFLM's int8 average pool: the sum of the window's values inside the image, divided by
    their count rounding half away from zero (count_include_pad off)."""
    import tvm
    from tvm import te

    nhwc = layout == "NHWC"
    n, h, wd, c = ([int(d) for d in x.shape] if nhwc else
                   [int(x.shape[0]), int(x.shape[2]), int(x.shape[3]), int(x.shape[1])])
    ph, pw = pool
    sh, sw = strides
    pt, pl, pb, pr = padding
    oh = (h + pt + pb - ph) // sh + 1
    ow = (wd + pl + pr - pw) // sw + 1
    rh = te.reduce_axis((0, ph), "rh")
    rw = te.reduce_axis((0, pw), "rw")

    def window(y: Any, xx: Any) -> tuple[Any, Any, Any, Any]:
        y0 = tvm.tirx.max(y * sh - pt, 0)
        x0 = tvm.tirx.max(xx * sw - pl, 0)
        y1 = tvm.tirx.min(y * sh - pt + ph, h)
        x1 = tvm.tirx.min(xx * sw - pl + pw, wd)
        return y0, x0, y1, x1

    def total(b: Any, y: Any, xx: Any, ch: Any) -> Any:
        iy = y * sh - pt + rh
        ix = xx * sw - pl + rw
        inside = tvm.tirx.all(iy >= 0, iy < h, ix >= 0, ix < wd)
        value = x[b, iy, ix, ch] if nhwc else x[b, ch, iy, ix]
        return te.sum(tvm.tirx.if_then_else(inside, value.astype("int32"), _c(0)), axis=[rh, rw])

    def average(acc: Any, y: Any, xx: Any) -> Any:
        y0, x0, y1, x1 = window(y, xx)
        count = (y1 - y0) * (x1 - x0)
        half = tvm.tirx.truncdiv(count, _c(2))
        rounded = tvm.tirx.truncdiv(_select(acc > _c(0), acc + half, acc - half), count)
        return _to_int8(rounded)

    if nhwc:
        sums = te.compute((n, oh, ow, c), total, name="sum")
        return te.compute((n, oh, ow, c), lambda b, y, xx, ch: average(sums[b, y, xx, ch], y, xx), name="avg")
    sums = te.compute((n, c, oh, ow), lambda b, ch, y, xx: total(b, y, xx, ch), name="sum")
    return te.compute((n, c, oh, ow), lambda b, ch, y, xx: average(sums[b, ch, y, xx], y, xx), name="avg")


# --- softmax: TFLM's int8 softmax, gemmlowp fixed point ---------------------------------------

SOFTMAX_DIFF_BITS = 5  # integer bits of the scaled input differences (Q5.26)
SOFTMAX_ACCUM_BITS = 12  # integer bits of the sum of exponentials (Q12.19)
# exp(-2**k) in Q0.31 for k = -2 .. 4: the barrel shifter of gemmlowp's exp_on_negative_values
_EXP_BARREL = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308),
               (2, 39332535), (3, 720401), (4, 242))


@dataclass
class SoftmaxSpec:
    multiplier: int  # the input scale (times beta) as a Q31 multiplier ...
    left_shift: int  # ... and a left shift, for differences in Q5.26
    diff_min: int  # differences below this give an exponential of 0


def softmax_spec(input_scale: float, beta: float = 1.0) -> SoftmaxSpec:
    """TFLM's softmax parameters (PreprocessSoftmaxScaling and CalculateInputRadius)."""
    real = min(beta * float(np.float32(input_scale)) * (1 << (31 - SOFTMAX_DIFF_BITS)), float((1 << 31) - 1))
    multiplier, shift = quantize_multiplier(real)
    radius = ((1 << SOFTMAX_DIFF_BITS) - 1) * (1 << (31 - SOFTMAX_DIFF_BITS)) / (1 << shift)
    return SoftmaxSpec(multiplier=multiplier, left_shift=shift, diff_min=-math.floor(radius))


def _sat_shift_left_ref(x: int, exponent: int) -> int:
    """gemmlowp's SaturatingRoundingMultiplyByPOT for a positive exponent."""
    threshold = (1 << (31 - exponent)) - 1
    return INT32_MAX if x > threshold else INT32_MIN if x < -threshold else x << exponent


def exp_on_negative_values_ref(a: int, integer_bits: int = SOFTMAX_DIFF_BITS) -> int:
    """gemmlowp's exp_on_negative_values: exp(a) for a <= 0 given with `integer_bits` integer
    bits (softmax: Q5.26), in Q0.31."""
    frac = 31 - integer_bits
    quarter = 1 << (frac - 2)
    a_mod = (a & (quarter - 1)) - quarter  # in [-1/4, 0)
    # exp on [-1/4, 0): Taylor expansion around -1/8, all in Q0.31
    x = (a_mod << integer_bits) + (1 << 28)
    x2 = srdhm_ref(x, x)
    x3 = srdhm_ref(x2, x)
    x4 = srdhm_ref(x2, x2)
    poly = rounding_divide_by_pot_ref(srdhm_ref(rounding_divide_by_pot_ref(x4, 2) + x3, 715827883) + x2, 1)
    result = _wrap32(1895147668 + srdhm_ref(1895147668, _wrap32(x + poly)))
    remainder = a_mod - a
    for exponent, multiplier in _EXP_BARREL:
        if exponent < integer_bits and remainder & (1 << (frac + exponent)):
            result = srdhm_ref(result, multiplier)
    return INT32_MAX if a == 0 else result


def one_over_one_plus_x_ref(a: int) -> int:
    """gemmlowp's one_over_one_plus_x_for_x_in_0_1: 1 / (1 + a) for a in [0, 1) in Q0.31, in
    Q0.31: Newton-Raphson in Q2.29 from 48/17 - 32/17 d (softmax_te has it in TIR)."""
    half_den = (a + INT32_MAX + 1) >> 1  # RoundingHalfSum(a, 1.0); a >= 0
    x = 1515870810 + srdhm_ref(half_den, -1010580540)
    for _ in range(3):
        x = x + _sat_shift_left_ref(srdhm_ref(x, (1 << 29) - srdhm_ref(half_den, x)), 2)
    return _sat_shift_left_ref(x, 1)


LOGISTIC_INPUT_BITS = 4  # TFLM's int8 logistic takes its input in Q4.27


def logistic_table(input_scale: float, input_zero: int) -> np.ndarray:
    """TFLM's int8 logistic (output scale 1/256, zero point -128) of every int8 input, index
    x + 128: the input rescaled to Q4.27 by a Q31 multiplier, gemmlowp's fixed-point logistic,
    then rounded to 8 bits; inputs beyond the radius saturate. 256 bytes, read by the kernel."""
    real = float(np.float32(input_scale)) * (1 << (31 - LOGISTIC_INPUT_BITS))
    multiplier, shift = quantize_multiplier(real)
    radius = math.floor(((1 << LOGISTIC_INPUT_BITS) - 1) * (1 << (31 - LOGISTIC_INPUT_BITS)) / (1 << shift))
    table = np.zeros(256, dtype=np.int8)
    for q in range(-128, 128):
        x = q - input_zero
        if x <= -radius:
            table[q + 128] = -128
            continue
        if x >= radius:
            table[q + 128] = 127
            continue
        a = multiply_by_quantized_multiplier_ref(x, multiplier, shift)  # Q4.27
        if a == 0:
            value = 1 << 30  # one half
        else:
            positive = one_over_one_plus_x_ref(exp_on_negative_values_ref(-abs(a), LOGISTIC_INPUT_BITS))
            value = positive if a > 0 else INT32_MAX - positive
        table[q + 128] = min(max(rounding_divide_by_pot_ref(value, 31 - 8) - 128, -128), 127)
    return table


def lookup_te(x: Any, table: Any) -> Any:
    """Each int8 value through a 256-entry int8 table (index value + 128)."""
    from tvm import te

    return te.compute(tuple(int(d) for d in x.shape), lambda *i: table[x[i].astype("int32") + _c(128)],
                      name="lookup")


def softmax_exp_table(spec: SoftmaxSpec) -> np.ndarray:
    """exp of every int8 difference from the row's maximum (index d is the difference -d),
    as TFLM computes it; 0 below diff_min. 256 int32 entries: the kernel reads it instead of
    evaluating the fixed-point exponential."""
    table = np.zeros(256, dtype=np.int32)
    for d in range(256):
        diff = -d
        if diff >= spec.diff_min:
            scaled = srdhm_ref(_wrap32(diff * (1 << spec.left_shift)), spec.multiplier)
            table[d] = exp_on_negative_values_ref(scaled)
    return table


def trim_exp_table(table: np.ndarray) -> np.ndarray:
    """The exp table without its tail of zeros but one (a large input scale makes most of the
    256 differences underflow): the kernel reads index min(difference, last)."""
    nonzero = np.flatnonzero(table)
    return table[: min(int(nonzero[-1]) + 2 if nonzero.size else 1, table.size)]


def _sat_shift_left(x: Any, exponent: int) -> Any:
    threshold = (1 << (31 - exponent)) - 1
    return _select(x > _c(threshold), _c(INT32_MAX), _select(x < _c(-threshold), _c(INT32_MIN), x << _c(exponent)))


def softmax_output_is_tflms(out_dtype: str, scale: float, zero_point: int) -> bool:
    """Whether an int8 softmax's output quantization is one TFLM computes: int8 at exactly
    (1/256, -128), or int16 at (1/65536 within 0.1%, -32768), as TFLM's Prepare checks."""
    if out_dtype == "int8":
        return scale == 1.0 / 256 and zero_point == -128
    tolerance = float(np.float32(0.001) * np.float32(1.0 / 65536))
    return out_dtype == "int16" and zero_point == -32768 and abs(float(np.float32(scale)) - 1.0 / 65536) <= tolerance


def softmax_te(x: Any, exp_table: Any, out_dtype: str = "int8") -> Any:
    """TFLM's int8 softmax over the last axis of a 2-D int8 tensor, int8 out (scale 1/256,
    zero point -128) or int16 out (1/65536, -32768: 8 more bits of the same fixed-point
    quotient). Each step of the reciprocal (gemmlowp's one_over_one_plus_x_for_x_in_0_1,
    Newton-Raphson in Q2.29) is its own small stage per row."""
    import tvm
    from tvm import te

    rows, depth = (int(d) for d in x.shape)
    rc = te.reduce_axis((0, depth), "rc")
    row_max = te.compute((rows,), lambda i: te.max(x[i, rc].astype("int32"), axis=rc), name="row_max")
    last = int(exp_table.shape[0]) - 1  # a trimmed table ends with its one zero (trim_exp_table)
    exps = te.compute((rows, depth), lambda i, c: exp_table[
        tvm.tirx.min(row_max[i] - x[i, c].astype("int32"), _c(last)) if last < 255 else
        row_max[i] - x[i, c].astype("int32")], name="exps")
    rk = te.reduce_axis((0, depth), "rk")
    sums = te.compute((rows,), lambda i: te.sum(
        rounding_divide_by_pot(exps[i, rk], SOFTMAX_ACCUM_BITS), axis=rk), name="sum_exps")  # Q12.19
    headroom = te.compute((rows,), lambda i: tvm.tirx.clz(sums[i]).astype("int32"), name="headroom")
    # the sum scaled into [1, 2), minus 1, in Q0.31; then RoundingHalfSum with 1.0
    shifted = te.compute((rows,), lambda i: ((sums[i].astype("uint32") << headroom[i].astype("uint32"))
                                             - _c(1 << 31, "uint32")).astype("int32"), name="shifted")
    half_den = te.compute((rows,), lambda i: ((shifted[i].astype("int64") + _c(INT32_MAX, "int64") + _c(1, "int64"))
                                              >> _c(1, "int64")).astype("int32"), name="half_den")
    guess = te.compute((rows,), lambda i: _c(1515870810) + srdhm(half_den[i], _c(-1010580540)), name="nr0")
    def newton_step(prev: Any) -> Callable[[Any], Any]:
        return lambda i: prev[i] + _sat_shift_left(srdhm(prev[i], _c(1 << 29) - srdhm(half_den[i], prev[i])), 2)

    for k in range(3):
        guess = te.compute((rows,), newton_step(guess), name=f"nr{k + 1}")
    # ExactMulByPot<-1> (the same raw read as Q1.30), then Rescale<0>
    scale = te.compute((rows,), lambda i: _sat_shift_left(guess[i], 1), name="reciprocal")

    lo, hi = INT_RANGES[out_dtype]
    bits = 8 * np.dtype(out_dtype).itemsize

    def out(i: Any, c: Any) -> Any:
        exponent = _c(SOFTMAX_ACCUM_BITS + 31 - bits) - headroom[i]
        value = rounding_divide_by_pot(srdhm(scale[i], exps[i, c]), exponent) + _c(lo)
        return tvm.tirx.max(tvm.tirx.min(_select(exps[i, c] == _c(0), _c(lo), value), _c(hi)), _c(lo)).astype(out_dtype)

    return te.compute((rows, depth), out, name="softmax")


# ---------------------------------------------------------------------------------------------
# The rewrite

#: Relax operators that only move or select values (one tensor argument; then those with a
#: second, non-tensor argument such as a shape): on int8 as they are when the quantization
#: in and out is one.
MOVE_OPS_UNARY = ("nn.max_pool2d", "permute_dims", "squeeze", "expand_dims", "flatten")
MOVE_OPS_WITH_ARG = ("reshape",)
MAX_CONCAT_INPUTS = 6  # concatenations of 2..6 quantized tensors are matched


def _scalar(expr: Any) -> float:
    values = expr.value.numpy().reshape(-1)
    if values.size != 1:
        raise _Skip("a per-channel scale or zero point where one value is expected")
    return values[0].item()


def _array(expr: Any) -> np.ndarray:
    return expr.value.numpy()


class _Skip(Exception):
    """This match is not something the integer kernels cover (it stays on the float path)."""


@dataclass
class Int8Rewrite:
    """One rewrite of a module: the kernels made so far and what was left in float."""

    arithmetic: str
    builder: Any  # relax.BlockBuilder over the module: adds the kernels (identical ones once)
    kernels: dict[str, Any] = field(default_factory=dict)  # kernel name -> PrimFunc
    counts: dict[str, int] = field(default_factory=dict)  # operator -> integer kernels made
    skipped: dict[str, str] = field(default_factory=dict)  # operator -> why (first reason)

    def call(self, name: str, te_func: Callable[..., Any], args: list[Any], arg_specs: list[tuple[tuple[int, ...], str]],
             as_written: str | None = None) -> Any:
        """call_tir of a new PrimFunc built from `te_func` over placeholders for `args`."""
        from tvm import relax, te

        holders = [te.placeholder(shape, dtype, name=f"arg{k}") for k, (shape, dtype) in enumerate(arg_specs)]
        out = te_func(*holders)
        # int64 shapes, as legalized Relax ops have: FuseTIR merges buffers of one type only
        prim = te.create_prim_func([*holders, out], index_dtype_override="int64").without_attr("global_symbol")
        if as_written:
            from harness.compile.kernels import AS_WRITTEN

            prim = prim.with_attr(AS_WRITTEN, as_written)
        gvar = self.builder.add_func(prim, f"int8_{name}")
        self.kernels[gvar.name_hint] = prim
        self.counts[name] = self.counts.get(name, 0) + 1
        out_ty = relax.TensorType([int(d) for d in out.shape], out.dtype)
        return relax.call_tir(gvar, relax.Tuple(args), out_ty)


def _kernel_args(x: Any, x_shape: tuple[int, ...], w: np.ndarray,
                 tables: list[np.ndarray]) -> tuple[list[Any], list[tuple[tuple[int, ...], str]]]:
    """A conv's or dense's call_tir arguments and their (shape, dtype): the int8 data, the int8
    weights and the requantization tables (requant_table)."""
    from tvm import relax

    consts = [w, *tables]
    return ([x, *(relax.const(c, str(c.dtype)) for c in consts)],
            [(x_shape, "int8"), *((tuple(c.shape), str(c.dtype)) for c in consts)])


def _shape_dtype(expr: Any) -> tuple[tuple[int, ...], str]:
    ty = expr.ty
    return tuple(int(d) for d in ty.shape.values), str(ty.dtype)


def _dtype_of(expr: Any) -> str:
    return str(getattr(getattr(expr, "ty", None), "dtype", ""))


def rewrite_int8(mod: Any, arithmetic: str) -> tuple[Any, Int8Rewrite]:
    """Replace every covered dequantize -> op -> quantize chain of `main` with an integer
    kernel; return the new module and what was done."""
    from tvm import relax
    from tvm.ir.expr import Constant
    from tvm.relax.dpl import is_const, is_op, is_tuple, rewrite_call, wildcard

    state = Int8Rewrite(arithmetic, relax.BlockBuilder(mod))

    def dq(x: Any) -> Any:
        return is_op("relax.dequantize")(x, is_const(), is_const())

    def q_of(x: Any) -> Any:
        return is_op("relax.quantize")(x, is_const(), is_const())

    def guarded(kind: str, build: Callable[[Any, dict], Any]) -> Callable[[Any, dict], Any]:
        def rewriter(orig: Any, m: dict) -> Any:
            try:
                return build(orig, m)
            except _Skip as why:
                state.skipped.setdefault(kind, str(why))
                return orig
        return rewriter

    # --- conv2d (+ bias) ------------------------------------------------------------------
    x_in = wildcard()
    dq_x = dq(x_in)
    w_const = is_const()
    dq_w = dq(w_const)
    w_pat = dq_w | is_op("relax.reshape")(dq_w, wildcard())
    conv = is_op("relax.nn.conv2d")(dq_x, w_pat)
    b_const = is_const()
    dq_b = dq(b_const)
    biased = is_op("relax.add")(conv, dq_b | is_op("relax.reshape")(dq_b, wildcard()))
    conv_root = q_of(biased | conv)

    def build_conv(orig: Any, m: dict) -> Any:
        qcall = orig
        conv_call = m[conv]
        a = conv_call.attrs
        x_dq, w_expr = m[dq_x], conv_call.args[1]
        x = m[x_in]
        x_shape, x_dtype = _shape_dtype(x)
        if x_dtype != "int8" or str(qcall.attrs.out_dtype) != "int8":
            raise _Skip(f"{x_dtype} -> {qcall.attrs.out_dtype} (int8 only)")
        if str(a.out_layout) != str(a.data_layout) or str(a.data_layout) not in ("NHWC", "NCHW"):
            raise _Skip(f"layout {a.data_layout} -> {a.out_layout}")
        w_dq = m[dq_w]
        wq = _array(m[w_const])
        if wq.dtype != np.int8 or np.any(_array(w_dq.args[2]) != 0):
            raise _Skip("weights are not symmetric int8")
        # the weight as the conv sees it (after the depthwise reshape), then [O, KH, KW, I]
        w_shape, _ = _shape_dtype(w_expr)
        layout = str(a.kernel_layout)
        w = np.transpose(wq.reshape(w_shape), [layout.index(ch) for ch in "OHWI"])
        o = w.shape[0]
        s_x, z_x = _scalar(x_dq.args[1]), int(_scalar(x_dq.args[2]))
        s_y, z_y = _scalar(qcall.args[1]), int(_scalar(qcall.args[2]))
        s_w = np.broadcast_to(_array(w_dq.args[1]).astype(np.float64).reshape(-1), (o,))
        if b_const in m:
            bq = _array(m[b_const]).reshape(-1)
            if bq.dtype != np.int32 or bq.size != o:
                raise _Skip("bias is not int32 per output channel")
        else:
            bq = np.zeros(o, dtype=np.int32)
        real = np.float64(np.float32(s_x)) * s_w / np.float64(np.float32(s_y))
        rq = kernel_requant(fold_input_zero_point(bq, w, z_x, (1, 2, 3)), real if arithmetic == TFLM else None,
                            int(np.prod(w.shape[1:])))
        table, table_layout = rq.tables, rq.layout
        spec = ConvSpec(strides=tuple(int(v) for v in a.strides), padding=tuple(int(v) for v in a.padding),
                        dilation=tuple(int(v) for v in a.dilation), groups=int(a.groups),
                        layout=str(a.data_layout), zero_in=z_x, zero_out=z_y,
                        left_shift=rq.left_shift, narrow=rq.narrow)
        if taps_innermost_fits(x_shape, w, spec):  # [O, KH, KW, 1] -> [O, KH, 1, KW]: the same bytes
            w = w.reshape(w.shape[0], w.shape[1], 1, w.shape[2])
            spec = replace(spec, taps_innermost=True)
        args, specs = _kernel_args(x, x_shape, np.ascontiguousarray(w), table)
        if arithmetic == TFLM:
            return state.call("conv2d", lambda xx, ww, *tt: conv2d_te(xx, ww, table_layout.reader(*tt), spec, arithmetic), args, specs)
        real32 = (np.float32(s_x) * s_w.astype(np.float32) / np.float32(s_y)).astype(np.float32)
        args.append(relax.const(real32, "float32"))
        specs.append(((o,), "float32"))
        return state.call("conv2d", lambda xx, ww, tt, rr: conv2d_te(xx, ww, table_layout.reader(tt), spec, arithmetic, rr), args, specs)

    # --- fully connected / matmul with constant weights -----------------------------------
    fx_in = wildcard()
    fdq_x = dq(fx_in)
    fw_const = is_const()
    fperm = is_op("relax.permute_dims")(fw_const)
    fdq_w = is_op("relax.dequantize")(fperm | fw_const, is_const(), is_const())
    mm = is_op("relax.matmul")(fdq_x, fdq_w)
    fb_const = is_const()
    fbiased = is_op("relax.add")(mm, dq(fb_const))
    fc_root = q_of(fbiased | mm)

    def build_dense(orig: Any, m: dict) -> Any:
        qcall = orig
        x = m[fx_in]
        x_shape, x_dtype = _shape_dtype(x)
        if x_dtype != "int8" or len(x_shape) != 2 or str(qcall.attrs.out_dtype) != "int8":
            raise _Skip(f"{x_dtype} input of rank {len(x_shape)} (int8 2-D only)")
        w_dq = m[fdq_w]
        w_shape, _ = _shape_dtype(w_dq)
        wq = _array(m[fw_const])
        if wq.dtype != np.int8 or np.any(_array(w_dq.args[2]) != 0):
            raise _Skip("weights are not symmetric int8")
        if fperm in m:  # TFLite keeps FC weights [M, K]; the frontend transposes them
            axes = m[fperm].attrs.axes
            wq = np.transpose(wq, [int(v) for v in axes] if axes is not None else None)
        w = wq  # [K, M]
        if tuple(w.shape) != tuple(w_shape):
            raise _Skip(f"weight shape {wq.shape} does not give {w_shape}")
        cols = w.shape[1]
        x_dq = m[fdq_x]
        s_x, z_x = _scalar(x_dq.args[1]), int(_scalar(x_dq.args[2]))
        s_y, z_y = _scalar(qcall.args[1]), int(_scalar(qcall.args[2]))
        s_w = np.broadcast_to(_array(w_dq.args[1]).astype(np.float64).reshape(-1), (cols,))
        bq = _array(m[fb_const]).reshape(-1) if fb_const in m else np.zeros(cols, dtype=np.int32)
        if bq.dtype != np.int32 or bq.size != cols:
            raise _Skip("bias is not int32 per output")
        real = np.float64(np.float32(s_x)) * s_w / np.float64(np.float32(s_y))
        rq = kernel_requant(fold_input_zero_point(bq, w, z_x, (0,)), real if arithmetic == TFLM else None,
                            int(w.shape[0]))
        table, table_layout = rq.tables, rq.layout
        w = np.ascontiguousarray(w.T)  # [M, K]: the reduction contiguous
        args, specs = _kernel_args(x, x_shape, w, table)
        if arithmetic == TFLM:
            return state.call("dense", lambda xx, ww, *tt: dense_te(xx, ww, table_layout.reader(*tt), z_x, z_y, arithmetic,
                                                                     left_shift=rq.left_shift, narrow=rq.narrow), args, specs)
        real32 = (np.float32(s_x) * s_w.astype(np.float32) / np.float32(s_y)).astype(np.float32)
        args.append(relax.const(real32, "float32"))
        specs.append(((cols,), "float32"))
        return state.call("dense", lambda xx, ww, tt, rr: dense_te(xx, ww, table_layout.reader(tt), z_x, z_y, arithmetic, rr), args, specs)

    # --- add of two quantized tensors (+ relu) --------------------------------------------
    a_in, b_in = wildcard(), wildcard()
    dq_a, dq_b2 = dq(a_in), dq(b_in)
    summed = is_op("relax.add")(dq_a, dq_b2)
    relu = is_op("relax.nn.relu")(summed)
    add_root = q_of(relu | summed)

    def build_add(orig: Any, m: dict) -> Any:
        qcall = orig
        a, b = m[a_in], m[b_in]
        if isinstance(a, Constant) or isinstance(b, Constant):
            raise _Skip("an add of a constant")
        (sa_shape, ta), (sb_shape, tb) = _shape_dtype(a), _shape_dtype(b)
        if ta != "int8" or tb != "int8" or sa_shape != sb_shape or str(qcall.attrs.out_dtype) != "int8":
            raise _Skip("inputs are not int8 of one shape")
        da, db = m[dq_a], m[dq_b2]
        s_a, z_a = _scalar(da.args[1]), int(_scalar(da.args[2]))
        s_b, z_b = _scalar(db.args[1]), int(_scalar(db.args[2]))
        s_y, z_y = _scalar(qcall.args[1]), int(_scalar(qcall.args[2]))
        lo = max(-128, z_y) if relu in m else -128
        spec = AddSpec(zero_a=z_a, zero_b=z_b, zero_out=z_y, lo=lo, hi=127, scales=(s_a, s_b, s_y))
        if arithmetic == TFLM:
            twice_max = 2.0 * max(float(np.float32(s_a)), float(np.float32(s_b)))
            spec.mult_a = quantize_multiplier(float(np.float32(s_a)) / twice_max)
            spec.mult_b = quantize_multiplier(float(np.float32(s_b)) / twice_max)
            spec.mult_out = quantize_multiplier(twice_max / ((1 << ADD_LEFT_SHIFT) * float(np.float32(s_y))))
            table = add_table(spec)
            return state.call("add", lambda xa, xb, tt: add_te(xa, xb, spec, arithmetic, tt),
                              [a, b, relax.const(table, "int32")],
                              [(sa_shape, "int8"), (sb_shape, "int8"), ((6,), "int32")])
        return state.call("add", lambda xa, xb: add_te(xa, xb, spec, arithmetic), [a, b],
                          [(sa_shape, "int8"), (sb_shape, "int8")])

    # --- average pool done on int32 by the TFLite frontend ---------------------------------
    p_in = wildcard()
    pool = is_op("relax.nn.avg_pool2d")(is_op("relax.astype")(p_in))
    pool_root = is_op("relax.astype")(pool)

    def build_pool(orig: Any, m: dict) -> Any:
        x = m[p_in]
        x_shape, x_dtype = _shape_dtype(x)
        if x_dtype != "int8" or str(orig.attrs.dtype) != "int8":
            raise _Skip("not an int8 pool")
        a = m[pool].attrs
        if bool(a.ceil_mode) or bool(a.count_include_pad) or any(int(d) != 1 for d in a.dilation):
            raise _Skip("ceil mode, count_include_pad or dilation")
        if arithmetic != TFLM:
            raise _Skip("only TFLM's rounding is implemented")
        layout = str(a.layout)
        return state.call("avg_pool", lambda xx: avg_pool_te(
            xx, tuple(int(v) for v in a.pool_size), tuple(int(v) for v in a.strides),
            tuple(int(v) for v in a.padding), layout), [x], [(x_shape, "int8")])

    # --- softmax to int8 (TFLM's output quantization: scale 1/256, zero point -128) ---------
    s_in = wildcard()
    s_dq = dq(s_in)
    smax = is_op("relax.nn.softmax")(s_dq)
    softmax_root = q_of(smax)

    def build_softmax(orig: Any, m: dict) -> Any:
        x = m[s_in]
        x_shape, x_dtype = _shape_dtype(x)
        if arithmetic != TFLM:
            raise _Skip("only TFLM's integer softmax is implemented")
        if x_dtype != "int8" or len(x_shape) != 2 or int(m[smax].attrs.axis) not in (-1, 1):
            raise _Skip("not an int8 2-D softmax over the last axis")
        s_y, z_y = _scalar(orig.args[1]), int(_scalar(orig.args[2]))
        out_dtype = str(orig.attrs.out_dtype)
        if not softmax_output_is_tflms(out_dtype, s_y, z_y):
            raise _Skip(f"{out_dtype} output quantization ({s_y}, {z_y}) is not TFLM's (1/256, -128 for int8; "
                        "1/65536, -32768 for int16)")
        table = trim_exp_table(softmax_exp_table(softmax_spec(_scalar(m[s_dq].args[1]))))
        return state.call("softmax", lambda xx, tt: softmax_te(xx, tt, out_dtype), [x, relax.const(table, "int32")],
                          [(x_shape, "int8"), (table.shape, "int32")],
                          as_written="per-row reciprocal steps: inlined, each would repeat its input 3x")

    # --- ops that only move or select values, where input and output share quantization ------
    # q(op(dq(x))) is op(x) then: dequantizing and quantizing with one (scale, zero point) gives
    # each int8 back, and max and data movement commute with that monotonic map.
    mv_in = wildcard()
    mv_dq = dq(mv_in)
    moves = [is_op(f"relax.{name}")(mv_dq) for name in MOVE_OPS_UNARY]
    moves += [is_op(f"relax.{name}")(mv_dq, wildcard()) for name in MOVE_OPS_WITH_ARG]
    move_op = moves[0]
    for alt in moves[1:]:
        move_op = move_op | alt
    move_root = q_of(move_op)

    def build_move(orig: Any, m: dict) -> Any:
        x = m[mv_in]
        inner, deq = next(m[p] for p in moves if p in m), m[mv_dq]
        name = str(inner.op.name).removeprefix("relax.")
        if _dtype_of(x) not in ("int8", "uint8") or str(orig.attrs.out_dtype) != _dtype_of(x):
            raise _Skip(f"{name} of {_dtype_of(x)} to {orig.attrs.out_dtype}")
        # one scale and zero point for the tensor (per channel, a reshape would move the axis)
        if (_scalar(deq.args[1]), _scalar(deq.args[2])) != (_scalar(orig.args[1]), _scalar(orig.args[2])):
            raise _Skip(f"{name} with another quantization out than in")
        state.counts[name] = state.counts.get(name, 0) + 1
        return relax.Call(inner.op, [x, *inner.args[1:]], inner.attrs)

    # --- concatenation of tensors that all share the output's quantization: a copy ---------
    # (TFLM and LiteRT refuse an int8 concatenation whose input scales differ from the output's)
    cat_ins = [[wildcard() for _ in range(k)] for k in range(2, MAX_CONCAT_INPUTS + 1)]
    cat_dqs = [[dq(x) for x in ins] for ins in cat_ins]
    cats = [is_op("relax.concat")(is_tuple(d)) for d in cat_dqs]
    cat_op = cats[0]
    for alt in cats[1:]:
        cat_op = cat_op | alt
    concat_root = q_of(cat_op)

    def build_concat(orig: Any, m: dict) -> Any:
        k = next(i for i, c in enumerate(cats) if c in m)
        xs, deqs = [m[x] for x in cat_ins[k]], [m[d] for d in cat_dqs[k]]
        out_q = (_scalar(orig.args[1]), _scalar(orig.args[2]))
        if any(_dtype_of(x) != str(orig.attrs.out_dtype) or _dtype_of(x) not in ("int8", "uint8") for x in xs):
            raise _Skip("inputs of another dtype than the output")
        if any((_scalar(d.args[1]), _scalar(d.args[2])) != out_q for d in deqs):
            raise _Skip("an input quantized otherwise than the output")
        state.counts["concat"] = state.counts.get("concat", 0) + 1
        return relax.op.concat(xs, axis=m[cats[k]].attrs.axis)

    # --- logistic to int8 (TFLM's output quantization: scale 1/256, zero point -128) --------
    l_in = wildcard()
    l_dq = dq(l_in)
    logistic_root = q_of(is_op("relax.sigmoid")(l_dq))

    def build_logistic(orig: Any, m: dict) -> Any:
        x = m[l_in]
        x_shape, x_dtype = _shape_dtype(x)
        if arithmetic != TFLM:
            raise _Skip("only TFLM's integer logistic is implemented")
        s_y, z_y = _scalar(orig.args[1]), int(_scalar(orig.args[2]))
        if x_dtype != "int8" or str(orig.attrs.out_dtype) != "int8" or s_y != 1.0 / 256 or z_y != -128:
            raise _Skip(f"not int8 in and out at TFLM's output quantization (1/256, -128): ({s_y}, {z_y})")
        table = logistic_table(_scalar(m[l_dq].args[1]), int(_scalar(m[l_dq].args[2])))
        return state.call("logistic", lookup_te, [x, relax.const(table, "int8")],
                          [(x_shape, "int8"), ((256,), "int8")])

    func = mod["main"]
    for kind, pattern, build in (("conv2d", conv_root, build_conv), ("dense", fc_root, build_dense),
                                 ("add", add_root, build_add), ("avg_pool", pool_root, build_pool),
                                 ("softmax", softmax_root, build_softmax),
                                 ("logistic", logistic_root, build_logistic),
                                 ("data movement", move_root, build_move),
                                 ("concat", concat_root, build_concat)):
        func = rewrite_call(pattern, guarded(kind, build), func)
    out = state.builder.get()
    out["main"] = func
    out = relax.transform.DeadCodeElimination(["main"])(out)
    return out, state


def float_ops_left(mod: Any) -> list[str]:
    """The Relax operators of `main` that still compute on dequantized floats."""
    from tvm import relax

    names: list[str] = []

    @relax.expr_functor.visitor
    class Visitor(relax.PyExprVisitor):
        def visit_call_(self, call: Any) -> None:  # TVM's visitor protocol
            name = getattr(call.op, "name", "")
            if (name.startswith("relax.") and name not in ("relax.quantize", "relax.dequantize", "relax.call_tir")
                    and any(_dtype_of(arg) == "float32" for arg in call.args) and name not in names):
                names.append(name)
            super().visit_call_(call)

    Visitor().visit_expr(mod["main"])
    return names


# ---------------------------------------------------------------------------------------------
# SVDF from the reset state: TFLM's integer SVDF, one invoke after the interpreter's reset.
# (Imported by harness.compile.tflite_import, which has no dequantize -> op -> quantize form
# of SVDF to rewrite: the frontend builds the kernel directly.)
#
# TFLM's SVDF keeps an activation state [batch, filters x memory] between invokes: each invoke
# shifts it one step, writes the feature projection of the input into the newest step, and
# filters every step with weights_time. minrt's graphs have no state that outlives a run, so
# minrt computes an invoke from the reset state (TFLM fills it with the state's zero point for
# int8, with 0 otherwise). Every step but the newest then holds the reset value, so their
# products with weights_time are constants per filter, folded into the bias at compile time,
# and only the newest column of weights_time is kept.


@dataclass(frozen=True)
class SvdfSpec:
    rank: int
    state_dtype: str  # "int16" | "int8": the activation state's and weights_time's type
    zero_state: int
    zero_out: int
    feature_layout: RequantLayout  # input x weights_feature -> state: bias (input zero point folded), multiplier, shift
    out_layout: RequantLayout  # time filter sums -> output: bias (reset steps folded), multiplier, shift
    feature_left_shift: bool = True  # the requantization shifts left (else that is left out)
    out_left_shift: bool = True


@dataclass(frozen=True)
class SvdfTables:
    feature_table: np.ndarray  # int32, feature_layout
    time_newest: np.ndarray  # weights_time's newest step, one per filter (state_dtype)
    out_table: np.ndarray  # int32, out_layout
    spec: SvdfSpec


def svdf_reset_tables(weights_feature: np.ndarray, weights_time: np.ndarray, bias: np.ndarray | None, *,
                      rank: int, zero_in: int, zero_state: int, zero_out: int, state_dtype: str,
                      scales: tuple[float, float, float, float, float]) -> SvdfTables:
    """The constants of an int8 SVDF invoked once from the reset state. `scales` are the float32
    scales of input, weights_feature, state, weights_time and output. The real multipliers
    (input x feature / state, state x time / output) are taken in double from the float32
    scales, as PyPI tflite-micro 0.dev20261023 does: TFLM's source at 90b983c multiplies them in
    float32 first, which rounds some ties the other way (1 unit; 3 of 300 inputs of the test's
    int16 model differ from the wheel that way)."""
    s_in, s_feature, s_state, s_time, s_out = (float(np.float32(s)) for s in scales)
    real_feature = s_in * s_feature / s_state
    real_out = s_state * s_time / s_out
    filters, memory = (int(d) for d in weights_time.shape)
    units = filters // rank
    feature_bias = fold_input_zero_point(np.zeros(filters, dtype=np.int32), weights_feature, zero_in, (1,))
    (feature_table,), feature_layout = requant_table(feature_bias, np.full(filters, real_feature))
    # per filter: sum over the old steps of time x (reset - zero point), and the newest step's
    # time x -zero point; summed over the rank's filters into each unit's bias (int32 wraps as TFLM's)
    reset = zero_state if state_dtype == "int8" else 0
    wt = weights_time.astype(np.int64)
    per_filter = (reset - zero_state) * wt[:, : memory - 1].sum(axis=1) - zero_state * wt[:, memory - 1]
    total = (np.zeros(units, dtype=np.int64) if bias is None else bias.astype(np.int64).reshape(units))
    total = total + per_filter.reshape(units, rank).sum(axis=1)
    out_bias = ((total + (1 << 31)) % (1 << 32) - (1 << 31)).astype(np.int32)
    (out_table,), out_layout = requant_table(out_bias, np.full(units, real_out))
    spec = SvdfSpec(rank=rank, state_dtype=state_dtype, zero_state=zero_state, zero_out=zero_out,
                    feature_layout=feature_layout, out_layout=out_layout,
                    feature_left_shift=_any_left_shift([feature_table], feature_layout),
                    out_left_shift=_any_left_shift([out_table], out_layout))
    newest = np.ascontiguousarray(weights_time[:, memory - 1]).astype(state_dtype)
    return SvdfTables(feature_table, newest, out_table, spec)


def svdf_reference(x: np.ndarray, weights_feature: np.ndarray, tables: SvdfTables) -> np.ndarray:
    """svdf_te in Python integers (the yardstick the tests hold the kernel to)."""
    spec = tables.spec
    feature = read_requant_table([tables.feature_table], spec.feature_layout)
    out = read_requant_table([tables.out_table], spec.out_layout)
    lo, hi = INT_RANGES[spec.state_dtype]
    batch, filters = x.shape[0], weights_feature.shape[0]
    units = filters // spec.rank
    y = np.zeros((batch, units), dtype=np.int8)
    for b in range(batch):
        state = []
        for f in range(filters):
            dot = _wrap32(int(np.dot(x[b].astype(np.int64), weights_feature[f].astype(np.int64))) + int(feature["bias"][f]))
            v = multiply_by_quantized_multiplier_ref(dot, int(feature["multiplier"][f]), int(feature["shift"][f]))
            state.append(np.array(min(max(v, lo), hi) + spec.zero_state).astype(spec.state_dtype).item())
        for u in range(units):
            acc = sum(state[u * spec.rank + r] * int(tables.time_newest[u * spec.rank + r]) for r in range(spec.rank))
            acc = _wrap32(acc + int(out["bias"][u]))
            v = multiply_by_quantized_multiplier_ref(acc, int(out["multiplier"][u]), int(out["shift"][u]))
            y[b, u] = min(max(v + spec.zero_out, -128), 127)
    return y


def svdf_te(x: Any, weights_feature: Any, feature_table: Any, time_newest: Any, out_table: Any, spec: SvdfSpec) -> Any:
    """int8 x [B, I] -> int8 [B, units]: the feature projection sum(x * weights_feature) in int32,
    requantized to the state's type (saturated, then the state's zero point added, wrapping in
    that type as TFLM's store does); times the newest time weight, summed over each unit's
    `rank` filters in int32 with the folded bias, requantized to int8."""
    import tvm
    from tvm import te

    batch, depth = (int(d) for d in x.shape)
    filters = int(weights_feature.shape[0])
    units = filters // spec.rank
    lo, hi = INT_RANGES[spec.state_dtype]
    feature = spec.feature_layout.reader(feature_table)
    rk = te.reduce_axis((0, depth), "rk")
    acc = te.compute((batch, filters), lambda b, f: te.sum(
        x[b, rk].astype("int32") * weights_feature[f, rk].astype("int32"), axis=rk), name="acc")

    def to_state(b: Any, f: Any) -> Any:
        total = tvm.tirx.reinterpret("int32", tvm.tirx.reinterpret("uint32", acc[b, f] + feature.bias(f)))
        shift = feature.shift(f) if spec.feature_left_shift else tvm.tirx.min(feature.shift(f), _c(0))
        value = multiply_by_quantized_multiplier(total, feature.multiplier(f), shift)
        return (tvm.tirx.max(tvm.tirx.min(value, _c(hi)), _c(lo)) + _c(spec.zero_state)).astype(spec.state_dtype)

    state = te.compute((batch, filters), to_state, name="state")
    rr = te.reduce_axis((0, spec.rank), "rr")
    timed = te.compute((batch, units), lambda b, u: te.sum(
        state[b, u * spec.rank + rr].astype("int32") * time_newest[u * spec.rank + rr].astype("int32"), axis=rr),
        name="time")
    out = spec.out_layout.reader(out_table)
    return te.compute((batch, units), lambda b, u: _requantize(timed[b, u], out, u, spec.zero_out, TFLM,
                                                               left_shift=spec.out_left_shift), name="requant")



# ---------------------------------------------------------------------------------------------
# QUANTIZE from an integer type to another with int16 or int32 on one side (TFLM's keyword
# model ends with int16 -> int32): TFLM's Requantize. Also built by the frontend directly:
# TVM's quantize has no int32 output.



def requantize_table(input_scale: float, output_scale: float) -> np.ndarray:
    """int32 [2]: the Q31 multiplier and shift of input scale / output scale, in double from the
    float32 scales (TFLM's quantize kernel)."""
    return np.array(quantize_multiplier(float(np.float32(input_scale)) / float(np.float32(output_scale))),
                    dtype=np.int32)


def requantize_ref(x: np.ndarray, table: np.ndarray, zero_in: int, zero_out: int, out_dtype: str) -> np.ndarray:
    """requantize_te in Python integers."""
    lo, hi = INT_RANGES[out_dtype]
    values = [min(max(multiply_by_quantized_multiplier_ref(int(v) - zero_in, int(table[0]), int(table[1])) + zero_out,
                      lo), hi) for v in np.asarray(x).reshape(-1)]
    return np.array(values, dtype=out_dtype).reshape(np.shape(x))


def requantize_te(x: Any, table: Any, zero_in: int, zero_out: int, out_dtype: str) -> Any:
    """Every value: (x - zero_in) times the table's multiplier (multiply_by_quantized_multiplier),
    plus zero_out, saturated to `out_dtype`."""
    import tvm
    from tvm import te

    lo, hi = INT_RANGES[out_dtype]

    def one(*idx: Any) -> Any:
        value = multiply_by_quantized_multiplier(x[idx].astype("int32") - _c(zero_in), table[0], table[1]) + _c(zero_out)
        if out_dtype != "int32":
            value = tvm.tirx.max(tvm.tirx.min(value, _c(hi)), _c(lo))
        return value.astype(out_dtype)

    return te.compute(tuple(int(d) for d in x.shape), one, name="requantize")
