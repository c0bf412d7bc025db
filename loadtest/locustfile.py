"""Locust users for the gateway's gRPC and HTTP (binary and JSON) APIs, sending digits test rows.

Every user sends real rows of the demo `digits` test split (`X` float32 [n, 64], `y` int64) and
checks every answer: status, output names, datatypes and shapes, data sizes, labels in 0..9 equal
to the argmax of `probabilities`, probabilities summing to 1. Answers that fail a check are
failures in locust's statistics. At the end it logs each protocol's accuracy against `y`, and the
exit status is 1 when it is below --min-accuracy (a sign of the wrong model being served).

Locust runs on gevent: this file patches grpc for gevent before any channel exists. Run it from
its own environment (`.venv-load`, see loadtest/README.md), for example:

    .venv-load/bin/locust -f loadtest/locustfile.py --headless -u 32 -r 8 -t 30s \\
        --host http://127.0.0.1:8000 --grpc-host 127.0.0.1:8001 --csv loadtest/results/locust

Pick user classes by name at the end of the command line (`GrpcUser HttpBinaryUser
HttpJsonUser`, all by default).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import grpc.experimental.gevent as grpc_gevent
import numpy as np
import numpy.typing as npt
import orjson
from locust import FastHttpUser, User, constant, events, task
from locust.env import Environment

from gateway.generated import grpc_service_pb2 as pb
from gateway.generated import grpc_service_pb2_grpc as pb_grpc

grpc_gevent.init_gevent()  # before any channel exists: grpc's polling must yield to gevent

logger = logging.getLogger("locustfile")
ROOT = Path(__file__).resolve().parent.parent
BINARY_HEADER = "Inference-Header-Content-Length"
INPUT, LABEL, PROBABILITIES = "input", "label", "probabilities"
FEATURES, CLASSES = 64, 10

DATA: dict[str, npt.NDArray[Any]] = {}
"""The test split, loaded once at start-up: `X` and `y`."""
TALLY: Counter[str] = Counter()
"""Rows answered and rows whose label equals the test label, per protocol."""


class AnswerError(Exception):
    """An answer that is not what the model must produce for these rows."""


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--grpc-host", default="127.0.0.1:8001", help="gateway gRPC host:port")
    parser.add_argument("--model", default="digits", help="model name (default: digits)")
    parser.add_argument("--model-version", default="", help="model version (default: any)")
    parser.add_argument("--rows", type=int, default=1, help="test rows per request (default: 1)")
    parser.add_argument(
        "--data",
        default=str(ROOT / "models/repository/digits/test_split.npz"),
        help="npz file with X float32 [n, 64] and y int64 [n]",
    )
    parser.add_argument("--request-timeout", type=float, default=10.0, help="seconds per request")
    parser.add_argument(
        "--min-accuracy",
        type=float,
        default=0.8,
        help="exit status 1 below this accuracy against the test labels (default: 0.8)",
    )


@events.init.add_listener
def _load_data(environment: Environment, **_: Any) -> None:
    split = np.load(environment.parsed_options.data)
    x, y = split["X"].astype(np.float32), split["y"].astype(np.int64)
    if x.ndim != 2 or x.shape[1] != FEATURES or y.shape != (x.shape[0],):
        raise SystemExit(
            f"locustfile: expected X [n, {FEATURES}] and y [n], got {x.shape}, {y.shape}"
        )
    DATA["X"], DATA["y"] = x, y


@events.quitting.add_listener
def _report_accuracy(environment: Environment, **_: Any) -> None:
    minimum = environment.parsed_options.min_accuracy
    for protocol in sorted({k.split(":")[0] for k in TALLY}):
        rows, correct = TALLY[f"{protocol}:rows"], TALLY[f"{protocol}:correct"]
        accuracy = correct / rows if rows else 0.0
        logger.info(
            "%s: %d rows checked, accuracy %.4f against the test labels", protocol, rows, accuracy
        )
        if rows and accuracy < minimum:
            logger.error(
                "%s: accuracy %.4f is below --min-accuracy %.2f", protocol, accuracy, minimum
            )
            environment.process_exit_code = 1


def check(protocol: str, y: npt.NDArray[np.int64], labels: Any, probabilities: Any) -> None:
    """The digits model's answer for these rows: consistent labels and probabilities."""
    rows = y.shape[0]
    if labels.shape != (rows,) or probabilities.shape != (rows, CLASSES):
        raise AnswerError(f"shapes {labels.shape} and {probabilities.shape} for {rows} rows")
    if labels.min() < 0 or labels.max() >= CLASSES:
        raise AnswerError(f"labels outside 0..{CLASSES - 1}: {labels.tolist()}")
    if not np.array_equal(labels, probabilities.argmax(axis=1)):
        raise AnswerError("labels are not the argmax of probabilities")
    if not np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-3):
        raise AnswerError("probabilities do not sum to 1")
    TALLY[f"{protocol}:rows"] += rows
    TALLY[f"{protocol}:correct"] += int((labels == y).sum())


