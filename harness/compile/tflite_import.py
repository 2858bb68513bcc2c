""".tflite -> Relax: read and check a TFLite flatbuffer, describe its inputs and outputs (with
their quantization), and import it with TVM's TFLite frontend.

Quantized TFLite operators import as dequantize -> float op -> quantize; harness.compile.int8
turns the fully-quantized ones back into integer kernels before legalization."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import CompileError

log = logging.getLogger(__name__)

#: The flatbuffer file identifier of a TFLite model (bytes 4..8).
TFLITE_IDENTIFIER = b"TFL3"


@dataclass(frozen=True)
class TensorInfo:
    """A model input or output: name, static shape, dtype and, for a quantized tensor, its
    scale(s) and zero point(s) (one each per tensor, or one per channel along `axis`)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: tuple[float, ...] = ()
    zero_point: tuple[int, ...] = ()
    axis: int | None = None
    #: a float tensor that comes straight out of a dequantization of `quantized_dtype` values
    quantized_dtype: str | None = None

    @property
    def quantized(self) -> bool:
        return bool(self.scale)

    def quantization(self) -> dict[str, Any] | None:
        """The metadata.json form, or None for a tensor without quantization."""
        if not self.scale:
            return None
        q: dict[str, Any] = {"scale": list(self.scale), "zero_point": list(self.zero_point)}
        if self.axis is not None:
            q["axis"] = self.axis
        if self.quantized_dtype is not None:
            q["quantized_dtype"] = self.quantized_dtype
        return q


@dataclass
class TfliteModel:
    model: Any  # tflite.Model
    inputs: list[TensorInfo] = field(default_factory=list)
    outputs: list[TensorInfo] = field(default_factory=list)
    op_types: list[str] = field(default_factory=list)  # builtin operator names, in graph order


def _dtype_names() -> dict[int, str]:
    import tflite

    names = {}
    for attr, value in vars(tflite.TensorType).items():
        if not attr.startswith("_") and isinstance(value, int):
            names[value] = attr.lower()
    return {k: {"float32": "float32", "float16": "float16", "float64": "float64"}.get(v, v) for k, v in names.items()}


