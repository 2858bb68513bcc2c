"""Element types: the one table of what minrt loads, by TVM dtype name, DLPack type and numpy.

minrt reads a graph.json entry's dtype by name (runtime_c/src/load.c, `dtype_names`) and
keeps its DLPack {code, bits, lanes}; the NDArray-list files (formats/tensorfile), the kernel
signatures (formats/signatures) and the compiler's sizes (compile/plan) read this table, and
the compiler refuses a model with any other dtype. tests/test_runtime_c.py holds the table
against what a program built with minrt accepts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.errors import CompileError


@dataclass(frozen=True)
class DType:
    name: str  # as TVM writes it in graph.json ("float32", "bool"...)
    code: int  # DLPack type code: 0 int, 1 uint, 2 float; bool is 6 (8 bits), as TVM 0.27 writes it
    bits: int
    lanes: int = 1

    @property
    def nbytes(self) -> int:
        """Bytes per element."""
        return (self.bits * self.lanes + 7) // 8

    @property
    def numpy(self) -> np.dtype:
        """The numpy dtype of the data, little-endian (the byte order of every minrt format)."""
        return np.dtype(self.name).newbyteorder("<")

    @property
    def word(self) -> int:
        """DLDataType as minrt reads it: a little-endian u32, code | bits << 8 | lanes << 16."""
        return self.code | self.bits << 8 | self.lanes << 16


#: Every dtype minrt loads, by name.
DTYPES: dict[str, DType] = {d.name: d for d in (
    DType("int8", 0, 8), DType("int16", 0, 16), DType("int32", 0, 32), DType("int64", 0, 64),
    DType("uint8", 1, 8), DType("uint16", 1, 16), DType("uint32", 1, 32), DType("uint64", 1, 64),
    DType("float16", 2, 16), DType("float32", 2, 32), DType("float64", 2, 64),
    DType("bool", 6, 8),
)}
_BY_DLPACK = {(d.code, d.bits, d.lanes): d for d in DTYPES.values()}


def dtype_of_dlpack(code: int, bits: int, lanes: int) -> DType | None:
    """The dtype with this DLPack {code, bits, lanes}, or None when minrt does not load it."""
    return _BY_DLPACK.get((code, bits, lanes))


def minrt_dtype(name: str, what: str = "") -> DType:
    """The table's entry for a TVM dtype name; CompileError (naming `what`) for any other."""
    try:
        return DTYPES[name]
    except KeyError:
        raise CompileError(f"{what + ': ' if what else ''}dtype '{name}' is not one minrt loads "
                           f"({', '.join(DTYPES)})") from None


def dtype_nbytes(dtype: str) -> int:
    """Bytes per element of a TVM dtype string ("float32", "int8", "bool"...)."""
    return minrt_dtype(dtype).nbytes
