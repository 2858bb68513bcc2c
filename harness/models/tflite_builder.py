"""Small .tflite models written from Python: a graph of tensors and builtin operators, serialized
with the flatbuffer builders of PyPI `tflite` (TFLite's schema). For tests of the importer and
the integer kernels on operators the MLPerf Tiny models do not have; no TensorFlow needed.

`int8_examples` makes one full-integer model per case (int8 in and out, per-tensor
quantization), each a single operator the way TFLite's converter writes it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

_TYPES = {"float32": 0, "int32": 2, "uint8": 3, "int64": 4, "int16": 7, "int8": 9}


@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    buffer: int
    scale: tuple[float, ...] = ()
    zero_point: tuple[int, ...] = ()
    variable: bool = False  # state an operator keeps across invokes (SVDF's activation state)


@dataclass
class _Op:
    code: str  # a tflite.BuiltinOperator name
    inputs: list[int]
    outputs: list[int]
    options: tuple[str, dict[str, Any]] | None = None  # (options table name, field -> value)


@dataclass
class TfliteGraph:
    """One subgraph under construction: tensors (constants carry their data), operators in
    execution order, the graph's inputs and outputs."""

    tensors: list[_Tensor] = field(default_factory=list)
    buffers: list[bytes] = field(default_factory=lambda: [b""])  # buffer 0: empty, by convention
    ops: list[_Op] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)

    def tensor(self, name: str, shape: tuple[int, ...], dtype: str, scale: float | None = None,
               zero_point: int = 0, data: np.ndarray | None = None, variable: bool = False) -> int:
        """A new tensor (a constant when `data` is given, quantized when `scale` is, a variable
        tensor the interpreter keeps between invokes when `variable`); its index."""
        buffer = 0
        if data is not None:
            self.buffers.append(np.ascontiguousarray(data, dtype=dtype).reshape(shape).tobytes())
            buffer = len(self.buffers) - 1
        quant = ((scale,), (zero_point,)) if scale is not None else ((), ())
        self.tensors.append(_Tensor(name, tuple(shape), dtype, buffer, *quant, variable=variable))
        return len(self.tensors) - 1

    def op(self, code: str, inputs: list[int], outputs: list[int],
           options: tuple[str, dict[str, Any]] | None = None) -> None:
        self.ops.append(_Op(code, inputs, outputs, options))

    def to_bytes(self) -> bytes:
        import importlib

        import flatbuffers

        def schema(name: str) -> Any:  # the module of one schema table (the package exports its class)
            return importlib.import_module(f"tflite.{name}")

        b = flatbuffers.Builder(1024)

        def ints(start: Callable[[Any, int], None], values: list[int], prepend: str = "PrependInt32") -> int:
            start(b, len(values))
            for v in reversed(values):
                getattr(b, prepend)(v)
            return b.EndVector()

        def tables(start: Callable[[Any, int], None], offsets: list[int]) -> int:
            start(b, len(offsets))
            for off in reversed(offsets):
                b.PrependUOffsetTRelative(off)
            return b.EndVector()

        buffers = []
        for data in self.buffers:
            vec = b.CreateByteVector(data) if data else None
            schema("Buffer").BufferStart(b)
            if vec is not None:
                schema("Buffer").BufferAddData(b, vec)
            buffers.append(schema("Buffer").BufferEnd(b))
        tensors = []
        for t in self.tensors:
            name = b.CreateString(t.name)
            shape = ints(schema("Tensor").TensorStartShapeVector, list(t.shape))
            quant = None
            if t.scale:
                scale = ints(schema("QuantizationParameters").QuantizationParametersStartScaleVector,
                             list(t.scale), "PrependFloat32")
                zero = ints(schema("QuantizationParameters").QuantizationParametersStartZeroPointVector,
                            list(t.zero_point), "PrependInt64")
                schema("QuantizationParameters").QuantizationParametersStart(b)
                schema("QuantizationParameters").QuantizationParametersAddScale(b, scale)
                schema("QuantizationParameters").QuantizationParametersAddZeroPoint(b, zero)
                quant = schema("QuantizationParameters").QuantizationParametersEnd(b)
            schema("Tensor").TensorStart(b)
            schema("Tensor").TensorAddShape(b, shape)
            schema("Tensor").TensorAddType(b, _TYPES[t.dtype])
            schema("Tensor").TensorAddBuffer(b, t.buffer)
            schema("Tensor").TensorAddName(b, name)
            if quant is not None:
                schema("Tensor").TensorAddQuantization(b, quant)
            if t.variable:
                schema("Tensor").TensorAddIsVariable(b, True)
            tensors.append(schema("Tensor").TensorEnd(b))
        codes = list(dict.fromkeys(op.code for op in self.ops))
        ops = []
        for op in self.ops:
            ins = ints(schema("Operator").OperatorStartInputsVector, op.inputs)
            outs = ints(schema("Operator").OperatorStartOutputsVector, op.outputs)
            opts = None
            if op.options is not None:
                kind, values = op.options
                module = schema(kind)
                getattr(module, f"{kind}Start")(b)
                for key, value in values.items():
                    getattr(module, f"{kind}Add{key}")(b, value)
                opts = getattr(module, f"{kind}End")(b)
            schema("Operator").OperatorStart(b)
            schema("Operator").OperatorAddOpcodeIndex(b, codes.index(op.code))
            schema("Operator").OperatorAddInputs(b, ins)
            schema("Operator").OperatorAddOutputs(b, outs)
            if opts is not None:
                schema("Operator").OperatorAddBuiltinOptionsType(b, getattr(schema("BuiltinOptions").BuiltinOptions, op.options[0]))
                schema("Operator").OperatorAddBuiltinOptions(b, opts)
            ops.append(schema("Operator").OperatorEnd(b))
        op_codes = []
        for code in codes:
            value = getattr(schema("BuiltinOperator").BuiltinOperator, code)
            schema("OperatorCode").OperatorCodeStart(b)
            schema("OperatorCode").OperatorCodeAddDeprecatedBuiltinCode(b, min(value, 127))
            schema("OperatorCode").OperatorCodeAddBuiltinCode(b, value)
            schema("OperatorCode").OperatorCodeAddVersion(b, 1)
            op_codes.append(schema("OperatorCode").OperatorCodeEnd(b))
        tensor_vec = tables(schema("SubGraph").SubGraphStartTensorsVector, tensors)
        in_vec = ints(schema("SubGraph").SubGraphStartInputsVector, self.inputs)
        out_vec = ints(schema("SubGraph").SubGraphStartOutputsVector, self.outputs)
        op_vec = tables(schema("SubGraph").SubGraphStartOperatorsVector, ops)
        graph_name = b.CreateString("main")
        schema("SubGraph").SubGraphStart(b)
        schema("SubGraph").SubGraphAddTensors(b, tensor_vec)
        schema("SubGraph").SubGraphAddInputs(b, in_vec)
        schema("SubGraph").SubGraphAddOutputs(b, out_vec)
        schema("SubGraph").SubGraphAddOperators(b, op_vec)
        schema("SubGraph").SubGraphAddName(b, graph_name)
        subgraph = schema("SubGraph").SubGraphEnd(b)
        codes_vec = tables(schema("Model").ModelStartOperatorCodesVector, op_codes)
        graphs_vec = tables(schema("Model").ModelStartSubgraphsVector, [subgraph])
        buffers_vec = tables(schema("Model").ModelStartBuffersVector, buffers)
        description = b.CreateString("minrt test model")
        schema("Model").ModelStart(b)
        schema("Model").ModelAddVersion(b, 3)
        schema("Model").ModelAddOperatorCodes(b, codes_vec)
        schema("Model").ModelAddSubgraphs(b, graphs_vec)
        schema("Model").ModelAddDescription(b, description)
        schema("Model").ModelAddBuffers(b, buffers_vec)
        b.Finish(schema("Model").ModelEnd(b), file_identifier=b"TFL3")
        return bytes(b.Output())


