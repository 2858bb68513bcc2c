"""ONNX -> Relax: read and check an ONNX file, fold batch-norms (into convs, or into one multiply-add), import with TVM's frontend and lower (legalize + fuse)."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from harness.errors import CompileError

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# ONNX -> Relax


def load_onnx(path: Path, data: bytes) -> Any:
    """Check an ONNX file's bytes (harness.compile.source.load_model reads them); errors name
    the file and what is wrong with it."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise CompileError(f"{path}: not an ONNX model (protobuf does not parse: {exc})") from None
    # Protobuf accepts many byte strings (even empty ones) as a message with no fields.
    if model.ir_version == 0 or not model.HasField("graph"):
        raise CompileError(f"{path}: not an ONNX model (no ir_version or no graph in {len(data)} bytes)")
    if not model.graph.node:
        raise CompileError(f"{path}: the ONNX graph has no nodes: there is nothing to compile")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CompileError(f"{path}: invalid ONNX model: {first}") from None
    return model


def graph_inputs(model: Any) -> list[Any]:
    """The graph's real inputs (ONNX may list initializers as inputs too)."""
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


#: The largest dimension minrt takes: it keeps dimensions and element counts below 2^31.
MAX_DIM = (1 << 31) - 1


def _shape_text(value: Any) -> str:
    return "[" + ",".join(str(d.dim_value) if d.HasField("dim_value") and d.dim_value >= 0
                          else (d.dim_param or "?") for d in value.type.tensor_type.shape.dim) + "]"


