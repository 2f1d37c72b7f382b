"""A pvc:// URI the API server admits (the CRD's pattern, matched by RE2 as Go's regexp matches
it) is read the same way by everything after it: the operator (`QuantizeSpec.from_spec`), the
model servers' init container and the quantize Job (`fetch.source_path`). It stays inside its
claim, and a quantize Job's output lies strictly below the claim: publishing replaces what is at
the output, so an output read as the claim itself would empty it."""

from __future__ import annotations

from pathlib import Path

import pytest
import re2
from hypothesis import example, given, settings
from hypothesis import strategies as st

from quantship import artifact
from quantship.operator import crd_uris, fetch, quantization, quantize_job
from quantship.operator.spec import InvalidSpec

ROOT = Path("/mnt/pvc")


def admitted(pattern: str) -> st.SearchStrategy[str]:
    """pvc:// URIs drawn from the pattern and kept when RE2 matches them. Drawn with Python's re,
    whose \\s is also Unicode's spaces, where Go's and RE2's is ASCII's: the pattern drawn from
    says so, so that URIs holding Unicode spaces are drawn too."""
    ascii_spaces = pattern.replace(r"\s", r"\t\n\f\r ")
    return st.from_regex(ascii_spaces, fullmatch=True).filter(
        lambda uri: uri.startswith("pvc://") and re2.search(pattern, uri) is not None
    )


def below(path: Path, claim: str) -> bool:
    return path.is_relative_to(ROOT / claim) and path != ROOT / claim


def section(**uris: str) -> dict[str, object]:
    quantize = {"model": "file:///m.onnx", "calibration": "file:///c.npz", "target": {"uri": "oci://r/m:1"}}
    for key, uri in uris.items():
        if key == "target":
            quantize["target"] = {"uri": uri}
        else:
            quantize[key] = uri
    return {"quantize": quantize}


@settings(max_examples=300)
@example("pvc://models/./x")
@example("pvc://models/..x")
@example("pvc://models/a\xa0b\u2028\x85")  # spaces to Unicode, not to RE2
@given(admitted(crd_uris.TARGET_URI.pattern))
def test_an_admitted_quantize_target_is_published_strictly_inside_its_claim(uri: str) -> None:
    spec = quantization.QuantizeSpec.from_spec(section(target=uri))
    assert spec is not None
    claim = uri.removeprefix("pvc://").split("/", 1)[0]
    output = fetch.source_path(spec.output("digits"), ROOT)
    assert output is not None and below(output, claim), (uri, output)


@settings(max_examples=300)
@given(admitted(crd_uris.INPUT_URI.pattern))
def test_an_admitted_quantize_input_is_read_inside_its_claim(uri: str) -> None:
    assert quantization.QuantizeSpec.from_spec(section(calibration=uri)) is not None
    path = fetch.source_path(uri, ROOT)
    assert path is not None and below(path, uri.removeprefix("pvc://").split("/", 1)[0]), (uri, path)


@settings(max_examples=300)
@given(admitted(crd_uris.ARTIFACT_URI.pattern))
def test_an_admitted_artifact_is_fetched_from_inside_its_claim(uri: str) -> None:
    path = fetch.source_path(uri, ROOT)
    claim = uri.removeprefix("pvc://").split("/", 1)[0]
    assert path is not None and path.is_relative_to(ROOT / claim), (uri, path)


@pytest.mark.parametrize(
    "uri",
    [
        "pvc://models",
        "pvc://models/",
        "pvc://models/.",
        "pvc://models/#",  # urlparse reads the claim itself: publishing would empty it
        "pvc://models/x?y",  # ... or models/x, for every model
        "pvc://models/%2e%2e/secrets",  # fetch decodes it: ..
        "pvc://models/../secrets",
    ],
)
def test_a_target_read_otherwise_or_outside_the_claim_is_refused_by_the_crd_and_the_operator(
    uri: str,
) -> None:
    assert re2.search(crd_uris.TARGET_URI.pattern, uri) is None
    with pytest.raises(InvalidSpec, match="inside the claim"):
        quantization.QuantizeSpec.from_spec(section(target=uri))


@pytest.mark.parametrize("target", ["pvc://models/.", "pvc://models/#/digits/0123456789"])
def test_a_job_never_publishes_over_the_claim_itself(
    good_artifact: artifact.Artifact, tmp_path: Path, target: str
) -> None:
    """Whatever reached it (an operator before the checks above): the Job refuses, nothing goes."""
    claim = tmp_path / "pvc" / "models"
    claim.mkdir(parents=True)
    (claim / "keep.onnx").write_bytes(b"the claim's other files")
    with pytest.raises(quantize_job.JobError, match=r"not the claim itself|no \? or #"):
        quantize_job._publish(good_artifact.root, target, tmp_path / "pvc", None, False, 1.0)
    assert (claim / "keep.onnx").read_bytes() == b"the claim's other files"


def test_a_job_publishes_over_an_older_artifact_but_never_over_other_data(
    good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    """A folder holding a manifest.json of its own (a web app's) is not an artifact."""
    claim = tmp_path / "pvc" / "models"
    quantize_job._publish(good_artifact.root, "pvc://models/digits", tmp_path / "pvc", None, False, 1.0)
    quantize_job._publish(good_artifact.root, "pvc://models/digits", tmp_path / "pvc", None, False, 1.0)
    assert artifact.load_artifact(claim / "digits").digest == good_artifact.digest
    (claim / "app").mkdir()
    (claim / "app" / "manifest.json").write_text('{"name": "a web app"}')
    (claim / "app" / "index.html").write_text("<h1>mine</h1>")
    with pytest.raises(quantize_job.JobError, match="exists and is not an artifact"):
        quantize_job._publish(good_artifact.root, "pvc://models/app", tmp_path / "pvc", None, False, 1.0)
    assert (claim / "app" / "index.html").read_text() == "<h1>mine</h1>"
    assert sorted(p.name for p in claim.iterdir()) == ["app", "digits"], "no scratch left behind"


@pytest.mark.parametrize("uri", ["pvc://../etc/passwd", "pvc://Models/x", "pvc:///x", "pvc://a_b/x"])
def test_a_claim_no_persistent_volume_claim_can_be_named_is_refused_where_it_is_read(uri: str) -> None:
    """A resource stored before the CRD checked claims: fetch (the init container, the Job) and the
    operator refuse it, rather than resolving it outside the claims' root."""
    with pytest.raises(fetch.FetchError, match="DNS-1123 subdomain"):
        fetch.source_path(uri, ROOT)
    with pytest.raises(InvalidSpec, match="inside the claim"):
        quantization.QuantizeSpec.from_spec(section(calibration=uri))
