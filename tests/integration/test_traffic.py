"""Traffic between versions: weighted split, sticky keys, pinned versions, shadows compared
with the primary, and the policy kept across a restart. Each model answers Y = X + version."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from gateway.generated import gateway_service_pb2 as gateway_pb
from gateway.generated import gateway_service_pb2_grpc as gateway_grpc
from tests.support.models import plus_constant, slow, write_config
from tests.support.server import RunningGateway

WIDTH = 4


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    root = tmp_path / "repository"
    write_config(root / "split", "max_batch_size: 8\nversion_policy { all { } }\n")
    for version in (1, 2, 3):
        plus_constant(root / "split" / str(version) / "model.onnx", float(version), WIDTH)
    write_config(root / "regress", "max_batch_size: 8\nversion_policy { all { } }\n")
    for version in (1, 2):  # one value per row: read as numbers, not classes
        plus_constant(root / "regress" / str(version) / "model.onnx", float(version), 1)
    return root


@pytest.fixture
def server(repository: Path) -> Iterator[RunningGateway]:
    running = RunningGateway(repository)
    yield running
    running.stop()


def call(server: RunningGateway, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        f"http://{server.http_url}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def call_error(server: RunningGateway, method: str, path: str, body: Any = None) -> tuple[int, str]:
    with pytest.raises(urllib.error.HTTPError) as caught:
        call(server, method, path, body)
    error = caught.value
    message = json.loads(error.read())["error"]
    error.close()
    return error.code, message


def versions_answering(
    server: RunningGateway, count: int, protocol: str = "http", **kwargs: Any
) -> Counter[str]:
    module: Any = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(
        server.http_url if protocol == "http" else server.grpc_url
    )
    x = module.InferInput("X", [1, WIDTH], "FP32")
    x.set_data_from_numpy(np.zeros((1, WIDTH), np.float32))
    seen: Counter[str] = Counter()
    for i in range(count):
        options = {key: (value(i) if callable(value) else value) for key, value in kwargs.items()}
        result = client.infer("split", [x], **options)
        response = result.get_response()
        version = response.model_version if protocol == "grpc" else response["model_version"]
        assert float(result.as_numpy("Y")[0, 0]) == float(version)  # that version computed it
        seen[version] += 1
    client.close()
    return seen


def test_without_a_policy_the_latest_version_serves(server: RunningGateway) -> None:
    assert call(server, "GET", "/v2/models/split/traffic")["weights"] == {}
    assert versions_answering(server, 5) == {"3": 5}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_weights_split_routed_traffic(server: RunningGateway, protocol: str) -> None:
    answer = call(server, "PUT", "/v2/models/split/traffic", {"weights": {"1": 80, "2": 20}})
    assert answer["weights"] == {"1": 80, "2": 20}
    seen = versions_answering(server, 2000, protocol, request_id=lambda i: f"req-{i}")
    # Binomial(2000, 0.2): sd ~ 18; 5 sd either way.
    assert set(seen) == {"1", "2"} and abs(seen["2"] - 400) < 90, seen
    # Requests with neither a sticky key nor an id are routed at random, in proportion.
    seen = versions_answering(server, 1000, protocol)
    assert abs(seen["2"] - 200) < 65, seen


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_sticky_key_always_lands_on_the_same_version(
    server: RunningGateway, protocol: str
) -> None:
    call(
        server,
        "PUT",
        "/v2/models/split/traffic",
        {"weights": {"1": 50, "2": 50}, "sticky_key": "x-user-id"},
    )
    per_user = {}
    for user in range(40):
        headers = {"x-user-id": f"user-{user}"}
        seen = versions_answering(
            server, 5, protocol, headers=headers, request_id=lambda i: f"different-{i}"
        )
        assert len(seen) == 1, (user, seen)  # the request id changes; the user's version not
        per_user[user] = next(iter(seen))
    assert set(per_user.values()) == {"1", "2"}  # and users are spread over both


def test_a_pinned_version_or_label_bypasses_the_policy(server: RunningGateway) -> None:
    call(server, "PUT", "/v2/models/split/traffic", {"weights": {"1": 100}})
    assert versions_answering(server, 3) == {"1": 3}
    assert versions_answering(server, 3, model_version="3") == {"3": 3}
    call(server, "PUT", "/v2/models/split/labels/canary", {"version": "2"})
    assert versions_answering(server, 3, model_version="canary") == {"2": 3}


def test_a_policy_may_only_name_ready_versions_and_is_checked(server: RunningGateway) -> None:
    status, message = call_error(
        server, "PUT", "/v2/models/split/traffic", {"weights": {"1": 50, "7": 50}}
    )
    assert status == 400 and "version 7" in message and "READY" in message
    for body, fragment in [
        ({"weights": {}}, '"weights"'),
        ({"weights": {"1": -1}}, '"weights"["1"]'),
        ({"weights": {"one": 1}}, "version number"),
        ({"weights": {"1": 0}}, "positive weight"),
        ({"weights": {"1": 1}, "shadows": [{"version": "2"}, {"version": "2"}]}, "twice"),
        ({"weights": {"1": 1}, "shadows": [{"version": "2", "percent": 101}]}, "percent"),
        ({"weights": {"1": 1}, "sticky_key": "a b"}, "sticky_key"),
        ({"weights": {"1": 1}, "sticky_key": "x-user\n"}, "sticky_key"),
        ({"weights": {"1": 1}, "sticky_key": "x-user-bin"}, '"-bin"'),  # gRPC: bytes (INTERNAL)
        ({"weights": {"1": 1}, "colour": "red"}, "colour"),
        ({"weights": {"1": 1}, "tolerance": {"btol": 1}}, "'btol'"),
        ([1, 2], "JSON object"),
    ]:
        status, message = call_error(server, "PUT", "/v2/models/split/traffic", body)
        assert status == 400 and fragment in message, (body, message)
    assert versions_answering(server, 2) == {"3": 2}  # nothing changed


def test_shadow_answers_are_compared_and_never_returned(server: RunningGateway) -> None:
    policy: dict[str, Any] = {"weights": {"1": 100}, "shadows": [{"version": "2"}]}
    call(server, "PUT", "/v2/models/split/traffic", policy)
    assert versions_answering(server, 30) == {"1": 30}  # responses never come from a shadow
    assert versions_answering(server, 30, "grpc") == {"1": 30}
    server.call(server.gateway.shadows.wait_idle())
    (pair,) = call(server, "GET", "/v2/models/split/traffic")["comparisons"]
    # Four scores per row: a classifier by argmax; 1 + 0 and 2 + 0 have the same top class.
    assert (pair["primary"], pair["shadow"], pair["agree"] + pair["dropped"]) == ("1", "2", 60)
    assert pair["agree"] > 0 and pair["disagree"] == 0

    # One value per row: numbers, compared within a tolerance; 1 + x and 2 + x differ by 1.
    call(server, "PUT", "/v2/models/regress/traffic", policy)
    client = httpclient.InferenceServerClient(server.http_url)
    x = httpclient.InferInput("X", [1, 1], "FP32")
    x.set_data_from_numpy(np.zeros((1, 1), np.float32))
    for _ in range(10):
        assert client.infer("regress", [x]).get_response()["model_version"] == "1"
    server.call(server.gateway.shadows.wait_idle())
    (pair,) = call(server, "GET", "/v2/models/regress/traffic")["comparisons"]
    assert pair["disagree"] + pair["dropped"] == 10 and pair["agree"] == 0, pair
    assert pair["max_abs_diff"] == pytest.approx(1.0)
    policy["tolerance"] = {"atol": 1.5, "rtol": 0}
    call(server, "PUT", "/v2/models/regress/traffic", policy)
    for _ in range(10):
        client.infer("regress", [x])
    client.close()
    server.call(server.gateway.shadows.wait_idle())
    (pair,) = call(server, "GET", "/v2/models/regress/traffic")["comparisons"]
    assert pair["agree"] > 0 and pair["agree"] + pair["disagree"] + pair["dropped"] == 20


def test_a_failing_or_slow_shadow_costs_the_caller_nothing(tmp_path: Path) -> None:
    root = tmp_path / "repository"
    write_config(root / "split", "max_batch_size: 64\nversion_policy { all { } }\n")
    plus_constant(root / "split" / "1" / "model.onnx", 1.0, 512)
    slow(root / "split" / "2" / "model.onnx", width=512, depth=64)  # ~10x slower
    running = RunningGateway(root)
    try:
        client = httpclient.InferenceServerClient(running.http_url)
        x = httpclient.InferInput("X", [1, 512], "FP32")
        x.set_data_from_numpy(np.zeros((1, 512), np.float32))
        call(
            running,
            "PUT",
            "/v2/models/split/traffic",
            {"weights": {"1": 1}, "shadows": [{"version": "2"}]},
        )
        for _ in range(50):
            assert client.infer("split", [x]).get_response()["model_version"] == "1"
        # A shadow whose input the model refuses: compared as an error, the caller never sees it.
        bad = httpclient.InferInput("X", [1, 512], "FP32")
        bad.set_data_from_numpy(np.full((1, 512), np.nan, np.float32))
        assert client.infer("split", [bad]).get_response()["model_version"] == "1"
        client.close()
        running.call(running.gateway.shadows.wait_idle())
        (pair,) = running.gateway.service.shadow_figures("split")  # type: ignore[union-attr]
        figures = pair[2]
        assert figures.agree + figures.disagree + figures.error + figures.dropped == 51
    finally:
        running.stop()


def test_the_policy_persists_and_comes_back_after_a_restart(repository: Path) -> None:
    write_config(repository / "split", "max_batch_size: 8\n")  # latest 1: only v3 by policy
    running = RunningGateway(repository, model_control_mode="explicit", load_model=["split"])
    try:
        call(
            running,
            "POST",
            "/v2/repository/models/split/load",
            {
                "parameters": {
                    "config": json.dumps({"max_batch_size": 8, "version_policy": {"all": {}}})
                }
            },
        )
        policy = {
            "weights": {"1": 70, "2": 30},
            "sticky_key": "x-user",
            "shadows": [{"version": "3", "percent": 50}],
        }
        call(running, "PUT", "/v2/models/split/traffic", policy)
        assert json.loads((repository / "split" / "traffic.json").read_text())["weights"] == {
            "1": 70,
            "2": 30,
        }
    finally:
        running.stop()
    restarted = RunningGateway(repository)
    try:  # versions 1 and 2 load although the version policy says latest 1: the policy needs them
        answer = call(restarted, "GET", "/v2/models/split/traffic")
        assert answer["weights"] == {"1": 70, "2": 30} and answer["sticky_key"] == "x-user"
        assert answer["shadows"] == [{"version": "3", "percent": 50.0}]
        assert set(versions_answering(restarted, 200, request_id=lambda i: str(i))) == {"1", "2"}
        call(restarted, "DELETE", "/v2/models/split/traffic")
        assert not (repository / "split" / "traffic.json").exists()
        assert versions_answering(restarted, 3) == {"3": 3}
    finally:
        restarted.stop()


@pytest.mark.parametrize("grpc_server", ["threaded", "asyncio"])
def test_traffic_over_grpc(repository: Path, grpc_server: str) -> None:
    running = RunningGateway(repository, grpc_server=grpc_server, admin_token="t" * 16)
    try:
        channel = grpc.insecure_channel(running.grpc_url)
        stub = gateway_grpc.GatewayServiceStub(channel)
        token = (("authorization", "Bearer " + "t" * 16),)
        assert not stub.GetTraffic(gateway_pb.GetTrafficRequest(model="split")).has_policy
        policy = gateway_pb.TrafficPolicy(
            weights={"1": 9, "2": 1},
            sticky_key="x-user",
            shadows=[gateway_pb.ShadowTarget(version="3")],
        )
        with pytest.raises(grpc.RpcError) as caught:
            stub.SetTraffic(gateway_pb.SetTrafficRequest(model="split", policy=policy))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answer = stub.SetTraffic(
            gateway_pb.SetTrafficRequest(model="split", policy=policy), metadata=token
        )
        assert answer.has_policy and dict(answer.policy.weights) == {"1": 9, "2": 1}
        assert answer.policy.shadows[0].percent == 100 and answer.policy.atol == pytest.approx(1e-4)
        bad = gateway_pb.TrafficPolicy(weights={"9": 1})
        with pytest.raises(grpc.RpcError) as caught:
            stub.SetTraffic(gateway_pb.SetTrafficRequest(model="split", policy=bad), metadata=token)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        seen = versions_answering(running, 50, "grpc", headers={"x-user": "alice"})
        assert len(seen) == 1
        stub.ClearTraffic(gateway_pb.ClearTrafficRequest(model="split"), metadata=token)
        assert not stub.GetTraffic(gateway_pb.GetTrafficRequest(model="split")).has_policy
        channel.close()
    finally:
        running.stop()


def digits_gateway(demo_repository: Path, tmp_path: Path) -> tuple[np.ndarray, RunningGateway]:
    """The demo digits test split, and a gateway serving a copy of the demo digits model."""
    root = tmp_path / "repository"
    shutil.copytree(demo_repository / "digits", root / "digits")
    with np.load(root / "digits" / "test_split.npz") as data:
        images = data["X"].astype(np.float32)
    return images, RunningGateway(root)


def test_agreement_of_the_two_digits_versions_on_the_real_test_split(
    demo_repository: Path, tmp_path: Path
) -> None:
    images, running = digits_gateway(demo_repository, tmp_path)
    try:
        call(
            running,
            "PUT",
            "/v2/models/digits/traffic",
            {"weights": {"2": 1}, "shadows": [{"version": "1"}]},
        )
        client = httpclient.InferenceServerClient(running.http_url)
        labels: dict[str, list[int]] = {"1": [], "2": []}
        for row in images:
            x = httpclient.InferInput("input", [1, 64], "FP32")
            x.set_data_from_numpy(row[None])
            assert client.infer("digits", [x]).get_response()["model_version"] == "2"
            running.call(running.gateway.shadows.wait_idle())  # one at a time: none dropped
            for version in labels:
                result = client.infer("digits", [x], model_version=version)
                labels[version].append(int(result.as_numpy("label")[0]))
        client.close()
        differ = sum(a != b for a, b in zip(labels["1"], labels["2"], strict=True))
        assert differ == 24  # the two demo versions disagree on 24 of the 450 test digits
        (pair,) = call(running, "GET", "/v2/models/digits/traffic")["comparisons"]
        assert (pair["primary"], pair["shadow"], pair["dropped"]) == ("2", "1", 0)
        assert (pair["agree"], pair["disagree"]) == (len(images) - differ, differ)
        assert pair["agreement"] == pytest.approx((len(images) - differ) / len(images))
    finally:
        running.stop()


def test_traffic_weights_and_shadow_figures_are_metrics(server: RunningGateway) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    policy = {"weights": {"1": 3, "2": 1}, "shadows": [{"version": "3"}]}
    call(server, "PUT", "/v2/models/split/traffic", policy)
    versions_answering(server, 20)
    server.call(server.gateway.shadows.wait_idle())
    with urllib.request.urlopen(f"http://{server.http_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }

    def sample(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert sample("gateway_traffic_weight", model="split", version="1") == 75
    assert sample("gateway_traffic_weight", model="split", version="2") == 25
    assert sample("gateway_traffic_weight", model="split", version="3") == 0
    for primary in ("1", "2"):  # argmax of X + c is the same class: they agree
        key = {"model": "split", "version": "3", "primary": primary}
        compared = sample("gateway_shadow_comparisons_total", outcome="agree", **key)
        dropped = sample("gateway_shadow_dropped_total", **key)
        assert compared + dropped > 0
    roles = {labels for (name, labels) in samples if name == "gateway_requests_total"}
    assert any(("role", "shadow") in labels for labels in roles)
    assert any(("role", "canary") in labels for labels in roles)


def test_under_overload_shadows_are_dropped_before_primaries_are_refused(tmp_path: Path) -> None:
    import threading

    from tritonclient.utils import InferenceServerException

    root = tmp_path / "repository"
    write_config(
        root / "busy",
        "max_batch_size: 1\nversion_policy { all { } }\n"
        "dynamic_batching { default_queue_policy { max_queue_size: 8 } }\n"
        "instance_group [ { count: 1 } ]\n",
    )
    for version in (1, 2):
        slow(root / "busy" / str(version) / "model.onnx", width=256, depth=16)
    running = RunningGateway(root)
    try:
        call(
            running,
            "PUT",
            "/v2/models/busy/traffic",
            {"weights": {"1": 1}, "shadows": [{"version": "2"}]},
        )
        outcomes: list[str] = []

        def caller() -> None:
            client = httpclient.InferenceServerClient(running.http_url)
            x = httpclient.InferInput("X", [1, 256], "FP32")
            x.set_data_from_numpy(np.ones((1, 256), np.float32))
            for _ in range(10):
                try:
                    client.infer("busy", [x])
                    outcomes.append("ok")
                except InferenceServerException as exc:
                    outcomes.append(str(exc.status()))
            client.close()

        callers = [threading.Thread(target=caller) for _ in range(24)]
        for thread in callers:
            thread.start()
        for thread in callers:
            thread.join(60)
        running.call(running.gateway.shadows.wait_idle())
        (pair,) = running.gateway.service.shadow_figures("busy")  # type: ignore[union-attr]
        figures = pair[2]
        refused = sum(outcome == "429" for outcome in outcomes)
        assert refused > 0, outcomes  # the primary was overloaded...
        assert figures.dropped > 0  # ...and shadows had been dropped before that
        assert set(outcomes) <= {"ok", "429"}
    finally:
        running.stop()


def test_agreement_is_counted_per_row_however_clients_batch(
    demo_repository: Path, tmp_path: Path
) -> None:
    """The same 450 digits in requests of 10 rows agree on the same 426 rows (a request of 10
    counted as one comparison, agreeing only if all 10 did: 60 % instead of 95 %)."""
    images, running = digits_gateway(demo_repository, tmp_path)
    try:
        policy = {"weights": {"2": 1}, "shadows": [{"version": "1"}]}
        call(running, "PUT", "/v2/models/digits/traffic", policy)
        client = httpclient.InferenceServerClient(running.http_url)
        for start in range(0, len(images), 10):
            x = httpclient.InferInput("input", [10, 64], "FP32")
            x.set_data_from_numpy(images[start : start + 10])
            client.infer("digits", [x])
            running.call(running.gateway.shadows.wait_idle())  # one at a time: none dropped
        client.close()
        (pair,) = call(running, "GET", "/v2/models/digits/traffic")["comparisons"]
        assert (pair["agree"], pair["disagree"], pair["dropped"]) == (426, 24, 0)
    finally:
        running.stop()
