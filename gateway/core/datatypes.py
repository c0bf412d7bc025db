"""The Open Inference Protocol tensor datatypes and their numpy equivalents."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class DataType:
    """One protocol datatype: its wire name, numpy dtype and fixed element size (0 for BYTES)."""

    name: str
    numpy_dtype: np.dtype[np.generic]
    itemsize: int

    @property
    def is_bytes(self) -> bool:
        return self.name == "BYTES"


def _fixed(name: str, dtype: str) -> DataType:
    # Little-endian explicitly: the protocol's raw and binary encodings are little-endian.
    np_dtype = np.dtype(dtype)
    if np_dtype.itemsize > 1:
        np_dtype = np_dtype.newbyteorder("<")
    return DataType(name, np_dtype, np_dtype.itemsize)


DATATYPES: dict[str, DataType] = {
    dt.name: dt
    for dt in (
        _fixed("BOOL", "bool"),
        _fixed("UINT8", "uint8"),
        _fixed("UINT16", "uint16"),
        _fixed("UINT32", "uint32"),
        _fixed("UINT64", "uint64"),
        _fixed("INT8", "int8"),
        _fixed("INT16", "int16"),
        _fixed("INT32", "int32"),
        _fixed("INT64", "int64"),
        _fixed("FP16", "float16"),
        _fixed("FP32", "float32"),
        _fixed("FP64", "float64"),
        DataType("BYTES", np.dtype(object), 0),
    )
}
