"""A registry, or a proxy, that drips bytes, each piece well inside a read's timeout: a pull or a
push that moves slower than its `oci.SpeedLimit` is abandoned with one line that names the
registry, the request, the bytes moved and the rate, and leaves nothing behind; one that keeps
above it is not. What is served starts from what the real registry served for a pushed artifact
(`hostile_registry`), or passes through a proxy in front of the real registry (`fault_proxy`).
The limits are made small here, through the functions' own parameters."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from fault_proxy import Fault, proxying
from hostile_registry import Served, challenge, drips, drips_headers, late, serving, takes_slowly
from registry_harness import Registry

from quantship import artifact, oci
from quantship.cli import main
from quantship.operator import fetch

REPOSITORY = "quantship/dripping"
TIGHT = oci.SpeedLimit(bytes_per_s=100_000, window_s=0.3)
"""A limit a drip of a few KB/s falls far under within a second."""
DRIP = {"piece": 64, "every": 0.05}
"""1280 bytes a second: under TIGHT by far, and each piece far inside any read timeout."""
ABANDONED = (
    r"its answer moved \d+ bytes in [\d.]+ s \([\d.]+ bytes/s; \d+ bytes in all\), "
    r"under the minimum of 100000 bytes/s over 0.3 s: abandoned"
)
HEADERS_ABANDONED = ABANDONED.replace("its answer", "its answer's status line and headers")
HEADER_DRIP = 0.05
"""A byte of the status line and headers every 50 ms: 20 bytes a second, far inside a 1 s read
timeout. http.client alone takes 100 header lines of 64 KiB: four days of it."""
HUNG_AFTER_S = 60
"""Each test's pytest timeout: a transfer the limit misses drips for hours, so it ends here instead.
Far over the ~1 s an abandonment takes, since it also covers the fixtures: quantizing and pushing the
artifact took over 10 s on 2 loaded cores when this file ran first."""


@pytest.mark.timeout(HUNG_AFTER_S)
def test_a_layer_that_drips_is_abandoned_and_nothing_is_left(served: Served, tmp_path: Path) -> None:
    """Each piece comes within a read's timeout: only the rate over the window ends the pull."""
    model = served.layer_content(artifact.MODEL_FILE)
    served.serve_blob(artifact.MODEL_FILE, drips(model, **DRIP, until=served.registry.released))
    with pytest.raises(oci.OciError) as raised:
        oci.pull(served.uri, tmp_path / "a", speed_limit=TIGHT)
    message = str(raised.value)
    layer = served.layer_path(artifact.MODEL_FILE)
    assert message.startswith(f"{served.registry.address}: GET {layer}: "), message
    assert raised.match(ABANDONED)
    assert list(tmp_path.iterdir()) == []  # the temporary directory beside dest is gone


@pytest.mark.timeout(HUNG_AFTER_S)
def test_a_manifest_that_drips_is_abandoned_before_any_layer_is_asked_for(
    served: Served, tmp_path: Path
) -> None:
    manifest = json.dumps(served.manifest).encode()
    served.registry.answers[served.manifest_path] = drips(manifest, **DRIP, until=served.registry.released)
    with pytest.raises(oci.OciError, match=f"GET {served.manifest_path}: {ABANDONED}"):
        oci.pull(served.uri, tmp_path / "a", speed_limit=TIGHT)
    assert served.blobs_requested == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(HUNG_AFTER_S)
def test_a_token_realm_that_drips_is_abandoned(tmp_path: Path) -> None:
    with serving() as registry:
        realm = f"http://{registry.address}/token"
        registry.answers["/v2/"] = challenge(f'Bearer realm="{realm}",service="dripping"')
        token = json.dumps({"token": "t" * 4000}).encode()
        registry.answers["/token"] = drips(token, **DRIP, until=registry.released)
        with pytest.raises(oci.OciError, match=f"{registry.address}: GET /token: {ABANDONED}"):
            oci.pull(registry.uri(REPOSITORY), tmp_path / "a", speed_limit=TIGHT)
    assert list(tmp_path.iterdir()) == []


def test_a_slow_link_above_the_limit_pulls_whole(
    served: Served, good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    """The model layer in twenty pieces over about 0.4 s, measured over 0.1 s windows against a
    twentieth of that rate: slow, and well above the limit, it passes every window."""
    model = served.layer_content(artifact.MODEL_FILE)
    piece, every = len(model) // 20 + 1, 0.02
    slow = drips(model, piece=piece, every=every, until=served.registry.released)
    served.serve_blob(artifact.MODEL_FILE, slow)
    limit = oci.SpeedLimit(bytes_per_s=piece / every / 20, window_s=0.1)
    assert oci.pull(served.uri, tmp_path / "a", speed_limit=limit).digest == good_artifact.digest


@pytest.mark.timeout(HUNG_AFTER_S)
def test_pull_on_the_command_line_says_so_in_one_line(served: Served, tmp_path: Path) -> None:
    model = served.layer_content(artifact.MODEL_FILE)
    served.serve_blob(artifact.MODEL_FILE, drips(model, **DRIP, until=served.registry.released))
    limits = ["--speed-limit", str(TIGHT.bytes_per_s), "--speed-time", str(TIGHT.window_s)]
    result = CliRunner().invoke(main, ["pull", served.uri, "-o", str(tmp_path / "a"), *limits])
    assert result.exit_code == 3, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].endswith("abandoned"), lines
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(HUNG_AFTER_S)
def test_fetch_reports_it_as_a_failed_pull(served: Served, tmp_path: Path) -> None:
    """The init container: a FetchError, as for any refused pull, and no scratch folder left."""
    manifest = json.dumps(served.manifest).encode()
    served.registry.answers[served.manifest_path] = drips(manifest, **DRIP, until=served.registry.released)
    with pytest.raises(fetch.FetchError, match=ABANDONED):
        fetch.fetch(served.uri, tmp_path / "model", speed_limit=TIGHT)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(HUNG_AFTER_S)
