"""Activation drift: how far production activations moved from the calibration histograms.

The clipped-activation rate only sees values leaving a calibrated range; a distribution that moved
inside the range (darker images, shorter sentences) leaves the ranges, and so the quantization,
fitted to data the model no longer sees. The artifact carries, per activation range, how the
calibration data spread over it (`activations.ActivationHistogram`: 64 equal bins plus under/overflow).
The clip lane hands `DriftWindow` the same activations it checks for clipping; the window bins them
with `ActivationHistogram.bin` (the one binning definition, shared with the quantizer) and the
service exports the distance per tensor and overall. Calibration histograms come from the FP32 model,
where a Relu follows an Add; the quantized graph folds that Relu into the Add's range, so the observer
sees pre-activation values under the FP32 name: the window applies the folded activation
(`ActivationRange.activation_low/high`) first, as the clip counter does. Without it a calm digits
model read 0.40 on such a tensor.

The distance is the Jensen-Shannon divergence in bits, not the population stability index:
- bounded in [0, 1] and symmetric, so one alert threshold means the same for every tensor and
  every model, and a tensor whose production values fill bins calibration left empty (the usual
  case with 66 fixed-width bins: the tails) gives a finite, comparable figure;
- PSI's 0.1 / 0.25 thresholds come from ten equal-population deciles; over fixed-width bins with
  empty calibration bins PSI is infinite unless floored, and then depends on the floor.
JS is 0 for identical histograms, 1 for disjoint ones; sampling noise of a calm window stays near 0
(measured on the digits sample, README "Serve").

The window slides by halves: two histograms per tensor, the previous half-window and the current
one; when the current half has seen `window / 2` sampled requests it becomes the previous one. The
distance covers the last window/2 to window sampled requests, and memory is two 66-bin histograms per
tensor whatever the window or traffic: nothing per request is kept. Only the background thread of
the clip lane touches it, so it needs no lock. The distance is published only once the window
holds its first half (`settled`): over a few requests sparse histograms read far from calibration
whatever the traffic, and every fresh server began with a spike (the demo's recalibrated canary read
0.17 bits on its first requests, over the drifted stable's 0.13, and 0.034 a second later).

A sampled request's tensor is binned from at most MAX_BINNED_VALUES_A_ROW of its values for each of
its rows, evenly strided: a histogram of 66 bins is settled long before that, and binning every value
of a CNN is the clip lane's largest cost (EfficientNet-Lite0: 7.1M values a row over 62 tensors, 139
ms to bin them all, measured, against 47 ms for the observing session itself). The cap grows with the
rows so that every row weighs alike however clients batch them: a cap a request read the same 12
images at 0.170 as 12 one-row requests and 0.103 with 8 of them in one request. Binning a request so
costs at most the cap's values a row and tensor, never more than the observed outputs it reads (the
observer's own cost grows with the rows as well). The window still counts sampled requests: its
memory is the histograms whatever their rows, and within it every row weighs alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from quantship.activations import ActivationHistogram, ActivationRange

MAX_BINNED_VALUES_A_ROW = 8192
"""Values of one tensor binned at most for each row of a sampled request (see the module docstring)."""


def _as_bins(counts: np.ndarray, under: int, over: int) -> np.ndarray:
    return np.concatenate(([under], counts, [over])).astype(np.float64)


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence of two histograms (counts, any scale), in bits: within [0, 1].
    Empty bins need no floor: a bin empty on one side contributes through the mixture only."""
    return float(js_divergences(p[np.newaxis], q[np.newaxis])[0])


