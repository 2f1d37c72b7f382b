"""What a manifest says of each quantized activation: its range (`ActivationRange`: what the INT8
model can represent, so what clips) and how calibration data spread over it (`ActivationHistogram`:
the drift SLI's baseline). quantize writes both; the server counts clipped values and bins traffic with
these same definitions, so the two sides cannot disagree on what clipped or drifted means.
A leaf: it imports nothing of quantship.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ActivationRange:
    """What one quantized activation of the served model can represent, and what calibration saw.

    QDQ (and any QuantizeLinear reading a float tensor): `tensor` is the QuantizeLinear's float
    input; its values more than half a step (`scale / 2`) outside [low, high] saturate, closer ones
    only round. `activation_low/high` are the bounds of an activation (Relu, Clip) that quantization
    folded into this range: values the activation would have removed anyway are not clipping, so
    clip counters apply the activation first.

    QOperator: a QLinear op (QLinearConv, QLinearMatMul, QGemm, ...) requantizes its output inside
    its kernel, so no float tensor exists to look at. `tensor` is then the op's int8 output,
    `requantized_by` its op type, `zero_point` the output's, and `float_tensor` the FP32 model's tensor
    it stands for (calibrated, and binned for the drift baseline). Its codes are counted as they
    are, one clipped when it is an end of the type (saturated, see `count_clipped`), and read
    dequantized (`as_float`) where values are needed (drift).
    """

    tensor: str
    low: float
    high: float
    scale: float
    calibrated_min: float | None = None
    calibrated_max: float | None = None
    activation_low: float | None = None
    activation_high: float | None = None
    requantized_by: str | None = None
    zero_point: int | None = None
    float_tensor: str | None = None

    def as_float(self, observed: np.ndarray) -> np.ndarray:
        """`tensor`'s observed values in float: a QLinear op's int8 codes dequantized, others as they are."""
        if self.requantized_by is None:
            return observed
        # float64, as `low`/`high` were computed: the end codes land on them exactly
        return (observed.astype(np.float64) - (self.zero_point or 0)) * self.scale

    def requantized(self, values: np.ndarray) -> np.ndarray:
        """FP32 values of `float_tensor` as the QLinear op outputs them, dequantized: rounded to a code
        (half to even, as QuantizeLinear) and saturated at the type's ends. Calibration histograms
        bin these, so they compare with what `as_float` gives the server (a value past an end is
        in the end bin on both sides, never in a histogram's underflow or overflow)."""
        steps = np.rint(np.asarray(values, dtype=np.float64) / self.scale)
        np.clip(steps, round(self.low / self.scale), round(self.high / self.scale), out=steps)
        return steps * self.scale

    def count_clipped(self, observed: np.ndarray) -> int:
        """How many of `observed` (this tensor as the served graph holds it: a QLinear op's int8
        codes, any other tensor in float) the quantized graph saturates."""
        if self.requantized_by is not None:
            return self._count_saturated(observed)
        values = observed
        if self.activation_low is not None or self.activation_high is not None:
            values = np.clip(values, self.activation_low, self.activation_high)
        half_step = self.scale / 2
        return int(np.count_nonzero((values < self.low - half_step) | (values > self.high + half_step)))

    def _count_saturated(self, codes: np.ndarray) -> int:
        """A QLinear op's output codes at a counted end (`low` and `high` dequantize the type's
        ends). The code only says the op's result reached the end, so this also counts results that
        rounded there from up to half a step inside the bound. Compared as codes, not dequantized:
        a float64 copy of every value cost more than the observing session on a CNN."""
        low, high = self.saturating_ends()
        zero_point = self.zero_point or 0
        count = 0
        if low:
            count += int(np.count_nonzero(codes <= zero_point + round(self.low / self.scale)))
        if high:
            count += int(np.count_nonzero(codes >= zero_point + round(self.high / self.scale)))
        return count

    def saturating_ends(self) -> tuple[bool, bool]:
        """Which end codes of a QLinear op's output count as clipping. Not an end that stands for 0:
        the quantizer widens every range to include 0, so a range starting (or ending) at 0 is a
        tensor calibrated never below (above) 0 (a Relu's, a Softmax's), and its end code holds the
        zeros. Not an end within a step of the bound of a folded activation (Relu, Clip) or of the
        op's own output (a Softmax's 1.0, which the quantizer's fixed scale 1/256 puts a step past
        its last code): a code there is that bound, rounded, not a value cut off."""
        half_step = self.scale / 2
        low = abs(self.low) > half_step and (
            self.activation_low is None or self.activation_low < self.low - self.scale
        )
        high = abs(self.high) > half_step and (
            self.activation_high is None or self.activation_high > self.high + self.scale
        )
        return low, high

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ActivationRange:
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})  # type: ignore[arg-type]


