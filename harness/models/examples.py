"""Example models, written as ONNX files from onnx.helper with seeded weights.

Each model is small (tens of KB of float32 weights) and exercises one shape of graph that
minrt must handle: a plain MLP, a small CNN, a keyword-spotting style depthwise-separable
CNN, a residual add, a concat of branches, batch-norm at inference, and a graph with two
inputs and two outputs. Reshape and Flatten appear so that `__nop` aliasing is exercised.
The bytes written are the same on every run (same seed, same protobuf).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

log = logging.getLogger(__name__)

OPSET = 17
# IR version 8 is read by every onnx/onnxruntime release we care about.
IR_VERSION = 8


class _GraphBuilder:
    """Collects nodes and seeded float32 initializers for one model."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def weight(self, name: str, shape: tuple[int, ...], fan_in: int) -> str:
        # He-style scale keeps activations near unit size, so float32 error stays small.
        w = self.rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        return self.const(name, w.astype(np.float32))

    def bias(self, name: str, n: int) -> str:
        return self.const(name, (self.rng.standard_normal(n) * 0.1).astype(np.float32))

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def conv(self, x: str, name: str, cin: int, cout: int, k: tuple[int, int], *,
             group: int = 1, stride: int = 1, pad: tuple[int, int] | None = None,
             bias: bool = True) -> str:
        pad = pad if pad is not None else (k[0] // 2, k[1] // 2)
        w = self.weight(f"{name}.weight", (cout, cin // group, *k), fan_in=(cin // group) * k[0] * k[1])
        inputs = [x, w] + ([self.bias(f"{name}.bias", cout)] if bias else [])
        return self.node("Conv", inputs, name, kernel_shape=list(k), group=group,
                         strides=[stride, stride], pads=[pad[0], pad[1], pad[0], pad[1]])

    def batchnorm(self, x: str, name: str, c: int) -> str:
        scale = self.const(f"{name}.scale", (self.rng.random(c) + 0.5).astype(np.float32))
        shift = self.const(f"{name}.shift", (self.rng.standard_normal(c) * 0.1).astype(np.float32))
        mean = self.const(f"{name}.mean", (self.rng.standard_normal(c) * 0.1).astype(np.float32))
        var = self.const(f"{name}.var", (self.rng.random(c) + 0.5).astype(np.float32))
        return self.node("BatchNormalization", [x, scale, shift, mean, var], name, epsilon=1e-5)

    def dense(self, x: str, name: str, n_in: int, n_out: int) -> str:
        w = self.weight(f"{name}.weight", (n_in, n_out), fan_in=n_in)
        return self.node("Gemm", [x, w, self.bias(f"{name}.bias", n_out)], name)

    def model(self, name: str, inputs: dict[str, list[int]], outputs: dict[str, list[int]]) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            name,
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs.items()],
            initializer=self.initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="minrt-examples", ir_version=IR_VERSION)
        onnx.checker.check_model(model, full_check=True)
        return model


def mlp() -> onnx.ModelProto:
    """Reshape (an alias, no kernel) then two dense layers and a softmax."""
    g = _GraphBuilder(seed=1)
    shape = g.const("flat_shape", np.array([1, 64], dtype=np.int64))
    x = g.node("Reshape", ["x", shape], "flat")
    x = g.node("Relu", [g.dense(x, "fc1", 64, 32)], "relu1")
    x = g.node("Relu", [g.dense(x, "fc2", 32, 16)], "relu2")
    g.node("Softmax", [g.dense(x, "fc3", 16, 10)], "probs", axis=-1)
    return g.model("mlp", {"x": [1, 8, 8]}, {"probs": [1, 10]})


def cnn() -> onnx.ModelProto:
    """conv-relu-maxpool, conv-relu-avgpool, flatten, dense, softmax."""
    g = _GraphBuilder(seed=2)
    x = g.node("Relu", [g.conv("image", "conv1", 1, 8, (3, 3))], "relu1")
    x = g.node("MaxPool", [x], "pool1", kernel_shape=[2, 2], strides=[2, 2])
    x = g.node("Relu", [g.conv(x, "conv2", 8, 16, (3, 3))], "relu2")
    x = g.node("AveragePool", [x], "pool2", kernel_shape=[2, 2], strides=[2, 2])
    x = g.node("Flatten", [x], "flat", axis=1)
    g.node("Softmax", [g.dense(x, "fc", 16 * 4 * 4, 10)], "probs", axis=-1)
    return g.model("cnn", {"image": [1, 1, 16, 16]}, {"probs": [1, 10]})


def dscnn() -> onnx.ModelProto:
    """Keyword-spotting DS-CNN: conv-bn-relu, then depthwise(3x3)-bn-relu + pointwise(1x1)-bn-relu
    blocks, global average pool, dense, softmax. Input is 49 MFCC frames x 10 coefficients."""
    g = _GraphBuilder(seed=3)
    c = 24
    x = g.conv("mfcc", "conv0", 1, c, (10, 4), stride=2, pad=(4, 1), bias=False)
    x = g.node("Relu", [g.batchnorm(x, "bn0", c)], "relu0")
    for i in (1, 2):
        x = g.conv(x, f"dw{i}", c, c, (3, 3), group=c, bias=False)
        x = g.node("Relu", [g.batchnorm(x, f"dw{i}.bn", c)], f"dw{i}.relu")
        x = g.conv(x, f"pw{i}", c, c, (1, 1), bias=False)
        x = g.node("Relu", [g.batchnorm(x, f"pw{i}.bn", c)], f"pw{i}.relu")
    x = g.node("GlobalAveragePool", [x], "gap")
    x = g.node("Flatten", [x], "flat", axis=1)
    g.node("Softmax", [g.dense(x, "fc", c, 12)], "probs", axis=-1)
    return g.model("dscnn", {"mfcc": [1, 1, 49, 10]}, {"probs": [1, 12]})


def residual() -> onnx.ModelProto:
    """conv-relu-conv, add the block's input (skip connection), relu."""
    g = _GraphBuilder(seed=4)
    x = g.node("Relu", [g.conv("x", "conv1", 8, 8, (3, 3))], "relu1")
    x = g.conv(x, "conv2", 8, 8, (3, 3))
    x = g.node("Add", [x, "x"], "skip")
    g.node("Relu", [x], "y")
    return g.model("residual", {"x": [1, 8, 8, 8]}, {"y": [1, 8, 8, 8]})


def concat() -> onnx.ModelProto:
    """Three branches (1x1 conv, 3x3 conv, 3x3 max pool) concatenated on channels (inception-like)."""
    g = _GraphBuilder(seed=5)
    a = g.node("Relu", [g.conv("x", "branch1x1", 4, 6, (1, 1))], "a")
    b = g.node("Relu", [g.conv("x", "branch3x3", 4, 6, (3, 3))], "b")
    c = g.node("MaxPool", ["x"], "c", kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    g.node("Concat", [a, b, c], "y", axis=1)
    return g.model("concat", {"x": [1, 4, 8, 8]}, {"y": [1, 16, 8, 8]})


def batchnorm() -> onnx.ModelProto:
    """conv (no bias) followed by batch-norm in inference mode, folded by the compiler; relu."""
    g = _GraphBuilder(seed=6)
    x = g.conv("x", "conv", 8, 16, (3, 3), bias=False)
    x = g.batchnorm(x, "bn", 16)
    g.node("Relu", [x], "y")
    return g.model("batchnorm", {"x": [1, 8, 6, 6]}, {"y": [1, 16, 6, 6]})


def multi_io() -> onnx.ModelProto:
    """Two inputs and two outputs: a dense branch mixed with the second input, and a gate that
    concatenates both; Unsqueeze/Squeeze are aliases."""
    g = _GraphBuilder(seed=7)
    h = g.node("Tanh", [g.dense("features", "fc", 16, 8)], "h")
    g.node("Add", [h, "context"], "sum")
    both = g.node("Concat", [h, "context"], "both", axis=1)
    axes = g.const("axes", np.array([1], dtype=np.int64))
    up = g.node("Unsqueeze", [both, axes], "both3d")
    scaled = g.node("Mul", [up, g.const("gain", np.full((1, 1, 16), 0.5, dtype=np.float32))], "scaled")
    down = g.node("Squeeze", [scaled, axes], "scaled2d")
    g.node("Sigmoid", [down], "gate")
    return g.model("multi_io", {"features": [1, 16], "context": [1, 8]}, {"sum": [1, 8], "gate": [1, 16]})


EXAMPLES: dict[str, Callable[[], onnx.ModelProto]] = {
    "mlp": mlp,
    "cnn": cnn,
    "dscnn": dscnn,
    "residual": residual,
    "concat": concat,
    "batchnorm": batchnorm,
    "multi_io": multi_io,
}


def chosen(known: Mapping[str, object], names: Sequence[str] | None, what: str) -> list[str]:
    """`names` (all of `known` when none are given), each a key of `known`: an unknown one is a
    KeyError naming it and the known ones."""
    for name in names or ():
        if name not in known:
            raise KeyError(f"unknown {what} '{name}' (known: {', '.join(known)})")
    return list(names or known)


def write_models(builders: dict[str, Callable[[], onnx.ModelProto]], out_dir: Path,
                 names: list[str] | None = None, what: str = "example") -> dict[str, Path]:
    """Write the models of `builders` (all, or `names`) as `<out_dir>/<name>.onnx`; return
    their paths. A file whose bytes are already right is left untouched."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name in chosen(builders, names, f"{what} model"):
        data = builders[name]().SerializeToString(deterministic=True)
        path = out_dir / f"{name}.onnx"
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)
            log.info("wrote %s model %s (%d bytes)", what, path, len(data))
        paths[name] = path
    return paths


def write_examples(out_dir: Path, names: list[str] | None = None) -> dict[str, Path]:
    """Write the example models (all, or `names`) as `<out_dir>/<name>.onnx`."""
    return write_models(EXAMPLES, out_dir, names, "example")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the example ONNX models.")
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    write_examples(args.out_dir)


if __name__ == "__main__":
    main()
