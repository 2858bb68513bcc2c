"""Default (rule-based) schedules for the legalized PrimFuncs of a model.

TVM's legalized kernels are plain loop nests: a whole-tensor `pad_temp`, a reduction that
writes a whole-tensor intermediate, then one loop nest per elementwise epilogue. Without a
schedule LLVM sees scalar code and the intermediates become workspace. The rules here
rewrite every kernel in a few milliseconds, with no measurement:

- every spatial block that is not an output and not padding is inlined into its consumers
  (bias adds, relus, residual adds become part of one loop);
- the heaviest reduction block (conv2d, depthwise conv2d, matmul/dense, pooling) is
  register-tiled: the innermost output axis is split into vector lanes (`lanes` floats per
  SIMD register: 8 for AVX2, 4 for NEON, 1 on a Cortex-M's scalar FPU, where the "vector"
  is an unrolled group of scalar accumulators) and a second output axis into rows, so each tile
  keeps about eight vector accumulators live across the whole reduction; the epilogue is
  computed per tile (its intermediate shrinks to one tile); padding is computed inside the
  loop that consumes it (one padded row band or plane, not the whole tensor);
- a conv whose weight has the output channel innermost (HWIO: dense convs, and grouped ones
  with whole or half vectors of output channels per group) gets a channels-last tile instead:
  a vector of output channels times a row of pixels, per group; a grouped conv whose weight
  is blocked per group (its groups padded to whole vectors where they are not) is taken one
  group and band of rows at a time;
- any remaining output loop nest without a reduction is fused and vectorized (a reshape or
  transpose along its innermost axis, so its reads stay contiguous).

- on Linux targets, kernels with enough work (multiply-adds plus elements read and written)
  get their outermost loop parallel: the runner runs it on its threads
  (runtime_c/runner/pool.c); minrt's core runs it as one task; firmware kernels have none.
A kernel whose structure the rules do not recognise keeps the inlining (always safe) and
is reported as such, so `harness compile` never hands the raw legalized nest to codegen
without at least that step.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

log = logging.getLogger(__name__)

#: Target accumulator registers per tile (x86_64 AVX2 has 16 ymm, NEON 16 q registers).
_ACCUMULATORS = 8


def _target_attrs(tvm_target: Any) -> dict:
    """A TVM target's attributes (mtriple, mcpu, mattr...), or a plain mapping of them as is."""
    return dict(tvm_target.attrs) if hasattr(tvm_target, "attrs") else dict(tvm_target)


def simd_lanes(tvm_target: Any) -> int:
    """float32 lanes of the target's vector registers, from its LLVM mcpu/mattr."""
    attrs = _target_attrs(tvm_target)
    triple = str(attrs.get("mtriple", ""))
    mcpu = str(attrs.get("mcpu", ""))
    mattr = [str(a) for a in attrs.get("mattr", [])]
    if triple.startswith("x86_64") or triple.startswith("i686") or not triple:
        if "+avx512f" in mattr or mcpu in {"x86-64-v4", "skylake-avx512", "icelake-server"}:
            return 16
        if "+avx2" in mattr or "+avx" in mattr or mcpu in {"x86-64-v3", "haswell", "skylake", "znver2", "znver3"}:
            return 8
        return 4  # SSE2, the x86-64 baseline
    if triple.startswith("thumbv") and "+mve.fp" not in mattr:
        return 1  # Cortex-M: a scalar FPU (only Helium, ARMv8.1-M's MVE, has float lanes)
    return 4  # NEON on ARMv7/AArch64: 128-bit


def pools_as_loops(tvm_target: Any) -> bool:
    """Whether pooling kernels keep their loop nest for LLVM's loop vectorizer (x86_64): it
    loads a stride-2 window as whole vectors and deinterleaves them, where a TVM-vectorized
    tile gathers each lane (see _pool_as_loops)."""
    attrs = _target_attrs(tvm_target)
    return str(attrs.get("mtriple", "")).startswith(("x86_64", "i686"))


@dataclass
class KernelSchedule:
    """What the rules did to one kernel."""

    rule: str  # "tiled", "vectorized", "inlined"
    detail: str = ""
    tile: "ConvTile | None" = None  # a channels-last convolution's register tile
    tile_axes: tuple[int, int] | None = None  # (vectors of output channels, output pixels) it divides
    trace: Any = None  # the schedule's trace (what `harness tune` records)


@dataclass(frozen=True)
class ConvTile:
    """A channels-last convolution's register tile (vectors of output channels x output pixels)
    and whether its weights are packed per channel block. The rule picks one by its register
    and cache model; `harness tune` measures the others near it (conv_tile_variants)."""

    vectors: int
    pixels: int
    packed: bool


def _largest_divisor(n: int, limit: int) -> int:
    for d in range(max(1, min(n, limit)), 0, -1):
        if n % d == 0:
            return d
    return 1


def vector_factor(n: int, lanes: int) -> int:
    """A tile width for an axis of extent n: a multiple of `lanes` dividing n when there is
    one (up to 4 registers), else n itself when it fits one register, else the largest power
    of two below `lanes` dividing n, else n itself when small, else the largest divisor <=
    lanes. A vector wider than a register but not a multiple of it (14 floats on AVX2) is
    assembled element by element (vinsertps): 14 -> 2 took shufflenet's depthwise 3x3 on
    14x14 from 477 to 106 us and its 14x14 pools from 129 to 52 us."""
    for regs in (4, 3, 2, 1):
        if n % (lanes * regs) == 0:
            return lanes * regs
    if n <= lanes:
        return n
    power = next((p for p in (8, 4, 2) if p < lanes and n % p == 0), 0)
    if power:
        return power
    if n <= 2 * lanes:
        return n
    return _largest_divisor(n, lanes)


def _is_spatial(sch: Any, block: Any) -> bool:
    return all(int(iv.iter_type) == 0 for iv in sch.get(block).iter_vars)


def _has_select(sch: Any, block: Any) -> bool:
    return _has_select_expr(sch.get(block).body)


def _has_select_expr(expr: Any) -> bool:
    return "if_then_else" in str(expr)


def _local_buffers(sch: Any) -> set:
    """The buffers the kernel allocates itself (the rest are its parameters)."""
    return set(sch.get(sch.get_sblock("root")).alloc_buffers)


def _writes_output(sch: Any, block: Any, local: set) -> bool:
    return any(region.source not in local for region in sch.get(block).writes)


def _extent(sch: Any, loop: Any) -> int:
    return int(sch.get(loop).extent)


def _inline_spatial(sch: Any, func: Any) -> None:
    """Inline every spatial block that writes a kernel-local buffer and has no select into
    its consumers, until none is left (padding stays a block, so it can be computed where it
    is consumed)."""
    local = _local_buffers(sch)
    changed = True
    while changed:
        changed = False
        for block in _blocks(sch):
            if not _is_spatial(sch, block) or _writes_output(sch, block, local) or _has_select(sch, block):
                continue
            try:
                sch.compute_inline(block)
                changed = True
                break
            except Exception:  # noqa: BLE001 - a block that cannot be inlined stays
                continue


def _inline_output_copies(sch: Any) -> None:
    """An output block that only copies a kernel-local buffer (an inference Dropout after a
    concatenation, whose select kept it from being inlined) is inlined into the block that
    writes that buffer, which then writes the output itself: one pass, not two (squeezenet's
    512-channel concatenation on 13x13 with its Dropout: 35-43 us)."""
    from tvm import tirx
    from tvm.ir.expr import TensorLoad

    local = _local_buffers(sch)
    for block in _blocks(sch):
        body = sch.get(block).body
        if (_is_spatial(sch, block) and _writes_output(sch, block, local) and isinstance(body, tirx.BufferStore)
                and isinstance(body.value, TensorLoad) and body.value.source in local):
            try:
                sch.reverse_compute_inline(block)
            except Exception:  # noqa: BLE001, S112 - a copy that cannot be inlined stays a pass of its own
                continue


def _blocks(sch: Any) -> list:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _region_vars(region: Any) -> set[str]:
    """Names of the variables a buffer region's index expressions use."""
    from tvm.tirx.analysis import undefined_vars

    names: set[str] = set()
    for rng in region.region:
        for expr in (rng.min, rng.extent):
            names |= {v.name for v in undefined_vars(expr)}
    return names