def _op_names() -> dict[int, str]:
    import tflite

    return {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_") and isinstance(v, int)}


def _quantization(tensor: Any) -> tuple[tuple[float, ...], tuple[int, ...], int | None]:
    """A flatbuffer tensor's scales, zero points (0 each when absent) and quantized axis (None
    when per-tensor); () () None when it is not quantized."""
    quant = tensor.Quantization()
    if quant is None or not quant.ScaleLength():
        return (), (), None
    scale = tuple(float(s) for s in quant.ScaleAsNumpy())
    zero_point = tuple(int(z) for z in quant.ZeroPointAsNumpy()) if quant.ZeroPointLength() else (0,) * len(scale)
    return scale, zero_point, int(quant.QuantizedDimension()) if len(scale) > 1 else None


def _tensor_info(subgraph: Any, index: int, dtypes: dict[int, str], where: str) -> TensorInfo:
    tensor = subgraph.Tensors(index)
    # an unnamed tensor gets the name TVM's frontend gives it
    name = tensor.Name().decode("utf-8", "replace") if tensor.Name() is not None else f"tvmgen_tensor_{index}"
    shape = tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
    if tensor.ShapeSignatureLength() and any(int(d) < 0 for d in tensor.ShapeSignatureAsNumpy()[1:]):
        raise CompileError(f"{where}: tensor '{name}' has a non-static shape "
                           f"{list(tensor.ShapeSignatureAsNumpy())}; minrt needs every shape fixed")
    dtype = dtypes.get(tensor.Type(), f"tflite type {tensor.Type()}")
    scale, zero_point, axis = _quantization(tensor)
    return TensorInfo(name=name, shape=shape, dtype=dtype, scale=scale, zero_point=zero_point, axis=axis)


def load_tflite(path: Path, data: bytes) -> TfliteModel:
    """Check a .tflite file's bytes (harness.compile.source.load_model reads them); errors name
    the file and what is wrong with it."""
    import tflite

    if len(data) < 8 or data[4:8] != TFLITE_IDENTIFIER:
        raise CompileError(f"{path}: not a TFLite model (no '{TFLITE_IDENTIFIER.decode()}' "
                           f"flatbuffer identifier at bytes 4..8 of {len(data)} bytes)")
    try:
        model = tflite.Model.GetRootAsModel(data, 0)
        if model.SubgraphsLength() < 1:
            raise CompileError(f"{path}: TFLite model has no subgraph")
        subgraph = model.Subgraphs(0)
        dtypes = _dtype_names()
        ops = _op_names()
        where = str(path)
        inputs = [_tensor_info(subgraph, int(i), dtypes, where) for i in subgraph.InputsAsNumpy()]
        outputs = [_tensor_info(subgraph, int(i), dtypes, where) for i in subgraph.OutputsAsNumpy()]
        op_types = []
        for k in range(subgraph.OperatorsLength()):
            code = model.OperatorCodes(subgraph.Operators(k).OpcodeIndex())
            builtin = max(int(code.BuiltinCode()), int(code.DeprecatedBuiltinCode()))
            name = ops.get(builtin, f"builtin {builtin}")
            if name == "CUSTOM":
                name = f"CUSTOM({code.CustomCode().decode('utf-8', 'replace')})"
            op_types.append(name)
    except CompileError:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt flatbuffer fails anywhere in the reader
        raise CompileError(f"{path}: not a readable TFLite model ({type(exc).__name__}: {exc})") from None
    if not op_types:
        raise CompileError(f"{path}: TFLite model has no operators")
    for info in inputs:
        if not info.shape or any(d <= 0 for d in info.shape):
            raise CompileError(f"{path}: input '{info.name}' has no static shape ({list(info.shape)})")
    return TfliteModel(model=model, inputs=inputs, outputs=outputs, op_types=op_types)


def litert_refusal(model: TfliteModel) -> str | None:
    """Why LiteRT must not run this model, or None. LiteRT's int8 SVDF takes the activation
    state as int16: given TFLM's 8-bit form (int8 state) it reads and writes past the state's
    buffer and corrupts the heap of the process that runs it (measured with ai-edge-litert on
    TFLM's keyword_scrambled_8bit.tflite: 'malloc_consolidate(): invalid chunk size')."""
    import tflite

    subgraph = model.model.Subgraphs(0)
    for k, name in enumerate(model.op_types):
        if name != "SVDF":
            continue
        ins = subgraph.Operators(k).InputsAsNumpy()
        if len(ins) == 5 and subgraph.Tensors(int(ins[0])).Type() == tflite.TensorType.INT8 \
                and subgraph.Tensors(int(ins[4])).Type() != tflite.TensorType.INT16:
            return f"operator {k} is an int8 SVDF whose activation state is not int16 (LiteRT would overrun it)"
    return None


def _one_line(message: str) -> str:
    """The frontend's refusal (several sentences over lines) as one line."""
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("Traceback", "File ", "^"))]
    text = " ".join(lines[-3:]) if lines else message
    return re.sub(r"\s+", " ", text)


#: Quantized operators that only move int8 values (the frontend refuses them quantized, but
#: as written they are exact: PAD fills with the zero point, input and output share it).
DATA_MOVEMENT_OPS = frozenset({"PAD", "PADV2", "TRANSPOSE"})


