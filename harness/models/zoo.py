"""MLPerf-Tiny-like models for benchmarks, written as ONNX files from onnx.helper with seeded
weights (like harness.models.examples, whose graph builder they share).

The shapes follow the MLPerf Tiny reference models (and two classic small nets), so
speed, size and memory figures are about models of the size people deploy on small boards:
LeNet-5, DS-CNN keyword spotting, ResNet-8 for CIFAR-10, the anomaly-detection dense
autoencoder, MobileNet-v1 0.25 at 96x96 (visual wake words) and one small attention block.
The weights are random (seeded), so accuracy is meaningless; the work per inference is real.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from harness.models.examples import _GraphBuilder, write_models

log = logging.getLogger(__name__)


def _conv_bn_relu(g: _GraphBuilder, x: str, name: str, cin: int, cout: int, k: int, *,
                  stride: int = 1, group: int = 1, relu: bool = True) -> str:
    x = g.conv(x, name, cin, cout, (k, k), stride=stride, group=group, bias=False)
    x = g.batchnorm(x, f"{name}.bn", cout)
    return g.node("Relu", [x], f"{name}.relu") if relu else x


def lenet5() -> onnx.ModelProto:
    """LeNet-5 on 28x28 digits: conv5(6)-relu-maxpool, conv5(16)-relu-maxpool, 120-84-10 dense."""
    g = _GraphBuilder(seed=101)
    x = g.node("Relu", [g.conv("image", "conv1", 1, 6, (5, 5), pad=(2, 2))], "relu1")
    x = g.node("MaxPool", [x], "pool1", kernel_shape=[2, 2], strides=[2, 2])
    x = g.node("Relu", [g.conv(x, "conv2", 6, 16, (5, 5), pad=(0, 0))], "relu2")
    x = g.node("MaxPool", [x], "pool2", kernel_shape=[2, 2], strides=[2, 2])
    x = g.node("Flatten", [x], "flat", axis=1)
    x = g.node("Relu", [g.dense(x, "fc1", 16 * 5 * 5, 120)], "relu3")
    x = g.node("Relu", [g.dense(x, "fc2", 120, 84)], "relu4")
    g.node("Softmax", [g.dense(x, "fc3", 84, 10)], "probs", axis=-1)
    return g.model("lenet5", {"image": [1, 1, 28, 28]}, {"probs": [1, 10]})


def kws_dscnn() -> onnx.ModelProto:
    """MLPerf Tiny keyword spotting DS-CNN: conv(10x4, stride 2, 64)-bn-relu, four
    depthwise(3x3)-bn-relu + pointwise(64)-bn-relu blocks, global average pool, dense(12)."""
    g = _GraphBuilder(seed=102)
    c = 64
    x = g.conv("mfcc", "conv0", 1, c, (10, 4), stride=2, pad=(5, 1), bias=False)
    x = g.node("Relu", [g.batchnorm(x, "conv0.bn", c)], "conv0.relu")
    for i in range(1, 5):
        x = _conv_bn_relu(g, x, f"dw{i}", c, c, 3, group=c)
        x = _conv_bn_relu(g, x, f"pw{i}", c, c, 1)
    x = g.node("GlobalAveragePool", [x], "gap")
    x = g.node("Flatten", [x], "flat", axis=1)
    g.node("Softmax", [g.dense(x, "fc", c, 12)], "probs", axis=-1)
    return g.model("kws_dscnn", {"mfcc": [1, 1, 49, 10]}, {"probs": [1, 12]})


def resnet8() -> onnx.ModelProto:
    """MLPerf Tiny image classification ResNet-8 (CIFAR-10, 32x32x3): conv3(16)-bn-relu, three
    residual stages of 16/32/64 channels (the last two stride 2 with a 1x1 projection),
    global average pool, dense(10)."""
    g = _GraphBuilder(seed=103)
    x = _conv_bn_relu(g, "image", "stem", 3, 16, 3)
    cin = 16
    for stage, (cout, stride) in enumerate([(16, 1), (32, 2), (64, 2)], start=1):
        y = _conv_bn_relu(g, x, f"s{stage}.conv1", cin, cout, 3, stride=stride)
        y = _conv_bn_relu(g, y, f"s{stage}.conv2", cout, cout, 3, relu=False)
        skip = x if (stride == 1 and cin == cout) else _conv_bn_relu(
            g, x, f"s{stage}.proj", cin, cout, 1, stride=stride, relu=False)
        x = g.node("Relu", [g.node("Add", [y, skip], f"s{stage}.add")], f"s{stage}.relu")
        cin = cout
    x = g.node("GlobalAveragePool", [x], "gap")
    x = g.node("Flatten", [x], "flat", axis=1)
    g.node("Softmax", [g.dense(x, "fc", 64, 10)], "probs", axis=-1)
    return g.model("resnet8", {"image": [1, 3, 32, 32]}, {"probs": [1, 10]})


def autoencoder() -> onnx.ModelProto:
    """MLPerf Tiny anomaly detection dense autoencoder: 640 -> 4 x 128 -> 8 -> 4 x 128 -> 640,
    relu between layers (batch-norm folded away, as a deployed model would have it)."""
    g = _GraphBuilder(seed=104)
    widths = [640, 128, 128, 128, 128, 8, 128, 128, 128, 128, 640]
    x = "features"
    for i, (n_in, n_out) in enumerate(zip(widths, widths[1:])):
        x = g.dense(x, f"fc{i}", n_in, n_out)
        if i < len(widths) - 2:
            x = g.node("Relu", [x], f"fc{i}.relu")
    g.nodes[-1].output[0] = "reconstruction"
    g.nodes[-1].name = "reconstruction"
    return g.model("autoencoder", {"features": [1, 640]}, {"reconstruction": [1, 640]})


def mobilenet_v1_025() -> onnx.ModelProto:
    """MLPerf Tiny visual wake words MobileNet-v1 with width 0.25 at 96x96x3: conv3(8, stride 2),
    13 depthwise-separable blocks (depthwise 3x3-bn-relu, pointwise-bn-relu), global average
    pool, dense(2)."""
    g = _GraphBuilder(seed=105)
    x = _conv_bn_relu(g, "image", "stem", 3, 8, 3, stride=2)
    blocks = [(16, 1), (32, 2), (32, 1), (64, 2), (64, 1), (128, 2),
              (128, 1), (128, 1), (128, 1), (128, 1), (128, 1), (256, 2), (256, 1)]
    cin = 8
    for i, (cout, stride) in enumerate(blocks, start=1):
        x = _conv_bn_relu(g, x, f"b{i}.dw", cin, cin, 3, stride=stride, group=cin)
        x = _conv_bn_relu(g, x, f"b{i}.pw", cin, cout, 1)
        cin = cout
    x = g.node("GlobalAveragePool", [x], "gap")
    x = g.node("Flatten", [x], "flat", axis=1)
    g.node("Softmax", [g.dense(x, "fc", cin, 2)], "probs", axis=-1)
    return g.model("mobilenet_v1_025", {"image": [1, 3, 96, 96]}, {"probs": [1, 2]})


def attention() -> onnx.ModelProto:
    """One transformer encoder block on 16 tokens of width 64, one head: layernorm, Q/K/V
    projections, softmax(QK^T / 8) V, output projection, residual; layernorm, a 128-wide
    relu MLP, residual."""
    g = _GraphBuilder(seed=106)
    d, hidden = 64, 128

    def layernorm(x: str, name: str) -> str:
        scale = g.const(f"{name}.scale", (g.rng.random(d) + 0.5).astype(np.float32))
        shift = g.bias(f"{name}.shift", d)
        return g.node("LayerNormalization", [x, scale, shift], name, axis=-1, epsilon=1e-5)

    def project(x: str, name: str, n_in: int, n_out: int) -> str:
        w = g.weight(f"{name}.weight", (n_in, n_out), fan_in=n_in)
        return g.node("Add", [g.node("MatMul", [x, w], f"{name}.mm"), g.bias(f"{name}.bias", n_out)], name)

    h = layernorm("tokens", "ln1")
    q = project(h, "q", d, d)
    k = project(h, "k", d, d)
    v = project(h, "v", d, d)
    kt = g.node("Transpose", [k], "kT", perm=[0, 2, 1])
    scores = g.node("MatMul", [q, kt], "scores")
    scaled = g.node("Mul", [scores, g.const("inv_sqrt_d", np.array(1.0 / np.sqrt(d), dtype=np.float32))], "scaled")
    weights = g.node("Softmax", [scaled], "attn", axis=-1)
    context = g.node("MatMul", [weights, v], "context")
    x = g.node("Add", ["tokens", project(context, "out", d, d)], "res1")
    h = layernorm(x, "ln2")
    h = g.node("Relu", [project(h, "mlp1", d, hidden)], "mlp1.relu")
    g.node("Add", [x, project(h, "mlp2", hidden, d)], "y")
    return g.model("attention", {"tokens": [1, 16, d]}, {"y": [1, 16, d]})


ZOO: dict[str, Callable[[], onnx.ModelProto]] = {
    "lenet5": lenet5,
    "kws_dscnn": kws_dscnn,
    "resnet8": resnet8,
    "autoencoder": autoencoder,
    "mobilenet_v1_025": mobilenet_v1_025,
    "attention": attention,
}


#: Real-sized CNNs from ONNX's own light model zoo, shipped in the onnx wheel
#: (`onnx/backend/test/data/light`): the networks' real shapes and operators, with weights
#: generated in the graph (constant fills) so the files stay small. Named by their file stem.
LIGHT_ZOO = ("light_squeezenet", "light_shufflenet", "light_resnet50", "light_inception_v1",
             "light_densenet121")


def light_zoo_path(name: str) -> Path:
    """The .onnx file of a LIGHT_ZOO model inside the installed onnx package."""
    from harness.errors import HarnessError

    if name not in LIGHT_ZOO:
        raise HarnessError(f"'{name}' is not a light zoo model ({', '.join(LIGHT_ZOO)})")
    path = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"{name}.onnx"
    if not path.is_file():
        raise HarnessError(f"light zoo model {name}: {path} is missing from the installed onnx package")
    return path


def write_zoo(out_dir: Path, names: list[str] | None = None) -> dict[str, Path]:
    """Write the zoo models (all, or `names`) as `<out_dir>/<name>.onnx`; return their paths.
    A file whose bytes are already right is left untouched."""
    return write_models(ZOO, out_dir, names, "zoo")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the MLPerf-Tiny-like zoo ONNX models.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("names", nargs="*")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    write_zoo(args.out_dir, args.names or None)


if __name__ == "__main__":
    main()
