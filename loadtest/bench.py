"""Load benchmark: how close does the gateway get to what the model alone can do on one core?

One run measures, on the same machine and the same model file:

1. **Bare onnxruntime** (the baseline), in a subprocess pinned to the server core with
   intra_op_num_threads=1: batch-1 latency and runs/s for --baseline-duration seconds, then
   samples/s at each of --batch-sizes for --sweep-duration seconds each. The best samples/s
   among the batch sizes the gateway accepts (<= max_batch_size) is **the model's limit**: what
   one core can do with this model, whatever serves it.
2. **The gateway** (`gateway serve`, pinned to the server core) under a closed-loop load
   generator pinned to the client core (a `bench.py _load` subprocess): for each protocol and
   each concurrency C, C workers each send a batch-1 request (random rows, fixed seed), check
   the answer (success, every output with the expected datatype and shape), and send the next
   one, for --warmup + --duration seconds. Only requests that complete inside the measurement
   window (after the warm-up) are counted. Request bodies are encoded before the run; decoding
   and checking the response is inside the measured latency.

How to read the figures (markdown report and results.json):

- `req/s / ORT b1`: gateway requests/s divided by bare onnxruntime batch-1 runs/s. 1.0 would
  mean serving costs nothing; 0.5 means half of the server core goes to the protocol stack.
  Without dynamic batching it cannot exceed about 1.0; with it, the ceiling is the model's limit.
- `samples/s / limit`: gateway samples/s divided by the model's limit (the best batch size).
- `p50 - ORT (ms)`: gateway p50 latency minus bare batch-1 p50: the time a request spends
  outside the model (transport, decoding, scheduling). Above concurrency 1 it also holds the
  wait behind other requests, so it grows with concurrency once the server core is saturated.
- `server CPU %`: utime+stime of the server process (all threads) over the window, as % of one
  core. Near 100 % the server core is saturated and req/s is the gateway's limit; well below,
  the bottleneck is elsewhere (latency-bound at concurrency 1, or the client).
- `server CPU us/req`: server CPU time per request. Compare it with the bare per-run time
  (1e6 / ORT b1 runs/s): the difference is the gateway's CPU overhead per request.
- `client CPU %`: the same for the load generator, as % of its core. Near 100 % the client
  (one Python process) is the bottleneck: the row is a lower bound for the gateway.
- `other CPU %`: CPU used by every other process on the machine (plus hypervisor steal)
  during the window. From 10 % on (NOISY_PCT) the row is marked `~`: the machine was not quiet.
- A row with errors is flagged (`!`), and the exit status is 1.

Run it with the project's virtual environment, from the repository root:

    .venv/bin/python loadtest/bench.py --model mlp --concurrency 1 16 --duration 10 \\
        --protocols grpc http-binary http-json --out loadtest/results
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve()
PROTOCOLS = ("grpc", "http-binary", "http-json")
POOL_ROWS = 256
"""Distinct random rows per input; requests cycle through them."""
READY_LINE = re.compile(r"HTTP on (?P<http_host>\S+):(?P<http>\d+), gRPC on \S+:(?P<grpc>\d+)")
NUMPY_DTYPES: dict[str, str] = {
    "BOOL": "bool",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}
ORT_TYPES: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
}

CLIENT_BOUND_PCT = 90
"""Client CPU (% of its core) from which a row is marked as possibly client-bound."""
NOISY_PCT = 10
"""CPU used by other processes (% of one core) from which a row is marked as noisy."""

Feeds = dict[str, npt.NDArray[Any]]


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# -- figures ---------------------------------------------------------------------------------


def latency_ms(seconds: Sequence[float]) -> dict[str, float | None]:
    """p50/p90/p99/mean/max of latencies given in seconds, in milliseconds."""
    if not seconds:
        return dict.fromkeys(("p50", "p90", "p99", "mean", "max"))
    ms = np.asarray(seconds) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "mean": float(ms.mean()),
        "max": float(ms.max()),
    }


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) from /proc/<pid>/stat, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # the name in parentheses may contain spaces
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds used so far: by the server, by this process, and by the whole machine."""

    wall: float
    server: float
    own: float
    machine_busy: float
    machine_steal: float

    @classmethod
    def take(cls, server_pid: int | None) -> CpuSample:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields)
        tick = os.sysconf("SC_CLK_TCK")
        return cls(
            wall=time.perf_counter(),
            server=0.0 if server_pid is None else cpu_seconds(server_pid),
            own=time.process_time(),
            machine_busy=(user + nice + system + irq + softirq) / tick,
            machine_steal=steal / tick,
        )


