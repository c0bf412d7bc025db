"""Decodes V2 REST inference requests (JSON and binary tensor data) and encodes responses.

Binary tensor extension: the body starts with a JSON header of `Inference-Header-Content-Length`
bytes; inputs whose parameters carry `binary_data_size` take their data, in input order, from the
bytes after it. Outputs asked for with `binary_data` (or request `binary_data_output`) are sent
the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from gateway.core import tensors
from gateway.core.datatypes import DataType
from gateway.core.errors import InvalidInputError, UnimplementedError
from gateway.core.types import InferRequest, InferResponse, Tensor

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_CONTENT_TYPE = "application/octet-stream"
JSON_CONTENT_TYPE = "application/json"


@dataclass(frozen=True, slots=True)
class OutputEncoding:
    """How the client wants outputs: binary for all, and per-output overrides. Shared by the
    requests that repeat a header: read only."""

    binary_default: bool = False
    binary: dict[str, bool] | None = None

    def is_binary(self, name: str) -> bool:
        if self.binary and name in self.binary:
            return self.binary[name]
        return self.binary_default


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInputError(f"{what} must be a JSON object")
    return value


def _flag(value: Any, what: str) -> bool:
    """A true/false parameter (null: false); anything else is a mistake, not false."""
    if value is None:
        return False
    if type(value) is not bool:
        raise InvalidInputError(f"{what} must be true or false, got {value!r:.40}")
    return value


def _shape(value: Any, what: str) -> list[int]:
    if type(value) is list:
        for dim in value:
            if type(dim) is not int:  # bool is an int subclass: refused too
                break
        else:
            return value
    raise InvalidInputError(f"{what}: 'shape' must be a list of integers")


_InputPlan = tuple[str, DataType, tuple[int, ...], str, int]
"""One binary input of a checked header: name, datatype, shape, "input '<name>'", size."""


@dataclass(frozen=True, slots=True)
class _Plan:
    """A checked JSON header whose inputs are all binary: everything a request needs but the
    bytes after the header. Shared by the requests that repeat the header: read only."""

    inputs: tuple[_InputPlan, ...]
    requested: tuple[str, ...] | None
    encoding: OutputEncoding
    parameters: dict[str, Any]
    binary_bytes: int
    """The binary part's length when the inputs fill it exactly."""
    fixed_size: bool
    """No input is BYTES: each input's size is its element count times its item size."""


MAX_PLANS = 128
MAX_PLANNED_HEADER_BYTES = 2048
_plans: dict[bytes, _Plan] = {}
"""Plans by the header's bytes, oldest first: clients sending binary tensors repeat their JSON
header request after request. Headers with an id (different every time) are not kept."""


def decode_request(
    body: bytes | bytearray, header_length: str | None, model_name: str, model_version: str
) -> tuple[InferRequest, OutputEncoding]:
    """Parse an inference request body into the domain request and the output encoding."""
    view = memoryview(body)
    if header_length is None:
        json_part, binary_part = view, view[len(view) :]
    else:
        digits = header_length.isascii() and header_length.isdigit() and len(header_length) < 19
        length = int(header_length) if digits else -1
        if length < 0 or length > len(view):
            raise InvalidInputError(
                f"{HEADER_LENGTH} is {header_length!r:.40}, expected an integer between 0 and the "
                f"body length ({len(view)})"
            )
        json_part, binary_part = view[:length], view[length:]
    key = None
    if header_length is not None and len(json_part) <= MAX_PLANNED_HEADER_BYTES:
        key = bytes(json_part)
        plan = _plans.get(key)
        if plan is not None:
            return _from_plan(plan, binary_part, model_name, model_version), plan.encoding
    request, encoding, planned = _decode(
        json_part, binary_part, model_name, model_version, header_length is not None
    )
    if key is not None and planned is not None and not request.id:
        if len(_plans) >= MAX_PLANS:
            del _plans[next(iter(_plans))]
        _plans[key] = _Plan(
            planned,
            None if request.requested_outputs is None else tuple(request.requested_outputs),
            encoding,
            dict(request.parameters),
            binary_bytes=sum(item[4] for item in planned),
            fixed_size=not any(item[1].is_bytes for item in planned),
        )
    return request, encoding


def _binary_tensor(item: _InputPlan, binary_part: memoryview, offset: int) -> Tensor:
    """Input `item`'s tensor from the binary part at `offset` (checked against the body)."""
    name, datatype, shape, what, size = item
    if offset + size > len(binary_part):
        raise InvalidInputError(
            f"{what}: binary_data_size {size} runs past the end of the body "
            f"({len(binary_part) - offset} binary bytes left)"
        )
    array = tensors.from_buffer(what, datatype, shape, binary_part[offset : offset + size])
    return Tensor(name, datatype.name, array)


def _unclaimed(binary_part: memoryview, offset: int) -> None:
    if offset != len(binary_part):
        raise InvalidInputError(
            f"the body has {len(binary_part) - offset} bytes of binary data that no input claims"
        )


def _from_plan(
    plan: _Plan, binary_part: memoryview, model_name: str, model_version: str
) -> InferRequest:
    inputs: list[Tensor] = []
    offset = 0
    if plan.fixed_size and len(binary_part) == plan.binary_bytes:
        # The header was checked when the plan was made: its sizes fill its shapes, and a body
        # of this length holds every input's bytes and nothing more.
        for name, datatype, shape, _, size in plan.inputs:
            count = size // datatype.itemsize
            array = tensors.array_at(binary_part, datatype.numpy_dtype, count, offset)
            inputs.append(Tensor(name, datatype.name, array.reshape(shape)))
            offset += size
    else:  # checked input by input, for the error a client should read
        for item in plan.inputs:
            inputs.append(_binary_tensor(item, binary_part, offset))
            offset += item[4]
        _unclaimed(binary_part, offset)
    return InferRequest(
        model_name=model_name,
        model_version=model_version,
        inputs=inputs,
        requested_outputs=None if plan.requested is None else list(plan.requested),
        parameters=dict(plan.parameters),
    )


