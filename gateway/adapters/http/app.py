"""The V2 REST route table and its handlers; each handler decodes, calls the service, encodes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from gateway.adapters.http import answers, codec
from gateway.adapters.http.bodies import json_object
from gateway.adapters.http.errors import error_middleware, gateway_error_response
from gateway.adapters.http.feedback import feedback_routes
from gateway.adapters.metadata import repository_index_list
from gateway.core.admin import AdminCall, Admitted
from gateway.core.errors import InvalidInputError, PayloadTooLargeError, UnimplementedError
from gateway.core.lifecycle import LoadResult, labels_document
from gateway.core.service import InferenceService

SERVICE = web.AppKey("service", InferenceService)
COMPRESS_RESPONSES = web.AppKey("compress_responses", bool)
MAX_REQUEST_BYTES = web.AppKey("max_request_bytes", int)
ADMIN_ELSEWHERE = web.AppKey("admin_elsewhere", str)


def _json(document: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(document), content_type="application/json")


def _target(request: web.Request) -> tuple[str, str]:
    return request.match_info["model"], request.match_info.get("version", "")


def _answer(answer: answers.JsonAnswer) -> web.Response:
    status, document = answer
    return _json(document, status)


async def server_metadata(request: web.Request) -> web.Response:
    return _answer(answers.server_metadata(request.app[SERVICE]))


async def server_live(request: web.Request) -> web.Response:
    return _answer(answers.server_live(request.app[SERVICE]))


async def server_ready(request: web.Request) -> web.Response:
    return _answer(answers.server_ready(request.app[SERVICE]))


async def model_ready(request: web.Request) -> web.Response:
    return _answer(answers.model_ready(request.app[SERVICE], *_target(request)))


async def model_metadata(request: web.Request) -> web.Response:
    return _answer(answers.model_metadata(request.app[SERVICE], *_target(request)))


async def model_config(request: web.Request) -> web.Response:
    return _answer(answers.model_config(request.app[SERVICE], *_target(request)))


async def model_statistics(request: web.Request) -> web.Response:
    name = request.match_info.get("model", "")
    version = request.match_info.get("version", "")
    return _answer(answers.model_statistics(request.app[SERVICE], name, version))


async def _json_body(request: web.Request, expected: str) -> dict[str, Any]:
    """The request's JSON object body ({} when empty); 400 naming what was expected."""
    return await json_object(request, expected, empty_ok=True)


def _parameters(document: dict[str, Any], expected: str) -> dict[str, Any]:
    parameters = document.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInputError(f"'parameters' must be a JSON object, like {expected}")
    return parameters


def _admit(request: web.Request, action: str, target: str) -> Admitted:
    """The token check, before the body is read."""
    values = request.headers.getall("Authorization", [])
    call = AdminCall(
        values[0] if values else None,
        f"http:{request.remote or '?'}",
        request.app[ADMIN_ELSEWHERE],
        repeated=len(values) > 1,
    )
    return request.app[SERVICE].admit(call, action, target)


def _load_result(result: LoadResult) -> dict[str, Any]:
    return {
        "model": result.model,
        "loaded": list(result.loaded),
        "unloaded": list(result.unloaded),
        "unchanged": list(result.unchanged),
    }


async def repository_index(request: web.Request) -> web.Response:
    document = await _json_body(request, '{"ready": true}')
    ready_only = document.get("ready", False)
    if not isinstance(ready_only, bool):
        raise InvalidInputError('"ready" must be true or false, as in {"ready": true}')
    index = await request.app[SERVICE].repository_index(ready_only)
    return _json(repository_index_list(index))


async def repository_load(request: web.Request) -> web.Response:
    caller = _admit(request, "load", request.match_info["model"])
    expected = '{"parameters": {"config": "<JSON model config>", "reload": true}}'
    parameters = _parameters(await _json_body(request, expected), expected)
    result = await request.app[SERVICE].load_model(caller, request.match_info["model"], parameters)
    return _json(_load_result(result))


async def repository_unload(request: web.Request) -> web.Response:
    caller = _admit(request, "unload", request.match_info["model"])
    expected = '{"parameters": {"unload_dependents": false}}'
    _parameters(await _json_body(request, expected), expected)  # nothing depends on a model
    result = await request.app[SERVICE].unload_model(caller, request.match_info["model"])
    return _json({"model": result.model, "unloaded": list(result.unloaded)})