def cpu_figures(before: CpuSample, after: CpuSample) -> dict[str, float]:
    """CPU use between two samples, in % of one core. `other` is everything but server + own."""
    wall = after.wall - before.wall
    server, own = after.server - before.server, after.own - before.own
    other = after.machine_busy - before.machine_busy - server - own
    return {
        "server_cpu_s": server,
        "server_cpu_pct": 100 * server / wall,
        "own_cpu_pct": 100 * own / wall,
        "other_cpu_pct": max(0.0, 100 * other / wall),
        "steal_pct": 100 * (after.machine_steal - before.machine_steal) / wall,
    }


# -- tensors and random inputs ---------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    """A tensor as V2 model metadata describes it: -1 marks a variable dimension."""

    name: str
    datatype: str
    shape: list[int]


def concrete_shape(info: TensorInfo, batch: int, batched: bool) -> list[int]:
    """The shape to send: batch size first when the model batches, 1 for other -1 dims."""
    dims = [1 if d < 0 else d for d in info.shape]
    if batched:
        dims[0] = batch
    return dims


def random_array(rng: np.random.Generator, datatype: str, shape: list[int]) -> npt.NDArray[Any]:
    dtype = NUMPY_DTYPES.get(datatype)
    if dtype is None:
        raise SystemExit(f"bench: inputs of datatype {datatype} are not supported")
    if datatype == "BOOL":
        return rng.random(shape) < 0.5
    if datatype.startswith("FP"):
        return rng.random(shape, dtype=np.float64).astype(dtype)  # like pixel values in [0, 1)
    return rng.integers(0, 16, size=shape).astype(dtype)