# ---------------------------------------------------------------------------------------------
# One-operator int8 models


def _fc_on_4d(rng: np.random.Generator) -> TfliteGraph:
    """FULLY_CONNECTED on a 4-D input (as micro_speech has it): TFLite flattens the input to
    [-1, K] first."""
    g = TfliteGraph()
    x = g.tensor("input", (1, 2, 3, 4), "int8", 0.05, -3)
    w = g.tensor("weights", (5, 24), "int8", 0.02, 0, rng.integers(-127, 128, (5, 24)))
    bias = g.tensor("bias", (5,), "int32", 0.05 * 0.02, 0, rng.integers(-2000, 2000, 5))
    y = g.tensor("output", (1, 5), "int8", 0.1, 4)
    g.op("FULLY_CONNECTED", [x, w, bias], [y], ("FullyConnectedOptions", {"FusedActivationFunction": 0}))
    g.inputs, g.outputs = [x], [y]
    return g


def _pad(rng: np.random.Generator) -> TfliteGraph:
    """PAD of an int8 tensor: the padding holds the zero point."""
    g = TfliteGraph()
    x = g.tensor("input", (1, 3, 4, 2), "int8", 0.05, 7)
    pads = g.tensor("paddings", (4, 2), "int32", data=np.array([[0, 0], [1, 2], [2, 0], [0, 1]]))
    y = g.tensor("output", (1, 6, 6, 3), "int8", 0.05, 7)
    g.op("PAD", [x, pads], [y], ("PadOptions", {}))
    g.inputs, g.outputs = [x], [y]
    return g


