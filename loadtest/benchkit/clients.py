"""Load-generator clients: one per protocol, each sends a pooled request and checks the answer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .rawhttp import RawHttpClient
from .tensors import Feeds, TensorInfo, element_bytes

PROTOCOLS = ("grpc", "http-binary", "http-json")
BINARY_HEADER = "Inference-Header-Content-Length"


@dataclass(frozen=True, slots=True)
class LoadJob:
    """Everything a `_load` subprocess needs; sent to it as JSON on stdin."""

    target: str
    protocol: str
    host: str
    http_port: int
    grpc_port: int
    model: str
    model_version: str
    batched: bool
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    concurrency: int
    warmup_s: float
    duration_s: float
    timeout_s: float
    seed: int
    server_pid: int
    grpc_channels: int = 1
    stats_path: str = ""
    """Triton statistics route to read before and after the window; empty: none."""

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> LoadJob:
        tensors = {k: [TensorInfo(**t) for t in document[k]] for k in ("inputs", "outputs")}
        return cls(**{**document, **tensors})


class BadResponseError(Exception):
    """An answer that is not a success with the expected outputs."""


def expected_shape(info: TensorInfo, batched: bool) -> list[int]:
    """An output's shape in a batch-1 answer; -1 (any size) for its other variable dims."""
    dims = list(info.shape)
    if batched:
        dims[0] = 1
    return dims


def check_outputs(job: LoadJob, got: Mapping[str, tuple[str, Sequence[int]]]) -> None:
    """Every output the model has, with its datatype and batch-1 shape."""
    for expected in job.outputs:
        if expected.name not in got:
            raise BadResponseError(f"output '{expected.name}' missing")
        datatype, shape = got[expected.name]
        want = expected_shape(expected, job.batched)
        matches = len(shape) == len(want) and all(
            w in (-1, s) for w, s in zip(want, shape, strict=True)
        )
        if datatype != expected.datatype or not matches:
            raise BadResponseError(
                f"output '{expected.name}' is {datatype} {list(shape)}, expected "
                f"{expected.datatype} {want}"
            )


class Client(Protocol):
    """One protocol's way of sending request `index` of the pool and checking the answer."""

    async def infer(self, index: int) -> None: ...

    async def close(self) -> None: ...


class GrpcClient:
    """grpc.aio with the generated stubs; inputs in raw_input_contents.

    Workers share `job.grpc_channels` channels (each its own TCP connection), round-robin.
    """

    def __init__(self, job: LoadJob, feeds: list[Feeds]) -> None:
        import grpc

        from gateway.generated import grpc_service_pb2 as pb
        from gateway.generated import grpc_service_pb2_grpc as pb_grpc

        self._job = job
        options = [("grpc.max_receive_message_length", -1), ("grpc.use_local_subchannel_pool", 1)]
        address = f"{job.host}:{job.grpc_port}"
        self._channels = [
            grpc.aio.insecure_channel(address, options=options)
            for _ in range(max(1, min(job.grpc_channels, job.concurrency)))
        ]
        self._stubs = [pb_grpc.GRPCInferenceServiceStub(channel) for channel in self._channels]
        self._requests = [self._request(pb, feed) for feed in feeds]

    def _request(self, pb: Any, feed: Feeds) -> Any:
        request = pb.ModelInferRequest(
            model_name=self._job.model, model_version=self._job.model_version
        )
        for info in self._job.inputs:
            array = feed[info.name]
            request.inputs.add(name=info.name, datatype=info.datatype, shape=array.shape)
            request.raw_input_contents.append(array.tobytes())
        return request

    async def infer(self, index: int) -> None:
        request = self._requests[index % len(self._requests)]
        stub = self._stubs[index % len(self._stubs)]  # worker i sends i, i + C, i + 2C, ...
        response = await stub.ModelInfer(request, timeout=self._job.timeout_s)
        raw = response.raw_output_contents
        got = {o.name: (o.datatype, list(o.shape)) for o in response.outputs}
        check_outputs(self._job, got)
        for i, output in enumerate(response.outputs):
            if i >= len(raw) or len(raw[i]) != element_bytes(output.datatype, output.shape):
                raise BadResponseError(
                    f"output '{output.name}': raw_output_contents has the wrong size"
                )

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