def random_feeds(inputs: Sequence[TensorInfo], batch: int, batched: bool, seed: int) -> list[Feeds]:
    """POOL_ROWS random rows per input (fixed seed), grouped into feeds of `batch` rows."""
    rng = np.random.default_rng(seed)
    count = max(1, POOL_ROWS // batch)
    return [
        {t.name: random_array(rng, t.datatype, concrete_shape(t, batch, batched)) for t in inputs}
        for _ in range(count)
    ]


# -- bare onnxruntime baseline (runs in its own pinned subprocess) ----------------------------


def ort_inputs(session: Any) -> list[TensorInfo]:
    return [
        TensorInfo(
            i.name,
            ORT_TYPES.get(i.type, i.type),
            [d if isinstance(d, int) and d >= 0 else -1 for d in i.shape],
        )
        for i in session.get_inputs()
    ]


def timed_runs(session: Any, feeds: list[Feeds], seconds: float) -> tuple[list[float], float]:
    """Run the session back to back for `seconds`: per-run latencies and the elapsed time."""
    latencies: list[float] = []
    start = time.perf_counter()
    end = start + seconds
    now = start
    while now < end:
        session.run(None, feeds[len(latencies) % len(feeds)])
        done = time.perf_counter()
        latencies.append(done - now)
        now = done
    return latencies, now - start


def baseline_main(job: dict[str, Any]) -> dict[str, Any]:
    """Batch-1 latency and runs/s, then samples/s per batch size, on bare onnxruntime."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(
        job["model_file"], sess_options=options, providers=["CPUExecutionProvider"]
    )
    inputs = ort_inputs(session)
    batched = all(t.shape and t.shape[0] == -1 for t in inputs)
    timed_runs(session, random_feeds(inputs, 1, batched, job["seed"]), job["warmup_s"])
    before = CpuSample.take(None)
    latencies, elapsed = timed_runs(
        session, random_feeds(inputs, 1, batched, job["seed"]), job["duration_s"]
    )
    cpu = cpu_figures(before, CpuSample.take(None))
    batch1 = {
        "runs": len(latencies),
        "seconds": elapsed,
        "runs_per_s": len(latencies) / elapsed,
        "latency_ms": latency_ms(latencies),
        "cpu_pct": cpu["own_cpu_pct"],
        "other_cpu_pct": cpu["other_cpu_pct"],
        "steal_pct": cpu["steal_pct"],
    }
    sweep = [
        {
            "batch_size": 1,
            "runs_per_s": batch1["runs_per_s"],
            "samples_per_s": batch1["runs_per_s"],
            "latency_ms": batch1["latency_ms"],
        }
    ]
    for size in job["batch_sizes"] if batched else []:
        if size == 1:
            continue
        feeds = random_feeds(inputs, size, batched, job["seed"])
        timed_runs(session, feeds, min(job["warmup_s"], 0.5))
        runs, seconds = timed_runs(session, feeds, job["sweep_s"])
        sweep.append(
            {
                "batch_size": size,
                "runs_per_s": len(runs) / seconds,
                "samples_per_s": len(runs) * size / seconds,
                "latency_ms": latency_ms(runs),
            }
        )
    return {
        "onnxruntime_version": ort.__version__,
        "model_file": job["model_file"],
        "intra_op_num_threads": 1,
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "inputs": [asdict(t) for t in inputs],
        "batched": batched,
        "batch1": batch1,
        "sweep": sweep,
    }


# -- load generator (runs in its own pinned subprocess) --------------------------------------


@dataclass(frozen=True)
class LoadJob:
    """Everything a `_load` subprocess needs; sent to it as JSON on stdin."""

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

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> LoadJob:
        tensors = {k: [TensorInfo(**t) for t in document[k]] for k in ("inputs", "outputs")}
        return cls(**{**document, **tensors})


class BadResponse(Exception):
    """An answer that is not a success with the expected outputs."""


def expected_shape(info: TensorInfo, batched: bool) -> list[int]:
    """An output's shape in a batch-1 answer; -1 (any size) for its other variable dims."""
    dims = list(info.shape)
    if batched:
        dims[0] = 1
    return dims


def check_outputs(job: LoadJob, got: dict[str, tuple[str, list[int]]]) -> None:
    """Every output the model has, with its datatype and batch-1 shape."""
    for expected in job.outputs:
        if expected.name not in got:
            raise BadResponse(f"output '{expected.name}' missing")
        datatype, shape = got[expected.name]
        want = expected_shape(expected, job.batched)
        matches = len(shape) == len(want) and all(
            w in (-1, s) for w, s in zip(want, shape, strict=True)
        )
        if datatype != expected.datatype or not matches:
            raise BadResponse(
                f"output '{expected.name}' is {datatype} {shape}, expected "
                f"{expected.datatype} {want}"
            )


def element_bytes(datatype: str, shape: Sequence[int]) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(NUMPY_DTYPES[datatype]).itemsize


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
        self._stubs = [
            pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
            for channel in self._channels
        ]
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
                raise BadResponse(f"output '{output.name}': raw_output_contents has wrong size")

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


class HttpClient:
    """aiohttp, keep-alive, one connection per worker; JSON or binary tensor extension."""

    def __init__(self, job: LoadJob, feeds: list[Feeds], binary: bool) -> None:
        import aiohttp

        self._job = job
        self._binary = binary
        version = f"/versions/{job.model_version}" if job.model_version else ""
        self._url = f"http://{job.host}:{job.http_port}/v2/models/{job.model}{version}/infer"
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=job.concurrency),
            timeout=aiohttp.ClientTimeout(total=job.timeout_s),
        )
        encode = self._binary_body if binary else self._json_body
        self._bodies = [encode(feed) for feed in feeds]

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
            "Inference-Header-Content-Length": str(len(header)),
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
        body, headers = self._bodies[index % len(self._bodies)]
        async with self._session.post(self._url, data=body, headers=headers) as response:
            payload = await response.read()
            if response.status != 200:
                raise BadResponse(f"HTTP {response.status}: {payload[:200]!r}")
            length = response.headers.get("Inference-Header-Content-Length")
        self._check(payload, None if length is None else int(length))

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
                raise BadResponse(f"output '{output['name']}' is not binary")
            if size is not None:
                if size != element_bytes(output["datatype"], output["shape"]):
                    raise BadResponse(f"output '{output['name']}': binary_data_size is wrong")
                binary_bytes += size
            elif np.asarray(output["data"]).size != np.prod(output["shape"]):
                raise BadResponse(f"output '{output['name']}': data does not match its shape")
        if binary_bytes != len(payload) - len(header):
            raise BadResponse("binary data does not add up to the body length")

    async def close(self) -> None:
        await self._session.close()


