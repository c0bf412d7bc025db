"""Shared fixtures: test model repositories built with onnx.helper, and real running gateways."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto

from tests.support import models
from tests.support.server import RunningGateway

BUILD_REPOSITORY = Path(__file__).resolve().parents[1] / "models" / "build_repository.py"

SIMPLE_CONFIG = """
name: "simple"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "INPUT0", data_type: TYPE_INT32, dims: [ 16 ] },
  { name: "INPUT1", data_type: TYPE_INT32, dims: [ 16 ] }
]
output [
  { name: "OUTPUT0", data_type: TYPE_INT32, dims: [ 16 ] },
  { name: "OUTPUT1", data_type: TYPE_INT32, dims: [ 16 ] }
]
"""


def build_main_repository(root: Path) -> Path:
    """Every model the happy-path and bad-input tests use."""
    models.add_sub(root / "simple" / "1" / "model.onnx")
    models.write_config(root / "simple", SIMPLE_CONFIG)
    models.add_sub(root / "simple_fp32" / "1" / "model.onnx", TensorProto.FLOAT)
    # Answers of hundreds of KiB: compressed off the event loop.
    models.add_sub(root / "simple_fp32_wide" / "1" / "model.onnx", TensorProto.FLOAT, 8192)
    models.identity_all_types(root / "all_types" / "1" / "model.onnx")
    models.fixed_shape(root / "fixed" / "1" / "model.onnx")
    models.reshape(root / "reshape" / "1" / "model.onnx")
    for version in (1, 2, 3):
        models.plus_constant(root / "versioned" / str(version) / "model.onnx", version)
        models.plus_constant(root / "versioned_all" / str(version) / "model.onnx", version)
        models.plus_constant(root / "versioned_specific" / str(version) / "model.onnx", version)
    models.write_config(root / "versioned_all", "version_policy: { all { } }\n")
    models.write_config(
        root / "versioned_specific", "version_policy: { specific { versions: [1, 3] } }\n"
    )
    models.add_sub(root / "gpu_fallback" / "1" / "model.onnx", TensorProto.FLOAT)
    models.write_config(
        root / "gpu_fallback",
        "instance_group [ { kind: KIND_GPU, count: 1 } ]\n"
        'parameters { key: "allow_cpu_fallback" value: { string_value: "true" } }\n',
    )
    models.add_sub(root / "tuned" / "1" / "model.onnx", TensorProto.FLOAT)
    models.write_config(
        root / "tuned",
        'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }\n'
        'parameters { key: "inter_op_thread_count" value: { string_value: "1" } }\n'
        'parameters { key: "graph_optimization_level" value: { string_value: "basic" } }\n'
        'parameters { key: "execution_mode" value: { string_value: "sequential" } }\n',
    )
    # Files that are not models or versions are ignored, as Triton does.
    (root / "README.txt").write_text("not a model")
    (root / "simple" / "notes.txt").write_text("not a version")
    return root


@pytest.fixture(scope="session")
def demo_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo repository as `make serve` builds it (digits v1 and v2, mlp), built once per
    session by models/build_repository.py; tests copy what they change."""
    built = tmp_path_factory.mktemp("demo") / "repository"
    subprocess.run(
        [sys.executable, str(BUILD_REPOSITORY), "--output", str(built), "--skip-wide"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return built


@pytest.fixture(scope="session")
def main_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_main_repository(tmp_path_factory.mktemp("repository"))


# Each shared gateway runs one gRPC and one HTTP front end, so every test through `server`
# covers all four: the defaults (threaded gRPC, httptools HTTP) and the alternatives.
FRONT_ENDS = [("threaded", "httptools"), ("asyncio", "aiohttp")]


@pytest.fixture(
    scope="session", params=FRONT_ENDS, ids=[f"{grpc}-{http}" for grpc, http in FRONT_ENDS]
)
def server(request: pytest.FixtureRequest, main_repository: Path) -> Iterator[RunningGateway]:
    """The shared gateway, once per pair of front ends."""
    grpc_server, http_server = request.param
    running = RunningGateway(
        main_repository,
        max_request_bytes=1024 * 1024,
        grpc_server=grpc_server,
        http_server=http_server,
        http_compress_responses=True,
    )
    yield running
    running.stop()


@pytest.fixture
def http_client(server: RunningGateway) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(server.http_url)
    yield client
    client.close()


@pytest.fixture
def grpc_client(server: RunningGateway) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    yield client
    client.close()
