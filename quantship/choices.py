"""The choices of `quantship quantize` that a QuantizedModel's spec.quantize.options names too, and
onnxruntime's thread setting that quantize and serve share and spec.server names.

Written once, here: the CLI's options take these enums' values, the quantizer reads them
(quantize/config.py, quantize/evaluate.py and agreement.py re-export them), and the CRD's enums and
CEL rules are built from them. Imports nothing of ours and nothing heavy: the operator runs without
onnxruntime.
"""

from __future__ import annotations

import enum
import math


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


class Strategy(enum.StrEnum):
    RECIPES = "recipes"
    """Stage 1 whole-model recipes, then op-type fallback, then node-wise fallback."""
    FALLBACK = "fallback"
    """Keep the given recipe: op-type fallback, then node-wise fallback only."""


class Precision(enum.StrEnum):
    INT8 = "int8"
    UINT8 = "uint8"


class Task(enum.StrEnum):
    CLASSIFICATION = "classification"
    EMBEDDING = "embedding"
    REGRESSION = "regression"


class Metric(enum.StrEnum):
    TOP1_ACCURACY = "top1_accuracy"
    TOP1_AGREEMENT = "top1_agreement"
    CONFIDENT_AGREEMENT = "confident_agreement"
    TOP5_OVERLAP = "top5_overlap"
    KL_DIVERGENCE = "kl_divergence"
    COSINE_AGREEMENT = "cosine_agreement"
    COSINE_MEAN = "cosine_mean"
    COSINE_P5 = "cosine_p5"
    NN_AGREEMENT = "nn_agreement"
    RELATIVE_ERROR = "relative_error"


METRICS_OF_TASK = {
    Task.CLASSIFICATION: (
        Metric.TOP1_ACCURACY,
        Metric.TOP1_AGREEMENT,
        Metric.CONFIDENT_AGREEMENT,
        Metric.TOP5_OVERLAP,
        Metric.KL_DIVERGENCE,
    ),
    Task.EMBEDDING: (Metric.COSINE_AGREEMENT, Metric.COSINE_MEAN, Metric.COSINE_P5, Metric.NN_AGREEMENT),
    Task.REGRESSION: (Metric.RELATIVE_ERROR,),
}
"""The gating metrics of each task's outputs: quantize refuses --metric of another task's."""
TASK_OF_METRIC = {metric: task for task, metrics in METRICS_OF_TASK.items() for metric in metrics}

DOMAIN_OF_METRIC: dict[Metric, tuple[float, float]] = {metric: (0.0, 1.0) for metric in Metric} | {
    Metric.KL_DIVERGENCE: (0.0, math.inf),
    Metric.COSINE_MEAN: (-1.0, 1.0),
    Metric.COSINE_P5: (-1.0, 1.0),
    Metric.RELATIVE_ERROR: (0.0, math.inf),
}
"""The values each metric can take (shares, a relative loss: 0 to 1): quantize refuses a --threshold
outside, which passes every model or none."""


def domain_in_words(metric: Metric) -> str:
    """A metric's domain as quantize's and the CRD's messages state it: `between -1 and 1`."""
    low, high = DOMAIN_OF_METRIC[metric]
    return f"at least {low:g}" if math.isinf(high) else f"between {low:g} and {high:g}"


MAX_NUM_BINS = 2048
"""The most histogram bins `--num-bins` takes: onnxruntime's percentile default and the bins of
TensorRT's histogram calibrators. Entropy's threshold search is quadratic in them: gpt2-lm took
24.6 s at its default 128 and 13:27 at 8192 (calibration alone 800 s)."""

MIN_NUM_BINS = {Calibration.ENTROPY: 128, Calibration.DISTRIBUTION: 512}
"""The fewest histogram bins onnxruntime 1.32 calibrates with: entropy searches thresholds outward
from its 128 quantized bins (fewer failed after the whole calibration, with numpy's 'negative
dimensions are not allowed'), distribution refuses under 512."""


ONNXRUNTIME_SPINNING = False
"""Whether quantship's sessions' intra-op threads spin while they wait (onnxruntime's default) rather
than sleep. A spinning pool burns the CPU that the Python around the calls needs, and after each call
it keeps spinning: wasted on a shared host, counted against a pod's limits.cpu. `quantship serve` of
EfficientNet-Lite0 INT8 with two threads on a 2-core host, c=1, interleaved rounds (2026-12-07):
quiet (load ~2, the bench's own), asleep / spinning / spinning only within a call
(session.force_spinning_stop) answered gRPC 181 / 195 / 191 and HTTP binary 235 / 240 / 248 req/s
at 7.5 / 9.6 / 7.9 ms of CPU a request; beside two busy processes (load 3-4.5), 163 / 82 / 136 and
157 / 79 / 113 req/s, p99 17 / 24 / 35 ms. Asleep answers 2-15% fewer on idle cores and about
twice as many where anything else runs. 10 requests 0.1 s apart to a 2-thread MLP cost 0.39-0.46 CPU
seconds spinning, under 0.1 asleep; `quantship quantize` of EfficientNet-Lite0 took 51-58 s asleep
against 62-74 s spinning (load 3.5-4). Numerics do not change: the gate judges the kernels that serve
either way. One thread has no pool, and nothing spins."""
