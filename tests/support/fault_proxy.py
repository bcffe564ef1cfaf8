"""A fault-injecting HTTP reverse proxy to put in front of a test S3 server.

Clients point their endpoint at the proxy; it forwards each request to the
upstream and relays the answer, except when a seeded random draw picks a
fault. The faults are the ones an S3 client meets in production: throttling,
a connection lost before the request arrived, and a connection lost after the
write happened but before the client heard so.

Request bodies are forwarded byte for byte, chunked framing included, so
aws-chunked payloads and their signatures reach the upstream untouched; the
Host header is forwarded unchanged because SigV4 signs it. Bodies are held
in memory whole: this is for tests, not for gigabytes.
"""

from __future__ import annotations

import http.client
import random
import socket
import socketserver
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# They describe one hop's connection, and the proxy already answered
# Expect: 100-continue itself, having read the whole body.
_REQUEST_HEADERS_NOT_FORWARDED = frozenset({"connection", "keep-alive", "proxy-connection", "expect"})
_CONDITIONAL_HEADERS = frozenset({"if-none-match", "if-match"})
# The response is relayed with its decoded body and a Content-Length.
_RESPONSE_HEADERS_NOT_RELAYED = frozenset({"connection", "keep-alive", "transfer-encoding"})

_SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate."
    b"</Message><RequestId>fault-proxy</RequestId></Error>"
)

FAULTS = ("503", "drop_before", "drop_after")


class FaultProxy:
    """A threaded reverse proxy on 127.0.0.1 (a free port, see .url) that
    injects faults into the traffic to upstream_url.

    Arguments:
      upstream_url: "http://host:port" of the server to forward to.
      seed: seeds the fault draws (one draw per request, under a lock).
      p_503: probability of answering 503 SlowDown without forwarding.
      p_drop_before: probability of closing the client connection, without
        a response, before forwarding.
      p_drop_after: probability of forwarding, then closing the client
        connection instead of relaying the response.
      strip_conditional_headers: forward requests without If-None-Match and
        If-Match, like a store that ignores conditional writes.

    .stats counts requests and each fault. Use as a context manager or call
    close(), which also ends open keep-alive connections.
    """

    def __init__(
        self,
        upstream_url: str,
        seed: int,
        p_503: float = 0.0,
        p_drop_before: float = 0.0,
        p_drop_after: float = 0.0,
        strip_conditional_headers: bool = False,
    ) -> None:
        upstream = urllib.parse.urlsplit(upstream_url)
        if upstream.scheme != "http" or not upstream.port:
            raise ValueError(f"upstream_url must be http://host:port, got {upstream_url!r}")
        self._thresholds = []
        total = 0.0
        for fault, p in zip(FAULTS, (p_503, p_drop_before, p_drop_after)):
            total += p
            self._thresholds.append((total, fault))
        if total > 1.0:
            raise ValueError("fault probabilities add up to more than 1")
        self.upstream = (upstream.hostname, upstream.port)
        self.strip_conditional_headers = strip_conditional_headers
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stats = {"requests": 0, **{fault: 0 for fault in FAULTS}}
        self._connections: set[socket.socket] = set()
        self._closed = False
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        host, port = self._server.server_address[:2]
        self.url = f"http://{host}:{port}"
        # shutdown() waits for the serving loop to notice, which it does once
        # per poll interval (0.5 s by default, paid by every test's close()).
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name=f"FaultProxy:{port}", daemon=True
        )
        self._thread.start()

    @property
    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._stats)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        with self._lock:
            self._closed = True
            connections = list(self._connections)
        # Handler threads of idle keep-alive connections would otherwise go on
        # serving a client that still holds a pooled connection.
        for conn in connections:
            _hang_up(conn)

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _draw(self) -> str | None:
        with self._lock:
            self._stats["requests"] += 1
            r = self._rng.random()
            for threshold, fault in self._thresholds:
                if r < threshold:
                    self._stats[fault] += 1
                    return fault
            return None

    def _track(self, conn: socket.socket, open_: bool) -> None:
        with self._lock:
            if not open_:
                self._connections.discard(conn)
                return
            if not self._closed:
                self._connections.add(conn)
                return
        # Accepted just before close() and missed by it.
        _hang_up(conn)

    def _forward(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes):
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            # The client's own Host header is sent instead: it is signed.
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                conn.putheader(name, value)
            conn.endheaders(body or None)
            response = conn.getresponse()
            return response.status, response.reason, response.getheaders(), response.read()
        finally:
            conn.close()


def _hang_up(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # A pool of concurrent clients connects at once; the default backlog of 5
    # makes the kernel drop SYNs, and each costs the client a 1 s retransmit.
    request_queue_size = 128
    proxy: FaultProxy

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name, which can hang on
        # machines with slow reverse DNS; the name is never used here.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address) -> None:
        # Clients that hang up mid-request (including after our own dropped
        # connections) are expected here; anything else is a bug to show.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and 100-continue answered by parse_request
    timeout = 60  # an idle keep-alive connection ends eventually
    # Headers and body go out in two writes; with Nagle's algorithm the
    # second waits for the client's delayed ACK, 40 ms per response.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.proxy._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.proxy._track(self.connection, False)

    def log_message(self, format, *args) -> None:
        pass  # a line per request would flood test output; .stats has the counts

    def _proxy(self) -> None:
        proxy = self.server.proxy
        # The body is read even when the request is then refused, so that the
        # client sees a clean answer or a clean hang-up, not a reset mid-send.
        body = self._read_body()
        fault = proxy._draw()
        if fault == "503":
            self._send(503, "Service Unavailable", [("Content-Type", "application/xml")], _SLOWDOWN_BODY)
            return
        if fault == "drop_before":
            self.close_connection = True
            return
        try:
            status, reason, headers, payload = proxy._forward(self.command, self.path, self._forwarded_headers(), body)
        except OSError as exc:
            self._send(502, "Bad Gateway", [("Content-Type", "text/plain")], f"upstream: {exc}".encode())
            return
        if fault == "drop_after":
            self.close_connection = True
            return
        relayed = [(k, v) for k, v in headers if k.lower() not in _RESPONSE_HEADERS_NOT_RELAYED]
        self._send(status, reason, relayed, payload)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_OPTIONS = do_PATCH = _proxy

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked_raw()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _read_chunked_raw(self) -> bytes:
        """The chunked body as sent, framing and trailers included; only
        parsed to find where it ends."""
        raw = bytearray()
        while True:
            line = self.rfile.readline(65537)
            raw += line
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                break
            raw += self.rfile.read(size + 2)  # the chunk and its CRLF
        while True:  # trailer fields, up to the empty line
            line = self.rfile.readline(65537)
            raw += line
            if line in (b"\r\n", b"\n", b""):
                return bytes(raw)

    def _forwarded_headers(self) -> list[tuple[str, str]]:
        dropped = _REQUEST_HEADERS_NOT_FORWARDED
        if self.server.proxy.strip_conditional_headers:
            dropped = dropped | _CONDITIONAL_HEADERS
        return [(k, v) for k, v in self.headers.items() if k.lower() not in dropped]

    def _send(self, status: int, reason: str, headers: list[tuple[str, str]], payload: bytes) -> None:
        self.send_response_only(status, reason)
        for name, value in headers:
            self.send_header(name, value)
        has_body = self.command != "HEAD" and status >= 200 and status not in (204, 304)
        if has_body and not any(k.lower() == "content-length" for k, _ in headers):
            self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if has_body:
            self.wfile.write(payload)
