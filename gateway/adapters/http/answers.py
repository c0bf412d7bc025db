"""What the REST data plane answers, independent of the HTTP server that carries it.

The aiohttp handlers (app.py) and the httptools connection (connection.py) both answer
inference, health, metadata, config and statistics through these functions, so the two
front ends cannot drift apart: each only turns an answer into its own response type.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

from gateway.adapters.http import codec
from gateway.adapters.metadata import (
    model_config_dict,
    model_metadata_dict,
    server_metadata_dict,
    statistics_dict,
)
from gateway.core.service import InferenceService
from gateway.core.types import RequestContext

JsonAnswer = tuple[int, Any]
"""An HTTP status and the JSON document to send with it."""

MIN_COMPRESSED_BYTES = 1024
"""Smaller answers are sent as they are: compressing them gains nothing."""
_WBITS = {"deflate": zlib.MAX_WBITS, "gzip": 16 + zlib.MAX_WBITS}


def response_coding(accept_encoding: str | None) -> str | None:
    """The coding for a compressed answer, chosen from Accept-Encoding as aiohttp chooses:
    deflate if named, else gzip if named, else none."""
    if not accept_encoding:
        return None
    accepted = accept_encoding.lower()
    for coding in _WBITS:
        if coding in accepted:
            return coding
    return None


def compress(body: bytes, coding: str) -> bytes:
    """`body` in `coding` (deflate: zlib-wrapped, as aiohttp sends it; gzip)."""
    compressor = zlib.compressobj(wbits=_WBITS[coding])
    return compressor.compress(body) + compressor.flush()


def server_metadata(service: InferenceService) -> JsonAnswer:
    return 200, server_metadata_dict(service.version)


def server_live(service: InferenceService) -> JsonAnswer:
    live = service.live
    return (200 if live else 503), {"live": live}


def server_ready(service: InferenceService) -> JsonAnswer:
    ready = service.ready
    return (200 if ready else 503), {"ready": ready}


def model_ready(service: InferenceService, name: str, version: str) -> JsonAnswer:
    ready = service.model_ready(name, version)
    return (200 if ready else 503), {"name": name, "ready": ready}


def model_metadata(service: InferenceService, name: str, version: str) -> JsonAnswer:
    loaded = service.loaded_version(name, version)
    return 200, model_metadata_dict(loaded, service.ready_version_names(name))


def model_config(service: InferenceService, name: str, version: str) -> JsonAnswer:
    return 200, model_config_dict(service.loaded_version(name, version))


def model_statistics(service: InferenceService, name: str, version: str) -> JsonAnswer:
    return 200, statistics_dict(service.statistics(name, version))


async def infer(
    service: InferenceService,
    body: bytes,
    headers: Mapping[str, str],
    name: str,
    version: str,
) -> tuple[bytes, int | None]:
    """Decode, run and encode one inference request: the body to send and, when it carries
    binary tensor data, the length of its JSON header (Inference-Header-Content-Length).
    `headers` must look names up case-insensitively."""
    request, encoding = codec.decode_request(body, headers.get(codec.HEADER_LENGTH), name, version)
    ctx = RequestContext(
        protocol="http",
        traceparent=headers.get("traceparent"),
        tracestate=headers.get("tracestate"),
        headers=headers,
    )
    response = await service.infer(request, ctx)
    return codec.encode_response(response, encoding)
