"""Which artifact, with which pull secret, the servers run while spec.quantize is set (pure)."""

from __future__ import annotations

from typing import Any

from quantship.operator.spec import served_artifact

SPEC: dict[str, Any] = {
    "artifact": {"uri": "https://models.example.com/digits-fp32.tar.gz"},
    "quantize": {"target": {"uri": "oci://other.example.com/ml/digits:int8", "pullSecret": "other"}},
}
PRODUCED = {"uri": "oci://registry.example.com/ml/digits@sha256:" + "ab" * 32, "job": "digits-quantize-0a1b"}


def test_the_artifact_is_fetched_with_the_secret_of_the_target_it_was_published_to() -> None:
    published = {**PRODUCED, "target": "oci://registry.example.com/ml/digits:int8", "pullSecret": "registry"}
    assert served_artifact(SPEC, {"quantizedArtifact": published})["artifact"]["pullSecret"] == "registry"

    to_pvc = {**PRODUCED, "target": "pvc://models/digits"}
    assert "pullSecret" not in served_artifact(SPEC, {"quantizedArtifact": to_pvc})["artifact"]


def test_an_artifact_an_older_operator_recorded_keeps_the_sections_secret() -> None:
    """It recorded no target: the section's secret is what it served with, and changing that would
    start a canary of the same artifact."""
    assert served_artifact(SPEC, {"quantizedArtifact": PRODUCED})["artifact"]["pullSecret"] == "other"
