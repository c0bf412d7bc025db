"""Hot swap: versions load, reload and leave while requests keep flowing, and none fails.

Every model here answers Y = X + its version number, so each answer proves which version
computed it, and the test can check that version was serving when the request was made.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.support.models import identity_any_width, plus_constant, slow, write_config
from tests.support.server import RunningGateway

WIDTH = 4
LATEST_ONE = (
    "max_batch_size: 8\nversion_policy { latest { num_versions: 1 } }\ndynamic_batching {}\n"
)


def add_version(model_dir: Path, version: int) -> None:
    plus_constant(model_dir / str(version) / "model.onnx", float(version), WIDTH)


def admin(server: RunningGateway, path: str, body: Any = None, method: str = "POST") -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://{server.http_url}{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read() or b"null")


def admin_error(server: RunningGateway, path: str, body: Any = None) -> tuple[int, str]:
    with pytest.raises(urllib.error.HTTPError) as caught:
        admin(server, path, body)
    return caught.value.code, json.loads(caught.value.read())["error"]


def index(server: RunningGateway) -> dict[tuple[str, str], dict[str, str]]:
    return {(m["name"], m.get("version", "")): m for m in admin(server, "/v2/repository/index")}


def infer_http(server: RunningGateway, model: str, version: str = "") -> tuple[str, float]:
    client = httpclient.InferenceServerClient(server.http_url)
    x = httpclient.InferInput("X", [1, WIDTH], "FP32")
    x.set_data_from_numpy(np.zeros((1, WIDTH), np.float32))
    result = client.infer(model, [x], model_version=version)
    client.close()
    return result.get_response()["model_version"], float(result.as_numpy("Y")[0, 0])


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    root = tmp_path / "repository"
    write_config(root / "swap", LATEST_ONE)
    add_version(root / "swap", 1)
    write_config(root / "steady", "max_batch_size: 8\n")
    add_version(root / "steady", 7)
    return root


@pytest.fixture
def server(repository: Path) -> Iterator[RunningGateway]:
    running = RunningGateway(repository)
    yield running
    running.stop()


# -- swaps under load ----------------------------------------------------------------------
@dataclass
class Answer:
    started: float
    ended: float
    version: str
    value: float


@dataclass
class Step:
    started: float
    ended: float
    serving: frozenset[str]
    """The versions that serve once the step returned."""


class Load:
    """Callers on both protocols sending to `swap` (no version) until stopped."""

    def __init__(self, server: RunningGateway, callers_per_protocol: int = 3) -> None:
        self.answers: list[Answer] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(server, protocol, i), daemon=True)
            for protocol in ("grpc", "http")
            for i in range(callers_per_protocol)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, server: RunningGateway, protocol: str, seed: int) -> None:
        module: Any = grpcclient if protocol == "grpc" else httpclient
        client = module.InferenceServerClient(
            server.grpc_url if protocol == "grpc" else server.http_url
        )
        rng = np.random.default_rng(seed)
        deadline = time.monotonic() + 60  # bounded even if the test forgets to stop
        while not self._stop.is_set() and time.monotonic() < deadline:
            rows = np.round(rng.random((1, WIDTH), dtype=np.float32) * 100)
            x = module.InferInput("X", [1, WIDTH], "FP32")
            x.set_data_from_numpy(rows)
            started = time.monotonic()
            try:
                result = client.infer("swap", [x])
            except InferenceServerException as exc:
                with self._lock:
                    self.errors.append(f"{protocol}: {exc}")
                continue
            ended = time.monotonic()
            response = result.get_response()
            version = response.model_version if protocol == "grpc" else response["model_version"]
            offset = result.as_numpy("Y") - rows
            with self._lock:
                self.answers.append(Answer(started, ended, version, float(offset.mean())))
                if not np.allclose(offset, offset[0, 0]):
                    self.errors.append(f"{protocol}: rows mixed up: {offset}")
        client.close()

    def count(self) -> int:
        with self._lock:
            return len(self.answers)


def wait_for_answers(load: Load, more: int) -> None:
    target = load.count() + more
    deadline = time.monotonic() + 30
    while load.count() < target and time.monotonic() < deadline:
        time.sleep(0.005)


def test_swaps_under_load_fail_no_request_and_answer_from_a_serving_version(
    server: RunningGateway, repository: Path
) -> None:
    model = repository / "swap"
    steps: list[Step] = [Step(0.0, time.monotonic(), frozenset({"1"}))]

    def step(serving: set[str], body: Any = None, path: str = "load") -> Any:
        started = time.monotonic()
        answer = admin(server, f"/v2/repository/models/swap/{path}", body)
        steps.append(Step(started, time.monotonic(), frozenset(serving)))
        return answer

    rollback = {
        "parameters": {
            "config": json.dumps(
                {
                    "max_batch_size": 8,
                    "version_policy": {"specific": {"versions": [1]}},
                }
            )
        }
    }
    with Load(server) as load:
        for _ in range(2):
            wait_for_answers(load, 30)
            add_version(model, 2)
            assert step({"2"})["loaded"] == [2]  # new version in, v1 drains
            wait_for_answers(load, 30)
            assert step({"2"}, {"parameters": {"reload": True}})["loaded"] == [2]  # same number
            wait_for_answers(load, 30)
            add_version(model, 3)
            shutil.rmtree(model / "2")
            result = step({"3"})
            assert (result["loaded"], result["unloaded"]) == ([3], [2])
            wait_for_answers(load, 30)
            result = step({"1"}, rollback)
            assert (result["loaded"], result["unloaded"]) == ([1], [3])
            wait_for_answers(load, 30)
            shutil.rmtree(model / "3")
            # Back to the directory's config (latest is 1): its config changed, so it reloads.
            assert step({"1"})["loaded"] == [1]
        wait_for_answers(load, 30)

    assert not load.errors, load.errors[:5]
    assert len(load.answers) > 300
    for answer in load.answers:
        assert answer.value == float(answer.version), answer  # the version that computed it
        # The versions that may answer: those serving when the request was sent, and any that
        # started serving while it was in flight.
        before = [s for s in steps if s.ended <= answer.started]
        allowed = set(before[-1].serving)
        for s in steps:
            if s.started < answer.ended and s.ended > answer.started:
                allowed |= s.serving
        assert answer.version in allowed, (answer, steps)
    versions_seen = {a.version for a in load.answers}
    assert versions_seen == {"1", "2", "3"}
    # Every replaced copy released its session, and the index says which version serves.
    server.call(server.gateway.lifecycle.wait_drained())  # type: ignore[union-attr]
    states = index(server)
    assert states[("swap", "1")]["state"] == "READY"
    assert {states[("swap", v)]["state"] for v in ("2", "3")} == {"UNAVAILABLE"}


def test_tritonclient_load_unload_and_index_on_both_protocols(
    server: RunningGateway, repository: Path
) -> None:
    add_version(repository / "swap", 2)
    for client in (
        httpclient.InferenceServerClient(server.http_url),
        grpcclient.InferenceServerClient(server.grpc_url),
    ):
        client.unload_model("swap")
        assert not client.is_model_ready("swap")
        assert server.gateway.service.ready  # type: ignore[union-attr]  # unloaded on request
        client.load_model("swap")
        assert client.is_model_ready("swap", "2")
        assert not client.is_model_ready("swap", "1")
        client.load_model(
            "swap", config=json.dumps({"version_policy": {"all": {}}, "max_batch_size": 8})
        )
        assert client.is_model_ready("swap", "1") and client.is_model_ready("swap", "2")
        index_ = client.get_model_repository_index()
        if isinstance(client, grpcclient.InferenceServerClient):
            entries = [(m.name, m.version, m.state) for m in index_.models]
        else:
            entries = [(m["name"], m.get("version", ""), m["state"]) for m in index_]
        assert ("swap", "1", "READY") in entries and ("steady", "7", "READY") in entries
        client.load_model("swap")  # back to the directory's config: latest 1
        client.close()
    assert infer_http(server, "swap") == ("2", 2.0)


def test_unload_finishes_requests_in_flight_then_refuses(tmp_path: Path) -> None:
    root = tmp_path / "repository"
    write_config(root / "slow", "max_batch_size: 64\n")
    slow(root / "slow" / "1" / "model.onnx", width=1024, depth=32)
    running = RunningGateway(root)
    try:
        results: list[Any] = []

        def call() -> None:
            client = httpclient.InferenceServerClient(running.http_url, network_timeout=60)
            x = httpclient.InferInput("X", [64, 1024], "FP32")
            x.set_data_from_numpy(np.ones((64, 1024), np.float32))
            try:
                results.append(client.infer("slow", [x]).as_numpy("Y").shape)
            except InferenceServerException as exc:
                results.append(exc)

        callers = [threading.Thread(target=call) for _ in range(6)]
        for caller in callers:
            caller.start()
        deadline = time.monotonic() + 10
        version = running.gateway.registry.resolve("slow", "1")
        session = weakref.ref(version.runner._session)  # type: ignore[union-attr]
        while version.leases < len(callers) and time.monotonic() < deadline:
            time.sleep(0.001)  # every request holds a lease: in the line or running
        assert admin(running, "/v2/repository/models/slow/unload") == {
            "model": "slow",
            "unloaded": [1],
        }
        with pytest.raises(InferenceServerException, match="no ready version"):
            infer_http(running, "slow")
        for caller in callers:
            caller.join(60)
        assert results == [(64, 1024)] * 6  # every request that was in flight was answered
        running.call(running.gateway.lifecycle.wait_drained())  # type: ignore[union-attr]
        assert index(running)[("slow", "1")]["state"] == "UNAVAILABLE"
        assert running.gateway.registry.get_model("slow").versions[1].runner is None
        gc.collect()
        assert session() is None  # the onnxruntime session and its memory are gone
    finally:
        running.stop()


# -- failed loads ----------------------------------------------------------------------------
def test_corrupt_new_version_keeps_the_old_one_serving(
    server: RunningGateway, repository: Path
) -> None:
    broken = repository / "swap" / "2"
    broken.mkdir()
    (broken / "model.onnx").write_bytes(b"\x08\x07 this is not an onnx model")
    status, message = admin_error(server, "/v2/repository/models/swap/load")
    assert status == 400
    assert "failed to load 'swap'" in message and "version 2" in message
    assert infer_http(server, "swap") == ("1", 1.0)
    states = index(server)
    assert states[("swap", "1")]["state"] == "READY"
    assert states[("swap", "2")]["state"] == "UNAVAILABLE"
    assert "model.onnx" in states[("swap", "2")]["reason"]
    # Fixed on disk: the next load swaps it in.
    shutil.rmtree(broken)
    add_version(repository / "swap", 2)
    assert admin(server, "/v2/repository/models/swap/load")["unloaded"] == [1]
    assert infer_http(server, "swap") == ("2", 2.0)


def test_broken_config_on_reload_keeps_serving_and_says_why(
    server: RunningGateway, repository: Path
) -> None:
    (repository / "swap" / "config.pbtxt").write_text("max_batch_size: 8\nno_such_field: 1\n")
    status, message = admin_error(server, "/v2/repository/models/swap/load")
    assert status == 400 and "no_such_field" in message
    assert infer_http(server, "swap") == ("1", 1.0)
    reason = index(server)[("swap", "1")]["reason"]
    assert "reload failed, still serving" in reason and "no_such_field" in reason
    status, message = admin_error(
        server, "/v2/repository/models/swap/load", {"parameters": {"config": "{not json"}}
    )
    assert status == 400 and "config override" in message
    assert infer_http(server, "steady") == ("7", 7.0)  # other models never notice


def test_a_broken_model_never_stops_the_others_at_start(tmp_path: Path) -> None:
    root = tmp_path / "repository"
    add_version(root / "good", 1)
    (root / "bad" / "1").mkdir(parents=True)
    (root / "bad" / "1" / "model.onnx").write_bytes(b"garbage")
    running = RunningGateway(root, exit_on_error=False)
    try:
        assert infer_http(running, "good") == ("1", 1.0)
        assert index(running)[("bad", "1")]["state"] == "UNAVAILABLE"
        assert running.gateway.load_failures[0].model == "bad"
    finally:
        running.stop()


# -- warm-up ---------------------------------------------------------------------------------
def test_model_warmup_runs_before_ready_and_a_bad_sample_fails_the_load(
    server: RunningGateway, repository: Path
) -> None:
    model = repository / "swap"
    (model / "warmup").mkdir()
    (model / "warmup" / "x.bin").write_bytes(np.ones((2, WIDTH), np.float32).tobytes())
    warmup = (
        'model_warmup [ { name: "zeros" batch_size: 2 count: 3 inputs { key: "X" value: '
        "{ data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } } },\n"
        '  { name: "file" batch_size: 2 inputs { key: "X" value: '
        '{ data_type: TYPE_FP32 dims: [ 4 ] input_data_file: "x.bin" } } } ]\n'
    )
    (model / "config.pbtxt").write_text(LATEST_ONE + warmup)
    assert admin(server, "/v2/repository/models/swap/load")["loaded"] == [1]
    (model / "warmup" / "x.bin").write_bytes(b"short")
    status, message = admin_error(server, "/v2/repository/models/swap/load")
    assert status == 400 and "warm-up sample 'file'" in message and "holds 5 bytes" in message
    assert infer_http(server, "swap") == ("1", 1.0)  # the warmed copy still serves
    (model / "config.pbtxt").write_text(LATEST_ONE + warmup.replace('key: "X"', 'key: "NOPE"'))
    status, message = admin_error(server, "/v2/repository/models/swap/load")
    assert status == 400 and "no input(s) NOPE" in message


def test_no_default_warm_up_when_its_zeros_would_not_fit_a_request(
    server: RunningGateway, repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A config pinning a free dimension to 200 million: the batch-1 zeros (800 MB) are never
    allocated; the version loads, unwarmed, and says so."""
    identity_any_width(repository / "wide" / "1" / "model.onnx")
    pinned = '[ { name: "%s" data_type: TYPE_FP32 dims: [ 200000000 ] } ]'
    write_config(
        repository / "wide", f"max_batch_size: 2\ninput {pinned % 'X'}\noutput {pinned % 'Y'}\n"
    )
    with caplog.at_level(logging.WARNING, logger="gateway.runtime.warmup"):
        assert admin(server, "/v2/repository/models/wide/load")["loaded"] == [1]
    assert "no warm-up: a batch-1 request of zeros would take 800000000 bytes" in caplog.text
    assert index(server)[("wide", "1")]["state"] == "READY"


