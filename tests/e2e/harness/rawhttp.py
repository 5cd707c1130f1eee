"""HTTP/1.1 over a plain socket, for requests that `requests` would refuse or normalize:
bytes that are not UTF-8 in the request line or headers, repeated headers, a
Content-Length that does not match the body, bodies sent one byte at a time.

    data = build("POST", "/oauth2/token", [("content-type", "text/plain")], b"x")
    r = exchange(port, data)            # sends `Connection: close`, reads to EOF
    r.status, r.header("cache-control"), r.json()
"""
from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field

Header = tuple["str | bytes", "str | bytes"]


def _b(v: str | bytes) -> bytes:
    return v if isinstance(v, bytes) else v.encode("latin-1")


def build(method: str | bytes, target: str | bytes, headers: list[Header] = (),
          body: bytes | None = None, *, host: str = "127.0.0.1", close: bool = True,
          content_length: bool = True) -> bytes:
    """A request as bytes. `Host` and (unless ``close=False``) `Connection: close` are
    added; `Content-Length` too when there is a body and ``content_length`` is true."""
    lines = [_b(method) + b" " + _b(target) + b" HTTP/1.1", b"Host: " + _b(host)]
    if close:
        lines.append(b"Connection: close")
    lines += [_b(k) + b": " + _b(v) for k, v in headers]
    if body is not None and content_length:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    raw: bytes = b""

    def header(self, name: str, default: str | None = None) -> str | None:
        for k, v in self.headers:
            if k == name.lower():
                return v
        return default

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name.lower()]

    def json(self):
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def _dechunk(data: bytes) -> bytes:
    out, i = b"", 0
    while True:
        j = data.find(b"\r\n", i)
        if j < 0:
            return out
        size = int(data[i:j].split(b";")[0] or b"0", 16)
        if size == 0:
            return out
        out += data[j + 2:j + 2 + size]
        i = j + 2 + size + 2


def parse(data: bytes, head: bool = False) -> RawResponse | None:
    """The first response in ``data`` (None when there is no complete head)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    r = RawResponse(status=int(parts[1]), reason=parts[2] if len(parts) > 2 else "",
                    raw=data)
    for line in lines[1:]:
        k, _, v = line.partition(":")
        r.headers.append((k.strip().lower(), v.strip()))
    rest = data[end + 4:]
    if head or r.status in (204, 304) or 100 <= r.status < 200:
        return r
    if (r.header("transfer-encoding") or "").lower() == "chunked":
        r.body = _dechunk(rest)
    elif r.header("content-length") is not None:
        r.body = rest[:int(r.header("content-length"))]
    else:
        r.body = rest
    return r


def _complete(data: bytes, head: bool) -> bool:
    """Whether ``data`` holds a whole response (head and the body its framing announces)."""
    r = parse(data, head=head)
    if r is None:
        return False
    if head or r.status in (204, 304) or 100 <= r.status < 200:
        return True
    rest = data[data.find(b"\r\n\r\n") + 4:]
    if (r.header("transfer-encoding") or "").lower() == "chunked":
        return rest.endswith(b"0\r\n\r\n")
    if r.header("content-length") is not None:
        return len(rest) >= int(r.header("content-length"))
    return False


def read_until_closed(sock: socket.socket, timeout: float,
                      stop_when_complete: bool = False, head: bool = False
                      ) -> tuple[bytes, str]:
    """Read until the peer closes: (bytes, "eof" | "reset" | "timeout"), or with
    ``stop_when_complete`` until a whole response is in ("complete")."""
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        if stop_when_complete and _complete(data, head):
            return data, "complete"
        left = deadline - time.monotonic()
        if left <= 0:
            return data, "timeout"
        sock.settimeout(left)
        try:
            chunk = sock.recv(1 << 16)
        except socket.timeout:
            return data, "timeout"
        except (ConnectionResetError, BrokenPipeError):
            return data, "reset"
        if not chunk:
            return data, "eof"
        data += chunk


def exchange(port: int, data: bytes, timeout: float = 10.0, head: bool = False,
             host: str = "127.0.0.1", wait_close: bool = True) -> RawResponse:
    """Send ``data`` on a new connection and read the answer until the server closes (or,
    without ``wait_close``, until the response is complete: Envoy waits for the client to
    close first). Fails when there is no complete response or the server does not close
    in time."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except (ConnectionResetError, BrokenPipeError):
            pass  # the server answered and closed before taking everything; read it
        got, how = read_until_closed(s, timeout, stop_when_complete=not wait_close,
                                     head=head)
    r = parse(got, head=head)
    assert r is not None, f"no HTTP response ({how}) to {data[:120]!r}: {got[:200]!r}"
    assert how != "timeout", f"the server kept the connection open after {data[:80]!r}"
    return r
