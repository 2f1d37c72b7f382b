"""A real OCI distribution registry (Debian's docker-registry, the CNCF distribution) on loopback,
open, behind htpasswd basic auth, or behind token auth (the scheme of Docker Hub, GHCR, Harbor,
Quay, GitLab and ACR) with a token server of ours in the test process. `.ci/run` installs the
package (scripts/install-tools)."""

from __future__ import annotations

import base64
import datetime
import json
import shutil
import socket
import socketserver
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import bcrypt
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from quiet_http import QuietHTTPServer

from quantship.local.prometheus import free_port

REPO = Path(__file__).resolve().parents[3]
BINARY = shutil.which("docker-registry") or str(REPO / ".tools/bin/docker-registry")
USER, PASSWORD = "ci", "s3cret-pass"
TOKEN_USER, TOKEN_PASSWORD = "alice", "t0ken-pass"
"""The one account of the token server: it may pull and push anywhere."""
IDENTITY_TOKEN = "alice-refresh-t0ken"
"""The account's identity token (an OAuth2 refresh token, as `docker login` to ACR keeps one)."""
PUBLIC = "public/"
"""Repositories under this prefix anyone may pull: the token server issues anonymous pull tokens."""
SERVICE, ISSUER = "quantship-tests", "quantship-test-tokens"


@dataclass(frozen=True)
class Registry:
    address: str
    process: subprocess.Popen[bytes]
    auth: bool
    root: Path
    """Its storage lives under root/data: tests reach in to tamper with a blob."""

    def uri(self, path: str) -> str:
        return f"oci://{self.address}/{path}"


def start(root: Path, *, auth: bool, tokens: TokenServer | None = None) -> Registry:
    """A registry open, behind basic auth (`auth`), or trusting the tokens of `tokens`."""
    port = free_port()
    config = root / "config.yml"
    lines = [
        "version: 0.1",
        "log: {level: error}",
        "storage:",
        f"  filesystem: {{rootdirectory: {root / 'data'}}}",
        "  delete: {enabled: true}",
        "http:",
        f"  addr: 127.0.0.1:{port}",
    ]
    if auth:
        htpasswd = root / "htpasswd"
        htpasswd.write_text(f"{USER}:{bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()}\n")
        lines += ["auth:", "  htpasswd:", "    realm: quantship-tests", f"    path: {htpasswd}"]
    if tokens is not None:
        bundle = root / "token-issuer.pem"
        bundle.write_bytes(tokens.certificate.public_bytes(serialization.Encoding.PEM))
        lines += [
            "auth:",
            "  token:",
            f"    realm: {tokens.realm}",
            f"    service: {SERVICE}",
            f"    issuer: {ISSUER}",
            f"    rootcertbundle: {bundle}",
        ]
    config.write_text("\n".join(lines) + "\n")
    with (root / "registry.log").open("wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen([BINARY, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            requests.get(f"http://127.0.0.1:{port}/v2/", timeout=1)
            return Registry(f"127.0.0.1:{port}", process, auth or tokens is not None, root)
        except requests.RequestException:
            if process.poll() is not None:
                break
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"docker-registry did not start: {(root / 'registry.log').read_text()[-2000:]}")


