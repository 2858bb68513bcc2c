"""A model file as the compiler sees it, whatever its format (.onnx or .tflite): its bytes,
its inputs and outputs (names, shapes, dtypes, quantization), its operator types, and its
import into Relax. compile, the Relax VM reference and tune all start here."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from harness.compile.tflite_import import TensorInfo
from harness.errors import CompileError

log = logging.getLogger(__name__)

#: Model file suffixes the harness compiles.
MODEL_SUFFIXES = (".onnx", ".tflite")


@dataclass
class ModelSource:
    path: Path
    kind: str  # "onnx" | "tflite"
    data: bytes
    model: Any  # onnx.ModelProto | harness.compile.tflite_import.TfliteModel
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    op_types: list[str]
    notes: dict[str, Any] = field(default_factory=dict)  # what the import did (folded batch-norms...)

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.inputs]

    @property
    def quantized(self) -> bool:
        """Any input or output carries quantization (a full-integer or QDQ model)."""
        return any(t.quantized for t in self.inputs + self.outputs)


def model_kind(path: Path) -> str:
    """"tflite" for a .tflite file, else "onnx" (the format the harness always took)."""
    return "tflite" if Path(path).suffix.lower() == ".tflite" else "onnx"


def _onnx_tensor_infos(model: Any) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """ONNX inputs and outputs; an output made by a DequantizeLinear with constant scale and
    zero point records them (its values are compared in quantized units)."""
    from onnx import helper, numpy_helper

    from harness.compile.onnx_import import graph_inputs

    def info(value: Any) -> TensorInfo:
        t = value.type.tensor_type
        shape = tuple(int(d.dim_value) for d in t.shape.dim)
        dtype = str(helper.tensor_dtype_to_np_dtype(t.elem_type)) if t.elem_type else "float32"
        return TensorInfo(name=value.name, shape=shape, dtype=dtype)

    consts = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:  # Constant nodes hold scales too
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = node.attribute[0].t
    producer = {out: node for node in model.graph.node for out in node.output}
    outputs = []
    for value in model.graph.output:
        out = info(value)
        node = producer.get(value.name)
        if node is not None and node.op_type == "DequantizeLinear" and node.input[1] in consts:
            scale = numpy_helper.to_array(consts[node.input[1]]).reshape(-1)
            zp = (numpy_helper.to_array(consts[node.input[2]]) if len(node.input) > 2 and node.input[2] in consts
                  else None)
            qdtype = str(zp.dtype) if zp is not None else "uint8"
            zps = zp.reshape(-1) if zp is not None else [0] * len(scale)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1) if len(scale) > 1 else None
            out = TensorInfo(name=out.name, shape=out.shape, dtype=out.dtype,
                             scale=tuple(float(s) for s in scale), zero_point=tuple(int(z) for z in zps),
                             axis=axis, quantized_dtype=qdtype)
        outputs.append(out)
    return [info(v) for v in graph_inputs(model)], outputs


def load_model(path: Path | str, input_shapes: Mapping[str, Sequence[int]] | None = None) -> ModelSource:
    """Read and check a model file (.onnx or .tflite). `input_shapes` (input name -> shape,
    `--input-shape`) fixes an ONNX model's dynamic input dimensions; a .tflite model's inputs
    are static, so there it may only repeat an input's own shape."""
    path = Path(path)
    shapes = dict(input_shapes or {})
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CompileError(f"{path}: cannot read model: {exc.strerror}") from None
    if model_kind(path) == "tflite":
        from harness.compile.tflite_import import load_tflite

        tfl = load_tflite(path, data)
        _check_tflite_shapes(tfl.inputs, shapes, path)
        return ModelSource(path=path, kind="tflite", data=data, model=tfl, inputs=tfl.inputs,
                           outputs=tfl.outputs, op_types=tfl.op_types)
    from harness.compile.onnx_import import apply_input_shapes, load_onnx

    model = load_onnx(path, data)
    model = apply_input_shapes(model, shapes, path)
    inputs, outputs = _onnx_tensor_infos(model)
    return ModelSource(path=path, kind="onnx", data=data, model=model, inputs=inputs, outputs=outputs,
                       op_types=[n.op_type for n in model.graph.node])


def _check_tflite_shapes(inputs: Sequence[TensorInfo], shapes: Mapping[str, Sequence[int]], path: Path) -> None:
    """A .tflite model's input shapes are fixed in the file: `--input-shape` may name them
    (the Relax VM reference passes its inputs' shapes) but not change them."""
    by_name = {i.name: i for i in inputs}
    for name, shape in shapes.items():
        if name not in by_name:
            raise CompileError(f"{path}: --input-shape names '{name}', not an input of the model "
                               f"(inputs: {', '.join(f'{i.name} {list(i.shape)}' for i in inputs)})")
        if tuple(int(d) for d in shape) != tuple(by_name[name].shape):
            raise CompileError(f"{path}: --input-shape {name}={','.join(map(str, shape))}: a .tflite model's "
                               f"input shapes are static; '{name}' is {list(by_name[name].shape)}")


def import_model(source: ModelSource) -> Any:
    """The model as a Relax IRModule (weights as constants), before legalization. What the
    import did is kept in `source.notes`."""
    if source.kind == "tflite":
        from harness.compile.tflite_import import import_tflite

        return import_tflite(source.model, source.path)
    from harness.compile.onnx_import import import_onnx

    mod, folded, affine = import_onnx(source.model, source.path)
    source.notes["folded_batchnorms"] = folded
    source.notes["affine_batchnorms"] = affine
    return mod


def lowered_module(source: ModelSource, tvm_target: Any) -> Any:
    """Import and lower (legalize + fuse): `main` becomes a linear sequence of call_tir."""
    from harness.compile.onnx_import import lower_relax, reraise_interrupt

    mod = import_model(source)
    log.info("%s: legalize and fuse", source.name)
    if source.quantized:
        mod = integer_kernels(mod, source)
    try:
        return lower_relax(mod, tvm_target)
    except CompileError:
        raise
    except Exception as exc:
        reraise_interrupt(exc)
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CompileError(f"{source.path}: TVM's Relax passes failed: {type(exc).__name__}: {first}") from None


def integer_kernels(mod: Any, source: ModelSource) -> Any:
    """A quantized model's dequantize -> op -> quantize chains as integer kernels
    (harness.compile.int8), with TFLM's arithmetic for .tflite and onnxruntime's for ONNX."""
    from harness.compile.int8 import ONNXRUNTIME, TFLM, float_ops_left, rewrite_int8

    mod, done = rewrite_int8(mod, TFLM if source.kind == "tflite" else ONNXRUNTIME)
    made = ", ".join(f"{n} {k}" for k, n in done.counts.items()) or "none"
    log.info("%s: integer kernels (%s arithmetic): %s", source.name, done.arithmetic, made)
    for op, why in done.skipped.items():
        log.info("%s: %s stays on the float path where it is %s", source.name, op, why)
    for op in float_ops_left(mod):
        log.info("%s: %s stays on the float path (no integer kernel for it)", source.name, op)
    source.notes["int8_kernels"] = dict(done.counts)
    return mod


def relax_module(model_path: Path | str, tvm_target_dict: dict[str, Any],
                 input_shapes: Mapping[str, Sequence[int]] | None = None) -> Any:
    """The lowered Relax module for a model file (shared with harness.check.relax_vm)."""
    import tvm

    return lowered_module(load_model(model_path, input_shapes), tvm.target.Target(dict(tvm_target_dict)))
