"""Runs a real gateway on port 0 in a background event loop, for synchronous test clients."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from gateway.app.server import Gateway
from gateway.config.settings import GatewaySettings

T = TypeVar("T")


class RunningGateway:
    """A started Gateway on its own thread and loop; `stop()` drains and joins it."""

    def __init__(self, repository: Path, **settings: Any) -> None:
        settings.setdefault("event_loop", "asyncio")
        self.settings = GatewaySettings(
            model_repository=repository, http_port=0, grpc_port=0, **settings
        )
        if self.settings.event_loop == "uvloop":  # as `gateway serve` runs by default
            import uvloop

            self._loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        else:
            self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.gateway = Gateway(self.settings)
        try:
            self.call(self.gateway.start())
        except BaseException:
            self.stop()
            raise

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.gateway.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.gateway.grpc_port}"

    def stop(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self.call(self.gateway.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
