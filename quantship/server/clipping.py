"""Clipped-activation rate in production: how much real traffic falls outside the calibrated ranges.

`observer_model` copies the served INT8 model and makes the input of every QuantizeLinear node
with a range in the manifest a graph output. A second session of it (so the serving session keeps
its fused int8 kernels) runs on a `--clip-sample-rate` share of requests in the background thread;
`ClipCounter.process` counts, with `ActivationRange.count_clipped` (the one definition of clipped),
the values each range saturates, and hands the same values to the drift window (server/drift.py),
when the artifact carries calibration histograms. Exposed tensors stop onnxruntime from fusing
their QDQ groups, so the observer runs the QDQ simulation: the values it sees are the float values
the served graph quantizes, up to int8 rounding of earlier layers. An observed tensor without the
batch dimension (a static BERT's position embeddings, gathered from a constant) comes whole to each
request of a merged call (`Runner.run_batch`) and counts once a request, as its own call would.

A QOperator model has a QuantizeLinear only where a float tensor enters int8 (its inputs); every
other activation is requantized inside a QLinear op's kernel (QLinearConv, QLinearMatMul, QGemm,
QLinearAdd, QLinearSoftmax, ...) and never exists in float. Its manifest ranges name those ops' int8
outputs (`ActivationRange.requantized_by`), which the observer exposes like any tensor; the counter
counts a code as clipped when it is an end of the int8 type, i.e. the kernel saturated it
(`ActivationRange.count_clipped`, on the codes themselves; not an end that stands for 0 or for a
folded Relu/Clip's bound, which hold ordinary values). A code at the end also holds results within
half a step inside the bound, so this reads at most that band higher than QDQ's "more than half a
step outside". Drift dequantizes the codes it bins (`ActivationRange.as_float`, in the drift window)
and compares them with the calibration histogram of the FP32 tensor the op's output stands for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from quantship import runtime
from quantship.activations import ActivationRange
from quantship.server.background import ROWS_A_CALL
from quantship.server.drift import DriftWindow, overall
from quantship.server.metrics import ServerMetrics
from quantship.server.runner import Runner
from quantship.server.runner_signature import Tensors


def observable(model: onnx.ModelProto, ranges: Sequence[ActivationRange]) -> list[ActivationRange]:
    """The ranges whose tensor exists in this graph (as a node output or a graph input)."""
    names = _tensors(model)
    return [r for r in ranges if r.tensor in names]


def _tensors(model: onnx.ModelProto) -> set[str]:
    return {out for node in model.graph.node for out in node.output} | {i.name for i in model.graph.input}


RANGE_NUMBERS = ("low", "high", "scale", "activation_low", "activation_high")
"""What the clip counter and the drift window compute with, of an activation range."""
MAX_ZERO_POINT = 2**16
"""A zero point's magnitude stays below this: its type is one of 8 or 16 bits."""


def unusable_ranges(model: onnx.ModelProto, manifest: Mapping[str, Any]) -> str | None:
    """What makes the manifest's activation ranges or histograms unusable by the clip and drift SLIs
    of `model` (None where nothing does), read from the manifest as written (its schema has checked
    the types). A range names a tensor the model quantizes, as quantize/ranges.py reads them: the
    input of a QuantizeLinear, or the output of the QLinear op its `requantized_by` names; its
    bounds and scale are finite, low not above high, the scale above 0, the zero point one of 16
    bits at most. A histogram names a tensor of the model and has finite bounds in order (its
    length is the schema's to check). quantship never writes anything else; served, such an entry
    failed every clip sample (drift's binning, a division by the scale), which stopped both SLIs for
    the whole model, or counted nonsense (a range upside down clips everything)."""
    quantized = {node.input[0] for node in model.graph.node if node.op_type == runtime.QUANTIZE}
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    for entry in manifest.get("activation_ranges") or ():
        problem = _range_problem(entry, quantized, producers)
        if problem is not None:
            return f"activation range {entry['tensor']!r} {problem}"
    tensors = _tensors(model)
    for entry in manifest.get("activation_histograms") or ():
        problem = _histogram_problem(entry, tensors)
        if problem is not None:
            return f"activation histogram {entry['tensor']!r} {problem}"
    return None


def _range_problem(entry: Mapping[str, Any], quantized: set[str], producers: Mapping[str, str]) -> str | None:
    op = entry.get("requantized_by")
    if op is None and entry["tensor"] not in quantized:
        return "names no tensor the model quantizes (the input of a QuantizeLinear)"
    if op is not None and producers.get(entry["tensor"]) != op:
        return f"names no output of a {op} op of the model"
    unfinite = [key for key in RANGE_NUMBERS if entry.get(key) is not None and not _finite(entry[key])]
    if unfinite:
        return f"has a {unfinite[0]} that is no finite number"
    if entry["low"] > entry["high"]:
        return f"has its low {entry['low']:g} above its high {entry['high']:g}"
    if entry["scale"] <= 0:
        return f"has a scale of {entry['scale']:g}, not above 0"
    if abs(entry.get("zero_point") or 0) >= MAX_ZERO_POINT:
        return "has a zero point no 8- or 16-bit type holds"
    return None


