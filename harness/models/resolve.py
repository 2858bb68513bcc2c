"""Which models a command means: .onnx paths, or names of the shipped examples."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from harness.errors import HarnessError


def resolve_models(names: Sequence[str] | None) -> list[Path]:
    """Model arguments are .onnx paths or names of the shipped examples; none means all examples."""
    from harness.cache import cache_dir
    from harness.models.examples import write_examples

    wanted = list(names or [])
    paths = [Path(n) for n in wanted if n.endswith(".onnx") or Path(n).exists()]
    example_names = [n for n in wanted if not (n.endswith(".onnx") or Path(n).exists())]
    if not wanted or example_names:
        examples = write_examples(cache_dir() / "examples")
        if not wanted:
            return list(examples.values())
        for name in example_names:
            if name not in examples:
                raise HarnessError(f"model '{name}' is neither a file nor an example (examples: {', '.join(examples)})")
            paths.append(examples[name])
    for path in paths:
        if not path.exists():
            raise HarnessError(f"model file '{path}' does not exist")
    return paths
