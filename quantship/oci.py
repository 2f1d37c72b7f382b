"""Artifacts in OCI registries: `quantship push` (with `oras`) and `pull` (two GETs, see below).

An artifact becomes one OCI image manifest (the OCI 1.0 way of typing an artifact: by its
config's media type, `CONFIG_MEDIA_TYPE`), whose config blob is the artifact's manifest.json
and whose layers are its files (model.onnx, reference.onnx, manifest.json), each titled with its
file name. The ed25519 signature lives inside manifest.json, so it travels with the artifact.

Digests are verified end to end: every pulled layer against its OCI descriptor (oras does not
check), then the files against manifest.json's sha256s (and the signature) by `load_artifact`,
and a pull by digest against the manifest the registry served. A pull writes into a temporary
directory beside the destination and renames it into place only when all of that holds, in place
of an older artifact there as `quantize -o` does (`artifact_dirs.replace_dir`: anything else there
is refused, before any download).

A registry's answers are hostile until checked, as the operator's init container pulls from
wherever a QuantizedModel points: the manifest is read up to `MAX_MANIFEST_BYTES` and must match
`MANIFEST_SCHEMA` before any of it is used; layers are downloaded up to the sizes their
descriptors declare, all of them within `max_bytes`; no connect or read waits past `timeout`,
and no transfer moves slower than its `SpeedLimit` (a registry, or a proxy, that drips bytes
just inside each read's timeout would hold a pull or push for hours): every session's transport
adapter (`oci_transport.Timeouts`) meters a request's body as it is sent and an answer (status line, headers
through `paced_headers`, then body) as it is read.
So a pull is two plain GETs (the manifest, then each layer) over one requests session, made once
each and streamed: oras's requests would read a failed answer's body whole and retry it for
minutes, and its basic-auth backend raises AttributeError on a 401 when it holds no credentials.

URIs: `oci://REGISTRY/REPO:TAG` or `oci://REGISTRY/REPO@sha256:DIGEST` (`oci_reference`). Plain
HTTP is used for loopback registries and with `insecure=True`; credentials come from arguments or a
Docker config file (a dockerconfigjson pull secret mounted in a pod), and go where the registry's
challenge says (`oci_auth`).

Its parts, each a module of its own: references (`oci_reference`), authentication (`oci_auth`), the
HTTP transport with its timeouts and retries (`oci_transport`) and the speed limit
(`transfer_speed`). The names a caller of `push` and `pull` uses are this module's (`__all__`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import oras.auth
import oras.client
import oras.container
import oras.defaults
import oras.logger
import oras.provider
import requests

from quantship import artifact, artifact_dirs, artifact_format, artifact_manifest, manifest_schema, scratch
from quantship.oci_auth import (
    GIVE_CREDENTIALS,
    PULL,
    PUSH,
    Bearer,
    BearerTo,
    Challenge,
    Credentials,
    CredentialsOnlyTo,
    Login,
    Refused,
    Withheld,
    challenge_of,
    check_supported,
    login_for,
    needs_credentials,
    probe,
)
from quantship.oci_reference import (
    PULL_REFERENCE_PATTERN,
    PUSH_REFERENCE_PATTERN,
    REFERENCE_PATTERN,
    SCHEME,
    TAG_PATTERN,
    OciError,
    Reference,
    push_reference,
    tag_with_suffix,
)
from quantship.oci_transport import GATEWAY_GAVE_UP, OwnRedirects, Timeouts, capped, push_retries
from quantship.printable import brief
from quantship.transfer_speed import SPEED_LIMIT, SpeedLimit, TooSlow

__all__ = [
    "CONFIG_MEDIA_TYPE",
    "LAYER_MEDIA_TYPES",
    "MANIFEST_MEDIA_TYPE",
    "PULL_REFERENCE_PATTERN",
    "PUSH_REFERENCE_PATTERN",
    "REFERENCE_PATTERN",
    "SCHEME",
    "SPEED_LIMIT",
    "TIMEOUT_S",
    "Credentials",
    "OciError",
    "Pulled",
    "Reference",
    "SpeedLimit",
    "TooSlow",
    "pull",
    "push",
    "push_reference",
    "tag_with_suffix",
]

CONFIG_MEDIA_TYPE = "application/vnd.quantship.artifact.config.v1+json"
"""The artifact type: what `quantship pull` and the operator accept, nothing else."""
LAYER_MEDIA_TYPES = {
    artifact.MODEL_FILE: "application/vnd.quantship.model.onnx",
    artifact.REFERENCE_FILE: "application/vnd.quantship.reference.onnx",
    artifact.MANIFEST_FILE: "application/vnd.quantship.manifest.v1+json",
}
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
TIMEOUT_S = 120.0
"""Seconds a registry may keep any one connect or read waiting (requests waits forever unless
told). A pull makes each request once but its first look at /v2/; a push retries what
`PUSH_RETRIES` says, nothing else."""
BLOB_UPLOAD_ATTEMPTS = 3
"""How many times a push uploads one blob (a POST for a session, then the PUT of the blob) when the
PUT meets a `RETRIED_STATUSES` answer and the blob is not in the registry after it."""
MAX_MANIFEST_BYTES = 4 * 2**20
"""The largest manifest read: 4 MiB, the size the OCI distribution spec asks every registry to
accept. An artifact's is under 2 KB; a registry that streams more is refused, not held in memory."""
MAX_REDIRECTS = 5
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