def _labels(model: str, labels: dict[str, int]) -> web.Response:
    return _json({"model": model, "labels": labels_document(labels)})


async def get_labels(request: web.Request) -> web.Response:
    model = request.match_info["model"]
    return _labels(model, request.app[SERVICE].labels(model))


async def set_label(request: web.Request) -> web.Response:
    model, label = request.match_info["model"], request.match_info["label"]
    caller = _admit(request, "label", f"{model}/{label}")
    document = await _json_body(request, '{"version": "2"}')
    version = document.get("version")
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)
    if not isinstance(version, str) or not version:
        raise InvalidInputError('expected a JSON object naming the version, like {"version": "2"}')
    labels = await request.app[SERVICE].set_label(caller, model, label, version)
    return _labels(model, labels)


async def delete_label(request: web.Request) -> web.Response:
    model, label = request.match_info["model"], request.match_info["label"]
    caller = _admit(request, "unlabel", f"{model}/{label}")
    labels = await request.app[SERVICE].delete_label(caller, model, label)
    return _labels(model, labels)


def _traffic(request: web.Request, model: str) -> web.Response:
    service = request.app[SERVICE]
    policy = service.traffic(model)
    document: dict[str, Any] = {"model": model}
    document |= (
        policy.document()
        if policy is not None
        else {"weights": {}, "sticky_key": "", "shadows": []}  # the latest READY version
    )
    document["comparisons"] = [
        {
            "primary": primary,
            "shadow": shadow,
            "agree": figures.agree,
            "disagree": figures.disagree,
            "error": figures.error,
            "dropped": figures.dropped,
            "agreement": figures.agreement,
            "max_abs_diff": figures.max_abs_diff,
        }
        for primary, shadow, figures in service.shadow_figures(model)
    ]
    return _json(document)


async def get_traffic(request: web.Request) -> web.Response:
    return _traffic(request, request.match_info["model"])


async def set_traffic(request: web.Request) -> web.Response:
    model = request.match_info["model"]
    caller = _admit(request, "traffic", model)
    document = await _json_body(request, '{"weights": {"1": 90, "2": 10}}')
    await request.app[SERVICE].set_traffic(caller, model, document)
    return _traffic(request, model)


async def clear_traffic(request: web.Request) -> web.Response:
    model = request.match_info["model"]
    caller = _admit(request, "traffic", model)
    await request.app[SERVICE].clear_traffic(caller, model)
    return _traffic(request, model)


# -- rollouts ---------------------------------------------------------------------------------
async def get_rollout(request: web.Request) -> web.Response:
    return _json(request.app[SERVICE].rollout(request.match_info["model"]))


async def start_rollout(request: web.Request) -> web.Response:
    model = request.match_info["model"]
    caller = _admit(request, "rollout", model)
    document = await _json_body(request, '{"to": "2", "steps": [1, 5, 25, 50, 100]}')
    return _json(await request.app[SERVICE].start_rollout(caller, model, document))


async def abort_rollout(request: web.Request) -> web.Response:
    model = request.match_info["model"]
    caller = _admit(request, "rollout", model)
    return _json(await request.app[SERVICE].abort_rollout(caller, model))


# -- end rollouts -----------------------------------------------------------------------------


