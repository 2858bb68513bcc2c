"""TVM's NDArray-list blob and minrt's aligned params container, read and written with numpy.

The NDArray-list carries the inputs the harness sends to the runner and the outputs the
runner sends back. Layout (little-endian): u64 magic, u64 reserved, u64 name count, names
(u64 len + bytes), u64 tensor count, then per tensor: u64 magic, u64 reserved, DLDevice
{i32 type, i32 id}, i32 ndim, DLDataType {u8 code, u8 bits, u16 lanes}, ndim x i64 shape,
i64 nbytes, data.

A model's params.bin is minrt's aligned container (version 2, little-endian): the bytes
"minrtprm", u32 version, u32 0, u64 tensor count, a directory of {u64 name length, name,
DLDataType {u8 code, u8 bits, u16 lanes}, u32 nbytes} per tensor, then each tensor's data in
directory order after zero padding up to a multiple of 64 bytes from the blob's start, so
minrt uses every weight where it lies (kernels need 64-byte aligned data). The shape is the
graph's: the container carries only what minrt checks against it (name, dtype, size), ~20 B
per tensor where version 1 (TVM's header before each tensor and the padding after it) took
~100. `loads` reads both formats (a container's tensors come back 1-d; Artifact.params
shapes them by the graph).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from harness.errors import HarnessError
from harness.formats.dtypes import DTYPES, DType, dtype_of_dlpack

LIST_MAGIC = 0xF7E58D4F05049CB7
TENSOR_MAGIC = 0xDD5E40F096B4A13F
ALIGNED_MAGIC = int.from_bytes(b"minrtprm", "little")
ALIGNED_VERSION = 2
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
    if aligned:
        return _dumps_aligned(tensors)
    out = [struct.pack("<QQQ", LIST_MAGIC, 0, len(tensors))]
    for name in tensors:
        raw = name.encode()
        out.append(struct.pack("<Q", len(raw)) + raw)
    out.append(struct.pack("<Q", len(tensors)))
    for arr in tensors.values():
        arr = np.asarray(arr, order="C")  # not ascontiguousarray: it turns 0-d into 1-d
        dt = dl_dtype(arr.dtype.name)
        data = arr.astype(dt.numpy, copy=False).tobytes()
        out += [struct.pack("<QQiiiBBH", TENSOR_MAGIC, 0, KDL_CPU, 0, arr.ndim, dt.code, dt.bits, dt.lanes)
                + struct.pack(f"<{arr.ndim}q", *arr.shape) + struct.pack("<q", len(data)), data]
    return b"".join(out)


def _dumps_aligned(tensors: Mapping[str, np.ndarray]) -> bytes:
    out = [struct.pack("<QIIQ", ALIGNED_MAGIC, ALIGNED_VERSION, 0, len(tensors))]
    datas = []
    for name, arr in tensors.items():
        dt = dl_dtype(np.asarray(arr).dtype.name)
        datas.append(np.asarray(arr, order="C").astype(dt.numpy, copy=False).tobytes())
        raw = name.encode()
        out.append(struct.pack("<Q", len(raw)) + raw + struct.pack("<BBHI", dt.code, dt.bits, dt.lanes, len(datas[-1])))
    size = sum(len(part) for part in out)
    for data in datas:
        out += [bytes(-size % DATA_ALIGN), data]
        size += -size % DATA_ALIGN + len(data)
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

    (magic,) = take("<Q", "header")
    if magic == ALIGNED_MAGIC:
        return _parse_aligned(blob, where)
    if magic != LIST_MAGIC:
        raise TensorFileError(f"{where}: bad magic {magic:#x} at byte 0 (expected {LIST_MAGIC:#x} "
                              f"or minrt's aligned container {ALIGNED_MAGIC:#x})")
    _, nnames = take("<QQ", "header")
    names: list[str] = []
    for i in range(nnames):
        (length,) = take("<Q", f"name {i} length")
        if pos + length > len(blob):
            raise TensorFileError(f"{where}: truncated at byte {pos} in name {i} ({length} bytes)")
        try:
            name = blob[pos : pos + length].decode()
        except UnicodeDecodeError:
            raise TensorFileError(f"{where}: name {i} at byte {pos} is not UTF-8") from None
        if name in names:
            # a mapping keeps one of them: the other tensor would vanish without a word
            raise TensorFileError(f"{where}: tensor name '{name}' appears twice (names "
                                  f"{names.index(name)} and {i}, at byte {pos})")
        names.append(name)
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
        if pos + nbytes > len(blob):
            raise TensorFileError(f"{where}: truncated at byte {pos} in data of tensor '{name}' ({nbytes} bytes)")
        result[name] = (np.frombuffer(blob, dtype=dtype, count=nbytes // dtype.itemsize, offset=pos).reshape(shape).copy(), pos)
        pos += nbytes
    if pos != len(blob):
        raise TensorFileError(f"{where}: {len(blob) - pos} unexpected bytes after the last tensor at byte {pos}")
    return result


def _parse_aligned(blob: bytes, where: str) -> dict[str, tuple[np.ndarray, int]]:
    pos = 8

    def take(fmt: str, what: str) -> tuple:
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(blob):
            raise TensorFileError(f"{where}: truncated at byte {pos} reading {what}")
        vals = struct.unpack_from(fmt, blob, pos)
        pos += size
        return vals

    version, _, count = take("<IIQ", "header")
    if version != ALIGNED_VERSION:
        raise TensorFileError(f"{where}: aligned container version {version} at byte 8 "
                              f"(this reader knows {ALIGNED_VERSION})")
    directory: list[tuple[str, np.dtype, int, int]] = []
    for i in range(count):
        start = pos
        (length,) = take("<Q", f"name {i} length")
        if pos + length > len(blob):
            raise TensorFileError(f"{where}: truncated at byte {pos} in name {i} ({length} bytes)")
        try:
            name = blob[pos : pos + length].decode()
        except UnicodeDecodeError:
            raise TensorFileError(f"{where}: name {i} at byte {pos} is not UTF-8") from None
        pos += length
        if any(name == seen for seen, *_ in directory):
            raise TensorFileError(f"{where}: tensor name '{name}' appears twice (names "
                                  f"{[d[0] for d in directory].index(name)} and {i}, at byte {start})")
        code, bits, lanes, nbytes = take("<BBHI", f"tensor '{name}' dtype and size")
        dt = dtype_of_dlpack(code, bits, lanes)
        if dt is None:
            raise TensorFileError(f"{where}: tensor '{name}' has unsupported dtype code={code} bits={bits} lanes={lanes} (entry at byte {start})")
        if nbytes % dt.numpy.itemsize:
            raise TensorFileError(f"{where}: tensor '{name}' nbytes {nbytes} at byte {pos - 4} is not a whole number of {dt.numpy}")
        directory.append((name, dt.numpy, nbytes, start))
    result: dict[str, tuple[np.ndarray, int]] = {}
    for name, dtype, nbytes, _ in directory:
        pad = -pos % DATA_ALIGN
        if blob[pos:pos + pad] != bytes(pad):
            raise TensorFileError(f"{where}: tensor '{name}': padding at byte {pos} is not {pad} zero bytes")
        pos += pad
        if pos + nbytes > len(blob):
            raise TensorFileError(f"{where}: truncated at byte {pos} in data of tensor '{name}' ({nbytes} bytes)")
        result[name] = (np.frombuffer(blob, dtype=dtype, count=nbytes // dtype.itemsize, offset=pos).copy(), pos)
        pos += nbytes
    if pos != len(blob):
        raise TensorFileError(f"{where}: {len(blob) - pos} unexpected bytes after the last tensor at byte {pos}")
    return result


def output_name(index: int) -> str:
    """The name minrt-run gives output `index` (runtime_c/proto/tensors.c tensors_output_name)."""
    return f"output{index}"


def from_raw(blob: bytes, specs: Sequence[Mapping[str, Any]], where: str = "<bytes>") -> dict[str, np.ndarray]:
    """Tensors sent raw (each one's data in order, as the firmware sends its outputs), named
    by output_name and shaped by `specs` (dtype, shape)."""
    result: dict[str, np.ndarray] = {}
    pos = 0
    for i, spec in enumerate(specs):
        dtype = np.dtype(spec["dtype"]).newbyteorder("<")
        count = int(np.prod(spec["shape"], dtype=np.int64))
        if pos + count * dtype.itemsize > len(blob):
            raise TensorFileError(f"{where}: {len(blob)} bytes end inside tensor {i} ({spec['dtype']} {list(spec['shape'])} at byte {pos})")
        result[output_name(i)] = np.frombuffer(blob, dtype=dtype, count=count, offset=pos).reshape(spec["shape"]).copy()
        pos += count * dtype.itemsize
    if pos != len(blob):
        raise TensorFileError(f"{where}: {len(blob) - pos} bytes after the last of {len(specs)} tensors")
    return result


def save(path: Path, tensors: Mapping[str, np.ndarray], aligned: bool = False) -> None:
    path.write_bytes(dumps(tensors, aligned=aligned))


def load(path: Path) -> dict[str, np.ndarray]:
    return loads(path.read_bytes(), where=str(path))
