"""Which models a command means: .onnx/.tflite paths, names of the shipped examples, or
MLPerf Tiny model names (harness.models.mlperf_tiny)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from harness.errors import HarnessError


def resolve_models(names: Sequence[str] | None) -> list[Path]:
    """Model arguments are .onnx/.tflite paths, names of the shipped examples or MLPerf Tiny
    names (mlperf-kws...); none means all examples."""
    from harness.cache import cache_dir
    from harness.models.examples import write_examples
    from harness.models.mlperf_tiny import MLPERF_TINY, write_mlperf_tiny
    from harness.models.qdq import QDQ_EXAMPLES, write_qdq_examples

    wanted = list(names or [])
    is_file = [n.endswith((".onnx", ".tflite")) or Path(n).exists() for n in wanted]
    paths = [Path(n) for n, f in zip(wanted, is_file) if f]
    mlperf = [n for n, f in zip(wanted, is_file) if not f and n in MLPERF_TINY]
    if mlperf:
        paths += list(write_mlperf_tiny(cache_dir() / "mlperf_tiny", mlperf).values())
    qdq = [n for n, f in zip(wanted, is_file) if not f and n in QDQ_EXAMPLES]
    if qdq:
        paths += list(write_qdq_examples(cache_dir() / "qdq", qdq).values())
    example_names = [n for n, f in zip(wanted, is_file) if not f and n not in MLPERF_TINY and n not in QDQ_EXAMPLES]
    if not wanted or example_names:
        examples = write_examples(cache_dir() / "examples")
        if not wanted:
            return list(examples.values())
        for name in example_names:
            if name not in examples:
                raise HarnessError(f"model '{name}' is neither a file nor an example (examples: {', '.join(examples)}; "
                                   f"MLPerf Tiny: {', '.join(MLPERF_TINY)}; QDQ: {', '.join(QDQ_EXAMPLES)})")
            paths.append(examples[name])
    for path in paths:
        if not path.exists():
            raise HarnessError(f"model file '{path}' does not exist")
    return paths