def make_client(job: LoadJob, feeds: list[Feeds]) -> Client:
    if job.protocol == "grpc":
        return GrpcClient(job, feeds)
    if job.protocol in ("http-binary", "http-json"):
        return HttpClient(job, feeds, binary=job.protocol == "http-binary")
    raise SystemExit(f"bench: unknown protocol {job.protocol}")


@dataclass
class LoadTally:
    """What the workers saw: latencies of requests completed in the window, and errors."""

    window_start: float
    window_end: float
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    warmup_errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def record(self, start: float, done: float, error: str | None) -> None:
        in_window = self.window_start <= done < self.window_end
        if error is None:
            if in_window:
                self.latencies.append(done - start)
            return
        if in_window:
            self.errors += 1
        elif done < self.window_start:
            self.warmup_errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(error)


async def worker(client: Client, first: int, step: int, tally: LoadTally) -> None:
    """Closed loop: send, wait for the checked answer, send the next, until the window ends."""
    index = first
    while (start := time.perf_counter()) < tally.window_end:
        error = None
        try:
            await client.infer(index)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        tally.record(start, time.perf_counter(), error)
        index += step


async def cpu_window(job: LoadJob, tally: LoadTally) -> dict[str, float]:
    """Server, client (this process) and other CPU use over the measurement window."""
    await asyncio.sleep(max(0.0, tally.window_start - time.perf_counter()))
    before = CpuSample.take(job.server_pid)
    await asyncio.sleep(max(0.0, tally.window_end - time.perf_counter()))
    figures = cpu_figures(before, CpuSample.take(job.server_pid))
    figures["client_cpu_pct"] = figures.pop("own_cpu_pct")
    return figures


async def run_load(job: LoadJob) -> dict[str, Any]:
    feeds = random_feeds(job.inputs, 1, job.batched, job.seed)
    client = make_client(job, feeds)
    start = time.perf_counter()
    tally = LoadTally(start + job.warmup_s, start + job.warmup_s + job.duration_s)
    try:
        cpu_task = asyncio.ensure_future(cpu_window(job, tally))
        workers = [worker(client, i, job.concurrency, tally) for i in range(job.concurrency)]
        limit = job.warmup_s + job.duration_s + job.timeout_s + 5
        await asyncio.wait_for(asyncio.gather(cpu_task, *workers), limit)
        cpu = cpu_task.result()
    finally:
        await client.close()
    requests = len(tally.latencies)
    return {
        "protocol": job.protocol,
        "concurrency": job.concurrency,
        "seconds": job.duration_s,
        "requests": requests,
        "requests_per_s": requests / job.duration_s,
        "samples_per_s": requests / job.duration_s,  # batch-1 requests
        "latency_ms": latency_ms(tally.latencies),
        "errors": tally.errors,
        "warmup_errors": tally.warmup_errors,
        "error_samples": tally.error_samples,
        **cpu,
        "server_cpu_us_per_request": 1e6 * cpu["server_cpu_s"] / requests if requests else None,
        "client_cpu_affinity": sorted(os.sched_getaffinity(0)),
    }


def load_main(document: dict[str, Any]) -> dict[str, Any]:
    job = LoadJob.from_json(document)
    try:
        import uvloop

        return uvloop.run(run_load(job))
    except ImportError:
        return asyncio.run(run_load(job))


# -- the gateway under test ------------------------------------------------------------------


@dataclass(frozen=True)
class RunningServer:
    process: subprocess.Popen[bytes]
    host: str
    http_port: int
    grpc_port: int
    log_file: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.http_port}{path}"

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            tail = "\n".join(self.log_file.read_text(errors="replace").splitlines()[-20:])
            raise SystemExit(
                f"bench: the gateway exited with status {self.process.returncode} during the "
                f"run (see {self.log_file}):\n{tail}"
            )


def gateway_command(repository: Path, extra: Sequence[str]) -> list[str]:
    script = Path(sys.executable).parent / "gateway"
    program = [str(script)] if script.exists() else [sys.executable, "-m", "gateway"]
    ports = ["--http-port", "0", "--grpc-port", "0"]
    return [*program, "serve", "--model-repository", str(repository), *ports, *extra]


