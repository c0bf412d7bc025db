"""Loading a repository where some models cannot be served: clear reasons, the rest still serve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto
from tritonclient.utils import InferenceServerException

from gateway.app.server import StartupError
from gateway.core.registry import VersionState
from tests.support import models
from tests.support.server import RunningGateway


def build_broken_repository(root: Path) -> Path:
    models.add_sub(root / "healthy" / "1" / "model.onnx", TensorProto.FLOAT)
    # Asks for a GPU, may not fall back: fails on a machine without CUDA.
    models.add_sub(root / "gpu_only" / "1" / "model.onnx", TensorProto.FLOAT)
    models.write_config(root / "gpu_only", "instance_group [ { kind: KIND_GPU } ]\n")
    models.add_sub(root / "tensorrt" / "1" / "model.onnx", TensorProto.FLOAT)
    models.write_config(
        root / "tensorrt",
        "optimization { execution_accelerators {\n"
        '  gpu_execution_accelerator : [ { name : "tensorrt" } ] } }\n',
    )
    # An unsupported field on line 3.
    models.add_sub(root / "bad_config" / "1" / "model.onnx", TensorProto.FLOAT)
    models.write_config(
        root / "bad_config", 'name: "bad_config"\nmax_batch_size: 4\nsequence_batching { }\n'
    )
    # Config dims that contradict the file.
    models.add_sub(root / "mismatch" / "1" / "model.onnx", TensorProto.FLOAT)
    models.write_config(
        root / "mismatch",
        "max_batch_size: 4\n"
        'input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ 8 ] },\n'
        '        { name: "INPUT1", data_type: TYPE_FP32, dims: [ 16 ] } ]\n',
    )
    # Bytes that are not an ONNX model, next to a good older version.
    models.add_sub(root / "corrupt" / "1" / "model.onnx", TensorProto.FLOAT)
    (root / "corrupt" / "2").mkdir(parents=True)
    (root / "corrupt" / "2" / "model.onnx").write_bytes(b"this is not a protobuf")
    models.write_config(root / "corrupt", "version_policy: { all { } }\n")
    # A model directory without any version.
    (root / "empty").mkdir()
    return root


@pytest.fixture(scope="module")
def broken_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_broken_repository(tmp_path_factory.mktemp("broken"))


@pytest.fixture(scope="module")
def lenient(broken_repository: Path):  # type: ignore[no-untyped-def]
    running = RunningGateway(broken_repository, exit_on_error=False)
    yield running
    running.stop()


def test_exit_on_error_refuses_to_start_and_names_every_failure(broken_repository: Path) -> None:
    with pytest.raises(StartupError) as raised:
        RunningGateway(broken_repository)
    message = str(raised.value)
    assert "6 model load failure(s)" in message
    assert f"{broken_repository / 'bad_config' / 'config.pbtxt'}:3" in message
    assert 'no field named "sequence_batching"' in message


def test_failures_are_recorded_with_reasons(lenient: RunningGateway) -> None:
    registry = lenient.gateway.registry
    reasons = {(f.model, f.version): f.reason for f in lenient.gateway.load_failures}
    assert "CUDAExecutionProvider" in reasons[("gpu_only", 1)]
    assert "allow_cpu_fallback" in reasons[("gpu_only", 1)]
    assert "TensorrtExecutionProvider" in reasons[("tensorrt", 1)]
    assert "config.pbtxt:3" in reasons[("bad_config", None)]
    assert "dims [8]" in reasons[("mismatch", 1)] and "[16]" in reasons[("mismatch", 1)]
    assert "cannot load" in reasons[("corrupt", 2)]
    assert "no version directory" in reasons[("empty", None)]
    corrupt = registry.get_model("corrupt").versions
    assert corrupt[1].state is VersionState.READY
    assert corrupt[2].state is VersionState.FAILED


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_healthy_models_serve_while_broken_ones_report(
    lenient: RunningGateway, protocol: str
) -> None:
    module = grpcclient if protocol == "grpc" else httpclient
    client = module.InferenceServerClient(
        lenient.grpc_url if protocol == "grpc" else lenient.http_url
    )
    # Strict readiness, as Triton: not every model is ready, so the server is not ready.
    assert client.is_server_live()
    assert not client.is_server_ready()
    assert client.is_model_ready("healthy")
    assert client.is_model_ready("corrupt", "1")
    assert not client.is_model_ready("corrupt", "2")
    x = np.ones((1, 16), np.float32)
    inputs = [module.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
    for infer_input in inputs:
        infer_input.set_data_from_numpy(x)
    result = client.infer("healthy", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * x)
    with pytest.raises(InferenceServerException, match=r"not ready.*cannot load"):
        client.infer("corrupt", inputs, model_version="2")
    with pytest.raises(InferenceServerException, match=r"no ready version.*CUDAExecutionProvider"):
        client.infer("gpu_only", inputs)
    client.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_repository_index_shows_states_and_reasons(lenient: RunningGateway, protocol: str) -> None:
    if protocol == "grpc":
        client: Any = grpcclient.InferenceServerClient(lenient.grpc_url)
        index = client.get_model_repository_index(as_json=True).get("models", [])
    else:
        client = httpclient.InferenceServerClient(lenient.http_url)
        index = client.get_model_repository_index()
    by_key = {(m["name"], m.get("version", "")): m for m in index}
    assert by_key[("healthy", "1")]["state"] == "READY"
    assert by_key[("corrupt", "1")]["state"] == "READY"
    assert by_key[("corrupt", "2")]["state"] == "UNAVAILABLE"
    assert "cannot load" in by_key[("corrupt", "2")]["reason"]
    assert "CUDAExecutionProvider" in by_key[("gpu_only", "1")]["reason"]
    assert "config.pbtxt:3" in by_key[("bad_config", "")]["reason"]
    assert "no version directory" in by_key[("empty", "")]["reason"]
    assert "reason" not in by_key[("healthy", "1")]
    client.close()


def test_repository_index_ready_only_over_http(lenient: RunningGateway) -> None:
    import http.client

    import orjson

    host, port = lenient.http_url.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.request("POST", "/v2/repository/index", b'{"ready": true}')
    response = connection.getresponse()
    index = orjson.loads(response.read())
    connection.close()
    assert response.status == 200
    assert {(m["name"], m["version"]) for m in index} == {("healthy", "1"), ("corrupt", "1")}
    assert all(m["state"] == "READY" for m in index)
