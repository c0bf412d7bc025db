"""`gateway models`: requests, answers, output and exit codes against a stub HTTP server."""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import Field
from pydantic_settings import BaseSettings

from gateway.app import cli
from gateway.app.admin_client import (
    AdminClient,
    BadAnswerError,
    ServerAnsweredError,
    UnreachableError,
    normalize_url,
)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Stub:
    """Canned answers by (method, path); every request it got, in order."""

    url: str
    answers: dict[tuple[str, str], tuple[int, bytes]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    def answer(self, method: str, path: str, status: int, body: Any) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.answers[(method, path)] = (status, payload)


@pytest.fixture
def stub() -> Iterator[Stub]:
    holder: list[Stub] = []

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            server_stub = holder[0]
            server_stub.seen.append(
                Seen(
                    self.command,
                    self.path,
                    dict(self.headers.items()),
                    json.loads(raw) if raw else None,
                )
            )
            status, payload = server_stub.answers.get(
                (self.command, self.path), (404, b'{"error": "no such route"}')
            )
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder.append(Stub(f"http://127.0.0.1:{server.server_address[1]}"))
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield holder[0]
    server.shutdown()
    server.server_close()
    thread.join(10)


def run(
    capsys: pytest.CaptureFixture[str], *argv: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    code = cli.main(["models", *argv], environ=env or {})
    out, err = capsys.readouterr()
    return code, out, err


INDEX = [
    {"name": "digits", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"},
    {"name": "digits", "version": "2", "state": "READY"},
    {"name": "mlp", "version": "1", "state": "READY"},
]


def test_list_prints_a_table(stub: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    stub.answer("POST", "/v2/repository/index", 200, INDEX)
    code, out, err = run(capsys, "list", "--url", stub.url)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "MODEL   VERSION  STATE        REASON",
        "digits  1        UNAVAILABLE  unloaded",
        "digits  2        READY",
        "mlp     1        READY",
    ]
    assert stub.seen[0].body == {}
    assert "Authorization" not in stub.seen[0].headers


def test_list_ready_asks_the_server_and_json_prints_the_answer(
    stub: Stub, capsys: pytest.CaptureFixture[str]
) -> None:
    stub.answer("POST", "/v2/repository/index", 200, INDEX[1:])
    code, out, _ = run(capsys, "list", "--ready", "--json", "--url", stub.url)
    assert code == 0
    assert json.loads(out) == INDEX[1:]
    assert stub.seen[0].body == {"ready": True}


def test_url_and_token_come_from_the_environment(
    stub: Stub, capsys: pytest.CaptureFixture[str]
) -> None:
    stub.answer(
        "POST", "/v2/repository/models/digits/unload", 200, {"model": "digits", "unloaded": [1, 2]}
    )
    env = {"GATEWAY_URL": stub.url.removeprefix("http://"), "GATEWAY_ADMIN_TOKEN": "s3cret"}
    code, out, _ = run(capsys, "unload", "digits", env=env)
    assert (code, out) == (0, "digits: unloaded 1, 2\n")
    assert stub.seen[0].headers["Authorization"] == "Bearer s3cret"


def test_token_option_wins_over_the_environment(
    stub: Stub, capsys: pytest.CaptureFixture[str]
) -> None:
    stub.answer("GET", "/v2/models/digits/labels", 200, {"model": "digits", "labels": {}})
    env = {"GATEWAY_ADMIN_TOKEN": "from-env"}
    code, out, _ = run(capsys, "labels", "digits", "--url", stub.url, "--token", "flag", env=env)
    assert (code, out) == (0, "digits: no labels\n")
    assert stub.seen[0].headers["Authorization"] == "Bearer flag"


@pytest.mark.parametrize(
    ("text", "token"),
    [
        ("abc123\n", "abc123"),
        ("# ops\n\nalice abc123  # on call\nbob other\n", "abc123"),
    ],
)
def test_token_file_holds_a_token_or_name_and_token(
    stub: Stub, capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, token: str
) -> None:
    stub.answer("POST", "/v2/repository/index", 200, [])
    (tmp_path / "token").write_text(text)
    env = {"GATEWAY_ADMIN_TOKEN": "from-env"}
    args = ["list", "--url", stub.url, "--token-file", str(tmp_path / "token")]
    code, out, _ = run(capsys, *args, env=env)
    assert (code, out) == (0, "MODEL  VERSION  STATE  REASON\n")
    assert stub.seen[0].headers["Authorization"] == f"Bearer {token}"


@pytest.mark.parametrize(
    ("text", "message"), [(None, "cannot read --token-file"), ("\n", "holds no token")]
)
def test_unusable_token_file_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str | None, message: str
) -> None:
    path = tmp_path / "token"
    if text is not None:
        path.write_text(text)
    code, out, err = run(capsys, "list", "--url", "127.0.0.1:9", "--token-file", str(path))
    assert (code, out) == (2, "")
    assert message in err and "Traceback" not in err


def test_load_sends_config_and_reload_and_prints_what_changed(
    stub: Stub, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    answer = {"model": "digits", "loaded": [2], "unloaded": [1], "unchanged": [3]}
    stub.answer("POST", "/v2/repository/models/digits/load", 200, answer)
    config = '{"max_batch_size": 4}'
    code, out, _ = run(capsys, "load", "digits", "--config", config, "--reload", "--url", stub.url)
    assert (code, out) == (0, "digits: loaded 2; unloaded 1; unchanged 3\n")
    assert stub.seen[0].body == {"parameters": {"config": config, "reload": True}}
    assert stub.seen[0].headers["Content-Type"] == "application/json"

    (tmp_path / "config.json").write_text(config)
    code, _, _ = run(
        capsys, "reload", "digits", "--config", f"@{tmp_path / 'config.json'}", "--url", stub.url
    )
    assert code == 0
    assert stub.seen[1].body == {"parameters": {"config": config, "reload": True}}

    code, _, _ = run(capsys, "load", "digits", "--url", stub.url)
    assert code == 0
    assert stub.seen[2].body == {}


def test_load_with_nothing_to_do(stub: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    answer = {"model": "digits", "loaded": [], "unloaded": [], "unchanged": []}
    stub.answer("POST", "/v2/repository/models/digits/load", 200, answer)
    assert run(capsys, "load", "digits", "--url", stub.url)[:2] == (
        0,
        "digits: no versions changed\n",
    )


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("{not json", "--config is not valid JSON"),
        ("[1, 2]", "--config must be a JSON object"),
        ("@/nonexistent/config.json", "cannot read --config file /nonexistent/config.json"),
    ],
)
def test_bad_config_is_refused_before_any_request(
    stub: Stub, capsys: pytest.CaptureFixture[str], config: str, message: str
) -> None:
    code, out, err = run(capsys, "load", "digits", "--config", config, "--url", stub.url)
    assert (code, out) == (2, "")
    assert message in err
    assert stub.seen == []


def test_labels_set_get_and_remove(stub: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    labels = {"model": "digits", "labels": {"stable": "1", "canary": "2"}}
    stub.answer("PUT", "/v2/models/digits/labels/canary", 200, labels)
    stub.answer(
        "DELETE",
        "/v2/models/digits/labels/canary",
        200,
        {"model": "digits", "labels": {"stable": "1"}},
    )
    code, out, _ = run(capsys, "label", "digits", "canary", "2", "--url", stub.url, "--token", "t")
    assert code == 0
    assert out.splitlines() == ["LABEL   VERSION", "canary  2", "stable  1"]
    assert stub.seen[0].body == {"version": "2"}
    code, out, _ = run(capsys, "unlabel", "digits", "canary", "--url", stub.url, "--token", "t")
    assert (code, out.splitlines()) == (0, ["LABEL   VERSION", "stable  1"])
    assert stub.seen[1].body is None


def test_names_are_quoted_into_the_path(stub: Stub) -> None:
    client = AdminClient(stub.url)
    request = client.build_request("DELETE", "/v2/models/a%2Fb/labels/x%20y")
    assert request.full_url == f"{stub.url}/v2/models/a%2Fb/labels/x%20y"
    with pytest.raises(ServerAnsweredError):
        client.remove_label("a/b", "x y")
    assert stub.seen[0].path == "/v2/models/a%2Fb/labels/x%20y"


@pytest.mark.parametrize(
    ("status", "body", "shown"),
    [
        (401, {"error": "admin token required"}, "gateway: 401 admin token required"),
        (403, {"error": "admin token refused"}, "gateway: 403 admin token refused"),
        (400, {"error": "version 2: bad config"}, "gateway: 400 version 2: bad config"),
        (501, b"not json at all", "gateway: 501 not json at all"),
        (500, b"", "gateway: 500 Internal Server Error"),
    ],
)
def test_server_errors_exit_1_with_status_and_message(
    stub: Stub, capsys: pytest.CaptureFixture[str], status: int, body: Any, shown: str
) -> None:
    stub.answer("POST", "/v2/repository/models/digits/unload", status, body)
    code, out, err = run(capsys, "unload", "digits", "--url", stub.url)
    assert (code, out, err) == (1, "", shown + "\n")


def test_answer_that_is_not_json_exits_1(stub: Stub) -> None:
    stub.answer("POST", "/v2/repository/index", 200, b"<html>")
    with pytest.raises(BadAnswerError, match="not JSON"):
        AdminClient(stub.url).repository_index()


def test_answer_of_another_shape_is_printed_as_json(
    stub: Stub, capsys: pytest.CaptureFixture[str]
) -> None:
    stub.answer("POST", "/v2/repository/models/digits/unload", 200, ["surprise"])
    code, out, _ = run(capsys, "unload", "digits", "--url", stub.url)
    assert (code, json.loads(out)) == (0, ["surprise"])


def test_no_server_exits_2_naming_the_url(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "list", "--url", "http://127.0.0.1:9")
    assert (code, out) == (2, "")
    assert err.startswith("gateway: cannot connect to the gateway at http://127.0.0.1:9")
    assert "Traceback" not in err


def test_a_silent_server_times_out_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        code, out, err = run(capsys, "list", "--url", url, "--timeout", "0.2")
    assert (code, out) == (2, "")
    assert f"no answer from the gateway at {url} within 0.2 s" in err


def test_url_forms() -> None:
    assert normalize_url("127.0.0.1:8000") == "http://127.0.0.1:8000"
    assert normalize_url("https://gw.example/prefix/") == "https://gw.example/prefix"
    with pytest.raises(ValueError):
        normalize_url("ftp://gw")


@pytest.mark.parametrize(
    "argv",
    [
        ["models"],
        ["models", "list", "--url", "ftp://x"],
        ["models", "list", "--url", "127.0.0.1:99999"],
        ["models", "list", "--url", "127.0.0.1:9", "--token", "two words"],
        ["models", "load"],
        ["models", "list", "--timeout", "0"],
        ["models", "list", "--token", "a", "--token-file", "b"],
    ],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    try:
        code = cli.main(argv, environ={})
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    assert code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_unreachable_error_is_raised_by_the_client() -> None:
    with pytest.raises(UnreachableError):
        AdminClient("http://127.0.0.1:9", timeout_s=5).labels("x")


class ListSettings(BaseSettings):
    load_model: list[str] = Field(default_factory=list, description="Models to load.")
    note: str | None = Field(None, description="A note.")


def test_list_fields_become_repeatable_options() -> None:
    parser = argparse.ArgumentParser()
    cli._add_settings_options(parser, ListSettings)
    args = parser.parse_args(["--load-model", "a", "--load-model", "*", "--note", "x"])
    assert args.load_model == ["a", "*"] and args.note == "x"
    assert parser.parse_args([]).load_model is None
    assert "Repeatable" in parser.format_help()
    assert "default: []" in parser.format_help()


def test_settings_receive_repeated_options() -> None:
    fields = cli.GatewaySettings.model_fields
    if "load_model" not in fields:
        pytest.skip("GatewaySettings has no load_model field yet")
    args = cli.build_parser().parse_args(["serve", "--load-model", "a", "--load-model", "b"])
    assert cli._settings(args).load_model == ["a", "b"]


def test_a_list_setting_in_the_environment_is_comma_separated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GATEWAY_LOAD_MODEL", "digits, mlp")
    assert cli.GatewaySettings().load_model == ["digits", "mlp"]


def test_an_unparsable_environment_setting_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_HTTP_PORT", "eighty")
    assert cli.main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "http_port" in err and "Traceback" not in err