# -- labels ------------------------------------------------------------------------------------
def test_labels_route_requests_pin_versions_and_survive_a_restart(
    repository: Path,
) -> None:
    running = RunningGateway(repository)
    try:
        add_version(repository / "swap", 2)
        admin(running, "/v2/repository/models/swap/load")
        assert admin(running, "/v2/models/swap/labels/stable", {"version": "2"}, "PUT") == {
            "model": "swap",
            "labels": {"stable": "2"},
        }
        assert infer_http(running, "swap", "stable") == ("2", 2.0)
        grpc = grpcclient.InferenceServerClient(running.grpc_url)
        x = grpcclient.InferInput("X", [1, WIDTH], "FP32")
        x.set_data_from_numpy(np.zeros((1, WIDTH), np.float32))
        assert grpc.infer("swap", [x], model_version="stable").get_response().model_version == "2"
        grpc.close()
        # A label keeps its version serving when the policy moves on.
        add_version(repository / "swap", 3)
        result = admin(running, "/v2/repository/models/swap/load")
        assert (result["loaded"], result["unloaded"]) == ([3], [])
        assert infer_http(running, "swap") == ("3", 3.0)
        assert infer_http(running, "swap", "stable") == ("2", 2.0)
        with pytest.raises(urllib.error.HTTPError) as caught:
            admin(running, "/v2/models/swap/labels/stable", {"version": "1"}, "PUT")
        assert caught.value.code == 400 and "READY" in json.loads(caught.value.read())["error"]
        assert admin(running, "/v2/models/swap/labels/canary", {"version": "3"}, "PUT")[
            "labels"
        ] == {"canary": "3", "stable": "2"}
        assert json.loads((repository / "swap" / "labels.json").read_text()) == {
            "canary": 3,
            "stable": 2,
        }
    finally:
        running.stop()
    restarted = RunningGateway(repository)
    try:  # the labels came back, and so did the version `stable` holds
        assert admin(restarted, "/v2/models/swap/labels", method="GET")["labels"] == {
            "canary": "3",
            "stable": "2",
        }
        assert infer_http(restarted, "swap", "stable") == ("2", 2.0)
        assert infer_http(restarted, "swap", "canary") == ("3", 3.0)
        admin(restarted, "/v2/models/swap/labels/stable", method="DELETE")
        with pytest.raises(InferenceServerException, match="unknown version or label 'stable'"):
            infer_http(restarted, "swap", "stable")
        assert admin(restarted, "/v2/repository/models/swap/load")["unloaded"] == [2]
    finally:
        restarted.stop()