def _check_static_shapes(model: Any, path: Path) -> None:
    for value in graph_inputs(model):
        dims = value.type.tensor_type.shape.dim
        for axis, dim in enumerate(dims):
            if dim.HasField("dim_value") and dim.dim_value == 0:
                raise CompileError(f"{path}: input '{value.name}' has dimension {axis} of size 0 in shape "
                                   f"{_shape_text(value)}: an empty tensor, which minrt does not run")
            if dim.HasField("dim_value") and dim.dim_value > MAX_DIM:
                raise CompileError(f"{path}: input '{value.name}' has dimension {axis} of size {dim.dim_value}, "
                                   f"more than minrt's largest ({MAX_DIM:,})")
            if not dim.HasField("dim_value") or dim.dim_value < 0:
                what = dim.dim_param or "unknown"
                example = ",".join(str(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else "1"
                                   for d in dims)
                raise CompileError(
                    f"{path}: input '{value.name}' has a non-static dimension {axis} ({what}) in shape "
                    f"{_shape_text(value)}; minrt needs every input shape fixed: give it with "
                    f"--input-shape {value.name}={example}"
                )


def apply_input_shapes(model: Any, shapes: Mapping[str, Sequence[int]], path: Path) -> Any:
    """A copy of the model with the given inputs' shapes fixed (tvmc's --input-shapes): each
    shape must have the input's rank and keep its static dimensions; a named dimension fixed on
    an input (a batch `N`) takes the same value wherever else the graph uses that name."""
    import onnx

    if not shapes:
        return model
    inputs = {v.name: v for v in graph_inputs(model)}
    unknown = sorted(set(shapes) - set(inputs))
    if unknown:
        raise CompileError(f"{path}: --input-shape names {unknown}, not inputs of the model "
                           f"(inputs: {', '.join(f'{n} {_shape_text(v)}' for n, v in inputs.items())})")
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    params: dict[str, int] = {}
    by_name = {v.name: v for v in fixed.graph.input}
    for name, shape in shapes.items():
        value = by_name[name]
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(shape):
            raise CompileError(f"{path}: --input-shape {name}={','.join(map(str, shape))} has {len(shape)} "
                               f"dimension(s); input '{name}' has {len(dims)}: {_shape_text(value)}")
        for axis, (dim, size) in enumerate(zip(dims, shape)):
            if dim.HasField("dim_value") and dim.dim_value > 0 and dim.dim_value != size:
                raise CompileError(f"{path}: --input-shape {name}: dimension {axis} is fixed at "
                                   f"{dim.dim_value} in the model, not {size} ({_shape_text(value)})")
            if dim.dim_param:
                if params.setdefault(dim.dim_param, int(size)) != size:
                    raise CompileError(f"{path}: --input-shape gives dimension '{dim.dim_param}' two "
                                       f"values ({params[dim.dim_param]} and {size})")
            dim.dim_value = int(size)
    for value in [*fixed.graph.input, *fixed.graph.output, *fixed.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in params:
                dim.dim_value = params[dim.dim_param]
    return fixed


def _constant_reader(graph: Any) -> Any:
    """A function giving the value of a constant input of `graph`, or None: an initializer, a
    ConstantOfShape of an initializer shape (how ONNX's light zoo models hold their weights), or
    an Unsqueeze of one of those (their per-channel scales). Computed on demand, for the tensors
    a rewrite folds."""
    from onnx import numpy_helper

    initializers = {t.name: t for t in graph.initializer}
    producers = {n.output[0]: n for n in graph.node if len(n.output) == 1}

    def constant(name: str) -> Any:
        if name in initializers:
            return numpy_helper.to_array(initializers[name])
        node = producers.get(name)
        if node is None:
            return None
        if node.op_type == "ConstantOfShape" and len(node.input) == 1 and node.input[0] in initializers:
            shape = numpy_helper.to_array(initializers[node.input[0]]).astype(np.int64).reshape(-1)
            value = next((numpy_helper.to_array(a.t) for a in node.attribute if a.name == "value"), np.zeros(1, np.float32))
            if (shape < 0).any() or math.prod(int(d) for d in shape) > 1 << 28:
                return None  # not a weight: let the frontend say what is wrong with it
            return np.full(tuple(int(d) for d in shape), value.reshape(-1)[0], dtype=value.dtype)
        if node.op_type == "Unsqueeze" and node.input:
            axes_attr = [list(a.ints) for a in node.attribute if a.name == "axes"]
            axes = axes_attr[0] if axes_attr else (
                constant(node.input[1]) if len(node.input) > 1 and node.input[1] else None)
            value = constant(node.input[0])
            if value is None or axes is None:
                return None
            rank = value.ndim + len(axes)
            try:
                return np.expand_dims(value, tuple(sorted(int(a) % rank for a in np.reshape(axes, -1))))
            except ValueError:
                return None
        return None

    return constant


def _channel_affine_after(graph: Any, out: str, channels: int, rank: int, constant: Any,
                          ) -> tuple[np.ndarray, np.ndarray, list[Any], str]:
    """The Mul and Add by per-channel constants (axis 1 of a rank-`rank` tensor) that follow
    `out`, each the sole reader of the one before (not past a graph output): how they map a
    value, y * scale + shift, the nodes, and the last one's output. Nothing follows: scale 1,
    shift 0 (applying them then changes no bit)."""
    outputs = {o.name for o in graph.output}
    scale, shift, joined = np.ones(channels), np.zeros(channels), []
    while out not in outputs:
        readers = [n for n in graph.node for name in n.input if name == out]
        if len(readers) != 1 or readers[0].op_type not in ("Mul", "Add") or len(readers[0].input) != 2:
            break
        node = readers[0]
        other = constant(node.input[1] if node.input[0] == out else node.input[0])
        if other is None or other.dtype != np.float32 or other.ndim > rank:
            break
        padded = (1,) * (rank - other.ndim) + other.shape
        if any(d != 1 for i, d in enumerate(padded) if i != 1) or padded[1] not in (1, channels):
            break
        vector = np.broadcast_to(other.reshape(-1).astype(np.float64), (channels,))
        if node.op_type == "Mul":
            scale, shift = scale * vector, shift * vector
        else:
            shift = shift + vector
        joined.append(node)
        out = node.output[0]
    return scale, shift, joined, out


def _inference_batchnorms(graph: Any) -> list[Any]:
    """The graph's BatchNormalization nodes in inference mode (one output, the four parameter
    inputs), listed first so that the caller may change the graph."""
    return [n for n in graph.node if n.op_type == "BatchNormalization" and len(n.output) == 1 and len(n.input) == 5
            and not any(a.name == "training_mode" and a.i for a in n.attribute)]


def fold_batchnorm(model: Any) -> tuple[Any, int]:
    """Fold each inference-mode BatchNormalization that directly follows a Conv with constant
    weights into that Conv's weights and bias (a copy of the model is changed, not `model`),
    with the Mul and Add by per-channel constants that follow it (_channel_affine_after).

    TVM has no such pass: without it the BN becomes a per-element subtract/divide/multiply/add
    in the conv kernel. With it the BN costs nothing at run time. A constant is an initializer
    or a ConstantOfShape of an initializer shape (how ONNX's light zoo models hold their weights).
    """
    import onnx
    from onnx import numpy_helper

    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    graph = folded.graph
    constant = _constant_reader(graph)

    outputs = {o.name for o in graph.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    producer = {out: node for node in graph.node for out in node.output}
    count = 0
    for bn in _inference_batchnorms(graph):
        conv = producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or len(conv.output) != 1:
            continue
        if readers.get(conv.output[0], 0) != 1 or conv.output[0] in outputs:
            continue
        values = {name: constant(name) for name in list(conv.input[1:]) + list(bn.input[1:]) if name}
        if any(v is None for v in values.values()):
            continue
        weight = values[conv.input[1]].astype(np.float64)
        bias = (values[conv.input[2]].astype(np.float64)
                if len(conv.input) > 2 and conv.input[2] else np.zeros(weight.shape[0]))
        scale, shift, mean, var = (values[n].astype(np.float64) for n in bn.input[1:])
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        factor = scale / np.sqrt(var + eps)
        dtype = values[conv.input[1]].dtype
        # a per-channel Mul/Add after the BN (DenseNet's) joins it
        scale_after, shift_after, joined, out = _channel_affine_after(graph, bn.output[0], weight.shape[0],
                                                                       weight.ndim, constant)
        new_w = (weight * (factor * scale_after).reshape(-1, *([1] * (weight.ndim - 1)))).astype(dtype)
        new_b = (((bias - mean) * factor + shift) * scale_after + shift_after).astype(dtype)
        w_name, b_name = f"{out}.folded_weight", f"{out}.folded_bias"
        graph.initializer.extend([numpy_helper.from_array(new_w, w_name), numpy_helper.from_array(new_b, b_name)])
        del conv.input[1:]
        conv.input.extend([w_name, b_name])
        conv.output[0] = out
        for node in [bn, *joined]:
            graph.node.remove(node)
        count += 1
    return folded, count


def batchnorms_as_affine(model: Any) -> tuple[Any, int]:
    """Each inference-mode BatchNormalization that fold_batchnorm left (one on a concatenation,
    a pool or an input: DenseNet's pre-activations) as one Mul and one Add by per-channel
    constants, computed at compile time; a Mul or Add by a per-channel constant that is the sole
    reader of the result joins those two (DenseNet's BN, Mul, Add, Relu is then one multiply-add
    and a relu). Returns the model (a copy when one is changed) and how many BNs were rewritten.

    TVM decomposes such a BN into subtract, divide, multiply, add, and FuseOps left it a kernel
    apart from the Mul, Add, Relu after it: light_densenet121 made two passes over every
    concatenation, one dividing per element. The BN's input rank comes from ONNX shape
    inference; a BN whose rank it cannot tell is left as it is."""
    import onnx
    from onnx import helper, numpy_helper

    if not any(n.op_type == "BatchNormalization" for n in model.graph.node):
        return model, 0
    # IR 3 wants every initializer listed as an input too, and fold_batchnorm's are not; from IR
    # 4 on they need not be, so shape inference looks at the model as IR 4 at least
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.ir_version = max(probe.ir_version, 4)
    try:
        ranks = {v.name: len(v.type.tensor_type.shape.dim)
                 for v in [*onnx.shape_inference.infer_shapes(probe, data_prop=True).graph.value_info,
                           *model.graph.input]
                 if v.type.tensor_type.HasField("shape") and v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    except Exception as exc:  # noqa: BLE001 - inference refuses some valid models; then nothing changes
        log.debug("shape inference failed (%s): batch-norms kept", exc)
        return model, 0
    changed = onnx.ModelProto()
    changed.CopyFrom(model)
    graph = changed.graph
    constant = _constant_reader(graph)
    count = 0
    for bn in _inference_batchnorms(graph):
        rank = ranks.get(bn.input[0], 0)
        params = [constant(name) for name in bn.input[1:]]
        if rank < 2 or any(v is None or v.dtype != np.float32 or v.ndim != 1 for v in params):
            continue
        scale, shift, mean, var = (v.astype(np.float64) for v in params)
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        factor = scale / np.sqrt(var + eps)
        scale_after, shift_after, joined, out = _channel_affine_after(graph, bn.output[0], len(factor), rank, constant)
        factor, offset = factor * scale_after, (shift - mean * factor) * scale_after + shift_after
        shape = (len(factor),) + (1,) * (rank - 2)
        f_name, o_name, mid = f"{out}.affine_scale", f"{out}.affine_shift", f"{out}.affine_scaled"
        graph.initializer.extend([numpy_helper.from_array(factor.astype(np.float32).reshape(shape), f_name),
                                  numpy_helper.from_array(offset.astype(np.float32).reshape(shape), o_name)])
        at = list(graph.node).index(bn)
        for node in [bn, *joined]:
            graph.node.remove(node)
        graph.node.insert(at, helper.make_node("Add", [mid, o_name], [out], name=f"{bn.name or out}.affine_add"))
        graph.node.insert(at, helper.make_node("Mul", [bn.input[0], f_name], [mid], name=f"{bn.name or out}.affine_mul"))
        count += 1
    return (changed, count) if count else (model, 0)


def sums_as_adds(model: Any) -> Any:
    """Each Sum of two or more inputs as a chain of Adds (a copy of the model when one is
    changed). TVM's frontend imports Sum as a stack and a reduction, which FuseOps cannot fuse
    with the conv before it or the relu after it: ResNet's residual `Sum, Relu` cost two extra
    kernels and two passes over the activation; as an Add, both join the conv's kernel."""
    from onnx import ModelProto, helper

    if not any(n.op_type == "Sum" and len(n.input) >= 2 for n in model.graph.node):
        return model
    changed = ModelProto()
    changed.CopyFrom(model)
    nodes = []
    for node in changed.graph.node:
        if node.op_type != "Sum" or len(node.input) < 2:
            nodes.append(node)
            continue
        acc = node.input[0]
        for i, term in enumerate(node.input[1:], 1):
            out = node.output[0] if i == len(node.input) - 1 else f"{node.output[0]}.sum{i}"
            nodes.append(helper.make_node("Add", [acc, term], [out], name=f"{node.name or node.output[0]}.add{i}"))
            acc = out
    del changed.graph.node[:]
    changed.graph.node.extend(nodes)
    return changed


def import_onnx(model: Any, path: Path) -> tuple[Any, int, int]:
    """ONNX -> Relax IRModule with weights as constants, how many batch-norms were folded into
    convolutions on the way, and how many others became one multiply-add."""
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    _check_static_shapes(model, path)
    model, folded = fold_batchnorm(model)
    if folded:
        log.info("%s: folded %d batch-norm(s) into convolutions", path.name, folded)
    model, affine = batchnorms_as_affine(model)
    if affine:
        log.info("%s: %d other batch-norm(s) as one multiply-add each", path.name, affine)
    model = sums_as_adds(model)
    try:
        mod = from_onnx(model, keep_params_in_input=False)
    except tvm.error.OpNotImplemented as exc:
        message = str(exc)
        ops = sorted({n.op_type for n in model.graph.node if re.search(rf"\b{re.escape(n.op_type)}\b", message.split(":", 1)[-1])})
        nodes = [f"{n.op_type} (node '{n.name or n.output[0]}')" for n in model.graph.node if n.op_type in ops]
        raise CompileError(
            f"{path}: TVM's ONNX frontend cannot import operator(s) {', '.join(ops) or message}: "
            + "; ".join(nodes)
        ) from None
    except Exception as exc:  # the frontend raises many kinds; name it and keep the first line
        reraise_interrupt(exc)
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CompileError(f"{path}: TVM's ONNX frontend failed: {type(exc).__name__}: {first}") from None
    mod, lrns = lrns_as_one_kernel(mod)
    if lrns:
        log.info("%s: %d LRN(s) as one kernel each", path.name, lrns)
    return mod, folded, affine


def lrns_as_one_kernel(mod: Any) -> tuple[Any, int]:
    """Each LRN of `main` as TVM's ONNX frontend writes it (the squares, an average pool over
    the channels, then `x / (bias + alpha * mean) ** beta`) as one kernel (lrn_te); returns the
    module and how many were rewritten. The frontend's form took three kernels and a scalar
    `pow` per element: light_inception_v1's two LRNs cost 4.8 of its 37.5 ms on x86_64."""
    from tvm import relax, te
    from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

    builder = relax.BlockBuilder(mod)
    count = 0
    left, right, numerator = wildcard(), wildcard(), wildcard()
    expanded = is_op("relax.expand_dims")(is_op("relax.multiply")(left, right))
    pool = is_op("relax.nn.avg_pool2d")(expanded) | is_op("relax.nn.avg_pool3d")(expanded)
    alpha, bias, beta = is_const(), is_const(), is_const()
    base = is_op("relax.add")(is_op("relax.multiply")(is_op("relax.squeeze")(pool), alpha), bias)
    root = is_op("relax.divide")(numerator, is_op("relax.power")(base, beta))

    def scalar(expr: Any) -> float | None:
        value = expr.value.numpy()
        return float(value) if value.size == 1 and value.dtype == np.float32 else None

    def rewrite(orig: Any, m: dict) -> Any:
        nonlocal count
        x, attrs = m[numerator], m[pool].attrs
        shape = [int(d) for d in getattr(x.ty, "shape", None) or []]
        window = [int(d) for d in attrs.pool_size]
        size = window[0]
        constants = [scalar(m[p]) for p in (alpha, bias, beta)]
        if (not (m[left].same_as(x) and m[right].same_as(x)) or str(x.ty.dtype) != "float32"
                or len(shape) != len(window) + 1 or any(d != 1 for d in window[1:])
                or any(int(s) != 1 for s in attrs.strides) or not bool(attrs.count_include_pad)
                or [int(p) for p in attrs.padding] != [size // 2, *[0] * (len(window) - 1)] * 2
                or size % 2 == 0 or None in constants):
            return orig  # not the frontend's LRN: left as it is
        mean_alpha, bias_value, beta_value = constants
        data = te.placeholder(shape, "float32", name="data")
        out = lrn_te(data, size, mean_alpha / size, bias_value, beta_value)
        prim = te.create_prim_func([data, out], index_dtype_override="int64").without_attr("global_symbol")
        gvar = builder.add_func(prim, "lrn")
        count += 1
        return relax.call_tir(gvar, relax.Tuple([x]), relax.TensorType(shape, "float32"))

    func = rewrite_call(root, rewrite, mod["main"])
    if not count:
        return mod, 0
    out = builder.get()
    out["main"] = func
    return relax.transform.DeadCodeElimination(["main"])(out), count


def lrn_te(x: Any, size: int, scale: float, bias: float, beta: float) -> Any:
    """ONNX's LRN over axis 1 of `x`: x / (bias + scale * sum of the squares over a window of
    `size` channels, floor((size - 1) / 2) before and the rest after) ** beta, with scale
    alpha / size. The squares are a padded stage of C + size - 1 channels (the schedule computes
    it once per output row and keeps it as a row band: each square is taken once, not `size`
    times), the window sum a reduction (register-tiled, vectorized along the pixels), the
    division its epilogue; a beta that is a multiple of 1/4 up to 1 takes square roots
    (vectorized) instead of a scalar `pow` per element (_quarter_power)."""
    import tvm
    from tvm import te

    shape = tuple(int(d) for d in x.shape)
    channels, before = shape[1], (size - 1) // 2
    zero = tvm.tirx.const(0.0, "float32")

    def square(b: Any, ch: Any, *pixel: Any) -> Any:
        value = x[(b, ch - before, *pixel)]
        return tvm.tirx.if_then_else(tvm.tirx.all(ch >= before, ch < before + channels), value * value, zero)

    squares = te.compute((shape[0], channels + size - 1, *shape[2:]), square, name="pad_temp")
    k = te.reduce_axis((0, size), "rk")
    sums = te.compute(shape, lambda b, ch, *pixel: te.sum(squares[(b, ch + k, *pixel)], axis=k), name="window_sum")

    def normalized(*index: Any) -> Any:
        base = tvm.tirx.const(bias, "float32") + tvm.tirx.const(scale, "float32") * sums[index]
        return x[index] / _quarter_power(base, beta)

    return te.compute(shape, normalized, name="T_lrn")


def _quarter_power(base: Any, beta: float) -> Any:
    """base ** beta; for beta = k/4 (k = 1..4) as products of sqrt(base) and sqrt(sqrt(base))
    (LLVM computes each root once), which vectorize, where `pow` is a libm call per element:
    LRN's usual 0.75 is sqrt(b) * sqrt(sqrt(b)). Each root is correctly rounded: a few ulp
    from `pow`."""
    import tvm

    quarters = beta * 4
    if quarters not in (1.0, 2.0, 3.0, 4.0):
        return tvm.tirx.power(base, tvm.tirx.const(beta, "float32"))
    root = tvm.tirx.sqrt(base)
    return {1.0: tvm.tirx.sqrt(root), 2.0: root, 3.0: root * tvm.tirx.sqrt(root), 4.0: base}[quarters]


def conv_weights_channels_last(mod: Any, lanes: int, chunks: bool = True, whole_groups: bool = True,
                               widen_depthwise: bool = True) -> Any:
    """Every float32 NCHW/OIHW conv2d of `main` that is dense (groups 1) or grouped with whole
    vectors of `lanes` output channels per group takes its weight as HWIO instead: the output
    channel innermost, so the default schedule loads a vector of output channels per input
    value (harness.compile.schedule, channels-last tile) whatever the image width. Depthwise
    convs (one output channel per group) keep OIHW: their vectors run along the image row.
    A dense conv whose constant weight the schedule wants blocked (large, or a 1x1 conv reduced
    in `chunks` of input channels: harness.compile.schedule.takes_blocked_weight) takes it as
    (O/lanes, KH, KW, I, lanes) instead (blocked_conv2d_te), and so does a grouped conv per
    group (_blocks_groups): whose groups are not whole vectors of output channels, or with
    `whole_groups` any. With `chunks`, a dense 1x1 conv of stride > 1 and no padding reads a
    compact strided copy of its input at stride 1. With `widen_depthwise`, a depthwise conv
    whose rows make only short vectors is computed on rows widened to whole vectors
    (_widens_depthwise).
    The weights are constants, so FoldConstant applies the transpose once at compile time;
    the activations keep their NCHW layout (no layout transform at run time)."""
    import tvm
    from tvm import relax

    @relax.expr_functor.mutator
    class ChannelsLast(relax.PyExprMutator):
        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            attrs = call.attrs
            if (not isinstance(call.op, tvm.ir.Op) or call.op.name != "relax.nn.conv2d"
                    or str(attrs.data_layout) != "NCHW"
                    or str(attrs.kernel_layout) != "OIHW" or str(attrs.out_layout) != "NCHW"
                    or any(str(getattr(arg.ty, "dtype", "")) != "float32" for arg in call.args[:2])):
                return call  # float32 only: integer kernels have rules of their own
            if widen_depthwise and _widens_depthwise(call, lanes):
                return self._widened(call)
            if not (_whole_vector_groups(call, lanes) or _blocks_groups(call, lanes, whole_groups)):
                return call
            if _blocks_weight(call, lanes, chunks) or _blocks_groups(call, lanes, whole_groups):
                return self._blocked(call)
            weight = relax.op.permute_dims(call.args[1], [2, 3, 1, 0])
            return relax.op.nn.conv2d(call.args[0], weight, strides=attrs.strides, padding=attrs.padding,
                                      dilation=attrs.dilation, groups=attrs.groups, data_layout="NCHW",
                                      kernel_layout="HWIO", out_layout="NCHW",
                                      out_dtype=attrs.out_dtype if str(attrs.out_dtype) else None)

        def _blocked(self, call: Any) -> Any:
            from tvm import te

            from harness.compile.schedule import conv_output_width

            attrs = call.attrs
            groups = int(attrs.groups)
            oihw = call.args[1].value.numpy()
            out, ins, kh, kw = oihw.shape
            per_group = out // groups
            padded = -(-per_group // lanes) * lanes  # output channels per group, whole vectors
            if padded != per_group:  # zero weights for the padding channels, cropped from the output
                oihw = np.pad(oihw.reshape(groups, per_group, ins, kh, kw),
                              ((0, 0), (0, padded - per_group), (0, 0), (0, 0), (0, 0))).reshape(-1, ins, kh, kw)
            blocked = np.ascontiguousarray(oihw.reshape(-1, lanes, ins, kh, kw).transpose(0, 3, 4, 2, 1))
            data = call.args[0]
            x_shape = tuple(int(d) for d in data.ty.shape.values)
            strides = [int(s) for s in attrs.strides]
            if (chunks and groups == 1 and (kh, kw) == (1, 1) and strides != [1, 1]
                    and not any(int(p) for p in attrs.padding)):
                # the pixels a strided 1x1 conv reads, copied compact once (a kernel of their
                # own): every channel block read them `stride` apart, from twice the cache lines
                # per chunk (resnet50's 1x1 stride-2 shortcuts, kernel CPU time: 1024 -> 2048 on
                # 14x14 3287 -> 2525 + 39 us for the copy, 512 -> 1024 on 28x28 2944 -> 2039 + 75)
                data = self.builder_.emit(relax.op.strided_slice(data, axes=[2, 3], begin=[0, 0],
                                                                 end=list(x_shape[2:]), strides=strides))
                x_shape = tuple(int(d) for d in data.ty.shape.values)
                strides = [1, 1]
            x = te.placeholder(x_shape, "float32", name="data")
            w = te.placeholder(blocked.shape, "float32", name="weight")
            y = blocked_conv2d_te(x, w, strides, [int(p) for p in attrs.padding], [int(d) for d in attrs.dilation],
                                  groups=groups, per_group=per_group,
                                  columns=conv_output_width(oihw.shape, _output_width(call), lanes, chunks) if groups == 1 else 0)
            # int64 shapes, as legalized Relax ops have: FuseTIR merges buffers of one type only
            prim = te.create_prim_func([x, w, y], index_dtype_override="int64").without_attr("global_symbol")
            gvar = self.builder_.add_func(prim, "conv2d_blocked")
            return relax.call_tir(gvar, relax.Tuple([data, relax.const(blocked, "float32")]),
                                  relax.TensorType([int(d) for d in y.shape], "float32"))

        def _widened(self, call: Any) -> Any:
            from tvm import te

            attrs = call.attrs
            oihw = call.args[1].value.numpy()
            x_shape = tuple(int(d) for d in call.args[0].ty.shape.values)
            x = te.placeholder(x_shape, "float32", name="data")
            w = te.placeholder(oihw.shape, "float32", name="weight")
            y = widened_depthwise_te(x, w, [int(s) for s in attrs.strides], [int(p) for p in attrs.padding],
                                     [int(d) for d in attrs.dilation], lanes)
            prim = te.create_prim_func([x, w, y], index_dtype_override="int64").without_attr("global_symbol")
            gvar = self.builder_.add_func(prim, "depthwise_conv2d")
            return relax.call_tir(gvar, relax.Tuple([call.args[0], call.args[1]]),
                                  relax.TensorType([int(d) for d in y.shape], "float32"))

    rewriter = ChannelsLast(mod)
    for gvar, func in mod.functions.items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
    return rewriter.builder_.get()


def _blocks_weight(call: Any, lanes: int, chunks: bool) -> bool:
    """Whether a float32 NCHW conv2d takes its weight blocked (O/lanes, KH, KW, I, lanes): one
    group, a constant weight, float32 output, and a shape the schedule wants blocked
    (harness.compile.schedule.takes_blocked_weight)."""
    from tvm.ir.expr import Constant

    from harness.compile.schedule import takes_blocked_weight

    weight = call.args[1]
    out_dtype = call.attrs.out_dtype
    if int(call.attrs.groups) != 1 or not isinstance(weight, Constant) or (out_dtype and str(out_dtype) != "float32"):
        return False
    shape = tuple(int(d) for d in weight.value.shape)
    return len(shape) == 4 and takes_blocked_weight(shape, lanes, chunks, _output_width(call))


def _output_width(call: Any) -> int:
    """The output width of an NCHW conv2d call of static shape (0 when it is not static)."""
    shape = getattr(call.ty, "shape", None)
    values = getattr(shape, "values", None)
    return int(values[3]) if values is not None and len(values) == 4 and hasattr(values[3], "value") else 0


def blocked_conv2d_te(x: Any, w: Any, strides: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                      groups: int = 1, per_group: int = 0, columns: int = 0) -> Any:
    """NCHW float32 data and a weight blocked as (O/V, KH, KW, I, V) -> NCHW output: a dense
    conv2d whose reduction reads the weight in memory order, V output channels contiguous per
    input channel and tap (harness.compile.schedule tiles it as a channels-last conv).
    `padding` is (top, left, bottom, right), as Relax's conv2d has it. With `groups`, each
    group's `per_group` output channels are padded to whole vectors in the weight (zeros);
    the conv computes the padded channels and the output crops them. With `columns` over the
    output width, the reduction computes that many columns per row (the extra ones read more
    zero padding on the right) and the output keeps the first ones
    (harness.compile.schedule.conv_output_width)."""
    from tvm import te

    n, _, h, wd = (int(d) for d in x.shape)
    blocks, kh, kw, _, v = (int(d) for d in w.shape)
    (sh, sw), (dh, dw), (pt, pl, pb, pr) = strides, dilation, padding
    oh, ow = _conv_output_size((h, wd), (kh, kw), strides, padding, dilation)
    wide = max(columns, ow)
    pr += (wide - ow) * sw
    xp = _zero_padded_te(x, pt, pl, h + pt + pb, wd + pl + pr) if any(padding) or wide > ow else x
    ins = int(w.shape[3])
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")
    rc = te.reduce_axis((0, ins), "rc")
    padded = blocks * v // groups
    def channel(o: Any) -> Any:
        return o // padded * ins + rc if groups > 1 else rc
    conv = te.compute((n, blocks * v, oh, wide), lambda b, o, y, xx: te.sum(
        xp[b, channel(o), y * sh + ry * dh, xx * sw + rx * dw] * w[o // v, ry, rx, rc, o % v], axis=[ry, rx, rc]),
        name="conv2d_nchw")
    cropped = bool(per_group) and per_group != padded
    if not cropped and wide == ow:
        return conv
    def source(o: Any) -> Any:
        return o // per_group * padded + o % per_group if cropped else o
    return te.compute((n, groups * per_group if cropped else blocks * v, oh, ow),
                      lambda b, o, y, xx: conv[b, source(o), y, xx], name="crop")


def _conv_output_size(image: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                      padding: Sequence[int], dilation: Sequence[int]) -> tuple[int, int]:
    """A 2-D conv's output rows and columns; `padding` is (top, left, bottom, right)."""
    (h, wd), (kh, kw), (sh, sw), (dh, dw), (pt, pl, pb, pr) = image, kernel, strides, dilation, padding
    return (h + pt + pb - dh * (kh - 1) - 1) // sh + 1, (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1


def _zero_padded_te(x: Any, top: int, left: int, rows: int, cols: int) -> Any:
    """NCHW `x` placed at (`top`, `left`) in zeros of `rows` x `cols` per channel."""
    import tvm
    from tvm import te

    n, c, h, wd = (int(d) for d in x.shape)

    def padded(b: Any, ch: Any, y: Any, xx: Any) -> Any:
        inside = tvm.tirx.all(y >= top, y < top + h, xx >= left, xx < left + wd)
        return tvm.tirx.if_then_else(inside, x[b, ch, y - top, xx - left], tvm.tirx.const(0.0, "float32"))
    return te.compute((n, c, rows, cols), padded, name="pad_temp")


def _widens_depthwise(call: Any, lanes: int) -> bool:
    """Whether a depthwise conv2d of stride 1 with a constant weight (a float32 NCHW/OIHW conv2d:
    conv_weights_channels_last checked that) has output
    rows whose widest vector (harness.compile.schedule.vector_factor) is a quarter register or
    less, and a widening of at most an eighth: shufflenet's rows of 14 on AVX2 (vectors of 2)
    are computed as 16 (widened_depthwise_te), 272 channels on 14x14: 45 -> 33 us. Rows of 12 (vectors of 4) measured slower widened
    (4.7 -> 7.8 us), and so did stride 2 (its loads gather either way)."""
    from tvm.ir.expr import Constant

    from harness.compile.schedule import vector_factor

    attrs = call.attrs
    weight = call.args[1]
    if (not isinstance(weight, Constant) or any(int(s) != 1 for s in attrs.strides)
            or (attrs.out_dtype and str(attrs.out_dtype) != "float32")):
        return False
    out, ins = (int(d) for d in weight.value.shape[:2])
    if ins != 1 or int(attrs.groups) != out or int(call.args[0].ty.shape.values[1]) != out:
        return False
    width = int(call.ty.shape.values[3])
    wide = -(-width // lanes) * lanes
    return vector_factor(width, lanes) <= lanes // 4 and 8 * (wide - width) <= wide  # at most 1/8 wasted


def widened_depthwise_te(x: Any, w: Any, strides: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                         lanes: int) -> Any:
    """NCHW float32 depthwise conv2d (OIHW weight) computed on output rows widened to whole
    vectors of `lanes`, the input padded with zeros to match, and cropped on output (the
    epilogue reads the real columns: harness.compile.schedule tiles the widened rows)."""
    from tvm import te

    n, c, h, wd = (int(d) for d in x.shape)
    _, _, kh, kw = (int(d) for d in w.shape)
    (sh, sw), (dh, dw), (pt, pl, pb, _) = strides, dilation, padding
    oh, ow = _conv_output_size((h, wd), (kh, kw), strides, padding, dilation)
    wide = -(-ow // lanes) * lanes
    xp = _zero_padded_te(x, pt, pl, h + pt + pb, (wide - 1) * sw + dw * (kw - 1) + 1)
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")
    conv = te.compute((n, c, oh, wide), lambda b, ch, y, xx: te.sum(
        xp[b, ch, y * sh + ry * dh, xx * sw + rx * dw] * w[ch, 0, ry, rx], axis=[ry, rx]), name="depthwise_conv2d_nchw")
    return te.compute((n, c, oh, ow), lambda b, ch, y, xx: conv[b, ch, y, xx], name="crop")


def _blocks_groups(call: Any, lanes: int, whole_groups: bool) -> bool:
    """Whether a float32 grouped conv2d (more than one input channel per group: not a depthwise
    conv) with a constant weight takes it blocked per group, (G * O/G/lanes, KH, KW, I/G, lanes),
    each group's output channels padded to whole vectors by zero weights where they are not
    (shufflenet's groups of 68 and 34 on AVX2, of 34 on NEON); with `whole_groups`, also a conv
    whose groups are whole vectors. harness.compile.schedule takes such a conv one group at a
    time (_tile_groups). x86_64, light_shufflenet's 544-channel conv in groups of 136 on 7x7: 99
    -> 80 us (HWIO -> blocked); ARMv7 NEON keeps HWIO for whole groups, whose channels-last tile
    stores its epilogue by channel vectors (light_shufflenet 143.6 M instructions, 163.0 M with
    its groups of 68 and 136 blocked too)."""
    from tvm.ir.expr import Constant

    weight = call.args[1]
    groups = int(call.attrs.groups)
    out_dtype = call.attrs.out_dtype
    if groups == 1 or not isinstance(weight, Constant) or (out_dtype and str(out_dtype) != "float32"):
        return False
    out, ins = (int(d) for d in weight.value.shape[:2])
    return ins > 1 and out % groups == 0 and (whole_groups or (out // groups) % lanes != 0)


def _whole_vector_groups(call: Any, lanes: int) -> bool:
    """A conv2d with one group, or whose groups each have whole vectors of output channels
    and more than one input channel (OIHW weight of static shape)."""
    from harness.compile.schedule import group_lanes

    groups = int(call.attrs.groups)
    if groups == 1:
        return True
    shape = getattr(call.args[1].ty, "shape", None)
    if shape is None or len(shape) != 4 or not all(hasattr(d, "value") for d in shape):
        return False
    out_channels, in_per_group = int(shape[0]), int(shape[1])
    return in_per_group > 1 and out_channels % groups == 0 and group_lanes(out_channels // groups, lanes) > 0


def lower_relax(mod: Any, tvm_target: Any) -> Any:
    """Legalize and fuse: `main` becomes a linear sequence of call_tir over inputs and constants.
    On targets with SIMD (harness.compile.schedule.simd_lanes > 1) dense convolutions take
    channels-last weights first (conv_weights_channels_last)."""
    import tvm
    from tvm import relax

    from harness.compile.schedule import is_armv7_neon, simd_lanes

    lanes = simd_lanes(tvm_target)
    if lanes > 1:
        # weights computed from constants (the light zoo's broadcast_to of each conv weight)
        # become constants first, so the blocked layout is laid out at compile time for them too
        with tvm_target:
            mod = relax.transform.FoldConstant()(mod)
        neon = is_armv7_neon(tvm_target)
        mod = conv_weights_channels_last(mod, lanes, chunks=not neon, whole_groups=not neon, widen_depthwise=not neon)
    passes = tvm.transform.Sequential([
        relax.transform.DecomposeOpsForInference(),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ])
    with tvm_target:
        return passes(mod)


def reraise_interrupt(exc: BaseException) -> None:
    """A Ctrl-C inside a TVM pass reaches Python as the pass's RuntimeError, with the
    KeyboardInterrupt as its cause or context: report it as the interrupt it is."""
    seen = exc
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        seen = seen.__cause__ or seen.__context__


