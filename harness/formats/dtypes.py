"""Element types: bytes per element of a TVM dtype string."""

from __future__ import annotations

import re

from harness.errors import CompileError

_DTYPE_BITS = {"bool": 8}


def dtype_nbytes(dtype: str) -> int:
    """Bytes per element of a TVM dtype string ("float32", "int8", "bool"...)."""
    if dtype in _DTYPE_BITS:
        return _DTYPE_BITS[dtype] // 8
    match = re.fullmatch(r"(?:float|int|uint|bfloat)(\d+)", dtype)
    if not match:
        raise CompileError(f"dtype '{dtype}' is not supported by minrt")
    return (int(match.group(1)) + 7) // 8
