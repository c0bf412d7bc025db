"""The V2 protocol with tritonclient, unchanged, over gRPC and HTTP (JSON and binary tensors)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.support.server import RunningGateway

PROTOCOLS = ["grpc", "http-binary", "http-json"]
NUMERIC = [
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
]


class Client:
    """One tritonclient flavour behind a common `infer`."""

    def __init__(self, server: RunningGateway, protocol: str) -> None:
        self.protocol = protocol
        self.binary = protocol == "http-binary"
        self.module: Any = grpcclient if protocol == "grpc" else httpclient
        url = server.grpc_url if protocol == "grpc" else server.http_url
        self.client = self.module.InferenceServerClient(url)

    def infer(
        self,
        model: str,
        inputs: dict[str, np.ndarray],
        *,
        outputs: list[str] | None = None,
        version: str = "",
        **kwargs: Any,
    ) -> Any:
        from tritonclient.utils import np_to_triton_dtype

        infer_inputs = []
        for name, array in inputs.items():
            infer_input = self.module.InferInput(
                name, list(array.shape), np_to_triton_dtype(array.dtype)
            )
            if self.protocol == "grpc":
                infer_input.set_data_from_numpy(array)
            else:
                infer_input.set_data_from_numpy(array, binary_data=self.binary)
            infer_inputs.append(infer_input)
        requested = None
        if outputs is not None:
            if self.protocol == "grpc":
                requested = [self.module.InferRequestedOutput(n) for n in outputs]
            else:
                requested = [
                    self.module.InferRequestedOutput(n, binary_data=self.binary) for n in outputs
                ]
        return self.client.infer(
            model, infer_inputs, model_version=version, outputs=requested, **kwargs
        )

    def close(self) -> None:
        self.client.close()


@pytest.fixture(params=PROTOCOLS)
def client(request: pytest.FixtureRequest, server: RunningGateway) -> Any:
    made = Client(server, request.param)
    yield made
    made.close()


def reference(repository: Path, model: str, version: int, feeds: dict[str, np.ndarray]) -> dict:
    session = ort.InferenceSession(str(repository / model / str(version) / "model.onnx"))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


# -- server and model metadata -------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_health_and_server_metadata(server: RunningGateway, protocol: str) -> None:
    module: Any = grpcclient if protocol == "grpc" else httpclient
    client = module.InferenceServerClient(
        server.grpc_url if protocol == "grpc" else server.http_url
    )
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("simple")
    assert client.is_model_ready("versioned", "3")
    assert not client.is_model_ready("versioned_specific", "2") if protocol == "http" else True
    metadata = client.get_server_metadata()
    if protocol == "grpc":
        metadata = {"name": metadata.name, "extensions": list(metadata.extensions)}
    assert metadata["name"] == "inference-gateway"
    assert set(metadata["extensions"]) == {
        "binary_tensor_data",
        "model_configuration",
        "model_repository",
        "statistics",
    }
    client.close()


def test_model_metadata_http(http_client: httpclient.InferenceServerClient) -> None:
    metadata = http_client.get_model_metadata("simple")
    assert metadata == {
        "name": "simple",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]},
            {"name": "INPUT1", "datatype": "INT32", "shape": [-1, 16]},
        ],
        "outputs": [
            {"name": "OUTPUT0", "datatype": "INT32", "shape": [-1, 16]},
            {"name": "OUTPUT1", "datatype": "INT32", "shape": [-1, 16]},
        ],
    }
    fixed = http_client.get_model_metadata("fixed")
    assert fixed["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [2, 3]}]
    assert http_client.get_model_metadata("versioned_all", "2")["versions"] == ["1", "2", "3"]


def test_model_metadata_grpc(grpc_client: grpcclient.InferenceServerClient) -> None:
    metadata = grpc_client.get_model_metadata("simple", as_json=True)
    assert metadata["name"] == "simple"
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"][0] == {"name": "INPUT0", "datatype": "INT32", "shape": ["-1", "16"]}
    assert [o["name"] for o in metadata["outputs"]] == ["OUTPUT0", "OUTPUT1"]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_model_config(server: RunningGateway, protocol: str) -> None:
    if protocol == "grpc":
        client: Any = grpcclient.InferenceServerClient(server.grpc_url)
        get = lambda name: client.get_model_config(name, as_json=True)["config"]  # noqa: E731
    else:
        client = httpclient.InferenceServerClient(server.http_url)
        get = client.get_model_config
    simple = get("simple")
    assert simple["name"] == "simple"
    assert simple["platform"] == "onnxruntime_onnx"
    assert int(simple["max_batch_size"]) == 8
    assert [(i["name"], i["data_type"], [int(d) for d in i["dims"]]) for i in simple["input"]] == [
        ("INPUT0", "TYPE_INT32", [16]),
        ("INPUT1", "TYPE_INT32", [16]),
    ]
    providers = simple["parameters"]["execution_providers"]["string_value"]
    assert providers == "CPUExecutionProvider"
    # Auto-completed from the ONNX file: dynamic first dim -> the default max_batch_size.
    assert int(get("simple_fp32")["max_batch_size"]) == 64
    assert int(get("fixed").get("max_batch_size", 0)) == 0
    # A GPU model that may fall back says where it actually runs.
    gpu = get("gpu_fallback")
    assert gpu["instance_group"][0]["kind"] == "KIND_GPU"
    assert gpu["parameters"]["execution_providers"]["string_value"] == "CPUExecutionProvider"
    assert gpu["parameters"]["allow_cpu_fallback"]["string_value"] == "true"
    tuned = get("tuned")["parameters"]
    assert tuned["graph_optimization_level"]["string_value"] == "basic"
    specific = get("versioned_specific")["version_policy"]["specific"]["versions"]
    assert [int(v) for v in specific] == [1, 3]
    client.close()


# -- inference -----------------------------------------------------------------------------


def test_infer_matches_onnxruntime(client: Client, main_repository: Path) -> None:
    rng = np.random.default_rng(7)
    feeds = {
        "INPUT0": rng.integers(-1000, 1000, (3, 16), dtype=np.int32),
        "INPUT1": rng.integers(-1000, 1000, (3, 16), dtype=np.int32),
    }
    result = client.infer("simple", feeds, request_id="req-42")
    expected = reference(main_repository, "simple", 1, feeds)
    for name in ("OUTPUT0", "OUTPUT1"):
        np.testing.assert_array_equal(result.as_numpy(name), expected[name])
    response = (
        result.get_response(as_json=True) if client.protocol == "grpc" else result.get_response()
    )
    assert response["id"] == "req-42"
    assert response["model_name"] == "simple"
    assert response["model_version"] == "1"


def test_float_model_matches_onnxruntime(client: Client, main_repository: Path) -> None:
    rng = np.random.default_rng(1)
    feeds = {
        "INPUT0": rng.standard_normal((5, 16)).astype(np.float32),
        "INPUT1": rng.standard_normal((5, 16)).astype(np.float32),
    }
    result = client.infer("simple_fp32", feeds)
    expected = reference(main_repository, "simple_fp32", 1, feeds)
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), expected["OUTPUT0"], rtol=1e-6)


def _typed_array(datatype: str, rng: np.random.Generator) -> np.ndarray:
    from tritonclient.utils import triton_to_np_dtype

    shape = (2, 3)
    if datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(bool)
    if datatype == "BYTES":
        return np.array([[b"a", "\u00e9t\u00e9".encode(), b""], [b"xyz", b"1", b" "]], dtype=object)
    dtype = np.dtype(triton_to_np_dtype(datatype))
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


@pytest.mark.parametrize("datatype", [*NUMERIC, "BYTES"])
def test_every_datatype_round_trips(client: Client, datatype: str) -> None:
    array = _typed_array(datatype, np.random.default_rng(3))
    result = client.infer(
        "all_types",
        {f"IN_{datatype}": _others(datatype, array)[0]} | _others(datatype, array)[1],
        outputs=[f"OUT_{datatype}"],
    )
    out = result.as_numpy(f"OUT_{datatype}")
    if datatype == "BYTES":
        # tritonclient hands JSON strings back as str, binary elements as bytes.
        as_bytes = [[v.encode() if isinstance(v, str) else v for v in row] for row in out.tolist()]
        assert as_bytes == array.tolist()
    else:
        assert out.dtype == array.dtype
        np.testing.assert_array_equal(out, array)


def _others(datatype: str, array: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """all_types needs every input; fill the others with zeros of their type."""
    rng = np.random.default_rng(0)
    others = {f"IN_{dt}": _typed_array(dt, rng) for dt in [*NUMERIC, "BYTES"] if dt != datatype}
    return array, others


def test_requested_output_subset(client: Client) -> None:
    feeds = {"INPUT0": np.ones((1, 16), np.int32), "INPUT1": np.full((1, 16), 3, np.int32)}
    result = client.infer("simple", feeds, outputs=["OUTPUT1"])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.full((1, 16), -2, np.int32))
    assert result.as_numpy("OUTPUT0") is None


def test_unbatched_model(client: Client) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(client.infer("fixed", {"X": x}).as_numpy("Y"), x * 2)


def test_full_batch(client: Client) -> None:
    x = np.arange(8 * 16, dtype=np.int32).reshape(8, 16)
    result = client.infer("simple", {"INPUT0": x, "INPUT1": x})
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * x)


def test_parameters_are_accepted(client: Client) -> None:
    feeds = {"INPUT0": np.ones((1, 16), np.int32), "INPUT1": np.ones((1, 16), np.int32)}
    result = client.infer("simple", feeds, parameters={"app_tag": "x", "attempt": 2})
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.zeros((1, 16), np.int32))


# -- versions ------------------------------------------------------------------------------


def _answer(client: Client, model: str, version: str = "") -> tuple[float, str]:
    result = client.infer(model, {"X": np.zeros((1, 4), np.float32)}, version=version)
    response = (
        result.get_response(as_json=True) if client.protocol == "grpc" else result.get_response()
    )
    return float(result.as_numpy("Y")[0, 0]), response["model_version"]


def test_latest_version_is_served_by_default(client: Client) -> None:
    assert _answer(client, "versioned") == (3.0, "3")
    assert _answer(client, "versioned", "3") == (3.0, "3")
    with pytest.raises(InferenceServerException, match="unknown version '1'"):
        _answer(client, "versioned", "1")


def test_version_policy_all_and_specific(client: Client) -> None:
    for version in ("1", "2", "3"):
        assert _answer(client, "versioned_all", version) == (float(version), version)
    assert _answer(client, "versioned_all") == (3.0, "3")
    assert _answer(client, "versioned_specific", "1") == (1.0, "1")
    assert _answer(client, "versioned_specific") == (3.0, "3")
    with pytest.raises(InferenceServerException, match="unknown version '2'"):
        _answer(client, "versioned_specific", "2")


def test_concurrent_callers_each_get_their_own_answer(server: RunningGateway) -> None:
    def call(i: int) -> None:
        client = Client(server, PROTOCOLS[i % 3])
        try:
            x = np.full((1 + i % 4, 16), i, np.int32)
            result = client.infer("simple", {"INPUT0": x, "INPUT1": x}, request_id=str(i))
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * x)
        finally:
            client.close()

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(call, range(96)))


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
@pytest.mark.parametrize("binary", [True, False])
def test_http_compression_both_ways(server: RunningGateway, algorithm: str, binary: bool) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    x = np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32)
    inputs = [httpclient.InferInput(n, [64, 16], "FP32") for n in ("INPUT0", "INPUT1")]
    for infer_input in inputs:
        infer_input.set_data_from_numpy(x, binary_data=binary)
    result = client.infer(
        "simple_fp32",
        inputs,
        outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)],
        request_compression_algorithm=algorithm,
        response_compression_algorithm=algorithm,
    )
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), 2 * x, rtol=1e-6)
    client.close()


def _content_encoding_of_json_infer(server: RunningGateway, rows: int) -> str | None:
    """POST a JSON request to simple_fp32 accepting gzip/deflate; the answer's Content-Encoding."""
    import http.client

    import orjson

    tensor = {"shape": [rows, 16], "datatype": "FP32", "data": [0.5] * (rows * 16)}
    body = orjson.dumps({"inputs": [{"name": n, **tensor} for n in ("INPUT0", "INPUT1")]})
    host, port = server.http_url.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.request(
        "POST", "/v2/models/simple_fp32/infer", body, {"Accept-Encoding": "gzip, deflate"}
    )
    response = connection.getresponse()
    response.read()
    connection.close()
    assert response.status == 200
    encoding: str | None = response.getheader("Content-Encoding")
    return encoding


