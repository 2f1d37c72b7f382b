"""`oci.pull` against a registry that answers badly: what the real registry served for a pushed
artifact, bent one way per test and served from loopback (`hostile_registry`). The operator's init
container pulls from wherever a QuantizedModel points, so every answer is refused with a message
that says why, before it is used, without filling memory or disk, without waiting forever, and
with nothing left behind."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hostile_registry import (
    SERVED_REPOSITORY,
    TITLE,
    Served,
    asks_basic,
    body,
    endless,
    redirect,
    serving,
    stalls,
    stalls_after,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantship import artifact, oci
from quantship.cli import main
from quantship.operator import fetch


def test_the_copy_of_the_real_registry_pulls(
    served: Served, good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    """The bent answers below start from one that works."""
    assert oci.pull(served.uri, tmp_path / "a").digest == good_artifact.digest
    assert len(served.blobs_requested) == 3


def _bent(change: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], bytes]:
    def bend(manifest: dict[str, Any]) -> bytes:
        bent = copy.deepcopy(manifest)
        result = change(bent)
        return json.dumps(bent if result is None else result).encode()

    return bend


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], bytes]:
    """Set the node at `path` ("layers/0/digest") to `value`; `value` None deletes it."""

    def change(manifest: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        node: Any = manifest
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key: Any = int(last) if isinstance(node, list) else last
        if value is None:
            del node[key]
        else:
            node[key] = value

    return _bent(change)


def _raw(content: bytes) -> Callable[[dict[str, Any]], bytes]:
    return lambda manifest: content


BENT_MANIFESTS = {
    "a JSON array": (_bent(lambda m: [m]), "at the top, .* is not of type 'object'"),
    "not JSON": (_raw(b"<html>Service Unavailable</html>"), "a manifest that is not JSON"),
    "NaN for its layers": (_raw(b'{"config": {}, "layers": NaN}'), "a manifest that is not JSON"),
    "nested deeper than the parser goes": (_raw(b"[" * 100_000 + b"]" * 100_000), "not JSON"),
    "a config that is not an object": (_set("config", "x"), "at config, 'x' is not of type 'object'"),
    "no layers": (_set("layers", None), "'layers' is a required property"),
    "layers that are not a list": (_set("layers", {"a": 1}), "at layers, .* is not of type 'array'"),
    "more layers than an artifact has files": (
        _bent(lambda m: m.update(layers=m["layers"] * 2)),
        "at layers, .* is too long",
    ),
    "a layer that is not an object": (_set("layers/0", 1), "at layers/0, 1 is not of type 'object'"),
    "a layer without a digest": (_set("layers/0/digest", None), "'digest' is a required property"),
    "a digest that walks out of the blob path": (
        _set("layers/0/digest", "sha256:../../../v2/_catalog"),
        "at layers/0/digest, .* does not match",
    ),
    "a digest that is not sha256": (_set("layers/0/digest", "md5:" + "0" * 32), "at layers/0/digest"),
    "a size that is a string": (
        _set("layers/0/size", "12"),
        "at layers/0/size, '12' is not of type 'integer'",
    ),
    "a size that is true": (_set("layers/0/size", True), "at layers/0/size, True is not of type 'integer'"),
    "a fractional size": (_set("layers/0/size", 1.5), "at layers/0/size, 1.5 is not of type 'integer'"),
    "a size written as a float": (
        _bent(lambda m: m["layers"][0].update(size=float(m["layers"][0]["size"]))),
        r"at layers/0/size, \d+\.0 is not of type 'integer'",
    ),
    "a negative size": (_set("layers/0/size", -1), "at layers/0/size, -1 is less than the minimum of 0"),
    "no title": (_set("layers/0/annotations", {}), "is a required property"),
    "a title that is a path": (
        _set(f"layers/0/annotations/{TITLE}", "../../../etc/cron.d/x"),
        f"at layers/0/annotations/{TITLE}, .* is not one of",
    ),
    "two layers of one title": (  # the second overwrote the first, and the pull failed as tampered
        _bent(lambda m: m["layers"][1]["annotations"].update({TITLE: m["layers"][0]["annotations"][TITLE]})),
        "the manifest lists two layers titled (model|reference).onnx: refused",
    ),
    "another artifact's config": (
        _set("config/mediaType", "application/vnd.oci.image.config.v1+json"),
        "is not a quantship artifact",
    ),
}


@pytest.mark.parametrize("case", BENT_MANIFESTS)
def test_a_manifest_quantship_cannot_read_is_refused_before_any_layer_is_fetched(
    served: Served, tmp_path: Path, case: str
) -> None:
    bend, message = BENT_MANIFESTS[case]
    served.serve_manifest(bend(served.manifest))
    with pytest.raises(oci.OciError, match=message):
        oci.pull(served.uri, tmp_path / "a")
    assert served.blobs_requested == []
    assert list(tmp_path.iterdir()) == []


def test_a_layer_typed_as_another_file_is_refused_before_it_is_fetched(
    served: Served, tmp_path: Path
) -> None:
    first = served.manifest["layers"][0]
    other = next(name for name in oci.LAYER_MEDIA_TYPES if name != first["annotations"][TITLE])
    served.serve_manifest(_set("layers/0/mediaType", oci.LAYER_MEDIA_TYPES[other])(served.manifest))
    with pytest.raises(oci.OciError, match="has media type"):
        oci.pull(served.uri, tmp_path / "a")
    assert served.blobs_requested == []
    assert list(tmp_path.iterdir()) == []


def test_a_manifest_that_never_ends_is_refused_at_the_oci_limit(served: Served, tmp_path: Path) -> None:
    stop = threading.Event()
    served.registry.answers[served.manifest_path] = endless(b" " * 65536, stop=stop)
    try:
        with pytest.raises(oci.OciError, match=f"manifest is longer than {oci.MAX_MANIFEST_BYTES} bytes"):
            oci.pull(served.uri, tmp_path / "a")
    finally:
        stop.set()
    assert list(tmp_path.iterdir()) == []


def test_a_layer_longer_than_its_descriptor_is_cut_off_there(served: Served, tmp_path: Path) -> None:
    stop = threading.Event()
    served.serve_blob(artifact.MODEL_FILE, endless(b"\0" * 65536, stop=stop))
    size = served.layer(artifact.MODEL_FILE)["size"]
    try:
        with pytest.raises(oci.OciError, match=f"layer model.onnx is longer than the {size} bytes"):
            oci.pull(served.uri, tmp_path / "a")
    finally:
        stop.set()
    assert list(tmp_path.iterdir()) == []


def test_a_layer_shorter_than_its_descriptor_is_refused(served: Served, tmp_path: Path) -> None:
    layer = served.layer(artifact.MODEL_FILE)
    served.serve_blob(artifact.MODEL_FILE, body(served.blobs[layer["digest"]][:-10]))
    size = layer["size"]
    with pytest.raises(oci.OciError, match=f"layer model.onnx ended at {size - 10} of its declared {size}"):
        oci.pull(served.uri, tmp_path / "a")
    assert list(tmp_path.iterdir()) == []


def test_layers_declaring_more_than_the_limit_are_refused_before_any_is_fetched(
    served: Served, tmp_path: Path
) -> None:
    declared = sum(layer["size"] for layer in served.manifest["layers"])
    with pytest.raises(
        oci.OciError, match=f"declare {declared} bytes, more than the limit of {declared - 1}"
    ):
        oci.pull(served.uri, tmp_path / "a", max_bytes=declared - 1)
    assert served.blobs_requested == []
    served.serve_manifest(_set("layers/0/size", 2**70)(served.manifest))  # a size past int64
    with pytest.raises(oci.OciError, match="more than the limit"):
        oci.pull(served.uri, tmp_path / "a")
    assert served.blobs_requested == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(30)
@pytest.mark.parametrize("where", ["manifest", "layer", "manifest headers", "layer headers"])
def test_a_registry_that_stalls_times_out_once(served: Served, tmp_path: Path, where: str) -> None:
    """Without a timeout, requests waits forever: the init container would never end. A stall
    before the headers is not retried (oras would retry it 5 times, sleeping 131 s between)."""
    until = served.registry.released
    stalled = stalls(until=until) if "headers" in where else stalls_after(b"{", declared=1000, until=until)
    if where.startswith("manifest"):
        served.registry.answers[served.manifest_path] = stalled
    else:
        served.serve_blob(artifact.MODEL_FILE, stalled)
    with pytest.raises(oci.OciError, match="timed out"):
        oci.pull(served.uri, tmp_path / "a", timeout=1)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("where", "status", "message"),
    [
        ("manifest", 401, "tag or digest: the registry wants credentials \\(401\\)"),
        ("manifest", 403, "tag or digest: the registry wants credentials \\(403\\)"),
        ("layer", 401, "layer model.onnx: the registry wants credentials \\(401\\)"),
        ("manifest", 500, "tag or digest: the registry answered 500"),
        ("layer", 503, "layer model.onnx: the registry answered 503"),
    ],
)
def test_a_refusal_after_v2_is_named_at_once_and_its_body_is_not_read(
    served: Served, tmp_path: Path, where: str, status: int, message: str
) -> None:
    """A repository behind credentials on a registry whose /v2/ is open, or a registry failing:
    oras raised AttributeError for a 401 without credentials, and read a 500's body whole."""
    stop = threading.Event()
    refusal = endless(b"x" * 65536, stop=stop, status=status)  # an error page that never ends
    if where == "manifest":
        served.registry.answers[served.manifest_path] = refusal
    else:
        served.serve_blob(artifact.MODEL_FILE, refusal)
    try:
        with pytest.raises(oci.OciError, match=message):
            oci.pull(served.uri, tmp_path / "a")
    finally:
        stop.set()
    assert served.registry.requested.count(served.manifest_path) == 1  # no retry
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("answer", ["endless", "redirect"])
def test_the_v2_check_reads_no_body(served: Served, tmp_path: Path, answer: str) -> None:
    stop = threading.Event()
    served.registry.answers["/v2/"] = (
        endless(b" " * 65536, stop=stop) if answer == "endless" else redirect("/v2/", stop=stop)
    )
    try:
        assert oci.pull(served.uri, tmp_path / "a").signed is False
    finally:
        stop.set()


