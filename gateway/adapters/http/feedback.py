"""The REST routes of ground-truth feedback and per-version accuracy.

`POST /v2/models/{m}/feedback` takes `{"id": ..., "label": ...}` or
`{"feedback": [{"id": ..., "label": ...}, ...]}`; `GET /v2/models/{m}/accuracy` reads the
figures. A body that cannot be read is a 400 naming the field; ids that are unknown, expired
or already answered are outcomes in a 200, so a client's loop never breaks on them.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
from aiohttp import web

from gateway.adapters.feedback import accuracy_dict, result_dict
from gateway.adapters.http.bodies import json_object
from gateway.core.errors import InvalidInputError
from gateway.core.feedback import MAX_FEEDBACK_ITEMS, Feedback, Outcome
from gateway.core.prediction import parse_label
from gateway.core.service import InferenceService

SINGLE = '{"id": "<request id>", "label": 3}'
BATCH = '{"feedback": [{"id": "<request id>", "label": 3}, ...]}'


def _response(document: Any) -> web.Response:
    return web.Response(body=orjson.dumps(document), content_type="application/json")


async def _document(request: web.Request) -> dict[str, Any]:
    return await json_object(request, f"{SINGLE} or {BATCH}", empty_ok=False)


def _item(raw: object, where: str) -> Feedback:
    if not isinstance(raw, dict):
        raise InvalidInputError(f"{where or 'the body'} must be an object like {SINGLE}")
    prefix = f"{where}." if where else ""
    unknown = sorted(set(raw) - {"id", "label"})
    if unknown:
        raise InvalidInputError(f"{prefix}{unknown[0]}: unknown field; expected 'id' and 'label'")
    request_id = raw.get("id")
    if not isinstance(request_id, str) or not request_id:
        raise InvalidInputError(
            f"'{prefix}id' must be the non-empty request id the inference was answered with"
        )
    if "label" not in raw:
        raise InvalidInputError(f"'{prefix}label' is missing")
    return Feedback(request_id, parse_label(raw["label"], f"'{prefix}label'"))


def parse_feedback(document: dict[str, Any]) -> tuple[list[Feedback], bool]:
    """The items of a feedback body, and whether it was the single-item form."""
    if "feedback" not in document:
        return [_item(document, "")], True
    if set(document) != {"feedback"}:
        raise InvalidInputError(f"a batch body holds only 'feedback', like {BATCH}")
    items = document["feedback"]
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_FEEDBACK_ITEMS:
        raise InvalidInputError(
            f"'feedback' must be a list of 1 to {MAX_FEEDBACK_ITEMS} items, like {BATCH}"
        )
    return [_item(raw, f"feedback[{index}]") for index, raw in enumerate(items)], False


def feedback_routes(service_key: web.AppKey[InferenceService]) -> list[web.RouteDef]:
    """The routes, reading the service from the application under `service_key`."""

    async def feedback(request: web.Request) -> web.Response:
        service = request.app[service_key]
        model = request.match_info["model"]
        service.ready_version_names(model)  # 404 for a model the gateway does not know
        items, single = parse_feedback(await _document(request))
        results = service.feedback.submit(model, items, "" if single else "feedback")
        if single:
            if results[0].outcome is Outcome.INVALID:
                raise InvalidInputError(results[0].error)
            return _response(result_dict(results[0]))
        counts = Counter(result.outcome.value for result in results)
        return _response(
            {
                "model": model,
                "counts": dict(sorted(counts.items())),
                "results": [result_dict(result) for result in results],
            }
        )

    async def accuracy(request: web.Request) -> web.Response:
        service = request.app[service_key]
        model = request.match_info["model"]
        service.ready_version_names(model)  # 404 for a model the gateway does not know
        return _response(accuracy_dict(model, service.feedback))

    return [
        web.post("/v2/models/{model}/feedback", feedback),
        web.get("/v2/models/{model}/accuracy", accuracy),
    ]