def wait_for_ports(
    process: subprocess.Popen[bytes], log_file: Path, timeout_s: float
) -> re.Match[str]:
    """Read the gateway's log until it says where it listens."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        match = READY_LINE.search(log_file.read_text(errors="replace"))
        if match:
            return match
        if process.poll() is not None:
            break
        time.sleep(0.1)
    tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-20:])
    raise SystemExit(f"bench: the gateway did not start (see {log_file}):\n{tail}")


def wait_until_ready(server: RunningServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(server.url("/v2/health/ready"), timeout=2) as answer,
        ):
            if answer.status == 200:
                return
        time.sleep(0.1)
    raise SystemExit(f"bench: the gateway was not ready within {timeout_s} s")


@contextlib.contextmanager
def gateway(args: argparse.Namespace, log_file: Path) -> Iterator[RunningServer]:
    """`gateway serve` pinned to the server core, on free ports; stopped with SIGTERM."""
    command = [
        "taskset",
        "-c",
        str(args.server_core),
        *gateway_command(args.model_repository, args.gateway_arg),
    ]
    log(f"starting: {' '.join(command)}")
    with log_file.open("wb") as sink:
        process = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
    try:
        match = wait_for_ports(process, log_file, args.startup_timeout)
        server = RunningServer(
            process, match["http_host"], int(match["http"]), int(match["grpc"]), log_file
        )
        wait_until_ready(server, args.startup_timeout)
        log(f"gateway ready: pid {server.pid}, HTTP {server.http_port}, gRPC {server.grpc_port}")
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def get_json(server: RunningServer, path: str) -> Any:
    with urllib.request.urlopen(server.url(path), timeout=10) as answer:
        return json.loads(answer.read())


# -- orchestration ---------------------------------------------------------------------------


def wait_for_quiet(timeout_s: float, sample_s: float = 5.0) -> bool:
    """Wait until other processes use less than NOISY_PCT of a core over `sample_s` seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        before = CpuSample.take(None)
        time.sleep(sample_s)
        figures = cpu_figures(before, CpuSample.take(None))
        busy = figures["other_cpu_pct"] + figures["steal_pct"]
        if busy < NOISY_PCT:
            return True
        if time.monotonic() >= deadline:
            log(f"the machine is still busy ({busy:.0f} % of a core); measuring anyway")
            return False
        log(f"other processes use {busy:.0f} % of a core; waiting for quiet")