def js_divergences(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """`js_divergence` of each row of `p` with the same row of `q` (rows with counts on both sides),
    in one numpy pass: the clip lane computes a model's tensors after every hand-off."""
    p = p / p.sum(axis=1, keepdims=True)
    q = q / q.sum(axis=1, keepdims=True)
    m = (p + q) / 2

    def kl(a: np.ndarray) -> np.ndarray:
        ratio = np.divide(a, m, out=np.ones_like(a), where=a > 0)  # a bin empty in `a` adds 0 * log 1
        return (a * np.log2(ratio)).sum(axis=1)

    return np.clip((kl(p) + kl(q)) / 2, 0.0, 1.0)


class DriftWindow:
    def __init__(
        self, histograms: Sequence[ActivationHistogram], window: int, ranges: Sequence[ActivationRange] = ()
    ) -> None:
        """`histograms` from the artifact (those with any count); `window` in sampled requests
        (whatever their rows; each row weighs alike within it); `ranges` give the activations folded
        into them, and which tensors come as a QLinear op's int8 codes (dequantized once capped)."""
        self.requantized = {r.tensor: r for r in ranges if r.requantized_by is not None}
        self.folded = {
            r.tensor: (r.activation_low, r.activation_high)
            for r in ranges
            if r.activation_low is not None or r.activation_high is not None
        }
        self.histograms = {h.tensor: h for h in histograms if sum(h.counts) + h.underflow + h.overflow > 0}
        self.baseline = {
            t: _as_bins(np.asarray(h.counts), h.underflow, h.overflow) for t, h in self.histograms.items()
        }
        self.half = max(1, window // 2)
        self._previous = {t: np.zeros_like(b) for t, b in self.baseline.items()}
        self._current = {t: np.zeros_like(b) for t, b in self.baseline.items()}
        self._current_samples = 0
        self._offset = 0
        self.settled = False
        """Whether the window has held its first half: its distance is worth publishing."""

    @property
    def tensors(self) -> list[str]:
        return list(self.histograms)

    def add(self, tensor: str, requests: Sequence[np.ndarray], rows: Sequence[int]) -> int:
        """Bin `tensor`'s values (a QLinear op's int8 codes where its range says so) from each of a
        hand-off's sampled requests, of `rows` rows each (each capped at MAX_BINNED_VALUES_A_ROW a
        row, then all binned in one numpy pass: one request at a time, binning was most of the clip
        lane's cost on a small model); how many were binned (finite ones). Count the requests with
        `samples_done` once every tensor is added."""
        h = self.histograms.get(tensor)
        if h is None:
            return 0
        parts = [
            self._capped(np.asarray(values).reshape(-1), MAX_BINNED_VALUES_A_ROW * count)
            for values, count in zip(requests, rows, strict=True)
        ]
        flat = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if tensor in self.requantized:
            flat = self.requantized[tensor].as_float(flat)
        if tensor in self.folded:
            flat = np.clip(flat, *self.folded[tensor])
        counts, under, over = ActivationHistogram.bin(flat, h.low, h.high)
        binned = _as_bins(counts, under, over)
        self._current[tensor] += binned
        return int(binned.sum())

    def _capped(self, flat: np.ndarray, cap: int) -> np.ndarray:
        """At most `cap` of one request's values, evenly strided (a view, no copy): rows of a request
        lie one after the other, so each gets its share, a row's values over the same stride a
        one-row request of that row would get."""
        if flat.size <= cap:
            return flat
        step = -(-flat.size // cap)
        self._offset += 1  # each request starts elsewhere: no position is always skipped
        return flat[self._offset % step :: step]

    def room(self) -> int:
        """Sampled requests the current half-window takes before it slides: a batch added at once
        must not span a slide, or the window would cover more requests than it says."""
        return self.half - self._current_samples

    def samples_done(self, samples: int = 1) -> None:
        """`samples` sampled requests binned: slide the window when its current half is full."""
        if samples > self.room():
            raise ValueError(f"{samples} requests do not fit the {self.room()} left before the window slides")
        self._current_samples += samples
        if self._current_samples >= self.half:
            self.settled = True
            self._previous = self._current
            self._current = {t: np.zeros_like(b) for t, b in self.baseline.items()}
            self._current_samples = 0

    def distances(self) -> dict[str, float]:
        """JS divergence of the window from calibration, per tensor that has values in the window."""
        tensors = [t for t in self.baseline if self._previous[t].any() or self._current[t].any()]
        if not tensors:
            return {}
        windows = np.stack([self._previous[t] + self._current[t] for t in tensors])
        baselines = np.stack([self.baseline[t] for t in tensors])
        return dict(zip(tensors, js_divergences(windows, baselines).tolist(), strict=True))


def overall(distances: Mapping[str, float]) -> float | None:
    """The mean over tensors: every quantized tensor weighs the same, whatever its size (the max
    would follow the noisiest small tensor). None before any tensor has values."""
    return float(np.mean(list(distances.values()))) if distances else None