@pytest.mark.parametrize(("rows", "compressed"), [(64, True), (1, False)])
def test_http_compresses_only_bodies_worth_it(
    server: RunningGateway, rows: int, compressed: bool
) -> None:
    encoding = _content_encoding_of_json_infer(server, rows)
    assert (encoding in ("gzip", "deflate")) is compressed


@pytest.mark.parametrize(
    ("accept", "coding"),
    [
        ("gzip, deflate", "deflate"),
        ("GZIP", "gzip"),
        ("br", None),
        ("identity", None),
        ("gzip;q=0", None),  # refused, not accepted (a substring match took it)
        ("deflate;q=0, gzip", "gzip"),
        ("deflate;q=0.5, gzip;q=0.8", "gzip"),
        ("nogzip", None),
        ("*", "deflate"),
        ("*, deflate;q=0", "gzip"),
    ],
)
@pytest.mark.parametrize("width", [16, 8192])  # 8192: compressed on a thread
def test_http_compressed_answers_decode_to_the_same_tensors(
    server: RunningGateway, accept: str, coding: str | None, width: int
) -> None:
    """The coding is chosen from Accept-Encoding as aiohttp chooses it, on both HTTP front
    ends; Inference-Header-Content-Length counts the JSON before compression, as in Triton."""
    import http.client
    import zlib

    import orjson

    rows = 16 if width == 16 else 12  # 384 KiB answers (the request stays under 1 MiB)
    x = np.arange(rows * width, dtype=np.float32).reshape(rows, width)
    header = orjson.dumps(
        {
            "inputs": [
                {"name": n, "shape": [rows, width], "datatype": "FP32",
                 "parameters": {"binary_data_size": x.nbytes}}
                for n in ("INPUT0", "INPUT1")
            ],
            "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
        }
    )  # fmt: skip
    host, port = server.http_url.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {"Accept-Encoding": accept, "Inference-Header-Content-Length": str(len(header))}
    model = "simple_fp32" if width == 16 else "simple_fp32_wide"
    connection.request("POST", f"/v2/models/{model}/infer", header + 2 * x.tobytes(), headers)
    response = connection.getresponse()
    body = response.read()
    connection.close()
    assert response.status == 200, body
    assert response.getheader("Content-Encoding") == coding
    assert response.getheader("Vary") == "Accept-Encoding"
    if coding is not None:
        body = zlib.decompress(body, zlib.MAX_WBITS | (16 if coding == "gzip" else 0))
    length = int(response.getheader("Inference-Header-Content-Length") or 0)
    assert orjson.loads(body[:length])["outputs"][0]["shape"] == [rows, width]
    np.testing.assert_array_equal(np.frombuffer(body[length:], np.float32), (2 * x).ravel())


def test_responses_are_not_compressed_unless_enabled(main_repository: Path) -> None:
    plain = RunningGateway(main_repository)  # http_compress_responses defaults to off
    try:
        assert _content_encoding_of_json_infer(plain, 64) is None
    finally:
        plain.stop()
