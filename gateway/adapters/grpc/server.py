"""The grpc.aio servicer for inference.GRPCInferenceService and its one error-translation point."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from gateway.adapters.feedback import accuracy_dict, result_dict
from gateway.adapters.grpc import codec
from gateway.adapters.metadata import (
    model_config_dict,
    model_metadata_dict,
    repository_index_list,
    server_metadata_dict,
    statistics_dict,
)
from gateway.core.admin import AdminCall, Admitted
from gateway.core.errors import INTERNAL_MESSAGE, ErrorCode, GatewayError, InvalidInputError
from gateway.core.feedback import MAX_FEEDBACK_ITEMS, Feedback
from gateway.core.lifecycle import labels_document
from gateway.core.prediction import parse_label
from gateway.core.service import InferenceService
from gateway.core.traffic import TrafficPolicy
from gateway.core.types import RequestContext
from gateway.generated import gateway_service_pb2 as gateway_pb
from gateway.generated import grpc_service_pb2 as pb
from gateway.generated import model_config_pb2

logger = logging.getLogger(__name__)

SERVICE_NAME = "GRPCInferenceService"
SERVICES = ((pb, SERVICE_NAME), (gateway_pb, "GatewayService"))
"""The services every gRPC front end serves: Triton's, and the gateway's own (gateway.v1)."""
STREAM_IN_FLIGHT = 64
"""Requests of one ModelStreamInfer stream that may be in flight or unanswered at once."""

GRPC_STATUS: dict[ErrorCode, grpc.StatusCode] = {
    ErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.PAYLOAD_TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.OVERLOADED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorCode.UNIMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
    ErrorCode.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorCode.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
}

Response = TypeVar("Response")
Method = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Response]]


class MalformedMessage:
    """What a request deserializes to when its bytes are not a valid protobuf message."""

    def __init__(self, type_name: str, error: DecodeError) -> None:
        self.message = f"the request is not a valid {type_name} protobuf message: {error}"


def tolerant_parser(message_class: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except DecodeError as error:
            return MalformedMessage(message_class.DESCRIPTOR.full_name, error)

    return parse


def register_service(server: Any, handler_for: Callable[[str], Any]) -> None:
    """Register every RPC of SERVICES on an asyncio or a threaded server, like the generated
    add_..._to_server does, but with deserializers that hand malformed bytes to the handler
    (-> INVALID_ARGUMENT) instead of failing inside grpc with UNKNOWN. `handler_for(name)`
    gives each RPC's handler (RPC names are unique across the services); None answers
    UNIMPLEMENTED (asyncio servers only)."""
    for module, service_name in SERVICES:
        service = module.DESCRIPTOR.services_by_name[service_name]
        handlers: dict[str, grpc.RpcMethodHandler] = {}
        for method in service.methods:
            request_class = getattr(module, method.input_type.name)
            response_class = getattr(module, method.output_type.name)
            make = (
                grpc.stream_stream_rpc_method_handler
                if method.client_streaming
                else grpc.unary_unary_rpc_method_handler
            )
            handlers[method.name] = make(
                handler_for(method.name) or unimplemented(method.name),
                request_deserializer=tolerant_parser(request_class),
                response_serializer=response_class.SerializeToString,
            )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service.full_name, handlers),)
        )
        server.add_registered_method_handlers(service.full_name, handlers)


def translated(method: Method[Response]) -> Method[Response]:
    """Turn GatewayErrors (and anything unexpected) into gRPC status codes."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Response:
        if isinstance(request, MalformedMessage):
            status = (grpc.StatusCode.INVALID_ARGUMENT, request.message)
        else:
            try:
                return await method(self, request, context)
            except GatewayError as error:
                status = (GRPC_STATUS[error.code], error.message)
            except grpc.aio.AbortError:
                raise
            except Exception:
                logger.exception("unexpected error in %s", method.__name__)
                status = (grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
        # Ended by setting the status, not by abort(): grpc.aio's AbortError keeps the frames
        # it is raised through (and with them the request) in a reference cycle that only the
        # garbage collector frees. A unary call whose code is not OK sends no message, so
        # nothing is returned.
        code, details = status
        context.set_code(code)
        context.set_details(details)
        return cast(Response, None)

    return wrapper


def unimplemented(name: str) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, f"{name} is not implemented by this server"
        )

    return handler


