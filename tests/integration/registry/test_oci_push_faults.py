"""`quantship push` against the real registry behind a proxy that bends some of its answers: a
Docker-Content-Digest missing or wrong, a transient 429 or 503, an answer that never comes, an
error message written to take over a terminal."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from fault_proxy import Fault, FaultProxy, proxying
from registry_harness import PASSWORD, TOKEN_PASSWORD, TOKEN_USER, USER, Registry, TokenServer

from quantship import artifact, oci, oci_auth, oci_transport

MANIFEST_PUT = "/manifests/"
BLOB_PUT = r"/blobs/uploads/[^?]+\?.*digest="


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


@pytest.mark.parametrize(
    ("method", "path", "status", "headers"),
    [
        ("POST", "/blobs/uploads/$", 429, {"Retry-After": "1"}),
        ("PUT", "/blobs/uploads/", 503, {}),
        ("PUT", MANIFEST_PUT, 502, {}),
        ("PUT", MANIFEST_PUT, 504, {}),
    ],
)
def test_a_transient_answer_is_retried_and_the_push_completes(
    registry: Registry,
    proxy: FaultProxy,
    good_artifact: artifact.Artifact,
    method: str,
    path: str,
    status: int,
    headers: dict[str, str],
) -> None:
    proxy.faults.append(Fault(method, path, status=status, headers=headers, times=1))
    repository = f"faults/transient{status}"
    digest = oci.push(good_artifact.root, proxy.uri(f"{repository}:v1"))
    assert digest == _tagged(registry, repository, "v1")
    assert proxy.faults[0].times == 0, "the fault was met"


@pytest.mark.parametrize("status", [502, 504])
def test_a_blob_upload_a_gateway_gave_up_on_after_the_registry_completed_it_is_found_and_the_push_completes(
    registry: Registry, proxy: FaultProxy, good_artifact: artifact.Artifact, status: int
) -> None:
    # the same PUT again would meet 404 BLOB_UPLOAD_UNKNOWN: the registry closed that session
    proxy.faults.append(
        Fault("PUT", BLOB_PUT, status=status, headers={"Retry-After": "3600"}, forwarded=True, times=1)
    )
    repository = f"faults/gateway{status}"
    digest = oci.push(good_artifact.root, proxy.uri(f"{repository}:v1"))
    assert digest == _tagged(registry, repository, "v1")
    assert proxy.faults[0].times == 0, "the fault was met"
    assert proxy.count("PUT", BLOB_PUT) == 3, "one PUT per blob: the answered one was not made again"


def test_a_blob_upload_whose_put_keeps_failing_is_uploaded_anew_a_few_times_then_named(
    proxy: FaultProxy, good_artifact: artifact.Artifact
) -> None:
    proxy.faults.append(Fault("PUT", BLOB_PUT, status=502))
    with pytest.raises(oci.OciError, match=r": HTTP 502 Bad Gateway \(PUT /v2/faults/gone/blobs/"):
        oci.push(good_artifact.root, proxy.uri("faults/gone:v1"))
    assert proxy.count("POST", "/blobs/uploads/$") == proxy.count("PUT", BLOB_PUT) == oci.BLOB_UPLOAD_ATTEMPTS


@pytest.mark.parametrize("status", [429, 503])
def test_a_blob_upload_the_registry_itself_refuses_for_a_while_is_put_again_after_its_retry_after(
    proxy: FaultProxy, good_artifact: artifact.Artifact, status: int
) -> None:
    """The registry's own 429 or 503 completed nothing: the same PUT goes again after Retry-After.
    Taken for a gateway's late answer, it was met by a new upload at once, three times, and failed."""
    proxy.faults.append(Fault("PUT", BLOB_PUT, status=status, headers={"Retry-After": "1"}, times=2))
    oci.push(good_artifact.root, proxy.uri(f"faults/busy{status}:v1"))
    assert proxy.faults[0].times == 0, "the fault was met"
    assert proxy.count("POST", "/blobs/uploads/$") == 3, "one upload session per blob"


def test_a_rate_limit_on_the_first_look_at_a_token_registry_is_retried_and_the_push_completes(
    token_registry: tuple[Registry, TokenServer], good_artifact: artifact.Artifact
) -> None:
    served, _ = token_registry
    credentials = oci.Credentials(username=TOKEN_USER, password=TOKEN_PASSWORD)
    with proxying(served.address) as proxy:
        proxy.faults.append(Fault("GET", "^/v2/$", status=429, headers={"Retry-After": "1"}, times=1))
        oci.push(good_artifact.root, proxy.uri("faults/probe:v1"), credentials=credentials)
        assert proxy.faults[0].times == 0, "the fault was met"


def test_a_first_look_that_stays_unavailable_is_named_by_its_status_not_read_as_an_open_registry(
    proxy: FaultProxy, good_artifact: artifact.Artifact
) -> None:
    proxy.faults.append(Fault("GET", "^/v2/$", status=503, headers={"Retry-After": "0"}))
    with pytest.raises(oci.OciError, match=r": HTTP 503 Service Unavailable \(GET /v2/\)$"):
        oci.push(good_artifact.root, proxy.uri("faults/probe503:v1"))
    assert proxy.count("GET", "^/v2/$") == 1 + oci_transport.PUSH_RETRIES
    assert proxy.count("POST", "/blobs/uploads/$") == 0, "nothing uploaded"