HISTOGRAM_BINS = 64
"""Equal bins over an activation's representable range: 4 uint8 steps per bin, fine enough to see
a distribution move inside the range, small enough for the manifest (a few KB per model)."""


@functools.lru_cache(maxsize=1024)
def _bin_edges(first: float, last: float) -> np.ndarray:
    """The HISTOGRAM_BINS + 1 edges over [first, last]: computed once a range, since the server bins
    the same few ranges over and over (read-only, as it is shared)."""
    edges = np.linspace(first, last, HISTOGRAM_BINS + 1)
    edges.flags.writeable = False
    return edges


BIN_CHUNK = 16384
"""Values `ActivationHistogram.bin` takes at a time: 128 KiB of float64, whose temporaries stay in cache."""


def _bin_chunk(
    values: np.ndarray, low: float, high: float, first: float, last: float, edges: np.ndarray
) -> tuple[np.ndarray, int, int]:
    """`ActivationHistogram.bin` of one chunk, over the widened (first, last) and its edges."""
    flat = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(flat)
    if not finite.all():
        flat = flat[finite]
    inside = flat[(flat >= low) & (flat <= high)]
    index = ((inside - first) * (HISTOGRAM_BINS / (last - first))).astype(np.intp)
    np.minimum(index, HISTOGRAM_BINS - 1, out=index)  # `high` itself is in the last bin
    # Rounding can put a value next to an edge one bin off: settle it against the edges, as numpy does.
    index -= inside < edges[index]
    index += (inside >= edges[index + 1]) & (index != HISTOGRAM_BINS - 1)
    counts = np.bincount(index, minlength=HISTOGRAM_BINS)
    return counts, int(np.count_nonzero(flat < low)), int(np.count_nonzero(flat > high))


@dataclass(frozen=True)
class ActivationHistogram:
    """How calibration data spread over one activation's range: `counts` over HISTOGRAM_BINS equal
    bins of [low, high], plus the values below and above it. The drift SLI compares production
    traffic binned by the same `bin` with this, so both sides share this one definition."""

    tensor: str
    low: float
    high: float
    counts: tuple[int, ...]
    underflow: int
    overflow: int

    @staticmethod
    def bin(values: np.ndarray, low: float, high: float) -> tuple[np.ndarray, int, int]:
        """(counts per bin, below low, above high) of the finite `values`: the bins of np.histogram
        over (low, high), by arithmetic and np.bincount: about twice as fast as np.histogram on a
        sampled request's tensor (64 values: 40 -> 21 µs, measured), and the server bins every
        tensor of every clip sample. A large tensor goes BIN_CHUNK values at a time, each value
        binned as before: quantize bins every activation of every calibration batch, and a whole
        tensor's float64 temporaries (a dozen passes) spilled the cache (a small GPT-2's tensors of
        33-135 K values: 38 -> 18 ns a value, measured)."""
        flat = np.asarray(values).ravel()
        first, last = (low, high) if high > low else (low - 0.5, high + 0.5)  # as np.histogram widens
        edges = _bin_edges(first, last)
        if flat.size <= BIN_CHUNK:
            return _bin_chunk(flat, low, high, first, last, edges)
        counts, below, above = np.zeros(HISTOGRAM_BINS, dtype=np.intp), 0, 0
        for start in range(0, flat.size, BIN_CHUNK):
            part = _bin_chunk(flat[start : start + BIN_CHUNK], low, high, first, last, edges)
            counts += part[0]
            below += part[1]
            above += part[2]
        return counts, below, above

    def to_json(self) -> dict[str, Any]:
        return {
            "tensor": self.tensor,
            "low": self.low,
            "high": self.high,
            "counts": list(self.counts),
            "underflow": self.underflow,
            "overflow": self.overflow,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ActivationHistogram:
        return cls(
            str(data["tensor"]),
            float(data["low"]),
            float(data["high"]),
            tuple(int(c) for c in data["counts"]),
            int(data["underflow"]),
            int(data["overflow"]),
        )
