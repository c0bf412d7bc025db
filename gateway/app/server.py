"""Builds the gateway from settings and owns its start, drain and stop order."""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor

import grpc
from aiohttp import web

from gateway import __version__
from gateway.adapters.grpc.server import start_grpc_server
from gateway.adapters.grpc.threaded import start_threaded_grpc_server
from gateway.adapters.http.app import create_app
from gateway.config.settings import GatewaySettings
from gateway.core.registry import ModelRegistry
from gateway.core.service import InferenceService
from gateway.runtime.onnx_runner import installation_problem
from gateway.runtime.repository import LoadFailure, ModelRepository

logger = logging.getLogger(__name__)


class StartupError(Exception):
    """The gateway cannot start; the message says why."""


class Gateway:
    """One gateway process: model registry, inference service, HTTP and gRPC front ends."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self._inference_pool = ThreadPoolExecutor(
            settings.resolved_inference_threads(), thread_name_prefix="inference"
        )
        self.registry = ModelRegistry(
            self._inference_pool,
            default_max_queue_size=settings.default_max_queue_size,
            max_queue_bytes=settings.max_queue_bytes,
        )
        self._load_pool: ThreadPoolExecutor | None = None
        self._http: web.AppRunner | None = None
        self._grpc: grpc.aio.Server | None = None
        self._threaded_grpc: grpc.Server | None = None
        self.service: InferenceService | None = None
        self.http_port = 0
        self.grpc_port = 0
        self.load_failures: list[LoadFailure] = []

    async def start(self) -> None:
        settings = self.settings
        problem = installation_problem()
        if problem:
            logger.warning("%s", problem)
        self._load_pool = ThreadPoolExecutor(settings.load_threads, thread_name_prefix="load")
        self.service = InferenceService(self.registry, version=__version__)
        repository = ModelRepository(
            settings.model_repository,
            default_max_batch_size=settings.default_max_batch_size,
            default_intra_op_threads=settings.resolved_intra_op_threads(),
            default_concurrency=settings.resolved_inference_threads(),
        )
        try:
            self.load_failures = await repository.load_all(self.registry, self._load_pool)
        except FileNotFoundError as exc:
            raise StartupError(str(exc)) from exc
        if self.load_failures and settings.exit_on_error:
            lines = "\n".join(f"  - {f.reason}" for f in self.load_failures)
            raise StartupError(
                f"{len(self.load_failures)} model load failure(s) "
                f"(--no-exit-on-error serves the rest):\n{lines}"
            )
        app = create_app(
            self.service,
            max_request_bytes=settings.max_request_bytes,
            compress_responses=settings.http_compress_responses,
        )
        self._http = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=settings.shutdown_grace_s,
            # A client that disconnects cancels its handler, so it leaves the batcher's line.
            handler_cancellation=True,
        )
        await self._http.setup()
        site = web.TCPSite(self._http, settings.host, settings.http_port)
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(
                f"cannot listen for HTTP on {settings.host}:{settings.http_port}: {exc}"
            ) from exc
        self.http_port = self._http.addresses[0][1]
        try:
            if settings.grpc_server == "threaded":
                self._threaded_grpc, self.grpc_port = start_threaded_grpc_server(
                    self.service,
                    host=settings.host,
                    port=settings.grpc_port,
                    max_request_bytes=settings.max_request_bytes,
                    workers=settings.grpc_threads,
                )
            else:
                self._grpc, self.grpc_port = await start_grpc_server(
                    self.service,
                    host=settings.host,
                    port=settings.grpc_port,
                    max_request_bytes=settings.max_request_bytes,
                )
        except OSError as exc:
            raise StartupError(str(exc)) from exc
        self.service.start_accepting()
        logger.info(
            "serving %d model(s) from %s: HTTP on %s:%d, gRPC on %s:%d",
            len(self.registry.models()),
            settings.model_repository,
            settings.host,
            self.http_port,
            settings.host,
            self.grpc_port,
        )

    async def stop(self) -> None:
        """Stop taking requests, let in-flight ones finish within the grace period, release.

        Readiness turns false first; both front ends then drain at the same time, each within
        the grace period; the thread pools are joined off the event loop."""
        grace = self.settings.shutdown_grace_s
        if self.service is not None:
            self.service.stop_accepting()
        drains = []
        if self._grpc is not None:
            drains.append(self._grpc.stop(grace))
        if self._threaded_grpc is not None:
            stopped = self._threaded_grpc.stop(grace)
            drains.append(asyncio.to_thread(stopped.wait))
            self._threaded_grpc = None
        if self._http is not None:
            drains.append(self._http.cleanup())
        await asyncio.gather(*drains)
        self._grpc = self._http = None
        for pool in (self._inference_pool, self._load_pool):
            if pool is not None:
                await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
        self._load_pool = None
        for version in self.registry.all_versions():
            if version.runner is not None:
                version.runner.close()
                version.runner = None
        logger.info("stopped")


async def serve(settings: GatewaySettings) -> None:
    """Run until SIGINT or SIGTERM, then drain and stop."""
    gateway = Gateway(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # A signal during start-up (models can take minutes to load) stops it there.
    starting = asyncio.ensure_future(gateway.start())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            logger.info("signal received during start-up: stopping")
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
        else:
            starting.result()  # raises StartupError
            await stopping
            logger.info("shutting down")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)  # a second Ctrl-C now interrupts the drain
        stopping.cancel()
        await gateway.stop()
