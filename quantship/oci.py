"""Artifacts in OCI registries: `quantship push` (with `oras`) and `pull` (two GETs, see below).

An artifact becomes one OCI image manifest (the OCI 1.0 way of typing an artifact: by its
config's media type, `CONFIG_MEDIA_TYPE`), whose config blob is the artifact's manifest.json
and whose layers are its files (model.onnx, reference.onnx, manifest.json), each titled with its
file name. The ed25519 signature lives inside manifest.json, so it travels with the artifact.

Digests are verified end to end: every pulled layer against its OCI descriptor (oras does not
check), then the files against manifest.json's sha256s (and the signature) by `load_artifact`,
and a pull by digest against the manifest the registry served. A pull writes into a temporary
directory beside the destination and renames it into place only when all of that holds.

A registry's answers are hostile until checked, as the operator's init container pulls from
wherever a QuantizedModel points: the manifest is read up to `MAX_MANIFEST_BYTES` and must match
`MANIFEST_SCHEMA` before any of it is used; layers are downloaded up to the sizes their
descriptors declare, all of them within `max_bytes`; no connect or read waits past `timeout`,
and no transfer moves slower than its `SpeedLimit` (a registry, or a proxy, that drips bytes
just inside each read's timeout would hold a pull or push for hours): every session's transport
adapter (`_Timeouts`) meters a request's body as it is sent and an answer (status line, headers
through `paced_headers`, then body) as it is read.
So a pull is two plain GETs (the manifest, then each layer) over one requests session, made once
each and streamed: oras's requests would read a failed answer's body whole and retry it for
minutes, and its basic-auth backend raises AttributeError on a 401 when it holds no credentials.

URIs: `oci://REGISTRY/REPO:TAG` or `oci://REGISTRY/REPO@sha256:DIGEST`. Plain HTTP is used for
loopback registries and with `insecure=True`; credentials come from arguments or a Docker config
file (a dockerconfigjson pull secret mounted in a pod).

Authentication follows the registry's challenge (`WWW-Authenticate`), first asked of /v2/ without
credentials, then of any 401 a GET meets:
- `Basic`: the credentials go, as HTTP basic auth, to the registry's own host only.
- `Bearer realm=...,service=...` (the distribution token spec: Docker Hub, GHCR, Harbor, Quay,
  GitLab, ACR): a token is asked of the realm for `repository:REPO:pull` (a push:
  `pull,push`), anonymously or with the credentials as basic auth, and sent to the registry as
  `Authorization: Bearer`. The credentials go to that realm only, never to the registry itself,
  and only over https unless the registry is itself plain HTTP (loopback or `insecure`); the
  realm's answer is read within `MAX_TOKEN_BYTES`, and a redirect from it is refused; the realm
  is the first challenge's for the whole push or pull, and a later challenge naming a realm on
  another origin is refused, unasked. A Docker config's `identitytoken` (ACR's `docker login`
  writes one) is sent there in the password's stead, POSTed as the OAuth2 refresh-token grant of
  the token spec, under the same rules. A push
  asks for its token before oras starts (oras would ask for the first request's pull scope and
  use that token for the upload) and sends basic credentials nowhere but that realm. A token is
  renewed, for the same scope, once its `expires_in` has passed, and when the registry answers
  401 to it (it expired by the registry's clock): the request goes once more with the fresh
  token, and a second 401 is final. A push's renewal lives in its session's transport adapter,
  as oras resends the token it holds, unrenewed.
- any other scheme is refused with its name.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import re
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
import oras.auth
import oras.client
import oras.container
import oras.defaults
import oras.logger
import oras.provider
import requests
import requests.adapters
import urllib3.exceptions
import urllib3.response
import urllib3.util.retry

from quantship import artifact, manifest_schema, paced_headers, scratch
from quantship.printable import brief

S = TypeVar("S", bound=requests.Session)

SCHEME = "oci://"
CONFIG_MEDIA_TYPE = "application/vnd.quantship.artifact.config.v1+json"
"""The artifact type: what `quantship pull` and the operator accept, nothing else."""
LAYER_MEDIA_TYPES = {
    artifact.MODEL_FILE: "application/vnd.quantship.model.onnx",
    artifact.REFERENCE_FILE: "application/vnd.quantship.reference.onnx",
    artifact.MANIFEST_FILE: "application/vnd.quantship.manifest.v1+json",
}
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONNECT_TIMEOUT_S = 5.0
"""A registry that does not take the connection to /v2/ within this is down: named at once. Its
answer may take the whole `timeout`."""
TIMEOUT_S = 120.0
"""Seconds a registry may keep any one connect or read waiting (requests waits forever unless
told). A pull makes each request once but its first look at /v2/; a push retries what
`PUSH_RETRIES` says, nothing else."""
MIN_SPEED_BYTES_S = 100
"""The slowest a transfer may move, in bytes a second over `SPEED_WINDOW_S` (curl's --speed-limit):
a registry, or a proxy, that drips bytes just inside each read's `timeout` would keep a pull or
push going for days. 100 B/s is fifty times under a GPRS link's few KB/s, so any real link passes;
what moves less than 6 KB a minute is not a slow link but a stalled one."""
SPEED_WINDOW_S = 60.0
"""Seconds over which `MIN_SPEED_BYTES_S` is measured (curl's --speed-time): long enough for TCP's
retransmission backoff, which can hold a healthy connection still for tens of seconds."""
RETRIED_STATUSES = frozenset({429, 502, 503, 504})
"""The answers a push's request is made again after, as crane and oras-go do: the registry is
busy, or a proxy in front of it is. Any other failure (a 500 included) is final at once."""
GATEWAY_GAVE_UP = frozenset({502, 504})
"""The answers to a blob upload's closing PUT that may come after the registry completed it: that PUT
is not made again (its session is closed), the blob is looked for instead. A 429 or 503 is the
registry's own refusal: that PUT is retried as any other."""
PUSH_RETRIES = 4
"""How many times a push's request is made again after a `RETRIED_STATUSES` answer, or a refused
connection: backing off 0, 1, 2, 4 s, or as long as the registry's Retry-After asks, up to
`MAX_RETRY_AFTER_S`. A timed-out read is final: the registry had `timeout` seconds."""
BLOB_UPLOAD_ATTEMPTS = 3
"""How many times a push uploads one blob (a POST for a session, then the PUT of the blob) when the
PUT meets a `RETRIED_STATUSES` answer and the blob is not in the registry after it."""
MAX_RETRY_AFTER_S = 30.0
"""The longest a push waits on a registry's Retry-After, so a push ends within minutes whatever
the registry asks."""
MAX_MANIFEST_BYTES = 4 * 2**20
"""The largest manifest read: 4 MiB, the size the OCI distribution spec asks every registry to
accept. An artifact's is under 2 KB; a registry that streams more is refused, not held in memory."""
MAX_TOKEN_BYTES = 2**20
"""The largest answer read from a token realm: 1 MiB. A token is a JWT of a few KB; a realm that
streams more is refused, not held in memory."""
MIN_TOKEN_LIFETIME_S = 60
"""Seconds a bearer token is taken to live when its realm says less or nothing: the token spec's
default for `expires_in`, and the floor Docker's client puts on it. The registry's own refusal
renews a token that dies sooner."""
CHUNK_BYTES = 2**20
MAX_REDIRECTS = 5
CLIENT_ID = "quantship"
"""Who asks, in an identity token's exchange (the OAuth2 `client_id` the token spec requires)."""
PULL, PUSH = "pull", "pull,push"
"""The actions a token is asked for (the `scope` repository:REPO:ACTIONS of the token spec)."""

_TITLE = oras.defaults.annotation_title
MANIFEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["config", "layers"],
    "properties": {
        "config": {"type": "object"},
        "layers": {
            "type": "array",
            "maxItems": len(LAYER_MEDIA_TYPES),
            "items": {
                "type": "object",
                "required": ["mediaType", "digest", "size", "annotations"],
                "properties": {
                    "mediaType": {"type": "string"},
                    "digest": {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"},
                    "size": {"type": "integer", "minimum": 0},
                    "annotations": {
                        "type": "object",
                        "required": [_TITLE],
                        "properties": {_TITLE: {"enum": sorted(LAYER_MEDIA_TYPES)}},
                    },
                },
            },
        },
    },
}
"""What `pull` reads of an image manifest (JSON Schema). The digest pattern also keeps a served
digest from steering the blob URL elsewhere on the registry (`sha256:../..`)."""


class OciError(Exception):
    """The registry, the reference or the pulled content cannot be used; the message says why."""


@dataclass(frozen=True)
class SpeedLimit:
    """The slowest a push's or pull's every transfer may move: a request's body as it is sent, an
    answer's body as it is read (a manifest, a layer, a token realm's answer, a push's answers).
    One that moves fewer than `bytes_per_s` on average over `window_s` seconds is abandoned, as
    curl's --speed-limit/--speed-time do. Measured as bytes move, so it is noticed at the end of
    the window or, when nothing at all moves, once a read has waited `timeout`. The wait for an
    answer's first byte is the read timeout's (a registry may take long to answer an upload's PUT);
    from there its status line and headers are held to the limit too, as they are read."""

    bytes_per_s: float = MIN_SPEED_BYTES_S
    window_s: float = SPEED_WINDOW_S


SPEED_LIMIT = SpeedLimit()
"""What every push and pull is held to unless told otherwise."""


_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
_REGISTRY = rf"({_LABEL}(\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])(:[0-9]{{1,5}})?"
_COMPONENT = r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*"
TAG_MAX_LENGTH = 128
_TAG = rf"[A-Za-z0-9_][A-Za-z0-9._-]{{0,{TAG_MAX_LENGTH - 1}}}"
_DIGEST = r"@sha256:[0-9a-f]{64}"
REFERENCE_PATTERN = rf"{_REGISTRY}/{_COMPONENT}(/{_COMPONENT})*(:{_TAG})?({_DIGEST})?"
"""REGISTRY/REPO[:TAG][@DIGEST] as the OCI distribution spec and Docker's reference grammar write
them (RE2 too: the CRD's pattern holds it). Anything looser is ambiguous: oras reads the registry
as the first part that looks like a host, anywhere in the reference, so `reg/x//evil:1/y:t` sent
the credentials for `reg` to `evil`."""
PULL_REFERENCE_PATTERN = rf"{_REGISTRY}/{_COMPONENT}(/{_COMPONENT})*(:{_TAG}|(:{_TAG})?{_DIGEST})"
"""REFERENCE_PATTERN naming a tag, a digest or both: what `pull`, `fetch` and the operator take
(Reference.parse refuses a reference with neither rather than read `latest` into it, as docker
does), and so what the CRD admits as an artifact."""
PUSH_REFERENCE_PATTERN = rf"{_REGISTRY}/{_COMPONENT}(/{_COMPONENT})*:{_TAG}"
"""REGISTRY/REPO:TAG: what `push` writes to. A digest names content that exists, not a place to
write (the registry decides the pushed manifest's digest)."""


DOCKER_HUB_API = "registry-1.docker.io"
"""Where Docker Hub answers the registry API."""
DOCKER_HUB_NAMES = ("docker.io", "index.docker.io")
"""What people write for Docker Hub (`docker.io/user/repo`): read as DOCKER_HUB_API, as docker does."""
DOCKER_HUB_LOGINS = ("index.docker.io", DOCKER_HUB_API, "docker.io")
"""The hosts of a Docker config's keys that hold a Docker Hub login, first found first taken:
`docker login` writes `https://index.docker.io/v1/`."""


@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, uri: str) -> Reference:
        if not uri.startswith(SCHEME):
            raise OciError(f"{uri!r} is not an oci:// URI (oci://REGISTRY/REPO:TAG or @sha256:DIGEST)")
        rest = uri.removeprefix(SCHEME)
        if not re.fullmatch(REFERENCE_PATTERN, rest):
            raise OciError(
                f"{brief(repr(uri))} is not an OCI reference: oci://REGISTRY[:PORT]/REPO:TAG or "
                "@sha256:DIGEST, REPO in lower-case letters, digits, '.', '_', '-', split by '/'"
            )
        registry, _, path = rest.partition("/")
        registry = registry.lower()  # a host name has no case; requests writes it lower in every URL
        if registry in DOCKER_HUB_NAMES:  # as docker, crane and oras-go read Docker Hub's names
            registry = DOCKER_HUB_API
            path = path if "/" in path else f"library/{path}"
        path, _, digest = path.partition("@")
        name, colon, tag = path.rpartition(":")
        if colon:
            path = name
        if not colon and not digest:
            raise OciError(f"{uri!r} names no tag or digest (oci://REGISTRY/REPO:TAG)")
        return cls(registry, path, tag if colon else None, digest or None)

    @property
    def target(self) -> str:
        """The reference as oras writes it."""
        suffix = f"@{self.digest}" if self.digest else f":{self.tag}"
        return f"{self.registry}/{self.repository}{suffix}"

    def container(self) -> oras.container.Container:
        """oras's view of this reference, which builds every URL: it must name our registry and
        repository, or a request (and the credentials) would go elsewhere."""
        container = oras.container.Container(self.target)
        named = "/".join(part for part in (container.namespace, container.repository) if part)
        if (container.registry, named) != (self.registry, self.repository):
            raise OciError(f"{self}: oras reads it as {container.registry}/{named}: refused")
        return container

    def __str__(self) -> str:
        return SCHEME + self.target

    @property
    def loopback(self) -> bool:
        host = self.registry.rsplit(":", 1)[0].strip("[]")
        return host in ("localhost", "::1") or host.startswith("127.")


@dataclass(frozen=True)
class _Login:
    """What quantship holds for a registry: a user and password, and maybe an identity token
    from a Docker config (an OAuth2 refresh token: `docker login` to ACR writes one, beside the
    user 00000000-0000-0000-0000-000000000000 and an empty password). A token realm is sent the
    identity token instead of the password."""

    user: str
    password: str
    identity_token: str | None = None

    @property
    def basic(self) -> tuple[str, str]:
        """As HTTP basic auth."""
        return self.user, self.password

    @property
    def named(self) -> str:
        """What a refusal refused."""
        if self.identity_token is not None:
            return "the Docker config's identity token"
        return f"the credentials of {self.user!r}"


@dataclass(frozen=True)
class Credentials:
    username: str | None = None
    password: str | None = None
    docker_config: Path | None = None
    """A Docker config.json (the content of a dockerconfigjson Secret)."""


def push(
    root: Path,
    uri: str,
    *,
    credentials: Credentials | None = None,
    insecure: bool = False,
    timeout: float = TIMEOUT_S,
    also_tags: Sequence[str] = (),
    speed_limit: SpeedLimit = SPEED_LIMIT,
) -> str:
    """Verify the artifact at `root` and push it to `uri` (a tag), then point each of `also_tags`
    (tags of the same repository) at the same manifest, in order. Returns the pushed manifest's
    digest, to pin with oci://REGISTRY/REPO@DIGEST. Each connect and read waits at most `timeout`;
    an upload or answer that moves slower than `speed_limit` is abandoned."""
    reference = push_reference(uri)
    for tag in also_tags:
        if not re.fullmatch(_TAG, tag):
            raise OciError(f"{brief(repr(tag))} is not a tag ({_TAG})")
    with artifact.opened(root) as loaded:  # a .tar.gz unpacked for the push, removed after it
        return _push(loaded, root, reference, credentials, insecure, timeout, also_tags, speed_limit)


TAG_HASH_DIGITS = 12
"""Hex digits of the hash that stands in for the part of a tag cut to fit the tag grammar."""


def tag_with_suffix(tag: str, suffix: str) -> str:
    """`TAG-SUFFIX`, at most 128 characters (the tag grammar's): when longer, the end of TAG is cut
    and a hash of the whole TAG stands in its place, so tags that differ anywhere stay apart."""
    whole = f"{tag}-{suffix}"
    if len(whole) <= TAG_MAX_LENGTH:
        return whole
    stand_in = hashlib.sha256(tag.encode()).hexdigest()[:TAG_HASH_DIGITS]
    room = TAG_MAX_LENGTH - len(f"-{stand_in}-{suffix}")
    if room < 1:
        raise OciError(f"a suffix of {len(suffix)} characters leaves no room for the tag {tag!r}")
    return f"{tag[:room]}-{stand_in}-{suffix}"


def push_reference(uri: str) -> Reference:
    """`uri` read as a place `push` can write to: a tag, no digest, that oras reads as written.
    Raises OciError; checks no registry."""
    reference = Reference.parse(uri)
    if reference.digest or not reference.tag:
        raise OciError(f"push to a tag, not a digest: {uri} (oci://REGISTRY/REPO:TAG)")
    reference.container()  # where oras will send the files and the credentials
    return reference


def _push(
    loaded: artifact.Artifact,
    source: Path,
    reference: Reference,
    credentials: Credentials | None,
    insecure: bool,
    timeout: float,
    also_tags: Sequence[str],
    speed_limit: SpeedLimit,
) -> str:
    unknown = sorted(set(loaded.manifest["files"]) - set(LAYER_MEDIA_TYPES))
    if unknown:
        raise OciError(
            f"{source}: an OCI artifact carries {artifact.MODEL_FILE} and {artifact.REFERENCE_FILE}; "
            f"the manifest also lists {', '.join(unknown)}"
        )
    client = _client(reference, credentials, insecure, timeout, speed_limit)
    scratch.sweep()  # what pushes killed before us (kill -9) left behind
    with scratch.directory(scratch.PUSH_PREFIX) as tmp:
        config = tmp / "config.json"
        config.write_bytes((loaded.root / artifact.MANIFEST_FILE).read_bytes())
        names = [*loaded.manifest["files"], artifact.MANIFEST_FILE]
        files = [f"{loaded.root / name}:{LAYER_MEDIA_TYPES[name]}" for name in names]
        with _registry_errors(reference):
            response = client.push(
                target=reference.target,
                files=files,
                disable_path_validation=True,  # oras otherwise wants files under the working directory
                manifest_config=f"{config}:{CONFIG_MEDIA_TYPE}",
                manifest_annotations={_TITLE: loaded.manifest.get("model", {}).get("source", source.name)},
                quiet=True,
            )
    digest = _sent_digest(response, reference)
    for tag in also_tags:
        with _registry_errors(reference):
            _retag(client, reference, tag, response.request)
    return digest


def _retag(
    client: oras.client.OrasClient, reference: Reference, tag: str, pushed: requests.PreparedRequest
) -> None:
    """Point `tag` at the manifest `pushed` sent: the very bytes PUT again, under the tag (its
    blobs are in the repository already), as `crane tag` and `oras tag` do."""
    moved = Reference(reference.registry, reference.repository, tag, None)
    url = f"{client.prefix}://{moved.container().manifest_url()}"
    headers = {"Content-Type": str(pushed.headers.get("Content-Type", MANIFEST_MEDIA_TYPE))}
    answer = client.do_request(url, "PUT", data=_body_bytes(pushed), headers=headers)
    if answer.status_code not in (200, 201):
        raise OciError(f"{moved}: HTTP {answer.status_code} {brief(answer.reason or '')}")
    _sent_digest(answer, moved)


def _body_bytes(request: requests.PreparedRequest) -> bytes:
    """What a PUT sent: oras sends a manifest as JSON, which requests encodes whole."""
    body = request.body
    if isinstance(body, str):
        return body.encode()
    if isinstance(body, bytes):
        return body
    raise OciError("the manifest was sent as a stream: its digest cannot be computed")


def _sent_digest(answer: requests.Response, reference: Reference) -> str:
    """The digest of the manifest a PUT sent, computed from the bytes sent: a registry's
    Docker-Content-Digest is optional (the OCI distribution spec), and refused only when it
    names another digest."""
    digest = "sha256:" + hashlib.sha256(_body_bytes(answer.request)).hexdigest()
    named = answer.headers.get("Docker-Content-Digest")
    if named and named != digest:
        raise OciError(
            f"{reference}: the registry names the pushed manifest {brief(named, 80)}, but the bytes "
            f"sent are {digest}: refused"
        )
    return digest


@dataclass(frozen=True)
class Pulled(artifact.Artifact):
    """A pulled artifact, and the digest of the image manifest it came in (`sha256:...`): what
    `push` printed and what a pin by digest names. The artifact's own `digest` hashes its
    manifest.json, the config blob, so it differs."""

    image_digest: str


def pull(
    uri: str,
    dest: Path,
    *,
    credentials: Credentials | None = None,
    insecure: bool = False,
    public_key: Any = None,
    timeout: float = TIMEOUT_S,
    max_bytes: int = artifact.MAX_DOWNLOAD_BYTES,
    speed_limit: SpeedLimit = SPEED_LIMIT,
) -> Pulled:
    """Pull the artifact at `uri` into `dest` (created; never half-written) and verify it.
    `max_bytes` caps the layers' sizes together, as their descriptors declare them. Each connect
    and read waits at most `timeout`; a manifest, layer or token that arrives slower than
    `speed_limit` is abandoned."""
    reference = Reference.parse(uri)
    if dest.exists():  # before any download: it may be gigabytes
        raise OciError(f"{dest} exists; pull into a new directory")
    try:
        artifact.refuse_inside_an_artifact(dest)
    except artifact.ArtifactError as exc:
        raise OciError(str(exc)) from None
    registry = _Registry.open(reference, credentials, insecure, timeout, speed_limit)
    with registry.session:
        image, image_digest = _manifest(registry)
        layers = image["layers"]
        declared = sum(int(layer["size"]) for layer in layers)
        if declared > max_bytes:
            raise OciError(
                f"{reference}: its layers declare {declared} bytes, more than the limit of {max_bytes}"
            )
        # beside dest, so the rename is atomic; what a killed pull left there is swept
        with (
            _disk_errors(f"{reference}: cannot write beside {dest}"),
            scratch.beside(dest, "pull") as staging,
        ):
            for layer in layers:
                name = layer["annotations"][_TITLE]
                if layer["mediaType"] != LAYER_MEDIA_TYPES[name]:
                    raise OciError(f"{reference}: layer {name!r} has media type {layer['mediaType']!r}")
                _download(registry, layer, staging / name)
            if not (staging / artifact.MANIFEST_FILE).is_file():
                raise OciError(f"{reference} holds no {artifact.MANIFEST_FILE}")
            try:
                loaded = artifact.load_artifact(staging, public_key=public_key)
            except artifact.ArtifactError as exc:
                raise exc.naming([staging], str(reference)) from exc
            if dest.exists():
                raise OciError(f"{dest} exists; pull into a new directory")
            staging.chmod(0o755)  # as write_artifact leaves an artifact: a server of another user reads it
            with _disk_errors(f"{reference}: cannot move the artifact to {dest}"):
                staging.rename(dest)
    return Pulled(dest, loaded.manifest, loaded.signed, image_digest)


@dataclass
class _Registry:
    """One repository of a registry, read over a session whose requests time out. URLs as oras
    builds them. What it sends to authenticate follows the registry's challenges: nothing, basic
    credentials, or a bearer token from the realm the registry names."""

    reference: Reference
    session: requests.Session
    prefix: str
    """http or https."""
    login: _Login | None
    timeout: float
    speed_limit: SpeedLimit
    basic: bool = False
    """The registry asked for basic auth: the credentials go with every request to its host."""
    bearer: _Bearer | None = None
    """The bearer token the registry's realm issued: it goes with every request to its host."""

    @classmethod
    def open(
        cls,
        reference: Reference,
        credentials: Credentials | None,
        insecure: bool,
        timeout: float,
        speed_limit: SpeedLimit,
    ) -> _Registry:
        plain_http = insecure or reference.loopback
        login = _login(reference, credentials)
        # a busy first look waits
        asked = _probe(reference, login, plain_http, timeout, speed_limit, _push_retries())
        session = _Timeouts.on(_OwnRedirects(), timeout, speed_limit)
        prefix = "http" if plain_http else "https"
        registry = cls(reference, session, prefix, login, timeout, speed_limit)
        if asked is not None:
            registry.answer(asked)
        return registry

    @property
    def plain_http(self) -> bool:
        return self.prefix == "http"

    def answer(self, challenge: _Challenge) -> bool:
        """Take up what the registry asked for; False when nothing new can be sent."""
        _supported(challenge, self.reference)
        if challenge.scheme == "bearer":  # a new token each time: the last may have expired
            if self.bearer is None:
                self.bearer = _Bearer(
                    challenge,
                    self.reference,
                    PULL,
                    self.login,
                    self.plain_http,
                    self.timeout,
                    self.speed_limit,
                )
            self.bearer.renew(challenge)
            return True
        if self.login is None or self.basic:
            return False
        self.basic = True
        return True

    def get(self, path: str, what: str, headers: Mapping[str, str] | None = None) -> requests.Response:
        """The streamed answer to GET `path` (from oras's Container), if it is a 200. A 401 of the
        registry's own is answered (a token asked of its realm, or the basic credentials) and the
        GET made once more."""
        url, where = f"{self.prefix}://{path}", f"{self.reference}: {what}"
        response = self._follow(url, where, headers)
        if response.status_code == 401 and self._own(response.url) and self.answer(_challenge(response)):
            response.close()
            response = self._follow(url, where, headers)
        if response.status_code == 200:
            return response
        response.close()  # unread: a registry's error page can be as long as it likes
        status = response.status_code
        if status == 404:
            raise OciError(f"{self.reference}: no such {what} in {self.reference.repository}")
        if status in (401, 403):
            raise OciError(f"{where}: {self._refusal(status)}")
        raise OciError(f"{where}: the registry answered {status} {brief(response.reason or '')}")

    def _refusal(self, status: int) -> str:
        if self.login is None:
            return f"the registry wants credentials ({status})"
        if self.bearer is not None:
            return f"the registry refused the token its realm issued for {self.login.named} ({status})"
        return f"the registry refused the credentials ({status})"

    def _own(self, url: str) -> bool:
        return urllib.parse.urlsplit(url).netloc == self.reference.registry

    def _follow(self, url: str, where: str, headers: Mapping[str, str] | None) -> requests.Response:
        """The answer to GET `url`, redirects (blob storage) followed here, each answer closed
        unread (requests reads a redirect's body whole), credentials sent to the registry's host
        only."""
        for _ in range(MAX_REDIRECTS + 1):
            own = self._own(url)
            sent = {**(headers or {})}
            if own and self.bearer is not None:
                sent["Authorization"] = f"Bearer {self.bearer.current()}"
            basic = self.login.basic if self.login and own and self.basic and self.bearer is None else None
            response = self.session.get(url, headers=sent, stream=True, auth=basic)
            if not response.is_redirect:
                return response
            response.close()
            target = urllib.parse.urljoin(url, response.headers["location"])
            if urllib.parse.urlsplit(target).scheme not in ("http", "https") or (
                url.startswith("https:") and not target.startswith("https:")
            ):
                raise OciError(f"{where}: redirected to {brief(target)}: not http(s), or https downgraded")
            url = target
        raise OciError(f"{where}: more than {MAX_REDIRECTS} redirects")


def _manifest(registry: _Registry) -> tuple[dict[str, Any], str]:
    """The image manifest and its digest: read within MAX_MANIFEST_BYTES, its digest checked when
    pulled by digest, its shape (MANIFEST_SCHEMA), artifact type and layer titles (each once)
    checked always."""
    reference = registry.reference
    url = reference.container().manifest_url()
    accept = {"Accept": MANIFEST_MEDIA_TYPE}
    with _registry_errors(reference), registry.get(url, "tag or digest", accept) as response:
        too_long = f"{reference}: the manifest is longer than {MAX_MANIFEST_BYTES} bytes: refused"
        body = b"".join(_capped(response, MAX_MANIFEST_BYTES, too_long))
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    if reference.digest and digest != reference.digest:
        raise OciError(f"{reference}: the manifest served does not match the digest asked for")
    try:
        manifest = artifact.parse_json(body)
    except (ValueError, RecursionError) as exc:
        raise OciError(f"{reference}: the registry served a manifest that is not JSON") from exc
    error = jsonschema.exceptions.best_match(
        manifest_schema.strict_validator(MANIFEST_SCHEMA).iter_errors(manifest)
    )
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "the top"
        raise OciError(
            f"{reference}: the registry served a manifest quantship cannot read: at {where}, "
            + manifest_schema.schema_error_text(error)
        )
    media_type = manifest["config"].get("mediaType")
    if media_type != CONFIG_MEDIA_TYPE:
        raise OciError(
            f"{reference} is not a quantship artifact (config media type {brief(repr(media_type))})"
        )
    titles = [layer["annotations"][_TITLE] for layer in manifest["layers"]]
    if twice := next((title for title in titles if titles.count(title) > 1), None):
        # one title, two layers: the second would overwrite the first, and the pull fail as tampered
        raise OciError(f"{reference}: the manifest lists two layers titled {twice}: refused")
    return manifest, digest


def _download(registry: _Registry, layer: dict[str, Any], path: Path) -> None:
    """One layer into `path`: no more bytes than its descriptor's size, and its digest checked."""
    reference, name, size = registry.reference, path.name, int(layer["size"])
    url = reference.container().get_blob_url(layer["digest"])
    received = 0
    too_long = f"{reference}: layer {name} is longer than the {size} bytes its descriptor declares"
    with _registry_errors(reference), registry.get(url, f"layer {name}") as response:
        chunks = _capped(response, size, too_long)
        with _disk_errors(f"{reference}: cannot write layer {name}"), path.open("wb") as out:
            for chunk in chunks:
                out.write(chunk)
                received += len(chunk)
    if received != size:
        raise OciError(f"{reference}: layer {name} ended at {received} of its declared {size} bytes")
    if _sha256(path) != layer["digest"].removeprefix("sha256:"):
        raise OciError(f"{reference}: layer {name} does not match its digest {layer['digest']}")


@contextmanager
def _disk_errors(what: str) -> Iterator[None]:
    """An OSError of the local disk (most likely full), as an OciError: not a traceback. Reading
    the registry's answer raises requests' own errors, which are OSErrors too: they pass."""
    try:
        yield
    except requests.RequestException:
        raise
    except OSError as exc:
        raise OciError(f"{what}: {exc.strerror or exc}") from exc


def _capped(response: requests.Response, limit: int, too_long: str) -> Iterator[bytes]:
    """The body's chunks, refused once past `limit` bytes: a registry cannot fill memory or disk."""
    received = 0
    for chunk in response.iter_content(CHUNK_BYTES):
        received += len(chunk)
        if received > limit:
            raise OciError(too_long)
        yield chunk


class TooSlow(OciError):
    """A transfer that moved slower than its `SpeedLimit`: abandoned."""


class _SlowHeaders(TooSlow):
    """An answer's status line and headers, too slow: raised where they are read, which knows not
    what was asked; `_Timeouts` names the request."""


class SpeedMeter:
    """The bytes one transfer moves, told as they move; raises `TooSlow` when those of a window
    of at least `limit.window_s` seconds average under `limit.bytes_per_s`. `what` names the
    transfer: the registry (or realm), the request and which way; `error` is what is raised."""

    def __init__(
        self,
        limit: SpeedLimit,
        what: str,
        clock: Callable[[], float] = time.monotonic,
        error: type[TooSlow] = TooSlow,
    ) -> None:
        self.limit, self.what, self.clock, self.error = limit, what, clock, error
        self.restart()

    def restart(self) -> None:
        """From nothing moved, now: the transfer begins (again)."""
        self.total = self.in_window = 0
        self.since = self.clock()

    def moved(self, count: int) -> None:
        self.total += count
        self.in_window += count
        now = self.clock()
        elapsed = now - self.since
        if elapsed < self.limit.window_s:
            return
        if self.in_window < self.limit.bytes_per_s * elapsed:
            raise self.error(
                f"{self.what} moved {self.in_window} bytes in {elapsed:.1f} s "
                f"({self.in_window / elapsed:.1f} bytes/s; {self.total} bytes in all), under the minimum "
                f"of {self.limit.bytes_per_s:g} bytes/s over {self.limit.window_s:g} s: abandoned"
            )
        self.since, self.in_window = now, 0


def _transfer_name(request: requests.PreparedRequest) -> str:
    """HOST: METHOD PATH of a request, and the digest an upload's PUT names (its path names only
    the upload session): what a `TooSlow` says it abandoned."""
    parts = urllib.parse.urlsplit(request.url or "")
    digest = urllib.parse.parse_qs(parts.query).get("digest", [""])[0]
    named = f" (blob {brief(digest, 80)})" if digest else ""
    return f"{brief(parts.netloc, 80)}: {request.method} {brief(parts.path, 160)}{named}"


class _PacedAnswer:
    """An answer's body as requests reads it (`stream`, urllib3's): each piece as soon as it
    arrives (`read1`; urllib3's `read` waits for a whole chunk, where a drip goes unseen), told
    to `meter`; hung up on when too slow. Everything else is urllib3's response's."""

    def __init__(self, raw: urllib3.response.BaseHTTPResponse, meter: SpeedMeter) -> None:
        self._raw, self._meter = raw, meter

    def stream(self, amt: int | None = CHUNK_BYTES, decode_content: bool | None = None) -> Iterator[bytes]:
        self._meter.restart()  # the body's first byte is the transfer's start, not its headers'
        while piece := self._raw.read1(amt, decode_content=decode_content):
            try:
                self._meter.moved(len(piece))
            except TooSlow:
                self._raw.close()  # the connection too: it is not given back to the pool
                raise
            yield piece

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class _PacedUpload(io.BytesIO):
    """A request's body, which urllib3 reads a block at a time and sends: each block told to
    `meter` once it is sent (when the next is asked for). The meter starts at the first block,
    not before the connection was made, and again when urllib3 rewinds the body to send it once
    more (a retry after a 429, whose Retry-After moved nothing)."""

    def __init__(self, body: bytes, meter: SpeedMeter) -> None:
        super().__init__(body)
        self._meter = meter
        self._handed: int | None = None
        """The size of the block last read, sent by now; None before the first."""

    def read(self, size: int | None = -1) -> bytes:
        if self._handed is None:
            self._meter.restart()
        else:
            self._meter.moved(self._handed)
        block = super().read(size)
        self._handed = len(block)
        return block

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._handed = None
        return super().seek(offset, whence)


class _OwnRedirects(requests.Session):
    """A session that leaves every redirect to its caller. requests reads a redirect's body whole
    when it follows one, and even when told not to (to fill in `Response.next`): a registry could
    send an endless one. With no redirect target, it never starts."""

    def get_redirect_target(self, response: requests.Response) -> None:
        return None


class _Timeouts(requests.adapters.HTTPAdapter):
    """A transport adapter that gives every request a timeout (oras sets none) and holds its body,
    as it is sent, and its answer, as it is read (status line and headers, then body), to a
    `SpeedLimit`."""

    def __init__(
        self, timeout: float, speed_limit: SpeedLimit, retries: urllib3.util.retry.Retry | int = 0
    ) -> None:
        self.timeout = timeout
        self.speed_limit = speed_limit  # before the pool manager is made, which meters with it
        super().__init__(max_retries=retries)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        paced_headers.meter_headers(self.poolmanager, self._header_meter)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> urllib3.PoolManager:
        manager: urllib3.PoolManager = super().proxy_manager_for(proxy, **proxy_kwargs)
        paced_headers.meter_headers(manager, self._header_meter)
        return manager

    def _header_meter(self) -> SpeedMeter:
        return SpeedMeter(self.speed_limit, "its answer's status line and headers", error=_SlowHeaders)

    @classmethod
    def on(cls, session: S, timeout: float, speed_limit: SpeedLimit) -> S:
        """`session`, every request of it now timing out and held to `speed_limit`."""
        for scheme in ("http://", "https://"):
            session.mount(scheme, cls(timeout, speed_limit))
        return session

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        where = _transfer_name(request)
        sent = request
        if isinstance(request.body, bytes) and request.body:
            # a copy: the caller's request keeps its bytes, to send again (`_BearerTo`) or to
            # digest (`_sent_digest`)
            sent = request.copy()
            sent.body = _PacedUpload(request.body, SpeedMeter(self.speed_limit, f"{where}: its upload"))
        try:
            response = super().send(sent, **kwargs)
        except _SlowHeaders as slow:
            raise TooSlow(f"{where}: {slow}") from None
        response.request = request
        response.raw = _PacedAnswer(response.raw, SpeedMeter(self.speed_limit, f"{where}: its answer"))
        return response


class _BoundedRetry(urllib3.util.retry.Retry):
    """urllib3's Retry, a registry's Retry-After honoured up to MAX_RETRY_AFTER_S, and a blob
    upload's closing PUT never made again after a gateway's 502 or 504 (GATEWAY_GAVE_UP), which
    may come after the registry stored the blob and closed the upload session: the same PUT then
    meets 404 BLOB_UPLOAD_UNKNOWN. `_PushClient.put_upload` looks for the blob and uploads it anew."""

    def get_retry_after(self, response: Any) -> float | None:
        asked = super().get_retry_after(response)
        return None if asked is None else min(asked, MAX_RETRY_AFTER_S)

    def increment(  # type: ignore[override]
        self,
        method: str | None = None,
        url: str | None = None,
        response: Any = None,
        error: Exception | None = None,
        _pool: Any = None,
        _stacktrace: Any = None,
    ) -> urllib3.util.retry.Retry:
        if response is not None and response.status in GATEWAY_GAVE_UP and _closes_blob_upload(method, url):
            raise urllib3.exceptions.MaxRetryError(_pool, url or "", error)  # the answer stands
        return super().increment(method, url, response, error, _pool, _stacktrace)


def _closes_blob_upload(method: str | None, url: str | None) -> bool:
    """Whether this is the PUT that completes a blob upload (`.../blobs/uploads/SESSION?digest=`)."""
    parts = urllib.parse.urlsplit(url or "")
    query = urllib.parse.parse_qs(parts.query)
    return method == "PUT" and "/blobs/uploads/" in parts.path and "digest" in query


def _push_retries() -> _BoundedRetry:
    """What a push's transport retries: RETRIED_STATUSES and refused connections, of any method
    (oras sends every body as bytes, which go again whole), PUSH_RETRIES times at most."""
    return _BoundedRetry(
        total=PUSH_RETRIES,
        connect=PUSH_RETRIES,
        read=False,
        status=PUSH_RETRIES,
        other=0,
        allowed_methods=None,
        status_forcelist=RETRIED_STATUSES,
        backoff_factor=0.5,
        respect_retry_after_header=True,
        raise_on_status=False,
    )


class _Failed(Exception):
    """A registry's failing answer to a push's request, said in one line: HTTP STATUS REASON,
    then what its OCI error body says (control characters replaced, cut short)."""

    def __init__(self, message: str, status: int = 0, method: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.method = method

    @classmethod
    def of(cls, answer: requests.Response, method: str) -> _Failed:
        where = urllib.parse.urlsplit(answer.url or "").path
        said = "; ".join(_oci_errors(answer))
        return cls(
            f"HTTP {answer.status_code} {brief(answer.reason or '', 60)}"
            + (f": {brief(said)}" if said else "")
            + f" ({method} {brief(where, 120)})",
            answer.status_code,
            method,
        )


def _oci_errors(answer: requests.Response) -> list[str]:
    """The `errors` of an OCI error body (code: message), if it is one."""
    try:
        body = answer.json()
    except (ValueError, RecursionError):
        return []
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list):
        return []
    said = [
        f"{error.get('code', '')}: {error.get('message', '')}" for error in errors if isinstance(error, dict)
    ]
    return [brief(line, 200) for line in said[:3]]


class _PushClient(oras.client.OrasClient):
    """oras's client, each request made once (its own decorator would retry any failure five
    times, sleeping 131 s in all, and a 500 with them; the transport's Retry retries what
    RETRIED_STATUSES says), and a failing answer raised as `_Failed` with its status: oras's
    own errors say only the URL, or that a body was not JSON."""

    def do_request(
        self,
        url: str,
        method: str = "GET",
        data: dict[str, Any] | bytes | None = None,
        headers: dict[str, str] | None = None,
        json: dict[str, Any] | None = None,
        stream: bool = False,
    ) -> requests.Response:
        decorated = oras.provider.Registry.do_request
        once = getattr(decorated, "__wrapped__", decorated)  # under oras's retry decorator (functools.wraps)
        try:
            answer: requests.Response = once(self, url, method, data, headers, json, stream)
        except AttributeError as exc:  # oras's basic backend, holding no credentials, on a 401 or 403
            raise _Refused(
                "the registry refused the push (401 or 403) and no credentials were given: --username "
                "with QUANTSHIP_REGISTRY_PASSWORD, or --docker-config"
            ) from exc
        if method == "HEAD":  # it answers whether a blob exists
            return answer
        if answer.status_code in (401, 403):  # still, after oras answered the challenge
            raise _Refused(f"the registry refused the credentials: {_Failed.of(answer, method)}")
        if answer.status_code >= 400:
            raise _Failed.of(answer, method)
        return answer

    def put_upload(
        self, blob: str, container: oras.container.Container, layer: dict[str, Any]
    ) -> requests.Response:
        """oras's upload (POST a session, PUT the blob to it), its closing PUT's
        `GATEWAY_GAVE_UP` answered by looking for the blob: stored, it is done (the registry
        completed the upload and a gateway in front of it gave up waiting); else the whole upload
        again, `BLOB_UPLOAD_ATTEMPTS` times in all."""
        for attempt in range(1, BLOB_UPLOAD_ATTEMPTS + 1):
            try:
                return super().put_upload(blob, container, layer)
            except _Failed as failed:
                if failed.method != "PUT" or failed.status not in GATEWAY_GAVE_UP:
                    raise
                if self.blob_exists(layer, container):
                    return _stored()
                if attempt == BLOB_UPLOAD_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")


def _stored() -> requests.Response:
    """The answer that says a blob is in the registry, as oras makes one for a blob it found."""
    answer = requests.Response()
    answer.status_code = 201
    return answer


class _Withheld(oras.auth.AuthenticationException):
    """Basic credentials about to go to an origin they are not for. An AuthenticationException,
    which no oras code catches or retries."""


class _CredentialsOnlyTo(_Timeouts):
    """Timeouts, and basic credentials sent to one origin (scheme://host) only: oras sends them to
    any realm a 401 names and any upload location a registry gives."""

    def __init__(self, timeout: float, speed_limit: SpeedLimit, origin: str) -> None:
        super().__init__(timeout, speed_limit, _push_retries())
        self.origin = origin

    @classmethod
    def guard(cls, session: S, timeout: float, speed_limit: SpeedLimit, origin: str) -> S:
        """`session`, every request of it now timing out, held to `speed_limit` and sending basic
        credentials to `origin` only."""
        for scheme in ("http://", "https://"):
            session.mount(scheme, cls(timeout, speed_limit, origin))
        return session

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        basic = str(request.headers.get("Authorization", "")).lower().startswith("basic ")
        if basic and _origin(request.url or "") != self.origin:
            raise _Withheld(f"credentials for {self.origin} withheld from {_origin(request.url or '')}")
        return super().send(request, **kwargs)


class _Refused(oras.auth.AuthenticationException):
    """The registry refused a token just renewed, or a token could not be had, or the credentials:
    an AuthenticationException, which no oras code catches or retries."""


class _BearerTo(_Timeouts):
    """Timeouts, and a bearer token sent to the registry's origin and no other Authorization
    anywhere (the credentials stay with `_Bearer`, for the realm). A 401 of the registry's renews
    the token and sends the request once more (its body is bytes: oras reads every file whole);
    a second 401 is final."""

    def __init__(self, timeout: float, speed_limit: SpeedLimit, registry: str, bearer: _Bearer) -> None:
        super().__init__(timeout, speed_limit, _push_retries())
        self.registry = registry
        self.bearer = bearer

    @classmethod
    def carrying(
        cls, session: S, timeout: float, speed_limit: SpeedLimit, registry: str, bearer: _Bearer
    ) -> S:
        """`session`, its requests timing out, held to `speed_limit`, and `bearer`'s token going
        to `registry` (scheme://host) only."""
        for scheme in ("http://", "https://"):
            session.mount(scheme, cls(timeout, speed_limit, registry, bearer))
        return session

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if _origin(request.url or "") != self.registry:
            request.headers.pop("Authorization", None)  # the token is the registry's alone
            return super().send(request, **kwargs)
        request.headers["Authorization"] = f"Bearer {self._token(self.bearer.current)}"
        response = super().send(request, **kwargs)
        if response.status_code != 401:
            return response
        response.close()
        asked = _challenge(response)
        if asked.scheme != "bearer":
            raise _Refused(f"the registry refused its token and asks for {asked.scheme!r} authentication")
        if not isinstance(request.body, bytes | str | None):
            raise _Refused("the registry refused its token in the middle of an upload it cannot resend")
        request.headers["Authorization"] = f"Bearer {self._token(lambda: self.bearer.renew(asked))}"
        response = super().send(request, **kwargs)
        if response.status_code == 401:
            response.close()
            raise _Refused("the registry refused the token its realm had just renewed (401)")
        return response

    @staticmethod
    def _token(asking: Callable[[], str]) -> str:
        """What `asking` returns; a realm's refusal as one oras lets through at once."""
        try:
            return asking()
        except OciError as exc:
            raise _Refused(str(exc)) from exc


def _client(
    reference: Reference,
    credentials: Credentials | None,
    insecure: bool,
    timeout: float,
    speed_limit: SpeedLimit,
) -> oras.client.OrasClient:
    """An oras client whose requests time out, after a quick look at /v2/: a registry that is
    down, or that refuses us, is named at once, before anything is uploaded. A
    registry that wants tokens gets oras's token backend, holding a push token asked of its realm
    here; basic credentials go to one origin only: the realm, or the registry that asked for them."""
    plain_http = insecure or reference.loopback
    login = _login(reference, credentials)
    asked = _probe(reference, login, plain_http, timeout, speed_limit, _push_retries())
    if asked is None or asked.scheme == "basic":
        client = _PushClient(hostname=reference.registry, insecure=plain_http, auth_backend="basic")
        origin = f"{'http' if plain_http else 'https'}://{reference.registry}"
        _CredentialsOnlyTo.guard(client.session, timeout, speed_limit, origin)
        if login is not None:
            client.auth.set_basic_auth(*login.basic)
        return client
    if login is None:  # an anonymous token may pull, never push
        raise OciError(_needs_credentials(reference))
    # asked here, so a realm's refusal is named before oras starts; oras would ask for the first
    # request's scope (pull) and send that token with the upload, and never renew one it holds
    bearer = _Bearer(asked, reference, PUSH, login, plain_http, timeout, speed_limit)
    bearer.renew()
    client = _PushClient(hostname=reference.registry, insecure=plain_http, auth_backend="token")
    registry = f"{'http' if plain_http else 'https'}://{reference.registry}"
    _BearerTo.carrying(client.session, timeout, speed_limit, registry, bearer)
    return client


@dataclass(frozen=True)
class _Challenge:
    """What a registry asks for in WWW-Authenticate (RFC 9110 11.6.1)."""

    scheme: str
    """Lower-case: basic, bearer, or one quantship does not speak."""
    params: Mapping[str, str]


_AUTH_ITEM = re.compile(r'([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^\s,]*))?')


def _challenge(response: requests.Response) -> _Challenge:
    """The answer's challenge, Bearer preferred when it offers several. A 401 that names none is
    taken as asking for basic credentials, as registries behind a plain proxy do."""
    challenges: list[tuple[str, dict[str, str]]] = []
    for match in _AUTH_ITEM.finditer(response.headers.get("WWW-Authenticate", "")):
        name, value = match.groups()
        if value is None:  # a bare token starts the next challenge
            challenges.append((name.lower(), {}))
        elif challenges:
            unquoted = re.sub(r"\\(.)", r"\1", value[1:-1]) if value.startswith('"') else value
            challenges[-1][1][name.lower()] = unquoted
    bearer = [challenge for challenge in challenges if challenge[0] == "bearer"]
    return _Challenge(*(bearer or challenges or [("basic", {})])[0])


def _supported(challenge: _Challenge, reference: Reference) -> None:
    if challenge.scheme not in ("basic", "bearer"):
        raise OciError(
            f"{reference.registry} asks for {challenge.scheme!r} authentication: quantship speaks "
            "basic auth and bearer tokens (the distribution token spec) only"
        )


def _probe(
    reference: Reference,
    login: _Login | None,
    plain_http: bool,
    timeout: float,
    speed_limit: SpeedLimit,
    retries: urllib3.util.retry.Retry | int = 0,
) -> _Challenge | None:
    """A quick look at /v2/ (its body unread), first without credentials, made again as `retries`
    says (`_push_retries`, for a pull too): a registry that is down, or answers a failure other than 401 or
    403 (a rate limit, a gateway's 503), is named. Returns what it asks for: nothing (None), basic
    auth (the credentials checked here, sent to it alone), or a bearer token (nothing is sent to
    it: the credentials are the realm's)."""
    url = f"{'http' if plain_http else 'https'}://{reference.registry}/v2/"
    answer = _look(reference, url, None, timeout, speed_limit, retries)
    if answer.status_code < 400:  # a redirect too: it is followed nowhere, and was taken as open
        return None
    if answer.status_code not in (401, 403):
        raise OciError(
            f"{reference.registry}: HTTP {answer.status_code} {brief(answer.reason or '', 60)} (GET /v2/)"
        )
    asked = _challenge(answer)
    _supported(asked, reference)
    if asked.scheme == "bearer":
        return asked
    if login is None:
        raise OciError(_needs_credentials(reference))
    if _look(reference, url, login.basic, timeout, speed_limit, retries).status_code in (401, 403):
        raise OciError(f"{reference.registry} refused {login.named}")
    return asked


def _look(
    reference: Reference,
    url: str,
    login: tuple[str, str] | None,
    timeout: float,
    speed_limit: SpeedLimit,
    retries: urllib3.util.retry.Retry | int,
) -> requests.Response:
    """The status and headers of GET `url` (held to `speed_limit`), its body unread, made again as
    `retries` says."""
    try:
        with _OwnRedirects() as session:
            session.mount(url, _Timeouts(timeout, speed_limit, retries))
            # a registry that does not take the connection is down; one that is slow to answer is not
            answer = session.get(
                url, auth=login, timeout=(min(CONNECT_TIMEOUT_S, timeout), timeout), stream=True
            )
            answer.close()
    except requests.RequestException as exc:
        # a registry that speaks plain HTTP fails the TLS handshake
        hint = " (plain HTTP? --insecure)" if isinstance(exc, requests.exceptions.SSLError) else ""
        raise OciError(f"cannot reach the registry {reference.registry}: {type(exc).__name__}{hint}") from exc
    return answer


def _needs_credentials(reference: Reference) -> str:
    return (
        f"{reference.registry} needs credentials: --username with QUANTSHIP_REGISTRY_PASSWORD, "
        "or --docker-config"
    )


def _realm(challenge: _Challenge, reference: Reference, plain_http: bool) -> str:
    """The token realm the registry named, if credentials may go there: https, or http when the
    registry itself is plain HTTP."""
    realm = challenge.params.get("realm", "")
    schemes = ("https", "http") if plain_http else ("https",)
    try:
        parts = urllib.parse.urlsplit(realm)
        named = parts.scheme in schemes and bool(parts.hostname)
        if parts.hostname:
            parts.hostname.encode("idna")  # an empty or 64-character label: no host to connect to
    except ValueError:  # "Invalid IPv6 URL" (a '[' it cannot read), or the label (UnicodeError)
        named = False
    if not named:
        raise OciError(
            f"{reference.registry} names the token realm {brief(repr(realm))}: refused, quantship asks "
            f"a realm for tokens over {' or '.join(schemes)} only"
        )
    return realm


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@dataclass
class _Bearer:
    """The bearer token of one push or pull: for its actions on its repository, from the realm the
    registry's challenge names. Renewed before a request once its `expires_in` has passed, and
    whenever the registry refuses it (the registry's clock decides; Docker Hub's tokens live
    300 s): a push or pull may outlive any one token."""

    challenge: _Challenge
    reference: Reference
    actions: str
    login: _Login | None
    plain_http: bool
    timeout: float
    speed_limit: SpeedLimit
    clock: Callable[[], float] = time.monotonic
    token: str = ""
    expires: float = float("-inf")
    """When (on `clock`) the token's lifetime ends, counted from when it was asked for."""

    def current(self) -> str:
        """The token, renewed first if its lifetime has passed."""
        return self.token if self.clock() < self.expires else self.renew()

    def renew(self, challenge: _Challenge | None = None) -> str:
        """A fresh token, asked of the realm `challenge` names (else the last one's); its scope
        stays this operation's, whatever the challenge asks (a HEAD's challenge asks for pull
        only, and that token would not do for the upload after it). The realm stays on the
        first challenge's origin: a challenge naming another is refused, unasked."""
        if challenge is not None:
            self._same_realm(challenge)
            self.challenge = challenge
        asked = self.clock()
        with _Timeouts.on(_OwnRedirects(), self.timeout, self.speed_limit) as session:
            self.token, lifetime = _token(
                self.challenge, self.reference, self.actions, self.login, self.plain_http, session
            )
        self.expires = asked + lifetime
        return self.token

    def _same_realm(self, challenge: _Challenge) -> None:
        """Refuse a challenge whose realm is on another origin (scheme, host, port) than the first
        one's: the credentials went to that realm, and a registry (or whoever answers in its
        name) does not get to send them elsewhere half-way."""
        pinned = _origin(_realm(self.challenge, self.reference, self.plain_http))
        named = _origin(_realm(challenge, self.reference, self.plain_http))
        if named != pinned:
            raise OciError(
                f"{self.reference.registry} named the token realm {brief(pinned)}, then "
                f"{brief(named)}: refused, a push or pull asks one realm for its tokens"
            )


def _token(
    challenge: _Challenge,
    reference: Reference,
    actions: str,
    login: _Login | None,
    plain_http: bool,
    session: requests.Session,
) -> tuple[str, float]:
    """A bearer token for `actions` on the reference's repository, and the seconds it lives,
    asked of the realm the registry's challenge names: with an identity token (the OAuth2
    refresh-token grant, POSTed), the credentials (basic auth), both to that realm alone, or
    anonymously. The realm's answer is read within MAX_TOKEN_BYTES; a redirect is refused."""
    realm = _realm(challenge, reference, plain_http)
    host = brief(urllib.parse.urlsplit(realm).netloc)  # the registry's words: printable, bounded
    params = {"scope": f"repository:{reference.repository}:{actions}"}
    if "service" in challenge.params:
        params["service"] = challenge.params["service"]
    too_long = f"the token realm {host} answered more than {MAX_TOKEN_BYTES} bytes: refused"
    try:
        with _ask_realm(session, realm, params, login) as answer:
            _check_token_answer(answer, host, reference, login)
            body = b"".join(_capped(answer, MAX_TOKEN_BYTES, too_long))
    except requests.RequestException as exc:
        raise OciError(
            f"cannot reach the token realm {host} of {reference.registry}: {type(exc).__name__}"
        ) from exc
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        data = None
    # the spec names it `token`; OAuth2 realms (ACR) say `access_token`
    token = (data.get("token") or data.get("access_token")) if isinstance(data, dict) else None
    if not isinstance(token, str) or not re.fullmatch(r"[\x21-\x7e]+", token):
        raise OciError(f"the token realm {host} of {reference.registry} answered no token")
    return token, _lifetime(data)


def _ask_realm(
    session: requests.Session, realm: str, params: dict[str, str], login: _Login | None
) -> requests.Response:
    """The realm's streamed answer to a token request: the OAuth2 refresh-token grant when
    `login` holds an identity token (https://distribution.github.io/distribution/spec/auth/oauth/),
    else the token spec's GET, with the credentials as basic auth when there are any."""
    if login is not None and login.identity_token is not None:
        form = {
            **params,
            "grant_type": "refresh_token",
            "refresh_token": login.identity_token,
            "client_id": CLIENT_ID,
        }
        return session.post(realm, data=form, stream=True)
    return session.get(realm, params=params, auth=login.basic if login else None, stream=True)


def _lifetime(answer: dict[str, Any]) -> float:
    """The seconds a token lives, from the realm's `expires_in`: MIN_TOKEN_LIFETIME_S at least.
    Its `issued_at` is not read: it is on the realm's clock, which may be minutes off ours."""
    expires_in = answer.get("expires_in")
    if not isinstance(expires_in, int | float) or isinstance(expires_in, bool):
        return MIN_TOKEN_LIFETIME_S
    return max(float(expires_in), MIN_TOKEN_LIFETIME_S)


def _check_token_answer(
    answer: requests.Response, host: str, reference: Reference, login: _Login | None
) -> None:
    """Refuse a token realm's answer that is not a token, naming why."""
    status = answer.status_code
    if answer.is_redirect:  # the credentials go to the realm the registry named, nowhere else
        raise OciError(
            f"the token realm {host} of {reference.registry} redirected the token request: refused"
        )
    if status in (401, 403) and login is not None:
        raise OciError(f"the token realm {host} of {reference.registry} refused {login.named}")
    if status in (401, 403):
        raise OciError(f"{_needs_credentials(reference)} (its token realm {host} gives no anonymous token)")
    if status != 200:
        raise OciError(
            f"the token realm {host} of {reference.registry} answered {status} {brief(answer.reason or '')}"
        )


def _login(reference: Reference, credentials: Credentials | None) -> _Login | None:
    """The user and password from the arguments, else the Docker config's entry for the registry
    (with its identity token, if it has one)."""
    if credentials is None:
        return None
    if credentials.username is not None and credentials.password is not None:
        return _Login(credentials.username, credentials.password)
    if credentials.docker_config is None:
        return None
    try:
        auths = json.loads(credentials.docker_config.read_text()).get("auths", {})
    except (OSError, ValueError, AttributeError) as exc:
        raise OciError(f"cannot read the Docker config {credentials.docker_config}: {exc}") from exc
    entry = _auth_for(auths, reference.registry)
    identity = entry.get("identitytoken") or None
    if identity is not None and not (isinstance(identity, str) and re.fullmatch(r"[\x21-\x7e]+", identity)):
        raise OciError(f"the Docker config's identitytoken for {reference.registry} is not a token")
    if "username" in entry and "password" in entry:
        return _Login(str(entry["username"]), str(entry["password"]), identity)
    if "auth" in entry:
        try:
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
        except (ValueError, UnicodeDecodeError) as exc:
            raise OciError(
                f"the Docker config's auth for {reference.registry} is not base64 user:password"
            ) from exc
        return _Login(user, password, identity)
    return _Login("", "", identity) if identity is not None else None


def _auth_for(auths: Any, registry: str) -> dict[str, Any]:
    """The Docker config's entry for `registry`: keyed by its host as someone wrote it, with or
    without a scheme and a path (`https://Registry.Example.com/v1/`); a host has no case. Docker
    Hub's is under any of DOCKER_HUB_LOGINS."""
    if not isinstance(auths, dict):
        return {}
    by_host: dict[str, dict[str, Any]] = {}
    for key, entry in auths.items():
        written = str(key) if "://" in str(key) else f"//{key}"
        if isinstance(entry, dict):
            by_host.setdefault(urllib.parse.urlsplit(written).netloc.lower(), entry)
    hosts = DOCKER_HUB_LOGINS if registry == DOCKER_HUB_API else (registry,)
    return next((by_host[host] for host in hosts if host in by_host), {})


@contextmanager
def _registry_errors(reference: Reference) -> Iterator[None]:
    """What oras and requests raise, as an OciError that names the reference."""
    try:
        yield
    except (_Withheld, _Refused, _Failed) as exc:
        raise OciError(f"{reference}: {exc}") from exc
    except oras.auth.AuthenticationException as exc:
        raise OciError(f"{reference}: the registry refused the credentials: {exc}") from exc
    except (requests.RequestException, ValueError) as exc:
        message = str(exc)
        answer = getattr(exc, "response", None)  # an HTTPError's; a pull reads statuses itself
        refused = answer is not None and answer.status_code in (401, 403)
        # oras's push says some refusals only in a ValueError's text
        if refused or (isinstance(exc, ValueError) and ("401" in message or "Unauthorized" in message)):
            raise OciError(f"{reference}: the registry refused the credentials") from exc
        raise OciError(f"{reference}: {brief(message) or type(exc).__name__}") from exc


class _PrintableRecords(logging.Filter):
    """oras logs what a registry's error body says (`_parse_response_errors`), raw and whole: each
    record it logs becomes one `brief` line."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = brief(record.getMessage()), None
        return True


_ORAS_LOG = oras.logger.logger.logger
"""The standard library logger oras writes through."""
if not any(isinstance(kept, _PrintableRecords) for kept in _ORAS_LOG.filters):
    _ORAS_LOG.addFilter(_PrintableRecords())


def _sha256(path: Path) -> str:
    return artifact.sha256_file(path)
