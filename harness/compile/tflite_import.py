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


def _tensor_info(subgraph: Any, index: int, dtypes: dict[int, str], where: str) -> TensorInfo:
    tensor = subgraph.Tensors(index)
    name = tensor.Name().decode("utf-8", "replace")
    shape = tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
    if tensor.ShapeSignatureLength() and any(int(d) < 0 for d in tensor.ShapeSignatureAsNumpy()[1:]):
        raise CompileError(f"{where}: tensor '{name}' has a non-static shape "
                           f"{list(tensor.ShapeSignatureAsNumpy())}; minrt needs every shape fixed")
    dtype = dtypes.get(tensor.Type(), f"tflite type {tensor.Type()}")
    quant = tensor.Quantization()
    scale: tuple[float, ...] = ()
    zero_point: tuple[int, ...] = ()
    axis = None
    if quant is not None and quant.ScaleLength():
        scale = tuple(float(s) for s in quant.ScaleAsNumpy())
        zero_point = tuple(int(z) for z in quant.ZeroPointAsNumpy()) if quant.ZeroPointLength() else (0,) * len(scale)
        axis = int(quant.QuantizedDimension()) if len(scale) > 1 else None
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
    TRANSPOSE, and FULLY_CONNECTED on an input of any rank (TFLite flattens it to [-1, K]
    unless keep_num_dims; the frontend multiplies it as it is)."""
    from tflite.FullyConnectedOptions import FullyConnectedOptions
    from tvm import relax
    from tvm.relax.frontend.tflite.tflite_frontend import OperatorConverter

    class Converter(OperatorConverter):
        _SUPPORTED_QUANTIZED_OPS = OperatorConverter._SUPPORTED_QUANTIZED_OPS | DATA_MOVEMENT_OPS

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._flattened: tuple[int, Any] | None = None  # (tensor index, its [-1, K] form)

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

        def get_tensor_expr(self, tensor: Any, is_sparse: bool = False) -> Any:
            if self._flattened is not None and tensor.tensor_idx == self._flattened[0]:
                return self._flattened[1]
            return super().get_tensor_expr(tensor, is_sparse)

    return Converter


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
