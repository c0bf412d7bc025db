"""Raw HTTP and gRPC callers for the admin API (load, unload, labels), with or without a token."""

from __future__ import annotations

import http.client
from dataclasses import dataclass
from typing import Any

import grpc
import orjson

from gateway.generated import gateway_service_pb2 as gateway_pb
from gateway.generated import gateway_service_pb2_grpc as gateway_grpc
from gateway.generated import grpc_service_pb2 as pb
from gateway.generated import grpc_service_pb2_grpc as pb_grpc

TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    body: Any
    """The decoded JSON body (None when the body is not JSON)."""
    raw: bytes

    @property
    def error(self) -> str:
        assert isinstance(self.body, dict) and isinstance(self.body.get("error"), str), self.raw
        return str(self.body["error"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def http_call(
    address: str,
    method: str,
    path: str,
    body: bytes | dict[str, Any] | list[Any] | None = None,
    headers: dict[str, str] | None = None,
) -> HttpAnswer:
    """One request with the path sent exactly as given (no normalisation or re-encoding)."""
    host, port = address.rsplit(":", 1)
    payload = body if isinstance(body, bytes | None) else orjson.dumps(body)
    connection = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT_S)
    try:
        connection.request(method, path, body=payload, headers=headers or {})
        response = connection.getresponse()
        raw = response.read()
        status = response.status
    finally:
        connection.close()
    try:
        document = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        document = None
    return HttpAnswer(status, document, raw)


class GrpcAdmin:
    """Both gRPC services of the gateway over one channel; every call returns its response or
    raises grpc.RpcError."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.triton = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.gateway = gateway_grpc.GatewayServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    @staticmethod
    def _metadata(token: str | None) -> tuple[tuple[str, str], ...]:
        return () if token is None else (("authorization", f"Bearer {token}"),)

    def load(
        self,
        name: str,
        token: str | None = None,
        parameters: dict[str, pb.ModelRepositoryParameter] | None = None,
    ) -> Any:
        request = pb.RepositoryModelLoadRequest(model_name=name, parameters=parameters or {})
        return self.triton.RepositoryModelLoad(
            request, metadata=self._metadata(token), timeout=TIMEOUT_S
        )

    def unload(self, name: str, token: str | None = None) -> Any:
        request = pb.RepositoryModelUnloadRequest(model_name=name)
        return self.triton.RepositoryModelUnload(
            request, metadata=self._metadata(token), timeout=TIMEOUT_S
        )

    def index(self, ready: bool = False) -> Any:
        return self.triton.RepositoryIndex(
            pb.RepositoryIndexRequest(ready=ready), timeout=TIMEOUT_S
        )

    def labels(self, model: str) -> dict[str, str]:
        response = self.gateway.GetLabels(
            gateway_pb.GetLabelsRequest(model=model), timeout=TIMEOUT_S
        )
        return dict(response.labels)

    def set_label(self, model: str, label: str, version: str, token: str | None = None) -> Any:
        request = gateway_pb.SetLabelRequest(model=model, label=label, version=version)
        return self.gateway.SetLabel(request, metadata=self._metadata(token), timeout=TIMEOUT_S)

    def delete_label(self, model: str, label: str, token: str | None = None) -> Any:
        request = gateway_pb.DeleteLabelRequest(model=model, label=label)
        return self.gateway.DeleteLabel(request, metadata=self._metadata(token), timeout=TIMEOUT_S)


def grpc_status(call: Any, *args: Any, **kwargs: Any) -> tuple[grpc.StatusCode, str]:
    """The status code and details `call(*args, **kwargs)` ends with (OK and '' on success)."""
    try:
        call(*args, **kwargs)
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""
