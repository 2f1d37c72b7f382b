"""How to quantize: every knob of `quantship quantize`, with the defaults a CPU server wants."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from onnxruntime.quantization import CalibrationMethod, QuantType

from quantship import runtime


class Mode(enum.StrEnum):
    STATIC = "static"
    DYNAMIC = "dynamic"


class Format(enum.StrEnum):
    QDQ = "QDQ"
    QOPERATOR = "QOperator"


class Calibration(enum.StrEnum):
    MINMAX = "minmax"
    PERCENTILE = "percentile"
    ENTROPY = "entropy"
    DISTRIBUTION = "distribution"


class Precision(enum.StrEnum):
    INT8 = "int8"
    UINT8 = "uint8"


_ORT_CALIBRATION = {
    Calibration.MINMAX: CalibrationMethod.MinMax,
    Calibration.PERCENTILE: CalibrationMethod.Percentile,
    Calibration.ENTROPY: CalibrationMethod.Entropy,
    Calibration.DISTRIBUTION: CalibrationMethod.Distribution,
}
_ORT_TYPE = {Precision.INT8: QuantType.QInt8, Precision.UINT8: QuantType.QUInt8}


@dataclass(frozen=True)
class QuantizeConfig:
    mode: Mode = Mode.STATIC
    format: Format = Format.QDQ
    per_channel: bool = False
    activation_type: Precision = Precision.UINT8
    """uint8 activations with int8 weights (U8S8) is what onnxruntime's x86 kernels are fastest and
    most accurate at; int8 activations (S8S8) lose accuracy on CPUs without VNNI."""
    weight_type: Precision = Precision.INT8
    reduce_range: bool | None = None
    """7-bit weights. None: on exactly when the CPU lacks VNNI, where 8-bit products can
    saturate the 16-bit intermediates of the int8 kernels (measured: ../shared/TOOLING.md)."""
    calibration: Calibration = Calibration.MINMAX
    percentile: float = 99.999
    """Only for percentile calibration: the share of values kept inside the range, in percent."""
    num_bins: int | None = None
    """Histogram bins for percentile, entropy and distribution; None keeps onnxruntime's default."""
    batch_size: int = 32
    """Calibration batch size; lowered to a divisor of the sample count, because histogram
    calibrators fail on a short last batch (onnxruntime 1.32)."""
    pre_process: bool = True
    max_accuracy_delta: float = 0.005
    """The gate: relative top-1 accuracy loss with labels, top-1 disagreement without (0.005 = 0.5%)."""
    max_trials: int = 12
    """Fallback trials (re-quantizations with some nodes left in float) before giving up."""
    output: str | None = None
    """Which model output the gate compares; None takes the first."""
    excluded_nodes: tuple[str, ...] = field(default_factory=tuple)
    """Nodes the user keeps in float from the start."""

    def resolved(self, hardware: runtime.Hardware) -> QuantizeConfig:
        """The config with automatic choices made for this hardware."""
        if self.reduce_range is not None:
            return self
        is_x86 = hardware.machine.lower() in ("x86_64", "amd64", "i686")
        return replace(self, reduce_range=is_x86 and not hardware.has_vnni)

    @property
    def ort_calibration(self) -> CalibrationMethod:
        return _ORT_CALIBRATION[self.calibration]

    @property
    def ort_activation_type(self) -> QuantType:
        return _ORT_TYPE[self.activation_type]

    @property
    def ort_weight_type(self) -> QuantType:
        return _ORT_TYPE[self.weight_type]

    def calibration_params(self) -> dict[str, Any]:
        """Options for onnxruntime's calibrators (create_calibrator's extra_options)."""
        params: dict[str, Any] = {}
        if self.calibration is Calibration.PERCENTILE:
            params["percentile"] = self.percentile
        if self.num_bins is not None and self.calibration is not Calibration.MINMAX:
            params["num_bins"] = self.num_bins
        return params

    def to_json(self) -> dict[str, Any]:
        data = {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in asdict(self).items()}
        data["excluded_nodes"] = list(self.excluded_nodes)
        data["calibration_params"] = self.calibration_params()
        return data
