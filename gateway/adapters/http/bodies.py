"""Reading the JSON object bodies of the REST extensions (admin, traffic, feedback)."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.core.errors import InvalidInputError, PayloadTooLargeError

MAX_JSON_BODY_BYTES = 16 * 1024 * 1024


async def json_object(request: web.Request, expected: str, *, empty_ok: bool) -> dict[str, Any]:
    """The body as a JSON object ({} for an empty body when `empty_ok`); 400 naming what was
    expected, 413 beyond MAX_JSON_BODY_BYTES (refused from Content-Length, unread)."""
    if request.content_length is not None and request.content_length > MAX_JSON_BODY_BYTES:
        raise PayloadTooLargeError(
            f"request body of {request.content_length} bytes exceeds the limit of "
            f"{MAX_JSON_BODY_BYTES} bytes"
        )
    body = await request.read()
    if empty_ok and not body.strip():
        return {}
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise InvalidInputError(f"expected a JSON object like {expected}")
    return document