# -- start-up modes ----------------------------------------------------------------------------
def test_explicit_mode_loads_only_the_named_models(repository: Path) -> None:
    running = RunningGateway(repository, model_control_mode="explicit", load_model=["steady"])
    try:
        states = index(running)
        assert states[("steady", "7")]["state"] == "READY"
        assert states[("swap", "")] == {
            "name": "swap",
            "state": "UNAVAILABLE",
            "reason": "not loaded",
        }
        assert running.gateway.service.ready  # type: ignore[union-attr]
        admin(running, "/v2/repository/models/swap/load")
        assert infer_http(running, "swap") == ("1", 1.0)
    finally:
        running.stop()


def poll(server: RunningGateway) -> list[Any]:
    return server.call(server.gateway.lifecycle.poll_once())  # type: ignore[union-attr]


def test_poll_mode_loads_a_version_only_once_its_files_stopped_changing(
    repository: Path, tmp_path: Path
) -> None:
    running = RunningGateway(repository, model_control_mode="poll", repository_poll_secs=3600)
    try:
        assert poll(running) == []  # nothing changed since start-up
        complete = plus_constant(tmp_path / "v2.onnx", 2.0, WIDTH).read_bytes()
        target = repository / "swap" / "2" / "model.onnx"
        target.parent.mkdir()
        step = len(complete) // 4
        for written in range(step, len(complete), step):  # a slow copy, seen by every poll
            target.write_bytes(complete[:written])
            assert poll(running) == []
            assert infer_http(running, "swap") == ("1", 1.0)
        target.write_bytes(complete)
        assert poll(running) == []  # complete now, but it changed since the last poll
        assert [r.loaded for r in poll(running)] == [(2,)]  # the same at two polls in a row
        assert infer_http(running, "swap") == ("2", 2.0)
        # A copy into a hidden directory is never looked at; the rename publishes it at once.
        staging = repository / "swap" / ".3.partial"
        plus_constant(staging / "model.onnx", 3.0, WIDTH)
        assert poll(running) == [] and poll(running) == []
        staging.rename(repository / "swap" / "3")
        poll(running)
        assert [r.loaded for r in poll(running)] == [(3,)]
        # A model removed from the repository is unloaded; a new one is loaded.
        shutil.rmtree(repository / "steady")
        add_version(repository / "fresh", 5)
        poll(running)
        results = {r.model: r for r in poll(running)}
        assert results["steady"].unloaded == (7,) and results["fresh"].loaded == (5,)
        assert infer_http(running, "fresh") == ("5", 5.0)
    finally:
        running.stop()


