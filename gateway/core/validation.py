"""Checks a decoded request against a version's signature before any work is queued."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy.typing as npt

from gateway.core.errors import InvalidInputError, clipped
from gateway.core.model import ModelSignature
from gateway.core.types import InferRequest

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def is_valid_model_name(name: str) -> bool:
    """Model names never contain path separators or '..', so nothing outside the repository
    is ever read for a name taken from a request."""
    return bool(MODEL_NAME.fullmatch(name)) and ".." not in name


MAX_VERSION_DIGITS = 19
"""Versions are int64s, as in Triton: longer digit strings name no version (and Python refuses
to convert over 4,300 digits)."""


def parse_version(text: str) -> int | None:
    """The number `text` writes in ASCII digits, or None (a label, or no int64)."""
    if len(text) <= MAX_VERSION_DIGITS and text.isascii() and text.isdigit():
        return int(text)
    return None


def version_number(value: object, where: str) -> int:
    """A version number as a client wrote it in JSON ("2" or 2); 400 naming `where` if not."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    number = parse_version(text) if isinstance(text, str) else None
    if number is None or number < 1:
        raise InvalidInputError(f"{where} must be a version number, got {value!r:.40}")
    return number


def bounded_number(value: object, where: str, low: float, high: float) -> float:
    """A finite JSON number within [low, high]; 400 naming `where` if not."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInputError(f"{where} must be a number, got {value!r:.40}")
    if not low <= value <= high:
        raise InvalidInputError(f"{where} must be between {low:g} and {high:g}, got {value}")
    return float(value)


def check_model_name(name: str) -> None:
    if not is_valid_model_name(name):
        raise InvalidInputError(
            f"invalid model name {clipped(name)!r}: expected up to 128 letters, digits, '_', '.' "
            "or '-', starting with a letter or digit, without '..'"
        )


def validate_request(
    request: InferRequest, signature: ModelSignature
) -> tuple[dict[str, npt.NDArray[Any]], list[str], int]:
    """Return (feeds by input name, output names to compute, batch size or 0 if unbatched)."""
    feeds: dict[str, npt.NDArray[Any]] = {}
    batch_size = 0
    batch_from = ""
    for tensor in request.inputs:
        name = tensor.name
        if name in feeds:
            raise InvalidInputError(
                f"input '{clipped(name)}' appears more than once in the request"
            )
        spec = signature.inputs_by_name.get(name)
        if spec is None:
            expected = ", ".join(f"'{t.name}'" for t in signature.inputs)
            raise InvalidInputError(
                f"unexpected input '{clipped(name)}' for model '{request.model_name}'; "
                f"expected inputs: {expected}"
            )
        if tensor.datatype != spec.datatype:
            raise InvalidInputError(
                f"input '{name}': datatype {tensor.datatype} does not match the model, "
                f"expected {spec.datatype}"
            )
        shape = tensor.array.shape
        expected_shape = signature.input_shapes[name]
        fits = len(shape) == len(expected_shape)
        if fits:
            for axis, size in signature.input_fixed_dims[name]:
                if shape[axis] != size:
                    fits = False
                    break
        if not fits:
            raise InvalidInputError(
                f"input '{name}': shape {list(shape)} does not match the model, "
                f"expected {list(expected_shape)}"
            )
        if signature.batched:
            rows = shape[0]
            if rows < 1 or rows > signature.max_batch_size:
                raise InvalidInputError(
                    f"input '{name}': batch size {rows} is outside [1, "
                    f"{signature.max_batch_size}] (max_batch_size of model "
                    f"'{request.model_name}')"
                )
            if batch_size and rows != batch_size:
                raise InvalidInputError(
                    f"inputs disagree on batch size: '{batch_from}' has {batch_size} rows, "
                    f"'{name}' has {rows}"
                )
            batch_size, batch_from = rows, name
        feeds[name] = tensor.array
    if len(feeds) != len(signature.inputs):
        missing = [t.name for t in signature.inputs if t.name not in feeds]
        raise InvalidInputError(
            f"missing input(s) {', '.join(repr(m) for m in missing)} for model "
            f"'{request.model_name}'"
        )
    return feeds, _output_names(request, signature), batch_size


def _output_names(request: InferRequest, signature: ModelSignature) -> list[str]:
    if request.requested_outputs is None:
        return list(signature.output_names)
    seen: set[str] = set()
    for name in request.requested_outputs:
        if name not in signature.outputs_by_name:
            expected = ", ".join(f"'{t.name}'" for t in signature.outputs)
            raise InvalidInputError(
                f"unknown output '{clipped(name)}' requested from model '{request.model_name}'; "
                f"expected outputs: {expected}"
            )
        if name in seen:
            raise InvalidInputError(f"output '{clipped(name)}' is requested more than once")
        seen.add(name)
    return list(request.requested_outputs)