def _tile_reduction(sch: Any, func: Any, block: Any, lanes: int, parallel: bool = False) -> tuple[str, list[str]]:
    """Register-tile one reduction block; returns a description of the tiling and the names
    of the blocks it placed in the tile. With `parallel`, the outermost loop with more than one
    iteration is parallel (before the reduction is split into init and update, which
    `parallel` requires)."""
    local = _local_buffers(sch)
    node = sch.get(block)
    loops = sch.get_loops(block)
    iter_vars = list(node.iter_vars)
    if len(loops) != len(iter_vars):
        raise ValueError("loops and block iterators differ")
    spatial = [(lp, iv) for lp, iv in zip(loops, iter_vars) if int(iv.iter_type) == 0]
    reduce = [lp for lp, iv in zip(loops, iter_vars) if int(iv.iter_type) != 0]
    extents = [int(iv.dom.extent) for _, iv in spatial]
    if not spatial or extents[-1] <= 1:
        raise ValueError("no vectorizable output axis")

    # Which spatial iterators each read buffer is indexed by (by name in its region text).
    reads = [(r.source, _region_vars(r)) for r in node.reads]
    names = [iv.var.name for _, iv in spatial]
    producers = {sch.get(p).writes[0].source: p for p in sch.get_producers(block)}
    padded = [buf for buf, _ in reads if buf in producers]

    v = len(spatial) - 1
    candidates = [i for i in range(v) if extents[i] > 1]
    u = None
    if candidates:
        def reuse(i: int) -> tuple[int, int, int]:
            free_of_pad = all(names[i] not in used for buf, used in reads if buf in padded)
            shared = sum(1 for _, used in reads if names[i] not in used)
            return (int(free_of_pad and bool(padded)), shared, extents[i])
        u = max(candidates, key=reuse)

    if u is None:  # one output row (dense with batch 1): all accumulators along the vector axis
        v_factor = next((lanes * r for r in range(_ACCUMULATORS, 0, -1) if extents[v] % (lanes * r) == 0),
                        vector_factor(extents[v], lanes))
    else:
        v_factor = vector_factor(extents[v], lanes)
    vector_regs = max(1, v_factor // lanes)
    u_factor = _largest_divisor(extents[u], max(1, _ACCUMULATORS // vector_regs)) if u is not None else 1

    v_o, v_i = sch.split(spatial[v][0], [None, v_factor])
    order_outer = [lp for i, (lp, _) in enumerate(spatial) if i not in (u, v)]
    if u is not None:
        u_o, u_i = sch.split(spatial[u][0], [None, u_factor])
        tile_outer, tile_inner = [u_o, v_o], [u_i, v_i]
    else:
        tile_outer, tile_inner = [v_o], [v_i]
    sch.reorder(*order_outer, *tile_outer, *reduce, *tile_inner)

    # The accumulator tile: the epilogue (or a write cache) is computed per tile.
    consumers = list(sch.get_consumers(block))
    if _writes_output(sch, block, local) or not consumers:
        cache = sch.cache_write(block, 0, "global")
        consumers = [cache]
    for consumer in consumers:
        sch.reverse_compute_at(consumer, tile_outer[-1], preserve_unit_loops=True)
        inner = sch.get_loops(consumer)[-1]
        if not _has_select(sch, consumer):
            sch.vectorize(inner)
    if u is not None:
        sch.unroll(u_i)
    v_i = _register_vectors(sch, v_i, v_factor, lanes)
    # Padding: computed inside the loop that consumes it, outside the tile loops.
    pad_anchor = order_outer[-1] if order_outer else tile_outer[0]
    threads = ""
    if parallel:
        threads, pad_anchor = _parallelize_keeping(sch, block, pad_anchor)
    if reduce:
        init = sch.decompose_reduction(block, reduce[0])
        init_inner = sch.get_loops(init)[-1]
        if sch.get(init_inner).kind != sch.get(v_i).kind:
            sch.vectorize(init_inner)
    for buf in padded:
        sch.compute_at(producers[buf], pad_anchor, preserve_unit_loops=True)

    placed = [sch.get(c).name_hint for c in consumers]
    return (f"tile {names[u] if u is not None else '-'}x{names[v]} = {u_factor}x{v_factor}"
            f"{', pad computed in loop' if padded else ''}{', ' + threads if threads else ''}"), placed


def group_lanes(group: int, lanes: int) -> int:
    """The vector width for a grouped conv's `group` output channels per group: the full
    `lanes` when they divide it, else half vectors (68 channels: 17 of 4 on AVX2), else 0
    (no channels-last tile)."""
    for width in (lanes, lanes // 2):
        if width > 1 and group % width == 0:
            return width
    return 0


def _register_vectors(sch: Any, loop: Any, factor: int, lanes: int, split: bool = False) -> Any:
    """Vectorize a tile's innermost loop of `factor` floats, as factor/lanes unrolled register
    vectors when that count is not a power of two: one vector of 3 registers (<24 x float>)
    kept as the accumulator across a reduction is torn into scalars by LLVM (vinsertps per
    element; an inception 5x5 conv took 32 ms, as 3 vectors 1.8 ms). With `split`, always as
    register vectors (a blocked weight's channel index is contiguous within `lanes` only).
    Returns the vectorized loop."""
    vectors = factor // lanes
    if lanes > 1 and factor % lanes == 0 and (split and vectors > 1 or vectors & (vectors - 1)):
        outer, loop = sch.split(loop, [None, lanes])
        sch.unroll(outer)
    sch.vectorize(loop)
    return loop


def _channel_axis(sch: Any, block: Any, lanes: int) -> tuple[int, Any, int] | None:
    """For a conv2d/matmul whose weight (a kernel parameter) is laid out with the output
    channel last (HWIO, or blocked as (O/lanes, KH, KW, I, lanes): see
    harness.compile.onnx_import.conv_weights_channels_last): the index
    of the spatial iterator that is the weight's innermost index, when its extent is a whole
    number of vectors; with the weight's read region and the output channels per group (0:
    the data read does not use the iterator; G: a grouped conv, whose data read uses it only
    as `channel // G`, with G a whole number of vectors)."""
    local = _local_buffers(sch)
    node = sch.get(block)
    iter_vars = list(node.iter_vars)
    spatial = [iv for iv in iter_vars if int(iv.iter_type) == 0]
    if len(spatial) != 4 or len(node.reads) != 2:
        return None
    for weight in node.reads:
        if weight.source in local or len(weight.region) not in (4, 5) or str(weight.source.dtype) != "float32":
            continue
        last = _vars_of(weight.region[-1].min)
        others = [r for r in node.reads if not r.same_as(weight)]
        for i, iv in enumerate(spatial):
            if last != {iv.var.name} or int(iv.dom.extent) % max(2, lanes // 2):
                continue
            if all(iv.var.name not in _region_vars(o) for o in others):
                if int(iv.dom.extent) % lanes == 0:
                    return i, weight, 0
                continue
            group = _group_size(others, iv.var)
            if group and group_lanes(group, lanes) and int(iv.dom.extent) % group == 0:
                return i, weight, group
    return None


def _group_size(reads: list, var: Any) -> int:
    """G when every use of `var` in the reads' indices is `var // G` (a grouped conv's data
    channel, `channel // G * G + rc`); else 0."""
    from tvm import tirx
    from tvm.ir.expr import Expr

    divisors: set[int] = set()
    bare = 0

    def visit(expr: Any) -> None:
        nonlocal bare
        if expr.same_as(var):
            bare += 1
        elif isinstance(expr, tirx.FloorDiv) and expr.a.same_as(var) and isinstance(expr.b, tirx.IntImm):
            divisors.add(int(expr.b.value))
        else:
            for child in ("a", "b", "value"):
                if isinstance(getattr(expr, child, None), Expr):
                    visit(getattr(expr, child))
    for region in reads:
        for rng in region.region:
            visit(rng.min)
    return divisors.pop() if len(divisors) == 1 and not bare else 0


def _vars_of(expr: Any) -> set[str]:
    from tvm.tirx.analysis import undefined_vars

    return {v.name for v in undefined_vars(expr)}


#: SIMD registers of AVX2 and NEON (ARMv7: q0-q15).
_VECTOR_REGISTERS = 16


def _conv_register_tiles(channel_vectors: int, pixels: int, most_vectors: int = 4) -> list[tuple[int, int]]:
    """Every (vectors of output channels, output pixels) register tile that fits: each
    reduction step loads `vectors` weight vectors and broadcasts `pixels` inputs for
    vectors x pixels FMAs, all accumulators and operands in registers (no spill). Both counts
    divide their axis, so no tile has a tail. Best first: the most FMAs per load."""
    tiles = [(vectors, count) for vectors in range(1, most_vectors + 1) if channel_vectors % vectors == 0
             for count in range(1, pixels + 1)
             if pixels % count == 0 and vectors * count + vectors + 1 <= _VECTOR_REGISTERS]
    return sorted(tiles, key=lambda t: (-(t[0] * t[1] / (t[0] + t[1])), -(t[0] * t[1]), t))


def _conv_register_tile(channel_vectors: int, pixels: int, most_vectors: int = 4) -> tuple[int, int]:
    """The rule's register tile: the first of _conv_register_tiles."""
    return (_conv_register_tiles(channel_vectors, pixels, most_vectors) or [(1, 1)])[0]


def _whole_row_tile(axes: tuple[int, int], chosen: tuple[int, int]) -> tuple[int, int]:
    """Off NEON, for a conv with taps and weights neither packed nor chunked, all of whose
    output channels fit the rule's tile, which takes 2 pixels or fewer (32 channels on a
    14-pixel row: 4 vectors x 2 pixels): one vector of channels across the whole row, when it
    holds more accumulators and fits the registers (the row, a weight vector and a broadcast).
    densenet121's 3x3 128 -> 32 on 14x14 (x24): 157 -> 144 us. Measured worse elsewhere, so
    not taken there: 3x3 64 -> 64 on 14x14 (4 x 2 of 8 vectors) 148 -> 281 us; 28- and
    56-pixel rows keep 2 vectors x 4 pixels (1 x 14 on 28x28: 586 -> 630 us)."""
    vectors, pixels = chosen
    channel_vectors, row = axes
    if vectors != channel_vectors or pixels > 2 or row <= vectors * pixels or row + 2 > _VECTOR_REGISTERS:
        return chosen
    return (1, row)


def conv_tile_variants(schedule: KernelSchedule, limit: int = 8) -> list[ConvTile]:
    """Register tiles and weight packing near the rule's choice for a channels-last
    convolution (none for other kernels): the next-best tiles by the rule's own model, and
    the rule's tile with the other packing. What `harness tune` measures on the device."""
    if schedule.tile is None or schedule.tile_axes is None:
        return []
    chosen = schedule.tile
    others = [ConvTile(v, p, chosen.packed) for v, p in _conv_register_tiles(*schedule.tile_axes)
              if (v, p) != (chosen.vectors, chosen.pixels)]
    return [ConvTile(chosen.vectors, chosen.pixels, not chosen.packed), *others][:limit]


#: Weights up to this size are swept once per output row (a typical per-core L2).
L2_BYTES = 512 * 1024


#: ARMv7 NEON: an innermost reduction loop of at most this many steps (a first layer's 3 input
#: channels) is unrolled; a longer one stays a loop (unrolled by 4, LLVM hoists the steps'
#: broadcast loads above the FMAs and spills them: light_squeezenet 298 M -> 445 M).
_NEON_SHORT_REDUCTION = 4


def _epilogue_along_channels(sch: Any, consumer: Any, channels: int, pixels: int, lanes: int) -> bool:
    """ARMv7 NEON: a channels-last tile's epilogue (bias, residual, relu; NCHW output) computed
    pixel by pixel on vectors of `lanes` output channels, as the accumulators hold them, each
    lane stored with vst1.32 {dN[k]} (one instruction, the output's channel stride apart),
    instead of element by element. Returns whether its loops had the expected shape (n, c, y, x
    of the tile: 1, `channels`, 1, `pixels`) and were rewritten."""
    loops = sch.get_loops(consumer)[-4:]
    if len(loops) < 4 or [_extent(sch, lp) for lp in loops] != [1, channels, 1, pixels] or channels % lanes:
        return False
    _, c, _, x = loops
    sch.reorder(x, c)
    c_o, c_i = sch.split(c, [None, lanes])
    sch.unroll(x)
    sch.unroll(c_o)
    sch.vectorize(c_i)
    return True


def _epilogue_along_pixels(sch: Any, consumer: Any, pixels: int) -> bool:
    """Off NEON: a channels-last tile's epilogue (NCHW output) stores its `pixels` outputs of
    each channel as one vector when they are a power of two, the tile's channels unrolled
    (LLVM transposes the accumulators in registers), where it stored them one by one. A conv
    with a short reduction spends much of its time there: light_shufflenet's first conv (3 ->
    24 channels, 3x3, stride 2, tile 4 pixels x 3 vectors) 451 -> 329 us; convs with long
    reductions measured unchanged. Returns whether the epilogue was rewritten."""
    loops = sch.get_loops(consumer)
    if _extent(sch, loops[-1]) != pixels or pixels & (pixels - 1) or pixels == 1 or _has_select(sch, consumer):
        return False
    sch.unroll(loops[-3])
    sch.vectorize(loops[-1])
    return True


def _epilogue_by_pixel_vectors(sch: Any, consumer: Any, lanes: int) -> bool:
    """A chunked conv's epilogue (bias, residual, relu over a whole channel block, loops n, c,
    y, x; its accumulators channels-last) with the output pixels fused and split into vectors,
    the block's channels inside them: a vector is read from `lanes` accumulator pixels (one
    cache line each, which stay in L1 for the block's channels) and stored contiguously in the
    NCHW output. Channel by channel over the whole block (200 KB on 56x56), every channel read
    the block again from L2 (resnet50's 1x1 64 -> 256 on 56x56 with its residual: 1751 ->
    1300 us). Only where the pixels are a whole number of vectors (7-pixel vectors on 7x7 gained
    nothing). Returns whether the loops had that shape and were rewritten."""
    loops = sch.get_loops(consumer)[-4:]
    if len(loops) < 4:
        return False
    _, c, y, x = loops
    if (_extent(sch, y) * _extent(sch, x)) % lanes:
        return False
    p_o, p_i = sch.split(sch.fuse(y, x), [None, lanes])
    sch.reorder(p_o, c, p_i)
    sch.vectorize(p_i)
    return True


#: Input channels reduced per chunk by a conv taken one channel block at a time, with one tap
#: (1x1) and with several (3x3), measured on resnet50's 7x7 and 14x14 stages (CPU time per
#: kernel): 1x1 in chunks of 4/8/16/32/128/whole: 79/86/82/64/73/55 GFLOP/s on 7x7; 3x3 in
#: chunks of 8/16/32/whole: 93/90/80/81 on 7x7, 86/79/75/73 on 14x14.
_CHUNK_1X1 = 16
_CHUNK_TAPS = 8


def takes_blocked_weight(oihw: tuple[int, ...], lanes: int, chunks: bool, width: int = 0) -> bool:
    """Whether a dense float32 conv of this OIHW weight shape gets its weight blocked as
    (O/lanes, KH, KW, I, lanes) at compile time (harness.compile.onnx_import), and so the
    channel-block-outer tile: whole vectors of output channels, and a weight over L2_BYTES (no
    per-call copy), or, with `chunks` (the targets that reduce in chunks: not ARMv7 NEON), a
    1x1 conv of at least two chunks of input channels (resnet50-like 1x1 convs on 28x28:
    69 -> 79 and 85 -> 98 GFLOP/s; on 56x56 62 -> 60 and 76 -> 90), or a conv whose output
    rows of `width` pixels are computed a few columns wider (conv_output_width)."""
    out, ins, kh, kw = oihw
    if out % lanes:
        return False
    if 4 * math.prod(oihw) > L2_BYTES:
        return True
    if conv_output_width(oihw, width, lanes, chunks) > width:
        return True
    return chunks and kh * kw == 1 and ins > _CHUNK_1X1 and ins % _CHUNK_1X1 == 0


def conv_output_width(oihw: tuple[int, ...], width: int, lanes: int, chunks: bool) -> int:
    """How many output columns a dense conv of this OIHW weight computes per row of `width`
    (harness.compile.onnx_import.blocked_conv2d_te): `width`, or, with `chunks` (not ARMv7
    NEON) for a conv with taps over at least a chunk of input channels whose row divides only
    into a register tile of fewer than _ACCUMULATORS accumulators (27 = 3 x 3 x 3 pixels:
    2 vectors x 3 pixels, 6 FMAs per 5 loads), up to width/8 more columns whose tile does more
    FMAs per load, counting the extra columns as waste (27 -> 30: 2 vectors x 6 pixels). The
    extra columns read zero padding; the epilogue (per output row, or per channel block when
    the input channels are chunked) drops them. x86_64, 1 thread: squeezenet's 3x3 32 -> 128
    expands on 27x27 660 -> 605 us, inception_v1's 3x3 96 -> 128 on 27x27 2004 -> 1719 us. Not 1x1 convs (its 1x1 convs on 27x27,
    with 32 and 128 output channels, took 79 -> 92 and 137 -> 182 us) nor a first layer's 3
    input channels (3x3 stride 2 on 111x111: 811 -> 878 us): their reductions are too short to
    pay for the per-row epilogue."""
    out, ins, kh, kw = oihw
    if not chunks or not width or out % lanes or kh * kw == 1 or ins < _CHUNK_TAPS:
        return width
    vectors = out // lanes
    tile = _conv_register_tile(vectors, width)
    if tile[0] * tile[1] >= _ACCUMULATORS:
        return width

    def fmas_per_load(columns: int) -> float:
        v, p = _conv_register_tile(vectors, columns)
        return v * p / (v + p) * width / columns
    return max(range(width, width + width // 8 + 1), key=lambda columns: (fmas_per_load(columns), -columns))


def _input_channel_chunk(taps: int, channels: int, blocks: int) -> int:
    """For a conv taken one channel block at a time: how many of its `channels` input channels
    to reduce for every output row of the block before the next ones (0: all at once). A
    chunk's inputs and weights stay in L1 across the rows, where a whole reduction streamed
    them from L2 for every row; the accumulators are stored between chunks. Only with more
    than one channel block (the loop a parallel kernel splits: never the chunks, a reduction)."""
    chunk = _CHUNK_1X1 if taps == 1 else _CHUNK_TAPS
    return chunk if blocks > 1 and channels > chunk and channels % chunk == 0 else 0


def _tile_conv_channels(sch: Any, block: Any, lanes: int, channel: int, weight: Any, group: int = 0,
                        parallel: bool = False, tile: ConvTile | None = None, neon: bool = False,
                        ) -> tuple[str, list[str], ConvTile, tuple[int, int]]:
    """Register-tile a convolution with channels-last weights: a vector of output channels
    times a row of output pixels, the input values broadcast, the weights loaded as vectors
    (no dependence on the image width being a multiple of the vector width). Loop order
    n, channel block, output row, pixel block | reduction | pixels (unrolled), channels
    (vector); padding is computed per output row; the epilogue per tile. A grouped conv
    (`group` output channels per group) has its channel blocks within one group."""
    local = _local_buffers(sch)
    node = sch.get(block)
    loops = sch.get_loops(block)
    iter_vars = list(node.iter_vars)
    if len(loops) != len(iter_vars):
        raise ValueError("loops and block iterators differ")
    spatial = [lp for lp, iv in zip(loops, iter_vars) if int(iv.iter_type) == 0]
    reduce = [lp for lp, iv in zip(loops, iter_vars) if int(iv.iter_type) != 0]
    extents = [_extent(sch, lp) for lp in spatial]
    producers = {sch.get(p).writes[0].source: p for p in sch.get_producers(block)}
    padded = [r.source for r in node.reads if r.source in producers]

    others = [i for i in range(4) if i != channel]
    batch, row, col = others  # n, oh, ow of NCHW
    if group:
        lanes = group_lanes(group, lanes)
    # The reduction walks the weight in its memory order (for HWIO: kh, kw, then input
    # channels, one vector of output channels apart), not kh/kw innermost, whose steps are a
    # whole weight plane apart (the same L1 set every step when a plane is 4 KiB aligned).
    reduce_names = [iv.var.name for iv in iter_vars if int(iv.iter_type) != 0]
    def weight_position(i: int) -> int:
        return next((k for k, r in enumerate(weight.region) if reduce_names[i] in _vars_of(r.min)), len(weight.region))
    reduce = [reduce[i] for i in sorted(range(len(reduce)), key=weight_position)]
    taps = math.prod(_extent(sch, loop) for loop in reduce[:-1])
    channels = _extent(sch, reduce[-1]) if reduce else 0

    # Weights that fit the L2 cache are swept once per output row, so the row's input (and
    # its padding, computed once) stays in cache. Larger ones are taken one channel block at a
    # time, copied once into a contiguous buffer (its vectors one after the other instead of a
    # weight row apart) that every output row of the image then reads from cache; a weight
    # blocked at compile time (O/lanes, KH, KW, I, lanes) is read in that order already, with
    # no copy. Off NEON such a block reduces its input channels in chunks (_input_channel_chunk).
    blocked = len(weight.region) == 5
    if group and blocked:
        crop = _cropped_group(sch, block, channel, group) or group
        return _tile_groups(sch, block, lanes, (spatial[batch], spatial[channel], spatial[row], spatial[col]),
                            reduce, group, crop, parallel, tile)
    weight_bytes = 4 * math.prod(int(d) for d in weight.source.shape)
    packed = (blocked or weight_bytes > L2_BYTES) if tile is None else tile.packed
    out_channels = extents[channel]

    def chunk_for(v_factor: int) -> int:
        return _input_channel_chunk(taps, channels, out_channels // v_factor) if packed and not neon else 0

    axes = ((group or out_channels) // lanes, extents[col])
    vectors, u_factor = _conv_register_tile(*axes) if tile is None else (tile.vectors, tile.pixels)
    if tile is None and not neon and not packed and not group and taps > 1:
        vectors, u_factor = _whole_row_tile(axes, (vectors, u_factor))
    # A chunked conv (its epilogue after the whole block) may tile its output rows as one
    # axis of pixels, where that gives another tile: 14x14 takes 2 vectors x 4 pixels, as
    # 28x28 does, not 4 x 2 (resnet50's 3x3 256 on 14x14: 82 -> 94 GFLOP/s).
    flat_axes = (axes[0], extents[row] * extents[col])
    flat_tile = _conv_register_tile(*flat_axes) if tile is None else (tile.vectors, tile.pixels)
    flat = (not group and chunk_for(flat_tile[0] * lanes) > 0 and flat_tile != (vectors, u_factor)
            and (tile is None or axes[1] % u_factor != 0))
    if flat:
        axes, (vectors, u_factor) = flat_axes, flat_tile
    if axes[0] % vectors or axes[1] % u_factor:
        raise ValueError(f"tile {vectors}x{u_factor} does not divide {axes}")
    v_factor = vectors * lanes
    chunk = chunk_for(v_factor)

    # The accumulator tile is channel-innermost, so a vector of channels is contiguous.
    def channels_last(*idx: Any) -> list:
        return [*(idx[i] for i in others), idx[channel]]

    consumers = list(sch.get_consumers(block))
    if _writes_output(sch, block, local) or not consumers:
        consumers = [sch.cache_write(block, 0, "global")]
    sch.transform_layout(block, ("write", 0), channels_last)

    if group:  # channel -> group, block in group, vector: the data channel depends on the group only
        g, in_group = sch.split(spatial[channel], [None, group])
        g_c, c_i = sch.split(in_group, [None, v_factor])
        c_o = sch.fuse(g, g_c)
    else:
        c_o, c_i = sch.split(spatial[channel], [None, v_factor])
    if flat:
        x_o, x_i = sch.split(sch.fuse(spatial[row], spatial[col]), [None, u_factor])
        rows = []
    else:
        x_o, x_i = sch.split(spatial[col], [None, u_factor])
        rows = [spatial[row]]
    if not packed:
        sch.reorder(spatial[batch], *rows, c_o, x_o, *reduce, x_i, c_i)
    else:
        sch.reorder(spatial[batch], c_o, *rows, x_o, *reduce, x_i, c_i)
    if chunk:
        rc_o, rc_i = sch.split(reduce[-1], [None, chunk])
        reduce = [rc_o, *reduce[:-1], rc_i]
        sch.reorder(c_o, rc_o, *rows, x_o, *reduce[1:], x_i, c_i)
    if packed and not blocked:
        index = next(i for i, r in enumerate(node.reads) if r.same_as(weight))
        block_copy = sch.cache_read(block, index, "global")
        sch.compute_at(block_copy, c_o, preserve_unit_loops=True)
        sch.vectorize(sch.get_loops(block_copy)[-1])
    pad_anchor = spatial[row]
    # Columns computed past the output's width (conv_output_width): the epilogue runs per
    # output row, within the output's bounds, not per tile, where it would check them per pixel.
    wide = int(sch.get(consumers[0]).writes[0].source.shape[-1]) < extents[col]
    by_pixels = False
    for consumer in consumers:
        sch.reverse_compute_at(consumer, c_o if chunk else spatial[row] if wide and not flat else x_o,
                               preserve_unit_loops=True)
        if neon:
            _epilogue_along_channels(sch, consumer, v_factor, u_factor, lanes)
        elif chunk:
            by_pixels = _epilogue_by_pixel_vectors(sch, consumer, lanes) or by_pixels
        else:
            _epilogue_along_pixels(sch, consumer, u_factor)
    short = neon and reduce and _extent(sch, reduce[-1]) <= _NEON_SHORT_REDUCTION
    if short:
        sch.unroll(reduce[-1])
    sch.unroll(x_i)
    c_i = _register_vectors(sch, c_i, v_factor, lanes, split=blocked)
    # Not fused with padding: every channel block would pad the rows of all input channels
    # again (squeezenet's 3x3 expand convs of 13 rows: 300 -> 353 us at one thread).
    threads = _parallelize_outer(sch, block, fuse=not padded) if parallel else ""
    if reduce:
        init = sch.decompose_reduction(block, reduce[0])
        sch.vectorize(sch.get_loops(init)[-1])
    # With the channel blocks outermost, padding computed per output row would be computed again
    # in every block (64 times for 512 channels): it is computed once, whole, before them
    # (resnet50's 3x3 512-channel conv on 7x7: 61 -> 76 GFLOP/s).
    for buf in padded if not packed else []:
        sch.compute_at(producers[buf], pad_anchor, preserve_unit_loops=True)
    placed = [sch.get(c).name_hint for c in consumers]
    return (f"channels-last tile {u_factor}x{v_factor}{f', groups of {group}' if group else ''}"
            f"{', rows as one axis of pixels' if flat else ''}"
            f"{', weights blocked at compile time' if blocked else ', weights packed per block' if packed else ''}"
            f"{f', input channels in chunks of {chunk}' if chunk else ''}"
            f"{', epilogue by pixel vectors' if by_pixels else ''}"
            f"{', innermost reduction unrolled' if short else ''}"
            f"{(', pad computed once' if packed else ', pad computed in loop') if padded else ''}"
            f"{', ' + threads if threads else ''}"), placed, ConvTile(vectors, u_factor, packed), axes


def _cropped_group(sch: Any, block: Any, channel: int, group: int) -> int:
    """For a grouped conv computing `group` output channels per group, some of them padding
    (harness.compile.onnx_import.blocked_conv2d_te with groups whose output channels are not
    whole vectors): the output channels per group its consumers read, `o // per_group * group
    + o % per_group`; 0 when they read every channel it computes (o itself)."""
    from tvm import tirx
    from tvm.ir.expr import Expr

    def divisors(expr: Any) -> set[int]:
        found = {int(expr.b.value)} if isinstance(expr, tirx.FloorDiv) and isinstance(expr.b, tirx.IntImm) else set()
        for child in ("a", "b"):
            if isinstance(getattr(expr, child, None), Expr):
                found |= divisors(getattr(expr, child))
        return found

    written = sch.get(block).writes[0].source
    for consumer in sch.get_consumers(block):
        for region in sch.get(consumer).reads:
            if region.source.same_as(written):
                found = divisors(region.region[channel].min)
                if len(found) == 1 and found != {group}:
                    return found.pop()
    return 0


#: Output rows a grouped conv may take as one axis of pixels (_tile_groups).
_GROUP_BAND_ROWS = 4


def _tile_groups(sch: Any, block: Any, lanes: int, axes: tuple, reduce: list, group: int, crop: int,
                 parallel: bool, tile: ConvTile | None) -> tuple[str, list[str], ConvTile, tuple[int, int]]:
    """A grouped conv with its weight blocked per group (harness.compile.onnx_import
    blocked_conv2d_te), computing `group` output channels per group, whole vectors, of which
    its epilogue reads `crop` (fewer where the groups were padded by zero weights:
    shufflenet's groups of 68 as 72, of 34 as 40 on AVX2): one group at a time, a band of
    output rows taken as one axis of pixels, a tile of vectors of output channels x pixels
    over it. The accumulators are kept per group and band, channels innermost, and the
    epilogue (bias, relu, residual; NCHW output) reads the `crop` channels it needs from them
    after the band: computed per tile, a padded group's tile would not map to whole output
    channels of one group. The bands are as few rows as give the best tile; up to 5 vectors a
    tile (5 x 2 pixels fills AVX2's 16 registers). x86_64, 1 thread, light_shufflenet's
    grouped 1x1 convs (were HWIO with half vectors, or none, per group): 272 channels in
    groups of 68 on 14x14 ~43 -> ~93 GFLOP/s, 136 in groups of 34 on 28x28 ~32 -> ~72
    (counting the real channels), 544 in groups of 136 on 7x7 ~50 -> ~75."""
    if tile is not None and not tile.packed:  # `harness tune` skips it before building
        raise ValueError("a grouped conv's weight is blocked at compile time: it has no unpacked form")
    batch, channel, row, col = axes
    rows, cols = _extent(sch, row), _extent(sch, col)
    vectors_per_group = group // lanes

    def score(band: int) -> tuple[float, int]:
        v, p = _conv_register_tile(vectors_per_group, band * cols, most_vectors=5)
        return v * p / (v + p), -band
    band = max((r for r in range(1, _GROUP_BAND_ROWS + 1) if rows % r == 0), key=score)
    tile_axes = (vectors_per_group, band * cols)
    vectors, u_factor = _conv_register_tile(*tile_axes, most_vectors=5) if tile is None else (tile.vectors, tile.pixels)
    if tile_axes[0] % vectors or tile_axes[1] % u_factor:
        raise ValueError(f"tile {vectors}x{u_factor} does not divide {tile_axes}")
    v_factor = vectors * lanes

    consumers = list(sch.get_consumers(block))
    if _writes_output(sch, block, _local_buffers(sch)) or not consumers:
        consumers = [sch.cache_write(block, 0, "global")]
    # n, group, row, column, channel in group: a tile's channels are contiguous, and the
    # epilogue's read of channel o (o // crop, o % crop) maps to one group of it
    for consumer in consumers:
        # its channel as (group, channel in group): so it is placed over the `crop` channels of
        # one group, not over `group` channels from the group's first on (some of the next group's)
        sch.transform_block_layout(consumer, lambda b, o, y, x: [b, o // crop, o % crop, y, x])
    sch.transform_layout(block, ("write", 0), lambda b, o, y, x: [b, o // group, y, x, o % group])
    g, in_group = sch.split(channel, [None, group])
    c_o, c_i = sch.split(in_group, [None, v_factor])
    if band > 1:
        y_o, y_i = sch.split(row, [None, band])
        pixels = sch.fuse(y_i, col)
    else:
        y_o, pixels = row, col
    x_o, x_i = sch.split(pixels, [None, u_factor])
    sch.reorder(batch, g, y_o, c_o, x_o, *reduce, x_i, c_i)
    for consumer in consumers:
        sch.reverse_compute_at(consumer, y_o, preserve_unit_loops=True)
    sch.unroll(x_i)
    _register_vectors(sch, c_i, v_factor, lanes, split=True)
    threads = _parallelize_outer(sch, block) if parallel else ""
    if reduce:
        init = sch.decompose_reduction(block, reduce[0])
        sch.vectorize(sch.get_loops(init)[-1])
    placed = [sch.get(c).name_hint for c in consumers]
    return (f"channels-last tile {u_factor}x{v_factor}, groups of {crop}{f' padded to {group}' if crop != group else ''}"
            f"{f', bands of {band} rows' if band > 1 else ''}, weights blocked at compile time"
            f"{', ' + threads if threads else ''}"), placed, ConvTile(vectors, u_factor, True), tile_axes


def _is_window_reduction(sch: Any, block: Any) -> bool:
    """A pooling window that _pool_as_loops serves better than a register tile: a reduction
    that reads one buffer (no weights) into outputs whose innermost axis has more than one
    element (a global mean has one: not a window), and is a max, or a sum over unpadded data.
    A padded average pool keeps the tile: shufflenet's and inception's (3x3, padded) measured
    as fast or faster tiled (61 vs 133 us for inception's stride-1 one)."""
    from tvm import tirx

    node = sch.get(block)
    spatial = [iv for iv in node.iter_vars if int(iv.iter_type) == 0]
    if len(node.reads) != 1 or not spatial or int(spatial[-1].dom.extent) <= 1:
        return False
    body = node.body
    is_max = isinstance(body, tirx.BufferStore) and isinstance(body.value, tirx.Max)
    return is_max or not list(sch.get_producers(block))


def _pool_as_loops(sch: Any, block: Any, parallel: bool = False) -> tuple[str, list[str]]:
    """A pooling window keeps its nest as written (output row, column, then the window),
    which LLVM's loop vectorizer turns into whole-vector loads along the row, deinterleaved by
    shuffles when the stride is 2; the padding is computed per output row (the rows its
    window reads) instead of as a whole-tensor workspace. The register tile of
    _tile_reduction gathered each lane of a stride-2 window (vinsertps). x86_64, kernel alone,
    1 thread: squeezenet's three 3x3/2 max pools 294 -> 104, 127 -> 47, 208 -> 63 us; resnet50's
    padded one 353 -> 183 us."""
    loops = sch.get_loops(block)
    node = sch.get(block)
    spatial = [lp for lp, iv in zip(loops, node.iter_vars) if int(iv.iter_type) == 0]
    producers = list(sch.get_producers(block))
    consumers = list(sch.get_consumers(block))
    anchor = spatial[-2] if len(spatial) > 1 else None
    placed = []
    if anchor is not None:
        for pad in producers:
            sch.compute_at(pad, anchor, preserve_unit_loops=True)
        for consumer in consumers:  # an epilogue (a cast, a division) per output row
            sch.reverse_compute_at(consumer, anchor, preserve_unit_loops=True)
            if not _has_select(sch, consumer):
                sch.vectorize(sch.get_loops(consumer)[-1])
            placed.append(sch.get(consumer).name_hint)
    threads = _parallelize_outer(sch, block) if parallel else ""
    return (f"window as written (LLVM vectorizes the row){', pad computed per row' if producers else ''}"
            f"{', epilogue per row' if placed else ''}{', ' + threads if threads else ''}"), placed


def _is_image_reduction(sch: Any, block: Any) -> bool:
    """A global pooling (a mean or max over the whole image): a reduction that reads one buffer
    into outputs whose innermost axis has one element, over a row of at least 4 elements that
    is the innermost index of what it reads."""
    node = sch.get(block)
    spatial = [iv for iv in node.iter_vars if int(iv.iter_type) == 0]
    reduce = [iv for iv in node.iter_vars if int(iv.iter_type) != 0]
    if len(node.reads) != 1 or not spatial or int(spatial[-1].dom.extent) != 1 or len(reduce) < 2:
        return False
    return int(reduce[-1].dom.extent) >= 4 and _vars_of(node.reads[0].region[-1].min) == {reduce[-1].var.name}


def _image_reduction_by_rows(sch: Any, block: Any, parallel: bool = False) -> tuple[str, list[str]]:
    """A global pooling by image rows: per output (channel), the image's rows are accumulated
    into one row of independent sums (contiguous loads; rfactor over the row's axis, unrolled),
    which is then reduced once. Reduced element by element, every add waited for the one
    before it: squeezenet's mean of 1000 x 13 x 13 on x86_64 took 91 us, by rows 17 us."""
    rows = sch.rfactor(sch.get_loops(block)[-1], factor_axis=len(sch.get(block).writes[0].region))
    threads = _parallelize_outer(sch, block) if parallel else ""
    # the row vectors are reduced per output, inside its loop (the final block's last loop
    # is the row it reduces)
    sch.compute_at(rows, sch.get_loops(block)[-2], preserve_unit_loops=True)
    # rfactor puts the row's axis first among the block's iterators: loops row, outputs..., rows
    loops = sch.get_loops(rows)
    row, image_rows = loops[-len(sch.get(rows).iter_vars)], loops[-1]
    sch.reorder(image_rows, row)
    sch.decompose_reduction(rows, image_rows)
    # unrolled, not vectorized by TVM (a data-parallel loop inside a reduction loop): a row of
    # independent sums, which LLVM's SLP vectorizer packs
    sch.unroll(row)
    return f"image rows as independent sums{', ' + threads if threads else ''}", []


def _divides(expr: Any) -> bool:
    """Whether an index expression has a division or remainder in it."""
    from tvm import tirx
    from tvm.ir.expr import Expr

    if isinstance(expr, (tirx.FloorDiv, tirx.FloorMod, tirx.Div, tirx.Mod)):
        return True
    return any(isinstance(getattr(expr, child, None), Expr) and _divides(getattr(expr, child))
               for child in ("a", "b", "value"))


def _select_invariant_rows(sch: Any, block: Any, lanes: int) -> str:
    """ARMv7 NEON: an elementwise block whose value is a chain of selects (a concatenation's
    `channel < C ? a : b`) testing only its outer axes gets the axes after them fused into
    rows; each row is one branch's contiguous copy, vectorized where the row is a whole number
    of vectors, else left for LLVM (which takes the loop-invariant test out of the loop).
    Element by element (the rule for other selects), squeezenet's 55x55 concatenations took ~20
    instructions per element. Returns a description, or "" when the block is no such select."""
    from tvm import tirx
    from tvm.ir import Call

    node = sch.get(block)
    loops = sch.get_loops(block)
    names = [iv.var.name for iv in node.iter_vars]
    if len(loops) != len(names) or not isinstance(node.body, tirx.BufferStore):
        return ""
    tested: set[str] = set()
    value = node.body.value
    while isinstance(value, Call) and str(value.op.name).endswith("if_then_else"):
        tested |= _vars_of(value.args[0])
        if _has_select_expr(value.args[1]):
            return ""
        value = value.args[2]
    if not tested or not tested <= set(names) or _has_select_expr(value):
        return ""
    return _rows_after(sch, loops, max(names.index(n) for n in tested), lanes)


def _rows_after(sch: Any, loops: list, last: int, lanes: int) -> str:
    """Fuse the loops after loops[last] into rows, vectorized where a row is a whole number of
    vectors, else left for LLVM's loop vectorizer (a constant trip count, and whatever the
    outer loops index is invariant in the row). Returns a description, or "" when there is no
    row of more than one element."""
    inner = loops[last + 1:]
    row = math.prod(_extent(sch, lp) for lp in inner)
    if row <= 1:
        return ""
    fused = sch.fuse(*inner) if len(inner) > 1 else inner[0]
    if row % lanes:
        return f"rows of {row}"
    factor = vector_factor(row, lanes)
    _, vec = sch.split(fused, [None, factor])
    sch.vectorize(vec)
    return f"rows of {row}, vector {factor}"


def _broadcast_rows(sch: Any, block: Any, lanes: int) -> str:
    """x86_64: an elementwise block that reads a tensor through its outer axes only (a
    per-channel scale and shift, indexed by the channel) gets the axes after the last such
    index fused into rows, vectorized where a row is a whole number of vectors, else left for
    LLVM's loop vectorizer (a constant trip count and a loop-invariant scale). Fused whole and
    vectorized, each lane's channel was divided back out of the fused index, a gather per
    operand: light_densenet121's 960-channel 14x14 multiply-add-relu took 1.07 ms (1.4 GB/s).
    Returns a description, or "" when the block reads no such tensor."""
    node = sch.get(block)
    loops = sch.get_loops(block)
    names = [iv.var.name for iv in node.iter_vars]
    if len(loops) != len(names) or len(names) < 2:
        return ""
    last = -1
    for read in node.reads:
        used = set().union(*(_vars_of(rng.min) for rng in read.region)) & set(names)
        if used and names[-1] not in used:
            last = max(last, *(names.index(n) for n in used))
    if last < 0:
        return ""
    done = _rows_after(sch, loops, last, lanes)
    if done and last > 0:
        sch.fuse(*loops[:last + 1])
    return done


def _vectorize_elementwise(sch: Any, block: Any, lanes: int, neon: bool = False, rows: bool = False,
                           parallel: bool = False) -> str:
    """Fuse the block's loops into one and vectorize it, or, for a block whose reads index by
    division or remainder (a reshape/transpose, a channel shuffle), fuse all but the innermost
    and vectorize that: its reads stay contiguous (a fused index would be divided back per
    element: a gather). Shufflenet's channel shuffles: 2.6 -> 0.36 ms. A block with a select
    (a concatenation) that the NEON rows rule does not take keeps its loops: fused but not
    vectorized, each element's indices were divided back out of the fused one, and LLVM
    vectorizes the plain nest's innermost loop itself (squeezenet's 64+64-channel
    concatenation of 55x55: 158 -> 33 us). With `rows` (x86_64), a block with per-channel
    operands is vectorized along rows (_broadcast_rows). With `parallel`, the outermost loop
    left (rows, or the vectors of the fused loop) of a vectorized block is parallel."""
    from tvm import tirx

    detail = _shape_elementwise(sch, block, lanes, neon, rows)
    # A nest left for LLVM to vectorize stays serial: in a parallel task's function LLVM
    # did not vectorize it (squeezenet's concatenations, one thread: 38 -> 106 us).
    vectorized = any(sch.get(loop).kind == tirx.ForKind.VECTORIZED for loop in sch.get_loops(block))
    threads = _parallelize_outer(sch, block) if parallel and vectorized else ""
    return f"{detail}, {threads}" if threads else detail


def _shape_elementwise(sch: Any, block: Any, lanes: int, neon: bool, rows: bool) -> str:
    """_vectorize_elementwise's loops, before any is made parallel; returns what was done."""
    loops = sch.get_loops(block)
    divides = any(_divides(rng.min) for r in sch.get(block).reads for rng in r.region)
    if len(loops) > 1 and divides and _extent(sch, loops[-1]) > 1:
        outer = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
        factor = vector_factor(_extent(sch, loops[-1]), lanes)
        _, inner = sch.split(loops[-1], [None, factor])
        sch.vectorize(inner)
        return f"rows of {_extent(sch, outer)}, vector {factor}"
    select = _has_select(sch, block)  # the block's body: the loop changes below leave it as is
    done = _select_invariant_rows(sch, block, lanes) if neon else ""
    if not done and rows and lanes > 1 and not select:
        done = _broadcast_rows(sch, block, lanes)
    if done:
        return done
    if select:
        return "loops as written (select)"
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    factor = vector_factor(_extent(sch, fused), lanes)
    if factor <= 1:
        return "fused"
    _, inner = sch.split(fused, [None, factor])
    sch.vectorize(inner)
    return f"fused, vector {factor}"


#: Work (multiply-add equivalents, see _parallel_work) below which a kernel stays serial even
#: where threads are available: a parallel launch costs a few microseconds; this much work
#: takes 10-20 us at one thread on x86_64 (a 7x7 depthwise conv of 544 channels: 25 us).
PARALLEL_MIN_WORK = 1 << 18
#: What each element a kernel reads or writes counts in _parallel_work, in multiply-adds: a
#: kernel with little arithmetic per element (a pool, a depthwise conv, a dense layer of batch
#: 1, a copy) is bound by memory. Shufflenet's kernels at one thread on x86_64 took 0.03-0.08
#: ns per multiply-add in dense convs, 0.2-0.4 ns per element read or written in pools and
#: depthwise convs, 0.08-0.15 in its transposes and concatenations. A copy gains from a second
#: thread even when it is short: run on one thread, it reads half of its input from the cache
#: of the other core, which wrote it (shufflenet's channel shuffles and concatenations, 2
#: threads: 419 us serial, 308 us parallel).
ELEMENT_WORK = 4
#: Iterations a parallel loop gets at least where the loops inside it allow: the runner cuts a
#: launch into 4 tasks per thread (runtime_c/runner/pool.c), and a loop of 7 rows left one of
#: two threads idle for a quarter of the kernel.
PARALLEL_MIN_ITERATIONS = 16


def _iterations(sch: Any, block: Any) -> int:
    """The block's iteration count (for a reduction: its multiply-adds)."""
    return math.prod(int(iv.dom.extent) for iv in sch.get(block).iter_vars)


def _parallel_work(sch: Any, reduction: Any | None) -> int:
    """A kernel's work, for the decision to run it on threads: the multiply-adds of its heaviest
    reduction (if any) plus ELEMENT_WORK per element of every buffer it reads or writes that it
    does not allocate itself (inputs, weights, outputs)."""
    local = _local_buffers(sch)
    elements: dict[Any, int] = {}
    for block in _blocks(sch):
        node = sch.get(block)
        for region in [*node.reads, *node.writes]:
            if region.source not in local:
                elements[region.source] = math.prod(int(d) for d in region.source.shape)
    macs = _iterations(sch, reduction) if reduction is not None else 0
    return macs + ELEMENT_WORK * sum(elements.values())


def _reduction_loop_vars(sch: Any, block: Any) -> set[str]:
    """Names of the loop variables that the block's reduction iterators are bound to."""
    from tvm import s_tir, tirx

    node = sch.get(block)
    pending = [sch.get(loop).body for loop in sch.get_loops(block)[-1:]]
    while pending:
        stmt = pending.pop()
        if isinstance(stmt, s_tir.SBlockRealize) and stmt.block.same_as(node):
            return set().union(*(_vars_of(value) for iv, value in zip(node.iter_vars, stmt.iter_values)
                                 if int(iv.iter_type) != 0))
        if isinstance(stmt, tirx.SeqStmt):
            pending.extend(stmt.seq)
        elif isinstance(stmt, tirx.For):
            pending.append(stmt.body)
    return set()


def _parallel_outer_loop(sch: Any, block: Any, fuse: bool = True) -> tuple[Any, list]:
    """Mark the outermost loop of the block's nest that has more than one iteration (all loops
    around it having one) parallel. With `fuse`, a loop of fewer than PARALLEL_MIN_ITERATIONS
    iterations is first fused with the data-parallel loops directly inside it until the
    product reaches that. Returns the parallel loop (None when there is none) and the loops
    (statements) it was made of: a stage to be computed at one of them goes to it instead."""
    loops = sch.get_loops(block)
    first = next((i for i, loop in enumerate(loops) if _extent(sch, loop) > 1), None)
    if first is None:
        return None, []
    reduction = _reduction_loop_vars(sch, block) if fuse else set()
    chosen = [loops[first]]
    iterations = _extent(sch, loops[first])
    for loop in loops[first + 1:]:
        inner = sch.get(loop)
        if (not fuse or iterations >= PARALLEL_MIN_ITERATIONS or inner.loop_var.name in reduction
                or not sch.get(chosen[-1]).body.same_as(inner)):
            break
        chosen.append(loop)
        iterations *= _extent(sch, loop)
    made_of = [sch.get(loop) for loop in chosen]
    parallel = sch.fuse(*chosen) if len(chosen) > 1 else chosen[0]
    sch.parallel(parallel)
    return parallel, made_of


def _parallelize_outer(sch: Any, block: Any, fuse: bool = True) -> str:
    """_parallel_outer_loop; returns "parallel <iterations>", or "" when no loop was made parallel."""
    loop, _ = _parallel_outer_loop(sch, block, fuse)
    return f"parallel {_extent(sch, loop)}" if loop is not None else ""


def _parallelize_keeping(sch: Any, block: Any, anchor: Any) -> tuple[str, Any]:
    """_parallelize_outer for a kernel that computes a stage (padding) at loop `anchor`
    afterwards: returns the detail and where to compute that stage, the parallel loop when
    `anchor` was fused into it (per task, of the rows and channels the task reads)."""
    anchor_loop = sch.get(anchor)
    loop, made_of = _parallel_outer_loop(sch, block)
    if loop is None:
        return "", anchor
    return f"parallel {_extent(sch, loop)}", loop if any(stmt.same_as(anchor_loop) for stmt in made_of) else anchor


# ---------------------------------------------------------------------------------------------
# int8 kernels (harness.compile.int8): sum(int8 x * int8 w) in int32, then requantization


def has_dsp(tvm_target: Any) -> bool:
    """Whether the target is an ARMv7E-M core (Cortex-M4/M7: the DSP extension's SIMD
    multiply-accumulates), from its LLVM triple. A Cortex-M3 (thumbv7m) has none."""
    attrs = _target_attrs(tvm_target)
    mattr = [str(a) for a in attrs.get("mattr", [])]
    return str(attrs.get("mtriple", "")).startswith("thumbv7em") and "-dsp" not in mattr


#: The tensor intrinsic: acc += 4 int8 products, two SMLADs on the sign-extended halves.
SMLAD_DOT4 = "minrt_smlad_dot4_i8i8i32"


def _register_smlad_dot4() -> None:
    """Register SMLAD_DOT4 once per process: a dot product of 4 int8 pairs into an int32
    accumulator as the ARMv7E-M DSP extension computes it. Each operand's 4 bytes are one
    32-bit load; SXTB16 sign-extends bytes 0 and 2 into two 16-bit lanes (and, with its
    operand rotated by 8, bytes 1 and 3), and SMLAD adds both lanes' products to the accumulator: 4 multiply-
    accumulates in 2 loads, 4 extensions and 2 SMLADs (operands 4-byte aligned: the reduction
    starts on a multiple of 4 in contiguous int8 data)."""
    from tvm import s_tir
    from tvm.script import tirx as T

    if s_tir.TensorIntrin.get(SMLAD_DOT4, allow_missing=True) is not None:
        return

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), "int8", offset_factor=1)
        B = T.match_buffer(b, (4,), "int8", offset_factor=1)
        C = T.match_buffer(c, (1,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0], A[0:4], B[0:4])
            T.writes(C[0])
            for k in range(4):
                with T.sblock("update"):
                    vk = T.axis.remap("R", [k])
                    C[0] = C[0] + T.Cast("int32", A[vk]) * T.Cast("int32", B[vk])

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), "int8", offset_factor=1)
        B = T.match_buffer(b, (4,), "int8", offset_factor=1)
        C = T.match_buffer(c, (1,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0], A[0:4], B[0:4])
            T.writes(C[0])
            # written as one expression: a name bound here would become a local buffer (a
            # workspace allocation per call); LLVM loads each operand once
            C[0] = T.call_llvm_pure_intrin(
                "int32", "llvm.arm.smlad",
                T.call_llvm_pure_intrin("int32", "llvm.arm.sxtb16", T.call_llvm_pure_intrin(
                    "int32", "llvm.fshr.i32", T.reinterpret("int32", A.vload([0], "int8x4")),
                    T.reinterpret("int32", A.vload([0], "int8x4")), 8)),
                T.call_llvm_pure_intrin("int32", "llvm.arm.sxtb16", T.call_llvm_pure_intrin(
                    "int32", "llvm.fshr.i32", T.reinterpret("int32", B.vload([0], "int8x4")),
                    T.reinterpret("int32", B.vload([0], "int8x4")), 8)),
                T.call_llvm_pure_intrin(
                    "int32", "llvm.arm.smlad",
                    T.call_llvm_pure_intrin("int32", "llvm.arm.sxtb16", T.reinterpret("int32", A.vload([0], "int8x4"))),
                    T.call_llvm_pure_intrin("int32", "llvm.arm.sxtb16", T.reinterpret("int32", B.vload([0], "int8x4"))),
                    C[0]))

    s_tir.TensorIntrin.register(SMLAD_DOT4, desc, impl)


def _is_int8_mac(sch: Any, block: Any) -> bool:
    """An int8 kernel's accumulation: int8 data times int8 weights into int32."""
    node = sch.get(block)
    return (len(node.reads) == 2 and all(str(r.source.dtype) == "int8" for r in node.reads)
            and len(node.writes) == 1 and str(node.writes[0].source.dtype) == "int32")


@dataclass
class _Int8Axes:
    """How an int8 accumulation (conv2d_te/dense_te of harness.compile.int8: data read first,
    weights [O, ..., C] second) maps onto its loops: indices into `loops`/`extents`."""

    node: Any
    loops: list
    data: Any
    weight: Any
    oc_vars: set
    names: list[str]
    spatial: list[int]
    reduce: list[int]
    oc: int
    rc: int | None  # the input-channel reduction (None when the weights' last axis is not reduced)
    extents: list[int]

    @property
    def contiguous(self) -> bool:
        """The reduction runs innermost over contiguous input channels of the data."""
        return (self.rc is not None and self.names[self.rc] in _vars_of(self.data.region[-1].min)
                and self.reduce[-1] == self.rc and int(self.data.region[-1].extent) == 1)


def _int8_axes(sch: Any, block: Any) -> _Int8Axes:
    node = sch.get(block)
    loops = sch.get_loops(block)
    iter_vars = list(node.iter_vars)
    if len(loops) != len(iter_vars):
        raise ValueError("loops and block iterators differ")
    data, weight = node.reads
    oc_vars = _vars_of(weight.region[0].min)
    rc_vars = _vars_of(weight.region[-1].min)
    names = [iv.var.name for iv in iter_vars]
    spatial = [i for i, iv in enumerate(iter_vars) if int(iv.iter_type) == 0]
    reduce = [i for i, iv in enumerate(iter_vars) if int(iv.iter_type) != 0]
    oc = next((i for i in spatial if names[i] in oc_vars), None)
    if oc is None:
        raise ValueError("no output-channel axis")
    rc = next((i for i in reduce if names[i] in rc_vars), None)
    return _Int8Axes(node, list(loops), data, weight, oc_vars, names, spatial, reduce, oc, rc,
                     [int(iv.dom.extent) for iv in iter_vars])


def _tile_int8(sch: Any, block: Any, dsp: bool, parallel: bool = False) -> tuple[str, list[str]]:
    """Tile an int8 accumulation (conv2d_te/dense_te of harness.compile.int8: data read first,
    weights [O, ..., C] second, the reduction innermost over input channels): a block of output
    channels keeps its accumulators in registers across the whole reduction, the requantization
    is computed per block, padding per output row. With the DSP extension and a reduction over
    a multiple of 4 contiguous channels, its 4 innermost steps become one SMLAD_DOT4."""
    ax = _int8_axes(sch, block)
    node, loops, data, oc_vars, spatial, reduce, oc, rc, extents = (
        ax.node, ax.loops, ax.data, ax.oc_vars, ax.spatial, ax.reduce, ax.oc, ax.rc, ax.extents)
    if rc is None:
        raise ValueError("the weights' last axis is not reduced")
    contiguous = ax.contiguous
    dot4 = dsp and contiguous and extents[rc] % 4 == 0
    depthwise = extents[rc] == 1 and bool(_vars_of(data.region[-1].min) & oc_vars)
    width = 8 if depthwise else 4
    oc_factor = next(f for f in (width, 4, 2, 1) if extents[oc] % f == 0)

    producers = {sch.get(p).writes[0].source: p for p in sch.get_producers(block)}
    padded = [r.source for r in node.reads if r.source in producers]
    oc_o, oc_i = sch.split(loops[oc], [None, oc_factor])
    outer = [loops[i] for i in spatial if i != oc] + [oc_o]
    pad_anchor = next((loops[i] for i in spatial if extents[i] > 1 and i != oc), oc_o)
    if depthwise and len(spatial) == 4:
        # a block of channels across the whole output row: the padded rows it reads are
        # one block wide (a small workspace), copied once per row and block
        b, y, xx = (loops[i] for i in spatial if i != oc)
        outer = [b, y, oc_o, xx]
        pad_anchor = oc_o
    pixel = [i for i in spatial if i != oc][-1] if len(spatial) > 1 else None
    pairs = (dot4 and not depthwise and pixel is not None and extents[pixel] % 2 == 0 and extents[oc] % 2 == 0
             and extents[rc] >= 16)  # a shorter reduction does not pay for the pair tile's set-up
    if pairs:
        # 2 pixels x 2 output channels: each weight word and each data word, once extended,
        # feeds two SMLADs (10 registers; 4 channels x 2 pixels would spill)
        oc_o, oc_i = sch.split(sch.fuse(oc_o, oc_i), [None, 2])
        px_o, px_i = sch.split(loops[pixel], [None, 2])
        outer = [loops[i] for i in spatial if i not in (oc, pixel)] + [px_o, oc_o]
        oc_factor = 2
    if dot4:
        rc_o, rc_i = sch.split(loops[rc], [None, 4])
        sch.reorder(*outer, *[loops[i] for i in reduce if i != rc], rc_o, *([px_i] if pairs else []), oc_i, rc_i)
    else:
        sch.reorder(*outer, *[loops[i] for i in reduce], oc_i)
    sch.set_scope(block, 0, "local")
    consumers = list(sch.get_consumers(block))
    for consumer in consumers:
        sch.reverse_compute_at(consumer, oc_o, preserve_unit_loops=True)
    for buf in padded:  # before tensorize, which replaces the loops it blockizes
        sch.compute_at(producers[buf], pad_anchor, preserve_unit_loops=True)
    threads = _parallelize_outer(sch, block, fuse=False) if parallel else ""
    init = sch.decompose_reduction(block, sch.get_loops(block)[len(outer)])
    sch.unroll(sch.get_loops(init)[-1])
    if dot4:
        _register_smlad_dot4()
        sch.tensorize(rc_i, SMLAD_DOT4)
    sch.unroll(oc_i)
    if pairs:
        sch.unroll(px_i)
    placed = [sch.get(c).name_hint for c in consumers]
    return (f"int8 {'SMLAD dot4, ' if dot4 else ''}{'2 pixels x ' if pairs else ''}{oc_factor} output channels in registers"
            f"{', pad computed per row' if padded else ''}{', ' + threads if threads else ''}"), placed


#: The SIMD int8 dot-product steps (tensor intrinsics): int32 lanes += pairs of int8 products.
AVX2_PAIRS16 = "minrt_avx2_pmaddwd_i8x16_i32x8"
NEON_PAIRS8 = "minrt_neon_vmull_vpadal_i8x8_i32x4"


def _register_int8_pairs(name: str, lanes: int) -> None:
    """Register a tensor intrinsic once per process: C[j] += A[2j] * B[2j] + A[2j+1] * B[2j+1]
    for j < `lanes`, on 2 * lanes contiguous int8 of A and B into `lanes` int32 partial sums,
    exactly (a pair of int8 products is at most 2 * 128 * 128 = 32768 in magnitude).

    - AVX2 (8 lanes): both operands sign-extended to 16 int16 (vpmovsxbw), then vpmaddwd (the
      products of each pair of words, summed into one int32) and vpaddd: 16 multiply-adds.
    - NEON (4 lanes): vmull.s8 (8 int8 products as int16, exact), then vpadal.s16 (adjacent
      pairs added, widened and accumulated into the int32 lanes): 8 multiply-adds in two
      instructions, no widening of the operands."""
    from tvm import s_tir
    from tvm.script import tirx as T

    if s_tir.TensorIntrin.get(name, allow_missing=True) is not None:
        return
    width = 2 * lanes

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (width,), "int8", offset_factor=1)
        B = T.match_buffer(b, (width,), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:width], B[0:width])
            T.writes(C[0:lanes])
            for j, k in T.grid(lanes, 2):
                with T.sblock("update"):
                    vj, vk = T.axis.remap("SR", [j, k])
                    C[vj] = C[vj] + T.Cast("int32", A[vj * 2 + vk]) * T.Cast("int32", B[vj * 2 + vk])

    if name == AVX2_PAIRS16:
        @T.prim_func(s_tir=True)
        def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, (width,), "int8", offset_factor=1)
            B = T.match_buffer(b, (width,), "int8", offset_factor=1)
            C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope="local")
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:width], B[0:width])
                T.writes(C[0:lanes])
                C[T.ramp(0, 1, 8)] = C[T.ramp(0, 1, 8)] + T.call_llvm_pure_intrin(
                    "int32x8", "llvm.x86.avx2.pmadd.wd",
                    T.Cast("int16x16", A[T.ramp(0, 1, 16)]), T.Cast("int16x16", B[T.ramp(0, 1, 16)]))
    else:
        @T.prim_func(s_tir=True)
        def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, (width,), "int8", offset_factor=1)
            B = T.match_buffer(b, (width,), "int8", offset_factor=1)
            C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope="local")
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:width], B[0:width])
                T.writes(C[0:lanes])
                C[T.ramp(0, 1, 4)] = T.call_llvm_pure_intrin(
                    "int32x4", "llvm.arm.neon.vpadals", C[T.ramp(0, 1, 4)],
                    T.call_llvm_pure_intrin("int16x8", "llvm.arm.neon.vmulls",
                                            A[T.ramp(0, 1, 8)], B[T.ramp(0, 1, 8)]))

    s_tir.TensorIntrin.register(name, desc, impl)


