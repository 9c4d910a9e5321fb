"""Loopback HTTP plumbing for FakeExponea: a threaded HTTP/1.1 server that can drop connections."""

from __future__ import annotations

import contextlib
import logging
import select
import selectors
import socket
import socketserver
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_CHUNK_LINE_BYTES = 64 * 1024
JOIN_TIMEOUT_SECONDS = 5.0
JSON_TYPE = ("Content-Type", "application/json")
INTERNAL_ERROR_BODY = b'{"success": false, "errors": ["FakeExponea internal error"]}'


@dataclass(frozen=True)
class Incoming:
    """A request, fully read."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True)
class Outgoing:
    """What to answer; status None closes the connection without writing a byte.

    With `then`, the handler waits `delay` seconds and answers what `then()` returns, unless
    the server stops or the client hangs up meanwhile (then the connection is just closed).
    With `byte_interval`, the whole answer (or only its body, with `headers_first`) is written
    one byte at a time, that many seconds apart, then the connection is closed. Without
    `declare_length` there is no Content-Length: the body ends when the connection closes.
    `on_hangup` is called when the client closes the connection before the answer is out.
    """

    status: int | None
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0
    then: Callable[[], Outgoing] | None = None
    byte_interval: float = 0.0
    headers_first: bool = False
    declare_length: bool = True
    on_hangup: Callable[[], None] | None = None


Responder = Callable[[Incoming], Outgoing]


class _BadFraming(ValueError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Without this every keep-alive answer stalls ~40 ms (Nagle + delayed ACK).
    disable_nagle_algorithm = True
    server: LoopbackServer

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    def _serve(self) -> None:
        try:
            body = self._read_body()
        except _BadFraming as exc:
            self.close_connection = True
            message = str(exc).encode()
            self._send(Outgoing(exc.status, message, (("Content-Type", "text/plain"),)))
            return
        incoming = Incoming(self.command, self.path, list(self.headers.items()), body)
        out = self._call(lambda: self.server.responder(incoming))
        if out.delay > 0 and self.server.stopping.wait(out.delay):
            out = Outgoing(None)  # stopped while waiting: the answer never comes
        elif out.then is not None:
            out = Outgoing(None) if self._client_gone() else self._call(out.then)
        if out.status is None:
            self.close_connection = True
            return
        self._send(out)

    def _call(self, produce: Callable[[], Outgoing]) -> Outgoing:
        try:
            return produce()
        except Exception:
            log.exception("FakeExponea could not answer %s %s", self.command, self.path)
            return Outgoing(500, INTERNAL_ERROR_BODY, (JSON_TYPE,))

    def _client_gone(self) -> bool:
        """True when the client closed its side (e.g. it timed out) while we waited."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _send(self, out: Outgoing) -> None:
        assert out.status is not None
        try:
            if out.byte_interval > 0:
                self._trickle(out)
            else:
                self._write(out)
        except OSError:  # broken pipe, reset: the client hung up before the answer was out
            self.close_connection = True
            if out.on_hangup is not None:
                out.on_hangup()

    def _write(self, out: Outgoing) -> None:
        assert out.status is not None
        self.send_response(out.status)
        for name, value in out.headers:
            self.send_header(name, value)
        if out.declare_length:
            self.send_header("Content-Length", str(len(out.body)))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(out.body)

    def _head(self, out: Outgoing) -> bytes:
        assert out.status is not None
        reason = self.responses.get(out.status, ("",))[0]
        lines = [f"HTTP/1.1 {out.status} {reason}"]
        lines += [f"{name}: {value}" for name, value in out.headers]
        lines += [f"Content-Length: {len(out.body)}", "Connection: close", "", ""]
        return "\r\n".join(lines).encode("latin-1")

    def _trickle(self, out: Outgoing) -> None:
        """Write the answer a byte at a time; stop when the client or the server goes."""
        self.close_connection = True
        head, pending = self._head(out), out.body
        if out.headers_first:
            self.wfile.write(head)
        else:
            pending = head + pending
        for index in range(len(pending)):
            if self._client_gone():
                raise ConnectionResetError("the client closed the connection")
            self.wfile.write(pending[index : index + 1])
            if self.server.stopping.wait(out.byte_interval):
                return

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        raw = self.headers.get("Content-Length")
        if raw is None:
            return b""
        try:
            length = int(raw)
        except ValueError:
            raise _BadFraming(400, "bad Content-Length") from None
        if length < 0:
            raise _BadFraming(400, "bad Content-Length")
        if length > MAX_BODY_BYTES:
            raise _BadFraming(413, "request body too large")
        body = self.rfile.read(length)
        if len(body) < length:
            raise _BadFraming(400, "request body shorter than Content-Length")
        return body

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(MAX_CHUNK_LINE_BYTES)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadFraming(400, "bad chunk size") from None
            if size == 0:
                while self.rfile.readline(MAX_CHUNK_LINE_BYTES) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            total += size
            if total > MAX_BODY_BYTES:
                raise _BadFraming(413, "request body too large")
            parts.append(self.rfile.read(size))
            self.rfile.readline(MAX_CHUNK_LINE_BYTES)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class LoopbackServer(ThreadingHTTPServer):
    """Serves each connection on a daemon thread; stop() also closes kept-alive connections."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], responder: Responder) -> None:
        self.responder = responder
        self.stopping = threading.Event()
        self._connections: dict[Any, threading.Thread] = {}
        self._connections_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wake_read, self._wake_write = socket.socketpair()
        try:
            super().__init__(address, _Handler)
        except BaseException:
            self._wake_read.close()
            self._wake_write.close()
            raise
        # The loop calls handle_request() only when a connection waits: never block there.
        self.timeout = 0

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn) that can take seconds.
        socketserver.TCPServer.server_bind(self)
        host, port = self.socket.getsockname()[:2]
        self.server_name, self.server_port = str(host), int(port)

    @property
    def port(self) -> int:
        return self.server_port

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._accept_loop, name=f"FakeExponea:{self.port}", daemon=True
        )
        self._thread.start()

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(self._wake_read, selectors.EVENT_READ)
            while not self.stopping.is_set():
                for key, _ in selector.select():
                    if key.fileobj is self.socket and not self.stopping.is_set():
                        self.handle_request()

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name=f"FakeExponea:{self.port}:connection",
            daemon=True,
        )
        with self._connections_lock:
            self._connections[request] = thread
        thread.start()

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("FakeExponea connection %s ended with an error", client_address, exc_info=True)

    def stop(self) -> None:
        """Stop accepting, close the listening socket and every open connection, then return."""
        self.stopping.set()
        with contextlib.suppress(OSError):
            self._wake_write.send(b"\0")
        if self._thread is not None:
            self._thread.join()
        self.server_close()
        with self._connections_lock:
            live = list(self._connections.items())
            for connection, _ in live:
                with contextlib.suppress(OSError):  # wakes a handler waiting to read
                    connection.shutdown(socket.SHUT_RDWR)
        for _, thread in live:
            thread.join(JOIN_TIMEOUT_SECONDS)
        self._wake_read.close()
        self._wake_write.close()
