"""What a canary under the default SLOs will judge of an artifact, read before it ships.

Two of a canary's judgements need no traffic to foresee: the ops that run in float behind Q/DQ
(`spec.slos.maxFallbackOps`, a hard gate over the manifest's fallback_ops) and the clip rate, here
on the evaluation rows (`spec.slos.maxClipRate`). quantize says both where they would fail the
canary, as `Evaluator.shadow_warning` says the accuracy-delta SLO's: said, not gated, since the SLOs
are the rollout's to set.
"""

from __future__ import annotations

import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from quantship import runtime, slo
from quantship.activations import ActivationRange
from quantship.quantize.data import Dataset
from quantship.rollout.spec import AnalysisSpec

MAX_FALLBACK_OPS = AnalysisSpec.max_fallback_ops
"""The default of spec.slos.maxFallbackOps."""
CLIP_BUDGET = next(o.budget for o in slo.DEFAULT_OBJECTIVES if o.sli is slo.SLI.CLIP_RATE)
"""The default of spec.slos.maxClipRate: the share of observed activation values that may clip."""


@dataclass(frozen=True)
class Clipping:
    observed: int
    clipped: int
    by_tensor: Counter[str] = field(default_factory=Counter)
    """Clipped values per tensor."""

    @property
    def rate(self) -> float:
        return self.clipped / self.observed if self.observed else 0.0


CLIP_ROWS = 64
"""Evaluation rows the clip warning reads: a figure of a few tenths of a percent over millions of
values. All 300 of EfficientNet-Lite0's took 38.6 s and 400 MB (2026-12-06, a loaded host)."""


def clipping(
    model: Path, ranges: list[ActivationRange], dataset: Dataset, fixed_batch: int | None
) -> Clipping:
    """The clip rate the server's observer counts (server/clipping.py) over the first CLIP_ROWS rows
    of `dataset`: every range's tensor read from the QDQ simulation of `model`, counted by
    `ActivationRange.count_clipped`, one request's rows at a time as the server counts them (a
    tensor without the batch dimension once a request): one row, or the model's `fixed_batch`."""
    from quantship.server.clipping import observer_model  # here: the server's package pulls FastAPI in

    observer, kept = observer_model(onnx.load(str(model)), ranges)
    session = runtime.create_session(observer)
    inputs = {value.name for value in session.get_inputs()}
    names = list(dict.fromkeys(r.tensor for r in kept if r.tensor not in inputs))
    observed, by_tensor = 0, Counter[str]()
    batch_size = fixed_batch or 1
    rows = min(dataset.size, max(CLIP_ROWS // batch_size, 1) * batch_size)
    for batch in dataset.subset(rows).batches(batch_size):
        # Asked for no output, onnxruntime runs them all: no call where the inputs are all observed.
        computed = session.run(names, batch) if names else []
        values = {**batch, **dict(zip(names, computed, strict=True))}
        for r in kept:
            observed += int(values[r.tensor].size)
            by_tensor[r.tensor] += r.count_clipped(values[r.tensor])
    return Clipping(observed, sum(by_tensor.values()), +by_tensor)


def fallback_warning(fallback: dict[str, int], nodes: list[str], sides: list[str]) -> str | None:
    """What the canary's fallback gate will say of an artifact whose `fallback` (runtime.fallback_ops)
    counts more ops than the default allows; `nodes`, the names of the model's nodes behind them
    (runtime.unfused_sources: a SkipLayerNormalization's residual Add and LayerNormalization, not
    the fused node's own name, which --exclude does not know); `sides`, the quantized nodes whose
    Q/DQ put them there (a side of each), which --exclude keeps in float to lift them: excluding the
    float nodes themselves changes nothing (a Tanh between two MatMuls, which no recipe quantizes,
    is in float already)."""
    count = sum(fallback.values())
    if count <= MAX_FALLBACK_OPS:
        return None
    ops = ", ".join(f"{op} {n}" for op, n in fallback.items())
    lift = (
        "keep the quantized nodes on one side of each in float too ("
        + " ".join(f"--exclude {shlex.quote(name)}" for name in sides)
        + ": the side of fewer weight values)"
        if sides
        else "keep their quantized neighbours in float too (--exclude)"
    )
    return (
        f"{count} ops run in float between DequantizeLinear and QuantizeLinear, with no int8 kernel in "
        f"onnxruntime ({ops}: {', '.join(nodes)}): over the default spec.slos.maxFallbackOps of "
        f"{MAX_FALLBACK_OPS}, a canary of this artifact fails outright. Set spec.slos.maxFallbackOps to "
        f"at least {count}, or {lift}"
    )


def clip_warning(clipped: Clipping) -> str | None:
    """What the clip-rate SLI will read, where the evaluation rows clip more than its default budget."""
    if clipped.rate <= CLIP_BUDGET:
        return None
    tensor, most = clipped.by_tensor.most_common(1)[0]
    return (
        f"the evaluation rows clip {clipped.rate:.3%} of the activation values the server observes "
        f"({clipped.clipped} of {clipped.observed}; {most / clipped.clipped:.0%} of them in {tensor!r}), "
        f"over the default clip-rate SLO's {CLIP_BUDGET:.1%} (spec.slos.maxClipRate): a canary on "
        f"traffic like this burns at ~{clipped.rate / CLIP_BUDGET:.1f}x and rolls back. Calibrate on "
        f"data like it, or set spec.slos.maxClipRate to at least {clipped.rate:.2%}"
    )
