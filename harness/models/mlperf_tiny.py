"""MLPerf Tiny's four benchmark models (MLCommons, Apache-2.0), int8 and float, selectable by
name (`harness run --model mlperf-kws`), with their sample inputs.

The files are not in the repository: they lie in `shared/models/mlperf_tiny` beside the
clone (`<repo>/../shared/models/mlperf_tiny`), or wherever MINRT_MLPERF_TINY_DIR points.
A model is copied under its harness name (`mlperf-kws.tflite`, so results and artifacts carry
that name) together with its sample inputs, `<name>.input<k>.npy`.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Sequence

from harness import REPO_ROOT
from harness.errors import HarnessError

log = logging.getLogger(__name__)

ENV_DIR = "MINRT_MLPERF_TINY_DIR"

#: harness name -> file stem as MLCommons publishes it
MLPERF_TINY: dict[str, str] = {
    "mlperf-kws": "kws_ref_model",  # DS-CNN keyword spotting, int8
    "mlperf-vww": "vww_96_int8",  # MobileNetV1 0.25 visual wake words, int8
    "mlperf-ic": "pretrainedResnet_quant",  # ResNet-8 CIFAR-10, int8
    "mlperf-ad": "ad01_int8",  # FC autoencoder anomaly detection, int8
    "mlperf-vww-float": "vww_96_float",
    "mlperf-ic-float": "pretrainedResnet",
    "mlperf-ad-float": "ad01_fp32",
    # kws_ref_model_float32.tflite is dynamic-range quantized (int8 weights, float
    # activations), which TVM's TFLite frontend refuses: not offered by name.
}
INT8_MODELS = ["mlperf-kws", "mlperf-vww", "mlperf-ic", "mlperf-ad"]
FLOAT_MODELS = ["mlperf-vww-float", "mlperf-ic-float", "mlperf-ad-float"]


def mlperf_tiny_dir() -> Path:
    """Where the published files are (MINRT_MLPERF_TINY_DIR, else beside the clone)."""
    override = os.environ.get(ENV_DIR)
    return Path(override) if override else REPO_ROOT.parent / "shared" / "models" / "mlperf_tiny"


def available() -> str | None:
    """None when the files are there, else why not (one line, for a skip or an error)."""
    where = mlperf_tiny_dir()
    missing = [f"{stem}.tflite" for stem in MLPERF_TINY.values() if not (where / f"{stem}.tflite").is_file()]
    if missing:
        return (f"the MLPerf Tiny models are not in {where} (missing {', '.join(missing[:2])}"
                f"{'...' if len(missing) > 2 else ''}; set {ENV_DIR})")
    return None


def _copy_if_changed(src: Path, dest: Path) -> None:
    if dest.is_file() and dest.stat().st_size == src.stat().st_size and dest.read_bytes() == src.read_bytes():
        return
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}")
    shutil.copyfile(src, tmp)
    tmp.replace(dest)


def write_mlperf_tiny(out_dir: Path, names: Sequence[str] | None = None) -> dict[str, Path]:
    """Copy the named models (all by default) and their sample inputs into `out_dir` under
    their harness names; return name -> .tflite path."""
    names = list(names or MLPERF_TINY)
    unknown = [n for n in names if n not in MLPERF_TINY]
    if unknown:
        raise HarnessError(f"not an MLPerf Tiny model: {', '.join(unknown)} (known: {', '.join(MLPERF_TINY)})")
    why = available()
    if why:
        raise HarnessError(f"model {names[0]}: {why}")
    source = mlperf_tiny_dir()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in names:
        stem = MLPERF_TINY[name]
        _copy_if_changed(source / f"{stem}.tflite", out_dir / f"{name}.tflite")
        for sample in sorted(source.glob(f"{stem}.input*.npy")):
            k = sample.name[len(stem) + len(".input"):-len(".npy")]
            if k.isdigit():
                _copy_if_changed(sample, out_dir / f"{name}.input{k}.npy")
        paths[name] = out_dir / f"{name}.tflite"
    return paths


def sample_input_files(model: Path, input_names: Sequence[str]) -> dict[str, Path] | None:
    """A model's own sample inputs, `<model stem>.input<k>.npy` beside it, for its k-th input
    (a one-input model takes `.input0.npy`, the first sample); None unless all are there."""
    model = Path(model)
    files = {name: model.with_name(f"{model.stem}.input{k}.npy") for k, name in enumerate(input_names)}
    return files if files and all(p.is_file() for p in files.values()) else None