def run_pinned(core: int, mode: str, job: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run `bench.py <mode>` pinned to `core` with the job on stdin; its stdout is the result."""
    command = ["taskset", "-c", str(core), sys.executable, str(SCRIPT), mode]
    done = subprocess.run(
        command, input=json.dumps(job).encode(), capture_output=True, timeout=timeout_s, cwd=ROOT
    )
    sys.stderr.write(done.stderr.decode(errors="replace"))
    if done.returncode != 0:
        raise SystemExit(f"bench: {mode} failed with exit status {done.returncode}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def model_file(args: argparse.Namespace) -> Path:
    """The ONNX file the gateway serves by default: the given version, or the highest one."""
    model_dir: Path = args.model_repository / args.model
    if args.model_version:
        return model_dir / str(args.model_version) / "model.onnx"
    versions = [p for p in model_dir.iterdir() if p.name.isdigit() and (p / "model.onnx").is_file()]
    if not versions:
        raise SystemExit(f"bench: no <version>/model.onnx under {model_dir}")
    return max(versions, key=lambda p: int(p.name)) / "model.onnx"


def run_baseline(args: argparse.Namespace) -> dict[str, Any]:
    job = {
        "model_file": str(model_file(args).resolve()),
        "seed": args.seed,
        "warmup_s": args.warmup,
        "duration_s": args.baseline_duration,
        "batch_sizes": args.batch_sizes,
        "sweep_s": args.sweep_duration,
    }
    log(f"bare onnxruntime on core {args.server_core}: {job['model_file']}")
    budget = (
        args.warmup + args.baseline_duration + len(args.batch_sizes) * (args.sweep_duration + 1)
    )
    return run_pinned(args.server_core, "_baseline", job, budget + 60)


def model_signature(server: RunningServer, model: str, version: str) -> dict[str, Any]:
    """Inputs, outputs and max_batch_size as the gateway describes them to a client."""
    base = f"/v2/models/{model}" + (f"/versions/{version}" if version else "")
    metadata = get_json(server, base)
    config = get_json(server, f"{base}/config")

    def tensors(key: str) -> list[dict[str, Any]]:
        return [{k: t[k] for k in ("name", "datatype", "shape")} for t in metadata[key]]

    return {
        "inputs": tensors("inputs"),
        "outputs": tensors("outputs"),
        "max_batch_size": int(config.get("max_batch_size", 0)),
    }


def run_gateway_loads(
    args: argparse.Namespace, server: RunningServer, signature: dict[str, Any]
) -> list[dict[str, Any]]:
    runs = []
    for protocol in args.protocols:
        for concurrency in args.concurrency:
            job = {
                "protocol": protocol,
                "host": server.host,
                "http_port": server.http_port,
                "grpc_port": server.grpc_port,
                "model": args.model,
                "model_version": args.model_version,
                "batched": signature["max_batch_size"] > 0,
                "inputs": signature["inputs"],
                "outputs": signature["outputs"],
                "concurrency": concurrency,
                "warmup_s": args.warmup,
                "duration_s": args.duration,
                "timeout_s": args.request_timeout,
                "seed": args.seed,
                "server_pid": server.pid,
                "grpc_channels": args.grpc_channels,
            }
            log(f"{protocol} x {concurrency}: {args.warmup:g} s warm-up + {args.duration:g} s")
            budget = args.warmup + args.duration + args.request_timeout + 60
            run = run_pinned(args.client_core, "_load", job, budget)
            server.check_alive()
            p50 = fmt(run["latency_ms"]["p50"], 3)
            log(f"  {run['requests_per_s']:.0f} req/s, p50 {p50} ms, {run['errors']} errors")
            runs.append(run)
    return runs


def model_limit(baseline: dict[str, Any], max_batch_size: int) -> dict[str, Any]:
    """The best bare-onnxruntime samples/s among batch sizes the gateway accepts."""
    servable = [s for s in baseline["sweep"] if s["batch_size"] <= max(1, max_batch_size)]
    return max(servable, key=lambda s: s["samples_per_s"])


def compare(runs: list[dict[str, Any]], baseline: dict[str, Any], limit: dict[str, Any]) -> None:
    """Add each run's ratios to the bare onnxruntime baseline, and its flags."""
    ort_runs = baseline["batch1"]["runs_per_s"]
    ort_p50 = baseline["batch1"]["latency_ms"]["p50"]
    for run in runs:
        p50 = run["latency_ms"]["p50"]
        run["vs_ort"] = {
            "throughput_ratio": run["requests_per_s"] / ort_runs,
            "limit_ratio": run["samples_per_s"] / limit["samples_per_s"],
            "p50_delta_ms": None if p50 is None else p50 - ort_p50,
        }
        run["flagged"] = bool(run["errors"] or run["warmup_errors"] or not run["requests"])
        run["client_bound"] = run["client_cpu_pct"] >= CLIENT_BOUND_PCT
        run["noisy"] = run["other_cpu_pct"] + run["steal_pct"] >= NOISY_PCT


def git(*args: str) -> bytes:
    return subprocess.run(["git", *args], capture_output=True, cwd=ROOT, check=True).stdout


def git_revision() -> str:
    """HEAD, plus a digest of uncommitted changes (untracked files included) if there are any."""
    try:
        head = git("rev-parse", "--short", "HEAD").decode().strip()
        digest = hashlib.sha256(git("diff", "HEAD"))
        for name in sorted(git("ls-files", "--others", "--exclude-standard", "-z").split(b"\0")):
            if name and (ROOT / name.decode()).is_file():
                digest.update(name + (ROOT / name.decode()).read_bytes())
        changed = bool(git("status", "--porcelain").strip())
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (f" + uncommitted changes {digest.hexdigest()[:10]}" if changed else "")


# -- report ----------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def baseline_table(baseline: dict[str, Any], limit: dict[str, Any]) -> list[str]:
    b1 = baseline["batch1"]
    lines = [
        f"Batch 1: **{fmt(b1['runs_per_s'])} runs/s**, p50 {fmt(b1['latency_ms']['p50'], 3)} ms, "
        f"p99 {fmt(b1['latency_ms']['p99'], 3)} ms ({b1['runs']:,} runs in "
        f"{b1['seconds']:.1f} s; {fmt(1e6 / b1['runs_per_s'], 1)} us per run; other processes "
        f"used {fmt(b1['other_cpu_pct'])} % of a core meanwhile).",
        "",
        "| batch | runs/s | samples/s | p50 ms | p99 ms |",
        "|---:|---:|---:|---:|---:|",
    ]
    for step in baseline["sweep"]:
        lat = step["latency_ms"]
        lines.append(
            f"| {step['batch_size']} | {fmt(step['runs_per_s'])} | {fmt(step['samples_per_s'])} "
            f"| {fmt(lat['p50'], 3)} | {fmt(lat['p99'], 3)} |"
        )
    lines += [
        "",
        f"The model's limit: **{fmt(limit['samples_per_s'])} samples/s** "
        f"(batch {limit['batch_size']}).",
    ]
    return lines


GATEWAY_HEADER = (
    "| protocol | conc | req/s | samples/s | p50 ms | p90 ms | p99 ms | errors | server CPU % "
    "| server CPU us/req | client CPU % | other CPU % | req/s / ORT b1 | samples/s / limit "
    "| p50 - ORT ms |"
)


def gateway_row(run: dict[str, Any]) -> str:
    lat, vs = run["latency_ms"], run["vs_ort"]
    flag = " !" if run["flagged"] else ""
    client = fmt(run["client_cpu_pct"]) + (" *" if run["client_bound"] else "")
    cells = [
        run["protocol"] + flag,
        str(run["concurrency"]),
        fmt(run["requests_per_s"]),
        fmt(run["samples_per_s"]),
        fmt(lat["p50"], 3),
        fmt(lat["p90"], 3),
        fmt(lat["p99"], 3),
        str(run["errors"]),
        fmt(run["server_cpu_pct"]),
        fmt(run["server_cpu_us_per_request"]),
        client,
        fmt(run["other_cpu_pct"] + run["steal_pct"]) + (" ~" if run["noisy"] else ""),
        fmt(vs["throughput_ratio"], 2),
        fmt(vs["limit_ratio"], 3),
        fmt(vs["p50_delta_ms"], 3),
    ]
    return "| " + " | ".join(cells) + " |"


def gateway_table(runs: list[dict[str, Any]]) -> list[str]:
    separator = "|---|" + "---:|" * (GATEWAY_HEADER.count("|") - 2)
    lines = [GATEWAY_HEADER, separator, *(gateway_row(r) for r in runs)]
    notes = [
        f"- `{r['protocol']}` x {r['concurrency']}: {r['errors']} errors in the window, "
        f"{r['warmup_errors']} in the warm-up; e.g. {r['error_samples'][:1]}"
        for r in runs
        if r["flagged"]
    ]
    if notes:
        lines += ["", "`!` runs with errors (figures not trustworthy):", *notes]
    if any(r["client_bound"] for r in runs):
        lines += [
            "",
            f"`*` client CPU >= {CLIENT_BOUND_PCT} %: the load generator may be the bottleneck.",
        ]
    if any(r["noisy"] for r in runs):
        lines += [
            "",
            f"`~` other processes (and hypervisor steal) used >= {NOISY_PCT} % of a core during "
            "the window: the machine was not quiet; rerun (`--wait-quiet S`) to trust the row.",
        ]
    return lines


def markdown_report(results: dict[str, Any]) -> str:
    meta, settings = results["meta"], results["settings"]
    lines = [
        f"# Gateway load test: `{settings['model']}`, {meta['timestamp']}",
        "",
        f"git {meta['git']}; onnxruntime {results['baseline']['onnxruntime_version']}; "
        f"Python {meta['python']}; {meta['cpus']} CPUs ({meta['processor']}). Server on core "
        f"{settings['server_core']}, load generator on core {settings['client_core']}.",
        "",
        f"## Bare onnxruntime (same file, core {settings['server_core']}, intra_op_num_threads=1)",
        "",
        *baseline_table(results["baseline"], results["model_limit"]),
        "",
        f"## Gateway: batch-1 requests, closed loop, {fmt(settings['warmup'], 1)} s warm-up + "
        f"{fmt(settings['duration'], 1)} s per row",
        "",
        *gateway_table(results["runs"]),
        "",
    ]
    return "\n".join(lines)


def write_results(results: dict[str, Any], out_dir: Path) -> None:
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "report.md").write_text(markdown_report(results))


