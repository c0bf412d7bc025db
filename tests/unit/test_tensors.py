"""The protocol tensor encodings: raw little-endian buffers, length-prefixed BYTES, JSON lists."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from gateway.core import tensors
from gateway.core.datatypes import DATATYPES
from gateway.core.errors import InvalidInputError

FP32, BYTES, INT8, UINT64 = (DATATYPES[n] for n in ("FP32", "BYTES", "INT8", "UINT64"))


def test_raw_buffer_decodes_without_copy() -> None:
    data = np.arange(6, dtype="<f4").tobytes()
    array = tensors.from_buffer("x", FP32, [2, 3], data)
    assert array.shape == (2, 3) and array.dtype == np.float32
    assert not array.flags.owndata
    assert tensors.to_bytes(FP32, array) == data


def test_big_endian_arrays_are_encoded_little_endian() -> None:
    array = np.arange(3, dtype=">f4")
    assert tensors.to_bytes(FP32, array) == np.arange(3, dtype="<f4").tobytes()


@pytest.mark.parametrize(
    ("shape", "size", "fragment"),
    [
        ([2, 3], 20, "expected 24 bytes"),
        ([2, -3], 24, "negative dimension"),
        ([1, 10**12], 24, "expected 4000000000000 bytes"),
    ],
)
def test_raw_buffer_size_must_match_shape(shape: list[int], size: int, fragment: str) -> None:
    with pytest.raises(InvalidInputError, match=fragment):
        tensors.from_buffer("x", FP32, shape, bytes(size))


def test_bytes_round_trip_and_truncation() -> None:
    items = [b"", b"abc", "\u00e9".encode()]
    encoded = tensors.to_bytes(BYTES, np.array(items, dtype=object))
    assert tensors.from_buffer("s", BYTES, [3], encoded).tolist() == items
    with pytest.raises(InvalidInputError, match="claims 2 bytes but only 1 remain"):
        tensors.from_buffer("s", BYTES, [3], encoded[:-1])
    with pytest.raises(InvalidInputError, match="expected 2 length-prefixed"):
        tensors.from_buffer("s", BYTES, [2], encoded)
    with pytest.raises(InvalidInputError, match="expected 4 length-prefixed"):
        tensors.from_buffer("s", BYTES, [4], encoded + struct.pack("<I", 0)[:2])


def test_json_lists() -> None:
    assert tensors.from_list("x", FP32, [2, 2], [[1, 2], [3, 4.5]]).tolist() == [[1, 2], [3, 4.5]]
    assert tensors.from_list("x", UINT64, [2], [2**64 - 1, 0]).tolist() == [2**64 - 1, 0]
    assert tensors.from_list("s", BYTES, [2], ["a", "b"]).tolist() == [b"a", b"b"]
    for values, fragment in [
        ([1, 2, 3], "3 data elements do not match shape"),
        ([[1, 2], [3]], "not a regular"),
        (["1", "2", "3", "4"], "must be numbers"),
    ]:
        with pytest.raises(InvalidInputError, match=fragment):
            tensors.from_list("x", FP32, [2, 2], values)
    with pytest.raises(InvalidInputError, match=r"out of range for INT8 \[-128, 127\]"):
        tensors.from_list("x", INT8, [2], [1, 300])
    with pytest.raises(InvalidInputError, match="must be integers"):
        tensors.from_list("x", INT8, [2], [1, 1.5])
    with pytest.raises(InvalidInputError, match="must be integers"):
        tensors.from_list("x", UINT64, [2], [2**64 - 1, 1.5])
    with pytest.raises(InvalidInputError, match="must be integers"):
        tensors.from_list("x", INT8, [2], [1, None])
    with pytest.raises(InvalidInputError, match="out of range for UINT64"):
        tensors.from_list("x", UINT64, [2], [2**64, 1])
    for datatype in (INT8, UINT64):  # true/false are not integers (UINT64 crashed on them)
        with pytest.raises(InvalidInputError, match="must be integers"):
            tensors.from_list("x", datatype, [2], [True, False])
    with pytest.raises(InvalidInputError, match="must be numbers"):
        tensors.from_list("x", FP32, [1], [True])


def test_json_floats_that_overflow_the_datatype_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="out of range for FP32"):
        tensors.from_list("x", FP32, [2], [1.0, 1e39])
    with pytest.raises(InvalidInputError, match="out of range for FP16"):
        tensors.from_list("x", DATATYPES["FP16"], [1], [1e6])


def test_misaligned_binary_parts_are_copied_to_aligned_memory() -> None:
    data = b"x" + np.arange(4, dtype="<f8").tobytes()
    array = tensors.from_buffer("x", DATATYPES["FP64"], [4], memoryview(data)[1:])
    assert array.flags.aligned
    assert array.tolist() == [0.0, 1.0, 2.0, 3.0]
