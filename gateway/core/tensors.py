"""Turn protocol tensor payloads (raw little-endian buffers, JSON lists) into numpy and back.

Shared by both adapters: the gRPC `raw_input_contents` and the HTTP binary tensor extension use
the same encoding, and typed gRPC `contents` and JSON `data` are both lists of values.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.core.datatypes import DATATYPES, DataType
from gateway.core.errors import InvalidInputError

_LEN = struct.Struct("<I")


def lookup_datatype(tensor: str, name: str) -> DataType:
    datatype = DATATYPES.get(name)
    if datatype is None:
        raise InvalidInputError(
            f"{tensor}: unknown datatype '{name}', expected one of {', '.join(DATATYPES)}"
        )
    return datatype


MAX_RANK = 32
"""Most dimensions a tensor may have (numpy's own limit is 64)."""
MAX_DIM = 2**40
"""Largest single dimension: far beyond any real tensor, far below numpy's index limits."""


def element_count(tensor: str, shape: Sequence[int]) -> int:
    """The number of elements a shape holds; rejects negative, absurd and too many dims."""
    if len(shape) > MAX_RANK:
        raise InvalidInputError(
            f"{tensor}: shape has {len(shape)} dimensions, expected at most {MAX_RANK}"
        )
    count = span = 1
    for dim in shape:  # one pass; the error names the first problem in the same order as ever
        if dim < 0 or dim > MAX_DIM:
            break
        count *= dim
        span *= dim or 1  # numpy refuses [0, 2**40, 2**40] too: its other dims overflow
    else:
        if span > MAX_DIM:
            raise InvalidInputError(
                f"{tensor}: shape {list(shape)} spans more than {MAX_DIM} elements; expected "
                "a real tensor's shape"
            )
        return count
    if any(dim > MAX_DIM for dim in shape):
        raise InvalidInputError(f"{tensor}: shape {list(shape)} has a dimension over {MAX_DIM}")
    raise InvalidInputError(
        f"{tensor}: shape {list(shape)} has a negative dimension; dimensions must be >= 0"
    )


def from_buffer(
    tensor: str, datatype: DataType, shape: Sequence[int], buffer: bytes | memoryview
) -> npt.NDArray[Any]:
    """Decode a raw little-endian buffer into an array of `shape` (no copy for fixed types)."""
    count = element_count(tensor, shape)
    if datatype.is_bytes:
        return _bytes_from_buffer(tensor, count, shape, buffer)
    expected = count * datatype.itemsize
    if len(buffer) != expected:
        raise InvalidInputError(
            f"{tensor}: {len(buffer)} bytes of data do not match shape {list(shape)} of "
            f"{datatype.name} (expected {expected} bytes)"
        )
    return array_at(buffer, datatype.numpy_dtype, count).reshape(shape)


def array_at(
    buffer: bytes | memoryview, dtype: np.dtype[Any], count: int, offset: int = 0
) -> npt.NDArray[Any]:
    """`count` elements of `dtype` at `offset` in `buffer` (which holds them): a view, or a
    copy when they are not aligned for `dtype`."""
    array = np.frombuffer(buffer, dtype, count, offset)
    if not array.flags.aligned:
        # Binary parts follow a JSON header of any length: copy rather than hand onnxruntime
        # a pointer its kernels may not expect. bytes() copies holding the GIL; numpy's copy
        # releases it from 500 elements, and on the event loop every release lets the
        # inference and gRPC threads in and costs a hand-back (measured: 6 us vs 1.3 us for
        # 784 floats, before the other thread's share).
        array = np.frombuffer(bytes(buffer[offset : offset + count * dtype.itemsize]), dtype)
    return array


def _bytes_from_buffer(
    tensor: str, count: int, shape: Sequence[int], buffer: bytes | memoryview
) -> npt.NDArray[Any]:
    view = memoryview(buffer)
    items: list[bytes] = []
    offset, end = 0, len(view)
    while offset < end:
        if offset + 4 > end or len(items) >= count:
            break
        (length,) = _LEN.unpack_from(view, offset)
        offset += 4
        if offset + length > end:
            raise InvalidInputError(
                f"{tensor}: BYTES element {len(items)} claims {length} bytes but only "
                f"{end - offset} remain"
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if len(items) != count or offset != end:
        raise InvalidInputError(
            f"{tensor}: BYTES data does not match shape {list(shape)}: expected {count} "
            "length-prefixed elements filling the buffer exactly"
        )
    array = np.empty(count, dtype=object)
    array[:] = items
    return array.reshape(shape)


_INTEGER_KINDS = frozenset("iu")
"""numpy kinds a JSON list may hold for an integer tensor: true/false are not numbers (as in
Triton), only for BOOL tensors."""


def from_list(
    tensor: str, datatype: DataType, shape: Sequence[int], values: Sequence[Any]
) -> npt.NDArray[Any]:
    """Decode a flat or nested list of JSON-like values into an array of `shape`."""
    count = element_count(tensor, shape)
    if datatype.is_bytes:
        return _bytes_from_list(tensor, count, shape, values)
    try:
        source = np.asarray(values)
    except ValueError as exc:
        raise InvalidInputError(f"{tensor}: data is not a regular (non-ragged) list") from exc
    if source.size != count:
        raise InvalidInputError(
            f"{tensor}: {source.size} data elements do not match shape {list(shape)} "
            f"(expected {count})"
        )
    target = datatype.numpy_dtype
    if target.kind in "iu" and source.dtype.kind not in _INTEGER_KINDS:
        return _integers_beyond_int64(tensor, datatype, shape, values, source)
    _check_kind(tensor, datatype, source)
    if target.kind in "iu" and source.size:
        info = np.iinfo(target)  # type: ignore[type-var]
        if source.min() < info.min or source.max() > info.max:
            raise _out_of_range(tensor, datatype)
    with np.errstate(over="ignore"):
        array = source.astype(target, copy=False)
    narrowed = target.kind == "f" and source.dtype.kind in "iuf" and array.dtype != source.dtype
    if narrowed and not np.array_equal(np.isfinite(array), np.isfinite(source)):
        limit = float(np.finfo(target).max)  # type: ignore[type-var]
        raise InvalidInputError(
            f"{tensor}: values out of range for {datatype.name} (largest {limit:.6g})"
        )
    return array.reshape(shape)


def _integers_beyond_int64(
    tensor: str,
    datatype: DataType,
    shape: Sequence[int],
    values: Sequence[Any],
    source: npt.NDArray[Any],
) -> npt.NDArray[Any]:
    """numpy infers float64 or object for Python ints outside int64 (valid UINT64 values):
    convert from the original ints, which numpy does exactly and with a range check."""
    integral = source.dtype.kind == "O" or (
        source.dtype.kind == "f" and bool(np.all(np.mod(source, 1) == 0))
    )
    if not integral:
        raise InvalidInputError(f"{tensor}: {datatype.name} data must be integers")
    try:
        array = np.array(values, dtype=datatype.numpy_dtype)
    except OverflowError as exc:
        raise _out_of_range(tensor, datatype) from exc
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{tensor}: {datatype.name} data must be integers") from exc
    return array.reshape(shape)


def _out_of_range(tensor: str, datatype: DataType) -> InvalidInputError:
    info = np.iinfo(datatype.numpy_dtype)  # type: ignore[type-var]
    return InvalidInputError(
        f"{tensor}: values out of range for {datatype.name} [{info.min}, {info.max}]"
    )


def _check_kind(tensor: str, datatype: DataType, source: npt.NDArray[Any]) -> None:
    if source.size == 0:
        return
    kind, target = source.dtype.kind, datatype.numpy_dtype.kind
    if target == "b":
        ok = kind == "b"
        expected = "true/false values"
    elif target in "iu":
        ok = kind in _INTEGER_KINDS
        expected = "integers"
    else:
        ok = kind in "iuf"
        expected = "numbers"
    if not ok:
        raise InvalidInputError(f"{tensor}: {datatype.name} data must be {expected}")


def _bytes_from_list(
    tensor: str, count: int, shape: Sequence[int], values: Sequence[Any]
) -> npt.NDArray[Any]:
    flat = _flatten(values)
    if len(flat) != count:
        raise InvalidInputError(
            f"{tensor}: {len(flat)} data elements do not match shape {list(shape)} "
            f"(expected {count})"
        )
    array = np.empty(count, dtype=object)
    for i, item in enumerate(flat):
        if isinstance(item, str):
            array[i] = item.encode()
        elif isinstance(item, bytes):
            array[i] = item
        else:
            raise InvalidInputError(f"{tensor}: BYTES data must be strings")
    return array.reshape(shape)


def _flatten(values: Sequence[Any]) -> list[Any]:
    flat: list[Any] = []
    stack = [iter(values)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def to_buffer(datatype: DataType, array: npt.NDArray[Any]) -> bytes | memoryview:
    """The raw protocol encoding without a copy where numpy allows (a view of the array)."""
    if datatype.is_bytes:
        return to_bytes(datatype, array)
    contiguous = np.ascontiguousarray(array, dtype=datatype.numpy_dtype)
    return contiguous.data.cast("B")


def to_bytes(datatype: DataType, array: npt.NDArray[Any]) -> bytes:
    """Encode an array in the raw protocol encoding (little-endian; BYTES length-prefixed)."""
    if datatype.is_bytes:
        parts: list[bytes] = []
        for item in array.reshape(-1):
            data = item.encode() if isinstance(item, str) else bytes(item)
            parts.append(_LEN.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=datatype.numpy_dtype).tobytes()


def to_list(tensor: str, datatype: DataType, array: npt.NDArray[Any]) -> list[Any]:
    """Encode a BYTES array as a flat list of JSON strings (numeric arrays go to orjson as is)."""
    out: list[Any] = []
    for item in array.reshape(-1):
        if isinstance(item, str):
            out.append(item)
            continue
        try:
            out.append(bytes(item).decode())
        except UnicodeDecodeError as exc:
            raise InvalidInputError(
                f"{tensor}: output holds bytes that are not UTF-8 and cannot be sent as JSON; "
                "ask for it with binary data"
            ) from exc
    return out
