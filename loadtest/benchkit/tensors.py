"""Tensor descriptions, datatype tables and the random input rows every load sends."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

POOL_ROWS = 256
"""Distinct random rows per input; requests cycle through them."""
NUMPY_DTYPES: dict[str, str] = {
    "BOOL": "bool",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}
ORT_TYPES: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
}

Feeds = dict[str, npt.NDArray[Any]]


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """A tensor as V2 model metadata describes it: -1 marks a variable dimension."""

    name: str
    datatype: str
    shape: list[int]


def concrete_shape(info: TensorInfo, batch: int, batched: bool) -> list[int]:
    """The shape of `batch` rows: batch size first when the model batches, 1 for other -1 dims."""
    dims = [1 if d < 0 else d for d in info.shape]
    if batched:
        dims[0] = batch
    return dims


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    name = NUMPY_DTYPES.get(datatype)
    if name is None:
        raise SystemExit(f"bench: tensors of datatype {datatype} are not supported")
    return np.dtype(name)


def random_array(rng: np.random.Generator, datatype: str, shape: list[int]) -> npt.NDArray[Any]:
    dtype = numpy_dtype(datatype)
    if datatype == "BOOL":
        return rng.random(shape) < 0.5
    if datatype.startswith("FP"):
        return rng.random(shape, dtype=np.float64).astype(dtype)  # like pixel values in [0, 1)
    return rng.integers(0, 16, size=shape).astype(dtype)


def random_feeds(inputs: Sequence[TensorInfo], batch: int, batched: bool, seed: int) -> list[Feeds]:
    """POOL_ROWS random rows per input (fixed seed), grouped into feeds of `batch` rows."""
    rng = np.random.default_rng(seed)
    count = max(1, POOL_ROWS // batch)
    return [
        {t.name: random_array(rng, t.datatype, concrete_shape(t, batch, batched)) for t in inputs}
        for _ in range(count)
    ]


def element_bytes(datatype: str, shape: Sequence[int]) -> int:
    """Bytes of a tensor of this datatype and shape."""
    return int(np.prod(shape, dtype=np.int64)) * numpy_dtype(datatype).itemsize
