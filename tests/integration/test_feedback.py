"""Accuracy from ground truth: inference with ids, feedback with the true labels later, and
per-version accuracy, on both protocols against a real gateway serving the demo `digits`.

Versions 1 and 2 of `digits` disagree on some test digits, so the per-version figures the
gateway reports are checked against what each version really answered.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from gateway.app.server import StartupError
from gateway.generated import gateway_service_pb2 as gateway_pb
from tests.support.admin import GrpcAdmin, http_call
from tests.support.models import plus_constant, write_config
from tests.support.server import RunningGateway

BUILD = Path(__file__).resolve().parents[2] / "models" / "build_repository.py"
CLASS_NAMES = "zero,one,two,three,four,five,six,seven,eight,nine"
NAMED_CONFIG = (
    "max_batch_size: 64\n"
    'parameters { key: "prediction_output" value: { string_value: "probabilities" } }\n'
    'parameters { key: "prediction" value: { string_value: "argmax" } }\n'
    f'parameters {{ key: "class_names" value: {{ string_value: "{CLASS_NAMES}" }} }}\n'
)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, demo_repository: Path) -> Path:
    """digits (v1, v2) from the demo build, digits_named (v2 read by argmax, with class
    names) and regress (Y = X + 0.5, one value per row)."""
    built = demo_repository
    root = tmp_path_factory.mktemp("feedback") / "repository"
    shutil.copytree(built / "digits", root / "digits")
    (root / "digits_named" / "1").mkdir(parents=True)
    shutil.copy(built / "digits" / "2" / "model.onnx", root / "digits_named" / "1")
    write_config(root / "digits_named", NAMED_CONFIG)
    plus_constant(root / "regress" / "1" / "model.onnx", 0.5, width=1)
    return root


@pytest.fixture(scope="module")
def split(repository: Path) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    with np.load(repository / "digits" / "test_split.npz") as data:
        return data["X"], data["y"]


@pytest.fixture
def server(repository: Path) -> Iterator[RunningGateway]:
    running = RunningGateway(repository, accuracy_window=100)
    yield running
    running.stop()


def infer_http(
    server: RunningGateway, x: npt.NDArray[Any], version: str, request_id: str, **kw: Any
) -> npt.NDArray[Any]:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        digits = httpclient.InferInput("input", list(x.shape), "FP32")
        digits.set_data_from_numpy(x)
        result = client.infer(
            "digits", [digits], model_version=version, request_id=request_id, **kw
        )
        assert result.get_response()["id"] == request_id
        label: npt.NDArray[Any] = result.as_numpy("label")
        return label
    finally:
        client.close()


def feedback(server: RunningGateway, body: Any, model: str = "digits") -> Any:
    return http_call(server.http_url, "POST", f"/v2/models/{model}/feedback", body)


def accuracy(server: RunningGateway, model: str = "digits") -> dict[str, dict[str, Any]]:
    answer = http_call(server.http_url, "GET", f"/v2/models/{model}/accuracy")
    assert answer.status == 200, answer.raw
    assert answer.body["model"] == model
    return {figures["version"]: figures for figures in answer.body["versions"]}


def test_http_accuracy_per_version_matches_the_real_predictions(
    server: RunningGateway, split: tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]
) -> None:
    x, y = split
    predicted: dict[str, list[int]] = {"1": [], "2": []}
    items = []
    for version in ("1", "2"):
        for i in range(len(y)):
            label = infer_http(server, x[i : i + 1], version, f"h{version}-{i}")
            predicted[version].append(int(label[0]))
            items.append({"id": f"h{version}-{i}", "label": int(y[i])})
    answer = feedback(server, {"feedback": items})
    assert answer.status == 200, answer.raw
    assert answer.body["counts"] == {"joined": 2 * len(y)}
    first = answer.body["results"][0]
    assert first["id"] == "h1-0" and first["version"] == "1" and first["observations"] == 1
    assert int(np.sum(np.array(predicted["1"]) != np.array(predicted["2"]))) > 0

    figures = accuracy(server)
    for version in ("1", "2"):
        hits = np.array(predicted[version]) == y
        found = figures[version]
        assert (found["correct"], found["observations"]) == (int(hits.sum()), len(y))
        assert found["accuracy"] == pytest.approx(hits.mean())
        # The window is the last 100 rows joined.
        assert found["window_observations"] == 100
        assert found["window_correct"] == int(hits[-100:].sum())
        assert found["feedback"] == {"joined": len(y)}
        assert (found["prediction"], found["output"]) == ("label", "label")
        assert found["recorded"] == len(y)
        assert found["mean_absolute_error"] is None
    assert figures["2"]["accuracy"] > figures["1"]["accuracy"]


def test_single_form_unknown_duplicate_and_batched_requests(
    server: RunningGateway, split: tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]
) -> None:
    x, y = split
    rows = infer_http(server, x[:5], "2", "batch-of-5")  # one id, five rows
    answer = feedback(server, {"id": "batch-of-5", "label": [int(v) for v in y[:5]]})
    assert answer.status == 200, answer.raw
    assert answer.body == {
        "id": "batch-of-5",
        "outcome": "joined",
        "version": "2",
        "observations": 5,
        "correct": int((rows == y[:5]).sum()),
    }
    again = feedback(server, {"id": "batch-of-5", "label": [int(v) for v in y[:5]]})
    assert (again.status, again.body["outcome"]) == (200, "duplicate")
    unknown = feedback(server, {"id": "never-sent", "label": 1})
    assert (unknown.status, unknown.body) == (200, {"id": "never-sent", "outcome": "unknown_id"})
    wrong_count = feedback(server, {"id": "x5", "label": 1})
    assert wrong_count.body["outcome"] == "unknown_id"
    infer_http(server, x[:2], "2", "two-rows")
    mismatch = feedback(server, {"id": "two-rows", "label": 1})
    assert mismatch.status == 400
    assert "label has 1 value(s) but version 2 predicted 2" in mismatch.error
    figures = accuracy(server)
    assert figures["2"]["observations"] == 5
    assert figures["2"]["feedback"] == {"duplicate": 1, "invalid": 1, "joined": 1}
    assert figures[""]["feedback"] == {"unknown_id": 2}


def test_ids_pushed_out_of_memory_answer_expired(
    repository: Path, split: tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]
) -> None:
    x, y = split
    running = RunningGateway(repository, feedback_max_entries=5)
    try:
        for i in range(8):
            infer_http(running, x[i : i + 1], "1", f"r{i}")
        items = [{"id": f"r{i}", "label": int(y[i])} for i in range(8)]
        answer = feedback(running, {"feedback": items})
        outcomes = [result["outcome"] for result in answer.body["results"]]
        assert outcomes == ["expired"] * 3 + ["joined"] * 5
        assert answer.body["counts"] == {"expired": 3, "joined": 5}
        assert accuracy(running)["1"]["feedback"] == {"expired": 3, "joined": 5}
    finally:
        running.stop()


def test_label_in_parameters_is_joined_at_once(
    server: RunningGateway, split: tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]
) -> None:
    x, y = split
    label = infer_http(server, x[:1], "1", "replay-1", parameters={"label": int(y[0])})
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        digits = grpcclient.InferInput("input", [1, 64], "FP32")
        digits.set_data_from_numpy(x[1:2])
        result = client.infer(
            "digits", [digits], model_version="1", parameters={"label": int(y[1])}
        )
        grpc_label = result.as_numpy("label")
    finally:
        client.close()
    found = accuracy(server)["1"]
    expected = int(label[0] == y[0]) + int(grpc_label[0] == y[1])
    assert (found["observations"], found["correct"]) == (2, expected)
    assert found["recorded"] == 1  # only the request with an id is remembered
    assert feedback(server, {"id": "replay-1", "label": int(y[0])}).body["outcome"] == "duplicate"
    status = http_call(
        server.http_url,
        "POST",
        "/v2/models/digits/versions/1/infer",
        {
            "parameters": {"label": {"not": "a label"}},
            "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0] * 64}],
        },
    )
    assert status.status == 400 and "parameter 'label'" in status.error


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not valid JSON"),
        ([1, 2], "expected a JSON object"),
        ({"label": 3}, "'id' must be the non-empty request id"),
        ({"id": "", "label": 3}, "'id' must be the non-empty request id"),
        ({"id": "a"}, "'label' is missing"),
        ({"id": "a", "label": {"x": 1}}, "'label' must be a class index"),
        ({"id": "a", "label": True}, "'label' must be a class index"),
        ({"id": "a", "label": 3, "extra": 1}, "extra: unknown field"),
        ({"feedback": {"id": "a"}}, "'feedback' must be a list of 1 to 10000 items"),
        ({"feedback": []}, "'feedback' must be a list of 1 to 10000 items"),
        ({"feedback": [{"id": "a", "label": 1}] * 10_001}, "1 to 10000 items"),
        ({"feedback": [{"id": "a", "label": 1}, {"id": 7, "label": 1}]}, "'feedback[1].id'"),
        ({"feedback": [{"id": "a", "label": [1, None]}]}, "'feedback[0].label' must be"),
        ({"feedback": [], "id": "a"}, "a batch body holds only 'feedback'"),
    ],
)
def test_bad_bodies_are_400_naming_the_field(
    server: RunningGateway, body: Any, message: str
) -> None:
    answer = feedback(server, body)
    assert answer.status == 400, answer.raw
    assert message in answer.error
    assert http_call(server.http_url, "GET", "/v2/health/ready").status == 200


def test_class_names_and_argmax(
    server: RunningGateway, split: tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]
) -> None:
    x, y = split
    names = CLASS_NAMES.split(",")
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        digits = httpclient.InferInput("input", [3, 64], "FP32")
        digits.set_data_from_numpy(x[:3])
        result = client.infer("digits_named", [digits], request_id="named")
        probabilities = result.as_numpy("probabilities")
    finally:
        client.close()
    truth = [names[int(v)] for v in y[:3]]
    answer = feedback(server, {"id": "named", "label": truth}, model="digits_named")
    assert answer.status == 200, answer.raw
    assert answer.body["correct"] == int((probabilities.argmax(axis=1) == y[:3]).sum())
    found = accuracy(server, "digits_named")["1"]
    assert (found["prediction"], found["output"]) == ("argmax", "probabilities")
    # A class name where none are configured: a clear 400.
    infer_http(server, x[:1], "1", "plain")
    answer = feedback(server, {"id": "plain", "label": "seven"})
    assert answer.status == 400
    assert "configures no class_names; send the class index" in answer.error


def test_regression_mean_absolute_error(server: RunningGateway) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        for i, value in enumerate((1.0, 2.0, 3.0)):
            tensor = httpclient.InferInput("X", [1, 1], "FP32")
            tensor.set_data_from_numpy(np.array([[value]], np.float32))
            client.infer("regress", [tensor], request_id=f"v{i}")  # answers value + 0.5
    finally:
        client.close()
    items = [{"id": "v0", "label": 1.5}, {"id": "v1", "label": 3.5}, {"id": "v2", "label": 2}]
    answer = feedback(server, {"feedback": items}, model="regress")
    assert [r["absolute_error"] for r in answer.body["results"]] == [0.0, 1.0, 1.5]
    found = accuracy(server, "regress")["1"]
    assert found["prediction"] == "value" and found["accuracy"] is None
    assert found["mean_absolute_error"] == pytest.approx(2.5 / 3)
    assert found["value_observations"] == 3


def test_unknown_model_is_404(server: RunningGateway) -> None:
    assert feedback(server, {"id": "a", "label": 1}, model="nope").status == 404
    assert http_call(server.http_url, "GET", "/v2/models/nope/accuracy").status == 404


@pytest.mark.parametrize("front_end", ["threaded", "asyncio"])
def test_grpc_feedback_and_accuracy(
    repository: Path,
    split: tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]],
    front_end: str,
) -> None:
    x, y = split
    running = RunningGateway(repository, grpc_server=front_end)
    client = grpcclient.InferenceServerClient(running.grpc_url)
    admin = GrpcAdmin(running.grpc_url)
    try:
        predicted: dict[str, list[int]] = {"1": [], "2": []}
        for version in ("1", "2"):
            for i in range(60):
                digits = grpcclient.InferInput("input", [1, 64], "FP32")
                digits.set_data_from_numpy(x[i : i + 1])
                result = client.infer(
                    "digits", [digits], model_version=version, request_id=f"g{version}-{i}"
                )
                predicted[version].append(int(result.as_numpy("label")[0]))
        items = [
            gateway_pb.FeedbackItem(id=f"g{version}-{i}", class_indices=[int(y[i])])
            for version in ("1", "2")
            for i in range(60)
        ]
        items.append(gateway_pb.FeedbackItem(id="g1-0", class_indices=[int(y[0])]))
        items.append(gateway_pb.FeedbackItem(id="nobody", class_indices=[1]))
        items.append(gateway_pb.FeedbackItem(id="g1-1", class_names=["one"]))
        response = admin.gateway.Feedback(
            gateway_pb.FeedbackRequest(model="digits", items=items), timeout=30
        )
        outcomes = [r.outcome for r in response.results]
        assert outcomes == ["joined"] * 120 + ["duplicate", "unknown_id", "duplicate"]
        assert response.results[0].version == "1" and response.results[0].observations == 1
        assert response.results[0].HasField("correct")

        figures = admin.gateway.GetAccuracy(
            gateway_pb.GetAccuracyRequest(model="digits"), timeout=30
        )
        by_version = {v.version: v for v in figures.versions}
        for version in ("1", "2"):
            hits = np.array(predicted[version]) == y[:60]
            found = by_version[version]
            assert (found.correct, found.observations) == (int(hits.sum()), 60)
            assert found.accuracy == pytest.approx(hits.mean())
            assert found.window_observations == 60 and found.prediction == "label"
            assert not found.HasField("mean_absolute_error")
        assert dict(by_version["1"].feedback) == {"joined": 60, "duplicate": 2}
        assert dict(by_version[""].feedback) == {"unknown_id": 1}
        assert figures.window == 1000

        for request, detail in [
            (gateway_pb.FeedbackRequest(model="digits"), "1 to 10000"),
            (
                gateway_pb.FeedbackRequest(
                    model="digits",
                    items=[gateway_pb.FeedbackItem(id="a", values=[1], class_indices=[1])],
                ),
                "items[0]: set exactly one of",
            ),
            (
                gateway_pb.FeedbackRequest(
                    model="digits", items=[gateway_pb.FeedbackItem(class_indices=[1])]
                ),
                "items[0].id",
            ),
        ]:
            with pytest.raises(grpc.RpcError) as caught:
                admin.gateway.Feedback(request, timeout=30)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert detail in (caught.value.details() or "")
        with pytest.raises(grpc.RpcError) as caught:
            admin.gateway.GetAccuracy(gateway_pb.GetAccuracyRequest(model="nope"), timeout=30)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert client.is_server_ready()
    finally:
        admin.close()
        client.close()
        running.stop()


def test_a_prediction_output_that_does_not_exist_fails_the_load(tmp_path: Path) -> None:
    plus_constant(tmp_path / "bad" / "1" / "model.onnx", 1.0)
    write_config(
        tmp_path / "bad",
        'parameters { key: "prediction_output" value: { string_value: "nope" } }\n',
    )
    with pytest.raises(StartupError, match="prediction_output 'nope' is not an output"):
        RunningGateway(tmp_path)
