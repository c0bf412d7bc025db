"""Request heads for the httptools front end: parsing one, and matching its data-plane route.

A head is parsed by llhttp (through httptools) strictly: a head it refuses, or one this front
end does not serve itself (see `Head.plain`), is left to aiohttp, which answers it exactly as
the aiohttp application always has. Matching follows app.py's route table for the routes
served here and gives up (None) on anything that table might read differently: percent-escapes,
braces, empty segments, other methods.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping

import httptools


class Headers(Mapping[str, str]):
    """Request headers looked up case-insensitively (read only); the first of repeated names
    wins, as aiohttp's CIMultiDict.get."""

    __slots__ = ("_lower",)

    def __init__(self, lower: dict[str, str]) -> None:
        self._lower = lower  # lower-case name -> value; the caller gives it up

    def __getitem__(self, name: str) -> str:
        return self._lower[name.lower()]

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return self._lower.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._lower

    def __iter__(self) -> Iterator[str]:
        return iter(self._lower)

    def __len__(self) -> int:
        return len(self._lower)


SINGLETON_HEADERS = frozenset(
    {
        "content-length",
        "content-location",
        "content-range",
        "content-type",
        "etag",
        "host",
        "max-forwards",
        "server",
        "transfer-encoding",
        "user-agent",
    }
)
"""Headers aiohttp refuses to see twice (400); a head repeating one goes to aiohttp."""


class Head:
    """One request head, filled in by httptools' callbacks while llhttp parses it. What the
    parser knows of the message is read when its headers are complete: a message without a
    body completes, and resets the parser, in the same call."""

    __slots__ = (
        "_lower",
        "content_length",
        "expect_continue",
        "fields",
        "headers",
        "keep_alive",
        "method",
        "parser",
        "plain",
        "repeated",
        "url",
        "version",
    )

    def __init__(self) -> None:
        self.url = b""
        self._lower: dict[str, str] = {}
        self.headers = Headers(self._lower)
        self.parser: httptools.HttpRequestParser | None = None
        self.method = b""
        self.version = ""
        self.keep_alive = False
        self.repeated = False
        self.content_length = 0
        self.fields = 0
        self.expect_continue = False
        self.plain = False
        """HTTP/1.1 with one Host, a body framed by Content-Length (or none), not compressed,
        no upgrade, no Expect but 100-continue, no singleton header repeated: what the
        httptools front end serves itself."""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # Decoded as aiohttp decodes them (trailing whitespace is not part of a value, RFC
        # 9110), so both front ends see the same values (a sticky key routes the same).
        self.fields += 1
        lower = self._lower
        key = name.decode("utf-8", "surrogateescape").lower()
        if key in lower:
            self.repeated = self.repeated or key in SINGLETON_HEADERS
            return
        lower[key] = value.rstrip(b" \t").decode("utf-8", "surrogateescape")

    def on_headers_complete(self) -> None:
        parser = self.parser
        assert parser is not None
        self.method = parser.get_method()
        self.version = parser.get_http_version()
        self.keep_alive = parser.should_keep_alive()


MAX_CACHED_HEAD_BYTES = 1024
MAX_HEADER_FIELDS = 128
"""aiohttp's limit: a head with more fields goes to it, which answers 400."""


def parse_head(raw: bytes) -> Head | None:
    """The head `raw` (up to and including its blank line), or None if llhttp refuses it.
    Heads are shared between the requests that repeat them: read them, never change them."""
    if len(raw) <= MAX_CACHED_HEAD_BYTES:
        return _parse_head_cached(raw)
    return _parse_head(raw)


@functools.lru_cache(maxsize=256)  # a client's requests often repeat their head byte for byte
def _parse_head_cached(raw: bytes) -> Head | None:
    return _parse_head(raw)


def _parse_head(raw: bytes) -> Head | None:
    head = Head()
    head.parser = parser = httptools.HttpRequestParser(head)
    try:
        parser.feed_data(raw)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        return None
    finally:
        head.parser = None  # no reference cycle left for the garbage collector
    if not head.method:  # the head did not end where the caller thought
        return None
    lower = head._lower
    expect = lower.get("expect")
    head.expect_continue = expect is not None and expect.lower() == "100-continue"
    length = lower.get("content-length")
    if length is not None:
        try:
            head.content_length = int(length)  # llhttp checked its digits
        except ValueError:
            return None
    head.plain = (
        head.version == "1.1"
        and "host" in lower  # aiohttp answers its absence (400, as RFC 9112 asks)
        and not head.repeated
        and "transfer-encoding" not in lower
        and "content-encoding" not in lower
        and "upgrade" not in lower
        and (expect is None or head.expect_continue)
        and head.fields <= MAX_HEADER_FIELDS  # aiohttp refuses more (400)
    )
    return head


INFER = "infer"
SERVER_ROUTES = ("server_metadata", "server_live", "server_ready")
MODEL_ROUTES = ("model_metadata", "model_ready", "model_config", "model_statistics")
_MODEL_TAILS = {"ready": "model_ready", "config": "model_config", "stats": "model_statistics"}


MAX_CACHED_URL_BYTES = 256


def match_route(method: bytes, url: bytes) -> tuple[str, str, str] | None:
    """(route, model, version) for the data-plane routes served here, as app.py's table
    routes them; None for everything else."""
    if len(url) <= MAX_CACHED_URL_BYTES and b"?" not in url:
        return _match_route_cached(method, url)
    return _match_route(method, url)


@functools.lru_cache(maxsize=1024)  # clients call the same few URLs: 0.1 us instead of 3
def _match_route_cached(method: bytes, url: bytes) -> tuple[str, str, str] | None:
    return _match_route(method, url)


def _match_route(method: bytes, url: bytes) -> tuple[str, str, str] | None:
    path = url.split(b"?", 1)[0]
    if not path.startswith(b"/v2") or b"%" in path or b"{" in path or b"}" in path:
        return None
    if b"#" in url:  # a fragment (llhttp passes it on): yarl's reading is aiohttp's to apply
        return None
    try:
        parts = path.decode("ascii").split("/")[2:]  # after "", "v2"
    except UnicodeDecodeError:
        return None
    if path[3:4] not in (b"", b"/"):  # /v2x...
        return None
    count = len(parts)
    if method == b"POST":
        if count == 3 and parts[0] == "models" and parts[1] and parts[2] == INFER:
            return INFER, parts[1], ""
        if (
            count == 5
            and parts[0] == "models"
            and parts[1]
            and parts[2] == "versions"
            and parts[3]
            and parts[4] == INFER
        ):
            return INFER, parts[1], parts[3]
        return None
    if method != b"GET":
        return None
    if count == 0:
        return "server_metadata", "", ""
    if parts[0] == "health":
        if count == 2 and parts[1] in ("live", "ready"):
            return f"server_{parts[1]}", "", ""
        return None
    if parts[0] != "models" or count < 2 or not parts[1]:
        return None
    name, tail, version = parts[1], parts[2:], ""
    if not tail:  # /v2/models/stats comes before /v2/models/{model} in app.py
        return ("model_statistics", "", "") if name == "stats" else ("model_metadata", name, "")
    if tail[0] == "versions":
        if len(tail) < 2 or not tail[1]:
            return None
        version, tail = tail[1], tail[2:]
        if not tail:
            return "model_metadata", name, version
    if len(tail) == 1 and tail[0] in _MODEL_TAILS:
        return _MODEL_TAILS[tail[0]], name, version
    return None