def int8_pairs_intrinsic(tvm_target: Any) -> tuple[str, int] | None:
    """The SIMD int8 dot-product step for the target and its int32 lanes: vpmaddwd on AVX2,
    vmull.s8 + vpadal.s16 on ARMv7 NEON; None elsewhere (Cortex-M: has_dsp's SMLAD)."""
    attrs = _target_attrs(tvm_target)
    triple = str(attrs.get("mtriple", ""))
    if (triple.startswith("x86_64") or not triple) and simd_lanes(tvm_target) >= 8:
        return AVX2_PAIRS16, 8
    if is_armv7_neon(tvm_target):
        return NEON_PAIRS8, 4
    return None


def is_armv7_neon(tvm_target: Any) -> bool:
    """Whether the target is an ARMv7-A core with NEON (16 q registers of 4 floats), from its
    LLVM triple and features: the targets whose float tiles follow the NEON rules."""
    attrs = _target_attrs(tvm_target)
    mattr = [str(a) for a in attrs.get("mattr", [])]
    return str(attrs.get("mtriple", "")).startswith("armv7") and "+neon" in mattr


def _tile_int8_simd(sch: Any, block: Any, intrin: tuple[str, int], parallel: bool = False) -> tuple[str, list[str]]:
    """Tile an int8 accumulation (as _tile_int8 reads it) with a SIMD dot-product step
    (`intrin`, int8_pairs_intrinsic). With a reduction over a whole number of steps of
    contiguous input channels, the reduction is factored into `lanes` partial sums per output
    (rfactor): a tile of pixels x output channels keeps them in vector registers across the
    reduction, each step loads one vector of data per pixel and of weights per channel; the
    partial sums are added once per output, then requantized per tile."""
    name, lanes = intrin
    ax = _int8_axes(sch, block)
    loops, spatial, reduce, oc, rc, extents = (
        ax.loops, ax.spatial, ax.reduce, ax.oc, ax.rc, ax.extents)
    if rc is None:
        raise ValueError("the weights' last axis is not reduced")
    contiguous = ax.contiguous
    width = 2 * lanes
    if not contiguous or extents[rc] % width:
        raise ValueError(f"reduction of {extents[rc]} channels is not a whole number of {width}-byte steps")
    pixel = next((i for i in reversed(spatial) if i != oc and extents[i] > 1), None)
    _, rc_j, _ = sch.split(loops[rc], [None, lanes, 2])
    rf = sch.rfactor(rc_j, factor_axis=len(spatial))
    rloops = sch.get_loops(rf)  # the block's loops with the reduction split in three
    r_spatial = [rloops[i] for i in spatial]
    r_reduce = [rloops[i] for i in reduce if i != rc]
    r_rc_o, r_rc_j, r_rc_k = rloops[rc], rloops[rc + 1], rloops[rc + 2]
    accumulators = 12 if name == AVX2_PAIRS16 else 8  # vector registers of partial sums per tile (of 16)
    oc_factor = next(f for f in (4, 2, 1) if extents[oc] % f == 0)
    px_factor = _largest_divisor(extents[pixel], max(1, accumulators // oc_factor)) if pixel is not None else 1
    oc_o, oc_i = sch.split(r_spatial[spatial.index(oc)], [None, oc_factor])
    outer = [r_spatial[k] for k, i in enumerate(spatial) if i not in (oc, pixel)]
    inner = [oc_i]
    if pixel is not None:
        px_o, px_i = sch.split(r_spatial[spatial.index(pixel)], [None, px_factor])
        outer.append(px_o)
        inner.insert(0, px_i)
    outer.append(oc_o)
    sch.reorder(*outer, *r_reduce, r_rc_o, *inner, r_rc_j, r_rc_k)
    # padding: a stage of its own (the dot-product step reads plain bytes), computed per output
    # row (the rows it reads, all channels)
    producers = {sch.get(p).writes[0].source: p for p in sch.get_producers(rf)}
    padded = [r.source for r in sch.get(rf).reads if r.source in producers]
    row = next((r_spatial[k] for k, i in enumerate(spatial) if i not in (oc, pixel) and extents[i] > 1), None)
    for buf in padded:
        sch.compute_at(producers[buf], row if row is not None else outer[0], preserve_unit_loops=True)
    sch.set_scope(rf, 0, "local")
    sch.reverse_compute_at(block, oc_o, preserve_unit_loops=True)
    consumers = list(sch.get_consumers(block))
    sch.set_scope(block, 0, "local")
    for consumer in consumers:
        sch.reverse_compute_at(consumer, oc_o, preserve_unit_loops=True)
        sch.vectorize(sch.get_loops(consumer)[-1])  # the requantization, one lane per channel
    threads = _parallelize_outer(sch, rf, fuse=False) if parallel else ""
    init = sch.decompose_reduction(rf, (r_reduce or [r_rc_o])[0])
    sch.vectorize(sch.get_loops(init)[-1])
    _register_int8_pairs(name, lanes)
    sch.tensorize(r_rc_j, name)
    for loop in inner:
        sch.unroll(loop)
    placed = [sch.get(c).name_hint for c in consumers]
    step = "vpmaddwd" if name == AVX2_PAIRS16 else "vmull.s8 + vpadal.s16"
    return (f"int8 {step}, {px_factor} pixels x {oc_factor} output channels x {lanes} partial sums"
            f"{', pad computed per row' if padded else ''}{', ' + threads if threads else ''}"), placed

def _register_int8_lanes(name: str, lanes: int, broadcast: bool) -> None:
    """Register a tensor intrinsic once per process: C[i] += A[i] * B[i] (or A[0] * B[i] with
    `broadcast`) for i < `lanes`, int8 operands, int32 accumulators: the products are formed
    in int16 (exact: at most 128 * 128) and widened on the add (NEON: vmull.s8, then vaddw.s16
    into each half; AVX2: vpmullw on sign-extended words, vpmovsxwd, vpaddd)."""
    from tvm import s_tir
    from tvm.script import tirx as T

    if s_tir.TensorIntrin.get(name, allow_missing=True) is not None:
        return
    a_len = 1 if broadcast else lanes

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (a_len,), "int8", offset_factor=1)
        B = T.match_buffer(b, (lanes,), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:a_len], B[0:lanes])
            T.writes(C[0:lanes])
            for i in range(lanes):
                with T.sblock("update"):
                    vi = T.axis.remap("S", [i])
                    C[vi] = C[vi] + T.Cast("int32", A[0 if broadcast else vi]) * T.Cast("int32", B[vi])

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (a_len,), "int8", offset_factor=1)
        B = T.match_buffer(b, (lanes,), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:a_len], B[0:lanes])
            T.writes(C[0:lanes])
            C[T.ramp(0, 1, lanes)] = C[T.ramp(0, 1, lanes)] + T.Cast(
                f"int32x{lanes}",
                T.Cast(f"int16x{lanes}", T.Broadcast(A[0], lanes) if broadcast else A[T.ramp(0, 1, lanes)])
                * T.Cast(f"int16x{lanes}", B[T.ramp(0, 1, lanes)]))

    s_tir.TensorIntrin.register(name, desc, impl)