def test_a_layer_redirected_to_blob_storage_is_followed_without_reading_the_redirect_or_sending_credentials(
    served: Served, good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    """As registries send blobs to S3: a 307 to another host. requests would read the redirect's
    body whole (it never ends here), and its credentials are the registry's, not the storage's."""
    stop = threading.Event()
    digest = served.layer(artifact.MODEL_FILE)["digest"]
    served.registry.answers["/v2/"] = asks_basic(body(b"{}", "application/json"))
    with serving() as storage:
        storage.answers["/blobs/model"] = body(served.blobs[digest])
        served.serve_blob(artifact.MODEL_FILE, redirect(f"http://{storage.address}/blobs/model", stop=stop))
        try:
            credentials = oci.Credentials("user", "secret")
            assert (
                oci.pull(served.uri, tmp_path / "a", credentials=credentials).digest == good_artifact.digest
            )
        finally:
            stop.set()
        assert storage.requested == ["/blobs/model"] and storage.authorized == [False]
    # /v2/ asked without credentials, then with them; every later request carries them
    assert served.registry.authorized[0] is False and all(served.registry.authorized[1:])


def test_a_repository_behind_basic_auth_on_an_open_registry_gets_the_credentials_when_it_asks(
    served: Served, good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    """/v2/ answers without credentials, the manifest asks for them: the 401 is answered once."""
    path = served.manifest_path
    served.registry.answers[path] = asks_basic(served.registry.answers[path])
    credentials = oci.Credentials("user", "secret")
    assert oci.pull(served.uri, tmp_path / "a", credentials=credentials).digest == good_artifact.digest
    assert served.registry.requested.count(path) == 2


@pytest.mark.parametrize(
    ("location", "message"),
    [
        (f"/v2/{SERVED_REPOSITORY}/manifests/v1", "more than 5 redirects"),
        ("ftp://storage.example/blob", "redirected to ftp://storage.example/blob: not http"),
    ],
)
def test_a_redirect_loop_or_to_another_scheme_is_refused(
    served: Served, tmp_path: Path, location: str, message: str
) -> None:
    stop = threading.Event()
    served.registry.answers[served.manifest_path] = redirect(location, stop=stop)
    try:
        with pytest.raises(oci.OciError, match=message):
            oci.pull(served.uri, tmp_path / "a")
    finally:
        stop.set()
    assert list(tmp_path.iterdir()) == []


def test_a_disk_that_refuses_a_write_is_a_refusal_not_a_traceback(served: Served, tmp_path: Path) -> None:
    """The init container's emptyDir full: here a file size limit (RLIMIT_FSIZE) below model.onnx's,
    in a `quantship pull` of its own."""
    limit = served.layer(artifact.MODEL_FILE)["size"] // 2
    pull = (
        "import resource, signal, sys\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not the signal's kill\n"
        "from quantship.cli import main\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", pull, "pull", served.uri, "-o", str(tmp_path / "a")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 3, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {served.uri}: cannot write layer model.onnx: File too large"
    ]
    assert list(tmp_path.iterdir()) == []


def test_an_artifact_whose_manifest_holds_a_number_past_a_float_is_refused_not_installed(
    served: Served, tmp_path: Path
) -> None:
    """What `push` refuses now, and something else can push: `pull` installed it, then died with a
    traceback working out its digest (its canonical JSON has no infinity)."""
    layer = served.layer(artifact.MANIFEST_FILE)
    manifest = json.loads(served.blobs[layer["digest"]])
    manifest["activation_ranges"][0]["high"] = "LITERAL"
    bent = json.dumps(manifest).replace('"LITERAL"', "1e400").encode()
    digest = "sha256:" + hashlib.sha256(bent).hexdigest()
    served.registry.answers[served.registry.blob_path(SERVED_REPOSITORY, digest)] = body(bent)
    index = served.manifest["layers"].index(layer)
    served.serve_manifest(
        _bent(lambda m: m["layers"][index].update(digest=digest, size=len(bent)))(served.manifest)
    )
    result = CliRunner().invoke(main, ["pull", served.uri, "-o", str(tmp_path / "a")])
    assert result.exit_code == 3, result.output
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "1e400 is out of a number's range" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_fetch_holds_an_oci_artifact_to_its_max_bytes(pushed: str, tmp_path: Path) -> None:
    """The init container's --max-bytes, against the real registry."""
    with pytest.raises(fetch.FetchError, match="more than the limit of 1000"):
        fetch.fetch(pushed, tmp_path / "model", max_bytes=1000)
    assert list(tmp_path.iterdir()) == []


def _nodes(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path of every node in a JSON value, the root included."""
    yield path
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _nodes(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _nodes(child, (*path, index))


class LayerDigest(int):
    """Stands, among the values drawn, for the digest of the manifest's layer of that index: a real
    blob under another layer's title or size."""


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=80),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    which=st.integers(min_value=0),
    value=JSON | st.builds(LayerDigest, st.integers(0, 2)) | st.integers(-1, 10**6),
)
def test_fuzz_a_bent_manifest_is_pulled_whole_or_refused_with_a_message(
    served: Served, good_artifact: artifact.Artifact, which: int, value: Any
) -> None:
    """One node of the real manifest replaced (the digests, sizes and titles among them): the pull
    gives the artifact itself, or refuses with OciError or ArtifactError, leaving nothing behind."""
    bent = copy.deepcopy(served.manifest)
    nodes = list(_nodes(bent))
    path = nodes[which % len(nodes)]
    if isinstance(value, LayerDigest):
        value = served.manifest["layers"][value]["digest"]
    if path:
        parent: Any = bent
        for part in path[:-1]:
            parent = parent[part]
        parent[path[-1]] = value
    else:
        bent = value
    served.serve_manifest(json.dumps(bent).encode())
    scratch = Path(tempfile.mkdtemp())
    try:
        try:
            pulled = oci.pull(served.uri, scratch / "a")
        except (oci.OciError, artifact.ArtifactError) as exc:
            assert str(exc)
            assert list(scratch.iterdir()) == []
        else:
            assert pulled.digest == good_artifact.digest
    finally:
        shutil.rmtree(scratch)