def _histogram_problem(entry: Mapping[str, Any], tensors: set[str]) -> str | None:
    if entry["tensor"] not in tensors:
        return "names no tensor of the model"
    if not (_finite(entry["low"]) and _finite(entry["high"])):
        return "has a bound that is no finite number"
    if entry["low"] > entry["high"]:
        return f"has its low {entry['low']:g} above its high {entry['high']:g}"
    if not _finite(sum(entry["counts"]) + entry["underflow"] + entry["overflow"]):
        return "counts more values than a float holds"
    return None


def _finite(number: float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an integer past what a float holds
        return False


def observer_model(
    served: onnx.ModelProto, ranges: Sequence[ActivationRange]
) -> tuple[bytes, list[ActivationRange]]:
    """The served model (parsed, left as it is) with every range's tensor also a graph output, and
    the ranges it can observe.

    A range whose tensor is a graph input is observed from the request itself; one whose tensor is
    not in the graph at all (a manifest that does not fit the model, which the server refuses
    first: `unusable_ranges`) is left out.
    """
    model = onnx.ModelProto()
    model.CopyFrom(served)
    present = {o.name for o in model.graph.output} | {i.name for i in model.graph.input}
    kept = observable(model, ranges)
    for r in kept:
        if r.tensor not in present:
            model.graph.output.append(onnx.ValueInfoProto(name=r.tensor))
            present.add(r.tensor)
    return model.SerializeToString(), kept


@dataclass(frozen=True)
class ClipSample:
    inputs: Tensors
    rows: int


class ClipCounter:
    def __init__(
        self,
        observer: Runner,
        ranges: Sequence[ActivationRange],
        metrics: ServerMetrics,
        drift: DriftWindow | None = None,
    ) -> None:
        self.observer = observer
        self.ranges = list(ranges)
        self.metrics = metrics
        self.drift = drift

    def process(self, samples: Sequence[ClipSample]) -> None:
        """Blocking: runs the observer session. Called in the background thread by a Lane.

        Counting and binning go a tensor at a time over all of the hand-off's requests together:
        one request at a time, digits' 9 tensors cost 1.0-1.8 ms of numpy calls on tiny arrays a
        sample (AMD EPYC), more than the observing session itself."""
        outputs = self.observer.run_many(
            [s.inputs for s in samples], [s.rows for s in samples], max_rows=ROWS_A_CALL
        )
        pairs = list(zip(samples, outputs, strict=True))
        per_tensor: dict[str, tuple[int, int]] = {}
        binned = 0
        while pairs:
            size = len(pairs) if self.drift is None else min(len(pairs), self.drift.room())
            chunk, pairs = pairs[:size], pairs[size:]
            for r in self.ranges:
                requests = [_values(r, sample, observed) for sample, observed in chunk]
                seen, clipped = per_tensor.get(r.tensor, (0, 0))
                per_tensor[r.tensor] = (
                    seen + sum(int(values.size) for values in requests),
                    clipped + _count_clipped(r, requests),
                )
                if self.drift is not None:
                    binned += self.drift.add(r.tensor, requests, [sample.rows for sample, _ in chunk])
            if self.drift is not None:
                self.drift.samples_done(len(chunk))
        observed_values = sum(seen for seen, _ in per_tensor.values())
        clipped_values = sum(outside for _, outside in per_tensor.values())
        self.metrics.activations(observed_values, clipped_values, per_tensor)
        if self.drift is not None:  # its evidence counted from the first request, the distance once settled
            distances = self.drift.distances() if self.drift.settled else {}
            self.metrics.drifted(distances, overall(distances), binned)


JOIN_VALUES = 1 << 16
"""A tensor's values over a hand-off are joined into one array to be counted at once up to this many
(a copy of a small model's few kilobytes); past it, each request counts on its own, so that a CNN's
megabytes a request are never copied."""


def _values(r: ActivationRange, sample: ClipSample, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """One request's `r.tensor`, flat: an observed output (a QLinear op's int8 codes), or for a graph
    input, the request's own."""
    observed = outputs.get(r.tensor)
    return (sample.inputs[r.tensor] if observed is None else observed).reshape(-1)


def _count_clipped(r: ActivationRange, requests: Sequence[np.ndarray]) -> int:
    if len(requests) > 1 and sum(values.size for values in requests) <= JOIN_VALUES:
        return r.count_clipped(np.concatenate(requests))
    return sum(r.count_clipped(values) for values in requests)