def _place_channel_tile(sch: Any, block: Any, ax: _Int8Axes, pixel: int | None, oc_o: Any, outer: list,
                        producers: dict, padded: list, parallel: bool) -> tuple[list, str]:
    """The part of a channel-vector int8 tiling after its loops are ordered (`outer` the loops
    outside the reduction, `oc_o` the innermost of them): accumulators local, the
    requantization per tile, vectorized one lane per channel, padding per output row, the
    outermost loop parallel where asked, the accumulators' initialization vectorized. Returns
    the consumers (placed in the tile) and the parallel detail."""
    loops, spatial, oc, extents = ax.loops, ax.spatial, ax.oc, ax.extents
    sch.set_scope(block, 0, "local")
    consumers = list(sch.get_consumers(block))
    for consumer in consumers:
        sch.reverse_compute_at(consumer, oc_o, preserve_unit_loops=True)
        sch.vectorize(sch.get_loops(consumer)[-1])  # the requantization, one lane per channel
    row = next((loops[i] for i in spatial if i not in (oc, pixel) and extents[i] > 1), None)
    for buf in padded:
        sch.compute_at(producers[buf], row if row is not None else outer[0], preserve_unit_loops=True)
    threads = _parallelize_outer(sch, block, fuse=False) if parallel else ""
    init = sch.decompose_reduction(block, sch.get_loops(block)[len(outer)])
    sch.vectorize(sch.get_loops(init)[-1])
    return consumers, threads


