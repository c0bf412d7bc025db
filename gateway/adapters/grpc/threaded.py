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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from gateway.adapters.grpc import codec
from gateway.adapters.grpc.server import (
    GRPC_STATUS,
    STREAM_IN_FLIGHT,
    InferenceServicer,
    MalformedMessage,
    bind,
    grpc_options,
    register_service,
    request_context,
    unimplemented,
)
from gateway.core.errors import INTERNAL_MESSAGE, GatewayError, UnavailableError
from gateway.core.service import InferenceService
from gateway.core.workers import name_os_thread

logger = logging.getLogger(__name__)

LOOP_CHECK_S = 1.0
"""How often a worker waiting on the event loop checks that the loop still runs: a loop that
stopped with a call queued or running (the server failing on its way down) would never end it,
and the worker, never returning, would keep the process from exiting."""


class _Aborted(Exception):
    """Raised by the context shim in place of grpc.aio's abort, carried back to the worker."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class _LoopContext:
    """The part of grpc.aio.ServicerContext the asyncio servicer uses, over a sync context."""

    def __init__(self, context: grpc.ServicerContext) -> None:
        self._context = context
        self.code: grpc.StatusCode | None = None
        self.details = ""

    def set_code(self, code: grpc.StatusCode) -> None:  # applied by via_loop's handler
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def time_remaining(self) -> float | None:
        remaining: float | None = self._context.time_remaining()
        return remaining

    def invocation_metadata(self) -> Any:
        return self._context.invocation_metadata()

    def peer(self) -> str:
        peer: str = self._context.peer()
        return peer

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Aborted(code, details)


class _LoopCall:
    """One coroutine run on the event loop for a worker thread: started with one
    call_soon_threadsafe, answered by releasing a lock (and by `notify`, for streams).
    asyncio.run_coroutine_threadsafe does the same through a concurrent Future and its
    Condition: ~40 us of latency and CPU per call on one core, against ~19 us here.

    A call ends exactly once: when its task ends, when it could not start, or, if the loop is
    gone, when it is cancelled."""

    __slots__ = (
        "_cancel_requested",
        "_coroutine",
        "_done",
        "_ended",
        "_ended_cancelled",
        "_ending",
        "_loop",
        "_notify",
        "_task",
        "error",
        "result",
    )

    def __init__(
        self,
        coroutine: Any,
        loop: asyncio.AbstractEventLoop,
        notify: Callable[[_LoopCall], None] | None = None,
    ) -> None:
        self._coroutine, self._loop, self._notify = coroutine, loop, notify
        self._task: asyncio.Task[Any] | None = None
        self._cancel_requested = False  # read and written on the loop only
        self._done = threading.Lock()
        self._done.acquire()
        self._ending = threading.Lock()
        self._ended = False
        self._ended_cancelled = False
        self.result: Any = None
        self.error: BaseException | None = None

    def start(self) -> None:
        """Hand the coroutine to the loop. RuntimeError if the loop is closed."""
        try:
            self._loop.call_soon_threadsafe(self._begin)
        except RuntimeError:
            self._coroutine.close()
            raise

    def cancel(self) -> None:
        """The caller left: cancel the coroutine (from any thread, before or after start).
        grpcio calls this at the end of every call, so an ended call costs nothing."""
        if self._ended:
            return
        try:
            self._loop.call_soon_threadsafe(self._cancel)
        except RuntimeError:  # the loop is gone: nothing will run or end this call but us
            if self._task is None:
                self._coroutine.close()
            self._end(None, asyncio.CancelledError())

    def wait(self) -> Any:
        """Block this (non-loop) thread until the call ends; its result, or raise. The error
        is handed over, not kept: raised through this frame, it would otherwise hold this call,
        which holds it, in a reference cycle (and with it the request, through the frames in
        its traceback) until the garbage collector ran."""
        while not self._done.acquire(timeout=LOOP_CHECK_S):
            self.end_if_loop_stopped()
        error, self.error = self.error, None
        if error is None:
            return self.result
        try:
            raise error
        finally:
            del error

    def end_if_loop_stopped(self) -> None:
        """End the call with UNAVAILABLE if its loop no longer runs (see LOOP_CHECK_S)."""
        if not self._loop.is_running():
            if self._task is None:  # never started: nothing else will close the coroutine
                self._coroutine.close()
            self._end(None, UnavailableError("the server is shutting down"))

    def failed(self, error: BaseException) -> _LoopCall:
        """End a call that could not start with `error`."""
        self._end(None, error)
        return self

    @property
    def cancelled(self) -> bool:
        return self._ended_cancelled

    def _begin(self) -> None:  # on the loop
        if self._cancel_requested:  # cancelled before the loop got to it
            self._coroutine.close()
            self._end(None, asyncio.CancelledError())
            return
        self._task = self._loop.create_task(self._drive())
        self._task.add_done_callback(self._finished)

    async def _drive(self) -> None:  # on the loop
        """Run the coroutine and end the call in the same step as its last one (a task's done
        callback would run a loop turn later, on every request's path)."""
        try:
            result = await self._coroutine
        except (Exception, asyncio.CancelledError) as error:  # the worker raises it there
            self._task = None  # no cycle through the task, which would keep the error
            # Without this frame: its `self` would tie the call, the error and the request
            # (in the frames of the traceback) into a cycle only the collector frees.
            assert error.__traceback__ is not None
            self._end(None, error.with_traceback(error.__traceback__.tb_next))
        except BaseException:  # KeyboardInterrupt, SystemExit: answer, then stop the loop
            self._task = None
            self._end(None, UnavailableError("the server is shutting down"))
            raise
        else:
            self._task = None
            self._end(result, None)

    def _finished(self, task: asyncio.Task[None]) -> None:  # on the loop
        # Only a task cancelled before its first step ends here: _drive never ran.
        if task.cancelled():
            self._task = None
            self._coroutine.close()
            self._end(None, asyncio.CancelledError())

    def _cancel(self) -> None:  # on the loop
        if self._task is None:
            self._cancel_requested = True
        else:
            self._task.cancel()

    def _end(self, result: Any, error: BaseException | None) -> None:
        with self._ending:
            if self._ended:
                return
            self._ended = True
        self.result, self.error = result, error
        self._ended_cancelled = isinstance(error, asyncio.CancelledError)
        self._done.release()
        if self._notify is not None:
            self._notify(self)


Answer = tuple[codec.StreamCaller, "_LoopCall | None", str]
"""Who asked (not the request: its tensors are let go as soon as it is answered), the call
that answers it or None, and an error message when there is no call."""


class _Stream:
    """The shared state of one threaded ModelStreamInfer call."""

    def __init__(self) -> None:
        self.answers: queue.SimpleQueue[Answer | None] = queue.SimpleQueue()
        self.room = threading.BoundedSemaphore(STREAM_IN_FLIGHT)
        self._lock = threading.Lock()
        self._pending: set[_LoopCall] = set()
        self._outstanding = 0
        self._reading = True

    def started(self) -> None:
        with self._lock:
            self._outstanding += 1

    def track(self, call: _LoopCall) -> None:
        with self._lock:
            self._pending.add(call)

    def answered(self, caller: codec.StreamCaller, done: _LoopCall) -> None:
        self.answers.put((caller, done, ""))  # the answer first, then maybe the end
        with self._lock:
            self._pending.discard(done)
            self._outstanding -= 1
            last = not self._reading and self._outstanding == 0
        if last:
            self.answers.put(None)

    def next_answer(self) -> Answer | None:
        """The next answer to send; None once the stream is over."""
        while True:
            try:
                return self.answers.get(timeout=LOOP_CHECK_S)
            except queue.Empty:
                with self._lock:
                    pending = list(self._pending)
                for call in pending:  # each one ended answers through stream.answered
                    call.end_if_loop_stopped()

    def answer_now(self, caller: codec.StreamCaller, error: str) -> None:
        self.answers.put((caller, None, error))

    def reading_done(self) -> None:
        with self._lock:
            self._reading = False
            last = self._outstanding == 0
        if last:
            self.answers.put(None)

    def cancel_all(self) -> None:
        with self._lock:
            pending = list(self._pending)
        for call in pending:
            call.cancel()


class ThreadedFrontEnd:
    """Sync handlers that run on grpcio's thread pool and call into the event loop."""

    def __init__(
        self,
        service: InferenceService,
        loop: asyncio.AbstractEventLoop,
        admin_elsewhere: str,
        max_streams: int,
    ) -> None:
        self._service = service
        self._servicer = InferenceServicer(service, admin_elsewhere=admin_elsewhere)
        self._loop = loop
        self._callers = service.callers
        self._max_streams = max_streams
        self._streams = threading.BoundedSemaphore(max_streams)
        """Open streams; with one worker (max_streams 0) every stream is refused."""

    def _on_loop(self, coroutine: Any, context: grpc.ServicerContext) -> Any:
        call = _LoopCall(coroutine, self._loop)
        try:
            call.start()
        except RuntimeError:  # the loop is closed: the server is stopping
            context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        if not context.add_callback(call.cancel):  # the client left: out of the line
            call.cancel()
        try:
            return call.wait()
        except _Aborted as aborted:
            status = (aborted.code, aborted.details)
        except asyncio.CancelledError:  # the client left (deadline, cancel): nobody listens
            status = (grpc.StatusCode.CANCELLED, "the call was cancelled")
        except GatewayError as error:
            status = (GRPC_STATUS[error.code], error.message)
        context.abort(*status)  # outside the handlers: see model_infer

    def model_infer(self, request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, MalformedMessage):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        try:
            infer_request = codec.decode_request(request)
            with self._callers.call():
                ctx = request_context(context, solo=self._callers.call_solo())
                response = self._on_loop(self._service.infer(infer_request, ctx), context)
            return codec.encode_response(response)
        except GatewayError as error:
            status = (GRPC_STATUS[error.code], error.message)
        except Exception:
            if context.code() is not None:  # abort() raises; let it through
                raise
            logger.exception("unexpected error in ModelInfer")
            status = (grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
        # Aborted here, not in a handler: abort() raises, and an exception raised while a
        # handler's `error` is bound keeps that error, its traceback and this frame (with the
        # request's tensors) in a reference cycle that only the garbage collector frees. A
        # flood of refused 1.6 MB requests grew the server by 500 MB that way.
        context.abort(*status)

    def model_stream_infer(
        self, requests: Iterator[Any], context: grpc.ServicerContext
    ) -> Iterator[Any]:
        """Triton's bidirectional stream: a reader thread hands each request to the loop as it
        arrives; answers are encoded here, on the worker, in the order they complete. At most
        STREAM_IN_FLIGHT requests are in flight or unanswered; the end of the stream is
        signalled once, by whichever of the reader and the last answer finishes last.

        An open stream holds a worker for its whole life, idle or not: at most `max_streams`
        may be open, so that streams alone can never take every worker (unary calls, health
        checks) and hang the server; one more is refused at once with RESOURCE_EXHAUSTED."""
        if not self._streams.acquire(blocking=False):
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this server takes at most {self._max_streams} open ModelStreamInfer streams "
                "(half of --grpc-threads), and that many are open; send more requests on an open "
                "stream, or retry later",
            )
        try:
            stream = _Stream()
            context.add_callback(stream.cancel_all)
            with self._callers.call():  # an open stream counts for its whole life
                yield from self._stream_answers(stream, requests, context)
        finally:
            self._streams.release()

    def _stream_answers(
        self, stream: _Stream, requests: Iterator[Any], context: grpc.ServicerContext
    ) -> Iterator[Any]:
        def read() -> None:
            try:
                for request in requests:
                    while not stream.room.acquire(timeout=1.0):
                        if not context.is_active():
                            return
                    self._submit_stream_request(stream, request, context)
            except grpc.RpcError:
                logger.debug("stream closed by the client while reading")
            except Exception:
                logger.exception("failed reading a ModelStreamInfer stream")
            finally:
                stream.reading_done()

        threading.Thread(target=read, name="grpc-stream-reader", daemon=True).start()
        while (item := stream.next_answer()) is not None:
            stream.room.release()
            caller, done, error = item
            if done is not None:
                if done.cancelled:
                    continue
                failure, done.error = done.error, None  # taken: no cycle through the call
                if failure is None:
                    yield codec.stream_answer(done.result)
                    continue
                if isinstance(failure, GatewayError):
                    error = failure.message
                else:
                    logger.error("unexpected error in ModelStreamInfer", exc_info=failure)
                    error = INTERNAL_MESSAGE
            yield codec.stream_error(caller, error)

    def _submit_stream_request(
        self, stream: _Stream, request: Any, context: grpc.ServicerContext
    ) -> None:
        caller = codec.stream_caller(request)
        if isinstance(request, MalformedMessage):
            stream.answer_now(caller, request.message)
            return
        try:
            infer_request = codec.decode_request(request)
        except GatewayError as error:
            stream.answer_now(caller, error.message)
            return
        except Exception:  # a bug answers this request only; the stream goes on
            logger.exception("unexpected error decoding a ModelStreamInfer request")
            stream.answer_now(caller, INTERNAL_MESSAGE)
            return
        ctx = request_context(context)
        call = _LoopCall(
            self._service.infer(infer_request, ctx),
            self._loop,
            functools.partial(stream.answered, caller),
        )
        stream.started()
        stream.track(call)
        try:
            call.start()
        except RuntimeError:  # the loop is closed: the server is stopping
            call.failed(UnavailableError("the server is shutting down"))  # answers it, once

    def handler_for(self, name: str) -> Callable[..., Any]:
        """Inference runs here, on the worker; every other RPC runs the asyncio servicer's."""
        if name == "ModelInfer":
            return self.model_infer
        if name == "ModelStreamInfer":
            return self.model_stream_infer
        return self.via_loop(name)

    def via_loop(self, name: str) -> Callable[[Any, grpc.ServicerContext], Any]:
        method = getattr(self._servicer, name, None) or unimplemented(name)

        def handler(request: Any, context: grpc.ServicerContext) -> Any:
            on_loop = _LoopContext(context)
            response = self._on_loop(method(request, on_loop), context)
            if on_loop.code is not None:
                context.abort(on_loop.code, on_loop.details)
            return response

        return handler


def start_threaded_grpc_server(
    service: InferenceService,
    *,
    host: str,
    port: int,
    max_request_bytes: int,
    workers: int,
    admin_elsewhere: str = "",
) -> tuple[grpc.Server, int]:
    """Start the threaded server (call from the event loop it feeds)."""
    front = ThreadedFrontEnd(
        service, asyncio.get_running_loop(), admin_elsewhere, max_streams=workers // 2
    )
    server = grpc.server(
        ThreadPoolExecutor(workers, thread_name_prefix="grpc", initializer=name_os_thread),
        options=grpc_options(max_request_bytes),
        # Each call (and each open stream) holds a worker while it runs; as many calls again
        # may wait for one (grpcio counts a call until its end is processed, so a client that
        # keeps exactly `workers` calls in flight would otherwise be refused now and then);
        # beyond that, refuse at once with RESOURCE_EXHAUSTED rather than queue without bound.
        maximum_concurrent_rpcs=2 * workers,
    )
    register_service(server, front.handler_for)
    bound = bind(server, host, port)
    server.start()
    return server, bound
