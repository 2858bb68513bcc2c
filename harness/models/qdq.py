"""Quantized (QDQ) ONNX examples: an example model put through onnxruntime's own static
quantizer (`quant_pre_process` then `quantize_static`, QDQ format, int8 activations and
weights, per tensor or per channel), calibrated on seeded inputs. The small int8 models the
quick tests use; the bytes are the same on every run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from harness.models.examples import chosen, write_examples

log = logging.getLogger(__name__)

#: name -> (example it quantizes, per-channel weights)
QDQ_EXAMPLES: dict[str, tuple[str, bool]] = {
    "cnn-qdq": ("cnn", False),
    "cnn-qdq-perchannel": ("cnn", True),
}
CALIBRATION_SAMPLES = 16


class _SeededReader:
    """onnxruntime's CalibrationDataReader protocol: get_next() -> {input: array} or None."""

    def __init__(self, inputs: list[tuple[str, list[int]]], seed: int) -> None:
        rng = np.random.default_rng(seed)
        self._samples: Iterator[dict[str, np.ndarray]] = iter([
            {name: rng.standard_normal(shape).astype(np.float32) for name, shape in inputs}
            for _ in range(CALIBRATION_SAMPLES)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._samples, None)


def _inputs_of(path: Path) -> list[tuple[str, list[int]]]:
    import onnx

    model = onnx.load(str(path))
    init = {t.name for t in model.graph.initializer}
    return [(v.name, [d.dim_value for d in v.type.tensor_type.shape.dim])
            for v in model.graph.input if v.name not in init]


def write_qdq_examples(out_dir: Path, names: list[str] | None = None) -> dict[str, Path]:
    """Write the QDQ examples (all, or `names`) as `<out_dir>/<name>.onnx`; a file already
    written is kept (the quantizer's output depends only on the example and the seed)."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name in chosen(QDQ_EXAMPLES, names, "QDQ example"):
        base, per_channel = QDQ_EXAMPLES[name]
        path = out_dir / f"{name}.onnx"
        if not path.exists():
            float_path = write_examples(out_dir / "float", [base])[base]
            pre = out_dir / f".{name}.pre.onnx"
            quant_pre_process(str(float_path), str(pre), skip_symbolic_shape=True)
            options: dict[str, Any] = {}
            quantize_static(str(pre), str(path), _SeededReader(_inputs_of(float_path), seed=7),
                            quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8, per_channel=per_channel,
                            calibrate_method=CalibrationMethod.MinMax, extra_options=options)
            pre.unlink(missing_ok=True)
            log.info("wrote QDQ example %s (%d bytes)", path, path.stat().st_size)
        paths[name] = path
    return paths
