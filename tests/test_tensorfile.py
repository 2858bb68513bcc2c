"""harness.formats.tensorfile: the NDArray-list format, checked against TVM's own writer."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from harness.formats import dtypes, tensorfile
from harness.formats.tensorfile import TensorFileError

DTYPES = list(dtypes.DTYPES)  # every dtype minrt loads (uint64 was missing here)


def sample(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype.startswith(("int", "uint")):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    return (rng.standard_normal(shape) * 100).astype(dtype)


def tvm_blob(tensors: dict[str, np.ndarray]) -> bytes:
    import tvm

    return bytes(tvm.runtime.save_param_dict({k: tvm.runtime.tensor(v) for k, v in tensors.items()}))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (7,), (2, 3, 5)], ids=["scalar", "empty", "vector", "3d"])
def test_dumps_is_byte_identical_to_tvm(dtype, shape):
    tensors = {"first": sample(dtype, shape), "second.weight": sample(dtype, (3,), seed=1)}
    blob = tensorfile.dumps(tensors)
    assert blob == tvm_blob(tensors)
    back = tensorfile.loads(blob)
    assert list(back) == list(tensors)
    for name, value in tensors.items():
        assert back[name].dtype == value.dtype
        assert back[name].shape == value.shape
        np.testing.assert_array_equal(back[name], value)


def test_loads_reads_what_tvm_wrote():
    tensors = {f"t{i}": sample(dtype, (2, 2), seed=i) for i, dtype in enumerate(DTYPES)}
    back = tensorfile.loads(tvm_blob(tensors))
    for name, value in tensors.items():
        np.testing.assert_array_equal(back[name], value)
        assert back[name].dtype == value.dtype


def test_non_contiguous_and_big_endian_inputs_are_written_as_little_endian_c_order():
    base = np.arange(12, dtype=">i4").reshape(3, 4)
    view = base.T  # Fortran order, big-endian
    back = tensorfile.loads(tensorfile.dumps({"x": view}))["x"]
    np.testing.assert_array_equal(back, view)
    assert back.dtype == np.dtype("<i4")


def test_save_and_load_files(tmp_path):
    path = tmp_path / "t.bin"
    tensorfile.save(path, {"a": sample("float32", (4,))})
    np.testing.assert_array_equal(tensorfile.load(path)["a"], sample("float32", (4,)))
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(TensorFileError, match=rf"^{empty}: truncated at byte 0"):
        tensorfile.load(empty)


@pytest.fixture(scope="module")
def blob() -> bytes:
    return tensorfile.dumps({"w": sample("float32", (2, 3)), "b": sample("int8", (3,))})


def test_every_truncation_is_an_error_naming_the_offset(blob):
    for cut in range(len(blob)):
        with pytest.raises(TensorFileError, match=r"at byte \d+") as info:
            tensorfile.loads(blob[:cut], where="params.bin")
        assert str(info.value).startswith("params.bin: ")


def test_trailing_bytes_are_an_error(blob):
    with pytest.raises(TensorFileError, match=rf"2 unexpected bytes after the last tensor at byte {len(blob)}"):
        tensorfile.loads(blob + b"\0\0")


def corrupt(blob: bytes, offset: int, fmt: str, value: int) -> bytes:
    data = bytearray(blob)
    struct.pack_into(fmt, data, offset, value)
    return bytes(data)


# Offsets in `blob`: header 24 bytes, names "w" (8+1) and "b" (8+1), count (8) -> tensor 'w' at 50:
# magic +0, reserved +8, device +16, ndim +24, dtype code/bits/lanes +28/+29/+30, shape +32, nbytes +48.
W = 50


@pytest.mark.parametrize("offset,fmt,value,message", [
    (0, "<Q", 0x1234, r"bad magic 0x1234 at byte 0"),
    (16, "<Q", 3, r"name 2 at byte 50"),
    (42, "<Q", 5, r"2 names but 5 tensors \(count at byte 42\)"),
    (W, "<Q", 7, r"tensor 'w' has bad magic 0x7 at byte 50"),
    (W + 28, "<B", 9, r"tensor 'w' has unsupported dtype code=9 .*header at byte 50"),
    (W + 30, "<H", 4, r"tensor 'w' has unsupported dtype .*lanes=4"),
    (W + 24, "<i", 99, r"tensor 'w' has ndim 99 \(header at byte 50\)"),
    (W + 32, "<q", -2, r"tensor 'w' has a negative dimension"),
    (W + 48, "<q", 25, r"tensor 'w' nbytes 25 at byte 98 does not match shape \(2, 3\)"),
    (17, "<B", 0xFF, r"at byte"),
])
def test_corrupt_fields_are_errors_naming_field_and_offset(blob, offset, fmt, value, message):
    with pytest.raises(TensorFileError, match=message):
        tensorfile.loads(corrupt(blob, offset, fmt, value))


def test_name_that_is_not_utf8(blob):
    data = bytearray(blob)
    data[32] = 0xFF  # the single byte of name "w"
    with pytest.raises(TensorFileError, match=r"name 0 at byte 32 is not UTF-8"):
        tensorfile.loads(bytes(data))


def test_random_bit_flips_never_raise_anything_but_tensorfile_errors(blob):
    rng = np.random.default_rng(5)
    for _ in range(300):
        data = bytearray(blob)
        pos = int(rng.integers(len(data)))
        data[pos] ^= 1 << int(rng.integers(8))
        try:
            tensorfile.loads(bytes(data))
        except TensorFileError:
            pass  # a clear error; any other exception type fails the test


@pytest.mark.parametrize("dtype", ["float32", "int8", "bool", "float64"])
def test_aligned_container_puts_every_tensor_at_64_bytes_and_round_trips(dtype):
    tensors = {"a": sample(dtype, (3,)), "bb.weight": sample(dtype, (2, 5, 7), seed=1),
               "s": sample(dtype, ()), "e": sample(dtype, (0,))}
    blob = tensorfile.dumps(tensors, aligned=True)
    assert blob[:8] == b"minrtprm" and struct.unpack_from("<II", blob, 8) == (tensorfile.ALIGNED_VERSION, 0)
    offsets = tensorfile.data_offsets(blob)
    assert list(offsets) == list(tensors) and all(at % 64 == 0 for at in offsets.values())
    # the directory (24 B, then 16 B + the name per tensor), then the data, each padded to 64
    directory = 24 + sum(16 + len(name) for name in tensors)
    assert offsets["a"] == -(-directory // 64) * 64
    assert len(blob) == offsets["e"] == offsets["s"] + 64  # s: 4 B and padding; e: none
    back = tensorfile.loads(blob)
    for name, value in tensors.items():
        np.testing.assert_array_equal(back[name], value.reshape(-1))  # the shape is the graph's
        assert back[name].dtype == value.dtype
    # with the shapes back, and without the padding and with TVM's magic and per-tensor
    # headers, it is TVM's own blob
    shaped = {name: back[name].reshape(value.shape) for name, value in tensors.items()}
    assert tensorfile.dumps(shaped) == tvm_blob(tensors)


def test_aligned_container_errors_name_version_padding_and_size():
    blob = bytearray(tensorfile.dumps({"w": np.arange(3, dtype="float32")}, aligned=True))
    wrong_version = bytes(blob[:8]) + struct.pack("<I", 1) + bytes(blob[12:])
    with pytest.raises(TensorFileError, match="version 1 at byte 8"):
        tensorfile.loads(wrong_version, "p.bin")
    at = tensorfile.data_offsets(bytes(blob))["w"]
    blob[at - 1] = 7
    with pytest.raises(TensorFileError, match="'w': padding at byte"):
        tensorfile.loads(bytes(blob), "p.bin")
    blob[at - 1] = 0
    nbytes_at = 24 + 8 + 1 + 4  # header, name length, "w", dtype
    odd = bytes(blob[:nbytes_at]) + struct.pack("<I", 10) + bytes(blob[nbytes_at + 4:])
    with pytest.raises(TensorFileError, match="'w' nbytes 10 at byte 37 is not a whole number of float32"):
        tensorfile.loads(odd, "p.bin")
    with pytest.raises(TensorFileError, match="truncated at byte 64 in data of tensor 'w'"):
        tensorfile.loads(bytes(blob[:-1]), "p.bin")


def test_a_name_given_twice_is_refused_not_overwritten():
    """Two tensors under one name: loads used to keep the last, so the first vanished without
    a word. Now it is an error naming the name, its two positions and the offset."""
    blob = tensorfile.dumps({"output0": np.zeros(2, np.float32), "outputX": np.ones(3, np.int32)})
    twice = blob.replace(b"outputX", b"output0")
    with pytest.raises(tensorfile.TensorFileError, match=r"tensor name 'output0' appears twice \(names 0 and 1, at byte \d+\)"):
        tensorfile.loads(twice)


def test_raw_tensors_are_named_and_shaped_from_their_specs():
    """The firmware's outputs come raw, in order: from_raw names them as minrt-run does
    (output0, output1, ...) and refuses a blob that does not hold exactly them."""
    specs = [{"dtype": "float32", "shape": [2, 3]}, {"dtype": "int8", "shape": [4]}]
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.arange(4, dtype=np.int8)
    got = tensorfile.from_raw(a.tobytes() + b.tobytes(), specs)
    assert list(got) == ["output0", "output1"]
    np.testing.assert_array_equal(got["output0"], a)
    np.testing.assert_array_equal(got["output1"], b)
    with pytest.raises(tensorfile.TensorFileError, match="end inside tensor 1"):
        tensorfile.from_raw(a.tobytes() + b.tobytes()[:3], specs)
    with pytest.raises(tensorfile.TensorFileError, match="1 bytes after the last of 2 tensors"):
        tensorfile.from_raw(a.tobytes() + b.tobytes() + b"\0", specs)
