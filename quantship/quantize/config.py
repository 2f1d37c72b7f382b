"""How to quantize: every knob of `quantship quantize`, with the defaults a CPU server wants."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from onnxruntime.quantization import CalibrationMethod, QuantType

from quantship import agreement, runtime
from quantship.choices import MAX_NUM_BINS, MIN_NUM_BINS, Calibration, Format, Mode, Precision, Strategy
from quantship.quantize.evaluate import GateRequest, Metric

_ORT_CALIBRATION = {
    Calibration.MINMAX: CalibrationMethod.MinMax,
    Calibration.PERCENTILE: CalibrationMethod.Percentile,
    Calibration.ENTROPY: CalibrationMethod.Entropy,
    Calibration.DISTRIBUTION: CalibrationMethod.Distribution,
}
_ORT_TYPE = {Precision.INT8: QuantType.QInt8, Precision.UINT8: QuantType.QUInt8}

DISTRIBUTION_CAUTION = (
    "--calibration-method distribution is onnxruntime's method for float8 types; for int8 it takes a "
    "histogram's symmetric range, and on EfficientNet-Lite0 it agreed with FP32 on 0% of rows (min-max: 81%)"
)
"""onnxruntime 1.32 allows only Distribution for float8 (quantize_static); its mean and deviation are
read only by float8's scale (compute_scale_zp_float8), int8 reads the histogram's edges."""

STATIC_ONLY = (
    "format",
    "activation_type",
    "calibration",
    "percentile",
    "num_bins",
    "batch_size",
    "matmul_const_b_only",
    "matmuls_only",
)
"""Fields dynamic quantization never reads: it has no calibration, its activations are uint8
(quantized per request by DynamicQuantizeLinear) and its ops are MatMulInteger/ConvInteger."""


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
    batch_size: int = 8
    """Calibration batch size at most; lowered to a divisor of the sample count, because histogram
    calibrators fail on a short last batch (onnxruntime 1.32), and for large inputs (data.py). The
    calibrator keeps every activation of a batch alive: 32 rows of all-MiniLM-L6-v2 at 64 tokens
    held 2 GB, 8 rows stay under 1 GB."""
    matmul_const_b_only: bool | None = None
    """Static mode: quantize only MatMuls whose second input is a weight, leaving activation x
    activation products (attention scores) in float, where int8 hurts transformers most. None (not
    given): off, and the tuner's recipes may turn it on; False (--no-matmul-const-b-only): off in
    every trial."""
    matmuls_only: bool | None = None
    """Static mode: quantize only the MatMuls and Gemms (and an embedding table's Gather), less those
    reading an MLP's activation (engine.mlp_activation_readers: the FFN's down-projection). The
    residual stream (Adds, LayerNormalization), Softmax and GELU stay in float. A BERT's residual
    stream and GELU outputs carry rare channels 10-200x their median (all-MiniLM-L6-v2: 223 at [CLS]
    beside values of 1-10), which leave the other values a few codes of one per-tensor scale: static
    INT8 of every op agreed with FP32 on no row of all-MiniLM-L6-v2 (cosine median 0.77), of every
    MatMul on 0.3% (0.91), this recipe on all of them (cosine at least 0.984). True: on in every
    static trial; None (not given): off, and the tuner may try it once no recipe passes
    (tuner._matmuls_only_for); False (--no-matmuls-only): off in every trial."""
    pre_process: bool = True
    max_accuracy_delta: float = 0.005
    """The gate: relative top-1 accuracy loss with labels, else the share of rows that may disagree
    with FP32 (0.005 = 0.5%), unless --metric/--threshold say otherwise."""
    task: agreement.Task | None = None
    """classification | embedding | regression; None infers it from the output."""
    metric: Metric | None = None
    """The gating metric (quantize/gate_metrics.py lists them); None picks the task's default."""
    threshold: float | None = None
    """The gating metric's limit in its own units; None: its default."""
    min_cosine: float = agreement.MIN_COSINE
    """Embeddings: the least cosine to FP32 at which a row agrees (gate and shadow SLI)."""
    mask_input: str | None = None
    """An answer per position: the input whose zeros mark padding; None finds the attention mask."""
    strategy: Strategy = Strategy.RECIPES
    max_trials: int = 16
    """Trials after the first (recipes, then fallback) before giving up."""
    keep_going: bool = False
    """Run every recipe of stage 1 even after one passes, and keep the best passing one."""
    output: str | None = None
    """Which model output the gate compares; None takes the first."""
    excluded_nodes: tuple[str, ...] = field(default_factory=tuple)
    """Nodes the user keeps in float from the start."""

    def problems(self) -> list[str]:
        """Settings that cannot work together, found before any calibration runs."""
        if self.num_bins is not None and self.num_bins > MAX_NUM_BINS:
            return [
                f"--num-bins {self.num_bins}: at most {MAX_NUM_BINS} (entropy's search is quadratic in them)"
            ]
        least = MIN_NUM_BINS.get(self.calibration)
        if least and self.num_bins is not None and self.num_bins < least:
            return [
                f"--num-bins {self.num_bins}: {self.calibration.value} calibration needs at least {least}"
            ]
        return []

    def cautions(self) -> list[str]:
        """Settings that work but are likely a mistake: for the user to hear once, before calibrating."""
        if self.mode is Mode.STATIC and self.calibration is Calibration.DISTRIBUTION:
            return [DISTRIBUTION_CAUTION]
        return []

    def unread(self) -> set[str]:
        """The fields this config never reads: a dynamic one's static-only fields, and the
        calibration parameters of methods other than its own."""
        unread = set(STATIC_ONLY) if self.mode is Mode.DYNAMIC else set()
        if self.calibration is not Calibration.PERCENTILE:
            unread.add("percentile")
        if self.calibration is Calibration.MINMAX:
            unread.add("num_bins")
        return unread

    def not_applied(self, given: set[str]) -> list[str]:
        """Of the fields a user set (`given`), those this config never reads: for the user to hear."""
        unread = self.unread()
        return [name for name in STATIC_ONLY if name in given and name in unread]

    def resolved(self, hardware: runtime.Hardware) -> QuantizeConfig:
        """The config with automatic choices made for this hardware."""
        if self.reduce_range is not None:
            return self
        is_x86 = hardware.machine.lower() in ("x86_64", "amd64", "i686")
        return replace(self, reduce_range=is_x86 and not hardware.has_vnni)

    def gate_request(self) -> GateRequest:
        return GateRequest(
            self.task, self.metric, self.threshold, self.max_accuracy_delta, self.min_cosine, self.mask_input
        )

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

    def extra_options(self) -> dict[str, Any]:
        """onnxruntime quantize_static/quantize_dynamic extra_options this config sets."""
        if self.mode is Mode.STATIC and self.matmul_const_b_only:
            return {"MatMulConstBOnly": True}
        return {}

    @property
    def int8_pair(self) -> str:
        """Activations then weights, as onnxruntime names its int8 kernels: U8S8, U8U8, S8S8 (dynamic
        quantization always has uint8 activations)."""
        act = "U8" if self.mode is Mode.DYNAMIC or self.activation_type is Precision.UINT8 else "S8"
        return act + ("U8" if self.weight_type is Precision.UINT8 else "S8")

    def label(self) -> str:
        """The recipe in a few words, for progress, tables and the report."""
        if self.mode is Mode.DYNAMIC:
            words = ["dynamic", f"{self.weight_type.value} weights"]
        else:
            words = ["static", self.int8_pair, self.calibration.value]
            if self.matmul_const_b_only:
                words.append("MatMulConstBOnly")
            if self.matmuls_only:
                words.append("MatMuls-only")
        words.append("per-channel" if self.per_channel else "per-tensor")
        if self.reduce_range:
            words.append("reduce-range")
        return " ".join(words)

    def to_json(self) -> dict[str, Any]:
        """The settings that applied: a dynamic config's static-only fields are null, not the values
        it was handed (a manifest said `calibration entropy, activation_type int8` for a model with
        no calibration and uint8 activations), and so is another method's parameter (min-max's
        manifest said `percentile 99.999`)."""
        data = {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in asdict(self).items()}
        data["excluded_nodes"] = list(self.excluded_nodes)
        data["calibration_params"] = self.calibration_params()
        data["extra_options"] = self.extra_options()
        for choice in ("matmul_const_b_only", "matmuls_only"):  # applied or not: not given is off
            data[choice] = bool(data[choice])
        data.update(dict.fromkeys(self.unread()))
        if self.mode is Mode.DYNAMIC:
            data["calibration_params"] = None
        return data