def _tile_int8_channels(sch: Any, block: Any, lanes: int, parallel: bool = False) -> tuple[str, list[str]]:
    """Tile an int8 accumulation whose reduction is not over a run of contiguous input channels
    (depthwise convolutions; a first layer of 1 or 3 channels) along the output channels: a
    vector of `lanes` channels of a few pixels keeps its int32 accumulators in registers, the
    weights are copied once per call with the output channel innermost (so each tap is one
    vector load), the data is a vector (depthwise) or one broadcast byte per tap; padding is
    computed per output row, the requantization per tile."""
    ax = _int8_axes(sch, block)
    node, loops, data, oc_vars, names, spatial, reduce, oc, extents = (
        ax.node, ax.loops, ax.data, ax.oc_vars, ax.names, ax.spatial, ax.reduce, ax.oc, ax.extents)
    if extents[oc] % lanes:
        raise ValueError(f"{extents[oc]} output channels are not a whole number of {lanes}-lane vectors")
    depthwise = bool(_vars_of(data.region[-1].min) & oc_vars)
    if depthwise and not (names[oc] in _vars_of(data.region[-1].min) and int(data.region[-1].extent) == 1):
        raise ValueError("data channels are not contiguous with the output channels")
    if not depthwise and any(names[oc] in _vars_of(r.min) for r in data.region):
        raise ValueError("the data read depends on the output channel otherwise")
    pixel = next((i for i in reversed(spatial) if i != oc and extents[i] > 1), None)
    name = f"minrt_int8_lanes{lanes}_{'depthwise' if depthwise else 'broadcast'}"
    producers = {sch.get(p).writes[0].source: p for p in sch.get_producers(block)}
    padded = [r.source for r in node.reads if r.source in producers]

    copy = sch.cache_read(block, 1, "global")  # the weights, output channel innermost
    sch.transform_layout(copy, ("write", 0), lambda o, h, w, c: (h, w, c, o))
    sch.vectorize(sch.get_loops(copy)[-1])

    px_factor = next((f for f in (4, 5, 3, 2) if pixel is not None and extents[pixel] % f == 0), 1)
    oc_o, oc_i = sch.split(loops[oc], [None, lanes])
    outer = [loops[i] for i in spatial if i not in (oc, pixel)]
    inner = [oc_i]
    if pixel is not None:
        px_o, px_i = sch.split(loops[pixel], [None, px_factor])
        outer.append(px_o)
        inner.insert(0, px_i)
    outer.append(oc_o)
    sch.reorder(*outer, *[loops[i] for i in reduce], *inner)
    consumers, threads = _place_channel_tile(sch, block, ax, pixel, oc_o, outer, producers, padded, parallel)
    _register_int8_lanes(name, lanes, broadcast=not depthwise)
    sch.tensorize(oc_i, name)
    if pixel is not None:
        sch.unroll(px_i)
    placed = [sch.get(c).name_hint for c in consumers]
    return (f"int8 {'depthwise ' if depthwise else ''}{px_factor} pixels x {lanes} output channels (vector)"
            f", weights copied channel-innermost{', pad computed per row' if padded else ''}"
            f"{', ' + threads if threads else ''}"), placed


