"""`gateway traffic ...` and `gateway rollout ...` against a real running gateway."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as httpclient

from gateway.app import cli
from tests.support import models
from tests.support.server import RunningGateway

TOKEN = "traffic-cli-admin-token"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    root = tmp_path_factory.mktemp("traffic-cli")
    models.write_config(root / "split", "max_batch_size: 8\nversion_policy { all { } }\n")
    for version in (1, 2, 3):
        models.plus_constant(root / "split" / str(version) / "model.onnx", 1.0)
    running = RunningGateway(root, admin_token=TOKEN)
    yield running
    running.stop()


def gw(
    capsys: pytest.CaptureFixture[str], running: RunningGateway, *argv: str, token: bool = True
) -> tuple[int, str, str]:
    """Run `gateway ARGV --url ...` in this process: (exit code, stdout, stderr)."""
    env = {"GATEWAY_ADMIN_TOKEN": TOKEN} if token else {}
    code = cli.main([*argv, "--url", f"http://{running.http_url}"], environ=env)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_traffic_set_get_and_clear(
    capsys: pytest.CaptureFixture[str], guarded: RunningGateway
) -> None:
    code, out, err = gw(capsys, guarded, "traffic", "get", "split")
    assert (code, err) == (0, "")
    assert out == "split: no traffic policy (the latest READY version answers)\n"

    code, out, err = gw(
        capsys, guarded, "traffic", "set", "split", "--weights", "1=90,2=10",
        "--sticky-key", "x-user", "--shadow", "3=50",
    )  # fmt: skip
    assert (code, err) == (0, ""), err
    rows = [line.split() for line in out.splitlines()]
    assert rows[:4] == [
        ["VERSION", "WEIGHT%", "ROLE"],
        ["1", "90", "primary"],
        ["2", "10", "canary"],
        ["3", "-", "shadow", "50%"],
    ]
    assert "sticky key: x-user" in out

    code, out, _ = gw(capsys, guarded, "traffic", "get", "split", "--json")
    answer = json.loads(out)
    assert code == 0 and answer["weights"] == {"1": 90, "2": 10}
    assert answer["shadows"] == [{"version": "3", "percent": 50.0}]

    code, _, err = gw(capsys, guarded, "traffic", "set", "split", "--weights", "9=1")
    assert code == 1 and err.startswith("gateway: 400 ") and "version 9" in err
    code, _, err = gw(capsys, guarded, "traffic", "clear", "split", token=False)
    assert code == 1 and err.startswith("gateway: 401 ")
    with pytest.raises(SystemExit):  # argparse refuses a malformed option itself
        gw(capsys, guarded, "traffic", "set", "split", "--weights", "1:90")
    capsys.readouterr()

    code, out, _ = gw(capsys, guarded, "traffic", "clear", "split")
    assert code == 0 and "no traffic policy" in out


def test_rollout_start_watch_and_abort(
    capsys: pytest.CaptureFixture[str], guarded: RunningGateway
) -> None:
    code, out, err = gw(
        capsys, guarded, "rollout", "start", "split", "--to", "3", "--from", "1",
        "--steps", "50,100", "--interval", "60", "--gate", "min_agreement=0.9",
    )  # fmt: skip
    assert (code, err) == (0, ""), err
    assert out.startswith("split: running, step 1 of 2 (50% to version 3 from version 1)")
    code, out, _ = gw(capsys, guarded, "rollout", "status", "split", "--json")
    answer = json.loads(out)
    assert code == 0 and answer["gates"]["min_agreement"] == 0.9
    assert [g["gate"] for g in answer["evaluation"]] == [
        "error_rate", "p99_latency", "agreement", "accuracy",
    ]  # fmt: skip
    code, _, err = gw(capsys, guarded, "rollout", "start", "split", "--to", "2")
    assert code == 1 and "already running" in err
    code, out, _ = gw(capsys, guarded, "rollout", "abort", "split")
    assert code == 0 and out.startswith("split: aborted, step 1 of 2")
    assert "aborted on request" in out and "history:" in out
    code, out, _ = gw(capsys, guarded, "traffic", "get", "split", "--json")
    assert json.loads(out)["weights"] == {"1": 100}


def test_rollout_status_watch_follows_a_rollout_to_its_end(
    capsys: pytest.CaptureFixture[str], guarded: RunningGateway
) -> None:
    stop = threading.Event()

    def drive() -> None:  # bounded: stops when told or after 20 s
        client = httpclient.InferenceServerClient(guarded.http_url)
        x = httpclient.InferInput("X", [1, 4], "FP32")
        x.set_data_from_numpy(np.zeros((1, 4), np.float32))
        deadline = time.monotonic() + 20
        while not stop.is_set() and time.monotonic() < deadline:
            client.infer("split", [x])
        client.close()

    code, _, err = gw(
        capsys, guarded, "rollout", "start", "split", "--to", "2", "--from", "1",
        "--steps", "50,100", "--interval", "0.2", "--min-requests", "3",
        "--gate", "max_p99_ratio=100", "--gate", "min_p99_increase_ms=2000",
    )  # fmt: skip
    assert code == 0, err
    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    try:
        code, out, err = gw(
            capsys, guarded, "rollout", "status", "split", "--watch", "--refresh", "0.1"
        )
    finally:
        stop.set()
        driver.join(10)
    assert (code, err) == (0, "")
    assert "split: running, step 1 of 2" in out  # a frame while it ran
    assert out.rstrip().splitlines()[-1].endswith("label 'stable' points at version 2")
    code, out, _ = gw(capsys, guarded, "models", "labels", "split")
    assert code == 0 and out.split() == ["LABEL", "VERSION", "stable", "2"]
