"""Gateway settings: command-line options and GATEWAY_* environment variables, read once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIB = 1024 * 1024


class GatewaySettings(BaseSettings):
    """Every option of `gateway serve`. Each field is also GATEWAY_<FIELD> in the environment."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="forbid", frozen=True)

    model_repository: Path = Field(
        Path("models/repository"), description="Triton-layout model repository to serve."
    )
    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 for all).")
    http_port: int = Field(8000, ge=0, le=65535, description="HTTP port; 0 picks a free one.")
    grpc_port: int = Field(8001, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    model_control_mode: Literal["none", "explicit", "poll"] = Field(
        "none",
        description="Triton's model control modes: 'none' loads every model at start; "
        "'explicit' loads only --load-model names at start; 'poll' loads every model and then "
        "applies repository changes by itself. The load/unload API works in every mode.",
    )
    load_model: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="A model to load at start in explicit mode (repeatable; '*' = all; the "
        "environment variable takes a comma-separated list).",
    )
    repository_poll_secs: float = Field(
        15.0,
        gt=0,
        description="Poll mode: seconds between scans. A changed model is applied once its "
        "files stayed the same for a whole interval (see README: hot swap).",
    )
    admin_token: str | None = Field(
        None,
        min_length=16,
        description="Bearer token that load, unload and label calls must carry (prefer the "
        "environment variable or --admin-token-file to keep it out of the process list).",
    )
    admin_token_file: Path | None = Field(
        None,
        description="File of admin tokens, one per line: 'token' or 'name token' (the name "
        "is written to the audit log).",
    )
    admin_http_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Serve admin calls (load, unload, labels) only on this HTTP port, not on "
        "--http-port; 0 picks a free one.",
    )
    admin_grpc_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Serve admin calls only on this gRPC port, not on --grpc-port.",
    )
    shadow_threads: int = Field(
        1,
        ge=1,
        description="Threads that run shadow copies, at the lowest CPU priority (SCHED_IDLE): "
        "shadows use only CPU that serving leaves.",
    )
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Also serve GET /metrics (Prometheus) on this port; it is always on the "
        "HTTP port.",
    )
    load_priority: Literal["normal", "low", "idle"] = Field(
        "low",
        description="CPU priority of the threads that load and warm models: 'low' (nice 10) "
        "and 'idle' (Linux SCHED_IDLE: only CPU nobody else wants) keep swaps from taking CPU "
        "from requests being served; 'normal' loads fastest.",
    )
    grpc_server: Literal["threaded", "asyncio"] = Field(
        "threaded",
        description="gRPC front end: grpc.aio on the event loop, or grpcio's thread-pool server "
        "feeding the event loop (cheaper per call; see README).",
    )
    http_server: Literal["httptools", "aiohttp"] = Field(
        "httptools",
        description="HTTP front end: 'httptools' answers inference, health, metadata, config "
        "and statistics on a lean HTTP/1.1 protocol (about half the CPU a request) and hands "
        "any other request's connection to aiohttp; 'aiohttp' serves every route with aiohttp.",
    )
    grpc_threads: int = Field(
        256,
        ge=1,
        description="Worker threads of the threaded gRPC server: the calls served at once "
        "(as many more wait for a worker; beyond that calls are refused).",
    )
    http_compress_responses: bool = Field(
        False,
        description="Compress HTTP responses of 1 KiB or more when the client accepts gzip or "
        "deflate. Off by default: most HTTP clients send Accept-Encoding unasked, and tensors "
        "of floats cost much CPU to compress for little gain.",
    )
    max_request_bytes: int = Field(
        64 * MIB, gt=0, description="Largest request body or gRPC message accepted, in bytes."
    )
    default_max_batch_size: int = Field(
        64,
        ge=0,
        description="max_batch_size for models without config.pbtxt whose ONNX file has a "
        "dynamic first dimension on every input and output (0 disables batching).",
    )
    default_max_queue_size: int = Field(
        1024,
        ge=1,
        description="Requests that may wait for a model version at once when its config sets "
        "no dynamic_batching.default_queue_policy.max_queue_size; beyond it: 429.",
    )
    max_queue_bytes: int = Field(
        256 * MIB,
        gt=0,
        description="Input bytes that may wait for one model version; beyond it: 429. With "
        "max_request_bytes this bounds memory (a request larger than it still runs alone).",
    )
    solo_on_loop_us: int = Field(
        1000,
        ge=0,
        description="A request alone in flight (one gRPC call, or one HTTP connection that asks "
        "for inference, and no other caller) runs its model on the event loop instead of an "
        "inference thread when the version's last one-row run took less than this many "
        "microseconds: two thread hand-offs fewer for a lone caller, none under load; 0 = never.",
    )
    exit_on_error: bool = Field(
        True, description="Exit at start-up if any model fails to load (as Triton does)."
    )
    inference_threads: int = Field(
        0,
        ge=0,
        description="Threads that run model executions, and the executions one model version "
        "may run at once when its config sets no instance_group count; 0 = usable cores.",
    )
    inference_nice: int = Field(
        0,
        ge=0,
        le=19,
        description="Niceness of the threads that run model executions (Linux keeps it per "
        "thread); 0 = as the rest of the server. Where the model shares a core with grpcio's "
        "threads, a higher value lets them bring requests in while a batch runs, so batches "
        "grow (see loadtest/FINDINGS.md). In a container it weighs only against the gateway's own "
        "threads; on a host shared with other busy processes, against theirs too.",
    )
    scheduling_policy: Literal["normal", "batch"] = Field(
        "batch",
        description="Linux CPU scheduling policy of the server's threads: 'batch' (SCHED_BATCH: "
        "a thread that wakes another is not preempted by it, so a request handed from thread to "
        "thread costs fewer context switches; see gateway/app/scheduling.py) or 'normal' "
        "(SCHED_OTHER, the kernel's default). Both share the CPU fairly and honour niceness.",
    )
    gc_threshold: int = Field(
        10_000,
        ge=0,
        description="Allocations between the garbage collector's young-generation collections "
        "(Python's default is 700, which requests in flight reach a hundred times a second); "
        "0 = the interpreter's default. Objects alive at start-up are frozen out of collections "
        "either way (see gateway/app/heap.py).",
    )
    load_threads: int = Field(2, ge=1, description="Threads that load and warm models.")
    intra_op_threads: int = Field(
        0,
        ge=0,
        description="Default onnxruntime intra-op threads per session (a model's parameters "
        "override it); 0 = cores / inference threads, at least 1.",
    )
    huge_pages: bool = Field(
        True,
        description="After each CPU model version loads, move the process's memory whose pages "
        "are all written (the weights among it) into transparent huge pages, for fewer TLB "
        "misses: a lone caller of an 80 MB model was answered in about x0.92 the time here. "
        "Linux 6.1 or later; adds no memory (see gateway/runtime/huge_pages.py).",
    )
    feedback_max_entries: int = Field(
        100_000,
        ge=0,
        description="Request ids whose prediction is remembered for feedback (oldest "
        "forgotten first); 0 = remember none (labels in request parameters still count).",
    )
    feedback_ttl_s: float = Field(
        3600.0, gt=0, description="Seconds feedback may arrive after its request."
    )
    accuracy_window: int = Field(
        1000,
        ge=1,
        description="Windowed accuracy and error are over each version's last this many "
        "observations (feedback rows).",
    )
    event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop", description="Event loop implementation."
    )
    shutdown_grace_s: float = Field(
        10.0, ge=0, description="Seconds in-flight requests get to finish on SIGTERM."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level."
    )
    log_format: Literal["text", "json"] = Field("text", description="Log line format.")
    metrics: bool = Field(
        True,
        description="Prometheus metrics at GET /metrics (a few microseconds a request); off "
        "only to measure what they cost.",
    )
    tracing: bool = Field(
        False,
        description="OpenTelemetry tracing of requests and batches, configured by the standard "
        "OTEL_* variables (exporter, endpoint, protocol, sampler, service name; see README). "
        "Off: nothing is created per request.",
    )

    @field_validator("load_model", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    def resolved_inference_threads(self) -> int:
        return self.inference_threads or usable_cores()

    def resolved_intra_op_threads(self) -> int:
        if self.intra_op_threads:
            return self.intra_op_threads
        return max(1, usable_cores() // self.resolved_inference_threads())


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask), not every core of the host."""
    return len(os.sched_getaffinity(0))
