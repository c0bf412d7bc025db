"""Admin API security on both protocols: bearer tokens, the audit log, path traversal through
model names, the separate admin address, and malformed admin requests."""

from __future__ import annotations

import http.client
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from gateway.app.server import StartupError
from gateway.generated import grpc_service_pb2 as pb
from tests.support import models
from tests.support.admin import GrpcAdmin, HttpAnswer, bearer, grpc_status, http_call
from tests.support.server import RunningGateway

TOKEN = "right-admin-token-0123456789"
WRONG = "wrong-admin-token-9876543210"
ALICE = "alice-token-aaaaaaaaaaaaaaaa"
BOB = "bob-token-bbbbbbbbbbbbbbbbbbbb"
SERVED = {"alpha", "broken", "gamma"}
"""Every model the test repository serves; nothing else may ever appear in its index."""

BAD_NAMES = [
    "../models",
    "..",
    "../outside",
    "a/b",
    "%2e%2e",
    ".hidden",
    "a\\b",
    "x" * 200,
    "",
    "\x00",
    "alpha/../../outside",
]


def build_repository(base: Path) -> Path:
    """<base>/repository with alpha (versions 1 and 2), gamma, and broken (version 2 fails),
    plus valid models where a traversing or hidden name would lead: <base>/models,
    <base>/outside and <repository>/.hidden."""
    repository = base / "repository"
    for version in (1, 2):
        models.plus_constant(repository / "alpha" / str(version) / "model.onnx", version)
    models.write_config(repository / "alpha", "version_policy: { all { } }\n")
    models.plus_constant(repository / "gamma" / "1" / "model.onnx", 10)
    models.plus_constant(repository / "broken" / "1" / "model.onnx", 1)
    (repository / "broken" / "2").mkdir()
    (repository / "broken" / "2" / "model.onnx").write_bytes(b"not an onnx model")
    models.write_config(repository / "broken", "version_policy: { all { } }\n")
    for trap in (base / "models", base / "outside", repository / ".hidden"):
        models.plus_constant(trap / "1" / "model.onnx", 666)
    return repository


def start(factory: pytest.TempPathFactory, **settings: Any) -> RunningGateway:
    return RunningGateway(
        build_repository(factory.mktemp("admin")), exit_on_error=False, **settings
    )


@pytest.fixture(scope="module", params=["threaded", "asyncio"])
def secured(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    running = start(tmp_path_factory, admin_token=TOKEN, grpc_server=request.param)
    yield running
    running.stop()


@pytest.fixture
def admin(secured: RunningGateway) -> Iterator[GrpcAdmin]:
    client = GrpcAdmin(secured.grpc_url)
    yield client
    client.close()


def infer_http(address: str, model: str, version: str = "") -> list[float]:
    path = (
        f"/v2/models/{model}/versions/{version}/infer" if version else f"/v2/models/{model}/infer"
    )
    body = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}]}
    answer = http_call(address, "POST", path, body)
    assert answer.status == 200, answer.raw
    return list(answer.body["outputs"][0]["data"])