async def infer(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    limit = request.app[MAX_REQUEST_BYTES]
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLargeError(
            f"request body of {request.content_length} bytes exceeds the limit of {limit} bytes"
        )
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:  # chunked bodies: counted while read
        raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes") from exc
    except (RequestPayloadError, HttpProcessingError) as exc:  # e.g. a broken gzip body
        # The rest of the body cannot be read either, so the connection cannot go on: say
        # so (Connection: close) rather than let aiohttp fail draining it after the answer.
        response = gateway_error_response(
            InvalidInputError(f"the request body cannot be read: {exc}")
        )
        response.force_close()
        return response
    with service.callers.call():  # a caller, never solo (requests aiohttp has not read are unseen)
        payload, header_length = await answers.infer(
            service, body, request.headers, *_target(request)
        )
    headers = {} if header_length is None else {codec.HEADER_LENGTH: str(header_length)}
    if request.app[COMPRESS_RESPONSES]:
        # gzip or deflate as the client asks (tritonclient's response_compression_algorithm);
        # Inference-Header-Content-Length counts the uncompressed JSON, as in Triton.
        payload, coding = await answers.compressed(payload, request.headers.get("Accept-Encoding"))
        headers["Vary"] = "Accept-Encoding"  # for caches between client and server
        if coding is not None:
            headers["Content-Encoding"] = coding
    content_type = codec.JSON_CONTENT_TYPE if header_length is None else codec.BINARY_CONTENT_TYPE
    return web.Response(body=payload, content_type=content_type, headers=headers)


async def not_implemented(request: web.Request) -> web.Response:
    raise UnimplementedError(f"{request.method} {request.path} is not implemented by this server")


# Triton extension routes a client may call that this server does not implement yet: they
# answer 501, as their gRPC counterparts answer UNIMPLEMENTED, rather than 404.
NOT_IMPLEMENTED = [
    web.route("*", "/v2/systemsharedmemory{tail:.*}", not_implemented),
    web.route("*", "/v2/cudasharedmemory{tail:.*}", not_implemented),
    web.route("*", "/v2/trace/setting", not_implemented),
    web.route("*", "/v2/models/{model}/trace/setting", not_implemented),
    web.route("*", "/v2/logging", not_implemented),
]

ROUTES = [
    # aiohttp tries the routes under one prefix (/v2/models) in order, a regex each: inference,
    # the route every request takes, comes first (resolved in 4 us instead of 14 us when last).
    web.post("/v2/models/{model}/infer", infer),
    web.post("/v2/models/{model}/versions/{version}/infer", infer),
    web.get("/v2/models/stats", model_statistics),  # before /v2/models/{model}
    web.get("/v2", server_metadata),
    web.get("/v2/health/live", server_live),
    web.get("/v2/health/ready", server_ready),
    web.get("/v2/models/{model}", model_metadata),
    web.get("/v2/models/{model}/versions/{version}", model_metadata),
    web.get("/v2/models/{model}/ready", model_ready),
    web.get("/v2/models/{model}/versions/{version}/ready", model_ready),
    web.get("/v2/models/{model}/config", model_config),
    web.get("/v2/models/{model}/versions/{version}/config", model_config),
    web.get("/v2/models/{model}/stats", model_statistics),
    web.get("/v2/models/{model}/versions/{version}/stats", model_statistics),
    web.post("/v2/repository/index", repository_index),
    web.post("/v2/repository/models/{model}/load", repository_load),
    web.post("/v2/repository/models/{model}/unload", repository_unload),
    web.get("/v2/models/{model}/labels", get_labels),
    web.put("/v2/models/{model}/labels/{label}", set_label),
    web.delete("/v2/models/{model}/labels/{label}", delete_label),
    web.get("/v2/models/{model}/traffic", get_traffic),
    web.put("/v2/models/{model}/traffic", set_traffic),
    web.delete("/v2/models/{model}/traffic", clear_traffic),
    web.get("/v2/models/{model}/rollout", get_rollout),
    web.post("/v2/models/{model}/rollout", start_rollout),
    web.delete("/v2/models/{model}/rollout", abort_rollout),
]


def create_app(
    service: InferenceService,
    *,
    max_request_bytes: int,
    compress_responses: bool = False,
    admin_elsewhere: str = "",
    extra_routes: Sequence[web.RouteDef] = (),
) -> web.Application:
    """The REST application; `admin_elsewhere` (the admin address, when admin calls are served
    on a separate one) refuses admin calls here."""
    app = web.Application(client_max_size=max_request_bytes, middlewares=[error_middleware])
    app[SERVICE] = service
    app[MAX_REQUEST_BYTES] = max_request_bytes
    app[COMPRESS_RESPONSES] = compress_responses
    app[ADMIN_ELSEWHERE] = admin_elsewhere
    app.add_routes(ROUTES)
    app.add_routes(feedback_routes(SERVICE))
    app.add_routes(extra_routes)
    app.add_routes(NOT_IMPLEMENTED)
    return app