#: The AVX2 pair step across output channels (_tile_int8_channel_pairs).
AVX2_CHANNEL_PAIRS = "minrt_avx2_pmaddwd_bcast2_i8x8x2_i32x8"


def _register_int8_channel_pairs(name: str) -> None:
    """Register a tensor intrinsic once per process: C[j] += A[0] * B[j, 0] + A[1] * B[j, 1]
    for 8 output channels j, int8 operands, int32 accumulators, exactly (a pair of int8
    products is at most 2 * 128 * 128 in magnitude). AVX2: the data pair is broadcast as one
    16-bit word (vpbroadcastw) and sign-extended to 8 int16 pairs (vpmovsxbw; extended first
    and broadcast as an int32, LLVM took 4 instructions, IC's int8 convs 318 -> 275 us); the
    16 weights (8 channels x 2 inputs), sign-extended, meet it in one vpmaddwd, whose int32
    lanes are the 8 channels' sums: no horizontal sum per output, however short the reduction."""
    from tvm import s_tir
    from tvm.script import tirx as T

    if s_tir.TensorIntrin.get(name, allow_missing=True) is not None:
        return

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (2,), "int8", offset_factor=1)
        B = T.match_buffer(b, (8, 2), "int8", offset_factor=1)
        C = T.match_buffer(c, (8,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:8], A[0:2], B[0:8, 0:2])
            T.writes(C[0:8])
            for j, k in T.grid(8, 2):
                with T.sblock("update"):
                    vj, vk = T.axis.remap("SR", [j, k])
                    C[vj] = C[vj] + T.Cast("int32", A[vk]) * T.Cast("int32", B[vj, vk])

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (2,), "int8", offset_factor=1)
        B = T.match_buffer(b, (8, 2), "int8", offset_factor=1)
        C = T.match_buffer(c, (8,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:8], A[0:2], B[0:8, 0:2])
            T.writes(C[0:8])
            C[T.ramp(0, 1, 8)] = C[T.ramp(0, 1, 8)] + T.call_llvm_pure_intrin(
                "int32x8", "llvm.x86.avx2.pmadd.wd",
                T.Cast("int16x16", T.reinterpret("int8x16", T.Broadcast(
                    T.reinterpret("int16", A.vload([0], "int8x2")), 8))),
                T.Cast("int16x16", B.vload([0, 0], "int8x16")))

    s_tir.TensorIntrin.register(name, desc, impl)


