"""A fault-injecting HTTP proxy in front of the moto server, on 127.0.0.1: S3 as it behaves under load.

Of the requests it receives, every ``slowdown_every``-th is answered ``503 SlowDown`` (S3's throttling answer,
with its XML error body) and every ``drop_every``-th has its connection closed without an answer; the others go
to moto and their answers come back unchanged. The jobs reach it through the standard endpoint setting
(``AWS_ENDPOINT_URL_S3``), as they would reach S3.
"""

from __future__ import annotations

import http.client
import itertools
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
# Hop-by-hop headers: never forwarded (the proxy sets its own framing).
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade"}


class FaultyS3Proxy:
    """The proxy's server thread, its URL, and what it did (``counts``: forwarded / slowdown / dropped)."""

    def __init__(self, target: str, slowdown_every: int = 5, drop_every: int = 11) -> None:
        self.target = urlsplit(target)
        self.slowdown_every = slowdown_every
        self.drop_every = drop_every
        self.counts: Counter[str] = Counter()
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FaultyS3Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _fault(self) -> str:
        """What to do with the next request."""
        with self._lock:
            number = next(self._numbers)
        if number % self.drop_every == 0:
            return "dropped"
        if number % self.slowdown_every == 0:
            return "slowdown"
        return "forwarded"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect

            def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                fault = proxy._fault()
                with proxy._lock:
                    proxy.counts[fault] += 1
                if fault == "dropped":
                    # The connection goes away mid-request: the client sees a reset, with no status to read.
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault == "slowdown":
                    self._answer(503, [("Content-Type", "application/xml")], SLOW_DOWN)
                    return
                upstream = http.client.HTTPConnection(proxy.target.hostname, proxy.target.port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    kept = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
                    self._answer(response.status, kept, data)
                finally:
                    upstream.close()

            def _answer(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
                self.send_response(status)
                for key, value in headers:
                    if key.lower() != "content-length" or self.command == "HEAD":
                        self.send_header(key, value)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _relay

        return Handler