def test_poll_mode_runs_by_itself(repository: Path) -> None:
    running = RunningGateway(repository, model_control_mode="poll", repository_poll_secs=0.05)
    try:
        staging = repository / "swap" / ".2.partial"
        plus_constant(staging / "model.onnx", 2.0, WIDTH)
        staging.rename(repository / "swap" / "2")
        deadline = time.monotonic() + 20
        while infer_http(running, "swap")[0] != "2":
            assert time.monotonic() < deadline, index(running)
            time.sleep(0.05)
    finally:
        running.stop()


def test_poll_mode_sees_a_version_linked_in_from_elsewhere(
    repository: Path, tmp_path: Path
) -> None:
    """`ln -s /artifacts/m-v2 m/2`: the link's files count, so a poll loads it, sees its files
    change, and unloads it when the link goes."""
    running = RunningGateway(repository, model_control_mode="poll", repository_poll_secs=3600)
    try:
        artifact = tmp_path / "artifacts" / "swap-v2"
        plus_constant(artifact / "model.onnx", 2.0, WIDTH)
        (repository / "swap" / "2").symlink_to(artifact, target_is_directory=True)
        poll(running)
        assert [r.loaded for r in poll(running)] == [(2,)]
        assert infer_http(running, "swap") == ("2", 2.0)
        plus_constant(artifact / "model.onnx", 20.0, WIDTH)  # a new copy behind the link
        os.utime(artifact / "model.onnx", ns=(1, 1))  # whatever the clock did, it changed
        poll(running)
        assert [r.loaded for r in poll(running)] == [(2,)]
        assert infer_http(running, "swap") == ("2", 20.0)
    finally:
        running.stop()


