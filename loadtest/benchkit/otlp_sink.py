"""A minimal OTLP/HTTP trace sink: `POST /v1/traces` answered 200, everything counted.

Standalone (standard library only; no relative imports) so that it runs as a script with any
interpreter, pinned to the client core by telemetry_bench.py:

    taskset -c 1 .venv/bin/python loadtest/benchkit/otlp_sink.py

It prints `port <N>` on its first line of stdout, serves 127.0.0.1:<N> until stdin closes or it
gets SIGTERM, and answers `GET /stats` with what it received so far (JSON): export calls, bytes
on the wire, and, when `opentelemetry.proto` can be imported (the server's .venv has it), spans
counted by the first word of their name (`infer`, `queue`, `inference`, `batch`). Decoding costs
the sink's core a little; `--no-decode` counts bytes only.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import threading
import time
import zlib
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Tally:
    """What the sink received; shared by the handler threads."""

    def __init__(self, decode: bool) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.bytes = 0
        self.spans = 0
        self.by_name: Counter[str] = Counter()
        self.decode_errors = 0
        self.other_paths = 0
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.parser: Any = None
        if decode:
            try:
                from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
            except ImportError:
                self.parser = None
            else:
                self.parser = trace_service_pb2.ExportTraceServiceRequest

    def add(self, body: bytes, wire_bytes: int) -> None:
        names: Counter[str] = Counter()
        failed = False
        if self.parser is not None:
            try:
                message = self.parser.FromString(body)
                for resource in message.resource_spans:
                    for scope in resource.scope_spans:
                        for span in scope.spans:
                            names[span.name.split(" ", 1)[0]] += 1
            except Exception:
                failed = True
        now = time.time()
        with self.lock:
            self.requests += 1
            self.bytes += wire_bytes
            self.spans += sum(names.values())
            self.by_name.update(names)
            self.decode_errors += failed
            self.first_at = self.first_at or now
            self.last_at = now

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": self.requests,
                "bytes": self.bytes,
                "decoded": self.parser is not None,
                "spans": self.spans if self.parser is not None else None,
                "spans_by_name": dict(self.by_name),
                "decode_errors": self.decode_errors,
                "other_paths": self.other_paths,
                "cpu_s": time.process_time(),
                "pid": os.getpid(),
            }


def handler(tally: Tally) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the exporter's requests.Session expects

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if self.path.rstrip("/") != "/v1/traces":
                with tally.lock:
                    tally.other_paths += 1
                self._answer(404, b"", "text/plain")
                return
            encoding = (self.headers.get("Content-Encoding") or "").lower()
            body = raw
            if encoding == "gzip":
                body = gzip.decompress(raw)
            elif encoding == "deflate":
                body = zlib.decompress(raw)
            tally.add(body, len(raw))
            # An empty ExportTraceServiceResponse: zero bytes of protobuf.
            self._answer(200, b"", "application/x-protobuf")

        def do_GET(self) -> None:
            if self.path == "/stats":
                self._answer(200, json.dumps(tally.snapshot()).encode(), "application/json")
            else:
                self._answer(404, b"", "text/plain")

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per export call would only cost CPU

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="OTLP/HTTP trace sink that counts what it gets")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-decode", action="store_true", help="count bytes, not spans")
    parser.add_argument("--lifetime", type=float, default=3600.0, help="seconds before it exits")
    args = parser.parse_args(argv)
    tally = Tally(decode=not args.no_decode)
    server = ThreadingHTTPServer((args.host, args.port), handler(tally))
    server.daemon_threads = True
    print(f"port {server.server_address[1]}", flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # Ends when the parent closes our stdin (or dies), or at the end of the lifetime.
    watcher = threading.Thread(target=sys.stdin.read, daemon=True)
    watcher.start()
    watcher.join(args.lifetime)
    server.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
