"""Builds the gateway from settings and owns its start, drain and stop order."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import grpc
from aiohttp import web

from gateway import __version__
from gateway.adapters.grpc.server import create_grpc_server
from gateway.adapters.grpc.threaded import start_threaded_grpc_server
from gateway.adapters.http.app import create_app
from gateway.adapters.http.errors import quiet_client_mistakes
from gateway.adapters.http.fastpath import FastPathServer
from gateway.adapters.http.metrics import metrics_app, metrics_routes
from gateway.config.settings import GatewaySettings
from gateway.core.admin import AdminAuthorizer, read_token_file
from gateway.core.feedback import FeedbackStore
from gateway.core.lifecycle import LoadFailure, ModelLifecycle
from gateway.core.ports import SourceError
from gateway.core.registry import ModelRegistry
from gateway.core.rollout import RolloutController
from gateway.core.service import InferenceService
from gateway.core.shadow import ShadowDispatcher
from gateway.core.telemetry import Telemetry
from gateway.core.workers import WorkerPool, name_os_thread
from gateway.runtime.onnx_runner import installation_problem
from gateway.runtime.repository import FileRepository
from gateway.telemetry.metrics import (
    GatewayMetrics,
    feedback_metrics,
    rollout_metrics,
    shadow_metrics,
)

if TYPE_CHECKING:
    from gateway.telemetry.tracing import OtelTracing

logger = logging.getLogger(__name__)


class StartupError(Exception):
    """The gateway cannot start; the message says why."""


# -- tracing (OpenTelemetry) ------------------------------------------------------------------
def build_tracing(settings: GatewaySettings) -> OtelTracing | None:
    """Request and batch tracing when --tracing is on, as the OTEL_* variables configure it;
    None when off (then nothing is created per request)."""
    if not settings.tracing:
        return None
    from gateway.telemetry.tracing import TracingConfigError, tracing_from_env  # OTel: only if on

    try:
        return tracing_from_env(service_version=__version__)
    except TracingConfigError as exc:
        raise StartupError(f"tracing: {exc}") from exc


# -- end tracing ------------------------------------------------------------------------------


def _lower_priority(priority: str) -> None:
    """Thread initializer of the load pool: loads and warm-ups yield the CPU to serving.
    Linux keeps niceness and policy per thread; threads onnxruntime starts here inherit them."""
    name_os_thread()
    if priority == "low":
        _set_nice(10)
    elif priority == "idle":
        with contextlib.suppress(OSError, AttributeError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def _set_nice(nice: int) -> None:
    """Thread initializer: this thread's niceness (Linux keeps it per thread)."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