def push(
    root: Path,
    uri: str,
    *,
    credentials: Credentials | None = None,
    insecure: bool = False,
    timeout: float = TIMEOUT_S,
    also_tags: Sequence[str] = (),
    speed_limit: SpeedLimit = SPEED_LIMIT,
    verified: Callable[[artifact.Artifact], None] | None = None,
) -> str:
    """Verify the artifact at `root` and push it to `uri` (a tag), then point each of `also_tags`
    (tags of the same repository) at the same manifest, in order. Returns the pushed manifest's
    digest, to pin with oci://REGISTRY/REPO@DIGEST. Each connect and read waits at most `timeout`;
    an upload or answer that moves slower than `speed_limit` is abandoned. `verified` is handed the
    artifact once verified, before anything is sent (the CLI warns there of a failed gate)."""
    reference = push_reference(uri)
    for tag in also_tags:
        if not re.fullmatch(TAG_PATTERN, tag):
            raise OciError(f"{brief(repr(tag))} is not a tag ({TAG_PATTERN})")
    with artifact.opened(root) as loaded:  # a .tar.gz unpacked for the push, removed after it
        if verified is not None:
            verified(loaded)
        return _push(loaded, root, reference, credentials, insecure, timeout, also_tags, speed_limit)


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
    with client.session:  # its pool's connections closed, whatever happens: a refusal left them to the GC
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
                    manifest_annotations={
                        _TITLE: loaded.manifest.get("model", {}).get("source", source.name)
                    },
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
    replaced: bool = False
    """Whether it took the place of an older artifact at its destination."""


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
    """Pull the artifact at `uri` into `dest` and verify it: `dest` is created, or an empty
    directory or an older artifact there is replaced, in one rename, never half-written (anything
    else there is refused, untouched). `max_bytes` caps the layers' sizes together, as their
    descriptors declare them. Each connect and read waits at most `timeout`; a manifest, layer or
    token that arrives slower than `speed_limit` is abandoned."""
    reference = Reference.parse(uri)
    dest = dest.resolve()  # as `quantize -o`: `.` is the folder it names (`-o .` was a traceback)
    if os.path.ismount(dest):  # pulled beside it and renamed into place: not across
        raise OciError(f"{dest} is a mount point: pull into a directory inside it")
    try:
        artifact.refuse_inside_an_artifact(dest)
        artifact_dirs.restore_interrupted(dest)  # a replacement killed between its renames
    except artifact.ArtifactError as exc:
        raise OciError(str(exc)) from None
    if (refused := artifact_dirs.in_the_way(dest)) is not None:  # before any download: it may be gigabytes
        raise OciError(f"{refused} exists and is not an artifact; refusing to replace it")
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
            staging.chmod(0o755)  # as write_artifact leaves an artifact: a server of another user reads it
            replaced = artifact_manifest.is_artifact_dir(dest)
            with _disk_errors(f"{reference}: cannot move the artifact to {dest}"):
                try:
                    artifact_dirs.replace_dir(staging, dest)  # what came there meanwhile is judged again
                except artifact.ArtifactError as exc:
                    raise OciError(str(exc)) from None
    return Pulled(dest, loaded.manifest, loaded.signed, image_digest, replaced)