class HttpClient:
    """HTTP/1.1 keep-alive (benchkit.rawhttp), a connection per request in flight; JSON or
    binary tensor extension. Request bytes are built once per pooled row."""

    def __init__(self, job: LoadJob, feeds: list[Feeds], binary: bool) -> None:
        self._job = job
        self._binary = binary
        version = f"/versions/{job.model_version}" if job.model_version else ""
        path = f"/v2/models/{job.model}{version}/infer"
        self._client = RawHttpClient(job.host, job.http_port, job.timeout_s)
        encode = self._binary_body if binary else self._json_body
        self._requests = [
            RawHttpClient.encode("POST", job.host, job.http_port, path, headers, body)
            for body, headers in map(encode, feeds)
        ]

    def _binary_body(self, feed: Feeds) -> tuple[bytes, dict[str, str]]:
        import orjson

        inputs, chunks = [], []
        for info in self._job.inputs:
            data = feed[info.name].tobytes()
            chunks.append(data)
            inputs.append(
                {
                    "name": info.name,
                    "datatype": info.datatype,
                    "shape": list(feed[info.name].shape),
                    "parameters": {"binary_data_size": len(data)},
                }
            )
        header = orjson.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}})
        headers = {
            BINARY_HEADER: str(len(header)),
            "Content-Type": "application/octet-stream",
        }
        return b"".join([header, *chunks]), headers

    def _json_body(self, feed: Feeds) -> tuple[bytes, dict[str, str]]:
        import orjson

        inputs = [
            {
                "name": info.name,
                "datatype": info.datatype,
                "shape": list(feed[info.name].shape),
                "data": feed[info.name].ravel().tolist(),
            }
            for info in self._job.inputs
        ]
        return orjson.dumps({"inputs": inputs}), {"Content-Type": "application/json"}

    async def infer(self, index: int) -> None:
        answer = await self._client.send(self._requests[index % len(self._requests)])
        if answer.status != 200:
            raise BadResponseError(f"HTTP {answer.status}: {answer.body[:200]!r}")
        length = answer.headers.get(BINARY_HEADER.lower())
        self._check(answer.body, None if length is None else int(length))

    def _check(self, payload: bytes, header_length: int | None) -> None:
        import orjson

        header = payload if header_length is None else payload[:header_length]
        outputs = orjson.loads(header)["outputs"]
        got = {o["name"]: (o["datatype"], o["shape"]) for o in outputs}
        check_outputs(self._job, got)
        binary_bytes = 0
        for output in outputs:
            size = (output.get("parameters") or {}).get("binary_data_size")
            if self._binary and size is None:
                raise BadResponseError(f"output '{output['name']}' is not binary")
            if size is not None:
                if size != element_bytes(output["datatype"], output["shape"]):
                    raise BadResponseError(f"output '{output['name']}': binary_data_size is wrong")
                binary_bytes += size
            elif np.asarray(output["data"]).size != np.prod(output["shape"]):
                raise BadResponseError(f"output '{output['name']}': data does not match its shape")
        if binary_bytes != len(payload) - len(header):
            raise BadResponseError("binary data does not add up to the body length")

    async def close(self) -> None:
        await self._client.close()


def make_client(job: LoadJob, feeds: list[Feeds]) -> Client:
    if job.protocol == "grpc":
        return GrpcClient(job, feeds)
    if job.protocol in ("http-binary", "http-json"):
        return HttpClient(job, feeds, binary=job.protocol == "http-binary")
    raise SystemExit(f"bench: unknown protocol {job.protocol}")
