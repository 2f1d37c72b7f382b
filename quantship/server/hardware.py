"""Where the accuracy gate measured against where the artifact serves: the hardware-aware verdict.

The quantizer records in the manifest (`validation.hardware`) the CPU int8 features, onnxruntime
version and execution provider the gate ran on: int8 accuracy depends on them (the same
EfficientNet-Lite0 S8S8 artifact agreed with FP32 on 47% of top-1 on an AVX2-only CPU, 29% with
AVX-512 VNNI). The service compares that record with `runtime.hardware()` at load; a difference is a
warning and `quantship_hardware_mismatch{aspect}`, or a refusal with `--require-gate-hardware`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from quantship import runtime

ASPECTS = ("int8_flags", "onnxruntime", "provider")
"""What is compared, and the values of the mismatch metric's `aspect` label. The CPU's model name is
shown (in the info metric and the log) but not compared: same features, same kernels."""
UNKNOWN = "unknown"


def describe(recorded: Mapping[str, Any]) -> dict[str, str]:
    """A `Hardware.to_json()` record as label values: flags sorted and comma-joined."""
    flags = recorded.get("int8_flags")
    return {
        "cpu": str(recorded.get("cpu") or UNKNOWN),
        "int8_flags": ",".join(sorted(str(f) for f in flags)) if isinstance(flags, list) else UNKNOWN,
        "onnxruntime": str(recorded.get("onnxruntime") or UNKNOWN),
        "provider": str(recorded.get("provider") or UNKNOWN),
    }


@dataclass(frozen=True)
class HardwareCheck:
    serving: dict[str, str]
    gate: dict[str, str] | None
    """None when the manifest records no gate hardware (an FP32 artifact, which had no gate)."""

    @property
    def differs(self) -> tuple[str, ...]:
        if self.gate is None:
            return ()
        return tuple(aspect for aspect in ASPECTS if self.gate[aspect] != self.serving[aspect])

    def describe(self) -> str:
        if self.gate is None:
            return "the manifest records no gate hardware: nothing to compare"
        if not self.differs:
            return "serving on the hardware the gate measured (" + _side(self.serving) + ")"
        return "; ".join(
            f"{aspect}: gate {self.gate[aspect] or '-'}, here {self.serving[aspect] or '-'}"
            for aspect in self.differs
        )


def compare(manifest: Mapping[str, Any], here: runtime.Hardware) -> HardwareCheck:
    recorded = (manifest.get("validation") or {}).get("hardware")
    gate = describe(recorded) if isinstance(recorded, Mapping) else None
    return HardwareCheck(describe(here.to_json()), gate)


def _side(values: Mapping[str, str]) -> str:
    return ", ".join(f"{aspect} {values[aspect] or '-'}" for aspect in ASPECTS)