def infer_grpc(address: str, model: str, version: str = "") -> list[float]:
    with grpcclient.InferenceServerClient(address) as client:
        tensor = grpcclient.InferInput("X", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
        result = client.infer(model, [tensor], model_version=version)
        return [float(x) for x in result.as_numpy("Y")[0]]


def index_names(address: str) -> set[str]:
    answer = http_call(address, "POST", "/v2/repository/index")
    assert answer.status == 200, answer.raw
    return {entry["name"] for entry in answer.body}


def assert_still_serving(running: RunningGateway) -> None:
    assert http_call(running.http_url, "GET", "/v2/health/ready").status == 200
    assert infer_http(running.http_url, "alpha") == [2.0] * 4
    assert infer_grpc(running.grpc_url, "alpha", "1") == [1.0] * 4


def assert_json_error(answer: HttpAnswer, status: int, *fragments: str) -> None:
    assert answer.status == status, answer.raw
    for fragment in fragments:
        assert fragment in answer.error, answer.error


# -- 1. the admin token ----------------------------------------------------------------------
HTTP_ADMIN_CALLS = [
    ("POST", "/v2/repository/models/gamma/load", None),
    ("POST", "/v2/repository/models/gamma/unload", None),
    ("PUT", "/v2/models/alpha/labels/stable", {"version": "1"}),
    ("DELETE", "/v2/models/alpha/labels/stable", None),
]


@pytest.mark.parametrize(("method", "path", "body"), HTTP_ADMIN_CALLS)
def test_http_admin_calls_without_a_valid_token_are_refused(
    secured: RunningGateway, method: str, path: str, body: Any
) -> None:
    address = secured.http_url
    assert_json_error(http_call(address, method, path, body), 401, "Bearer")
    basic = {"Authorization": "Basic YWRtaW46YWRtaW4="}
    assert_json_error(http_call(address, method, path, body, basic), 401, "Bearer <token>")
    assert_json_error(http_call(address, method, path, body, bearer(WRONG)), 403, "not valid")
    assert_json_error(http_call(address, method, path, body, bearer("")), 401)
    latin1 = {"Authorization": "Bearer caf\xe9"}  # a byte that is not UTF-8 (was a 500)
    assert_json_error(http_call(address, method, path, body, latin1), 403, "not valid")
    # The token is checked before the body is read: a malformed body is still a 401.
    assert_json_error(http_call(address, method, path, b"{not json"), 401)
    # Nothing changed: gamma still serves, alpha has no label.
    assert infer_http(address, "gamma") == [10.0] * 4
    assert http_call(address, "GET", "/v2/models/alpha/labels").body == {
        "model": "alpha",
        "labels": {},
    }


def test_http_admin_calls_with_the_token_succeed(secured: RunningGateway) -> None:
    address, auth = secured.http_url, bearer(TOKEN)
    unloaded = http_call(address, "POST", "/v2/repository/models/gamma/unload", None, auth)
    assert unloaded.status == 200, unloaded.raw
    assert unloaded.body == {"model": "gamma", "unloaded": [1]}
    assert http_call(address, "GET", "/v2/models/gamma/ready").status != 200
    loaded = http_call(address, "POST", "/v2/repository/models/gamma/load", {}, auth)
    assert loaded.status == 200, loaded.raw
    assert loaded.body == {"model": "gamma", "loaded": [1], "unloaded": [], "unchanged": []}
    assert infer_http(address, "gamma") == [10.0] * 4

    # The scheme is case-insensitive, as RFC 7235 says.
    lower = {"Authorization": f"bearer {TOKEN}"}
    labelled = http_call(address, "PUT", "/v2/models/alpha/labels/stable", {"version": "1"}, lower)
    assert labelled.status == 200, labelled.raw
    assert labelled.body == {"model": "alpha", "labels": {"stable": "1"}}
    assert infer_http(address, "alpha", "stable") == [1.0] * 4
    deleted = http_call(address, "DELETE", "/v2/models/alpha/labels/stable", None, auth)
    assert deleted.status == 200, deleted.raw
    assert deleted.body == {"model": "alpha", "labels": {}}


def test_tritonclient_http_load_and_unload_carry_the_token(secured: RunningGateway) -> None:
    with httpclient.InferenceServerClient(secured.http_url) as client:
        with pytest.raises(InferenceServerException) as refused:
            client.unload_model("gamma")
        assert refused.value.status() == "401"
        with pytest.raises(InferenceServerException) as wrong:
            client.unload_model("gamma", headers=bearer(WRONG))
        assert wrong.value.status() == "403"
        assert client.is_model_ready("gamma")
        client.unload_model("gamma", headers=bearer(TOKEN))
        assert not client.is_model_ready("gamma")
        client.load_model("gamma", headers=bearer(TOKEN))
        assert client.is_model_ready("gamma")


def test_grpc_admin_calls_without_a_valid_token_are_refused(
    secured: RunningGateway, admin: GrpcAdmin
) -> None:
    calls = [
        (admin.load, ("gamma",)),
        (admin.unload, ("gamma",)),
        (admin.set_label, ("alpha", "stable", "1")),
        (admin.delete_label, ("alpha", "stable")),
    ]
    for call, args in calls:
        code, details = grpc_status(call, *args)
        assert code == grpc.StatusCode.UNAUTHENTICATED, (call, details)
        assert "authorization" in details
        code, details = grpc_status(call, *args, token=WRONG)
        assert code == grpc.StatusCode.PERMISSION_DENIED, (call, details)
        assert "not valid" in details
    basic = (("authorization", "Basic YWRtaW46YWRtaW4="),)
    try:
        admin.triton.RepositoryModelUnload(
            pb.RepositoryModelUnloadRequest(model_name="gamma"), metadata=basic
        )
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    else:
        pytest.fail("a Basic credential was accepted")
    # Two tokens, the right one among them: which one a proxy checked is anyone's guess.
    for twice in [(TOKEN, WRONG), (WRONG, TOKEN), (TOKEN, TOKEN)]:
        metadata = tuple(("authorization", f"Bearer {token}") for token in twice)
        with pytest.raises(grpc.RpcError) as caught:
            admin.triton.RepositoryModelUnload(
                pb.RepositoryModelUnloadRequest(model_name="gamma"), metadata=metadata
            )
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "not several" in (caught.value.details() or "")
    assert infer_grpc(secured.grpc_url, "gamma") == [10.0] * 4
    assert admin.labels("alpha") == {}


def test_http_admin_calls_with_two_authorization_headers_are_refused(
    secured: RunningGateway,
) -> None:
    host, port = secured.http_url.rsplit(":", 1)
    for first, second in [(TOKEN, WRONG), (WRONG, TOKEN), (TOKEN, TOKEN)]:
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        connection.putrequest("POST", "/v2/repository/models/gamma/unload")
        connection.putheader("Authorization", f"Bearer {first}")
        connection.putheader("Authorization", f"Bearer {second}")
        connection.putheader("Content-Length", "0")
        connection.endheaders()
        response = connection.getresponse()
        body = response.read()
        connection.close()
        assert response.status == 401 and b"not several" in body, body
    assert infer_http(secured.http_url, "gamma") == [10.0] * 4


def test_grpc_admin_calls_with_the_token_succeed(secured: RunningGateway, admin: GrpcAdmin) -> None:
    admin.unload("gamma", TOKEN)
    with grpcclient.InferenceServerClient(secured.grpc_url) as client:
        assert not client.is_model_ready("gamma")
        # tritonclient passes headers on as gRPC metadata (whose keys are lower case).
        with pytest.raises(InferenceServerException) as refused:
            client.load_model("gamma", headers={"authorization": f"Bearer {WRONG}"})
        assert "PERMISSION_DENIED" in str(refused.value.status())
        client.load_model("gamma", headers={"authorization": f"Bearer {TOKEN}"})
        assert client.is_model_ready("gamma")
    labels = admin.set_label("alpha", "canary", "2", TOKEN)
    assert (labels.model, dict(labels.labels)) == ("alpha", {"canary": "2"})
    assert infer_grpc(secured.grpc_url, "alpha", "canary") == [2.0] * 4
    assert admin.labels("alpha") == {"canary": "2"}
    assert dict(admin.delete_label("alpha", "canary", TOKEN).labels) == {}


def test_read_only_calls_need_no_token(secured: RunningGateway, admin: GrpcAdmin) -> None:
    address = secured.http_url
    assert index_names(address) == SERVED
    answer = http_call(address, "POST", "/v2/repository/index", {"ready": True})
    assert answer.status == 200 and {e["name"] for e in answer.body} == SERVED
    assert http_call(address, "GET", "/v2/models/alpha/labels").status == 200
    assert infer_http(address, "alpha", "1") == [1.0] * 4
    assert {m.name for m in admin.index().models} == SERVED
    assert admin.labels("alpha") == {}
    assert infer_grpc(secured.grpc_url, "alpha") == [2.0] * 4


# -- 2. the audit log ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    token_file = tmp_path_factory.mktemp("tokens") / "admin-tokens"
    token_file.write_text(f"# who token\nalice {ALICE}\n\nbob {BOB}  # the release bot\n")
    running = start(tmp_path_factory, admin_token_file=token_file, grpc_server="threaded")
    yield running
    running.stop()


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.audit"]
    caplog.clear()
    return lines


def test_audit_log_names_who_what_target_and_result(
    audited: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.audit")
    address = audited.http_url
    admin = GrpcAdmin(audited.grpc_url)
    try:
        # Success over HTTP, by alice.
        answer = http_call(address, "POST", "/v2/repository/models/gamma/load", {}, bearer(ALICE))
        assert answer.status == 200, answer.raw
        (line,) = audit_lines(caplog)
        assert 'who=alice peer=http:127.0.0.1 action=load target="gamma" result="ok' in line
        assert "unchanged=[1]" in line

        # Success over gRPC, by bob: label and unlabel.
        admin.set_label("alpha", "stable", "1", BOB)
        admin.delete_label("alpha", "stable", BOB)
        set_line, delete_line = audit_lines(caplog)
        assert "who=bob peer=ipv4:127.0.0.1:" in set_line
        assert 'action=label target="alpha/stable=1" result="ok' in set_line
        assert "who=bob" in delete_line
        assert 'action=unlabel target="alpha/stable" result="ok' in delete_line

        # Failure: an unknown model, and a load that fails (the reason is in the line).
        code, _ = grpc_status(admin.unload, "nope", BOB)
        assert code == grpc.StatusCode.NOT_FOUND
        bad = {"parameters": {"config": "{not json"}}
        answer = http_call(address, "POST", "/v2/repository/models/alpha/load", bad, bearer(ALICE))
        assert answer.status == 400, answer.raw
        unload_line, load_line = audit_lines(caplog)
        assert "who=bob" in unload_line
        assert 'action=unload target="nope" result="failed: unknown model \'nope\'"' in unload_line
        assert "who=alice" in load_line
        assert 'action=load target="alpha" result="failed: failed to load \'alpha\'' in load_line

        # Refusals: no token, a wrong token (who is unknown then).
        assert grpc_status(admin.unload, "gamma")[0] == grpc.StatusCode.UNAUTHENTICATED
        answer = http_call(
            address, "PUT", "/v2/models/alpha/labels/x", {"version": "1"}, bearer(WRONG)
        )
        assert answer.status == 403, answer.raw
        missing, wrong = audit_lines(caplog)
        assert "who=? peer=ipv4:127.0.0.1:" in missing
        assert 'action=unload target="gamma" result="refused: this admin call needs' in missing
        assert 'who=? peer=http:127.0.0.1 action=label target="alpha/x"' in wrong
        assert 'result="refused: the admin token is not valid"' in wrong
        for record in caplog.records:
            assert ALICE not in record.getMessage() and BOB not in record.getMessage()
    finally:
        admin.close()
    assert_still_serving(audited)


def test_audit_log_never_has_tokens(
    audited: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for token in (ALICE, WRONG, "Bearer"):
        http_call(
            audited.http_url, "POST", "/v2/repository/models/nope/unload", None, bearer(token)
        )
    assert len([r for r in caplog.records if r.name == "gateway.audit"]) == 3
    for record in caplog.records:
        message = record.getMessage()
        assert ALICE not in message and WRONG not in message, message


def test_audit_lines_cannot_be_forged_through_the_model_name(
    audited: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.audit")
    forged = "x\naudit who=alice peer=http:127.0.0.1 action=unload target=alpha result=ok"
    admin = GrpcAdmin(audited.grpc_url)
    try:
        assert grpc_status(admin.unload, forged, BOB)[0] == grpc.StatusCode.INVALID_ARGUMENT
        assert grpc_status(admin.load, forged)[0] == grpc.StatusCode.UNAUTHENTICATED
    finally:
        admin.close()
    lines = audit_lines(caplog)
    assert len(lines) == 2
    for line in lines:
        assert "\n" not in line and "\r" not in line, line


# -- 3. path traversal and bad names ---------------------------------------------------------
@pytest.mark.parametrize("name", [n for n in BAD_NAMES if n], ids=repr)  # '' is not a route
@pytest.mark.parametrize("action", ["load", "unload"])
def test_bad_model_names_are_refused_over_http(
    secured: RunningGateway, name: str, action: str
) -> None:
    path = f"/v2/repository/models/{quote(name, safe='')}/{action}"
    answer = http_call(secured.http_url, "POST", path, None, bearer(TOKEN))
    assert answer.status in (400, 404), answer.raw
    assert answer.error


RAW_PATHS = [
    "/v2/repository/models/..%2F..%2Fetc/load",
    "/v2/repository/models/..%2fmodels/load",
    "/v2/repository/models/%2e%2e%2foutside/load",
    "/v2/repository/models/%2E%2E/load",
    "/v2/repository/models/%252e%252e%252fmodels/load",
    "/v2/repository/models/..%5Cmodels/load",
    "/v2/repository/models/../models/load",
    "/v2/repository/models/../../models/load",
    "/v2/repository/models/alpha/../../../models/load",
    "/v2/repository/models/.hidden/load",
    "/v2/repository/models/%00/load",
    "/v2/repository/models//load",
    "/v2/repository/models/%2Fetc%2Fpasswd/load",
    "/v2/repository/models/..%2F..%2Fetc/unload",
    "/v2/repository/models/..%2Fmodels/unload",
    "/v2/models/..%2Fmodels/labels/stable",
]


@pytest.mark.parametrize("path", RAW_PATHS)
def test_traversing_paths_are_refused_over_http(secured: RunningGateway, path: str) -> None:
    method = "PUT" if "/labels/" in path else "POST"
    body = {"version": "1"} if method == "PUT" else None
    answer = http_call(secured.http_url, method, path, body, bearer(TOKEN))
    assert answer.status in (400, 404, 405), answer.raw
    assert answer.error


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_bad_model_names_are_refused_over_grpc(admin: GrpcAdmin, name: str) -> None:
    for call in (admin.load, admin.unload):
        code, details = grpc_status(call, name, TOKEN)
        assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), details
        assert details


def test_an_absolute_path_is_not_a_model_name(secured: RunningGateway, admin: GrpcAdmin) -> None:
    outside = str(Path(secured.settings.model_repository).parent / "outside")
    for call in (admin.load, admin.unload):
        code, details = grpc_status(call, outside, TOKEN)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    for call in (admin.set_label,):
        code, details = grpc_status(call, outside, "stable", "1", TOKEN)
        assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), details
    path = f"/v2/repository/models/{quote(outside, safe='')}/load"
    assert_json_error(http_call(secured.http_url, "POST", path, None, bearer(TOKEN)), 400)


def test_nothing_outside_the_repository_was_loaded(
    secured: RunningGateway, admin: GrpcAdmin
) -> None:
    """After every traversal attempt above, only the repository's own models are known."""
    for name in BAD_NAMES:
        grpc_status(admin.load, name, TOKEN)
        http_call(
            secured.http_url,
            "POST",
            f"/v2/repository/models/{quote(name, safe='')}/load",
            None,
            bearer(TOKEN),
        )
    assert index_names(secured.http_url) == SERVED
    assert {m.name for m in admin.index().models} == SERVED
    for trap in ("models", "outside", ".hidden"):
        assert http_call(secured.http_url, "GET", f"/v2/models/{trap}/ready").status != 200
    assert_still_serving(secured)


def test_a_model_name_with_a_trailing_newline_is_invalid(
    secured: RunningGateway, admin: GrpcAdmin
) -> None:
    assert grpc_status(admin.load, "alpha\n", TOKEN)[0] == grpc.StatusCode.INVALID_ARGUMENT
    path = "/v2/repository/models/alpha%0A/load"
    assert_json_error(http_call(secured.http_url, "POST", path, None, bearer(TOKEN)), 400)


# -- 4. the separate admin address -----------------------------------------------------------
@pytest.fixture(scope="module", params=["threaded", "asyncio"])
def split(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    running = start(
        tmp_path_factory,
        admin_token=TOKEN,
        admin_http_port=0,
        admin_grpc_port=0,
        grpc_server=request.param,
    )
    yield running
    running.stop()


def test_main_ports_refuse_admin_calls_when_an_admin_address_is_set(
    split: RunningGateway,
) -> None:
    gateway = split.gateway
    assert gateway.admin_http_port and gateway.admin_grpc_port
    ports = {gateway.http_port, gateway.grpc_port, gateway.admin_http_port, gateway.admin_grpc_port}
    assert len(ports) == 4
    for method, path, body in HTTP_ADMIN_CALLS:
        for headers in (bearer(TOKEN), None):
            answer = http_call(split.http_url, method, path, body, headers)
            assert_json_error(answer, 403, "admin address")
    admin = GrpcAdmin(split.grpc_url)
    try:
        for call, args in [
            (admin.load, ("gamma",)),
            (admin.unload, ("gamma",)),
            (admin.set_label, ("alpha", "stable", "1")),
            (admin.delete_label, ("alpha", "stable")),
        ]:
            code, details = grpc_status(call, *args, token=TOKEN)
            assert code == grpc.StatusCode.PERMISSION_DENIED, details
            assert "admin address" in details
        # Read-only calls and inference stay on the main ports.
        assert {m.name for m in admin.index().models} == SERVED
        assert admin.labels("alpha") == {}
    finally:
        admin.close()
    assert infer_http(split.http_url, "gamma") == [10.0] * 4
    assert infer_grpc(split.grpc_url, "gamma") == [10.0] * 4


def test_an_admin_port_for_one_protocol_leaves_the_other_one_admin_on_its_main_port(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    running = start(tmp_path_factory, admin_token=TOKEN, admin_http_port=0)
    try:
        answer = http_call(
            running.http_url, "POST", "/v2/repository/models/gamma/load", None, bearer(TOKEN)
        )
        assert_json_error(answer, 403, f"HTTP port {running.gateway.admin_http_port}")
        admin = GrpcAdmin(running.grpc_url)
        try:
            admin.load("gamma", TOKEN)  # no gRPC admin port: gRPC admin stays where it was
        finally:
            admin.close()
    finally:
        running.stop()


def test_admin_ports_accept_admin_calls(split: RunningGateway) -> None:
    gateway = split.gateway
    admin_http = f"127.0.0.1:{gateway.admin_http_port}"
    auth = bearer(TOKEN)
    unloaded = http_call(admin_http, "POST", "/v2/repository/models/gamma/unload", None, auth)
    assert unloaded.status == 200, unloaded.raw
    assert http_call(split.http_url, "GET", "/v2/models/gamma/ready").status != 200
    loaded = http_call(admin_http, "POST", "/v2/repository/models/gamma/load", None, auth)
    assert loaded.status == 200, loaded.raw
    # The admin address still checks the token.
    answer = http_call(admin_http, "POST", "/v2/repository/models/gamma/load")
    assert_json_error(answer, 401)
    admin = GrpcAdmin(f"127.0.0.1:{gateway.admin_grpc_port}")
    try:
        assert grpc_status(admin.unload, "gamma")[0] == grpc.StatusCode.UNAUTHENTICATED
        admin.unload("gamma", TOKEN)
        admin.load("gamma", TOKEN)
        admin.set_label("alpha", "stable", "1", TOKEN)
        assert infer_grpc(split.grpc_url, "alpha", "stable") == [1.0] * 4
        assert dict(admin.delete_label("alpha", "stable", TOKEN).labels) == {}
    finally:
        admin.close()
    with httpclient.InferenceServerClient(admin_http) as client:
        client.unload_model("gamma", headers=auth)
        client.load_model("gamma", headers=auth)
    assert infer_http(split.http_url, "gamma") == [10.0] * 4
    assert infer_grpc(split.grpc_url, "gamma") == [10.0] * 4


# -- 5. malformed admin requests -------------------------------------------------------------
LOAD = "/v2/repository/models/alpha/load"
UNLOAD = "/v2/repository/models/alpha/unload"
LABEL = "/v2/models/alpha/labels/stable"

MALFORMED_HTTP = [
    ("POST", LOAD, b"{not json", 400, "not valid JSON"),
    ("POST", LOAD, b"\xff\xfe", 400, "not valid JSON"),
    ("POST", LOAD, [1, 2], 400, "JSON object"),
    ("POST", LOAD, b'"parameters"', 400, "JSON object"),
    ("POST", LOAD, {"parameters": [1]}, 400, "'parameters' must be a JSON object"),
    ("POST", LOAD, {"parameters": "reload"}, 400, "'parameters' must be a JSON object"),
    ("POST", LOAD, {"parameters": {"config": 5}}, 400, "'config'"),
    ("POST", LOAD, {"parameters": {"config": {"max_batch_size": 1}}}, 400, "'config'"),
    ("POST", LOAD, {"parameters": {"config": "{not json"}}, 400, "alpha"),
    ("POST", LOAD, {"parameters": {"reload": "yes"}}, 400, "'reload'"),
    ("POST", LOAD, {"parameters": {"reload": 1}}, 400, "'reload'"),
    ("POST", LOAD, {"parameters": {"file:1/model.onnx": "eA=="}}, 501, "file"),
    ("POST", UNLOAD, b"nope", 400, "not valid JSON"),
    ("POST", UNLOAD, {"parameters": 3}, 400, "'parameters' must be a JSON object"),
    ("POST", "/v2/repository/models/nope/load", None, 404, "nope"),
    ("POST", "/v2/repository/models/nope/unload", None, 404, "nope"),
    ("PUT", LABEL, None, 400, "version"),
    ("PUT", LABEL, {}, 400, "version"),
    ("PUT", LABEL, [{"version": "1"}], 400, "JSON object"),
    ("PUT", LABEL, {"version": ""}, 400, "version"),
    ("PUT", LABEL, {"version": True}, 400, "version"),
    ("PUT", LABEL, {"version": 1.5}, 400, "version"),
    ("PUT", LABEL, {"version": "latest"}, 400, "version number"),
    ("PUT", LABEL, {"version": "-1"}, 400, "version number"),
    ("PUT", LABEL, {"version": "9"}, 404, "version '9'"),
    ("PUT", "/v2/models/broken/labels/stable", {"version": "2"}, 400, "READY"),
    ("PUT", "/v2/models/nope/labels/stable", {"version": "1"}, 404, "nope"),
    ("PUT", "/v2/models/alpha/labels/1abc", {"version": "1"}, 400, "invalid label"),
    ("PUT", "/v2/models/alpha/labels/a%20b", {"version": "1"}, 400, "invalid label"),
    ("PUT", "/v2/models/alpha/labels/" + "l" * 65, {"version": "1"}, 400, "invalid label"),
    ("PUT", "/v2/models/alpha/labels/a%2Fb", {"version": "1"}, 400, "invalid label"),
    ("DELETE", "/v2/models/alpha/labels/missing", None, 404, "missing"),
    ("DELETE", "/v2/models/nope/labels/stable", None, 404, "nope"),
    ("GET", "/v2/models/nope/labels", None, 404, "nope"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "fragment"),
    MALFORMED_HTTP,
    ids=[f"{m} {p[-28:]} {b!r:.30}" for m, p, b, _, _ in MALFORMED_HTTP],
)
def test_malformed_http_admin_requests_get_clear_errors(
    secured: RunningGateway, method: str, path: str, body: Any, status: int, fragment: str
) -> None:
    answer = http_call(secured.http_url, method, path, body, bearer(TOKEN))
    assert_json_error(answer, status, fragment)
    assert answer.status != 500


def test_an_empty_label_has_no_http_route(secured: RunningGateway) -> None:
    answer = http_call(
        secured.http_url, "PUT", "/v2/models/alpha/labels/", {"version": "1"}, bearer(TOKEN)
    )
    assert answer.status in (404, 405), answer.raw
    assert answer.error


def test_a_label_may_have_64_characters(secured: RunningGateway) -> None:
    label = "l" * 64
    auth = bearer(TOKEN)
    answer = http_call(
        secured.http_url, "PUT", f"/v2/models/alpha/labels/{label}", {"version": 2}, auth
    )
    assert answer.status == 200, answer.raw
    assert answer.body["labels"] == {label: "2"}
    answer = http_call(secured.http_url, "DELETE", f"/v2/models/alpha/labels/{label}", None, auth)
    assert answer.status == 200 and answer.body["labels"] == {}


def parameter(**choice: Any) -> pb.ModelRepositoryParameter:
    return pb.ModelRepositoryParameter(**choice)


def test_malformed_grpc_admin_requests_get_clear_errors(admin: GrpcAdmin) -> None:
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    not_found = grpc.StatusCode.NOT_FOUND
    cases: list[tuple[Any, tuple[Any, ...], grpc.StatusCode, str]] = [
        (admin.load, ("alpha", TOKEN, {"config": parameter(int64_param=5)}), invalid, "'config'"),
        (
            admin.load,
            ("alpha", TOKEN, {"config": parameter(bytes_param=b"{}")}),
            invalid,
            "'config'",
        ),
        (admin.load, ("alpha", TOKEN, {"config": parameter(string_param="{no")}), invalid, "alpha"),
        (
            admin.load,
            ("alpha", TOKEN, {"reload": parameter(string_param="true")}),
            invalid,
            "'reload'",
        ),
        (admin.load, ("alpha", TOKEN, {"reload": parameter(int64_param=1)}), invalid, "'reload'"),
        (admin.load, ("nope", TOKEN), not_found, "nope"),
        (admin.unload, ("nope", TOKEN), not_found, "nope"),
        (admin.set_label, ("alpha", "stable", "", TOKEN), invalid, "version"),
        (admin.set_label, ("alpha", "stable", "two", TOKEN), invalid, "version number"),
        (admin.set_label, ("alpha", "stable", "9", TOKEN), not_found, "version '9'"),
        (admin.set_label, ("broken", "stable", "2", TOKEN), invalid, "READY"),
        (admin.set_label, ("nope", "stable", "1", TOKEN), not_found, "nope"),
        (admin.set_label, ("alpha", "1abc", "1", TOKEN), invalid, "invalid label"),
        (admin.set_label, ("alpha", "", "1", TOKEN), invalid, "invalid label"),
        (admin.set_label, ("alpha", "a b", "1", TOKEN), invalid, "invalid label"),
        (admin.set_label, ("alpha", "l" * 65, "1", TOKEN), invalid, "invalid label"),
        (admin.delete_label, ("alpha", "missing", TOKEN), not_found, "missing"),
        (admin.delete_label, ("nope", "stable", TOKEN), not_found, "nope"),
        (admin.labels, ("nope",), not_found, "nope"),
    ]
    for call, args, expected, fragment in cases:
        code, details = grpc_status(call, *args)
        assert code == expected, (args, code, details)
        assert fragment in details, (args, details)


def test_a_malformed_grpc_load_message_is_invalid_argument(admin: GrpcAdmin) -> None:
    load = admin.channel.unary_unary(
        "/inference.GRPCInferenceService/RepositoryModelLoad",
        request_serializer=lambda raw: raw,
        response_deserializer=lambda raw: raw,
    )
    try:
        load(b"\xff\xff\xff", metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=10)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    else:
        pytest.fail("a malformed RepositoryModelLoadRequest was accepted")


def test_a_failed_reload_keeps_the_old_versions_serving(
    secured: RunningGateway, admin: GrpcAdmin
) -> None:
    bad = {"parameters": {"config": '{"max_batch_size": "many"}', "reload": True}}
    answer = http_call(secured.http_url, "POST", LOAD, bad, bearer(TOKEN))
    assert_json_error(answer, 400, "alpha")
    assert_still_serving(secured)
    # A good reload swaps both versions in.
    good = http_call(
        secured.http_url, "POST", LOAD, {"parameters": {"reload": True}}, bearer(TOKEN)
    )
    assert good.status == 200 and good.body["loaded"] == [1, 2], good.raw


def test_a_label_with_a_trailing_newline_is_invalid(admin: GrpcAdmin) -> None:
    try:
        code, details = grpc_status(admin.set_label, "alpha", "stable\n", "1", TOKEN)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    finally:
        if "stable\n" in admin.labels("alpha"):
            admin.delete_label("alpha", "stable\n", TOKEN)


def test_the_server_keeps_serving_after_malformed_admin_requests(
    secured: RunningGateway, admin: GrpcAdmin
) -> None:
    assert admin.labels("alpha") == {}
    assert index_names(secured.http_url) == SERVED
    assert_still_serving(secured)


# -- start-up checks of the admin settings ---------------------------------------------------
def test_a_token_file_with_a_short_token_stops_start_up(tmp_path: Path) -> None:
    models.plus_constant(tmp_path / "repository" / "gamma" / "1" / "model.onnx", 10)
    token_file = tmp_path / "admin-tokens"
    token_file.write_text(f"alice {ALICE}\nbob short\n")
    with pytest.raises(StartupError) as refused:
        RunningGateway(tmp_path / "repository", admin_token_file=token_file)
    assert str(token_file) in str(refused.value) and "line 2" in str(refused.value)
    assert ALICE not in str(refused.value)


def test_a_short_admin_token_stops_start_up(tmp_path: Path) -> None:
    models.plus_constant(tmp_path / "repository" / "gamma" / "1" / "model.onnx", 10)
    try:
        running = RunningGateway(tmp_path / "repository", admin_token="short")
    except (StartupError, ValueError) as error:
        assert "admin" in str(error).lower()
    else:
        running.stop()
        pytest.fail("a 5-character admin token was accepted")