def admin_tokens(settings: GatewaySettings) -> dict[str, str]:
    """token -> who, from --admin-token and --admin-token-file."""
    tokens: dict[str, str] = {}
    if settings.admin_token:
        tokens[settings.admin_token] = "admin"
    if settings.admin_token_file is not None:
        try:
            tokens.update(read_token_file(settings.admin_token_file.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise StartupError(f"admin token file {settings.admin_token_file}: {exc}") from exc
    return tokens


class Gateway:
    """One gateway process: model registry, inference service, HTTP and gRPC front ends."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self._inference_pool = WorkerPool(
            settings.resolved_inference_threads(),
            "inference",
            functools.partial(_set_nice, settings.inference_nice)
            if settings.inference_nice
            else None,
        )
        self.tracing = build_tracing(settings)  # tracing
        self.telemetry = Telemetry(tracing=self.tracing)
        self._shadow_pool = WorkerPool(
            settings.shadow_threads, "shadow", functools.partial(_lower_priority, "idle")
        )
        self.registry = ModelRegistry(
            self._inference_pool,
            default_max_queue_size=settings.default_max_queue_size,
            max_queue_bytes=settings.max_queue_bytes,
            solo_on_loop_s=settings.solo_on_loop_us / 1e6,
            telemetry=self.telemetry,
            shadow_workers=self._shadow_pool,
        )
        self.shadows = ShadowDispatcher(self.telemetry)
        self.metrics = GatewayMetrics(self.registry)  # a few microseconds a request
        if settings.metrics:
            self.telemetry.add_observer(self.metrics)
        self.metrics_port: int | None = None
        self.feedback = FeedbackStore(
            max_entries=settings.feedback_max_entries,
            ttl_s=settings.feedback_ttl_s,
            window=settings.accuracy_window,
        )
        self.metrics.add_collector(feedback_metrics(self.feedback))
        self.metrics.add_collector(shadow_metrics(self.shadows))
        self._load_pool: ThreadPoolExecutor | None = None
        self._http: web.AppRunner | None = None
        self._grpc_servers: list[grpc.aio.Server] = []
        self._threaded_grpc_servers: list[grpc.Server] = []
        self._http_runners: list[web.AppRunner] = []
        self._fast_http: list[tuple[asyncio.Server, FastPathServer]] = []
        self.service: InferenceService | None = None
        self.lifecycle: ModelLifecycle | None = None
        self.rollouts: RolloutController | None = None
        self._poller: asyncio.Task[None] | None = None
        self.http_port = 0
        self.grpc_port = 0
        self.admin_http_port: int | None = None
        self.admin_grpc_port: int | None = None
        self.load_failures: list[LoadFailure] = []

    async def start(self) -> None:
        settings = self.settings
        problem = installation_problem()
        if problem:
            logger.warning("%s", problem)
        authorizer = AdminAuthorizer(admin_tokens(settings))
        self._load_pool = ThreadPoolExecutor(
            settings.load_threads,
            thread_name_prefix="load",
            initializer=_lower_priority,
            initargs=(settings.load_priority,),
        )
        repository = FileRepository(
            settings.model_repository,
            default_max_batch_size=settings.default_max_batch_size,
            default_intra_op_threads=settings.resolved_intra_op_threads(),
            default_concurrency=settings.resolved_inference_threads(),
            huge_pages=settings.huge_pages,
        )
        self.lifecycle = ModelLifecycle(self.registry, repository, self._load_pool)
        # Rollouts: each step's window from the request events; resumed as models load.
        self.rollouts = RolloutController(
            self.lifecycle, self.shadows, self.feedback, telemetry=self.telemetry
        )
        self.lifecycle.add_listener(self.rollouts)
        self.metrics.add_collector(rollout_metrics(self.rollouts))
        self.service = InferenceService(
            self.registry,
            version=__version__,
            lifecycle=self.lifecycle,
            authorizer=authorizer,
            feedback=self.feedback,
            shadows=self.shadows,
            rollouts=self.rollouts,
        )
        try:
            self.load_failures = await self.lifecycle.load_all(self._startup_models())
        except SourceError as exc:  # the repository itself: missing, or not listable
            raise StartupError(str(exc)) from exc
        if self.load_failures and settings.exit_on_error:
            lines = "\n".join(f"  - {f.model}: {f.reason}" for f in self.load_failures)
            raise StartupError(
                f"{len(self.load_failures)} model load failure(s) "
                f"(--no-exit-on-error serves the rest):\n{lines}"
            )
        # Admin listeners first, so the main ones can say where admin calls go. A protocol
        # without an admin port keeps its admin calls on its main port.
        http_admin = grpc_admin = ""
        if settings.admin_http_port is not None:
            self.admin_http_port = await self._start_http(settings.admin_http_port, "")
            http_admin = f"HTTP port {self.admin_http_port}"
        if settings.admin_grpc_port is not None:
            self.admin_grpc_port = self._start_grpc(settings.admin_grpc_port, "")
            grpc_admin = f"gRPC port {self.admin_grpc_port}"
        self.http_port = await self._start_http(settings.http_port, http_admin)
        self.grpc_port = self._start_grpc(settings.grpc_port, grpc_admin)
        if settings.metrics_port is not None and settings.metrics:
            self.metrics_port = await self._serve(
                metrics_app(self.metrics.registry), settings.metrics_port, "metrics"
            )
        await asyncio.gather(*(server.start() for server in self._grpc_servers))
        if settings.model_control_mode == "poll":
            self._poller = asyncio.create_task(self._poll(settings.repository_poll_secs))
        self.service.start_accepting()
        admin = "".join(f"; admin calls on {where}" for where in (http_admin, grpc_admin) if where)
        logger.info(
            "serving %d model(s) from %s: HTTP on %s:%d, gRPC on %s:%d (%s HTTP, %s gRPC)%s%s",
            len(self.registry.models()),
            settings.model_repository,
            settings.host,
            self.http_port,
            settings.host,
            self.grpc_port,
            settings.http_server,
            settings.grpc_server,
            admin,
            "; admin token required" if authorizer.required else "",
        )

    def _startup_models(self) -> list[str] | None:
        """The models to load at start: all of them, or in explicit mode the named ones."""
        settings = self.settings
        if settings.model_control_mode != "explicit" or "*" in settings.load_model:
            return None
        return list(dict.fromkeys(settings.load_model))

    async def _start_http(self, port: int, admin_elsewhere: str) -> int:
        assert self.service is not None
        settings = self.settings
        app = create_app(
            self.service,
            max_request_bytes=settings.max_request_bytes,
            compress_responses=settings.http_compress_responses,
            admin_elsewhere=admin_elsewhere,
            extra_routes=metrics_routes(self.metrics.registry) if settings.metrics else (),
        )
        runner = await self._runner(app)
        if settings.http_server == "aiohttp":
            return await self._listen(runner, port, "HTTP")
        # The data plane on httptools; connections with any other request go to the runner's
        # aiohttp server, which runner.cleanup() drains with the app.
        assert runner.server is not None
        fast = FastPathServer(
            self.service,
            runner.server,
            max_request_bytes=settings.max_request_bytes,
            compress_responses=settings.http_compress_responses,
        )
        loop = asyncio.get_running_loop()
        try:
            listener = await loop.create_server(fast, settings.host, port)
        except OSError as exc:
            raise StartupError(f"cannot listen for HTTP on {settings.host}:{port}: {exc}") from exc
        self._fast_http.append((listener, fast))
        bound: int = listener.sockets[0].getsockname()[1]
        return bound

    async def _serve(self, app: web.Application, port: int, what: str) -> int:
        """Listen with `app` (aiohttp alone) on the gateway's host; returns the port."""
        return await self._listen(await self._runner(app), port, what)

    async def _runner(self, app: web.Application) -> web.AppRunner:
        quiet_client_mistakes()
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=self.settings.shutdown_grace_s,
            # A client that disconnects cancels its handler, so it leaves the batcher's line.
            handler_cancellation=True,
        )
        await runner.setup()
        self._http_runners.append(runner)
        return runner

    async def _listen(self, runner: web.AppRunner, port: int, what: str) -> int:
        settings = self.settings
        site = web.TCPSite(runner, settings.host, port)
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(
                f"cannot listen for {what} on {settings.host}:{port}: {exc}"
            ) from exc
        bound: int = runner.addresses[-1][1]
        return bound

    def _start_grpc(self, port: int, admin_elsewhere: str) -> int:
        """Create and bind a gRPC server (asyncio servers start later, together)."""
        assert self.service is not None
        settings = self.settings
        try:
            if settings.grpc_server == "threaded":
                server, bound = start_threaded_grpc_server(
                    self.service,
                    host=settings.host,
                    port=port,
                    max_request_bytes=settings.max_request_bytes,
                    workers=settings.grpc_threads,
                    admin_elsewhere=admin_elsewhere,
                )
                self._threaded_grpc_servers.append(server)
                return bound
            aio_server, bound = create_grpc_server(
                self.service,
                host=settings.host,
                port=port,
                max_request_bytes=settings.max_request_bytes,
                admin_elsewhere=admin_elsewhere,
            )
            self._grpc_servers.append(aio_server)
            return bound
        except OSError as exc:
            raise StartupError(str(exc)) from exc

    async def _poll(self, interval_s: float) -> None:
        assert self.lifecycle is not None
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.lifecycle.poll_once()
            except SourceError as exc:  # the repository: one line a scan
                logger.error("repository poll failed: %s", exc)
            except Exception:  # the poller must outlive a bad scan (and a bug says where)
                logger.exception("repository poll failed")

    async def stop(self) -> None:
        """Stop taking requests, let in-flight ones finish within the grace period, release.

        Readiness turns false first; both front ends then drain at the same time, each within
        the grace period; the thread pools are joined off the event loop."""
        grace = self.settings.shutdown_grace_s
        if self.service is not None:
            self.service.stop_accepting()
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
            self._poller = None
        if self.rollouts is not None:  # running rollouts stay persisted: the next start resumes
            await self.rollouts.close()
        drains = [server.stop(grace) for server in self._grpc_servers]
        for threaded in self._threaded_grpc_servers:
            drains.append(asyncio.to_thread(threaded.stop(grace).wait))
        drains += [fast.shutdown(listener, grace) for listener, fast in self._fast_http]
        drains += [runner.cleanup() for runner in self._http_runners]
        await asyncio.gather(*drains)
        self._grpc_servers, self._threaded_grpc_servers, self._http_runners = [], [], []
        self._fast_http = []
        await self.shadows.close()
        for workers in (self._inference_pool, self._shadow_pool):
            await asyncio.to_thread(workers.shutdown, wait=True, cancel_pending=True)
        if self._load_pool is not None:
            await asyncio.to_thread(self._load_pool.shutdown, wait=True, cancel_futures=True)
        self._load_pool = None
        if self.lifecycle is not None:
            await self.lifecycle.close()
        for version in self.registry.all_versions():
            if version.runner is not None:
                version.runner.close()
                version.runner = None
        if self.tracing is not None:  # tracing: export what is left, stop the exporter
            await asyncio.to_thread(self.tracing.shutdown)
            self.tracing = None
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