def _transpose(rng: np.random.Generator) -> TfliteGraph:
    g = TfliteGraph()
    x = g.tensor("input", (1, 2, 3, 4), "int8", 0.05, -1)
    perm = g.tensor("perm", (4,), "int32", data=np.array([0, 3, 1, 2]))
    y = g.tensor("output", (1, 4, 2, 3), "int8", 0.05, -1)
    g.op("TRANSPOSE", [x, perm], [y], ("TransposeOptions", {}))
    g.inputs, g.outputs = [x], [y]
    return g


def _concat(rng: np.random.Generator) -> TfliteGraph:
    """CONCATENATION of three int8 tensors on the last axis, all at the output's quantization
    (TFLM and LiteRT refuse int8 inputs whose scale differs from the output's)."""
    g = TfliteGraph()
    ins = [g.tensor(f"input{k}", (1, 4, depth), "int8", 0.08, 2) for k, depth in enumerate((3, 2, 4))]
    y = g.tensor("output", (1, 4, 9), "int8", 0.08, 2)
    g.op("CONCATENATION", ins, [y], ("ConcatenationOptions", {"Axis": 2, "FusedActivationFunction": 0}))
    g.inputs, g.outputs = ins, [y]
    return g


def _logistic(rng: np.random.Generator) -> TfliteGraph:
    return logistic_model(0.0625, 5)


def logistic_model(input_scale: float, input_zero: int) -> TfliteGraph:
    """LOGISTIC of 256 int8 values, int8 out at TFLite's fixed quantization (scale 1/256, zero
    point -128)."""
    g = TfliteGraph()
    x = g.tensor("input", (1, 256), "int8", input_scale, input_zero)
    y = g.tensor("output", (1, 256), "int8", 1.0 / 256, -128)
    g.op("LOGISTIC", [x], [y])
    g.inputs, g.outputs = [x], [y]
    return g


def svdf_model(rng: np.random.Generator, state_dtype: str = "int16", *, batch: int = 2, features: int = 6,
               units: int = 4, rank: int = 2, memory: int = 5, activation: int = 0) -> TfliteGraph:
    """SVDF (a rank-`rank` filter over the last `memory` steps of each of `units` outputs), as
    TFLite's converter writes it for keyword spotting: int8 input and feature weights, the
    time weights and the activation state (a variable tensor) int16, or int8 as in TFLM's
    8-bit variant, or all float32 (`state_dtype` "float32")."""
    g = TfliteGraph()
    filters = units * rank
    if state_dtype == "float32":
        x = g.tensor("input", (batch, features), "float32")
        wf = g.tensor("weights_feature", (filters, features), "float32", data=rng.normal(0, 0.5, (filters, features)))
        wt = g.tensor("weights_time", (filters, memory), "float32", data=rng.normal(0, 0.5, (filters, memory)))
        bias = g.tensor("bias", (units,), "float32", data=rng.normal(0, 0.5, units))
        state = g.tensor("activation_state", (batch, filters * memory), "float32", variable=True)
        y = g.tensor("output", (batch, units), "float32")
    else:
        # scales as the converter picks them: the state's from the range of x @ wf (int8 state
        # narrower, so some values saturate), the time weights' from their range (+-1), the
        # bias's = state scale x time weights scale
        s_state, z_state = (0.004, 0) if state_dtype == "int16" else (0.12, 9)
        t_max = 2 ** 15 - 1 if state_dtype == "int16" else 127
        s_time = 1.0 / t_max
        x = g.tensor("input", (batch, features), "int8", 0.05, -3)
        wf = g.tensor("weights_feature", (filters, features), "int8", 0.02, 0,
                      rng.integers(-127, 128, (filters, features)))
        wt = g.tensor("weights_time", (filters, memory), state_dtype, s_time, 0,
                      rng.integers(-t_max, t_max + 1, (filters, memory)))
        s_bias = float(np.float32(s_state) * np.float32(s_time))
        bias = g.tensor("bias", (units,), "int32", s_bias, 0, rng.integers(-int(2 / s_bias), int(2 / s_bias), units))
        state = g.tensor("activation_state", (batch, filters * memory), state_dtype, s_state, z_state, variable=True)
        y = g.tensor("output", (batch, units), "int8", 0.15, 3)
    g.op("SVDF", [x, wf, wt, bias, state], [y],
         ("SVDFOptions", {"Rank": rank, "FusedActivationFunction": activation}))
    g.inputs, g.outputs = [x], [y]
    return g


