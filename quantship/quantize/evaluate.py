"""The accuracy gate's measurement: FP32 and INT8 side by side on the evaluation data.

Both models run in sessions built by `quantship.runtime`, exactly as the server builds them, so
the INT8 numbers are those of the fused int8 kernels that will serve, not of a QDQ simulation.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from quantship import runtime
from quantship.quantize.data import Dataset
from quantship.quantize.errors import QuantizeInputError

EVAL_BATCH = 256


class Metric(enum.StrEnum):
    TOP1_ACCURACY = "top1_accuracy"
    """Labels given: the gated delta is the relative accuracy loss (fp32 - int8) / fp32."""
    TOP1_AGREEMENT = "top1_agreement"
    """No labels, a classifier: the gated delta is the share of top-1 answers that differ."""
    RELATIVE_ERROR = "relative_error"
    """No labels, not a classifier: the gated delta is ||int8 - fp32|| / ||fp32|| of the output."""


@dataclass(frozen=True)
class Evaluation:
    metric: Metric
    samples: int
    delta: float
    fp32: float | None
    int8: float | None
    agreement: float | None
    relative_error: float | None

    def passes(self, max_delta: float) -> bool:
        return self.delta <= max_delta

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "metric": self.metric.value}


class Evaluator:
    """Holds the FP32 outputs, computed once, and judges any number of INT8 candidates against them."""

    def __init__(
        self, fp32_model: Path, dataset: Dataset, output: str | None, batch_size: int = EVAL_BATCH
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        session = runtime.create_session(fp32_model)
        names = [o.name for o in session.get_outputs()]
        if output is not None and output not in names:
            raise QuantizeInputError(f"the model has no output {output!r} (outputs: {', '.join(names)})")
        self.output = output or names[0]
        # Relative error needs float scores; a classifier's first output is often its class ids.
        floats = [o.name for o in session.get_outputs() if o.type == "tensor(float)"]
        self.scores = self.output if self.output in floats else (floats[0] if floats else None)
        self.reference, self.reference_scores = self._run(session)
        if self.dataset.labels is not None and runtime.top1(self.reference) is None:
            raise QuantizeInputError(
                f"labels given, but output {self.output!r} of shape {list(self.reference.shape)} "
                "is not a classifier's (class ids, or scores with classes on the last axis)"
            )

    def _run(self, session: ort.InferenceSession) -> tuple[np.ndarray, np.ndarray | None]:
        names = [self.output] if self.scores in (None, self.output) else [self.output, self.scores]
        runs = [session.run(names, batch) for batch in self.dataset.batches(self.batch_size)]
        join = np.concatenate if self.dataset.stacked else np.stack
        outputs = [join([run[i] for run in runs]) for i in range(len(names))]
        return outputs[0], (outputs[-1] if self.scores is not None else None)

    def evaluate(self, int8_model: Path) -> Evaluation:
        candidate, candidate_scores = self._run(runtime.create_session(int8_model))
        ref_top1, int8_top1 = runtime.top1(self.reference), runtime.top1(candidate)
        agreement = None if ref_top1 is None or int8_top1 is None else float(np.mean(ref_top1 == int8_top1))
        relative_error = (
            _relative_error(self.reference_scores, candidate_scores)
            if self.reference_scores is not None and candidate_scores is not None
            else None
        )
        labels = self.dataset.labels
        if labels is not None and ref_top1 is not None and int8_top1 is not None:
            fp32_accuracy = float(np.mean(ref_top1 == labels))
            int8_accuracy = float(np.mean(int8_top1 == labels))
            delta = (fp32_accuracy - int8_accuracy) / fp32_accuracy if fp32_accuracy > 0 else 0.0
            return Evaluation(
                Metric.TOP1_ACCURACY,
                self.dataset.size,
                delta,
                fp32_accuracy,
                int8_accuracy,
                agreement,
                relative_error,
            )
        if agreement is not None:
            return Evaluation(
                Metric.TOP1_AGREEMENT,
                self.dataset.size,
                1.0 - agreement,
                None,
                None,
                agreement,
                relative_error,
            )
        return Evaluation(
            Metric.RELATIVE_ERROR, self.dataset.size, relative_error or 0.0, None, None, None, relative_error
        )


def _relative_error(reference: np.ndarray, candidate: np.ndarray) -> float | None:
    norm = float(np.linalg.norm(reference))
    return float(np.linalg.norm(candidate.astype(np.float64) - reference)) / norm if norm > 0 else None