def test_a_version_directory_not_written_as_triton_writes_numbers_is_no_version(
    repository: Path,
) -> None:
    """'01' once became version 1, then failed to open '1'; more than 19 digits is no int64."""
    for name in ("01", "+2", "99999999999999999999"):
        plus_constant(repository / "steady" / name / "model.onnx", 5.0, WIDTH)
    running = RunningGateway(repository)
    try:
        versions = {version for name, version in index(running) if name == "steady"}
        assert versions == {"7"}
        assert infer_http(running, "steady") == ("7", 7.0)
    finally:
        running.stop()


def test_a_failure_reason_is_shown_cut_short(server: RunningGateway) -> None:
    """A config quoting a 2 MB name: the reason every index answer carries stays short."""
    huge = json.dumps({"name": "x" * 2_000_000, "max_batch_size": 8})
    status, message = admin_error(
        server, "/v2/repository/models/swap/load", {"parameters": {"config": huge}}
    )
    assert status == 400 and len(message) < 1_100
    reason = index(server)[("swap", "1")]["reason"]
    assert "reload failed, still serving" in reason and len(reason) < 1_100
    assert infer_http(server, "swap") == ("1", 1.0)


def test_a_load_that_partly_fails_says_which_versions_it_did_load(
    server: RunningGateway, repository: Path
) -> None:
    write_config(repository / "swap", "max_batch_size: 8\nversion_policy { all { } }\n")
    add_version(repository / "swap", 2)
    broken = repository / "swap" / "3"
    broken.mkdir()
    (broken / "model.onnx").write_bytes(b"not an onnx model")
    status, message = admin_error(server, "/v2/repository/models/swap/load")
    assert status == 400 and "version 3" in message
    assert "(loaded and serving: version(s) 1, 2)" in message  # a new config: both reloaded
    assert infer_http(server, "swap", "2") == ("2", 2.0)


def test_a_swap_runs_what_waits_in_the_old_copy_s_line_at_once(
    server: RunningGateway, repository: Path
) -> None:
    """A queue delay of an hour: the request waiting for company in the copy being replaced is
    run at the swap, not an hour later (nor does the old session stay held that long)."""
    delayed = "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 3600000000 }\n"
    write_config(repository / "swap", delayed)
    admin(server, "/v2/repository/models/swap/load")
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(infer_http, server, "swap")
        batcher = server.gateway.registry.resolve("swap", "1").batcher
        assert batcher is not None
        deadline = time.monotonic() + 20
        while batcher.waiting != 1:
            assert time.monotonic() < deadline, "the request never reached the line"
            time.sleep(0.01)
        admin(server, "/v2/repository/models/swap/load", {"parameters": {"reload": True}})
        assert waiting.result(timeout=20) == ("1", 1.0)


def test_the_index_answers_when_the_repository_is_gone(
    server: RunningGateway, repository: Path
) -> None:
    """Unmounted or removed: what is loaded still serves and is still listed (was a 500)."""
    shutil.rmtree(repository)
    states = index(server)
    assert states[("swap", "1")]["state"] == "READY" and ("steady", "7") in states
    assert infer_http(server, "swap") == ("1", 1.0)
