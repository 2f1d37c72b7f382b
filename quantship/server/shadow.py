"""Accuracy delta in production: sampled requests also run through the FP32 reference, in the background.

The service offers a ShadowSample (inputs plus the served model's answer) to a background lane for
a `--shadow-rate` share of requests; `ShadowEvaluator.process` runs the reference on a batch of
them in the background thread and counts, per row, comparisons and disagreements. A Comparator
says what "disagree" means for the compared output (the manifest's gated output, else the first):
top-1 differs for a classifier (integer class ids, or argmax of per-class scores), relative L2
error above the tolerance otherwise. The reference's top-1 also goes to the feedback store, so
feedback on a shadowed request needs no second reference run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from quantship import runtime
from quantship.server.feedback import FeedbackStore
from quantship.server.metrics import ServerMetrics
from quantship.server.runner import Runner, Tensors, TensorSpec


@dataclass(frozen=True)
class Comparator:
    output: str
    classifier: bool
    """Whether the output gives classes (ids, or scores over a fixed class axis): top-1 comparison."""
    tolerance: float

    @classmethod
    def for_output(cls, spec: TensorSpec, tolerance: float) -> Comparator:
        ids = spec.dtype.kind in "iu"
        scores = spec.dtype.kind == "f" and len(spec.shape) >= 2 and (spec.shape[-1] or 0) > 1
        return cls(spec.name, ids or scores, tolerance)

    def disagreements(self, served: np.ndarray, reference: np.ndarray) -> tuple[int, int]:
        """(disagreeing rows, compared rows) between the served output and the reference's."""
        rows = len(served) if served.ndim else 1
        if self.classifier:
            served_top1, reference_top1 = runtime.top1(served), runtime.top1(reference)
            if served_top1 is not None and reference_top1 is not None:
                return int(np.count_nonzero(served_top1 != reference_top1)), rows
        served_rows = served.reshape(rows, -1).astype(np.float64)
        reference_rows = reference.reshape(rows, -1).astype(np.float64)
        error = np.linalg.norm(served_rows - reference_rows, axis=1)
        scale = np.maximum(np.linalg.norm(reference_rows, axis=1), np.finfo(np.float64).tiny)
        return int(np.count_nonzero(error / scale > self.tolerance)), rows


@dataclass(frozen=True)
class ShadowSample:
    request_id: str
    inputs: Tensors
    rows: int
    served: np.ndarray
    """The served model's compared output for this request."""


class ShadowEvaluator:
    def __init__(
        self,
        reference: Runner,
        comparator: Comparator,
        metrics: ServerMetrics,
        feedback: FeedbackStore | None = None,
    ) -> None:
        self.reference = reference
        self.comparator = comparator
        self.metrics = metrics
        self.feedback = feedback

    def process(self, samples: Sequence[ShadowSample]) -> None:
        """Blocking: runs the reference. Called in the background thread by a Lane."""
        outputs = self.reference.run_many([s.inputs for s in samples], [s.rows for s in samples])
        for sample, output in zip(samples, outputs, strict=True):
            reference = output[self.comparator.output]
            disagreeing, rows = self.comparator.disagreements(sample.served, reference)
            self.metrics.compared(rows, disagreeing)
            if self.feedback is not None and self.comparator.classifier:
                top1 = runtime.top1(reference)
                if top1 is not None:
                    self.feedback.attach_reference(sample.request_id, top1)
