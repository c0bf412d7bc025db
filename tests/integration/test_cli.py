"""`gateway` as users run it: a real process, options from flags or GATEWAY_* variables."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

from gateway.config.settings import GatewaySettings
from tests.support import models
from tests.support.server import RunningGateway

PORTS = re.compile(r"HTTP on [\d.]+:(\d+), gRPC on [\d.]+:(\d+)")


def gateway_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]


@pytest.fixture(scope="module")
def small_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-repo")
    models.plus_constant(root / "plus" / "1" / "model.onnx", 1.0)
    return root


@contextmanager
def running(
    args: list[str], env: dict[str, str] | None = None
) -> Iterator[tuple[int, int, list[str], int]]:
    """Start `gateway serve`, wait for its 'serving' line, yield (http, grpc, log lines, pid)."""
    process = subprocess.Popen(
        gateway_command(*args),
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    lines: list[str] = []
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break
            lines.append(line)
            match = PORTS.search(line)
            if match:
                yield int(match.group(1)), int(match.group(2)), lines, process.pid
                break
        else:
            pytest.fail("the gateway did not log its ports in time")
        if not any(PORTS.search(line) for line in lines):
            pytest.fail("the gateway exited before serving:\n" + "".join(lines))
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        lines.extend(process.stderr.readlines())
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stderr is not None
        process.stderr.close()


def test_help_documents_every_option_and_its_environment_variable() -> None:
    for command in (gateway_command("--help"), gateway_command("serve", "--help")):
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        for name in GatewaySettings.model_fields:
            assert "--" + name.replace("_", "-") in out
            assert "GATEWAY_" + name.upper() in out


def test_serve_on_port_zero_logs_ports_and_stops_on_sigterm(small_repository: Path) -> None:
    args = [
        "serve",
        "--model-repository",
        str(small_repository),
        "--http-port",
        "0",
        "--grpc-port",
        "0",
    ]
    with running(args) as (http_port, grpc_port, lines, _):
        assert http_port > 0 and grpc_port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready") as response:
            assert response.status == 200
    assert any("stopped" in line for line in lines)


def test_every_option_can_come_from_the_environment(small_repository: Path) -> None:
    env = {
        "GATEWAY_MODEL_REPOSITORY": str(small_repository),
        "GATEWAY_HTTP_PORT": "0",
        "GATEWAY_GRPC_PORT": "0",
        "GATEWAY_LOG_FORMAT": "json",
        "GATEWAY_EVENT_LOOP": "asyncio",
    }
    with (
        running(["serve"], env) as (http_port, _, lines, _),
        urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/models/plus") as response,
    ):
        assert b'"name":"plus"' in response.read()
    assert lines[0].startswith("{") and '"level":"INFO"' in lines[0]


def run_to_exit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(gateway_command(*args), capture_output=True, text=True, timeout=60)


def test_missing_repository_is_a_clear_startup_error(tmp_path: Path) -> None:
    result = run_to_exit(
        "serve",
        "--model-repository",
        str(tmp_path / "nope"),
        "--http-port",
        "0",
        "--grpc-port",
        "0",
    )
    assert result.returncode == 1
    assert "is not a directory" in result.stderr


@pytest.mark.parametrize(
    ("option", "value", "setting"),
    [
        ("--http-port", "70000", "http_port"),
        ("--inference-nice", "20", "inference_nice"),
        ("--gc-threshold", "-1", "gc_threshold"),
    ],
)
def test_invalid_setting_is_rejected_before_starting(option: str, value: str, setting: str) -> None:
    result = run_to_exit("serve", option, value)
    assert result.returncode == 2
    assert setting in result.stderr


def test_port_in_use_is_a_clear_startup_error(small_repository: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_to_exit(
            "serve",
            "--model-repository",
            str(small_repository),
            "--http-port",
            "0",
            "--grpc-port",
            str(port),
        )
    assert result.returncode == 1
    assert f"cannot listen for gRPC on 127.0.0.1:{port}" in result.stderr


@contextmanager
def model_threads_started(repository: Path, **settings: Any) -> Iterator[None]:
    """An in-process gateway that has answered one request (so its model threads run)."""
    gateway = RunningGateway(repository, **settings)
    try:
        client = httpclient.InferenceServerClient(gateway.http_url)
        tensor = httpclient.InferInput("X", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 4), np.float32))
        assert client.infer("plus", [tensor]).as_numpy("Y").tolist() == [[1.0] * 4]
        yield
    finally:
        gateway.stop()


def test_inference_nice_sets_the_niceness_of_the_threads_that_run_models(
    small_repository: Path,
) -> None:
    """--inference-nice applies to the threads that run model executions, and to no other."""
    with model_threads_started(small_repository, inference_nice=7, inference_threads=2):
        nice = {
            thread.name: os.getpriority(os.PRIO_PROCESS, thread.native_id)
            for thread in threading.enumerate()
            if thread.native_id is not None
        }
    assert {name: value for name, value in nice.items() if name.startswith("inference")} == {
        "inference_0": 7,
        "inference_1": 7,
    }
    assert nice[threading.current_thread().name] == os.getpriority(os.PRIO_PROCESS, 0)
    assert all(value != 7 for name, value in nice.items() if not name.startswith("inference"))


def scheduling_policies(pid: int) -> dict[str, int]:
    """Thread name -> Linux scheduling policy (field 41 of /proc/PID/task/TID/stat)."""
    policies = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            policies[f"{(task / 'comm').read_text().strip()} {task.name}"] = int(fields[38])
    return policies


@pytest.mark.skipif(
    not Path("/proc/self/task").is_dir()
    or os.sched_getscheduler(0) not in {os.SCHED_OTHER, os.SCHED_BATCH},
    reason="Linux threads, started under the default policy or SCHED_BATCH",
)
@pytest.mark.parametrize(
    ("option", "policy"),
    [([], os.SCHED_BATCH), (["--scheduling-policy", "normal"], os.SCHED_OTHER)],
)
def test_every_thread_of_the_server_runs_under_the_chosen_scheduling_policy(
    small_repository: Path, option: list[str], policy: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SCHED_BATCH by default (gateway/app/scheduling.py): set on the threads alive at
    start-up, inherited by those the servers, grpcio's C-core and onnxruntime start later."""
    monkeypatch.delenv("GATEWAY_SCHEDULING_POLICY", raising=False)  # the default, as shipped
    args = ["serve", "--model-repository", str(small_repository), *option]
    with running([*args, "--http-port", "0", "--grpc-port", "0"]) as (http_port, _, _, pid):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
        try:
            data = np.ones((1, 4), dtype=np.float32)
            inputs = [httpclient.InferInput("X", [1, 4], "FP32")]
            inputs[0].set_data_from_numpy(data)
            client.infer("plus", inputs)  # the inference thread exists by now
            policies = scheduling_policies(pid)
        finally:
            client.close()
    assert any(name.startswith("inference") for name in policies)
    assert any(name.startswith("grpc") for name in policies)
    assert policies == dict.fromkeys(policies, policy)


def test_the_threads_that_run_models_carry_their_names_at_the_os_level(
    small_repository: Path,
) -> None:
    """What `top -H` shows, and what the bench sorts the server's CPU by."""
    with model_threads_started(small_repository, inference_threads=2):

        def names() -> set[str]:  # a thread names itself once it runs: wait for both
            return {
                Path(f"/proc/self/task/{thread.native_id}/comm").read_text().strip()
                for thread in threading.enumerate()
                if thread.name.startswith("inference")
            }

        deadline = time.monotonic() + 10
        while names() != {"inference_0", "inference_1"} and time.monotonic() < deadline:
            time.sleep(0.01)
        assert names() == {"inference_0", "inference_1"}
