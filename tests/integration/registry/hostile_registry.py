"""A registry on loopback that answers each path as a test tells it: a copy of what the real
registry served, bent out of shape. A real HTTP server (the standard library's), so the client's
real sockets, streaming and timeouts are what is tested."""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import requests
from quiet_http import QuietHTTPServer

from quantship import oci

Answer = Callable[[BaseHTTPRequestHandler], None]
"""Writes one whole answer (status, headers, body) to the handler."""
SERVED_REPOSITORY = "quantship/served"
"""Where `serving_a_copy` serves what it copied."""
TITLE = "org.opencontainers.image.title"
"""The annotation that names a layer's file."""


@dataclass
class HostileRegistry:
    address: str
    answers: dict[str, Answer]
    """URL path -> its answer. Unless told, /v2/ answers 200 and any other path `otherwise`."""
    otherwise: Answer | None = None
    """The answer to a path `answers` does not name (a push's blobs, whatever their digests);
    None: 404."""
    requested: list[str] = field(default_factory=list)
    authorized: list[bool] = field(default_factory=list)
    """For each request in `requested`: whether it carried an Authorization header."""
    released: threading.Event = field(default_factory=threading.Event)
    """Set at the end: answers that stall stop waiting."""

    def uri(self, repository: str, tag: str = "v1") -> str:
        return f"oci://{self.address}/{repository}:{tag}"

    def manifest_path(self, repository: str, tag: str = "v1") -> str:
        return f"/v2/{repository}/manifests/{tag}"

    def blob_path(self, repository: str, digest: str) -> str:
        return f"/v2/{repository}/blobs/{digest}"

    def copy(self, source: str, repository: str) -> tuple[bytes, dict[str, bytes]]:
        """Serve, under `repository:v1`, what a real registry serves at `source` (oci://...:TAG):
        its manifest and its blobs, byte for byte. Returns them, to bend."""
        reference = oci.Reference.parse(source)
        base = f"http://{reference.registry}/v2/{reference.repository}"
        accept = {"Accept": oci.MANIFEST_MEDIA_TYPE}
        manifest = requests.get(f"{base}/manifests/{reference.tag}", headers=accept, timeout=10).content
        blobs = {
            layer["digest"]: requests.get(f"{base}/blobs/{layer['digest']}", timeout=10).content
            for layer in json.loads(manifest)["layers"]
        }
        self.answers[self.manifest_path(repository)] = body(manifest, oci.MANIFEST_MEDIA_TYPE)
        for digest, content in blobs.items():
            self.answers[self.blob_path(repository, digest)] = body(content)
        return manifest, blobs


def body(content: bytes, content_type: str = "application/octet-stream", status: int = 200) -> Answer:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(content)))
        handler.end_headers()
        with contextlib.suppress(OSError):  # the client hung up, refusing what it read: not an error here
            handler.wfile.write(content)

    return answer


def challenge(header: str) -> Answer:
    """A 401 asking for `header` (WWW-Authenticate), whatever the request carried."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(401)
        handler.send_header("WWW-Authenticate", header)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return answer


def asks_basic(then: Answer) -> Answer:
    """A 401 asking for basic auth to a request that carries no Authorization, else `then`."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        if handler.headers.get("Authorization") is None:
            challenge('Basic realm="hostile"')(handler)
        else:
            then(handler)

    return answer


def endless(chunk: bytes, *, stop: threading.Event, limit: int = 2**30, status: int = 200) -> Answer:
    """A body that goes on (up to `limit` bytes, with no Content-Length) until the client hangs up."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", oci.MANIFEST_MEDIA_TYPE)
        handler.end_headers()
        sent = 0
        try:
            while sent < limit and not stop.is_set():
                handler.wfile.write(chunk)
                sent += len(chunk)
        except OSError:
            pass  # the client hung up: what a refusal looks like from here

    return answer


def redirect(location: str, *, stop: threading.Event) -> Answer:
    """A 307 to `location` whose body goes on until the client hangs up (or `stop`)."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(307)
        handler.send_header("Location", location)
        handler.end_headers()
        try:
            while not stop.is_set():
                handler.wfile.write(b"<html>moved</html>" * 4096)
        except OSError:
            pass

    return answer


def stalls(*, until: threading.Event) -> Answer:
    """Nothing at all, not even a status line, until `until` is set."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        until.wait(60)

    return answer


def stalls_after(content: bytes, declared: int, *, until: threading.Event) -> Answer:
    """Headers and `content` (declaring `declared` bytes), then nothing until `until` is set."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", oci.MANIFEST_MEDIA_TYPE)
        handler.send_header("Content-Length", str(declared))
        handler.end_headers()
        handler.wfile.write(content)
        handler.wfile.flush()
        until.wait(60)

    return answer


