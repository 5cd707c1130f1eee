"""A fault-injecting HTTP proxy in front of a real server (the auth server), on 127.0.0.1.

Every request is forwarded to the upstream as it came (method, path, headers, body) and its
answer relayed, except on paths the test told to misbehave:

    proxy = FaultProxy(upstream_port=auth.port)      # Envoy's auth cluster -> proxy.port
    proxy.fail("/edge/revocations", 500)              # answer 500 without asking upstream
    proxy.fail("/edge/revocations", 200, b"{oops")    # answer garbage
    proxy.delay("/oauth2/jwks", 3.0)                  # forward, answer after 3 s
    proxy.rewrite("/edge/revocations", fn)            # forward; fn(status, body) -> (status, body)
    proxy.drop("/oauth2/introspect")                  # close the connection without an answer
    proxy.heal("/edge/revocations")                   # (no argument: every path) forward again
    proxy.hits["/edge/revocations"]                   # requests seen per path (no query)
    proxy.faulted["/edge/revocations"]                # of which answered by a fault

A fault applies to every path that starts with its prefix (the query string is not part of
the match). When the upstream does not answer, the proxy answers 502.
"""
from __future__ import annotations

import collections
import http.client
import socket
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from .ports import free_port

# Hop-by-hop headers (RFC 9110 §7.6.1) and the ones the proxy recomputes.
_SKIP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
         "upgrade", "content-length", "host"}

Rewrite = Callable[[int, bytes], "tuple[int, bytes]"]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A client that goes away (Envoy's timeout, a reset) is no error worth a traceback."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


@dataclass
class Fault:
    status: int | None = None       # answer this status without forwarding
    body: bytes = b""
    content_type: str = "application/json"
    delay_s: float = 0.0            # wait before answering (forwarded or not)
    rewrite: Rewrite | None = None  # forward, then transform the answer
    drop: bool = False              # close the connection without an answer


class FaultProxy:
    def __init__(self, upstream_port: int, port: int | None = None,
                 upstream_timeout: float = 10.0):
        self.port = port or free_port()
        self.upstream_port = upstream_port
        self.upstream_timeout = upstream_timeout
        self.hits: collections.Counter[str] = collections.Counter()
        self.faulted: collections.Counter[str] = collections.Counter()
        self._faults: dict[str, Fault] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                fault = proxy._fault_for(path)
                with proxy._lock:
                    proxy.hits[path] += 1
                    if fault is not None:
                        proxy.faulted[path] += 1
                if fault is not None and fault.delay_s:
                    proxy._stopping.wait(fault.delay_s)
                if fault is not None and fault.drop:
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                if fault is not None and fault.status is not None:
                    self._answer(fault.status, fault.content_type, fault.body, {})
                    return
                status, ctype, answer, headers = proxy._forward(
                    self.command, self.path, self.headers.items(), body)
                if fault is not None and fault.rewrite is not None:
                    status, answer = fault.rewrite(status, answer)
                self._answer(status, ctype, answer, headers)

            def _answer(self, status: int, ctype: str, body: bytes,
                        headers: dict[str, str]) -> None:
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        if k.lower() not in _SKIP and k.lower() != "content-type":
                            self.send_header(k, v)
                    self.send_header("content-type", ctype)
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(body)
                except OSError:
                    self.close_connection = True  # the client gave up (e.g. its timeout)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle

            def log_message(self, *args) -> None:
                pass

        self.httpd = _Server(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ faults
    def _fault_for(self, path: str) -> Fault | None:
        with self._lock:
            best = None
            for prefix, f in self._faults.items():
                if path.startswith(prefix) and (best is None or len(prefix) > len(best[0])):
                    best = (prefix, f)
            return best[1] if best else None

    def set_fault(self, prefix: str, fault: Fault) -> None:
        with self._lock:
            self._faults[prefix] = fault

    def fail(self, prefix: str, status: int, body: bytes | None = None,
             content_type: str = "application/json", delay_s: float = 0.0) -> None:
        """Answer `status` (with `body`, default an RFC 6749 error) without forwarding."""
        if body is None:
            body = b'{"error":"server_error","error_description":"injected fault"}'
        self.set_fault(prefix, Fault(status=status, body=body, content_type=content_type,
                                     delay_s=delay_s))

    def delay(self, prefix: str, seconds: float) -> None:
        """Forward, but answer only after `seconds`."""
        self.set_fault(prefix, Fault(delay_s=seconds))

    def rewrite(self, prefix: str, fn: Rewrite) -> None:
        """Forward, then answer fn(status, body) instead of the upstream's answer."""
        self.set_fault(prefix, Fault(rewrite=fn))

    def drop(self, prefix: str) -> None:
        """Close the connection without answering."""
        self.set_fault(prefix, Fault(drop=True))

    def heal(self, prefix: str | None = None) -> None:
        with self._lock:
            if prefix is None:
                self._faults.clear()
            else:
                self._faults.pop(prefix, None)

    # ------------------------------------------------------------------ forwarding
    def _forward(self, method: str, path: str, headers, body: bytes
                 ) -> tuple[int, str, bytes, dict[str, str]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port,
                                          timeout=self.upstream_timeout)
        try:
            out = {k: v for k, v in headers if k.lower() not in _SKIP}
            out["host"] = f"127.0.0.1:{self.upstream_port}"
            conn.request(method, path, body=body or None, headers=out)
            r = conn.getresponse()
            data = r.read()
            return (r.status, r.getheader("content-type") or "application/octet-stream",
                    data, {k: v for k, v in r.getheaders()})
        except (OSError, http.client.HTTPException) as e:
            msg = f'{{"error":"bad_gateway","error_description":"{type(e).__name__}"}}'
            return 502, "application/json", msg.encode(), {}
        finally:
            conn.close()

    def stop(self) -> None:
        self._stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
