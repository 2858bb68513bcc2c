"""TVM's NDArray-list blob and minrt's aligned params container, read and written with numpy.

The NDArray-list carries the inputs the harness sends to the runner and the outputs the
runner sends back. Layout (little-endian): u64 magic, u64 reserved, u64 name count, names
(u64 len + bytes), u64 tensor count, then per tensor: u64 magic, u64 reserved, DLDevice
{i32 type, i32 id}, i32 ndim, DLDataType {u8 code, u8 bits, u16 lanes}, ndim x i64 shape,
i64 nbytes, data.

A model's params.bin is minrt's aligned container (version 1): the same layout but for the
first magic (the bytes "minrtprm"), the reserved word after it holding the version, and zero
padding before each tensor's data up to a multiple of 64 bytes from the blob's start, so
minrt uses every weight where it lies (kernels need 64-byte aligned data). `loads` reads both.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Mapping

import numpy as np

from harness.errors import HarnessError
from harness.formats.dtypes import DTYPES, DType, dtype_of_dlpack

LIST_MAGIC = 0xF7E58D4F05049CB7
TENSOR_MAGIC = 0xDD5E40F096B4A13F
ALIGNED_MAGIC = int.from_bytes(b"minrtprm", "little")
ALIGNED_VERSION = 1
DATA_ALIGN = 64
KDL_CPU = 1

class TensorFileError(HarnessError):
    pass


def dl_dtype(dtype: str) -> DType:
    """The table's entry (harness.formats.dtypes) for a numpy dtype name."""
    if dtype not in DTYPES:
        raise TensorFileError(f"dtype '{dtype}' is not one minrt loads ({', '.join(DTYPES)})")
    return DTYPES[dtype]


def dumps(tensors: Mapping[str, np.ndarray], aligned: bool = False) -> bytes:
    """Serialize named arrays in order (CPU device, lanes 1): TVM's NDArray-list, or with
    `aligned` minrt's aligned container (every tensor's data at a multiple of 64 bytes)."""
    out = [struct.pack("<QQQ", ALIGNED_MAGIC if aligned else LIST_MAGIC,
                       ALIGNED_VERSION if aligned else 0, len(tensors))]
    size = 24
    for name in tensors:
        raw = name.encode()
        out.append(struct.pack("<Q", len(raw)) + raw)
        size += 8 + len(raw)
    out.append(struct.pack("<Q", len(tensors)))
    size += 8
    for arr in tensors.values():
        arr = np.asarray(arr, order="C")  # not ascontiguousarray: it turns 0-d into 1-d
        dt = dl_dtype(arr.dtype.name)
        data = arr.astype(dt.numpy, copy=False).tobytes()
        header = (struct.pack("<QQiiiBBH", TENSOR_MAGIC, 0, KDL_CPU, 0, arr.ndim, dt.code, dt.bits, dt.lanes)
                  + struct.pack(f"<{arr.ndim}q", *arr.shape) + struct.pack("<q", len(data)))
        size += len(header)
        pad = -size % DATA_ALIGN if aligned else 0
        out += [header, bytes(pad), data]
        size += pad + len(data)
    return b"".join(out)


def loads(blob: bytes, where: str = "<bytes>") -> dict[str, np.ndarray]:
    """Parse a blob (either format); errors name the byte offset and the field."""
    return {name: arr for name, (arr, _) in _parse(blob, where).items()}


def data_offsets(blob: bytes, where: str = "<bytes>") -> dict[str, int]:
    """Where each tensor's data starts in the blob (bytes from its start)."""
    return {name: at for name, (_, at) in _parse(blob, where).items()}


def _parse(blob: bytes, where: str) -> dict[str, tuple[np.ndarray, int]]:
    pos = 0

    def take(fmt: str, what: str) -> tuple:
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(blob):
            raise TensorFileError(f"{where}: truncated at byte {pos} reading {what}")
        vals = struct.unpack_from(fmt, blob, pos)
        pos += size
        return vals

    magic, version, nnames = take("<QQQ", "header")
    aligned = magic == ALIGNED_MAGIC
    if not aligned and magic != LIST_MAGIC:
        raise TensorFileError(f"{where}: bad magic {magic:#x} at byte 0 (expected {LIST_MAGIC:#x} "
                              f"or minrt's aligned container {ALIGNED_MAGIC:#x})")
    if aligned and version != ALIGNED_VERSION:
        raise TensorFileError(f"{where}: aligned container version {version} at byte 8 "
                              f"(this reader knows {ALIGNED_VERSION})")
    names = []
    for i in range(nnames):
        (length,) = take("<Q", f"name {i} length")
        if pos + length > len(blob):
            raise TensorFileError(f"{where}: truncated at byte {pos} in name {i} ({length} bytes)")
        try:
            names.append(blob[pos : pos + length].decode())
        except UnicodeDecodeError:
            raise TensorFileError(f"{where}: name {i} at byte {pos} is not UTF-8") from None
        pos += length
    (count,) = take("<Q", "tensor count")
    if count != nnames:
        raise TensorFileError(f"{where}: {nnames} names but {count} tensors (count at byte {pos - 8})")
    result: dict[str, tuple[np.ndarray, int]] = {}
    for name in names:
        start = pos
        tmagic, _, _dev, _dev_id, ndim, code, bits, lanes = take("<QQiiiBBH", f"tensor '{name}' header")
        if tmagic != TENSOR_MAGIC:
            raise TensorFileError(f"{where}: tensor '{name}' has bad magic {tmagic:#x} at byte {start}")
        dt = dtype_of_dlpack(code, bits, lanes)
        if dt is None:
            raise TensorFileError(f"{where}: tensor '{name}' has unsupported dtype code={code} bits={bits} lanes={lanes} (header at byte {start})")
        if not 0 <= ndim <= 32:
            raise TensorFileError(f"{where}: tensor '{name}' has ndim {ndim} (header at byte {start})")
        shape = take(f"<{ndim}q", f"tensor '{name}' shape")
        if any(d < 0 for d in shape):
            raise TensorFileError(f"{where}: tensor '{name}' has a negative dimension in shape {shape} (header at byte {start})")
        (nbytes,) = take("<q", f"tensor '{name}' nbytes")
        dtype = dt.numpy
        if nbytes != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise TensorFileError(f"{where}: tensor '{name}' nbytes {nbytes} at byte {pos - 8} does not match shape {shape}")
        if aligned:
            pad = -pos % DATA_ALIGN
            if blob[pos:pos + pad] != bytes(pad):
                raise TensorFileError(f"{where}: tensor '{name}': padding at byte {pos} is not {pad} zero bytes")
            pos += pad
        if pos + nbytes > len(blob):
            raise TensorFileError(f"{where}: truncated at byte {pos} in data of tensor '{name}' ({nbytes} bytes)")
        result[name] = (np.frombuffer(blob, dtype=dtype, count=nbytes // dtype.itemsize, offset=pos).reshape(shape).copy(), pos)
        pos += nbytes
    if pos != len(blob):
        raise TensorFileError(f"{where}: {len(blob) - pos} unexpected bytes after the last tensor at byte {pos}")
    return result


def save(path: Path, tensors: Mapping[str, np.ndarray], aligned: bool = False) -> None:
    path.write_bytes(dumps(tensors, aligned=aligned))


def load(path: Path) -> dict[str, np.ndarray]:
    return loads(path.read_bytes(), where=str(path))