def operator_converter() -> type:
    """TVM's TFLite OperatorConverter, extended where real models need it: quantized PAD and
    TRANSPOSE, FULLY_CONNECTED on an input of any rank (TFLite flattens it to [-1, K]
    unless keep_num_dims; the frontend multiplies it as it is), and SVDF (svdf_from_reset)."""
    from tflite.FullyConnectedOptions import FullyConnectedOptions
    from tvm import relax
    from tvm.relax.frontend.tflite.tflite_frontend import OperatorConverter

    class Converter(OperatorConverter):
        _SUPPORTED_QUANTIZED_OPS = OperatorConverter._SUPPORTED_QUANTIZED_OPS | DATA_MOVEMENT_OPS | {"SVDF"}

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._flattened: tuple[int, Any] | None = None  # (tensor index, its [-1, K] form)
            self.convert_map["SVDF"] = lambda op: svdf_from_reset(self, op)
            self.convert_map["QUANTIZE"] = self.convert_quantize_integers

        def convert_fully_connected(self, op: Any) -> Any:
            data, weight = self.get_input_tensors(op)[:2]
            shape = [int(d) for d in self.get_tensor_shape(data)]
            depth = int(self.get_tensor_shape(weight)[1])
            options = FullyConnectedOptions()
            table = op.BuiltinOptions()
            options.Init(table.Bytes, table.Pos)
            if len(shape) != 2 and not options.KeepNumDims():
                if int(np.prod(shape)) % depth:
                    raise CompileError(f"FULLY_CONNECTED: input shape {shape} does not flatten to rows of {depth}")
                flat = relax.op.reshape(self.get_tensor_expr(data), [int(np.prod(shape)) // depth, depth])
                self._flattened = (data.tensor_idx, flat)
            try:
                return super().convert_fully_connected(op)
            finally:
                self._flattened = None

        def convert_quantize_integers(self, op: Any) -> Any:
            requantized = integer_requantize(self, op)
            return self.convert_quantize(op) if requantized is None else requantized

        def get_tensor_expr(self, tensor: Any, is_sparse: bool = False) -> Any:
            if self._flattened is not None and tensor.tensor_idx == self._flattened[0]:
                return self._flattened[1]
            return super().get_tensor_expr(tensor, is_sparse)

    return Converter


def _quant(tensor: Any) -> tuple[float, int]:
    """A tensor's (scale, zero point) as TFLM reads them (the first of each), (0, 0) if none."""
    scale, zero_point, _ = _quantization(tensor.tensor)
    return (scale[0], zero_point[0]) if scale else (0.0, 0)


def svdf_from_reset(conv: Any, op: Any) -> Any:
    """SVDF as one invoke from the reset activation state (see harness.compile.int8's SVDF
    section for why and how): int8 through TFLM's integer kernel (int8.svdf_te), float32 as
    Relax ops. minrt keeps no state between runs: every inference is TFLM's first after reset."""
    from tflite.SVDFOptions import SVDFOptions
    from tvm import relax

    from harness.compile import int8

    ins = conv.get_input_tensors(op)
    (out,) = conv.get_output_tensors(op)
    if len(ins) != 5:
        raise CompileError(f"SVDF: {len(ins)} inputs, TFLite's SVDF has 5 (input, weights_feature, "
                           "weights_time, bias, activation_state)")
    x, wf, wt, bias, state = ins
    options = SVDFOptions()
    table = op.BuiltinOptions()
    options.Init(table.Bytes, table.Pos)
    rank = int(options.Rank())
    x_shape, wf_shape, wt_shape = (tuple(int(d) for d in conv.get_tensor_shape(t)) for t in (x, wf, wt))
    if len(x_shape) != 2 or len(wf_shape) != 2 or len(wt_shape) != 2 or wf_shape[1] != x_shape[1] \
            or wt_shape[0] != wf_shape[0] or rank < 1 or wf_shape[0] % rank:
        raise CompileError(f"SVDF: input {list(x_shape)}, weights_feature {list(wf_shape)}, weights_time "
                           f"{list(wt_shape)} and rank {rank} do not fit together")
    if state.tensor.Buffer() and conv.model.Buffers(state.tensor.Buffer()).DataLength():
        raise CompileError("SVDF: the activation state has initial data; minrt starts SVDF from the reset state only")
    units = wf_shape[0] // rank
    types = [conv.get_tensor_type_str(t.tensor.Type()) for t in (x, wf, wt, state, out)]
    has_bias = bias is not None and bias.tensor_idx >= 0
    log.info("SVDF (%d units, rank %d, memory %d, %s): computed from the reset state, as TFLM's first "
             "invoke after reset; no state is kept between runs", units, rank, wt_shape[1], types[0])
    if types == ["float32"] * 5:
        feature = relax.op.matmul(conv.get_tensor_expr(x), relax.const(conv.get_tensor_value(wf).T.copy(), "float32"))
        newest = relax.const(np.ascontiguousarray(conv.get_tensor_value(wt)[:, -1]), "float32")
        y = relax.op.sum(relax.op.reshape(relax.op.multiply(feature, newest), [x_shape[0], units, rank]), axis=[2])
        if has_bias:
            y = relax.op.add(y, relax.const(conv.get_tensor_value(bias).reshape(units), "float32"))
        return conv.convert_fused_activation_function(y, options.FusedActivationFunction())
    if types[:2] != ["int8", "int8"] or types[2] != types[3] or types[2] not in ("int16", "int8") or types[4] != "int8":
        raise CompileError(f"SVDF with input, weights_feature, weights_time, state, output of types {', '.join(types)} "
                           "(TFLM runs float32 throughout, or int8 with int16 or int8 time weights and state)")
    (s_in, z_in), (s_wf, _), (s_wt, _), (s_state, z_state), (s_out, z_out) = (_quant(t) for t in (x, wf, wt, state, out))
    bias_value = conv.get_tensor_value(bias).astype(np.int32) if has_bias else None
    wf_value = np.ascontiguousarray(conv.get_tensor_value(wf).astype(np.int8))
    tables = int8.svdf_reset_tables(wf_value, conv.get_tensor_value(wt),
                                    bias_value, rank=rank, zero_in=z_in, zero_state=z_state, zero_out=z_out,
                                    state_dtype=types[2], scales=(s_in, s_wf, s_state, s_wt, s_out))
    kernels = int8.Int8Rewrite(int8.TFLM, conv.bb)
    args = [conv.get_tensor_expr(x), relax.const(wf_value, "int8"), relax.const(tables.feature_table, "int32"),
            relax.const(tables.time_newest, types[2]), relax.const(tables.out_table, "int32")]
    specs = [(x_shape, "int8"), (wf_shape, "int8"), (tables.feature_table.shape, "int32"),
             (tables.time_newest.shape, types[2]), (tables.out_table.shape, "int32")]
    return kernels.call("svdf", lambda xx, ww, ft, tn, ot: int8.svdf_te(xx, ww, ft, tn, ot, tables.spec), args, specs)


def integer_requantize(conv: Any, op: Any) -> Any:
    """QUANTIZE from one integer type to another with int16 or int32 on a side, as TFLM's
    Requantize (int8.requantize_te); None for the others (the frontend's dequantize ->
    quantize, which the int8 rewrite matches where it can)."""
    from tvm import relax

    from harness.compile import int8

    (x,), (out,) = conv.get_input_tensors(op), conv.get_output_tensors(op)
    t_in, t_out = (conv.get_tensor_type_str(t.tensor.Type()) for t in (x, out))
    if t_in not in int8.INT_RANGES or t_out not in int8.INT_RANGES or not {t_in, t_out} & {"int16", "int32"}:
        return None
    (s_in, z_in), (s_out, z_out) = _quant(x), _quant(out)
    if not s_in or not s_out:
        raise CompileError(f"QUANTIZE {t_in} -> {t_out} without a scale on both sides")
    shape = tuple(int(d) for d in conv.get_tensor_shape(x))
    table = int8.requantize_table(s_in, s_out)
    return int8.Int8Rewrite(int8.TFLM, conv.bb).call(
        "requantize", lambda xx, tt: int8.requantize_te(xx, tt, z_in, z_out, t_out),
        [conv.get_tensor_expr(x), relax.const(table, "int32")], [(shape, t_in), ((2,), "int32")])


def import_tflite(model: TfliteModel, path: Path, op_converter: Any = None) -> Any:
    """TFLite -> Relax IRModule with weights as constants. `op_converter` (a subclass of the
    frontend's OperatorConverter; operator_converter() by default) says how operators import."""
    import tvm
    from tvm.relax.frontend.tflite import from_tflite

    kwargs = {"op_converter": op_converter or operator_converter()}
    shapes = {i.name: i.shape for i in model.inputs}
    dtypes = {i.name: i.dtype for i in model.inputs}
    try:
        return from_tflite(model.model, shape_dict=shapes, dtype_dict=dtypes, **kwargs)
    except CompileError as exc:
        raise CompileError(f"{path}: {exc}") from None
    except tvm.error.OpNotImplemented as exc:
        text = str(exc)
        named = sorted({op for op in model.op_types if re.search(rf"'{re.escape(op)}'", text)})
        what = ", ".join(named) if named else _one_line(text)
        raise CompileError(f"{path}: TVM's TFLite frontend cannot import operator(s) {what}"
                           + (f" ({_one_line(text)})" if named else "")) from None
    except Exception as exc:  # noqa: BLE001 - the frontend raises many kinds; keep the first line
        from harness.compile.onnx_import import reraise_interrupt

        reraise_interrupt(exc)
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CompileError(f"{path}: TVM's TFLite frontend failed: {type(exc).__name__}: {first}") from None


def dtype_of(info: TensorInfo) -> np.dtype:
    return np.dtype(info.dtype)