def requantize_model(in_dtype: str, out_dtype: str) -> TfliteGraph:
    """QUANTIZE from one integer type to another (TFLM's keyword model takes int16 in and ends
    int16 -> int32); the scales' ratio is not a power of two, so values round."""
    scales = {"int8": (0.05, -3), "int16": (0.0007, 0), "int32": (0.00003, 0)}
    g = TfliteGraph()
    x = g.tensor("input", (1, 64), in_dtype, *scales[in_dtype])
    y = g.tensor("output", (1, 64), out_dtype, scales[out_dtype][0] * 1.37, scales[out_dtype][1])
    g.op("QUANTIZE", [x], [y])
    g.inputs, g.outputs = [x], [y]
    return g


def softmax16_model() -> TfliteGraph:
    """SOFTMAX of int8 logits to int16 probabilities (scale 1/65536, zero point -32768), as
    TFLM's keyword model ends."""
    g = TfliteGraph()
    x = g.tensor("input", (3, 12), "int8", 0.07, -2)
    y = g.tensor("output", (3, 12), "int16", 1.0 / 65536, -32768)
    g.op("SOFTMAX", [x], [y], ("SoftmaxOptions", {"Beta": 1.0}))
    g.inputs, g.outputs = [x], [y]
    return g


def svdf_keyword_model(rng: np.random.Generator) -> TfliteGraph:
    """A small model shaped like TFLM's keyword benchmark (keyword_scrambled.tflite): int16
    features in, QUANTIZE to int8, SVDF (int16 state), FULLY_CONNECTED, SOFTMAX to int16,
    QUANTIZE to int32 out."""
    g = TfliteGraph()
    features = g.tensor("features", (1, 24), "int16", 0.0005, 0)
    x = g.tensor("features_int8", (1, 24), "int8", 0.1, -5)
    g.op("QUANTIZE", [features], [x])
    wf = g.tensor("weights_feature", (8, 24), "int8", 0.01, 0, rng.integers(-127, 128, (8, 24)))
    wt = g.tensor("weights_time", (8, 4), "int16", 1 / 32767, 0, rng.integers(-32767, 32768, (8, 4)))
    s_bias = float(np.float32(0.004) * np.float32(1 / 32767))
    bias = g.tensor("svdf_bias", (8,), "int32", s_bias, 0, rng.integers(-int(2 / s_bias), int(2 / s_bias), 8))
    state = g.tensor("activation_state", (1, 32), "int16", 0.004, 0, variable=True)
    h = g.tensor("svdf_out", (1, 8), "int8", 0.2, -20)
    g.op("SVDF", [x, wf, wt, bias, state], [h], ("SVDFOptions", {"Rank": 1, "FusedActivationFunction": 1}))
    w = g.tensor("fc_weights", (3, 8), "int8", 0.01, 0, rng.integers(-127, 128, (3, 8)))
    b = g.tensor("fc_bias", (3,), "int32", 0.2 * 0.01, 0, rng.integers(-500, 500, 3))
    logits = g.tensor("logits", (1, 3), "int8", 0.3, 4)
    g.op("FULLY_CONNECTED", [h, w, b], [logits], ("FullyConnectedOptions", {"FusedActivationFunction": 0}))
    probs = g.tensor("probs", (1, 3), "int16", 1.0 / 65536, -32768)
    g.op("SOFTMAX", [logits], [probs], ("SoftmaxOptions", {"Beta": 1.0}))
    y = g.tensor("scores", (1, 3), "int32", 2.0 / 65535, 0)
    g.op("QUANTIZE", [probs], [y])
    g.inputs, g.outputs = [features], [y]
    return g


INT8_EXAMPLES: dict[str, Callable[[np.random.Generator], TfliteGraph]] = {
    "tfl-fc4d": _fc_on_4d, "tfl-pad": _pad, "tfl-transpose": _transpose, "tfl-concat": _concat,
    "tfl-logistic": _logistic,
    # RELU: LiteRT runs an int8 SVDF with no other activation (TFLM ignores it: int8 range)
    "tfl-svdf": lambda rng: svdf_model(rng, activation=1),
}


def int8_examples(out_dir: Path, names: list[str] | None = None) -> dict[str, Path]:
    """Write the named one-operator int8 models (all by default) as `<name>.tflite`; name -> path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in names or list(INT8_EXAMPLES):
        path = out_dir / f"{name}.tflite"
        path.write_bytes(INT8_EXAMPLES[name](np.random.default_rng(19)).to_bytes())
        paths[name] = path
    return paths