def test_a_registry_that_stays_busy_is_named_by_its_status_after_a_few_tries(
    proxy: FaultProxy, good_artifact: artifact.Artifact
) -> None:
    proxy.faults.append(Fault("POST", "/blobs/uploads/$", status=503, headers={"Retry-After": "0"}))
    with pytest.raises(oci.OciError, match=r": HTTP 503 Service Unavailable \(POST /v2/faults/busy/blobs/"):
        oci.push(good_artifact.root, proxy.uri("faults/busy:v1"))
    assert proxy.count("POST", "/blobs/uploads/$") == 1 + oci_transport.PUSH_RETRIES


def test_a_server_error_is_final_at_once_and_named_by_its_status(
    proxy: FaultProxy, good_artifact: artifact.Artifact
) -> None:
    proxy.faults.append(Fault("PUT", MANIFEST_PUT, status=500))
    with pytest.raises(
        oci.OciError, match=r": HTTP 500 Internal Server Error \(PUT /v2/faults/broken/manifests/v1\)"
    ):
        oci.push(good_artifact.root, proxy.uri("faults/broken:v1"))
    assert proxy.count("PUT", MANIFEST_PUT) == 1


def test_an_answer_that_never_comes_times_out_once(
    proxy: FaultProxy, good_artifact: artifact.Artifact
) -> None:
    proxy.faults.append(Fault("PUT", MANIFEST_PUT, delay=60))
    with pytest.raises(oci.OciError, match=r"faults/hung:v1: .*Read timed out"):
        oci.push(good_artifact.root, proxy.uri("faults/hung:v1"), timeout=1)
    assert proxy.count("PUT", MANIFEST_PUT) == 1, "made once: the registry had its timeout"


HOSTILE_MESSAGE = (
    "\x1b]0;owned title\x07\x1b[2J\x1b[31mFAKE: push ok, digest sha256:0000\x1b[0m\n" + "x" * 5000
)


@pytest.mark.parametrize("status", [400, 403])
def test_a_registrys_error_message_reaches_the_terminal_printable_and_short(
    proxy: FaultProxy, good_artifact: artifact.Artifact, status: int
) -> None:
    body = json.dumps({"errors": [{"code": "DENIED", "message": HOSTILE_MESSAGE}]}).encode()
    headers = {"Content-Type": "application/json"}
    proxy.faults.append(Fault("PUT", MANIFEST_PUT, status=status, headers=headers, body=body))
    done = subprocess.run(
        [sys.executable, "-m", "quantship", "push", str(good_artifact.root), proxy.uri("faults/escape:v1")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    said = done.stdout + done.stderr
    assert "\x1b" not in said and "\x07" not in said
    assert "Traceback" not in said and all(len(line) < 1000 for line in said.splitlines()), said[:2000]
    assert f"HTTP {status}" in said or "no credentials were given" in said


def test_a_refusal_of_the_credentials_logged_by_oras_reaches_the_terminal_printable_and_short(
    auth_registry: Registry, good_artifact: artifact.Artifact
) -> None:
    # oras logs a refusal's OCI error messages itself (_parse_response_errors), then raises
    body = json.dumps({"errors": [{"code": "DENIED", "message": HOSTILE_MESSAGE}]}).encode()
    with proxying(auth_registry.address) as proxy:
        proxy.faults.append(Fault("PUT", MANIFEST_PUT, status=403, body=body))
        done = subprocess.run(
            [
                *(sys.executable, "-m", "quantship", "push", str(good_artifact.root)),
                *(proxy.uri("faults/escape:v1"), "--username", USER),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={**os.environ, "QUANTSHIP_REGISTRY_PASSWORD": PASSWORD},
        )
    said = done.stdout + done.stderr
    assert done.returncode != 0 and "refused the credentials" in said, said[:2000]
    assert "\x1b" not in said and "\x07" not in said
    assert "Traceback" not in said and all(len(line) < 1000 for line in said.splitlines()), said[:2000]


def test_a_registry_slow_to_answer_v2_but_within_the_timeout_is_pulled_from(
    registry: Registry, proxy: FaultProxy, good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    oci.push(good_artifact.root, registry.uri("faults/slowv2:v1"))
    proxy.faults.append(Fault("GET", "^/v2/$", delay=oci_auth.CONNECT_TIMEOUT_S + 1))
    pulled = oci.pull(proxy.uri("faults/slowv2:v1"), tmp_path / "pulled", timeout=60)
    assert pulled.digest == good_artifact.digest


def test_a_pull_whose_first_look_meets_one_rate_limit_waits_and_completes(
    registry: Registry, proxy: FaultProxy, good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    """Once the first look named its failures, one 429 on it failed a pull that had gone on before."""
    oci.push(good_artifact.root, registry.uri("faults/pulled:v1"))
    proxy.faults.append(Fault("GET", "^/v2/$", status=429, headers={"Retry-After": "1"}, times=1))
    pulled = oci.pull(proxy.uri("faults/pulled:v1"), tmp_path / "pulled")
    assert pulled.digest == good_artifact.digest and proxy.faults[0].times == 0