@dataclass
class _Registry:
    """One repository of a registry, read over a session whose requests time out. URLs as oras
    builds them. What it sends to authenticate follows the registry's challenges: nothing, basic
    credentials, or a bearer token from the realm the registry names."""

    reference: Reference
    session: requests.Session
    prefix: str
    """http or https."""
    login: Login | None
    timeout: float
    speed_limit: SpeedLimit
    basic: bool = False
    """The registry asked for basic auth: the credentials go with every request to its host."""
    bearer: Bearer | None = None
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
        login = login_for(reference, credentials)
        # a busy first look waits
        asked = probe(reference, login, plain_http, timeout, speed_limit, push_retries())
        session = Timeouts.on(OwnRedirects(), timeout, speed_limit)
        prefix = "http" if plain_http else "https"
        registry = cls(reference, session, prefix, login, timeout, speed_limit)
        if asked is not None:
            registry.answer(asked)
        return registry

    @property
    def plain_http(self) -> bool:
        return self.prefix == "http"

    def answer(self, challenge: Challenge) -> bool:
        """Take up what the registry asked for; False when nothing new can be sent."""
        check_supported(challenge, self.reference)
        if challenge.scheme == "bearer":  # a new token each time: the last may have expired
            if self.bearer is None:
                self.bearer = Bearer(
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
        if response.status_code == 401 and self._own(response.url):
            response.close()  # first: a challenge refused (a realm elsewhere) raised, its connection held
            if self.answer(challenge_of(response)):
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
        body = b"".join(capped(response, MAX_MANIFEST_BYTES, too_long))
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    if reference.digest and digest != reference.digest:
        raise OciError(f"{reference}: the manifest served does not match the digest asked for")
    try:
        manifest = artifact_manifest.parse_json(body)
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
        chunks = capped(response, size, too_long)
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
            raise Refused(
                "the registry refused the push (401 or 403) and no credentials were given: "
                + GIVE_CREDENTIALS
            ) from exc
        if method == "HEAD":  # it answers whether a blob exists
            return answer
        if answer.status_code in (401, 403):  # still, after oras answered the challenge
            raise Refused(f"the registry refused the credentials: {_Failed.of(answer, method)}")
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
    login = login_for(reference, credentials)
    asked = probe(reference, login, plain_http, timeout, speed_limit, push_retries())
    if asked is None or asked.scheme == "basic":
        client = _PushClient(hostname=reference.registry, insecure=plain_http, auth_backend="basic")
        origin = f"{'http' if plain_http else 'https'}://{reference.registry}"
        CredentialsOnlyTo.guard(client.session, timeout, speed_limit, origin)
        if login is not None:
            client.auth.set_basic_auth(*login.basic)
        return client
    if login is None:  # an anonymous token may pull, never push
        raise OciError(needs_credentials(reference))
    # asked here, so a realm's refusal is named before oras starts; oras would ask for the first
    # request's scope (pull) and send that token with the upload, and never renew one it holds
    bearer = Bearer(asked, reference, PUSH, login, plain_http, timeout, speed_limit)
    bearer.renew()
    client = _PushClient(hostname=reference.registry, insecure=plain_http, auth_backend="token")
    registry = f"{'http' if plain_http else 'https'}://{reference.registry}"
    BearerTo.carrying(client.session, timeout, speed_limit, registry, bearer)
    return client


@contextmanager
def _registry_errors(reference: Reference) -> Iterator[None]:
    """What oras and requests raise, as an OciError that names the reference."""
    try:
        yield
    except (Withheld, Refused, _Failed) as exc:
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
    return artifact_format.sha256_file(path)
