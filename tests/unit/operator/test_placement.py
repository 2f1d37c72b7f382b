"""spec.placement.matchGateHardware, pure: the node affinity asks node-feature-discovery's labels for
exactly the gate's int8 CPU features, every feature the manifest can name has its label, and a
feature the operator cannot map refuses the spec instead of pinning to fewer."""

from __future__ import annotations

from typing import Any

import pytest

from quantship import runtime
from quantship.operator import placement, resources
from quantship.operator.spec import InvalidSpec, ModelSpec
from quantship.rollout import Track

RESOURCE: dict[str, Any] = {
    "metadata": {"name": "digits", "namespace": "ml", "uid": "1"},
    "spec": {
        "artifact": {"uri": "https://models.example.com/digits-fp32.tar.gz"},
        "quantize": {
            "model": "https://models.example.com/digits.onnx",
            "calibration": "https://models.example.com/calibration.npz",
            "target": {"uri": "pvc://models/digits"},
        },
        "placement": {"matchGateHardware": True},
    },
    "status": {
        "quantizedArtifact": {
            "uri": "pvc://models/digits/0a1b",
            "job": "digits-q-0a1b",
            "int8Flags": ["avx2"],
        }
    },
}


def test_every_int8_feature_the_manifest_can_record_has_its_node_feature_discovery_label() -> None:
    assert set(placement.NFD_LABELS) == set(runtime._INT8_FLAGS)
    assert all(
        label.startswith("feature.node.kubernetes.io/cpu-cpuid.") for label in placement.NFD_LABELS.values()
    )


def test_the_affinity_asks_for_exactly_the_gates_features() -> None:
    affinity = placement.node_affinity(["avx2", "avx512_vnni"])

    (term,) = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    got = {e["key"].rsplit(".", 1)[1]: (e["operator"], e.get("values")) for e in term["matchExpressions"]}
    assert got == {
        "AVX2": ("In", ["true"]),
        "AVX512VNNI": ("In", ["true"]),
        "AVX512F": ("DoesNotExist", None),
        "AVXVNNI": ("DoesNotExist", None),
        "AMXINT8": ("DoesNotExist", None),
        "ASIMDDP": ("DoesNotExist", None),
        "I8MM": ("DoesNotExist", None),
    }


def test_the_deployment_is_pinned_only_when_asked_and_the_gate_is_known() -> None:
    pinned = ModelSpec.from_resource(RESOURCE)
    assert pinned.gate_int8_flags == ("avx2",)
    body = resources.deployment(pinned, pinned.revision, Track.CANARY, 1, RESOURCE)
    assert body["spec"]["template"]["spec"]["affinity"] == placement.node_affinity(["avx2"])

    unasked = ModelSpec.from_resource({**RESOURCE, "spec": {**RESOURCE["spec"], "placement": {}}})
    unknown = ModelSpec.from_resource({**RESOURCE, "status": {}})
    for spec in (unasked, unknown):
        assert (
            "affinity"
            not in resources.deployment(spec, spec.revision, Track.CANARY, 1, RESOURCE)["spec"]["template"][
                "spec"
            ]
        )
    assert pinned.revision == unasked.revision, "pinning starts no canary by itself"


def test_a_gate_feature_without_a_known_label_is_refused_not_pinned_to_fewer() -> None:
    status = {"quantizedArtifact": {**RESOURCE["status"]["quantizedArtifact"], "int8Flags": ["avx2", "sme2"]}}
    with pytest.raises(
        InvalidSpec, match=r"int8 CPU features \['sme2'\] have no node-feature-discovery label"
    ):
        ModelSpec.from_resource({**RESOURCE, "status": status})


def test_the_condition_reads_the_schedulers_verdict_off_the_pods() -> None:
    pending = {
        "status": {
            "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes"}
            ]
        }
    }
    placed = {
        "spec": {"nodeName": "n1"},
        "status": {"conditions": [{"type": "PodScheduled", "status": "True"}]},
    }

    assert placement.condition("abc", ("avx2",), []) is None
    assert placement.condition("abc", ("avx2",), [pending])[:2] == ("False", "NoMatchingNode")  # type: ignore[index]
    assert placement.condition("abc", ("avx2",), [placed])[:2] == ("True", "Matched")  # type: ignore[index]
    assert placement.condition("abc", None, [placed])[:2] == ("Unknown", "GateHardwareUnknown")  # type: ignore[index]
