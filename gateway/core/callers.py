"""Who is calling for inference right now, as the front ends see it.

A request that is alone (`RequestContext.solo`) may run its model on the event loop rather than
hand it to an inference thread and back (DynamicBatcher): with one caller there is nothing to
batch it with, and the hand-off is most of what the gateway adds to its latency. Under load no
request is solo, so batches form as before. The rule errs towards "not solo": a wrong "solo"
only delays others by one short model run, a wrong "not solo" costs a thread hand-off.

- Calls: what the threaded gRPC front end's workers are serving (unary calls between decoding
  and answering, open streams for their whole life); grpc.aio's calls and streams and the
  requests aiohttp serves count too, but are never solo themselves (requests those stacks have
  not yet handed to the loop are invisible).
- HTTP (httptools front end): the open connections that have carried an inference request.
  HTTP/1.1 answers one request at a time per connection, so a single such connection is a single
  caller; counting requests in progress instead would miss the requests waiting unread in other
  sockets while the loop runs a model. Connections that only probe health or scrape /metrics do
  not count.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class Callers:
    """The counts behind `solo`; calls are counted from any thread, connections on the loop."""

    def __init__(self) -> None:
        self.calls = 0
        self.http_connections = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        """Count a call (or stream) for as long as the block runs."""
        with self._lock:
            self.calls += 1
        try:
            yield
        finally:
            with self._lock:
                self.calls -= 1

    def call_solo(self) -> bool:
        """Inside call(): is this call the only inference caller?"""
        return self.calls == 1 and self.http_connections == 0

    def http_solo(self) -> bool:
        """For a request on a counted HTTP connection: is it the only inference caller?"""
        return self.http_connections == 1 and self.calls == 0
