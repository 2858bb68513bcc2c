"""Which models a command means: model files (.onnx, .tflite), or names of the shipped examples,
zoo models, MLPerf Tiny models (harness.models.mlperf_tiny) and QDQ examples (harness.models.qdq).

One resolver for every command (run, size, farm, compile, build, tune, bench), so a name that
works in one works in all of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from harness.errors import HarnessError

#: What no model argument means: every example ("examples"), or every example and zoo model ("all").
DEFAULTS = ("examples", "all")


def resolve_models(names: Sequence[str] | None, *, default: str = "examples",
                   out_dir: Path | None = None) -> list[Path]:
    """Model arguments are existing files (or paths ending in .onnx/.tflite), example names, zoo
    names, light zoo names (real-sized CNNs in the onnx wheel, harness.models.zoo.LIGHT_ZOO), MLPerf
    Tiny names (mlperf-kws...) or QDQ example names; none means every example (`default="examples"`)
    or every example and zoo model (`default="all"`). Named models are written under `out_dir`
    (default: the cache)."""
    from harness.cache import cache_dir
    from harness.models.examples import EXAMPLES, write_examples
    from harness.models.mlperf_tiny import MLPERF_TINY, write_mlperf_tiny
    from harness.models.qdq import QDQ_EXAMPLES, write_qdq_examples
    from harness.models.zoo import LIGHT_ZOO, ZOO, light_zoo_path, write_zoo

    if default not in DEFAULTS:
        raise ValueError(f"default must be one of {DEFAULTS}, not {default!r}")
    root = Path(out_dir) if out_dir is not None else cache_dir()
    wanted = list(names or [])
    if not wanted:
        paths = list(write_examples(root / "examples").values())
        return paths + list(write_zoo(root / "zoo").values()) if default == "all" else paths
    paths = []
    for name in wanted:
        path = Path(name)
        if path.is_file():
            paths.append(path)
        elif name in EXAMPLES:
            paths.append(write_examples(root / "examples", [name])[name])
        elif name in ZOO:
            paths.append(write_zoo(root / "zoo", [name])[name])
        elif name in LIGHT_ZOO:
            paths.append(light_zoo_path(name))
        elif name in MLPERF_TINY:
            paths.append(write_mlperf_tiny(root / "mlperf_tiny", [name])[name])
        elif name in QDQ_EXAMPLES:
            paths.append(write_qdq_examples(root / "qdq", [name])[name])
        elif path.suffix or "/" in name:
            raise HarnessError(f"model file '{name}' does not exist")
        else:
            raise HarnessError(f"model '{name}' is not a file, an example ({', '.join(EXAMPLES)}), "
                               f"a zoo model ({', '.join((*ZOO, *LIGHT_ZOO))}), an MLPerf Tiny model "
                               f"({', '.join(MLPERF_TINY)}) or a QDQ example ({', '.join(QDQ_EXAMPLES)})")
    return paths
