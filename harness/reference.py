"""Host reference executors: onnx's ReferenceEvaluator, and onnxruntime when installed.

Both run the original ONNX model on the host; the device's outputs are compared with each.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import numpy as np

log = logging.getLogger(__name__)


def reference_names() -> list[str]:
    names = ["onnx-reference"]
    try:
        import onnxruntime  # noqa: F401

        names.append("onnxruntime")
    except ImportError:
        log.info("onnxruntime is not installed: comparing with onnx's ReferenceEvaluator only")
    return names


def run_reference(name: str, model: Path, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run `model` on the host with the named executor; outputs in the model's output order."""
    if name == "onnx-reference":
        from onnx.reference import ReferenceEvaluator

        return [np.asarray(o) for o in ReferenceEvaluator(str(model)).run(None, dict(inputs))]
    if name == "onnxruntime":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        return [np.asarray(o) for o in session.run(None, dict(inputs))]
    raise ValueError(f"unknown reference executor '{name}'")