def drips(content: bytes, *, piece: int, every: float, until: threading.Event) -> Answer:
    """`content` under its Content-Length, `piece` bytes every `every` seconds, until all is sent or
    `until` is set: a registry, or a proxy, each of whose pieces comes well inside a read's timeout."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(content)))
        handler.end_headers()
        try:
            for start in range(0, len(content), piece):
                if until.wait(every):
                    return
                handler.wfile.write(content[start : start + piece])
        except OSError:
            pass  # the client hung up: what abandoning looks like from here

    return answer


def drips_headers(*, every: float, until: threading.Event) -> Answer:
    """A status line, then header lines without end, one byte every `every` seconds until `until` is
    set: a registry, or a proxy, each byte of whose answer comes well inside a read's timeout and
    whose headers never end (http.client takes up to 100 lines of 64 KiB each)."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        lines = (f"X-Padding-{number}: {'x' * 60}\r\n".encode() for number in itertools.count())
        try:
            for line in itertools.chain([b"HTTP/1.1 200 OK\r\n"], lines):
                for byte in line:
                    if until.wait(every):
                        return
                    handler.wfile.write(bytes([byte]))
        except OSError:
            pass  # the client hung up: what abandoning looks like from here

    return answer


def late(answer: Answer, *, by: float, until: threading.Event) -> Answer:
    """`answer`, after `by` seconds of nothing (unless `until` is set first): a registry that thinks."""

    def answered_late(handler: BaseHTTPRequestHandler) -> None:
        if not until.wait(by):
            answer(handler)

    return answered_late


def takes_slowly(*, piece: int, every: float, until: threading.Event) -> Answer:
    """A request's body read `piece` bytes every `every` seconds (until `until` is set), then a 201:
    a registry, or a proxy, that takes an upload in drips."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        left = int(handler.headers.get("Content-Length") or 0)
        try:
            while left > 0 and not until.wait(every):
                taken = handler.rfile.read(min(piece, left))
                if not taken:
                    return
                left -= len(taken)
        except OSError:
            return
        if left == 0:
            body(b"", status=201)(handler)

    return answer


@contextmanager
def serving(host: str = "127.0.0.1") -> Iterator[HostileRegistry]:
    """A registry on `host` (any of 127.0.0.0/8: another host, as far as a client can tell)."""
    registry: HostileRegistry

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            registry.requested.append(self.path)
            registry.authorized.append(self.headers.get("Authorization") is not None)
            answer = registry.answers.get(self.path) or registry.answers.get(self.path.partition("?")[0])
            if answer is None and self.path == "/v2/":
                answer = body(b"{}", "application/json")
            answer = answer or registry.otherwise
            if answer is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            answer(self)

        do_POST = do_GET  # a token realm's OAuth2 grant; the form is left unread
        do_HEAD = do_GET  # a push asks first whether a blob is there
        do_PUT = do_GET  # an upload, taken as a test tells

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = QuietHTTPServer((host, 0), Handler)  # its hang-ups are refusals, as seen from here
    registry = HostileRegistry(f"{host}:{server.server_address[1]}", {})
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield registry
    finally:
        registry.released.set()
        server.shutdown()
        server.server_close()


@dataclass
class Served:
    """A hostile registry serving, as SERVED_REPOSITORY:v1, what the real registry served for a
    pushed artifact (`serving_a_copy`): its manifest (parsed: bend a deep copy of it) and blobs."""

    registry: HostileRegistry
    manifest: dict[str, Any]
    blobs: dict[str, bytes]

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """How hypothesis prints this argument of a failing example: not its 2 MB of blobs."""
        printer.text(f"Served({self.uri!r})")

    @property
    def uri(self) -> str:
        return self.registry.uri(SERVED_REPOSITORY)

    @property
    def manifest_path(self) -> str:
        return self.registry.manifest_path(SERVED_REPOSITORY)

    def serve_manifest(self, content: bytes) -> None:
        self.registry.answers[self.manifest_path] = body(content, oci.MANIFEST_MEDIA_TYPE)

    def layer(self, name: str) -> dict[str, Any]:
        """The manifest's layer of the file `name` (model.onnx, ...)."""
        return next(layer for layer in self.manifest["layers"] if layer["annotations"][TITLE] == name)

    def layer_path(self, name: str) -> str:
        return self.registry.blob_path(SERVED_REPOSITORY, self.layer(name)["digest"])

    def layer_content(self, name: str) -> bytes:
        return self.blobs[self.layer(name)["digest"]]

    def serve_blob(self, name: str, answer: Answer) -> None:
        self.registry.answers[self.layer_path(name)] = answer

    @property
    def blobs_requested(self) -> list[str]:
        return [path for path in self.registry.requested if "/blobs/" in path]


@contextmanager
def serving_a_copy(source: str) -> Iterator[Served]:
    """A hostile registry serving a copy of what the real registry serves at `source` (oci://...:TAG)."""
    with serving() as registry:
        manifest, blobs = registry.copy(source, SERVED_REPOSITORY)
        yield Served(registry, json.loads(manifest), blobs)
