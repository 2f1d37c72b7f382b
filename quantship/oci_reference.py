"""Where an artifact lives in an OCI registry: `oci://REGISTRY/REPO:TAG` or
`oci://REGISTRY/REPO@sha256:DIGEST`, read (`Reference.parse`) by the grammar the OCI distribution
spec and Docker's references write, and `OciError`, what every part of quantship's registry client
raises (`quantship.oci`: push and pull; `oci_auth`, `oci_transport`, `transfer_speed`).

Docker Hub's names (`docker.io/user/repo`) are read as docker reads them. The patterns are RE2 too:
the CRD's URI rules hold them. It imports nothing of quantship but `quantship.printable`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import oras.container

from quantship.printable import brief


class OciError(Exception):
    """The registry, the reference or the pulled content cannot be used; the message says why."""


SCHEME = "oci://"
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
_REGISTRY = rf"({_LABEL}(\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])(:[0-9]{{1,5}})?"
_COMPONENT = r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*"
TAG_MAX_LENGTH = 128
TAG_PATTERN = rf"[A-Za-z0-9_][A-Za-z0-9._-]{{0,{TAG_MAX_LENGTH - 1}}}"
_DIGEST = r"@sha256:[0-9a-f]{64}"
REFERENCE_PATTERN = rf"{_REGISTRY}/{_COMPONENT}(/{_COMPONENT})*(:{TAG_PATTERN})?({_DIGEST})?"
"""REGISTRY/REPO[:TAG][@DIGEST] as the OCI distribution spec and Docker's reference grammar write
them (RE2 too: the CRD's pattern holds it). Anything looser is ambiguous: oras reads the registry
as the first part that looks like a host, anywhere in the reference, so `reg/x//evil:1/y:t` sent
the credentials for `reg` to `evil`."""
PULL_REFERENCE_PATTERN = (
    rf"{_REGISTRY}/{_COMPONENT}(/{_COMPONENT})*(:{TAG_PATTERN}|(:{TAG_PATTERN})?{_DIGEST})"
)
"""REFERENCE_PATTERN naming a tag, a digest or both: what `pull`, `fetch` and the operator take
(Reference.parse refuses a reference with neither rather than read `latest` into it, as docker
does), and so what the CRD admits as an artifact."""
PUSH_REFERENCE_PATTERN = rf"{_REGISTRY}/{_COMPONENT}(/{_COMPONENT})*:{TAG_PATTERN}"
"""REGISTRY/REPO:TAG: what `push` writes to. A digest names content that exists, not a place to
write (the registry decides the pushed manifest's digest)."""
DOCKER_HUB_API = "registry-1.docker.io"
"""Where Docker Hub answers the registry API."""
DOCKER_HUB_NAMES = ("docker.io", "index.docker.io")
"""What people write for Docker Hub (`docker.io/user/repo`): read as DOCKER_HUB_API, as docker does."""


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


def push_reference(uri: str) -> Reference:
    """`uri` read as a place `push` can write to: a tag, no digest, that oras reads as written.
    Raises OciError; checks no registry."""
    reference = Reference.parse(uri)
    if reference.digest or not reference.tag:
        raise OciError(f"push to a tag, not a digest: {uri} (oci://REGISTRY/REPO:TAG)")
    reference.container()  # where oras will send the files and the credentials
    return reference


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
