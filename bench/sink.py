"""A tiny HTTP sink for the in-memory queue SDKs (Segment, PostHog): accepts their batch
endpoints and counts events.

Same http.server settings as FakeExponea: one thread per connection, HTTP/1.1 keep-alive,
Nagle off. Answers 200 to every POST whose body is a JSON object; counts len(body["batch"]).
"""

from __future__ import annotations

import gzip
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

OK_BODY = b'{"status": 1}'


class _SinkHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: SinkServer

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if "gzip" in (self.headers.get("Content-Encoding") or ""):
            body = gzip.decompress(body)
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        events = parsed.get("batch") if isinstance(parsed, dict) else None
        self.server.record(self.path, len(events) if isinstance(events, list) else 0)
        self._answer(200, OK_BODY)

    def do_GET(self) -> None:
        self.server.record(self.path, 0)
        self._answer(200, OK_BODY)

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)


class SinkServer(ThreadingHTTPServer):
    """Counts events and requests per path; `snapshot()` reads the counters."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__((host, port), _SinkHandler)
        self._lock = threading.Lock()
        self.events = 0
        self.requests = 0
        self.paths: dict[str, int] = {}
        self.last_event_at = 0.0  # time.monotonic() of the last request that carried events

    def server_bind(self) -> None:
        # Skip HTTPServer's reverse DNS lookup of the address.
        import socketserver

        socketserver.TCPServer.server_bind(self)
        host, port = self.socket.getsockname()[:2]
        self.server_name, self.server_port = str(host), int(port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def record(self, path: str, events: int) -> None:
        with self._lock:
            self.requests += 1
            self.events += events
            self.paths[path] = self.paths.get(path, 0) + 1
            if events:
                self.last_event_at = time.monotonic()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "events": self.events,
                "requests": self.requests,
                "paths": dict(self.paths),
                "last_event_at": self.last_event_at,
            }

    def reset(self) -> None:
        with self._lock:
            self.events = self.requests = 0
            self.paths.clear()
            self.last_event_at = 0.0