def _tile_int8_channel_pairs(sch: Any, block: Any, parallel: bool = False) -> tuple[str, list[str]]:
    """Tile an int8 accumulation whose reduction runs innermost over contiguous input channels
    (an even number of them) along vectors of 8 output channels, AVX2 only
    (_register_int8_channel_pairs): a tile of pixels x 1-2 channel vectors keeps its int32
    accumulators in registers across the reduction; each step of 2 input channels broadcasts
    one data pair per pixel and loads one weight vector per channel vector. The weights are
    copied once per call as [O/8, KH, KW, C/2, 8, 2] (each step's 16 bytes contiguous), padding
    is computed per output row, the requantization per tile, one lane per channel. Against
    _tile_int8_simd's partial sums along the reduction this pays off where the reduction is
    short (pointwise convs of 16-64 channels): no horizontal sum per output."""
    ax = _int8_axes(sch, block)
    node, loops, spatial, reduce, oc, rc, extents = (
        ax.node, ax.loops, ax.spatial, ax.reduce, ax.oc, ax.rc, ax.extents)
    if rc is None or not ax.contiguous or extents[rc] % 2:
        raise ValueError("the reduction is not over an even run of contiguous input channels")
    if extents[oc] % 8 or len(ax.weight.region) not in (2, 4):
        raise ValueError(f"{extents[oc]} output channels are not a whole number of 8-lane vectors")
    pixel = next((i for i in reversed(spatial) if i != oc and extents[i] > 1), None)
    producers = {sch.get(p).writes[0].source: p for p in sch.get_producers(block)}
    padded = [r.source for r in node.reads if r.source in producers]

    copy = sch.cache_read(block, 1, "global")  # the weights, 8 channels x 2 inputs per step
    if len(ax.weight.region) == 4:
        sch.transform_layout(copy, ("write", 0), lambda o, h, w, c: (o // 8, h, w, c // 2, o % 8, c % 2))
    else:
        sch.transform_layout(copy, ("write", 0), lambda o, c: (o // 8, c // 2, o % 8, c % 2))
    # in the order it is written, 16 bytes at a time, as 8 rows' 2-byte pairs (copied byte by
    # byte in the weights' order, IC's 8x8-pixel conv of 64 channels took 49 us, this way 44)
    copy_loops = sch.get_loops(copy)
    o_o, o_i = sch.split(copy_loops[0], [None, 8])
    c_o, c_i = sch.split(copy_loops[-1], [None, 2])
    sch.reorder(o_o, *copy_loops[1:-1], c_o, o_i, c_i)
    sch.unroll(o_i)
    sch.vectorize(c_i)

    vectors = 2 if extents[oc] % 16 == 0 else 1
    # up to 12 accumulators, 2 weight vectors and the broadcast pair in the 16 ymm registers
    # (KWS's 5-pixel rows: 1 pixel per tile under a limit of 8, 90 -> 72 us)
    px_factor = _largest_divisor(extents[pixel], 12 // vectors) if pixel is not None else 1
    oc_o, oc_v, oc_i = sch.split(loops[oc], [None, vectors, 8])
    rc_o, rc_i = sch.split(loops[rc], [None, 2])
    outer = [loops[i] for i in spatial if i not in (oc, pixel)]
    inner = [oc_v, oc_i]
    if pixel is not None:
        px_o, px_i = sch.split(loops[pixel], [None, px_factor])
        outer.append(px_o)
        inner.insert(0, px_i)
    outer.append(oc_o)
    sch.reorder(*outer, *[loops[i] for i in reduce if i != rc], rc_o, *inner, rc_i)
    consumers, threads = _place_channel_tile(sch, block, ax, pixel, oc_o, outer, producers, padded, parallel)
    _register_int8_channel_pairs(AVX2_CHANNEL_PAIRS)
    sch.tensorize(oc_i, AVX2_CHANNEL_PAIRS)
    for loop in inner[:-1]:
        sch.unroll(loop)
    placed = [sch.get(c).name_hint for c in consumers]
    return (f"int8 vpmaddwd across channels, {px_factor} pixels x {vectors * 8} output channels"
            f", weights copied in channel pairs{', pad computed per row' if padded else ''}"
            f"{', ' + threads if threads else ''}"), placed


#: Output pixels below which _tile_int8_channel_pairs does not pay for its per-call copy of the
#: weights (VWW's 3x3-pixel pointwise convs of 128-256 channels: 10 -> 15 and 18 -> 29 us).
CHANNEL_PAIRS_MIN_PIXELS = 16


def _int8_simd_rule(sch: Any, block: Any, intrin: tuple[str, int]) -> list[Callable[..., tuple[str, list[str]]]]:
    """Which SIMD int8 tilings fit the accumulation block, best first, without changing it: on
    AVX2, vectors of output channels with a pair of input channels per step
    (_tile_int8_channel_pairs) where there are enough pixels; partial sums along a reduction
    over whole steps of contiguous input channels (_tile_int8_simd); else vectors of output
    channels (_tile_int8_channels: depthwise, or a data read that does not depend on the output
    channel); else none (the float rules' tiling). Each is called as f(sch, block, parallel=...)."""
    try:
        ax = _int8_axes(sch, block)
    except ValueError:
        return []
    if ax.rc is None:
        return []
    data, weight, names, oc, rc, extents = ax.data, ax.weight, ax.names, ax.oc, ax.rc, ax.extents
    data_last = _vars_of(data.region[-1].min)
    name, lanes = intrin
    found: list[Callable[..., tuple[str, list[str]]]] = []
    pixels = math.prod(extents[i] for i in ax.spatial if i != oc)
    if (name == AVX2_PAIRS16 and ax.contiguous and extents[rc] % 2 == 0 and extents[oc] % 8 == 0
            and pixels >= CHANNEL_PAIRS_MIN_PIXELS):
        found.append(_tile_int8_channel_pairs)
    if ax.contiguous and extents[rc] % (2 * lanes) == 0:
        return [*found, partial(_tile_int8_simd, intrin=intrin)]
    if len(weight.region) == 4:
        # depthwise: the data channel is the output channel (not a group's `oc // G * C + rc`)
        depthwise = (names[oc] in data_last and int(data.region[-1].extent) == 1 and extents[rc] == 1
                     and not _divides(data.region[-1].min))
        # int32 accumulators in two vector registers; on AVX2 in one for a depthwise conv of 8
        # channels (VWW's second conv: the float rules' tile took 17 us, this 12.5; its first,
        # of 3 input channels, took 39 this way against the float tile's 35)
        channel_lanes = next((n for n in (2 * lanes, lanes if depthwise and name == AVX2_PAIRS16 else 0)
                              if n and extents[oc] % n == 0), 0)
        if channel_lanes and (depthwise or not any(names[oc] in _vars_of(r.min) for r in data.region)):
            found.append(partial(_tile_int8_channels, lanes=channel_lanes))
    return found


def schedule_kernel(func: Any, lanes: int, parallel: bool = False, dsp: bool = False,
                    tile: ConvTile | None = None, int8_simd: tuple[str, int] | None = None,
                    neon: bool = False, pools_as_loops: bool = False) -> tuple[Any, KernelSchedule]:
    """Apply the default rules to one PrimFunc; returns the scheduled PrimFunc and what was
    done. Falls back to inlining only when the tiling rule does not apply. With `parallel`
    (Linux targets, whose runner runs parallel loops on threads), a kernel of at least
    PARALLEL_MIN_WORK (_parallel_work: multiply-adds and elements moved) gets its outermost
    loop with more than one iteration parallel (output rows or channel blocks, fused where
    there are few: each task writes its own outputs), tiled and elementwise kernels alike. `tile`: a
    channels-last convolution's register tile instead of the rule's (a ValueError when the
    kernel is no such convolution or the tile does not divide it). `neon`: the ARMv7 NEON rules
    (is_armv7_neon) where they differ from the others'. With `pools_as_loops` (x86_64), a
    pooling window keeps its loop nest (_pool_as_loops) and an elementwise kernel with
    per-channel operands is vectorized along rows (_broadcast_rows)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    _inline_spatial(sch, func)
    _inline_output_copies(sch)
    inlined = sch.mod["main"]

    try:
        blocks = _blocks(sch)
        reductions = [b for b in blocks if not _is_spatial(sch, b)]
        details = []
        placed: list[str] = []
        conv_tile: ConvTile | None = None
        tile_axes: tuple[int, int] | None = None
        if reductions:
            anchor = max(reductions, key=partial(_iterations, sch))
            channel = _channel_axis(sch, anchor, lanes) if lanes > 1 else None
            threads = parallel and _parallel_work(sch, anchor) >= PARALLEL_MIN_WORK
            simd = _int8_simd_rule(sch, anchor, int8_simd) if int8_simd is not None and _is_int8_mac(sch, anchor) else []
            if _is_int8_mac(sch, anchor) and not dsp and not simd:
                # the float rules would keep the padding stage as a row-band workspace; read
                # through a select instead, as the int8 kernels did before they had one
                for producer in sch.get_producers(anchor):
                    sch.compute_inline(producer)
            if dsp and _is_int8_mac(sch, anchor):
                detail, placed = _tile_int8(sch, anchor, dsp, parallel=threads)
            elif simd:
                # each tried on a copy: a step that does not match (tensorize refuses) leaves the
                # next, and after the last the float rules' tiling, not bare inlining
                for tiling in simd:
                    trial = sch.copy()
                    try:
                        detail, placed = tiling(trial, anchor, parallel=threads)
                        sch = trial
                        break
                    except Exception as exc:  # noqa: BLE001 - any primitive may refuse
                        log.debug("int8 SIMD schedule refused (%s)", exc)
                else:
                    log.debug("no int8 SIMD schedule fits; the float rules' tiling")
                    for producer in sch.get_producers(anchor):
                        sch.compute_inline(producer)
                    detail, placed = _tile_reduction(sch, func, anchor, lanes, parallel=threads)
            elif pools_as_loops and channel is None and _is_window_reduction(sch, anchor):
                detail, placed = _pool_as_loops(sch, anchor, parallel=threads)
            elif pools_as_loops and channel is None and _is_image_reduction(sch, anchor):
                detail, placed = _image_reduction_by_rows(sch, anchor, parallel=threads)
            elif channel is not None:
                detail, placed, conv_tile, tile_axes = _tile_conv_channels(sch, anchor, lanes, *channel,
                                                                           parallel=threads, tile=tile, neon=neon)
            else:
                detail, placed = _tile_reduction(sch, func, anchor, lanes, parallel=threads)
            details.append(detail)
            rule = "tiled"
        else:
            rule = "vectorized"
            threads = parallel and _parallel_work(sch, None) >= PARALLEL_MIN_WORK
        # Whatever is left at the root that is still a full loop nest of spatial work.
        local = _local_buffers(sch)
        for block in _blocks(sch):
            if (_is_spatial(sch, block) and _writes_output(sch, block, local)
                    and sch.get(block).name_hint not in placed):
                details.append(_vectorize_elementwise(sch, block, lanes, neon=neon, rows=pools_as_loops,
                                                      parallel=threads))
        if tile is not None and conv_tile is None:
            raise ValueError("a register tile was given for a kernel that is no channels-last convolution")
        return sch.mod["main"], KernelSchedule(rule=rule, detail="; ".join(details), tile=conv_tile,
                                               tile_axes=tile_axes, trace=sch.trace)
    except Exception as exc:  # noqa: BLE001 - any primitive may refuse; keep the inlined form
        if tile is not None:
            raise ValueError(f"register tile {tile}: {exc}") from None
        log.debug("default schedule: tiling refused (%s); inlining only", exc)
        return inlined, KernelSchedule(rule="inlined", detail=f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}")
