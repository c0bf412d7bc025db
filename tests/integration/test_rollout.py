"""Progressive rollouts on real gateways with real clients on both protocols: a good version
promotes by itself, bad ones (erroring, slow, disagreeing) roll back by themselves and say why,
a restart in the middle resumes, abort, one at a time, and the admin token."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper, numpy_helper
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from gateway.generated import gateway_service_pb2 as gateway_pb
from gateway.generated import gateway_service_pb2_grpc as gateway_grpc
from tests.support.admin import bearer, http_call
from tests.support.models import _save, _vi, plus_constant, slow, write_config
from tests.support.server import RunningGateway

TOKEN = "rollout-admin-token"
FAST = {"step_interval_s": 0.3, "min_requests": 5, "steps": [10, 50, 100]}
CALM = {"max_p99_ratio": 100, "min_p99_increase_ms": 2000}
"""Latency gates a busy two-core test machine cannot trip by noise (the slow test uses the
defaults)."""
ALL_VERSIONS = "max_batch_size: 8\nversion_policy { all { } }\n"


def failing(path: Path, width: int = 4) -> Path:
    """Same signature as plus_constant, but every run fails (an index out of range)."""
    index = numpy_helper.from_array(np.array([width + 6], dtype=np.int64), "index")
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["X", "index"], ["picked"], axis=1),
            helper.make_node("Add", ["X", "picked"], ["Y"]),
        ],
        "failing",
        [_vi("X", TensorProto.FLOAT, ["batch", width])],
        [_vi("Y", TensorProto.FLOAT, ["batch", width])],
        initializer=[index],
    )
    return _save(graph, path)


class Driver:
    """Requests without a version from a background thread, round robin over models, until
    stopped (and never longer than `limit_s`)."""

    def __init__(self, server: RunningGateway, models: dict[str, int], protocol: str = "http"):
        self._server, self._models, self._protocol = server, models, protocol
        self._stop = threading.Event()
        self.answered: dict[str, int] = {}
        self.failed: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self, limit_s: float = 30.0) -> None:
        module: Any = httpclient if self._protocol == "http" else grpcclient
        url = self._server.http_url if self._protocol == "http" else self._server.grpc_url
        client = module.InferenceServerClient(url)
        inputs = {}
        for model, width in self._models.items():
            x = module.InferInput("X", [1, width], "FP32")
            x.set_data_from_numpy(np.zeros((1, width), np.float32))
            inputs[model] = x
        deadline = time.monotonic() + limit_s
        i = 0
        while not self._stop.is_set() and time.monotonic() < deadline:
            for model, x in inputs.items():
                i += 1
                try:
                    client.infer(model, [x], request_id=f"r{i}")
                    self.answered[model] = self.answered.get(model, 0) + 1
                except InferenceServerException:
                    self.failed[model] = self.failed.get(model, 0) + 1
        client.close()

    def __enter__(self) -> Driver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def rollout(server: RunningGateway, model: str) -> Any:
    answer = http_call(server.http_url, "GET", f"/v2/models/{model}/rollout")
    assert answer.status == 200, answer.raw
    return answer.body


def wait_for(
    server: RunningGateway, model: str, done: Callable[[Any], bool], timeout_s: float = 20
) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        state = rollout(server, model)
        if done(state) or time.monotonic() > deadline:
            return state
        time.sleep(0.05)


def ended(state: Any) -> bool:
    return state["state"] not in ("running", "holding")


def start(server: RunningGateway, model: str, body: dict[str, Any], token: str = "") -> Any:
    answer = http_call(
        server.http_url,
        "POST",
        f"/v2/models/{model}/rollout",
        body,
        bearer(token) if token else None,
    )
    assert answer.status == 200, answer.raw
    return answer.body


def traffic(server: RunningGateway, model: str) -> Any:
    return http_call(server.http_url, "GET", f"/v2/models/{model}/traffic").body


@contextmanager
def channel(server: RunningGateway) -> Iterator[Any]:
    with grpc.insecure_channel(server.grpc_url) as opened:
        yield gateway_grpc.GatewayServiceStub(opened)


def test_good_versions_promote_and_bad_ones_roll_back_saying_why(tmp_path: Path) -> None:
    root = tmp_path / "repository"
    for name in ("good", "erroring", "disagreeing"):
        write_config(root / name, ALL_VERSIONS)
    plus_constant(root / "good" / "1" / "model.onnx", 1.0)
    plus_constant(root / "good" / "2" / "model.onnx", 1.0)  # the same answers
    plus_constant(root / "erroring" / "1" / "model.onnx", 1.0)
    failing(root / "erroring" / "2" / "model.onnx")
    plus_constant(root / "disagreeing" / "1" / "model.onnx", 1.0, 1)  # numbers, one per row
    plus_constant(root / "disagreeing" / "2" / "model.onnx", 2.0, 1)
    server = RunningGateway(root)
    try:
        with Driver(server, {"good": 4, "erroring": 4, "disagreeing": 1}) as driver:
            answer = start(server, "good", {"to": "2", **FAST, "gates": CALM})
            assert (answer["state"], answer["from"], answer["weight"]) == ("running", "1", 10)
            with channel(server) as stub:
                started = stub.StartRollout(
                    gateway_pb.StartRolloutRequest(
                        model="erroring",
                        to="2",
                        steps=[10, 50, 100],
                        step_interval_s=0.3,
                        min_requests=5,
                        gates=gateway_pb.RolloutGates(**CALM),
                    )
                )
                assert (started.state, getattr(started, "from"), started.weight) == (
                    "running",
                    "1",
                    10,
                )
            start(server, "disagreeing", {"to": "2", "from": "1", **FAST, "gates": CALM})
            good = wait_for(server, "good", ended)
            erroring = wait_for(server, "erroring", ended)
            disagreeing = wait_for(server, "disagreeing", ended)
        assert good["state"] == "promoted", good
        assert [h["weight"] for h in good["history"] if " passed: " in h["reason"]] == [10, 50]
        labels = http_call(server.http_url, "GET", "/v2/models/good/labels").body["labels"]
        assert labels == {"stable": "2"}
        assert traffic(server, "good")["weights"] == {"2": 100}
        assert traffic(server, "good")["shadows"] == []

        assert erroring["state"] == "rolled_back", erroring
        assert erroring["reason"].startswith(
            "rolled back: gate error_rate failed: candidate 100.00%"
        )
        assert traffic(server, "erroring")["weights"] == {"1": 100}
        assert driver.failed.get("erroring", 0) > 0 and "good" not in driver.failed

        assert disagreeing["state"] == "rolled_back", disagreeing
        assert "gate agreement failed: 0.00% of" in disagreeing["reason"]
        (gate,) = [g for g in disagreeing["evaluation"] if g["gate"] == "agreement"]
        assert gate["verdict"] == "fail" and gate["figures"]["disagree"] > 0
        assert traffic(server, "disagreeing")["weights"] == {"1": 100}

        with channel(server) as stub:  # the same over gRPC
            answer = stub.GetRollout(gateway_pb.GetRolloutRequest(model="erroring"))
            assert answer.state == "rolled_back" and answer.reason == erroring["reason"]
            assert {g.gate: g.verdict for g in answer.evaluation}["error_rate"] == "fail"
            assert [t.state for t in answer.history][-1] == "rolled_back"

        metrics = http_call(server.http_url, "GET", "/metrics").raw.decode()
        outcomes = {
            (s.labels["model"], s.labels["outcome"]): s.value
            for family in text_string_to_metric_families(metrics)
            for s in family.samples
            if s.name == "gateway_rollout_outcomes_total"
        }
        assert outcomes == {
            ("good", "promoted"): 1,
            ("erroring", "rolled_back"): 1,
            ("disagreeing", "rolled_back"): 1,
        }
    finally:
        server.stop()


def test_a_slow_version_rolls_back_on_p99_latency(tmp_path: Path) -> None:
    root = tmp_path / "repository"
    write_config(root / "wide", ALL_VERSIONS)
    plus_constant(root / "wide" / "1" / "model.onnx", 1.0, 512)
    slow(root / "wide" / "2" / "model.onnx", width=512, depth=256)  # a few ms a row
    server = RunningGateway(root)
    try:
        with Driver(server, {"wide": 512}, "grpc"):
            start(server, "wide", {"to": "2", **FAST, "min_requests": 10})
            state = wait_for(server, "wide", ended)
        assert state["state"] == "rolled_back", state
        assert state["reason"].startswith("rolled back: gate p99_latency failed: candidate p99")
        (gate,) = [g for g in state["evaluation"] if g["gate"] == "p99_latency"]
        assert gate["figures"]["ratio"] > 1.5
        assert traffic(server, "wide")["weights"] == {"1": 100}
    finally:
        server.stop()


def test_a_restart_in_the_middle_of_a_rollout_resumes_it(tmp_path: Path) -> None:
    root = tmp_path / "repository"
    write_config(root / "good", "max_batch_size: 8\n")  # latest 1: only the rollout keeps v1
    plus_constant(root / "good" / "1" / "model.onnx", 1.0)
    plus_constant(root / "good" / "2" / "model.onnx", 1.0)
    write_config(root / "good", ALL_VERSIONS)
    server = RunningGateway(root)
    try:
        with Driver(server, {"good": 4}):
            start(server, "good", {"to": "2", **FAST, "min_requests": 10, "gates": CALM})
            state = wait_for(server, "good", lambda s: s["step"] >= 2 or ended(s))
        assert (state["state"], state["step"]) == ("running", 2), state  # no traffic: it waits
    finally:
        server.stop()
    saved = (root / "good" / "rollout.json").read_text()
    assert '"state": "running"' in saved and '"pinned_versions"' in saved
    write_config(root / "good", "max_batch_size: 8\n")  # the rollout alone keeps v1 loaded
    restarted = RunningGateway(root)
    try:
        with channel(restarted) as stub:
            answer = stub.GetRollout(gateway_pb.GetRolloutRequest(model="good"))
            assert (answer.state, answer.step, answer.weight) == ("running", 2, 50)
        assert traffic(restarted, "good")["weights"] == {"1": 50, "2": 50}
        with Driver(restarted, {"good": 4}, "grpc"):
            state = wait_for(restarted, "good", ended)
        assert state["state"] == "promoted", state
        reasons = [h["reason"] for h in state["history"]]
        assert "resumed after a restart, its window anew: step 2 of 3: 50% to version 2" in reasons
        assert traffic(restarted, "good")["weights"] == {"2": 100}
    finally:
        restarted.stop()


def test_abort_one_at_a_time_unload_and_the_admin_token(tmp_path: Path) -> None:
    root = tmp_path / "repository"
    write_config(root / "good", ALL_VERSIONS)
    for version in (1, 2, 3):
        plus_constant(root / "good" / str(version) / "model.onnx", 1.0)
    server = RunningGateway(root, admin_token=TOKEN, grpc_server="asyncio")
    path = "/v2/models/good/rollout"
    slow_plan = {"to": "2", "from": "1", "step_interval_s": 60}
    try:
        address = server.http_url
        assert http_call(address, "GET", path).status == 404  # no rollout yet
        assert http_call(address, "GET", "/v2/models/nope/rollout").status == 404
        assert http_call(address, "POST", path, slow_plan).status == 401
        assert http_call(address, "POST", path, slow_plan, bearer("x" * 20)).status == 403
        with channel(server) as stub:
            request = gateway_pb.StartRolloutRequest(model="good", to="2")
            with pytest.raises(grpc.RpcError) as caught:
                stub.StartRollout(request)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        bad = http_call(address, "POST", path, {"to": "2", "steps": [50, 10]}, bearer(TOKEN))
        assert bad.status == 400 and "must increase" in bad.error

        start(server, "good", slow_plan, TOKEN)
        assert http_call(address, "GET", path).body["state"] == "running"  # reading needs none
        again = http_call(address, "POST", path, {"to": "3"}, bearer(TOKEN))
        assert again.status == 400 and "already running" in again.error
        change = http_call(
            address, "PUT", "/v2/models/good/traffic", {"weights": {"3": 1}}, bearer(TOKEN)
        )
        assert change.status == 400 and "abort it first" in change.error
        # The label the rollout moves when it promotes is its own until it ends; others are not.
        stable = "/v2/models/good/labels/stable"
        for method, body in (("PUT", {"version": "3"}), ("DELETE", None)):
            moved = http_call(address, method, stable, body, bearer(TOKEN))
            assert moved.status == 400, moved
            assert "points label 'stable' when it promotes; abort it first" in moved.error
        other = http_call(
            address, "PUT", "/v2/models/good/labels/canary", {"version": "3"}, bearer(TOKEN)
        )
        assert other.status == 200
        with channel(server) as stub:
            token = (("authorization", f"Bearer {TOKEN}"),)
            with pytest.raises(grpc.RpcError) as caught:
                stub.SetLabel(
                    gateway_pb.SetLabelRequest(model="good", label="stable", version="3"),
                    metadata=token,
                )
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert http_call(address, "DELETE", path).status == 401
        with channel(server) as stub:
            token = (("authorization", f"Bearer {TOKEN}"),)
            answer = stub.AbortRollout(gateway_pb.AbortRolloutRequest(model="good"), metadata=token)
            assert (answer.state, answer.reason) == ("aborted", "aborted on request")
            with pytest.raises(grpc.RpcError) as caught:
                stub.AbortRollout(gateway_pb.AbortRolloutRequest(model="good"), metadata=token)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert traffic(server, "good")["weights"] == {"1": 100}
        # Once it ended, the label is anyone's again.
        moved = http_call(address, "PUT", stable, {"version": "3"}, bearer(TOKEN))
        assert moved.status == 200 and moved.body["labels"]["stable"] == "3"

        start(server, "good", {**slow_plan, "to": "3"}, TOKEN)
        unload = http_call(address, "POST", "/v2/repository/models/good/unload", {}, bearer(TOKEN))
        assert unload.status == 200
        state = http_call(address, "GET", path).body
        assert (state["state"], state["reason"]) == ("aborted", "aborted: the model was unloaded")
    finally:
        server.stop()


def test_requests_no_version_takes_do_not_count_against_the_candidate(tmp_path: Path) -> None:
    """A client that sends malformed requests pinned to the candidate (or, with a sticky key,
    routed to it) must not roll it back: the stable version would refuse them as well. Requests
    the candidate refuses and the stable version takes (a changed signature) do count."""
    root = tmp_path / "repository"
    for name in ("tolerant", "reshaped"):
        write_config(root / name, ALL_VERSIONS)
        plus_constant(root / name / "1" / "model.onnx", 1.0)
    plus_constant(root / "tolerant" / "2" / "model.onnx", 1.0)
    plus_constant(root / "reshaped" / "2" / "model.onnx", 1.0, 5)  # takes 5 values a row, not 4
    server = RunningGateway(root)
    stop = threading.Event()
    refused: list[int] = []
    four = {"name": "X", "datatype": "FP32", "shape": [1, 4], "data": [0.0] * 4}
    malformed = [  # what no version of either model takes
        {"inputs": [{**four, "shape": [1, 3], "data": [0.0] * 3}]},  # three values a row
        {"inputs": [four], "parameters": {"timeout": -1}},
        {"inputs": [four], "parameters": {"label": []}},
    ]

    def send_malformed() -> None:  # pinned to the candidate
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            for model in ("tolerant", "reshaped"):
                for body in malformed:
                    path = f"/v2/models/{model}/versions/2/infer"
                    refused.append(http_call(server.http_url, "POST", path, body).status)

    sender = threading.Thread(target=send_malformed, daemon=True)
    try:
        with Driver(server, {"tolerant": 4, "reshaped": 4}):
            sender.start()
            start(server, "tolerant", {"to": "2", **FAST, "gates": CALM})
            start(server, "reshaped", {"to": "2", **FAST, "gates": CALM})
            tolerant = wait_for(server, "tolerant", ended)
            reshaped = wait_for(server, "reshaped", ended)
    finally:
        stop.set()
        sender.join(10)
        server.stop()
    assert len(refused) > 20 and set(refused) == {400}
    assert tolerant["state"] == "promoted", tolerant
    assert reshaped["state"] == "rolled_back", reshaped
    assert reshaped["reason"].startswith("rolled back: gate error_rate failed: candidate 100.00%")


def test_deadlines_a_caller_pins_to_the_candidate_do_not_roll_it_back(tmp_path: Path) -> None:
    """A client pinned to the candidate with a 1 us `timeout` gets 504s: its own choice, which
    the stable version never sees. They stay out of the error gate; the rollout promotes."""
    root = tmp_path / "repository"
    write_config(root / "patient", ALL_VERSIONS)
    for number in (1, 2):
        plus_constant(root / "patient" / str(number) / "model.onnx", 1.0)
    server = RunningGateway(root)
    stop = threading.Event()
    statuses: list[int] = []
    four = {"name": "X", "datatype": "FP32", "shape": [1, 4], "data": [0.0] * 4}

    def send_hurried() -> None:
        deadline = time.monotonic() + 30
        body = {"inputs": [four], "parameters": {"timeout": 1}}
        while not stop.is_set() and time.monotonic() < deadline:
            path = "/v2/models/patient/versions/2/infer"
            statuses.append(http_call(server.http_url, "POST", path, body).status)

    sender = threading.Thread(target=send_hurried, daemon=True)
    try:
        with Driver(server, {"patient": 4}):
            sender.start()
            start(server, "patient", {"to": "2", **FAST, "gates": CALM})
            done = wait_for(server, "patient", ended)
    finally:
        stop.set()
        sender.join(10)
        server.stop()
    assert statuses.count(504) > 20, statuses[:20]
    assert done["state"] == "promoted", done