class InferenceServicer:
    """The RPCs this server implements; register_service answers the others UNIMPLEMENTED."""

    def __init__(self, service: InferenceService, *, admin_elsewhere: str = "") -> None:
        self._service = service
        self._admin_elsewhere = admin_elsewhere

    def _admit(self, context: Any, action: str, target: str) -> Admitted:
        values = [v for k, v in context.invocation_metadata() or () if k == "authorization"]
        call = AdminCall(
            values[0] if values else None,
            context.peer(),
            self._admin_elsewhere,
            repeated=len(values) > 1,
        )
        return self._service.admit(call, action, target)

    @translated
    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=self._service.live)

    @translated
    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self._service.ready)

    @translated
    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ModelReadyResponse(ready=self._service.model_ready(request.name, request.version))

    @translated
    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return json_format.ParseDict(
            server_metadata_dict(self._service.version), pb.ServerMetadataResponse()
        )

    @translated
    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        loaded = self._service.loaded_version(request.name, request.version)
        versions = self._service.ready_version_names(request.name)
        return json_format.ParseDict(
            model_metadata_dict(loaded, versions), pb.ModelMetadataResponse()
        )

    @translated
    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        loaded = self._service.loaded_version(request.name, request.version)
        config = json_format.ParseDict(model_config_dict(loaded), model_config_pb2.ModelConfig())
        return pb.ModelConfigResponse(config=config)

    @translated
    async def ModelStatistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        entries = self._service.statistics(request.name, request.version)
        return json_format.ParseDict(statistics_dict(entries), pb.ModelStatisticsResponse())

    @translated
    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        entries = repository_index_list(await self._service.repository_index(request.ready))
        return json_format.ParseDict({"models": entries}, pb.RepositoryIndexResponse())

    @translated
    async def RepositoryModelLoad(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        caller = self._admit(context, "load", request.model_name)
        parameters = {
            key: getattr(value, value.WhichOneof("parameter_choice") or "string_param")
            for key, value in request.parameters.items()
        }
        await self._service.load_model(caller, request.model_name, parameters)
        return pb.RepositoryModelLoadResponse()

    @translated
    async def RepositoryModelUnload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        caller = self._admit(context, "unload", request.model_name)
        await self._service.unload_model(caller, request.model_name)
        return pb.RepositoryModelUnloadResponse()

    @translated
    async def GetTraffic(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return _traffic_response(request.model, self._service.traffic(request.model))

    @translated
    async def SetTraffic(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        caller = self._admit(context, "traffic", request.model)
        policy = await self._service.set_traffic(
            caller, request.model, _traffic_document(request.policy)
        )
        return _traffic_response(request.model, policy)

    @translated
    async def ClearTraffic(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        caller = self._admit(context, "traffic", request.model)
        await self._service.clear_traffic(caller, request.model)
        return _traffic_response(request.model, None)

    # -- rollouts (gateway.v1) ---------------------------------------------------------
    @translated
    async def StartRollout(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        caller = self._admit(context, "rollout", request.model)
        document = json_format.MessageToDict(request, preserving_proto_field_name=True)
        document.pop("model", None)
        answer = await self._service.start_rollout(caller, request.model, document)
        return _rollout_response(answer)

    @translated
    async def GetRollout(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return _rollout_response(self._service.rollout(request.model))

    @translated
    async def AbortRollout(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        caller = self._admit(context, "rollout", request.model)
        return _rollout_response(await self._service.abort_rollout(caller, request.model))

    # -- end rollouts ------------------------------------------------------------------

    @translated
    async def GetLabels(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return _labels_response(request.model, self._service.labels(request.model))

    @translated
    async def SetLabel(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        caller = self._admit(context, "label", f"{request.model}/{request.label}")
        labels = await self._service.set_label(
            caller, request.model, request.label, request.version
        )
        return _labels_response(request.model, labels)

    @translated
    async def DeleteLabel(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        caller = self._admit(context, "unlabel", f"{request.model}/{request.label}")
        labels = await self._service.delete_label(caller, request.model, request.label)
        return _labels_response(request.model, labels)

    # -- ground-truth feedback (gateway.v1) --------------------------------------------
    @translated
    async def Feedback(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self._service.ready_version_names(request.model)  # NOT_FOUND for an unknown model
        if not 1 <= len(request.items) <= MAX_FEEDBACK_ITEMS:
            raise InvalidInputError(f"items must hold 1 to {MAX_FEEDBACK_ITEMS} feedback items")
        items = [_feedback_item(item, f"items[{i}]") for i, item in enumerate(request.items)]
        results = self._service.feedback.submit(request.model, items, "items")
        document = {"model": request.model, "results": [result_dict(r) for r in results]}
        return json_format.ParseDict(document, gateway_pb.FeedbackResponse())

    @translated
    async def GetAccuracy(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self._service.ready_version_names(request.model)  # NOT_FOUND for an unknown model
        document = accuracy_dict(request.model, self._service.feedback)
        return json_format.ParseDict(document, gateway_pb.AccuracyResponse())

    @translated
    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        infer_request = codec.decode_request(request)
        # Counted as a caller (so no HTTP request beside it is solo), never solo itself: calls
        # that grpc.aio has not yet handed to the loop are invisible, as unread HTTP requests.
        with self._service.callers.call():
            response = await self._service.infer(infer_request, request_context(context))
        return codec.encode_response(response)

    async def ModelStreamInfer(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        """Triton's bidirectional stream: requests are served concurrently (so they batch
        together) and each is answered as it completes; an error answers that request only.
        At most STREAM_IN_FLIGHT requests of a stream are in flight or unanswered: reading
        waits for room, which pushes back on the client through gRPC flow control."""
        answers: asyncio.Queue[Any] = asyncio.Queue()
        room = asyncio.Semaphore(STREAM_IN_FLIGHT)
        in_flight: set[asyncio.Task[None]] = set()

        async def serve(request: Any) -> None:
            try:
                if isinstance(request, MalformedMessage):
                    raise InvalidInputError(request.message)
                infer_request = codec.decode_request(request)
                response = await self._service.infer(infer_request, request_context(context))
                answers.put_nowait(codec.stream_answer(response))
            except GatewayError as error:
                answers.put_nowait(codec.stream_error(codec.stream_caller(request), error.message))
            except Exception:
                logger.exception("unexpected error in ModelStreamInfer")
                answers.put_nowait(
                    codec.stream_error(codec.stream_caller(request), INTERNAL_MESSAGE)
                )

        async def read() -> None:
            try:
                async for request in requests:
                    await room.acquire()
                    task = asyncio.create_task(serve(request))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                await asyncio.gather(*in_flight)
            finally:
                answers.put_nowait(None)  # even if reading failed, so the writer ends

        reader = asyncio.create_task(read())
        try:
            with self._service.callers.call():  # an open stream is a caller
                while (answer := await answers.get()) is not None:
                    room.release()
                    yield answer
            await reader  # surfaces a failure to read the stream
        finally:
            reader.cancel()
            for task in list(in_flight):
                task.cancel()


def _feedback_item(item: Any, where: str) -> Feedback:
    """One FeedbackItem: an id and exactly one of its label lists."""
    if not item.id:
        raise InvalidInputError(f"{where}.id must be the request id the inference answered")
    lists = [
        (name, list(values))
        for name, values in (
            ("class_indices", item.class_indices),
            ("class_names", item.class_names),
            ("values", item.values),
        )
        if values
    ]
    if len(lists) != 1:
        raise InvalidInputError(f"{where}: set exactly one of class_indices, class_names or values")
    name, values = lists[0]
    return Feedback(item.id, parse_label(values, f"{where}.{name}"))


def _traffic_response(model: str, policy: TrafficPolicy | None) -> Any:
    if policy is None:
        return gateway_pb.TrafficResponse(model=model, has_policy=False)
    message = gateway_pb.TrafficPolicy(
        weights={str(v): w for v, w in policy.weights.items()},
        sticky_key=policy.sticky_key,
        shadows=[
            gateway_pb.ShadowTarget(version=str(s.version), percent=s.percent)
            for s in policy.shadows
        ],
        atol=policy.tolerance.atol,
        rtol=policy.tolerance.rtol,
    )
    return gateway_pb.TrafficResponse(model=model, has_policy=True, policy=message)


def _traffic_document(message: Any) -> dict[str, Any]:
    """The REST form of a gRPC TrafficPolicy, so both go through one validation."""
    document: dict[str, Any] = {
        "weights": dict(message.weights),
        "sticky_key": message.sticky_key,
        "shadows": [
            {"version": s.version, **({"percent": s.percent} if s.HasField("percent") else {})}
            for s in message.shadows
        ],
    }
    tolerance = {k: getattr(message, k) for k in ("atol", "rtol") if message.HasField(k)}
    if tolerance:
        document["tolerance"] = tolerance
    return document


def _rollout_response(document: dict[str, Any]) -> Any:
    """The REST form of a rollout as a RolloutResponse (figures that are null are left out)."""
    evaluation = [
        {**result, "figures": {k: v for k, v in result["figures"].items() if v is not None}}
        for result in document.get("evaluation", [])
    ]
    return json_format.ParseDict(
        {**document, "evaluation": evaluation},
        gateway_pb.RolloutResponse(),
        ignore_unknown_fields=True,
    )


def _labels_response(model: str, labels: dict[str, int]) -> Any:
    return gateway_pb.LabelsResponse(model=model, labels=labels_document(labels))


def request_context(context: Any, solo: bool = False) -> RequestContext:
    remaining = context.time_remaining()
    deadline = None if remaining is None else time.monotonic() + remaining
    metadata = {key: value for key, value in context.invocation_metadata() or ()}
    return RequestContext(
        protocol="grpc",
        deadline_s=deadline,
        traceparent=metadata.get("traceparent"),
        tracestate=metadata.get("tracestate"),
        headers=metadata,
        solo=solo,
    )


def grpc_options(max_request_bytes: int) -> list[tuple[str, int]]:
    """Server options: message limits, no silent port sharing, and gRPC core's pending-call caps
    far above the gateway's own queue bounds, so overload is answered by us, not cancelled."""
    return [
        ("grpc.max_receive_message_length", max_request_bytes),
        ("grpc.max_send_message_length", 2**31 - 1),
        ("grpc.so_reuseport", 0),
        ("grpc.server.max_pending_requests", 20_000),
        ("grpc.server.max_pending_requests_hard_limit", 40_000),
    ]


def bind(server: Any, host: str, port: int) -> int:
    """Listen on host:port (0 = a free port) and return the port; OSError if it cannot."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound: int = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot listen for gRPC on {address}: {exc}") from exc
    return bound


def create_grpc_server(
    service: InferenceService,
    *,
    host: str,
    port: int,
    max_request_bytes: int,
    admin_elsewhere: str = "",
) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server bound to host:port (0 = a free port), not started yet; and its port.
    `admin_elsewhere` (the admin address) refuses admin calls here."""
    server = grpc.aio.server(options=grpc_options(max_request_bytes))
    servicer = InferenceServicer(service, admin_elsewhere=admin_elsewhere)
    register_service(server, lambda name: getattr(servicer, name, None))
    return server, bind(server, host, port)
