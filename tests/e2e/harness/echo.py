"""An upstream that answers every request with what it received, as JSON:

    {"method": "GET", "path": "/x?y=1", "headers": {"host": "...", "x-tollgate-sub": "..."},
     "body_bytes": 0}

Header names are lower-cased; a header received several times is joined with ", ".
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .ports import free_port


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        headers: dict[str, str] = {}
        for k, v in self.headers.items():
            k = k.lower()
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        body = json.dumps({"method": self.command, "path": self.path, "headers": headers,
                           "body_bytes": length}).encode()
        self.server.requests += 1  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _answer

    def log_message(self, *args) -> None:  # keep test output quiet
        pass


class EchoServer:
    """Threaded echo upstream on 127.0.0.1; ``.port``, ``.requests`` (count)."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.requests = 0  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def requests(self) -> int:
        return self.httpd.requests  # type: ignore[attr-defined]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "EchoServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