def _decode(
    json_part: memoryview,
    binary_part: memoryview,
    model_name: str,
    model_version: str,
    header_length_given: bool,
) -> tuple[InferRequest, OutputEncoding, tuple[_InputPlan, ...] | None]:
    """The request, its output encoding and, when every input is binary, the plan of its
    inputs. Checks in the order a client reads about its mistakes: each input and its data
    in turn, the binary part, then parameters, outputs and id. Messages are built only on
    the way to an error."""
    try:
        document = orjson.loads(json_part)
    except orjson.JSONDecodeError as exc:
        hint = (
            ""
            if header_length_given
            else f" (a body with binary tensor data needs the {HEADER_LENGTH} header: the "
            "length of its JSON part)"
        )
        raise InvalidInputError(f"request body is not valid JSON: {exc}{hint}") from exc
    document = _object(document, "the request")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInputError("the request must have a non-empty 'inputs' list")

    inputs: list[Tensor] = []
    planned: list[_InputPlan] | None = []
    offset = 0
    for index, raw in enumerate(raw_inputs):
        if type(raw) is not dict:
            raise InvalidInputError(f"inputs[{index}] must be a JSON object")
        name = raw.get("name")
        if type(name) is not str or not name:
            raise InvalidInputError(f"inputs[{index}]: 'name' must be a non-empty string")
        datatype_name = raw.get("datatype")
        if type(datatype_name) is not str:
            raise InvalidInputError(f"input '{name}': 'datatype' must be a string")
        what = f"input '{name}'"
        datatype = tensors.lookup_datatype(what, datatype_name)
        shape = _shape(raw.get("shape"), what)
        parameters = raw.get("parameters")
        size = None
        if parameters is not None:  # [] or "" is a mistake, not "no parameters"
            if type(parameters) is not dict:
                raise InvalidInputError(f"{what} 'parameters' must be a JSON object")
            size = parameters.get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0:
                raise InvalidInputError(f"{what}: 'binary_data_size' must be an integer >= 0")
            item = (name, datatype, tuple(shape), what, size)
            inputs.append(_binary_tensor(item, binary_part, offset))
            offset += size
            if planned is not None:
                planned.append(item)
        else:
            data = raw.get("data")
            if not isinstance(data, list):
                raise InvalidInputError(
                    f"{what}: expected 'data' as a list, or 'binary_data_size' in parameters"
                )
            array = tensors.from_list(what, datatype, shape, data)
            inputs.append(Tensor(name, datatype.name, array))
            planned = None
    _unclaimed(binary_part, offset)

    request_parameters = document.get("parameters")
    if request_parameters is None:
        request_parameters = {}
    elif type(request_parameters) is not dict:
        raise InvalidInputError("the request 'parameters' must be a JSON object")
    requested: list[str] | None = None
    binary: dict[str, bool] | None = None
    raw_outputs = document.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise InvalidInputError("'outputs' must be a list")
        requested, binary = [], {}
        for index, raw in enumerate(raw_outputs):
            if type(raw) is not dict:
                raise InvalidInputError(f"outputs[{index}] must be a JSON object")
            name = raw.get("name")
            if type(name) is not str or not name:
                raise InvalidInputError(f"outputs[{index}]: 'name' must be a non-empty string")
            params = raw.get("parameters")
            if params is None:
                requested.append(name)
                continue
            if type(params) is not dict:
                raise InvalidInputError(f"output '{name}' 'parameters' must be a JSON object")
            if params.get("classification"):
                raise UnimplementedError(
                    f"output '{name}': the classification extension is not supported"
                )
            if "binary_data" in params:
                binary[name] = _flag(params["binary_data"], f"output '{name}' 'binary_data'")
            requested.append(name)
        requested = requested or None
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidInputError("'id' must be a string")
    binary_output = request_parameters.get("binary_data_output", False)
    encoding = OutputEncoding(_flag(binary_output, "parameter 'binary_data_output'"), binary)
    request = InferRequest(
        model_name=model_name,
        model_version=model_version,
        inputs=inputs,
        requested_outputs=requested,
        id=request_id,
        parameters=request_parameters,
    )
    return request, encoding, None if planned is None else tuple(planned)


def encode_response(response: InferResponse, encoding: OutputEncoding) -> tuple[bytes, int | None]:
    """The response body and, when it carries binary data, the JSON header's length."""
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes | memoryview] = []
    for tensor in response.outputs:
        datatype = tensors.lookup_datatype(tensor.name, tensor.datatype)
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.array.shape),
        }
        if encoding.is_binary(tensor.name):
            data = tensors.to_buffer(datatype, tensor.array)
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        elif datatype.is_bytes:
            entry["data"] = tensors.to_list(f"output '{tensor.name}'", datatype, tensor.array)
        else:  # orjson writes a flat, native-order, contiguous numpy array directly
            entry["data"] = np.ascontiguousarray(tensor.array.reshape(-1)).astype(
                tensor.array.dtype.newbyteorder("="), copy=False
            )
        outputs.append(entry)
    document: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
    }
    if response.id:
        document["id"] = response.id
    if response.parameters:
        document["parameters"] = response.parameters
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)