def test_an_answer_to_a_push_that_drips_is_abandoned(
    registry: Registry, good_artifact: artifact.Artifact
) -> None:
    """A proxy that answers the manifest's PUT (the registry stored it) with a page it drips:
    oras reads every answer whole."""
    page = b"<html>created</html>" * 5000
    with proxying(registry.address) as proxy:
        proxy.faults.append(
            Fault("PUT", "/manifests/", status=201, forwarded=True, body=page, drip=(64, 0.05))
        )
        uri = proxy.uri("quantship/dripping-push:v1")
        with pytest.raises(oci.OciError, match=f"PUT /v2/quantship/dripping-push/manifests/v1: {ABANDONED}"):
            oci.push(good_artifact.root, uri, speed_limit=TIGHT)


@pytest.mark.timeout(HUNG_AFTER_S)
def test_an_upload_the_registry_takes_in_drips_is_abandoned() -> None:
    """A blob larger than what the kernel buffers on both ends (a few MB: here 3 MB went before
    the drip was felt), taken 1 KB every 20 ms, sent through a push's own session (oras's
    request, our transport)."""
    with serving() as registry:
        registry.otherwise = takes_slowly(piece=1024, every=0.02, until=registry.released)
        reference = oci.Reference.parse(registry.uri(REPOSITORY))
        client = oci._client(reference, None, False, 10, TIGHT)
        digest = "sha256:" + "ab" * 32
        url = f"http://{registry.address}/v2/{REPOSITORY}/blobs/uploads/session?digest={digest}"
        upload = rf"PUT /v2/{REPOSITORY}/blobs/uploads/session \(blob {digest}\): its upload moved \d+ bytes"
        with pytest.raises(oci.OciError, match=upload + ".*under the minimum of 100000 bytes/s"):
            client.do_request(url, "PUT", data=bytes(16 * 2**20))


@pytest.mark.timeout(HUNG_AFTER_S)
@pytest.mark.parametrize("where", ["/v2/", "manifest", "layer"])
def test_an_answer_whose_status_line_and_headers_drip_is_abandoned(
    served: Served, tmp_path: Path, where: str
) -> None:
    """Each byte within the read timeout, and headers without end: only the speed limit, counted
    from their first byte, ends the pull."""
    path = {"/v2/": "/v2/", "manifest": served.manifest_path}.get(where) or served.layer_path(
        artifact.MODEL_FILE
    )
    served.registry.answers[path] = drips_headers(every=HEADER_DRIP, until=served.registry.released)
    named = f"^{re.escape(served.registry.address)}: GET {path}: {HEADERS_ABANDONED}$"
    with pytest.raises(oci.OciError, match=named):
        oci.pull(served.uri, tmp_path / "a", timeout=1, speed_limit=TIGHT)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(HUNG_AFTER_S)
def test_fetch_on_the_command_line_abandons_dripping_headers_in_one_line(
    served: Served, tmp_path: Path
) -> None:
    served.registry.answers[served.manifest_path] = drips_headers(
        every=HEADER_DRIP, until=served.registry.released
    )
    limits = ["--timeout", "1", "--speed-limit", str(TIGHT.bytes_per_s), "--speed-time", str(TIGHT.window_s)]
    result = CliRunner().invoke(main, ["fetch", served.uri, str(tmp_path / "model"), *limits])
    assert result.exit_code == 3, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.fullmatch(f"error: .*{HEADERS_ABANDONED}", lines[0]), lines
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(HUNG_AFTER_S)
def test_a_push_whose_answers_headers_drip_is_abandoned(good_artifact: artifact.Artifact) -> None:
    """The push's first request after the look at /v2/ (whether a blob is there) meets them."""
    with serving() as registry:
        registry.otherwise = drips_headers(every=HEADER_DRIP, until=registry.released)
        named = rf"{re.escape(registry.address)}: [A-Z]+ /v2/{REPOSITORY}/blobs/\S+: {HEADERS_ABANDONED}"
        with pytest.raises(oci.OciError, match=named):
            oci.push(good_artifact.root, registry.uri(REPOSITORY), timeout=1, speed_limit=TIGHT)


def test_an_answer_that_starts_late_is_not_abandoned(
    served: Served, good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    """The wait for an answer's first byte is the read timeout's alone: a registry may think long
    before it answers (an upload's closing PUT). Here the manifest's answer starts three speed
    windows late, then comes whole."""
    manifest = served.registry.answers[served.manifest_path]
    served.registry.answers[served.manifest_path] = late(
        manifest, by=3 * TIGHT.window_s, until=served.registry.released
    )
    assert oci.pull(served.uri, tmp_path / "a", timeout=5, speed_limit=TIGHT).digest == good_artifact.digest