# -- command line ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="loadtest/bench.py",
        description="Benchmark the gateway against bare onnxruntime on the same model file.",
    )
    add = parser.add_argument
    add("--model", default="mlp", help="model to load-test (default: %(default)s)")
    add(
        "--model-repository",
        type=Path,
        default=Path("models/repository"),
        help="the repository the gateway serves (default: %(default)s)",
    )
    add(
        "--model-version",
        default="",
        help="version to request and to time bare (default: the highest one)",
    )
    add(
        "--concurrency",
        type=int,
        nargs="+",
        default=[1, 16],
        help="closed-loop concurrencies (default: 1 16)",
    )
    add(
        "--protocols",
        nargs="+",
        choices=PROTOCOLS,
        default=list(PROTOCOLS),
        help="protocols to measure (default: all)",
    )
    add(
        "--duration",
        type=float,
        default=10.0,
        help="measurement seconds per protocol x concurrency (default: %(default)s)",
    )
    add("--warmup", type=float, default=2.0, help="warm-up seconds before each measurement")
    add(
        "--baseline-duration",
        type=float,
        default=None,
        help="seconds of bare onnxruntime batch-1 runs (default: --duration)",
    )
    add(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=[1, 8, 32, 128],
        help="bare onnxruntime batch sizes (default: 1 8 32 128)",
    )
    add(
        "--sweep-duration",
        type=float,
        default=3.0,
        help="seconds per batch size above 1 (default: %(default)s)",
    )
    add("--server-core", type=int, default=0, help="core for the gateway and bare onnxruntime")
    add("--client-core", type=int, default=1, help="core for the load generator")
    add("--request-timeout", type=float, default=10.0, help="seconds before a request fails")
    add("--startup-timeout", type=float, default=120.0, help="seconds for the gateway to start")
    add("--seed", type=int, default=0, help="seed of the random input rows")
    add(
        "--grpc-channels",
        type=int,
        default=1,
        help="gRPC channels (TCP connections) the workers share (default: %(default)s)",
    )
    add(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="first wait up to S seconds for other processes to leave the machine idle",
    )
    add(
        "--gateway-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra `gateway serve` argument, e.g. --gateway-arg=--inference-threads=1",
    )
    add(
        "--out",
        type=Path,
        default=Path("loadtest/results"),
        help="results go to OUT/<timestamp>/ (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.baseline_duration is None:
        args.baseline_duration = args.duration
    return args


def bench_main(args: argparse.Namespace) -> int:
    os.sched_setaffinity(0, {args.client_core})  # keep this (mostly idle) process off core 0
    timestamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    out_dir = args.out / timestamp.replace(":", "").replace("-", "")
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.wait_quiet > 0:
        wait_for_quiet(args.wait_quiet)
    baseline = run_baseline(args)
    with gateway(args, out_dir / "gateway.log") as server:
        signature = model_signature(server, args.model, args.model_version)
        server_affinity = sorted(os.sched_getaffinity(server.pid))
        runs = run_gateway_loads(args, server, signature)
    limit = model_limit(baseline, signature["max_batch_size"])
    compare(runs, baseline, limit)
    results = {
        "meta": {
            "timestamp": timestamp,
            "git": git_revision(),
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "server_affinity": server_affinity,
            "gateway_command": gateway_command(args.model_repository, args.gateway_arg),
        },
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "signature": signature,
        "baseline": baseline,
        "model_limit": limit,
        "runs": runs,
    }
    write_results(results, out_dir)
    print(markdown_report(results))
    log(f"results in {out_dir}")
    return 1 if any(r["flagged"] for r in runs) else 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    modes = {"_baseline": baseline_main, "_load": load_main}
    if argv and argv[0] in modes:  # internal: a pinned subprocess, job on stdin, result on stdout
        result = modes[argv[0]](json.load(sys.stdin))
        print(json.dumps(result))
        return 0
    return bench_main(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
