"""`quantship push` against the real registry behind a proxy that bends some of its answers: a
Docker-Content-Digest missing or wrong, a transient 429 or 503, an answer that never comes, an
error message written to take over a terminal."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
import requests
from fault_proxy import Fault, FaultProxy, proxying
from registry_harness import Registry

from quantship import artifact, oci

MANIFEST_PUT = "/manifests/"


@pytest.fixture
def proxy(registry: Registry) -> Iterator[FaultProxy]:
    with proxying(registry.address) as started:
        yield started


def _tagged(registry: Registry, repository: str, tag: str) -> str:
    """The digest of the manifest `tag` names, computed from what the registry serves."""
    answer = requests.get(
        f"http://{registry.address}/v2/{repository}/manifests/{tag}",
        headers={"Accept": oci.MANIFEST_MEDIA_TYPE},
        timeout=10,
    )
    answer.raise_for_status()
    return "sha256:" + hashlib.sha256(answer.content).hexdigest()


def test_a_push_whose_answer_names_no_digest_returns_the_digest_of_what_was_sent(
    registry: Registry, proxy: FaultProxy, good_artifact: artifact.Artifact
) -> None:
    # Docker-Content-Digest is optional (OCI distribution spec): the tag moved all the same
    proxy.faults.append(Fault("PUT", MANIFEST_PUT, header=("Docker-Content-Digest", None)))
    digest = oci.push(good_artifact.root, proxy.uri("faults/nodigest:v1"))
    assert digest == _tagged(registry, "faults/nodigest", "v1")


def test_a_push_whose_answer_names_another_digest_is_refused(
    proxy: FaultProxy, good_artifact: artifact.Artifact
) -> None:
    wrong = "sha256:" + "0" * 64
    proxy.faults.append(Fault("PUT", MANIFEST_PUT, header=("Docker-Content-Digest", wrong)))
    with pytest.raises(
        oci.OciError, match=r"names the pushed manifest sha256:0+, but the bytes sent are sha256:"
    ):
        oci.push(good_artifact.root, proxy.uri("faults/wrongdigest:v1"))


def test_further_tags_name_the_pushed_manifest(registry: Registry, good_artifact: artifact.Artifact) -> None:
    digest = oci.push(good_artifact.root, registry.uri("faults/tags:first"), also_tags=["second", "third"])
    assert [_tagged(registry, "faults/tags", tag) for tag in ("first", "second", "third")] == [digest] * 3