class DigitsRows:
    """A user's random choice of test rows."""

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def sample(self, rows: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        picked = self._rng.integers(0, DATA["X"].shape[0], rows)
        return DATA["X"][picked], DATA["y"][picked]


def infer_path(model: str, version: str) -> str:
    return f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"


def http_outputs(body: bytes, header_length: str | None) -> dict[str, npt.NDArray[Any]]:
    """Outputs of a V2 HTTP answer, binary parts (in output order) or JSON `data`."""
    offset = len(body) if header_length is None else int(header_length)
    outputs = {}
    for output in orjson.loads(body[:offset])["outputs"]:
        dtype = {"INT64": np.int64, "FP32": np.float32}.get(output["datatype"])
        if dtype is None:
            raise AnswerError(f"output '{output['name']}' is {output['datatype']}")
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is None:
            array = np.asarray(output["data"], dtype)
        else:
            array = np.frombuffer(
                body, dtype, count=size // np.dtype(dtype).itemsize, offset=offset
            )
            offset += size
        outputs[output["name"]] = array.reshape(output["shape"])
    if offset != len(body):
        raise AnswerError(f"{len(body) - offset} bytes after the last binary output")
    return outputs


class _HttpUser(FastHttpUser):
    abstract = True
    wait_time = constant(0)
    binary = True

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.rows = DigitsRows(seed=id(self))
        self.path = infer_path(options.model, options.model_version)
        self.protocol = "http-binary" if self.binary else "http-json"

    def body(self, x: npt.NDArray[np.float32]) -> tuple[bytes, dict[str, str]]:
        tensor: dict[str, Any] = {"name": INPUT, "datatype": "FP32", "shape": list(x.shape)}
        if not self.binary:
            tensor["data"] = x.ravel().tolist()
            return orjson.dumps({"inputs": [tensor]}), {"Content-Type": "application/json"}
        data = x.tobytes()
        tensor["parameters"] = {"binary_data_size": len(data)}
        header = orjson.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}})
        headers = {BINARY_HEADER: str(len(header)), "Content-Type": "application/octet-stream"}
        return header + data, headers

    @task
    def infer(self) -> None:
        options = self.environment.parsed_options
        x, y = self.rows.sample(options.rows)
        body, headers = self.body(x)
        with self.client.post(
            self.path,
            data=body,
            headers=headers,
            name=f"{self.protocol} infer",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(
                    f"HTTP {response.status_code}: {(response.content or b'')[:200]!r}"
                )
                return
            try:
                outputs = http_outputs(response.content or b"", response.headers.get(BINARY_HEADER))
                if self.binary and response.headers.get(BINARY_HEADER) is None:
                    raise AnswerError("the answer is not binary")
                check(self.protocol, y, outputs[LABEL], outputs[PROBABILITIES])
            except (AnswerError, KeyError, ValueError) as exc:
                response.failure(f"{type(exc).__name__}: {exc}")
            else:
                response.success()


class HttpBinaryUser(_HttpUser):
    """POST /v2/models/{model}/infer with Triton's binary tensor extension, both ways."""

    binary = True


class HttpJsonUser(_HttpUser):
    """POST /v2/models/{model}/infer with V2 JSON `data` lists, both ways."""

    binary = False


class GrpcUser(User):
    """inference.GRPCInferenceService/ModelInfer with inputs in raw_input_contents."""

    wait_time = constant(0)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.rows = DigitsRows(seed=id(self))
        self.channel = grpc.insecure_channel(options.grpc_host)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)

    def on_stop(self) -> None:
        self.channel.close()

    def request(self, x: npt.NDArray[np.float32]) -> Any:
        options = self.environment.parsed_options
        request = pb.ModelInferRequest(
            model_name=options.model, model_version=options.model_version
        )
        request.inputs.add(name=INPUT, datatype="FP32", shape=x.shape)
        request.raw_input_contents.append(x.tobytes())
        return request

    @staticmethod
    def outputs(response: Any) -> dict[str, npt.NDArray[Any]]:
        dtypes = {"INT64": np.int64, "FP32": np.float32}
        raw = response.raw_output_contents
        if len(raw) != len(response.outputs):
            raise AnswerError(f"{len(response.outputs)} outputs but {len(raw)} raw contents")
        arrays = {}
        for output, data in zip(response.outputs, raw, strict=True):
            if output.datatype not in dtypes:
                raise AnswerError(f"output '{output.name}' is {output.datatype}")
            arrays[output.name] = np.frombuffer(data, dtypes[output.datatype]).reshape(output.shape)
        return arrays

    @task
    def infer(self) -> None:
        options = self.environment.parsed_options
        x, y = self.rows.sample(options.rows)
        start = time.perf_counter()
        length, error = 0, None
        try:
            response = self.stub.ModelInfer(self.request(x), timeout=options.request_timeout)
            elapsed_ms = (time.perf_counter() - start) * 1e3
            length = response.ByteSize()
            outputs = self.outputs(response)
            check("grpc", y, outputs[LABEL], outputs[PROBABILITIES])
        except (grpc.RpcError, AnswerError, KeyError, ValueError) as exc:
            elapsed_ms = (time.perf_counter() - start) * 1e3
            error = exc
        self.environment.events.request.fire(
            request_type="grpc",
            name="grpc ModelInfer",
            response_time=elapsed_ms,
            response_length=length,
            exception=error,
            context={},
        )
