"""What the REST data plane answers, independent of the HTTP server that carries it.

The aiohttp handlers (app.py) and the httptools connection (connection.py) both answer
inference, health, metadata, config and statistics through these functions, so the two
front ends cannot drift apart: each only turns an answer into its own response type.
"""

from __future__ import annotations

import asyncio
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
COMPRESS_INLINE_BYTES = 256 * 1024
"""Larger answers (a few ms of zlib) are compressed on a thread, so the loop keeps serving."""
_WBITS = {"deflate": zlib.MAX_WBITS, "gzip": 16 + zlib.MAX_WBITS}


async def compressed(payload: bytes, accept_encoding: str | None) -> tuple[bytes, str | None]:
    """`payload` in the coding the client accepts (see accepted_coding), and that coding; as it
    is, with None, when it is small or no coding is accepted. Deflate is zlib-wrapped, as
    aiohttp sends it."""
    if len(payload) < MIN_COMPRESSED_BYTES or not accept_encoding:
        return payload, None
    coding = accepted_coding(accept_encoding)
    if coding is None:
        return payload, None
    if len(payload) > COMPRESS_INLINE_BYTES:
        return await asyncio.to_thread(_compress, payload, coding), coding
    return _compress(payload, coding), coding


def accepted_coding(accept_encoding: str) -> str | None:
    """deflate or gzip, whichever Accept-Encoding weighs highest (RFC 9110: `q=0` refuses a
    coding, `*` stands for any not named); deflate on a tie, as aiohttp prefers it; None if
    neither is acceptable."""
    weights: dict[str, float] = {}
    for item in accept_encoding.split(","):
        coding, _, parameters = item.partition(";")
        weight = 1.0
        for parameter in parameters.split(";"):
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        weights[coding.strip().lower()] = weight
    best, best_weight = None, 0.0
    for coding in _WBITS:  # deflate first: it wins ties
        weight = weights.get(coding, weights.get("*", 0.0))
        if weight > best_weight:  # a NaN weight is never greater: not acceptable
            best, best_weight = coding, weight
    return best


def _compress(body: bytes, coding: str) -> bytes:
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
    body: bytes | bytearray,
    headers: Mapping[str, str],
    name: str,
    version: str,
    solo: bool = False,
) -> tuple[bytes, int | None]:
    """Decode, run and encode one inference request: the body to send and, when it carries
    binary tensor data, the length of its JSON header (Inference-Header-Content-Length).
    `headers` must look names up case-insensitively; `solo`: see RequestContext."""
    request, encoding = codec.decode_request(body, headers.get(codec.HEADER_LENGTH), name, version)
    ctx = RequestContext(
        protocol="http",
        traceparent=headers.get("traceparent"),
        tracestate=headers.get("tracestate"),
        headers=headers,
        solo=solo,
    )
    response = await service.infer(request, ctx)
    return codec.encode_response(response, encoding)
