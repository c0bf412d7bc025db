"""`gateway models ...` against a real running gateway: list, load, unload, reload, labels, auth."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.app import cli
from tests.support import models
from tests.support.server import RunningGateway

TOKEN = "s3cret-admin-token"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models-cli")
    for version in (1, 2):
        models.plus_constant(root / "plus" / str(version) / "model.onnx", version)
    models.write_config(root / "plus", "version_policy: { all { } }\n")
    for name in ("other", "swap", "configured", "locked"):
        models.plus_constant(root / name / "1" / "model.onnx", 1.0)
    return root


@pytest.fixture(scope="module")
def gateway(repository: Path) -> Iterator[RunningGateway]:
    running = RunningGateway(repository)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def guarded(repository: Path) -> Iterator[RunningGateway]:
    """The same repository behind an admin token."""
    running = RunningGateway(repository, admin_token=TOKEN)
    yield running
    running.stop()


def url(running: RunningGateway) -> str:
    return "http://" + running.http_url


def gw(
    capsys: pytest.CaptureFixture[str],
    running: RunningGateway | str,
    *argv: str,
    env: dict[str, str] | None = None,
) -> tuple[int, str, str]:
    """Run `gateway models ARGV --url ...` in this process: (exit code, stdout, stderr)."""
    where = running if isinstance(running, str) else url(running)
    code = cli.main(["models", *argv, "--url", where], environ=env or {})
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def states(
    capsys: pytest.CaptureFixture[str], running: RunningGateway, model: str
) -> dict[str, str]:
    code, out, err = gw(capsys, running, "list", "--json")
    assert code == 0, err
    return {e["version"]: e["state"] for e in json.loads(out) if e["name"] == model}


def table(out: str) -> list[list[str]]:
    return [line.split(maxsplit=3) for line in out.splitlines()]


def test_list_prints_every_version_with_its_state(
    capsys: pytest.CaptureFixture[str], gateway: RunningGateway
) -> None:
    code, out, err = gw(capsys, gateway, "list")
    assert (code, err) == (0, "")
    rows = table(out)
    assert rows[0] == ["MODEL", "VERSION", "STATE", "REASON"]
    assert ["plus", "1", "READY"] in rows and ["plus", "2", "READY"] in rows
    assert ["other", "1", "READY"] in rows


def test_list_json_is_the_servers_index(
    capsys: pytest.CaptureFixture[str], gateway: RunningGateway
) -> None:
    code, out, _ = gw(capsys, gateway, "list", "--json")
    assert code == 0
    request = urllib.request.Request(f"{url(gateway)}/v2/repository/index", data=b"{}")
    with urllib.request.urlopen(request) as response:
        assert json.loads(out) == json.loads(response.read())


def test_unload_load_and_reload_round_trip(
    capsys: pytest.CaptureFixture[str], gateway: RunningGateway
) -> None:
    code, out, err = gw(capsys, gateway, "unload", "other")
    assert (code, out, err) == (0, "other: unloaded 1\n", "")
    assert states(capsys, gateway, "other").get("1") != "READY"
    code, out, _ = gw(capsys, gateway, "list", "--ready")
    assert code == 0 and "other" not in out and "plus" in out

    code, out, err = gw(capsys, gateway, "load", "other")
    assert (code, out, err) == (0, "other: loaded 1\n", "")
    assert states(capsys, gateway, "other") == {"1": "READY"}

    code, out, _ = gw(capsys, gateway, "load", "other")
    assert (code, out) == (0, "other: unchanged 1\n")

    code, out, _ = gw(capsys, gateway, "reload", "other")
    assert (code, out) == (0, "other: loaded 1\n")
    code, out, _ = gw(capsys, gateway, "load", "other", "--reload", "--json")
    assert code == 0
    assert json.loads(out)["loaded"] == [1]
    assert states(capsys, gateway, "other") == {"1": "READY"}


def test_load_picks_up_a_new_version_on_disk(
    capsys: pytest.CaptureFixture[str], gateway: RunningGateway, repository: Path
) -> None:
    models.plus_constant(repository / "swap" / "2" / "model.onnx", 2.0)
    code, out, err = gw(capsys, gateway, "load", "swap")
    assert (code, err) == (0, "")
    assert out == "swap: loaded 2; unloaded 1\n"
    assert states(capsys, gateway, "swap")["2"] == "READY"


def test_load_with_config_applies_it(
    capsys: pytest.CaptureFixture[str], gateway: RunningGateway
) -> None:
    config = json.dumps({"max_batch_size": 4})
    code, _, err = gw(capsys, gateway, "load", "configured", "--config", config)
    assert (code, err) == (0, "")
    with urllib.request.urlopen(f"{url(gateway)}/v2/models/configured/config") as response:
        assert json.loads(response.read())["max_batch_size"] == 4


def test_config_that_is_not_json_is_refused_before_sending(
    capsys: pytest.CaptureFixture[str], gateway: RunningGateway
) -> None:
    code, out, err = gw(capsys, gateway, "load", "other", "--config", "{max_batch_size: 4")
    assert (code, out) == (2, "")
    assert "--config is not valid JSON" in err


def test_config_the_server_refuses_is_its_400_and_the_old_version_serves(
    capsys: pytest.CaptureFixture[str], gateway: RunningGateway
) -> None:
    config = json.dumps({"sequence_batching": {}})
    code, out, err = gw(capsys, gateway, "load", "other", "--config", config)
    assert (code, out) == (1, "")
    assert err.startswith("gateway: 400 ") and "sequence_batching" in err
    assert states(capsys, gateway, "other") == {"1": "READY"}


def test_unknown_model_is_the_servers_error(
    capsys: pytest.CaptureFixture[str], gateway: RunningGateway
) -> None:
    for action in ("load", "unload", "labels"):
        code, out, err = gw(capsys, gateway, action, "no_such_model")
        assert (code, out) == (1, ""), action
        assert err.startswith(("gateway: 400 ", "gateway: 404 ")), err
        assert "no_such_model" in err


def test_labels_set_get_use_and_remove(
    capsys: pytest.CaptureFixture[str], gateway: RunningGateway
) -> None:
    assert gw(capsys, gateway, "labels", "plus")[:2] == (0, "plus: no labels\n")

    code, out, err = gw(capsys, gateway, "label", "plus", "stable", "1")
    assert (code, err) == (0, "")
    assert table(out) == [["LABEL", "VERSION"], ["stable", "1"]]
    code, out, _ = gw(capsys, gateway, "labels", "plus", "--json")
    assert (code, json.loads(out)) == (0, {"model": "plus", "labels": {"stable": "1"}})
    with urllib.request.urlopen(f"{url(gateway)}/v2/models/plus/versions/stable/ready") as ready:
        assert ready.status == 200

    assert gw(capsys, gateway, "label", "plus", "stable", "2")[0] == 0
    assert gw(capsys, gateway, "labels", "plus")[1].split() == ["LABEL", "VERSION", "stable", "2"]

    code, out, _ = gw(capsys, gateway, "unlabel", "plus", "stable")
    assert (code, out) == (0, "plus: no labels\n")


def test_label_to_a_version_that_is_not_served_is_refused(
    capsys: pytest.CaptureFixture[str], gateway: RunningGateway
) -> None:
    code, out, err = gw(capsys, gateway, "label", "plus", "stable", "9")
    assert (code, out) == (1, "")
    assert err.startswith(("gateway: 400 ", "gateway: 404 ")), err


def test_mutating_calls_need_the_admin_token(
    capsys: pytest.CaptureFixture[str], guarded: RunningGateway
) -> None:
    code, out, err = gw(capsys, guarded, "unload", "locked")
    assert (code, out) == (1, "")
    assert err.startswith("gateway: 401 "), err
    code, out, err = gw(capsys, guarded, "unload", "locked", "--token", "wrong")
    assert (code, out) == (1, "")
    assert err.startswith("gateway: 403 "), err
    code, _, err = gw(capsys, guarded, "label", "locked", "stable", "1")
    assert (code, err[:13]) == (1, "gateway: 401 ")
    assert states(capsys, guarded, "locked") == {"1": "READY"}


def test_read_only_calls_need_no_token(
    capsys: pytest.CaptureFixture[str], guarded: RunningGateway
) -> None:
    assert gw(capsys, guarded, "list")[0] == 0
    assert gw(capsys, guarded, "labels", "locked")[0] == 0


def test_the_token_from_flag_file_or_environment_is_accepted(
    capsys: pytest.CaptureFixture[str], guarded: RunningGateway, tmp_path: Path
) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text(f"alice {TOKEN}\nbob another\n")
    code, out, err = gw(capsys, guarded, "label", "locked", "stable", "1", "--token", TOKEN)
    assert (code, err) == (0, "")
    code, out, err = gw(
        capsys, guarded, "unlabel", "locked", "stable", "--token-file", str(token_file)
    )
    assert (code, out, err) == (0, "locked: no labels\n", "")
    code, out, err = gw(capsys, guarded, "reload", "locked", env={"GATEWAY_ADMIN_TOKEN": TOKEN})
    assert (code, out, err) == (0, "locked: loaded 1\n", "")


def test_a_gateway_that_is_not_running_is_exit_2_naming_the_url(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, out, err = gw(capsys, f"127.0.0.1:{port}", "list")
    assert (code, out) == (2, "")
    assert err.startswith(f"gateway: cannot connect to the gateway at http://127.0.0.1:{port}")


def test_as_users_run_it(gateway: RunningGateway) -> None:
    """A real `python -m gateway models` process, the URL from GATEWAY_URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["GATEWAY_URL"] = gateway.http_url

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "gateway", "models", *argv]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)

    result = run("list", "--ready")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith("MODEL")
    result = run("unload", "no_such_model")
    assert result.returncode == 1
    assert result.stderr.startswith("gateway: 4") and "Traceback" not in result.stderr


def test_with_a_separate_admin_port_the_url_picks_the_front_end(
    capsys: pytest.CaptureFixture[str], repository: Path
) -> None:
    running = RunningGateway(repository, admin_http_port=0)
    try:
        admin = f"127.0.0.1:{running.gateway.admin_http_port}"
        code, out, err = gw(capsys, running, "unload", "other")
        assert (code, out) == (1, "")
        assert err.startswith("gateway: 403 ") and "admin address" in err
        code, out, err = gw(capsys, admin, "unload", "other")
        assert (code, out, err) == (0, "other: unloaded 1\n", "")
        assert "other" not in gw(capsys, running, "list", "--ready")[1]
    finally:
        running.stop()