@dataclass
class TokenServer:
    """A token server as the distribution token spec describes it: GET /token?service=&scope=,
    HTTP basic auth optional, a JWT signed with `key` (its certificate is the registry's bundle);
    and POST /token, the OAuth2 refresh-token grant of its spec (a form: grant_type=refresh_token,
    refresh_token, service, scope, client_id). TOKEN_USER with TOKEN_PASSWORD, or IDENTITY_TOKEN,
    gets the actions asked for; anyone gets pull under PUBLIC; a wrong password or identity token
    is a 401."""

    address: str
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    answer_field: str = "token"
    """The JSON member the token is sent in: the spec allows `token` and `access_token`."""
    authorizations: list[str | None] = field(default_factory=list)
    """The Authorization header of each token request, in order."""
    forms: list[dict[str, list[str]]] = field(default_factory=list)
    """The form of each POST, in order."""
    expired: int = 0
    """How many of the next tokens are issued already expired: an hour ago, past the minute
    docker-registry allows for clock skew, so the registry refuses them as it would a token that
    outlived its `expires_in` in the middle of a push or pull."""
    pull_only: int = 0
    """How many of the next tokens grant pull alone, whatever they were asked for: a push's
    reads pass and its first write is refused, half-way through."""

    @property
    def realm(self) -> str:
        return f"http://{self.address}/token"

    def grant(self, scope: str, user: str | None) -> dict[str, object] | None:
        """The access entry for one `repository:NAME:ACTIONS` scope, or None if it is malformed."""
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        if kind != "repository" or not name:
            return None
        allowed = actions.split(",") if user == TOKEN_USER else ["pull"] if name.startswith(PUBLIC) else []
        return {"type": kind, "name": name, "actions": [a for a in actions.split(",") if a in allowed]}

    def issue(self, access: list[dict[str, object]], user: str | None) -> str:
        now = int(time.time())
        if self.pull_only:
            self.pull_only -= 1
            access = [{**entry, "actions": ["pull"]} for entry in access]
        if self.expired:
            self.expired -= 1
            now -= 3600 + 300  # its exp, now + 300, an hour ago
        header = {
            "alg": "ES256",
            "typ": "JWT",
            "x5c": [base64.b64encode(self.certificate.public_bytes(serialization.Encoding.DER)).decode()],
        }
        claims = {
            "iss": ISSUER,
            "sub": user or "",
            "aud": SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": base64.b16encode(now.to_bytes(8, "big")).decode(),
            "access": access,
        }
        signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self.key.sign(signing.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _user(authorization: str | None) -> tuple[bool, str | None]:
    """(accepted, user) for a token request's Authorization header: none is anonymous."""
    if authorization is None:
        return True, None
    scheme, _, encoded = authorization.partition(" ")
    if scheme != "Basic":
        return False, None
    user, _, password = base64.b64decode(encoded).decode().partition(":")
    return (user, password) == (TOKEN_USER, TOKEN_PASSWORD), user


def _issuer_key() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


@contextmanager
def token_server() -> Iterator[TokenServer]:
    tokens: TokenServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            authorization = self.headers.get("Authorization")
            tokens.authorizations.append(authorization)
            accepted, user = _user(authorization)
            self.answer(accepted, user, urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query))

        def do_POST(self) -> None:
            tokens.authorizations.append(self.headers.get("Authorization"))
            length = int(self.headers.get("Content-Length", "0"))
            form = urllib.parse.parse_qs(self.rfile.read(length).decode())
            tokens.forms.append(form)
            grant = {name: form.get(name) for name in ("grant_type", "refresh_token")}
            accepted = grant == {"grant_type": ["refresh_token"], "refresh_token": [IDENTITY_TOKEN]}
            self.answer(accepted and bool(form.get("client_id")), TOKEN_USER, form)

        def answer(self, accepted: bool, user: str | None, asked: dict[str, list[str]]) -> None:
            """A token for the scopes `asked` names, or why not."""
            access = [tokens.grant(scope, user) for scope in asked.get("scope", [])]
            if not accepted:
                status, answer = 401, {"details": "incorrect username, password or refresh token"}
            elif asked.get("service") != [SERVICE] or None in access:
                status, answer = 400, {"details": "bad service or scope"}
            else:
                granted = [entry for entry in access if entry is not None]
                status, answer = 200, {tokens.answer_field: tokens.issue(granted, user), "expires_in": 300}
            content = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = QuietHTTPServer(("127.0.0.1", 0), Handler)
    key, certificate = _issuer_key()
    tokens = TokenServer(f"127.0.0.1:{server.server_address[1]}", key, certificate)
    with _serving(server):
        yield tokens


@dataclass
class Relay:
    """A TCP relay to a registry that keeps every byte the client sent: what the registry itself
    was told (plain HTTP on loopback), headers included."""

    address: str
    sent: bytearray = field(default_factory=bytearray)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def uri(self, path: str) -> str:
        return f"oci://{self.address}/{path}"


@contextmanager
def relaying(target: str) -> Iterator[Relay]:
    host, _, port = target.rpartition(":")
    relay: Relay

    def pump(source: socket.socket, sink: socket.socket, record: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if record:
                    with relay.lock:
                        relay.sent.extend(chunk)
                sink.sendall(chunk)
        except OSError:
            pass  # either side hung up
        finally:
            sink.close()  # the other pump ends too (each direction closes its sink once)

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            upstream = socket.create_connection((host, int(port)), timeout=30)
            back = threading.Thread(target=pump, args=(upstream, self.request, False), daemon=True)
            back.start()
            pump(self.request, upstream, True)
            back.join(30)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    relay = Relay(f"127.0.0.1:{server.server_address[1]}")
    with _serving(server):
        yield relay


@contextmanager
def _serving(server: socketserver.BaseServer) -> Iterator[None]:
    """`server` answering in a thread of its own (a thread per connection) until the block ends."""
    server.daemon_threads = True  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
