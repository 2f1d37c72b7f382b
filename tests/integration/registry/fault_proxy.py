"""An HTTP proxy on loopback in front of the real registry that bends chosen answers: a status of
its own instead of the registry's (a 429 with Retry-After, a 503), an answer held back for a
while, or a header of the registry's answer dropped or rewritten. Every other request reaches the
registry and its answer comes back as it was (a Location moved to the proxy)."""

from __future__ import annotations

import contextlib
import http.client
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Fault:
    """What to do with the requests of `method` whose path matches `path` (a regex)."""

    method: str
    path: str
    status: int | None = None
    """Answer this status (with `headers` and `body`) instead of the registry's."""
    forwarded: bool = False
    """With `status`: the registry is sent the request (and completes it) all the same, as a
    gateway that gave up waiting for the registry's answer."""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0
    """Seconds to wait before answering."""
    header: tuple[str, str | None] | None = None
    """(name, value) to set in the registry's answer; value None drops the header."""
    times: int | None = None
    """How many requests it bends; None: all."""
    drip: tuple[int, float] | None = None
    """With `status`: `body` sent (under its Content-Length) so many bytes at a time, one piece every
    so many seconds, until the client hangs up."""

    def matches(self, method: str, path: str) -> bool:
        return method == self.method and re.search(self.path, path) is not None and self.times != 0


@dataclass
class FaultProxy:
    address: str
    upstream: str
    faults: list[Fault] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    released: threading.Event = field(default_factory=threading.Event)

    def uri(self, path: str) -> str:
        return f"oci://{self.address}/{path}"

    def fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            self.requests.append((method, path))
            for fault in self.faults:
                if fault.matches(method, path):
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None

    def count(self, method: str, path: str) -> int:
        return sum(1 for m, p in self.requests if m == method and re.search(path, p))


class _Quiet(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that hung up on a held answer: what the test wanted


@contextmanager
def proxying(upstream: str) -> Iterator[FaultProxy]:
    proxy: FaultProxy

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def handle_one(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            fault = proxy.fault(self.command, self.path)
            if fault is not None and fault.delay:
                proxy.released.wait(fault.delay)
            if fault is not None and fault.status is not None:
                if fault.forwarded:
                    self.send(body)
                self.send_response(fault.status)
                for name, value in fault.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(fault.body)))
                self.end_headers()
                piece, every = fault.drip or (len(fault.body) or 1, 0.0)
                for start in range(0, len(fault.body), piece):
                    if proxy.released.wait(every):
                        return
                    self.wfile.write(fault.body[start : start + piece])
                return
            self.forward(body, fault)

        def send(self, body: bytes) -> tuple[http.client.HTTPResponse, bytes]:
            """The registry's answer to this request, and its body."""
            host, _, port = proxy.upstream.rpartition(":")
            skipped = ("host", "connection", "content-length", "transfer-encoding")
            headers = {k: v for k, v in self.headers.items() if k.lower() not in skipped}
            connection = http.client.HTTPConnection(host, int(port), timeout=60)
            sends_body = body or self.command in ("PUT", "POST", "PATCH")
            connection.request(self.command, self.path, body=body if sends_body else None, headers=headers)
            answer = connection.getresponse()
            data = answer.read()
            connection.close()
            return answer, data

        def forward(self, body: bytes, fault: Fault | None) -> None:
            answer, data = self.send(body)
            self.send_response(answer.status, answer.reason)
            replaced = fault.header if fault is not None else None
            for name, value in answer.getheaders():
                if name.lower() in ("content-length", "connection", "transfer-encoding"):
                    continue
                if replaced is not None and name.lower() == replaced[0].lower():
                    continue
                self.send_header(name, value.replace(proxy.upstream, proxy.address))
            if replaced is not None and replaced[1] is not None:
                self.send_header(*replaced)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = handle_one

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = _Quiet(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    proxy = FaultProxy(f"127.0.0.1:{server.server_address[1]}", upstream)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.released.set()
        with contextlib.suppress(OSError):
            server.shutdown()
            server.server_close()
