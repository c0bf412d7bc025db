"""Every class of bad request, on both protocols, sent with raw clients so it can be malformed.

Each case checks the status (DESIGN.md section 8), that HTTP answers `application/json` with
`{"error": "..."}`, and that the message names the offending input and what was expected.
The last tests check that the server still answers a correct request after all of this.
"""

from __future__ import annotations

import contextlib
import gc
import http.client
import json
import math
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import grpc
import numpy as np
import pytest

from gateway.adapters.grpc.server import GRPC_STATUS
from gateway.adapters.http.errors import HTTP_STATUS, gateway_error_response
from gateway.core.errors import ErrorCode, OverloadedError
from gateway.generated import grpc_service_pb2 as pb
from gateway.generated import grpc_service_pb2_grpc as pb_grpc
from tests.support.server import RunningGateway

S = grpc.StatusCode

# DESIGN.md section 8, transcribed: the tables in the adapters must match this one.
DESIGN_TABLE: dict[ErrorCode, tuple[int, grpc.StatusCode]] = {
    ErrorCode.INVALID_ARGUMENT: (400, S.INVALID_ARGUMENT),
    ErrorCode.NOT_FOUND: (404, S.NOT_FOUND),
    ErrorCode.PAYLOAD_TOO_LARGE: (413, S.RESOURCE_EXHAUSTED),
    ErrorCode.OVERLOADED: (429, S.RESOURCE_EXHAUSTED),
    ErrorCode.UNAVAILABLE: (503, S.UNAVAILABLE),
    ErrorCode.DEADLINE_EXCEEDED: (504, S.DEADLINE_EXCEEDED),
    ErrorCode.UNIMPLEMENTED: (501, S.UNIMPLEMENTED),
    ErrorCode.UNAUTHENTICATED: (401, S.UNAUTHENTICATED),
    ErrorCode.PERMISSION_DENIED: (403, S.PERMISSION_DENIED),
    ErrorCode.INTERNAL: (500, S.INTERNAL),
}
INVALID, NOT_FOUND, UNIMPLEMENTED = (
    ErrorCode.INVALID_ARGUMENT,
    ErrorCode.NOT_FOUND,
    ErrorCode.UNIMPLEMENTED,
)
INFER = "/inference.GRPCInferenceService/ModelInfer"
TIMEOUT_S = 10
NP_DTYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}  # fmt: skip


# -- requests, independent of the protocol ----------------------------------------------------


