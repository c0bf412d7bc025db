"""Bare echo servers (grpc.aio and aiohttp; and, as references, httptools and threaded grpcio):
the same payloads as the gateway, no model behind.

Each decodes the request into numpy as the gateway does (np.frombuffer on raw bytes, or the JSON
`data` lists), and answers the outputs the model would produce for that many rows (zeros), encoded
as the gateway encodes them. Their requests/s is the Python front end's limit on one core.

Given a model file, the same servers are *minimal servers*: each request's inputs go through the
model inline, in the handler, and its outputs are the answer. No batching, no queue, no thread
hand-off: what the gateway's own stacks do with the model and nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .clients import BINARY_HEADER
from .processes import RunningServer, bench_command, started
from .tensors import TensorInfo, concrete_shape, numpy_dtype

GRPC_THREADS = 256
"""Worker threads of the threaded gRPC echo, as the gateway's default --grpc-threads."""
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""As the gateway's default --max-request-bytes."""
T = TypeVar("T")
Stop = Callable[[], Awaitable[None]]
"""Stops a server started by one of SERVERS."""
LOOPS_STOP_S = 5.0
"""How long the several-loops echo waits for its servers and loop threads to stop."""


def gateway_huge_pages(gateway_args: list[str]) -> bool:
    """Whether the gateway the bench starts moves its memory into huge pages (`--huge-pages`,
    on by default): the last of the two flags given, else GATEWAY_HUGE_PAGES."""
    from pydantic import TypeAdapter  # here: the echo servers stay free of the gateway's code

    from gateway.config.settings import GatewaySettings

    for arg in reversed(gateway_args):
        if arg in ("--huge-pages", "--no-huge-pages"):
            return arg == "--huge-pages"
    setting = os.environ.get("GATEWAY_HUGE_PAGES")
    if setting is None:
        return bool(GatewaySettings.model_fields["huge_pages"].default)
    return TypeAdapter(bool).validate_python(setting)  # read as the gateway's settings read it


class Echo:
    """Turns a request's inputs into the model's outputs: zeros for that many rows, or, with
    `model_file` in the job, what the model computes from them (a minimal server)."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.batched: bool = job["batched"]
        self.outputs = [TensorInfo(**t) for t in job["outputs"]]
        self.session: Any = None
        self._one_run = threading.Lock()
        """One run at a time, as the gateway's one instance runs one batch: on grpcio's
        threaded server, calls would otherwise time-slice the core."""
        if job.get("model_file"):
            from .baseline import open_model

            self.session = open_model(job["model_file"], huge_pages=job["huge_pages"])[0]
        self._output_names = [out.name for out in self.outputs]

    def answer(
        self, inputs: dict[str, np.ndarray[Any, Any]]
    ) -> list[tuple[TensorInfo, list[int], np.ndarray[Any, Any]]]:
        if self.session is not None:
            with self._one_run:
                arrays = self.session.run(self._output_names, inputs)
            return [
                (out, list(array.shape), array)
                for out, array in zip(self.outputs, arrays, strict=True)
            ]
        rows = self.rows(next(iter(inputs.values()), None))
        shapes = [concrete_shape(out, rows, self.batched) for out in self.outputs]
        return [
            (out, shape, np.zeros(shape, numpy_dtype(out.datatype)))
            for out, shape in zip(self.outputs, shapes, strict=True)
        ]

    def rows(self, first_input: np.ndarray[Any, Any] | None) -> int:
        if not self.batched or first_input is None or first_input.ndim == 0:
            return 1
        return int(first_input.shape[0])


def answer_grpc(echo: Echo, request: Any) -> Any:
    """The ModelInferResponse the gateway would send for `request` (zeros for its rows, or the
    model's outputs in a minimal server)."""
    from gateway.generated import grpc_service_pb2 as pb

    inputs = {
        tensor.name: np.frombuffer(raw, numpy_dtype(tensor.datatype)).reshape(tuple(tensor.shape))
        for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=False)
    }
    response = pb.ModelInferResponse(
        model_name=request.model_name,
        model_version=request.model_version or "1",
        id=request.id,
    )
    for out, shape, data in echo.answer(inputs):
        response.outputs.add(name=out.name, datatype=out.datatype, shape=shape)
        response.raw_output_contents.append(data.tobytes())
    return response


GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.so_reuseport", 0),
]


async def serve_grpc(
    echo: Echo,
    host: str,
    port: int = 0,
    options: list[tuple[str, Any]] = GRPC_OPTIONS,
    calls: list[int] | None = None,
) -> tuple[Stop, int]:
    """grpc.aio with the generated servicer: ModelInfer only, the gateway's server options.
    `calls`, if given, counts the calls answered (in its one item)."""
    import grpc

    from gateway.generated import grpc_service_pb2_grpc as pb_grpc

    class EchoServicer(pb_grpc.GRPCInferenceServiceServicer):
        async def ModelInfer(self, request: Any, context: Any) -> Any:
            if calls is not None:
                calls[0] += 1
            return answer_grpc(echo, request)

    server = grpc.aio.server(options=options)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(EchoServicer(), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()

    async def stop() -> None:
        await server.stop(grace=1)

    return stop, bound


async def serve_grpc_loops(echo: Echo, host: str, loops: int) -> tuple[Stop, int]:
    """`loops` grpc.aio servers, each on an event loop of its own (this one and `loops - 1`
    threads), sharing one port: with SO_REUSEPORT the kernel spreads connections (not calls)
    across them, so a client needs several channels to reach them all. grpc.aio supports a loop
    per thread; every loop wakes for each of C-core's events (one completion queue for the
    process). The front end the issue calls "several event loops"; a reference. Stopping prints
    how many calls each loop answered."""
    options = [o for o in GRPC_OPTIONS if o[0] != "grpc.so_reuseport"]
    options.append(("grpc.so_reuseport", 1))
    calls = [[0] for _ in range(loops)]
    stop_first, port = await serve_grpc(echo, host, 0, options, calls[0])
    others: list[tuple[_LoopThread, Stop]] = []

    async def stop() -> None:
        stopping = [thread.call(stop_other()) for thread, stop_other in others]
        try:
            await asyncio.wait_for(asyncio.gather(stop_first(), *stopping), LOOPS_STOP_S)
        finally:
            for thread, _ in others:
                thread.close()
            print(f"echo grpc-loops calls by loop: {[count[0] for count in calls]}", flush=True)

    try:
        for index, count in enumerate(calls[1:], start=1):
            thread = _LoopThread(f"echo-loop-{index}")
            try:
                stop_other, _ = await thread.call(serve_grpc(echo, host, port, options, count))
            except BaseException:
                thread.close()
                raise
            others.append((thread, stop_other))
    except BaseException:
        await stop()  # the servers started so far, on their loops
        raise
    return stop, port


class _LoopThread:
    """An event loop (uvloop where installed, as the gateway's) running in a thread of its own."""

    def __init__(self, name: str) -> None:
        try:
            import uvloop
        except ImportError:
            self.loop = asyncio.new_event_loop()
        else:
            self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    async def call(self, awaitable: Awaitable[T]) -> T:
        """Await `awaitable` on this thread's loop, from the caller's loop."""

        async def wait() -> T:
            return await awaitable

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(wait(), self.loop))

    def close(self) -> None:
        """Stop the loop and close it (left to the process's exit if it does not stop)."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(LOOPS_STOP_S)
        if not self._thread.is_alive():
            self.loop.close()


async def serve_grpc_threaded(echo: Echo, host: str) -> tuple[Stop, int]:
    """grpcio's synchronous thread-pool server, the gateway's default gRPC stack, answering on
    its worker threads: what a call costs that stack without the gateway's hand-off to its
    event loop. A reference, as the lean HTTP echo is."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    from gateway.generated import grpc_service_pb2_grpc as pb_grpc

    class EchoServicer(pb_grpc.GRPCInferenceServiceServicer):
        def ModelInfer(self, request: Any, context: Any) -> Any:
            return answer_grpc(echo, request)

    server = grpc.server(
        ThreadPoolExecutor(GRPC_THREADS, thread_name_prefix="echo"),
        options=GRPC_OPTIONS,
        maximum_concurrent_rpcs=2 * GRPC_THREADS,
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(EchoServicer(), server)
    port = server.add_insecure_port(f"{host}:0")
    server.start()

    async def stop() -> None:
        await asyncio.to_thread(lambda: server.stop(grace=1).wait())

    return stop, port


def answer_http(
    echo: Echo, body: bytes, header_length: str | None, model: str, version: str
) -> tuple[bytes, int | None]:
    """A V2 infer request (binary tensor extension or JSON) -> (answer body, its JSON header
    length for a binary answer, None for JSON): what the gateway's HTTP route does (no model,
    but in a minimal server)."""
    import orjson

    offset = int(header_length) if header_length is not None else len(body)
    header = orjson.loads(body[:offset])
    inputs = {}
    for tensor in header["inputs"]:
        dtype = numpy_dtype(tensor["datatype"])
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is None:
            array = np.asarray(tensor["data"], dtype)
        else:
            array = np.frombuffer(body, dtype, count=size // dtype.itemsize, offset=offset)
            offset += size
        inputs[tensor["name"]] = array.reshape(tensor["shape"])
    binary = (header.get("parameters") or {}).get("binary_data_output") is True
    outputs, chunks = [], []
    for out, shape, data in echo.answer(inputs):
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": shape}
        if binary:
            chunks.append(data.tobytes())
            entry["parameters"] = {"binary_data_size": len(chunks[-1])}
        else:
            entry["data"] = data.ravel()
        outputs.append(entry)
    head = orjson.dumps(
        {"model_name": model, "model_version": version, "outputs": outputs},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    if not binary:
        return head, None
    return b"".join([head, *chunks]), len(head)


async def serve_http(echo: Echo, host: str) -> tuple[Stop, int]:
    """aiohttp: V2 infer with the binary tensor extension or JSON, like the gateway's route."""
    from aiohttp import web

    async def infer(request: web.Request) -> web.Response:
        body = await request.read()
        payload, header_length = answer_http(
            echo,
            body,
            request.headers.get(BINARY_HEADER),
            request.match_info["model"],
            request.match_info.get("version", "1"),
        )
        if header_length is None:
            return web.Response(body=payload, content_type="application/json")
        return web.Response(
            body=payload,
            content_type="application/octet-stream",
            headers={BINARY_HEADER: str(header_length)},
        )

    app = web.Application(client_max_size=MAX_MESSAGE_BYTES)
    app.add_routes(
        [
            web.post("/v2/models/{model}/infer", infer),
            web.post("/v2/models/{model}/versions/{version}/infer", infer),
        ]
    )
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    return runner.cleanup, runner.addresses[0][1]


INFER_PATH = re.compile(rb"^/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer$")


async def serve_http_lean(echo: Echo, host: str) -> tuple[Stop, int]:
    """The same answers on a bare asyncio Protocol with httptools (llhttp, as uvicorn uses):
    what a Python HTTP/1.1 front end costs without a web framework. A measurement tool: it
    serves POST .../infer with Content-Length or chunked bodies, keep-alive, and nothing else."""
    import httptools

    header_name = BINARY_HEADER.lower().encode()

    class Connection(asyncio.Protocol):
        def __init__(self) -> None:
            self._parser = httptools.HttpRequestParser(self)
            self._transport: asyncio.Transport | None = None
            self._url = b""
            self._header: str | None = None
            self._body: list[bytes] = []

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self._transport = transport  # type: ignore[assignment]

        def data_received(self, data: bytes) -> None:
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserError:
                self._reply(b"400 Bad Request", b"", None)
                assert self._transport is not None
                self._transport.close()

        def on_message_begin(self) -> None:
            self._url, self._header, self._body = b"", None, []

        def on_url(self, url: bytes) -> None:
            self._url += url

        def on_header(self, name: bytes, value: bytes) -> None:
            if name.lower() == header_name:
                self._header = value.decode("latin-1")

        def on_body(self, body: bytes) -> None:
            self._body.append(body)

        def on_message_complete(self) -> None:
            match = INFER_PATH.match(self._url.split(b"?", 1)[0])
            if match is None or self._parser.get_method() != b"POST":
                self._reply(b"404 Not Found", b"", None)
                return
            version = (match["version"] or b"1").decode()
            payload, header_length = answer_http(
                echo, b"".join(self._body), self._header, match["model"].decode(), version
            )
            self._reply(b"200 OK", payload, header_length)

        def _reply(self, status: bytes, payload: bytes, header_length: int | None) -> None:
            kind = b"application/json" if header_length is None else b"application/octet-stream"
            head = b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n" % (
                status,
                kind,
                len(payload),
            )
            if header_length is not None:
                head += b"%s: %d\r\n" % (BINARY_HEADER.encode(), header_length)
            assert self._transport is not None
            self._transport.write(head + b"\r\n" + payload)

    server = await asyncio.get_running_loop().create_server(Connection, host, 0)

    async def stop() -> None:
        server.close()
        await server.wait_closed()

    return stop, server.sockets[0].getsockname()[1]


SERVERS: dict[str, Callable[..., Awaitable[tuple[Stop, int]]]] = {
    "grpc": serve_grpc,
    "http": serve_http,
    "http-lean": serve_http_lean,
    "grpc-threaded": serve_grpc_threaded,
    "grpc-loops": serve_grpc_loops,
}
READY_LINE = re.compile(  # longest kind first: "grpc" is a prefix of others
    rf"echo (?P<kind>{'|'.join(sorted(SERVERS, key=len, reverse=True))}) "
    r"on (?P<host>\S+):(?P<port>\d+)"
)


async def serve(job: dict[str, Any]) -> None:
    """Serve until SIGTERM/SIGINT or `lifetime_s`, whichever comes first."""
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    options = {"loops": job["loops"]} if job["kind"] == "grpc-loops" else {}
    stop, port = await SERVERS[job["kind"]](Echo(job), job["host"], **options)
    print(f"echo {job['kind']} on {job['host']}:{port}", flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop_requested.wait(), job["lifetime_s"])
    await stop()


def echo_main(job: dict[str, Any]) -> int:
    """In the pinned subprocess: serve on uvloop, the gateway's default loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(job))
    else:
        uvloop.run(serve(job))
    return 0


@contextlib.contextmanager
def echo_server(
    kind: str,
    args: argparse.Namespace,
    signature: dict[str, Any],
    log_file: Path,
    lifetime_s: float,
    model_file: Path | None = None,
) -> Iterator[RunningServer]:
    """An echo server pinned to the server core, answering for the model in `signature`; it
    exits by itself after `lifetime_s` should the bench die without stopping it. With
    `model_file`, a minimal server: the model runs inline on each request."""
    job = {
        "kind": kind,
        "host": "127.0.0.1",
        "batched": signature["max_batch_size"] > 0,
        "outputs": signature["outputs"],
        "lifetime_s": lifetime_s,
        "model_file": None if model_file is None else str(model_file),
        # A minimal server loads the model as the gateway does.
        "huge_pages": gateway_huge_pages(args.gateway_arg or []),
        "loops": args.multi_loop_grpc_echo,
    }
    command = bench_command(args.server_core, "_echo", json.dumps(job))
    with started(command, log_file, READY_LINE, args.startup_timeout) as (process, match):
        port = int(match["port"])
        yield RunningServer(
            name=f"the {kind} {'minimal' if model_file else 'echo'} server",
            process=process,
            host=match["host"],
            http_port=port if kind.startswith("http") else 0,
            grpc_port=port if kind.startswith("grpc") else 0,
            log_file=log_file,
        )
