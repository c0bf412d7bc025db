"""A blocking HTTP client for a running gateway's admin API (`gateway models|traffic|rollout`)."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

JSON_CONTENT_TYPE = "application/json"


class AdminClientError(Exception):
    """Base of every error the client raises; the message is meant for the operator."""


class ServerAnsweredError(AdminClientError):
    """The server answered with an HTTP error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message


class UnreachableError(AdminClientError):
    """No answer: the server cannot be reached, dropped the connection, or timed out."""


class BadAnswerError(AdminClientError):
    """The server answered 2xx with a body that is not the JSON the API promises."""


def normalize_url(url: str) -> str:
    """`host:port` or `http(s)://host:port[/prefix]`, without a trailing slash."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// or https:// address of a gateway")
    _ = parts.port  # raises ValueError for a port that is not a number in range
    return url.rstrip("/")


def _segment(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _error_message(status: int, reason: str, body: bytes) -> str:
    """The `error` of a V2 error body, else the body's text, else the HTTP reason."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        document = json.loads(text) if text else None
    except json.JSONDecodeError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        return str(document["error"])
    return text[:500] or reason or f"HTTP {status}"


@dataclass(frozen=True, slots=True)
class AdminClient:
    """One gateway's model control API; every method returns the decoded JSON answer."""

    base_url: str
    token: str | None = None
    timeout_s: float = 60.0

    def repository_index(self, *, ready_only: bool = False) -> Any:
        body = {"ready": True} if ready_only else {}
        return self.call("POST", "/v2/repository/index", body)

    def load(self, model: str, *, config: str | None = None, reload: bool = False) -> Any:
        parameters: dict[str, Any] = {}
        if config is not None:
            parameters["config"] = config
        if reload:
            parameters["reload"] = True
        body = {"parameters": parameters} if parameters else {}
        return self.call("POST", f"/v2/repository/models/{_segment(model)}/load", body)

    def unload(self, model: str) -> Any:
        return self.call("POST", f"/v2/repository/models/{_segment(model)}/unload", {})

    def labels(self, model: str) -> Any:
        return self.call("GET", f"/v2/models/{_segment(model)}/labels")

    def set_label(self, model: str, label: str, version: str) -> Any:
        path = f"/v2/models/{_segment(model)}/labels/{_segment(label)}"
        return self.call("PUT", path, {"version": version})

    def remove_label(self, model: str, label: str) -> Any:
        return self.call("DELETE", f"/v2/models/{_segment(model)}/labels/{_segment(label)}")

    def traffic(self, model: str) -> Any:
        return self.call("GET", f"/v2/models/{_segment(model)}/traffic")

    def set_traffic(self, model: str, policy: dict[str, Any]) -> Any:
        return self.call("PUT", f"/v2/models/{_segment(model)}/traffic", policy)

    def clear_traffic(self, model: str) -> Any:
        return self.call("DELETE", f"/v2/models/{_segment(model)}/traffic")

    def rollout(self, model: str) -> Any:
        return self.call("GET", f"/v2/models/{_segment(model)}/rollout")

    def start_rollout(self, model: str, plan: dict[str, Any]) -> Any:
        return self.call("POST", f"/v2/models/{_segment(model)}/rollout", plan)

    def abort_rollout(self, model: str) -> Any:
        return self.call("DELETE", f"/v2/models/{_segment(model)}/rollout")

    def build_request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> urllib.request.Request:
        headers = {"Accept": JSON_CONTENT_TYPE}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = JSON_CONTENT_TYPE
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return urllib.request.Request(
            self.base_url + path, data=data, headers=headers, method=method
        )

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = self.build_request(method, path, body)
        where = f"{method} {request.full_url}"
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                payload: bytes = response.read()
        except urllib.error.HTTPError as exc:
            try:
                error_body = exc.read()
            except OSError:
                error_body = b""
            finally:
                exc.close()
            raise ServerAnsweredError(
                exc.code, _error_message(exc.code, str(exc.reason), error_body)
            ) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise self._timed_out(where) from None
            reason = getattr(exc.reason, "strerror", None) or exc.reason
            raise UnreachableError(
                f"cannot connect to the gateway at {self.base_url}: {reason} "
                "(is it running there? see --url and GATEWAY_URL)"
            ) from None
        except TimeoutError:
            raise self._timed_out(where) from None
        except (OSError, http.client.HTTPException) as exc:
            raise UnreachableError(
                f"the connection to the gateway at {self.base_url} failed during {where}: "
                f"{exc or type(exc).__name__}"
            ) from None
        try:
            return json.loads(payload) if payload.strip() else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadAnswerError(
                f"{where} answered with a body that is not JSON: {payload[:200]!r}"
            ) from None

    def _timed_out(self, where: str) -> UnreachableError:
        return UnreachableError(
            f"no answer from the gateway at {self.base_url} within {self.timeout_s:g} s "
            f"({where}); the server may still complete the call"
        )
