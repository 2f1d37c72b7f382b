"""spec.placement.matchGateHardware: pin a revision's pods to nodes with the gate's int8 CPU features.

int8 accuracy depends on the kernels the CPU's features select (the same EfficientNet-Lite0 S8S8
artifact agreed with FP32 on 47% of inputs with AVX2 alone, 29% with AVX-512 VNNI), so the servers
should run where the accuracy gate measured. The artifact's manifest records the gate machine's
int8 features (`validation.hardware.int8_flags`, names as `quantship.runtime` reads them from the
CPU); node-feature-discovery labels each node with its CPU's (`feature.node.kubernetes.io/cpu-cpuid.*`,
value "true"). The node affinity asks for exactly the gate's set, as the server compares it: each of
its features present, and each other int8 feature absent.

Pure: `resources.deployment` adds the affinity, `reconcile` reads the condition off the pods.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

NFD_CPUID = "feature.node.kubernetes.io/cpu-cpuid."
NFD_LABELS = {
    "avx2": f"{NFD_CPUID}AVX2",
    "avx512f": f"{NFD_CPUID}AVX512F",
    "avx512_vnni": f"{NFD_CPUID}AVX512VNNI",
    "avx_vnni": f"{NFD_CPUID}AVXVNNI",
    "amx_int8": f"{NFD_CPUID}AMXINT8",
    "asimddp": f"{NFD_CPUID}ASIMDDP",
    "i8mm": f"{NFD_CPUID}I8MM",
}
"""The manifest's int8 flag names (quantship.runtime) -> node-feature-discovery's cpuid labels."""

MATCHED = "GateHardwareMatched"
"""The condition type: True once a pod is placed on a matching node, False while none can be."""


def node_affinity(int8_flags: Iterable[str]) -> dict[str, Any]:
    """A pod `affinity` that schedules only on nodes whose int8 features are exactly `int8_flags`."""
    wanted = set(int8_flags)
    unknown = wanted - set(NFD_LABELS)
    if unknown:  # ModelSpec refuses these first, with a condition: pinning to fewer would be wrong
        raise ValueError(f"no node-feature-discovery label for int8 flags {sorted(unknown)}")
    expressions = [
        {
            "key": label,
            "operator": "In" if flag in wanted else "DoesNotExist",
            **({"values": ["true"]} if flag in wanted else {}),
        }
        for flag, label in NFD_LABELS.items()
    ]
    required = {"nodeSelectorTerms": [{"matchExpressions": expressions}]}
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}


def describe(int8_flags: Sequence[str]) -> str:
    return ", ".join(int8_flags) if int8_flags else "no int8 features"


def condition(
    revision: str, int8_flags: Sequence[str] | None, pods: Sequence[Mapping[str, Any]]
) -> tuple[str, str, str] | None:
    """(status, reason, message) of GateHardwareMatched for `revision`'s pods; None: no pod yet,
    nothing new to say. The scheduler is what knows whether any node matches: a pod it cannot
    place says so in its PodScheduled condition."""
    if int8_flags is None:
        return (
            "Unknown",
            "GateHardwareUnknown",
            "the gate's hardware is known for artifacts spec.quantize produced; this one is served unpinned",
        )
    features = describe(int8_flags)
    for pod in pods:
        for found in (pod.get("status") or {}).get("conditions") or []:
            unschedulable = (found.get("type"), found.get("status"), found.get("reason")) == (
                "PodScheduled",
                "False",
                "Unschedulable",
            )
            if unschedulable:
                why = found.get("message") or "no node fits"
                return (
                    "False",
                    "NoMatchingNode",
                    f"no node can take {revision}'s pods with the gate's int8 CPU features "
                    f"({features}; node-feature-discovery labels): {why}",
                )
    if any((pod.get("spec") or {}).get("nodeName") for pod in pods):
        return ("True", "Matched", f"{revision} runs on nodes with the gate's int8 CPU features ({features})")
    return None
