"""GRPCInferenceService on grpcio's synchronous, thread-pool server, feeding the asyncio core.

grpc.aio spends several hundred microseconds of event-loop time per call; the synchronous server
does its per-call work in C-core and its worker threads. Here each worker decodes the request,
hands only the inference itself to the event loop (validation, batching), waits for the answer
and encodes it, so the loop thread does the least possible per request. Every other RPC runs the
asyncio servicer's coroutine on the loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor, wait
from typing import Any

import grpc

from gateway.adapters.grpc import codec
from gateway.adapters.grpc.server import (
    GRPC_STATUS,
    SERVICE_NAME,
    InferenceServicer,
    MalformedMessage,
    grpc_options,
    tolerant_parser,
    unimplemented,
)
from gateway.core.errors import GatewayError
from gateway.core.service import InferenceService
from gateway.core.types import RequestContext
from gateway.generated import grpc_service_pb2 as pb

logger = logging.getLogger(__name__)


class _Aborted(Exception):
    """Raised by the context shim in place of grpc.aio's abort, carried back to the worker."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class _LoopContext:
    """The part of grpc.aio.ServicerContext the asyncio servicer uses, over a sync context."""

    def __init__(self, context: grpc.ServicerContext) -> None:
        self._context = context

    def time_remaining(self) -> float | None:
        remaining: float | None = self._context.time_remaining()
        return remaining

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Aborted(code, details)


class ThreadedFrontEnd:
    """Sync handlers that run on grpcio's thread pool and call into the event loop."""

    def __init__(self, service: InferenceService, loop: asyncio.AbstractEventLoop) -> None:
        self._service = service
        self._servicer = InferenceServicer(service)
        self._loop = loop

    def _on_loop(self, coroutine: Any, context: grpc.ServicerContext) -> Any:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        context.add_callback(future.cancel)  # the client left: take it out of the line
        try:
            return future.result()
        except _Aborted as aborted:
            context.abort(aborted.code, aborted.details)
        except CancelledError:  # the client left (deadline, cancel): nobody is listening
            context.abort(grpc.StatusCode.CANCELLED, "the call was cancelled")

    def model_infer(self, request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, MalformedMessage):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        try:
            infer_request = codec.decode_request(request)
            remaining = context.time_remaining()
            deadline = None if remaining is None else time.monotonic() + remaining
            ctx = RequestContext(protocol="grpc", deadline_s=deadline)
            response = self._on_loop(self._service.infer(infer_request, ctx), context)
            return codec.encode_response(response)
        except GatewayError as error:
            context.abort(GRPC_STATUS[error.code], error.message)
        except Exception:
            if context.code() is not None:  # abort() raises; let it through
                raise
            logger.exception("unexpected error in ModelInfer")
            context.abort(grpc.StatusCode.INTERNAL, "internal error; see the gateway log")

    def model_stream_infer(
        self, requests: Iterator[Any], context: grpc.ServicerContext
    ) -> Iterator[Any]:
        """Triton's bidirectional stream: a reader thread hands each request to the loop as it
        arrives; answers are encoded here, on the worker, in the order they complete."""
        answers: queue.SimpleQueue[tuple[Any, Future[Any] | None, str] | None] = (
            queue.SimpleQueue()
        )
        submitted: list[Future[Any]] = []

        def answered(request: Any, done: Future[Any]) -> None:
            answers.put((request, done, ""))

        def read() -> None:
            try:
                for request in requests:
                    if isinstance(request, MalformedMessage):
                        answers.put((request, None, request.message))
                        continue
                    try:
                        infer_request = codec.decode_request(request)
                    except GatewayError as error:
                        answers.put((request, None, error.message))
                        continue
                    ctx = RequestContext(protocol="grpc")
                    future = asyncio.run_coroutine_threadsafe(
                        self._service.infer(infer_request, ctx), self._loop
                    )
                    submitted.append(future)
                    future.add_done_callback(functools.partial(answered, request))
                wait(submitted)
            except Exception:  # the client went away mid-stream
                logger.debug("stream closed while reading", exc_info=True)
            answers.put(None)

        def cancel_all() -> None:
            for future in submitted:
                future.cancel()

        context.add_callback(cancel_all)
        threading.Thread(target=read, name="grpc-stream-reader", daemon=True).start()
        while (item := answers.get()) is not None:
            request, done, error = item
            if done is not None:
                if done.cancelled():
                    continue
                failure = done.exception()
                if failure is None:
                    yield codec.stream_answer(request, done.result(), None)
                    continue
                error = failure.message if isinstance(failure, GatewayError) else "internal error"
            yield codec.stream_answer(request, None, error)

    def via_loop(self, name: str) -> Callable[[Any, grpc.ServicerContext], Any]:
        method = getattr(self._servicer, name, None) or unimplemented(name)

        def handler(request: Any, context: grpc.ServicerContext) -> Any:
            return self._on_loop(method(request, _LoopContext(context)), context)

        return handler


def start_threaded_grpc_server(
    service: InferenceService,
    *,
    host: str,
    port: int,
    max_request_bytes: int,
    workers: int,
) -> tuple[grpc.Server, int]:
    """Start the threaded server (call from the event loop it feeds)."""
    front = ThreadedFrontEnd(service, asyncio.get_running_loop())
    server = grpc.server(
        ThreadPoolExecutor(workers, thread_name_prefix="grpc"),
        options=grpc_options(max_request_bytes),
    )
    descriptor = pb.DESCRIPTOR.services_by_name[SERVICE_NAME]
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in descriptor.methods:
        request_class = getattr(pb, method.input_type.name)
        response_class = getattr(pb, method.output_type.name)
        parse, serialize = tolerant_parser(request_class), response_class.SerializeToString
        if method.name == "ModelStreamInfer":
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                front.model_stream_infer,
                request_deserializer=parse,
                response_serializer=serialize,
            )
            continue
        handler = front.model_infer if method.name == "ModelInfer" else front.via_loop(method.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            handler, request_deserializer=parse, response_serializer=serialize
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(descriptor.full_name, handlers),)
    )
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot listen for gRPC on {address}: {exc}") from exc
    server.start()
    return server, bound
