"""Accuracy delta in production: sampled requests also run through the FP32 reference, in the background.

The service offers a ShadowSample (inputs plus the served model's answer) to a background lane for
a `--shadow-rate` share of requests; `ShadowEvaluator.process` runs the reference on a batch of
them in the background thread and counts, per row, comparisons and disagreements. A Comparator
says what "disagree" means for the compared output (the manifest's gated output, else the first),
by the rule the accuracy gate used (quantship/agreement.py): top-1 for a classifier (only rows
where FP32 is confident, when the gate judged those), cosine below the tolerance for an
embedding, relative L2 error above it otherwise (a regressor's: against at least the evaluation data's
typical row norm, the manifest's `norm_floor`). A per-position rule (a causal LM's or a token
classifier's answer per token) judges each position but the padding that the request's own mask
input marks, and still counts rows: each row disagrees by the share of its positions that flip, as
the gate's expected shadow disagreement counted them. The reference's top-1 also goes to the
feedback store, so feedback on a shadowed request needs no second reference run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from quantship import runtime
from quantship.agreement import Judged, Kind, RowRule
from quantship.printable import brief
from quantship.server.background import ROWS_A_CALL
from quantship.server.feedback import FeedbackStore
from quantship.server.metrics import ServerMetrics
from quantship.server.runner import Runner
from quantship.server.runner_signature import Tensors, TensorSpec


@dataclass(frozen=True)
class Comparator:
    output: str
    rule: RowRule
    """What "disagree" means, per row: the gate's own rule, from the artifact's manifest."""
    class_per_row: bool = True
    """Whether the output answers one class a row (label feedback can judge it): not token ids
    [N, seq], which a top-1 rule compares at every position."""

    @classmethod
    def for_artifact(
        cls,
        spec: TensorSpec,
        shadow_rule: Mapping[str, Any] | None,
        tolerance: float,
        inputs: Sequence[TensorSpec] = (),
    ) -> Comparator:
        """The manifest's rule; for an artifact older than task-aware gates, one read from the
        output: top-1 for class ids or per-class scores, relative error above `tolerance` otherwise.
        A rule's mask input must be one of the model's `inputs`, holding integers or booleans."""
        # Ids are one class a row only where no dimension but the batch can hold more than one.
        per_row = spec.dtype.kind == "f" or all(dim == 1 for dim in spec.shape[1:])
        if shadow_rule is not None:
            rule = RowRule.from_json(dict(shadow_rule))
            rule.check_output(spec.dtype, spec.shape)
            if rule.mask_input is not None:
                _check_mask_input(rule.mask_input, inputs)
            return cls(spec.name, rule, per_row)
        ids = spec.dtype.kind in "iu"
        # [N, classes] only, as runtime.top1 reads: scores per position have no one class a row.
        scores = spec.dtype.kind == "f" and len(spec.shape) == 2 and (spec.shape[-1] or 0) > 1
        if ids or scores:
            return cls(spec.name, RowRule(Kind.TOP1), per_row)
        return cls(spec.name, RowRule(Kind.RELATIVE_ERROR, tolerance))

    @property
    def classifier(self) -> bool:
        """Whether answers are classes a row: the reference's go to label feedback."""
        return self.rule.classifier and self.class_per_row

    def unlabelled(self) -> str:
        """Why label feedback, one class a row, cannot judge this output."""
        if self.rule.kind is Kind.TOP1:  # token ids [N, seq], or scores judged per position
            return f"output {self.output!r} answers a class at each position"
        return f"output {self.output!r} gives no class ids"

    def judged(self, served: np.ndarray, reference: np.ndarray, inputs: Tensors | None = None) -> Judged:
        """How the served output and the reference's disagree: the rows that disagree (for a
        per-position rule, each by the share of its positions that flip, without the padding the
        request's mask input marks: RowRule.judge), the rows compared, and the rows that disagree at
        all (whole events: a token model's rows with a position flipped)."""
        mask = inputs.get(self.rule.mask_input) if inputs is not None and self.rule.mask_input else None
        return self.rule.judge_rows(served, reference, mask)


def _check_mask_input(name: str, inputs: Sequence[TensorSpec]) -> None:
    spec = next((spec for spec in inputs if spec.name == name), None)
    if spec is None:
        raise ValueError(f"its mask_input {brief(name, 40)!r} is none of the model's inputs")
    if spec.dtype.kind not in "iub":
        raise ValueError(f"its mask_input {brief(name, 40)!r} holds {spec.dtype}, not a 0/1 mask")


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
        """Blocking: runs the reference. Called in the background thread by a Lane. Every sample is
        judged before any is counted: should one raise, the Lane counts the hand-off's samples as
        dropped, and none of them as compared too."""
        outputs = self.reference.run_many(
            [s.inputs for s in samples], [s.rows for s in samples], max_rows=ROWS_A_CALL
        )
        references = [output[self.comparator.output] for output in outputs]
        judged = [
            self.comparator.judged(sample.served, reference, sample.inputs)
            for sample, reference in zip(samples, references, strict=True)
        ]
        for sample, reference, counts in zip(samples, references, judged, strict=True):
            self.metrics.compared(counts.compared, counts.disagreeing, counts.disagreeing_rows)
            if self.feedback is not None and self.comparator.classifier:
                top1 = runtime.top1(reference)
                if top1 is not None:
                    self.feedback.attach_reference(sample.request_id, top1)