@dataclass(frozen=True)
class In:
    """One input tensor; `data` defaults to zeros filling `shape` (when that is small)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: tuple[Any, ...] | None = None

    def values(self) -> list[Any]:
        if self.data is not None:
            return list(self.data)
        count = math.prod(self.shape)
        assert 0 <= count <= 1024, "give explicit data for unusual shapes"
        return [b"x" if self.datatype == "BYTES" else 0] * count


@dataclass(frozen=True)
class Out:
    name: str
    parameters: tuple[tuple[str, Any], ...] = ()


def simple_inputs(rows: int = 1) -> list[In]:
    return [In("INPUT0", "INT32", (rows, 16)), In("INPUT1", "INT32", (rows, 16))]


def i0(*shape: int, data: Sequence[Any] | None = None, datatype: str = "INT32") -> In:
    return In("INPUT0", datatype, shape, None if data is None else tuple(data))


I1 = In("INPUT1", "INT32", (1, 16))
VERSIONED = [In("X", "FP32", (1, 4))]
RESHAPE_BAD = [In("DATA", "FP32", (4,), (1, 2, 3, 4)), In("SHAPE", "INT64", (2,), (3, 3))]

# (model, version, inputs, requested outputs, error, fragments the message must contain)
SHARED_CASES = [
    pytest.param("no_such_model", "", simple_inputs(), None, NOT_FOUND, ["no_such_model"],
                 id="unknown-model"),
    pytest.param("simple", "7", simple_inputs(), None, NOT_FOUND, ["version", "7"],
                 id="unknown-version"),
    pytest.param("simple", "latest", simple_inputs(), None, NOT_FOUND, ["latest"],
                 id="non-numeric-version"),
    pytest.param("simple", "-1", simple_inputs(), None, NOT_FOUND, ["-1"],
                 id="negative-version"),
    pytest.param("simple", "\u00b2", simple_inputs(), None, NOT_FOUND, ["\u00b2"],
                 id="superscript-digit-version"),
    pytest.param("versioned", "1", VERSIONED, None, NOT_FOUND, ["1", "versioned"],
                 id="version-on-disk-not-served"),
    # Values a client chose are quoted cut short: past 4,300 digits Python refuses to convert,
    # and a gRPC status message past 16 KiB is refused by the client's own library.
    pytest.param("simple", "1" * 5000, simple_inputs(), None, NOT_FOUND,
                 ["version", "(5000 characters)"], id="version-of-5000-digits"),
    pytest.param("m" * 5000, "", simple_inputs(), None, NOT_FOUND, ["(5000 characters)"],
                 id="model-name-of-5000-characters"),
    pytest.param("simple", "", [*simple_inputs(), In("I" * 20000, "INT32", (1, 16))], None,
                 INVALID, ["(20000 characters)", "expected inputs: 'INPUT0', 'INPUT1'"],
                 id="input-name-of-20000-characters"),
    pytest.param("simple", "", simple_inputs(), [Out("O" * 20000)], INVALID,
                 ["(20000 characters)", "expected outputs"], id="output-name-of-20000-characters"),
    pytest.param("versioned_specific", "2", VERSIONED, None, NOT_FOUND, ["2"],
                 id="version-not-in-specific-policy"),
    pytest.param("simple", "", [i0(1, 16)], None, INVALID, ["INPUT1", "missing"],
                 id="missing-input"),
    pytest.param("simple", "", [i0(1, 16), i0(1, 16), I1], None, INVALID,
                 ["INPUT0", "more than once"], id="duplicate-input"),
    pytest.param("simple", "", [*simple_inputs(), In("INPUT2", "INT32", (1, 16))], None,
                 INVALID, ["INPUT2", "expected"], id="unknown-input"),
    pytest.param("simple", "", [i0(1, 16, datatype="FP32"), I1], None, INVALID,
                 ["INPUT0", "expected INT32"], id="wrong-datatype"),
    pytest.param("simple", "", [i0(1, 16, datatype="INT33"), I1], None, INVALID,
                 ["INPUT0", "INT33", "expected"], id="unknown-datatype"),
    pytest.param("simple", "", [i0(1, 16, datatype="int32"), I1], None, INVALID,
                 ["INPUT0", "int32", "expected"], id="lowercase-datatype"),
    pytest.param("simple", "", [i0(16), I1], None, INVALID, ["INPUT0", "expected [-1, 16]"],
                 id="wrong-rank"),
    pytest.param("simple", "", [i0(1, 15), I1], None, INVALID, ["INPUT0", "expected [-1, 16]"],
                 id="wrong-non-batch-dim"),
    pytest.param("fixed", "", [In("X", "FP32", (3, 2))], None, INVALID, ["X", "expected [2, 3]"],
                 id="wrong-fixed-dims"),
    pytest.param("fixed", "", [In("X", "FP32", (1, 2, 3))], None, INVALID,
                 ["X", "expected [2, 3]"], id="batch-dim-on-unbatched-model"),
    pytest.param("simple", "", [i0(-1, 16, data=range(16)), I1], None, INVALID,
                 ["INPUT0", "negative"], id="negative-dim"),
    pytest.param("simple", "", [i0(1, 10**12, data=range(16)), I1], None, INVALID,
                 ["INPUT0", "expected"], id="absurd-dims"),
    pytest.param("simple", "", [i0(2**40, 2**40, 2**40, data=range(16)), I1], None, INVALID,
                 ["INPUT0", "expected"], id="absurd-dims-overflowing-int64"),
    pytest.param("simple", "", [i0(0, 2**62, data=()), I1], None, INVALID, ["INPUT0", "shape"],
                 id="absurd-dims-with-zero-elements"),
    pytest.param("simple", "", [i0(0, 2**40, 2**40, data=()), I1], None, INVALID,
                 ["INPUT0", "spans more than"], id="zero-elements-spanning-too-much"),  # was 500
    pytest.param("simple", "", [i0(*[1] * 100, data=[0]), I1], None, INVALID, ["INPUT0"],
                 id="more-dims-than-numpy-allows"),
    pytest.param("simple", "", [i0(1, 16, data=range(15)), I1], None, INVALID,
                 ["INPUT0", "expected"], id="too-few-elements"),
    pytest.param("simple", "", [i0(2, 16, data=range(16)), I1], None, INVALID,
                 ["INPUT0", "expected"], id="too-few-rows"),
    pytest.param("simple", "", [i0(1, 16, data=range(17)), I1], None, INVALID,
                 ["INPUT0", "expected"], id="too-many-elements"),
    pytest.param("simple", "", simple_inputs(9), None, INVALID,
                 ["INPUT0", "batch size 9", "max_batch_size"], id="batch-over-max"),
    pytest.param("simple", "", simple_inputs(0), None, INVALID, ["INPUT0", "batch size 0"],
                 id="batch-size-zero"),
    pytest.param("simple", "", [i0(2, 16), In("INPUT1", "INT32", (3, 16))], None, INVALID,
                 ["INPUT0", "INPUT1", "batch size"], id="inputs-disagree-on-batch"),
    pytest.param("simple", "", simple_inputs(), [Out("OUTPUT9")], INVALID,
                 ["OUTPUT9", "expected outputs"], id="unknown-output"),
    pytest.param("simple", "", simple_inputs(), [Out("OUTPUT0"), Out("OUTPUT0")], INVALID,
                 ["OUTPUT0", "more than once"], id="duplicate-output"),
    pytest.param("simple", "", simple_inputs(), [Out("OUTPUT0", (("classification", 2),))],
                 UNIMPLEMENTED, ["OUTPUT0", "classification"], id="classification-output"),
    pytest.param("reshape", "", RESHAPE_BAD, None, INVALID, ["reshape", "{3,3}"],
                 id="runtime-failure-depends-on-values"),
    # Two faults: an input's data is checked before the outputs, on both protocols.
    pytest.param("simple", "", [i0(1, 16, data=[1]), I1],
                 [Out("OUTPUT0", (("classification", 2),))], INVALID, ["INPUT0"],
                 id="bad-data-and-classification-output"),
]  # fmt: skip


# -- HTTP -------------------------------------------------------------------------------------


@dataclass
class HttpAnswer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def error(self) -> str:
        """The message of a well-formed error answer (asserts the form)."""
        content_type = self.headers.get("Content-Type", "")
        assert content_type.split(";")[0].strip() == "application/json", content_type
        document = json.loads(self.body)
        assert isinstance(document, dict), document
        assert set(document) == {"error"}, document
        assert isinstance(document["error"], str), document
        assert document["error"], document
        return document["error"]


def http_call(
    server: RunningGateway,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> HttpAnswer:
    host, port = server.http_url.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT_S)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return HttpAnswer(response.status, response.headers, response.read())
    finally:
        connection.close()


def infer_path(model: str, version: str = "") -> str:
    if version:
        return f"/v2/models/{quote(model)}/versions/{quote(version)}/infer"
    return f"/v2/models/{quote(model)}/infer"


def http_infer(
    server: RunningGateway,
    body: Any,
    *,
    model: str = "simple",
    version: str = "",
    binary: bytes = b"",
    header_length: str | None = None,
) -> HttpAnswer:
    header = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if binary and header_length is None:
        header_length = str(len(header))
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = header_length
        headers["Content-Type"] = "application/octet-stream"
    return http_call(server, "POST", infer_path(model, version), header + binary, headers)


def json_input(tensor: In) -> dict[str, Any]:
    values = [v.decode() if isinstance(v, bytes) else v for v in tensor.values()]
    return {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape),
            "data": values}  # fmt: skip


def json_request(inputs: Sequence[In], outputs: Sequence[Out] | None = None) -> dict[str, Any]:
    document: dict[str, Any] = {"inputs": [json_input(t) for t in inputs]}
    if outputs is not None:
        document["outputs"] = [
            {"name": o.name, **({"parameters": dict(o.parameters)} if o.parameters else {})}
            for o in outputs
        ]
    return document


def assert_http_error(answer: HttpAnswer, error: ErrorCode, fragments: Sequence[str]) -> str:
    message = answer.error()
    assert answer.status == DESIGN_TABLE[error][0], (answer.status, message)
    for fragment in fragments:
        assert fragment.lower() in message.lower(), (fragment, message)
    return message


@pytest.mark.parametrize(("model", "version", "inputs", "outputs", "error", "fragments"),
                         SHARED_CASES)  # fmt: skip
def test_http_shared_case(
    server: RunningGateway,
    model: str,
    version: str,
    inputs: list[In],
    outputs: list[Out] | None,
    error: ErrorCode,
    fragments: list[str],
) -> None:
    answer = http_infer(server, json_request(inputs, outputs), model=model, version=version)
    assert_http_error(answer, error, fragments)


def _inp(name: str, datatype: str, shape: list[Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, **extra}


def _binary(name: str, datatype: str, shape: list[Any], size: Any) -> dict[str, Any]:
    return _inp(name, datatype, shape, parameters={"binary_data_size": size})


I0_JSON = json_input(In("INPUT0", "INT32", (1, 16)))
I1_JSON = json_input(I1)
I0_BINARY = _binary("INPUT0", "INT32", [1, 16], 64)
I1_BINARY = _binary("INPUT1", "INT32", [1, 16], 64)
ZEROS_64 = bytes(64)
LEN = struct.Struct("<I")


def bytes_body(*items: bytes) -> bytes:
    return b"".join(LEN.pack(len(item)) + item for item in items)


def only_i0(**extra: Any) -> dict[str, Any]:
    return {"inputs": [{**I0_JSON, **extra}, I1_JSON]}


def all_types(datatype: str, data: list[Any]) -> dict[str, Any]:
    return {"inputs": [_inp(f"IN_{datatype}", datatype, [1, 3], data=data)]}


def nested(depth: int) -> list[Any]:
    value: list[Any] = [0] * 16
    for _ in range(depth):
        value = [value]
    return value


# (model, body (bytes or JSON document), binary part, header length, fragments); all are 400.
HTTP_ONLY_CASES = [
    pytest.param("simple", b'{"inputs": [', b"", None, ["JSON"], id="malformed-json"),
    pytest.param("simple", b"", b"", None, ["JSON"], id="empty-body"),
    pytest.param("simple", b'{"inputs": []} trailing', b"", None, ["JSON"],
                 id="json-trailing-garbage"),
    pytest.param("simple", b"\xff\xfe{}", b"", None, ["JSON"], id="body-not-utf8"),
    pytest.param("simple", b"[" * 5000 + b"]" * 5000, b"", None, [], id="json-nested-too-deep"),
    pytest.param("simple", [], b"", None, ["object"], id="json-list-not-object"),
    pytest.param("simple", "inputs", b"", None, ["object"], id="json-string-not-object"),
    pytest.param("simple", None, b"", None, ["object"], id="json-null-not-object"),
    pytest.param("simple", {}, b"", None, ["inputs"], id="no-inputs-key"),
    pytest.param("simple", {"inputs": []}, b"", None, ["inputs"], id="inputs-empty"),
    pytest.param("simple", {"inputs": I0_JSON}, b"", None, ["inputs", "list"],
                 id="inputs-not-a-list"),
    pytest.param("simple", {"inputs": ["INPUT0"]}, b"", None, ["inputs[0]", "object"],
                 id="input-not-an-object"),
    pytest.param("simple", {"inputs": [{**I0_JSON, "name": 3}]}, b"", None,
                 ["inputs[0]", "name"], id="input-name-not-a-string"),
    pytest.param("simple", only_i0(datatype=32), b"", None, ["INPUT0", "datatype"],
                 id="datatype-not-a-string"),
    pytest.param("simple", only_i0(shape="1,16"), b"", None, ["INPUT0", "list of integers"],
                 id="shape-a-string"),
    pytest.param("simple", only_i0(shape=[1.0, 16]), b"", None, ["INPUT0", "list of integers"],
                 id="shape-floats"),
    pytest.param("simple", only_i0(shape=[True, 16]), b"", None, ["INPUT0", "list of integers"],
                 id="shape-bools"),
    pytest.param("simple", only_i0(shape=[[1], 16]), b"", None, ["INPUT0", "list of integers"],
                 id="shape-nested"),
    pytest.param("simple", only_i0(shape=None), b"", None, ["INPUT0", "list of integers"],
                 id="shape-missing"),
    pytest.param("simple", only_i0(data=None), b"", None, ["INPUT0", "data"],
                 id="data-missing"),
    pytest.param("simple", only_i0(data="0" * 16), b"", None, ["INPUT0", "data"],
                 id="data-a-string"),
    pytest.param("simple", only_i0(data=[[0] * 8, [0] * 9]), b"", None, ["INPUT0", "regular"],
                 id="data-ragged"),
    pytest.param("simple", only_i0(data=nested(100)), b"", None, ["INPUT0"],
                 id="data-nested-deeper-than-numpy"),
    pytest.param("simple", only_i0(data=[0.5] * 16), b"", None, ["INPUT0", "integers"],
                 id="floats-for-int32"),
    pytest.param("simple", only_i0(data=[None] * 16), b"", None, ["INPUT0", "integers"],
                 id="nulls-for-int32"),
    pytest.param("simple", only_i0(data=[{"a": 1}] * 16), b"", None, ["INPUT0", "integers"],
                 id="objects-for-int32"),
    pytest.param("simple", only_i0(data=[2**31] + [0] * 15), b"", None, ["INPUT0", "range"],
                 id="int32-out-of-range"),
    pytest.param("all_types", all_types("INT8", [1, 2, 300]), b"", None, ["IN_INT8", "range"],
                 id="int8-above-range"),
    pytest.param("all_types", all_types("INT8", [1, 2, -129]), b"", None, ["IN_INT8", "range"],
                 id="int8-below-range"),
    pytest.param("all_types", all_types("UINT8", [1, 2, -1]), b"", None, ["IN_UINT8", "range"],
                 id="uint8-negative"),
    pytest.param("all_types", all_types("INT64", [2**63, 0, 0]), b"", None, ["IN_INT64", "range"],
                 id="int64-above-range"),
    pytest.param("all_types", all_types("UINT64", [2**64, 0, 0]), b"", None, ["IN_UINT64"],
                 id="uint64-above-range"),
    pytest.param("all_types", all_types("BOOL", [0, 1, 2]), b"", None, ["IN_BOOL", "true/false"],
                 id="ints-for-bool"),
    pytest.param("all_types", all_types("BYTES", [1, 2, 3]), b"", None, ["IN_BYTES", "strings"],
                 id="numbers-for-bytes"),
    pytest.param("simple_fp32", {"inputs": [_inp("INPUT0", "FP32", [1, 16], data=["a"] * 16),
                                            _inp("INPUT1", "FP32", [1, 16], data=[0] * 16)]},
                 b"", None, ["INPUT0", "numbers"], id="strings-for-fp32"),
    pytest.param("simple", {"inputs": [_binary("INPUT0", "INT32", [1, 16], 60), I1_JSON]},
                 bytes(60), None, ["INPUT0", "expected"], id="binary-size-not-matching-shape"),
    pytest.param("simple", {"inputs": [I0_BINARY, I1_BINARY]}, ZEROS_64, None,
                 ["INPUT1", "binary_data_size"], id="binary-size-past-end-of-body"),
    pytest.param("simple", {"inputs": [_binary("INPUT0", "INT32", [1, 16], -64), I1_JSON]},
                 ZEROS_64, None, ["INPUT0", "binary_data_size"], id="binary-size-negative"),
    pytest.param("simple", {"inputs": [_binary("INPUT0", "INT32", [1, 16], "64"), I1_JSON]},
                 ZEROS_64, None, ["INPUT0", "binary_data_size"], id="binary-size-a-string"),
    pytest.param("simple", {"inputs": [I0_BINARY, I1_JSON]}, ZEROS_64 + b"x", None,
                 ["1 bytes", "no input claims"], id="binary-data-left-over"),
    pytest.param("simple", {"inputs": [I0_JSON, I1_JSON]}, ZEROS_64, None, ["no input claims"],
                 id="binary-data-no-input-claims"),
    pytest.param("all_types", {"inputs": [_binary("IN_BYTES", "BYTES", [1, 3], 7)]},
                 LEN.pack(10) + b"abc", None, ["IN_BYTES", "10 bytes"],
                 id="bytes-element-longer-than-data"),
    pytest.param("all_types", {"inputs": [_binary("IN_BYTES", "BYTES", [1, 3], 7)]},
                 bytes_body(b"a") + b"\x01\x00", None, ["IN_BYTES", "expected 3"],
                 id="bytes-truncated-length-prefix"),
    pytest.param("all_types", {"inputs": [_binary("IN_BYTES", "BYTES", [1, 3], 10)]},
                 bytes_body(b"a", b"b"), None, ["IN_BYTES", "expected 3"],
                 id="bytes-too-few-elements"),
    pytest.param("simple", {"inputs": [I0_BINARY, I1_JSON]}, ZEROS_64, "100000",
                 ["Inference-Header-Content-Length"], id="header-length-past-end-of-body"),
    pytest.param("simple", {"inputs": [I0_BINARY, I1_JSON]}, ZEROS_64, "abc",
                 ["Inference-Header-Content-Length", "integer"], id="header-length-not-integer"),
    pytest.param("simple", {"inputs": [I0_BINARY, I1_JSON]}, ZEROS_64, "-1",
                 ["Inference-Header-Content-Length"], id="header-length-negative"),
    pytest.param("simple", {"inputs": [I0_BINARY, I1_JSON]}, ZEROS_64, "10",
                 ["JSON"], id="header-length-too-short"),
    pytest.param("simple", json.dumps({"inputs": [I0_BINARY, I1_JSON]}).encode() + ZEROS_64, b"",
                 None, ["not valid JSON", "needs the Inference-Header-Content-Length header"],
                 id="binary-data-without-header-length"),
    pytest.param("simple", {"inputs": [I0_BINARY, I1_JSON]}, ZEROS_64, "+10",
                 ["Inference-Header-Content-Length", "integer"], id="header-length-with-a-sign"),
    pytest.param("simple", {**only_i0(), "parameters": {"binary_data_output": "true"}}, b"", None,
                 ["binary_data_output", "true or false"], id="binary-data-output-a-string"),
    pytest.param("simple", {**only_i0(), "outputs": [{"name": "OUTPUT0",
                                                      "parameters": {"binary_data": "yes"}}]},
                 b"", None, ["OUTPUT0", "binary_data", "true or false"],
                 id="output-binary-data-a-string"),
    pytest.param("all_types", all_types("UINT64", [True, False, True]), b"", None,
                 ["IN_UINT64", "integers"], id="bools-for-uint64"),
    pytest.param("simple_fp32", {"inputs": [_inp("INPUT0", "FP32", [1, 16], data=[True] * 16),
                                            _inp("INPUT1", "FP32", [1, 16], data=[0] * 16)]},
                 b"", None, ["INPUT0", "numbers"], id="bools-for-fp32"),
    pytest.param("simple", {**only_i0(), "outputs": {"name": "OUTPUT0"}}, b"", None,
                 ["outputs", "list"], id="outputs-not-a-list"),
    pytest.param("simple", {**only_i0(), "outputs": [{}]}, b"", None, ["outputs[0]", "name"],
                 id="output-without-name"),
    pytest.param("simple", {**only_i0(), "parameters": [1]}, b"", None, ["parameters", "object"],
                 id="parameters-not-an-object"),
    pytest.param("simple", {**only_i0(), "id": 7}, b"", None, ["id", "string"],
                 id="id-not-a-string"),
    pytest.param("simple", {**only_i0(), "parameters": []}, b"", None, ["parameters", "object"],
                 id="parameters-an-empty-list"),
    pytest.param("simple", only_i0(parameters=""), b"", None, ["INPUT0", "parameters", "object"],
                 id="input-parameters-an-empty-string"),
    pytest.param("simple", {**only_i0(), "outputs": [{"name": "OUTPUT0", "parameters": []}]},
                 b"", None, ["OUTPUT0", "parameters", "object"], id="output-parameters-a-list"),
]  # fmt: skip


@pytest.mark.parametrize(("model", "body", "binary", "header_length", "fragments"),
                         HTTP_ONLY_CASES)  # fmt: skip
def test_http_only_case(
    server: RunningGateway,
    model: str,
    body: Any,
    binary: bytes,
    header_length: str | None,
    fragments: list[str],
) -> None:
    answer = http_infer(server, body, model=model, binary=binary, header_length=header_length)
    assert_http_error(answer, INVALID, fragments)


def test_http_request_over_limit_is_refused_before_the_body_is_read(
    server: RunningGateway,
) -> None:
    """Only the headers and 1 KiB of a 2 MiB body are sent: the 413 must come anyway."""
    declared = 2 * 1024 * 1024
    host, port = server.http_url.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT_S)
    try:
        connection.putrequest("POST", infer_path("simple"))
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(declared))
        connection.endheaders(message_body=b" " * 1024)
        response = connection.getresponse()  # times out if the server waits for the body
        answer = HttpAnswer(response.status, response.headers, response.read())
        # Only now send the rest, so the server's lingering read of the body ends at once.
        with contextlib.suppress(OSError):
            connection.send(b" " * (declared - 1024))
    finally:
        connection.close()
    assert_http_error(answer, ErrorCode.PAYLOAD_TOO_LARGE, [str(declared), "limit"])


def test_http_chunked_request_over_limit(server: RunningGateway) -> None:
    """Without a Content-Length the limit still holds once the body passes it."""
    chunks = iter([b" " * (256 * 1024)] * 5)
    host, port = server.http_url.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT_S)
    try:
        connection.request(
            "POST", infer_path("simple"), body=chunks, encode_chunked=True,
            headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        )  # fmt: skip
        response = connection.getresponse()
        answer = HttpAnswer(response.status, response.headers, response.read())
    finally:
        connection.close()
    assert_http_error(answer, ErrorCode.PAYLOAD_TOO_LARGE, ["limit"])


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/no_such_route"),
        ("GET", "/v3"),
        ("POST", "/v2/models/simple/infer/extra"),
        ("GET", "/"),
    ],
)
def test_http_unknown_route(server: RunningGateway, method: str, path: str) -> None:
    answer = http_call(server, method, path)
    assert answer.status == 404
    assert answer.error()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v2/systemsharedmemory/region/r/unregister"),
        ("GET", "/v2/systemsharedmemory/status"),
        ("POST", "/v2/cudasharedmemory/region/r/register"),
        ("GET", "/v2/trace/setting"),
        ("GET", "/v2/logging"),
    ],
)
def test_http_triton_extensions_not_implemented_answer_501(
    server: RunningGateway, method: str, path: str
) -> None:
    answer = http_call(server, method, path, b"{}" if method == "POST" else None)
    assert_http_error(answer, ErrorCode.UNIMPLEMENTED, ["not implemented", path])


def test_http_body_that_cannot_be_decompressed_is_a_400(server: RunningGateway) -> None:
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    answer = http_call(server, "POST", infer_path("simple"), b"not gzip at all", headers)
    assert_http_error(answer, ErrorCode.INVALID_ARGUMENT, ["cannot be read"])


WRONG_METHODS = [
    ("GET", "/v2/models/simple/infer", "POST"),
    ("PUT", "/v2/models/simple/versions/1/infer", "POST"),
    ("POST", "/v2/health/ready", "GET"),
    ("DELETE", "/v2/models/simple", "GET"),
]


@pytest.mark.parametrize(("method", "path", "allowed"), WRONG_METHODS)
def test_http_wrong_method(server: RunningGateway, method: str, path: str, allowed: str) -> None:
    answer = http_call(server, method, path)
    assert answer.status == 405
    assert answer.error()


@pytest.mark.parametrize(("method", "path", "allowed"), WRONG_METHODS)
def test_http_wrong_method_says_what_is_allowed(
    server: RunningGateway, method: str, path: str, allowed: str
) -> None:
    """RFC 9110 section 15.5.6: a 405 MUST carry an Allow header listing the methods."""
    answer = http_call(server, method, path)
    assert answer.status == 405
    assert allowed in answer.headers.get("Allow", ""), dict(answer.headers)


METADATA_NOT_FOUND = [
    pytest.param("no_such_model", "", "", ["no_such_model"], id="metadata-unknown-model"),
    pytest.param("simple", "9", "", ["9"], id="metadata-unknown-version"),
    pytest.param("simple", "9", "/config", ["9"], id="config-unknown-version"),
    pytest.param("versioned", "1", "/config", ["1"], id="config-version-not-served"),
    pytest.param("simple", "\u00b2", "", ["\u00b2"], id="metadata-superscript-digit-version"),
    pytest.param("simple", "9" * 5000, "/ready", [], id="ready-version-of-5000-digits"),
    pytest.param(
        "simple", "9" * 5000, "/config", ["(5000 characters)"], id="config-version-of-5000-digits"
    ),
    pytest.param("no_such_model", "", "/ready", [], id="ready-unknown-model"),
]


@pytest.mark.parametrize(("model", "version", "suffix", "fragments"), METADATA_NOT_FOUND)
def test_http_metadata_not_found(
    server: RunningGateway, model: str, version: str, suffix: str, fragments: list[str]
) -> None:
    path = f"/v2/models/{quote(model)}"
    if version:
        path += f"/versions/{quote(version)}"
    answer = http_call(server, "GET", path + suffix)
    assert_http_error(answer, NOT_FOUND, fragments)


# -- gRPC -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def channel(server: RunningGateway) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_url) as opened:
        yield opened


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(channel)


def raw_bytes(tensor: In) -> bytes:
    values = tensor.values()
    if tensor.datatype == "BYTES":
        return bytes_body(*values)
    dtype = NP_DTYPES.get(tensor.datatype, np.int32)  # unknown datatypes: any bytes will do
    return np.asarray(values, dtype=dtype).astype(np.dtype(dtype).newbyteorder("<")).tobytes()


def grpc_request(
    model: str,
    version: str,
    inputs: Sequence[In],
    outputs: Sequence[Out] | None = None,
) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name=model, model_version=version)
    for tensor in inputs:
        message.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        message.raw_input_contents.append(raw_bytes(tensor))
    for output in outputs or ():
        requested = message.outputs.add(name=output.name)
        for key, value in output.parameters:
            requested.parameters[key].int64_param = value
    return message


def grpc_error(call: Any, *args: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, timeout=TIMEOUT_S)
    return caught.value


def assert_grpc_error(
    error: grpc.RpcError, code: grpc.StatusCode, fragments: Sequence[str]
) -> None:
    details = error.details() or ""  # type: ignore[attr-defined]
    assert error.code() == code, (error.code(), details)  # type: ignore[attr-defined]
    assert details, "the status carries no message"
    for fragment in fragments:
        assert fragment.lower() in details.lower(), (fragment, details)


@pytest.mark.parametrize(("model", "version", "inputs", "outputs", "error", "fragments"),
                         SHARED_CASES)  # fmt: skip
def test_grpc_shared_case(
    stub: pb_grpc.GRPCInferenceServiceStub,
    model: str,
    version: str,
    inputs: list[In],
    outputs: list[Out] | None,
    error: ErrorCode,
    fragments: list[str],
) -> None:
    request = grpc_request(model, version, inputs, outputs)
    assert_grpc_error(grpc_error(stub.ModelInfer, request), DESIGN_TABLE[error][1], fragments)


@pytest.mark.parametrize(("model", "version", "suffix", "fragments"), METADATA_NOT_FOUND)
def test_grpc_metadata_not_found(
    stub: pb_grpc.GRPCInferenceServiceStub,
    model: str,
    version: str,
    suffix: str,
    fragments: list[str],
) -> None:
    rpc, message = {
        "": (stub.ModelMetadata, pb.ModelMetadataRequest),
        "/config": (stub.ModelConfig, pb.ModelConfigRequest),
        "/ready": (stub.ModelReady, pb.ModelReadyRequest),
    }[suffix]
    error = grpc_error(rpc, message(name=model, version=version))
    assert_grpc_error(error, S.NOT_FOUND, fragments)


def typed(model: str, *tensors: tuple[str, str, list[int], dict[str, list[Any]]]) -> Any:
    """A request with typed contents: (name, datatype, shape, {contents field: values})."""
    message = pb.ModelInferRequest(model_name=model)
    for name, datatype, shape, contents in tensors:
        tensor = message.inputs.add(name=name, datatype=datatype, shape=shape)
        for field, values in contents.items():
            getattr(tensor.contents, field).extend(values)
    return message


def with_raw(message: Any, *raw: bytes) -> Any:
    message.raw_input_contents.extend(raw)
    return message


T_I0 = ("INPUT0", "INT32", [1, 16], {"int_contents": [0] * 16})
T_I1 = ("INPUT1", "INT32", [1, 16], {"int_contents": [0] * 16})
SIMPLE_RAW = grpc_request("simple", "", simple_inputs())


def raw_count(count: int) -> Any:
    message = pb.ModelInferRequest()
    message.CopyFrom(SIMPLE_RAW)
    del message.raw_input_contents[:]
    message.raw_input_contents.extend([ZEROS_64] * count)
    return message


def all_types_raw(datatype: str, raw: bytes) -> Any:
    message = pb.ModelInferRequest(model_name="all_types")
    message.inputs.add(name=f"IN_{datatype}", datatype=datatype, shape=[1, 3])
    message.raw_input_contents.append(raw)
    return message


# (request message, fragments); all are INVALID_ARGUMENT.
GRPC_ONLY_CASES = [
    pytest.param(pb.ModelInferRequest(model_name="simple"), ["inputs"], id="no-inputs"),
    pytest.param(typed("simple", ("INPUT0", "INT32", [1, 16], {"fp32_contents": [0.0] * 16}),
                       T_I1), ["INPUT0", "int_contents", "fp32_contents"],
                 id="fp32-contents-for-int32"),
    pytest.param(typed("simple", ("INPUT0", "INT32", [1, 16],
                                  {"int_contents": [0] * 16, "int64_contents": [0] * 16}), T_I1),
                 ["INPUT0", "int64_contents"], id="two-contents-fields"),
    pytest.param(typed("simple", ("INPUT0", "INT32", [1, 16], {"int_contents": [0] * 15}), T_I1),
                 ["INPUT0", "expected"], id="typed-contents-too-short"),
    pytest.param(typed("simple", ("INPUT0", "INT32", [1, 16], {}), T_I1),
                 ["INPUT0", "expected"], id="typed-contents-empty"),
    pytest.param(typed("all_types", ("IN_INT8", "INT8", [1, 3], {"int_contents": [1, 2, 300]})),
                 ["IN_INT8", "range"], id="int8-contents-out-of-range"),
    pytest.param(typed("all_types", ("IN_UINT16", "UINT16", [1, 3],
                                     {"uint_contents": [1, 2, 70000]})),
                 ["IN_UINT16", "range"], id="uint16-contents-out-of-range"),
    pytest.param(typed("all_types", ("IN_FP16", "FP16", [1, 3], {"fp32_contents": [1.0] * 3})),
                 ["IN_FP16", "raw_input_contents"], id="fp16-typed-contents"),
    pytest.param(typed("all_types", ("IN_BYTES", "BYTES", [1, 3],
                                     {"bytes_contents": [b"a", b"b"]})),
                 ["IN_BYTES", "expected 3"], id="bytes-contents-too-few"),
    pytest.param(raw_count(1), ["raw_input_contents", "1", "2"], id="raw-contents-fewer"),
    pytest.param(raw_count(3), ["raw_input_contents", "3", "2"], id="raw-contents-more"),
    pytest.param(with_raw(typed("simple", T_I0, T_I1), ZEROS_64, ZEROS_64),
                 ["INPUT0", "raw_input_contents"], id="contents-and-raw-contents"),
    pytest.param(all_types_raw("FP16", bytes(5)), ["IN_FP16", "expected 6 bytes"],
                 id="fp16-raw-wrong-length"),
    pytest.param(all_types_raw("BYTES", LEN.pack(10) + b"abc"), ["IN_BYTES", "10 bytes"],
                 id="bytes-element-longer-than-data"),
    pytest.param(all_types_raw("BYTES", bytes_body(b"a") + b"\x01\x00"),
                 ["IN_BYTES", "expected 3"], id="bytes-truncated-length-prefix"),
    pytest.param(all_types_raw("BYTES", bytes_body(b"a", b"b", b"c", b"d")),
                 ["IN_BYTES", "expected 3"], id="bytes-too-many-elements"),
]  # fmt: skip


@pytest.mark.parametrize(("request_message", "fragments"), GRPC_ONLY_CASES)
def test_grpc_only_case(
    stub: pb_grpc.GRPCInferenceServiceStub, request_message: Any, fragments: list[str]
) -> None:
    assert_grpc_error(grpc_error(stub.ModelInfer, request_message), S.INVALID_ARGUMENT, fragments)


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"\x0a\x05ab", id="truncated-string"),
        pytest.param(b"\x0f", id="invalid-wire-type"),
        pytest.param(b"\xff" * 11, id="overlong-varint-tag"),
        pytest.param(b"\x0a\x02\xff\xfe", id="model-name-not-utf8"),
    ],
)
def test_grpc_malformed_protobuf(channel: grpc.Channel, garbage: bytes) -> None:
    call = channel.unary_unary(INFER, request_serializer=None, response_deserializer=None)
    assert_grpc_error(grpc_error(call, garbage), S.INVALID_ARGUMENT, [])


def test_grpc_message_over_limit(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = with_raw(pb.ModelInferRequest(model_name="simple"), bytes(2 * 1024 * 1024))
    request.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 512 * 1024])
    assert_grpc_error(grpc_error(stub.ModelInfer, request), S.RESOURCE_EXHAUSTED, ["larger"])


@pytest.mark.parametrize(
    ("rpc", "request_message"),
    [
        ("TraceSetting", pb.TraceSettingRequest()),
        ("SystemSharedMemoryStatus", pb.SystemSharedMemoryStatusRequest()),
        ("LogSettings", pb.LogSettingsRequest()),
        ("CudaSharedMemoryStatus", pb.CudaSharedMemoryStatusRequest()),
    ],
)
def test_grpc_unimplemented_rpc_answers_at_once(
    stub: pb_grpc.GRPCInferenceServiceStub, rpc: str, request_message: Any
) -> None:
    method = getattr(stub, rpc)
    with pytest.raises(grpc.RpcError) as caught:
        if rpc == "ModelStreamInfer":
            list(method(iter([request_message]), timeout=TIMEOUT_S))
        else:
            method(request_message, timeout=TIMEOUT_S)
    assert_grpc_error(caught.value, S.UNIMPLEMENTED, [rpc])


def test_grpc_unknown_method(channel: grpc.Channel) -> None:
    call = channel.unary_unary("/inference.GRPCInferenceService/NoSuchMethod")
    assert_grpc_error(grpc_error(call, b""), S.UNIMPLEMENTED, [])


# -- the tables -------------------------------------------------------------------------------


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.name)
def test_status_tables_cover_every_code_as_designed(code: ErrorCode) -> None:
    assert set(HTTP_STATUS) == set(ErrorCode)
    assert set(GRPC_STATUS) == set(ErrorCode)
    assert (HTTP_STATUS[code], GRPC_STATUS[code]) == DESIGN_TABLE[code]


def test_overloaded_answer_carries_retry_after() -> None:
    response = gateway_error_response(OverloadedError("queue full", retry_after_s=2.5))
    assert response.status == 429
    assert response.headers["Retry-After"] == "3"
    assert response.content_type == "application/json"


# -- after all of the above, the server still answers correctly (keep these last) -------------

A = list(range(16))
B = [1] * 16


def test_http_still_serves_after_bad_input(server: RunningGateway) -> None:
    inputs = [In("INPUT0", "INT32", (1, 16), tuple(A)), In("INPUT1", "INT32", (1, 16), tuple(B))]
    answer = http_infer(server, json_request(inputs))
    assert answer.status == 200, answer.body
    outputs = {o["name"]: o for o in json.loads(answer.body)["outputs"]}
    assert outputs["OUTPUT0"]["data"] == [a + b for a, b in zip(A, B, strict=True)]
    assert outputs["OUTPUT1"]["data"] == [a - b for a, b in zip(A, B, strict=True)]
    assert outputs["OUTPUT0"]["shape"] == [1, 16]


def test_grpc_still_serves_after_bad_input(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    inputs = [In("INPUT0", "INT32", (1, 16), tuple(A)), In("INPUT1", "INT32", (1, 16), tuple(B))]
    response = stub.ModelInfer(grpc_request("simple", "", inputs), timeout=TIMEOUT_S)
    got = {
        output.name: np.frombuffer(raw, dtype="<i4").reshape(list(output.shape))
        for output, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }
    np.testing.assert_array_equal(got["OUTPUT0"], [np.add(A, B)])
    np.testing.assert_array_equal(got["OUTPUT1"], [np.subtract(A, B)])
    assert response.model_version == "1"


def test_a_refused_grpc_call_leaves_no_reference_cycle(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    """A refused call's request must be freed when the call ends, not when the garbage
    collector next runs: with the collector's young threshold at 10,000 (gateway/app/heap.py),
    cycles holding 1.6 MB requests grew the server by 500 MB under a flood of refused calls."""
    message = pb.ModelInferRequest(model_name="all_types")
    message.inputs.add(name="IN_FP32", datatype="FP64", shape=[1, 3])  # the wrong datatype
    message.raw_input_contents.append(b"\0" * 24)
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(5):
            assert_grpc_error(grpc_error(stub.ModelInfer, message), S.INVALID_ARGUMENT, [])
        gc.collect()
        left = [o for o in gc.garbage if isinstance(o, pb.ModelInferRequest)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert left == []


def test_a_refused_streamed_request_leaves_no_reference_cycle(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    """As above, for requests refused inside a ModelStreamInfer stream: each is answered with
    its error, and neither the request nor its call is left in a cycle."""
    message = pb.ModelInferRequest(model_name="all_types", id="refused")
    message.inputs.add(name="IN_FP32", datatype="FP64", shape=[1, 3])  # the wrong datatype
    message.raw_input_contents.append(b"\0" * 24)
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        answers = list(stub.ModelStreamInfer(iter([message] * 5), timeout=TIMEOUT_S))
        gc.collect()
        left = [o for o in gc.garbage if isinstance(o, pb.ModelInferRequest)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert len(answers) == 5 and all("IN_FP32" in a.error_message for a in answers)
    assert left == []
