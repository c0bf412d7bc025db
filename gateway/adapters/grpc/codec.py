"""Converts ModelInferRequest/ModelInferResponse messages to and from the domain types."""

from __future__ import annotations

from typing import Any

from gateway.core import tensors
from gateway.core.datatypes import DataType
from gateway.core.errors import InvalidInputError, UnimplementedError
from gateway.core.types import InferRequest, InferResponse, Tensor
from gateway.generated import grpc_service_pb2 as pb

# The typed `contents` field that carries each datatype (FP16 has none: raw contents only).
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_ALL_CONTENTS_FIELDS = frozenset(CONTENTS_FIELD.values())


def parameter_value(parameter: Any) -> Any:
    which = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, which) if which else None


def _parameters(message: Any) -> dict[str, Any]:
    return {key: parameter_value(value) for key, value in message.parameters.items()}


def _typed_contents(what: str, tensor: Any, datatype: DataType) -> list[Any]:
    contents = tensor.contents
    present = [field.name for field, _ in contents.ListFields()]
    expected = CONTENTS_FIELD.get(datatype.name)
    if expected is None:
        raise InvalidInputError(
            f"{what}: {datatype.name} has no typed contents field; send it in raw_input_contents"
        )
    wrong = [name for name in present if name != expected]
    if wrong:
        raise InvalidInputError(
            f"{what}: datatype {datatype.name} expects contents.{expected}, got contents.{wrong[0]}"
        )
    return list(getattr(contents, expected))


def decode_request(message: Any) -> InferRequest:
    """Decode a ModelInferRequest; raw contents become arrays without a copy."""
    if not message.model_name:
        raise InvalidInputError("model_name is required")
    if not message.inputs:
        raise InvalidInputError("the request has no inputs")
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InvalidInputError(
            f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs; "
            "when raw contents are used every input must have one, in input order"
        )
    inputs: list[Tensor] = []
    for index, tensor in enumerate(message.inputs):
        if not tensor.name:
            raise InvalidInputError(f"inputs[{index}]: name is required")
        what = f"input '{tensor.name}'"
        datatype = tensors.lookup_datatype(what, tensor.datatype)
        shape = list(tensor.shape)
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInputError(
                    f"{what}: has both contents and raw_input_contents; use one"
                )
            array = tensors.from_buffer(what, datatype, shape, raw[index])
        else:
            values = _typed_contents(what, tensor, datatype)
            array = tensors.from_list(what, datatype, shape, values)
        inputs.append(Tensor(tensor.name, datatype.name, array))
    requested: list[str] | None = None
    if message.outputs:
        requested = []
        for output in message.outputs:
            if "classification" in output.parameters:
                raise UnimplementedError(
                    f"output '{output.name}': the classification extension is not supported"
                )
            requested.append(output.name)
    return InferRequest(
        model_name=message.model_name,
        model_version=message.model_version,
        inputs=inputs,
        requested_outputs=requested,
        id=message.id,
        parameters=_parameters(message),
    )


def _set_parameter(target: Any, value: Any) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = str(value)


def encode_response(response: InferResponse) -> Any:
    """Encode outputs as raw_output_contents (what tritonclient and perf_analyzer expect)."""
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    for tensor in response.outputs:
        datatype = tensors.lookup_datatype(tensor.name, tensor.datatype)
        message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.array.shape)
        message.raw_output_contents.append(tensors.to_bytes(datatype, tensor.array))
    for key, value in response.parameters.items():
        _set_parameter(message.parameters[key], value)
    return message


StreamCaller = tuple[str, str, str]
"""What a stream's error answer repeats of its request: model name, version and id."""


def stream_caller(request: Any) -> StreamCaller:
    """Kept for the answer instead of the request itself, whose tensors may be megabytes."""
    return (
        getattr(request, "model_name", ""),
        getattr(request, "model_version", ""),
        getattr(request, "id", ""),
    )


def stream_answer(response: InferResponse) -> Any:
    """A ModelStreamInferResponse carrying the answer."""
    return pb.ModelStreamInferResponse(infer_response=encode_response(response))


def stream_error(caller: StreamCaller, error: str) -> Any:
    """A ModelStreamInferResponse carrying the error, with the request's model and id."""
    model_name, model_version, request_id = caller
    return pb.ModelStreamInferResponse(
        error_message=error,
        infer_response=pb.ModelInferResponse(
            model_name=model_name, model_version=model_version, id=request_id
        ),
    )
