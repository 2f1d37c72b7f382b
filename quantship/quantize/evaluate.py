"""The accuracy gate's measurement: FP32 and INT8 side by side on the evaluation data, per task.

Both models run in sessions built by `quantship.runtime`, exactly as the server builds them, so
the INT8 numbers are those of the fused int8 kernels that will serve, not of a QDQ simulation.

Each task has its own metrics, all reported; one of them gates:

| task | metrics (gate default first) |
|---|---|
| classification, labels | top1_accuracy: relative accuracy loss (fp32 - int8) / fp32 |
| classification, none | confident_agreement, top1_agreement, top5_overlap, kl_divergence |
| classification per position, none | confident_agreement (ids: top1_agreement), top5_overlap, kl_divergence |
| embedding | cosine_agreement, cosine_mean, cosine_p5, nn_agreement |
| regression | relative_error |

A classifier answering per position (a causal LM's [N, seq, vocab] logits, a token classifier's
[N, seq] ids) is judged at each position, without the padding its attention mask marks: positions
are the rows of its metrics (agreement.positions). The shadow SLI still counts rows, each by the
share of its positions that disagree (RowRule.judge), and so does the shadow disagreement expected.

The metrics' definitions, wording and the gate's verdict are `gate_metrics`'s; their numbers from
the two models' outputs, `gate_measures`'.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from quantship import agreement, runtime, slo
from quantship.agreement import Kind, RowRule, Task
from quantship.choices import TASK_OF_METRIC, Metric
from quantship.quantize import data, gate_measures, tasks
from quantship.quantize.data import Dataset
from quantship.quantize.errors import QuantizeInputError, first_line
from quantship.quantize.gate_metrics import COSINE_MIN, METRICS, Evaluation, Gate, check_in_domain

MAX_BATCH = 256
MIN_CONFIDENT_ROWS = 30
"""Fewer confident rows than this make confident agreement too coarse to gate on (one flip in 20
is 5%): the default then falls back to plain top-1 agreement, with a warning."""

SHADOW_COUNTS = {Metric.TOP1_AGREEMENT, Metric.CONFIDENT_AGREEMENT, Metric.COSINE_AGREEMENT}
"""Metrics whose loss is the share of rows the shadow SLI's rule (`Gate.rule`) counts: a gate on
them has bounded what the shadow will read (per position, the gate's share is of all positions, the
shadow's a mean of the rows' shares: the same where every row has as many judged positions, which
under `confident_only` rows seldom have). The others (accuracy against
labels, KL, a cosine mean, a regression's global error) pass artifacts whose rows the shadow may
count far more often."""
SHADOW_BUDGET = next(o.budget for o in slo.DEFAULT_OBJECTIVES if o.sli is slo.SLI.ACCURACY_DELTA)
"""The share of shadow comparisons that may disagree under the default accuracy-delta SLO: past it on
the evaluation rows, a canary on traffic like them burns its budget (spec.slos.maxAccuracyDelta)."""


MIN_GATE_ROWS = 30
"""Evaluation rows (an answer per position: positions judged) under which a gate's verdict is warned
of: on 1 to 29, one disagreement is 3-100% of them, and a pass on a handful says little (one
EfficientNet-Lite0 image passed at agreement 1.0, in silence)."""
LABELS_FIT_ROWS = 20
"""Labelled rows from which an FP32 model right on none of them means the labels are not its own."""

_QUIET = ort.RunOptions()
_QUIET.log_severity_level = 4  # a failed run raises, and says why in one line: not onnxruntime's log too


@dataclass(frozen=True)
class GateRequest:
    """What the user asked of the gate; None lets the evaluator choose from the model and data."""

    task: Task | None = None
    metric: Metric | None = None
    threshold: float | None = None
    max_accuracy_delta: float = 0.005
    min_cosine: float = agreement.MIN_COSINE
    mask_input: str | None = None
    """The input whose zeros mark padding, for an answer per position; None finds the attention mask."""


class Evaluator:
    """Holds the FP32 outputs, computed once, and judges any number of INT8 candidates against them."""

    def __init__(self, fp32_model: Path, dataset: Dataset, output: str | None, request: GateRequest) -> None:
        self.dataset = dataset
        session = runtime.create_session(fp32_model)
        fixed = {
            shape[0] for node in session.get_inputs() if (shape := node.shape) and isinstance(shape[0], int)
        }
        self.fixed_batch: int | None = fixed.pop() if fixed and dataset.stacked else None
        """The model's own batch size when it fixes one: every run takes exactly that (load_dataset
        checked the data cuts into it)."""
        self.batch_size = self.fixed_batch or _batch_size(dataset)
        names = [o.name for o in session.get_outputs()]
        if output is not None and output not in names:
            raise QuantizeInputError(f"the model has no output {output!r} (outputs: {', '.join(names)})")
        self.output = output or names[0]
        self.other_outputs = [name for name in names if name != self.output]
        # Scores are needed beside class ids: a classifier's first output is often its labels.
        floats = [o.name for o in session.get_outputs() if o.type in ("tensor(float)", "tensor(double)")]
        self.scores = self.output if self.output in floats else (floats[0] if floats else None)
        try:
            self.reference, self.reference_scores = self._run(session)
        except Exception as exc:  # onnxruntime's pybind types: the data does not suit the FP32 model
            raise QuantizeInputError(
                f"the FP32 model fails on the evaluation data {dataset.source}: {first_line(exc)}"
            ) from exc
        self.warnings: list[str] = []
        self.task, self.task_reason = tasks.infer_task(request.task, self.output, self.reference, dataset)
        for doubt in tasks.DOUBTS_OF_REQUESTED_TASK:
            if (said := doubt(request.task, self.output, self.reference, dataset)) is not None:
                self.warnings.append(said)
        self.per_position = self.task is Task.CLASSIFICATION and tasks.answers_per_position(self.reference)
        self.mask_input = self._mask_input(request.mask_input)
        """The input whose zeros mark padding, which no position's answer is judged at."""
        self.mask = dataset.arrays[self.mask_input] if self.mask_input is not None else None
        self._check_reference_finite()
        self.gate = self._choose_gate(request)
        self._warn_of_unused_min_cosine(request.min_cosine)
        self._check_servable(session)
        self._check_labels_fit()
        self._warn_of_few_rows()

    def _check_servable(self, session: ort.InferenceSession) -> None:
        """The server refuses at load an artifact whose row rule cannot judge the gated output
        (agreement.RowRule.check_output): a BOOL flag gated by relative error verified, and no server
        ever got ready (hunt-H H6). Checked by that very function, before any tuning."""
        (declared,) = [node for node in session.get_outputs() if node.name == self.output]
        shape = tuple(dim if isinstance(dim, int) and dim >= 0 else None for dim in declared.shape or ())
        try:
            self.gate.rule.check_output(self.reference.dtype, shape)
        except ValueError as exc:
            others = f" ({', '.join(self.other_outputs)})" if self.other_outputs else ""
            raise QuantizeInputError(
                f"output {self.output!r} cannot be gated as {self.task.value} ({self.task_reason}), and "
                f"no server would load the artifact: {exc}; pick a float or class-id output with "
                f"--output NAME{others}"
            ) from None

    def _warn_of_unused_min_cosine(self, min_cosine: float) -> None:
        """--min-cosine sets the cosine rule (an embedding's gate and shadow SLI), which no other gate
        reads: named, as other options that do not apply are, not refused (the operator's Job passes
        what a QuantizedModel sets, and a run that would work must not fail on it)."""
        if self.gate.rule.kind is Kind.COSINE or min_cosine == agreement.MIN_COSINE:
            return
        judged = "by top-1" if self.gate.rule.kind is Kind.TOP1 else "by relative error"
        self.warnings.append(
            f"--min-cosine {min_cosine:g} ignored: the gate judges output {self.output!r} as "
            f"{TASK_OF_METRIC[self.gate.metric].value} ({judged}); it sets an embedding's cosine rule"
        )

    def _warn_of_few_rows(self) -> None:
        if self.per_position:
            judged = int(np.count_nonzero(self.mask)) if self.mask is not None else self._positions()
            unit = "positions"
        else:
            judged, unit = len(self.reference), "rows"
        if judged < MIN_GATE_ROWS:
            self.warnings.append(
                f"the gate judges only {judged} evaluation {unit} of {self.dataset.source}: one "
                f"disagreement is {1 / max(judged, 1):.0%} of them, and a pass on so few says little; "
                f"give --evaluation {MIN_GATE_ROWS} {unit} or more"
            )

    def _positions(self) -> int:
        return math.prod(agreement.position_grid(self.reference))

    def _check_reference_finite(self) -> None:
        """FP32 answers of NaN or infinity compare as garbage: any INT8 model could pass against them."""
        if self.reference.dtype.kind == "f" and not np.isfinite(self.reference).all():
            rows = self.reference.reshape(len(self.reference), -1)
            bad = int(np.count_nonzero(~np.isfinite(rows).all(axis=1)))
            raise QuantizeInputError(
                f"the FP32 model answers NaN or infinity on {bad} of the {len(rows)} rows of "
                f"{self.dataset.source}: they cannot judge a quantized model"
            )

    def _check_labels_fit(self) -> None:
        """Labels the FP32 model never agrees with are not this model's class ids (shifted, another
        numbering): the gate's relative loss against them reads 0, and any INT8 model would pass.
        Right no more often than a random guess among their classes, they may not be what this output
        classifies (the argmax of a two-output model's embedding: 5.7% on 10 digits, and every INT8
        model kept that 5.7%): refused where the model has another output to gate. With one output it
        is warned of and gated: labels covering a few of the model's classes set a higher bar than its
        own chance (a 10-class BERT right on 27.7% of rows labelled 2 or 5 classifies them).
        Judged on LABELS_FIT_ROWS rows or more: on fewer, none right can be chance."""
        labelled = self._labelled(self.reference) if self.gate.metric is Metric.TOP1_ACCURACY else None
        if labelled is None or len(labelled[1]) < LABELS_FIT_ROWS:
            return
        top1, labels = labelled
        right = int(np.count_nonzero(top1 == labels))
        elsewhere = f" (another output: {self._other_output_option()})" if self.other_outputs else ""
        if right == 0:
            raise QuantizeInputError(
                f"evaluation data {self.dataset.source}: the FP32 model gets none of its "
                f"{len(labels)} labels right (accuracy 0){self._labels_past_classes(labels)}; are they "
                f"this model's class ids?{elsewhere}"
            )
        classes = len(np.unique(labels))
        if classes < 2 or right / len(labels) > 1 / classes:
            return
        guess = (
            f"evaluation data {self.dataset.source}: the FP32 model gets {right} of its {len(labels)} "
            f"labels right ({right / len(labels):.1%}), no better than a guess among their {classes} classes"
        )
        if self.other_outputs:
            raise QuantizeInputError(f"{guess}; is output {self.output!r} their classifier?{elsewhere}")
        self.warnings.append(
            f"{guess}; gating on them as asked (labels of a few of the model's classes set a bar above "
            "its own chance; labels it does not classify would leave the loss nothing to measure)"
        )

    def _labels_past_classes(self, labels: np.ndarray) -> str:
        """`, labels up to 5000 where the scores have 1000 classes`: what makes them foreign, where the
        class scores say how many classes there are."""
        scores = self.reference if self.reference.dtype.kind == "f" else self.reference_scores
        if scores is None or scores.ndim < 2 or int(labels.max()) < scores.shape[-1]:
            return ""
        return (
            f", labels up to {int(labels.max())} where output {self.scores!r} has {scores.shape[-1]} classes"
        )

    def _mask_input(self, requested: str | None) -> str | None:
        """The input whose zeros mark the padding of an answer per position: `requested` (--mask-input),
        else the attention mask found among the evaluation data's inputs: the one integer or boolean
        input named like a mask (but not an encoder's, whose positions are not the output's, nor a
        special-tokens mask, whose 1s are not the tokens), of 0s and 1s, a value per position. None
        where there is none, or more than one to choose from: then every position counts, padding too."""
        if requested is not None:
            return self._check_mask_input(requested)
        if not self.per_position:
            return None
        names = [name.lower() for name in self.dataset.arrays]
        # A seq2seq decoder's positions are its own: its encoder's mask is often plainly `attention_mask`.
        decoder = any(name.startswith("decoder") for name in names)
        named = [
            name
            for name in self.dataset.arrays
            if "mask" in name.lower()
            and not name.lower().startswith("encoder")
            and "special" not in name.lower()
            and (name.lower().startswith("decoder") or not decoder)
        ]
        masks = [name for name in named if self._fits_as_mask(name)]
        if len(masks) > 1:
            self.warnings.append(
                f"{' and '.join(masks)} could each mark the padding of output {self.output!r}: every "
                "position is judged, padding too; --mask-input NAME says which"
            )
        if not masks:
            self._warn_of_masks_not_of_0_and_1(named)
        return masks[0] if len(masks) == 1 else None

    def _warn_of_masks_not_of_0_and_1(self, named: list[str]) -> None:
        """An integer input named and shaped like the output's mask whose values are not only 0s and 1s
        is not read as one (which of its values mark padding?): said, not left to silence (a mask of
        0s and 2s judged 19,200 positions where 16,911 were real)."""
        grid = agreement.position_grid(self.reference)
        for name in named:
            array = self.dataset.arrays[name]
            if array.shape == grid and array.dtype.kind in "iub":
                values = ", ".join(str(value) for value in np.unique(array)[:5])
                self.warnings.append(
                    f"{name!r} is shaped like the padding mask of output {self.output!r} but holds "
                    f"{values}, not only 0s and 1s: every position is judged, padding too; a mask of "
                    "0s (padding) and 1s leaves the padding out"
                )

    def _fits_as_mask(self, name: str) -> bool:
        array = self.dataset.arrays[name]
        return (
            array.shape == agreement.position_grid(self.reference)
            and array.dtype.kind in "iub"
            and bool(np.isin(array, (0, 1)).all())
        )

    def _check_mask_input(self, name: str) -> str | None:
        """`name`, checked as a mask of the output's positions; ignored, with a warning, where the output
        has no answer per position: an option that does not apply (as the CLI's), which the operator's
        Job passes from a QuantizedModel, and a run that would have worked must not fail on it."""
        if not self.per_position:
            self.warnings.append(
                f"--mask-input {name} ignored: output {self.output!r} of shape {list(self.reference.shape)} "
                "gives no answer per position to leave the padding out of"
            )
            return None
        if name not in self.dataset.arrays:
            raise QuantizeInputError(
                f"--mask-input {name}: no such input (inputs: {', '.join(self.dataset.arrays)})"
            )
        if not self._fits_as_mask(name):
            grid = list(agreement.position_grid(self.reference))
            raise QuantizeInputError(
                f"--mask-input {name}: a mask needs 0s and 1s, integer or boolean, of the output's "
                f"positions {grid}; {name} is {self.dataset.arrays[name].dtype} "
                f"{list(self.dataset.arrays[name].shape)}"
            )
        return name

    def _labelled(self, output: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(the class answered, its label) for each labelled row, or for an answer per position each
        labelled real position (a negative label marks one without, as a tokenizer's -100 does); None
        without labels or classes (_choose_gate refused those)."""
        labels, top1 = self.dataset.labels, runtime.top1(self.answers(output))
        if labels is None or top1 is None:
            return None
        if not self.per_position:
            return top1, labels
        labels = agreement.positions(labels, self.mask)
        kept = labels >= 0
        return top1[kept], labels[kept]

    def answers(self, output: np.ndarray) -> np.ndarray:
        """What the metrics judge as rows: the output's rows, or for an answer per position, its
        positions without the padding (agreement.positions)."""
        return agreement.positions(output, self.mask) if self.per_position else output

    def _other_output_option(self) -> str:
        """`--output logits` (`--output a|b`): labels that do not fit the gated output may be the
        class ids of another."""
        return f"--output {'|'.join(self.other_outputs)}"

    def _run(
        self, session: ort.InferenceSession, batch_size: int | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        names = [self.output] if self.scores in (None, self.output) else [self.output, self.scores]
        batches = self.dataset.batches(batch_size or self.batch_size)
        runs = [session.run(names, batch, _QUIET) for batch in batches]
        join = np.concatenate if self.dataset.stacked else np.stack
        outputs = [join([run[i] for run in runs]) for i in range(len(names))]
        return outputs[0], (outputs[-1] if self.scores is not None else None)

    def _choose_gate(self, request: GateRequest) -> Gate:
        labels = self.dataset.labels
        floats = np.issubdtype(self.reference.dtype, np.floating)
        if self.task is Task.CLASSIFICATION and floats and self.reference.ndim > 3:
            raise QuantizeInputError(
                f"output {self.output!r} has shape {list(self.reference.shape)}: classification needs "
                "class ids, [N, classes] scores, or [N, seq, classes] scores at each position (pass "
                "--output, or --task embedding)"
            )
        if labels is not None and self.per_position:
            self._check_position_labels(labels)
        elif labels is not None and labels.ndim > 1:
            raise QuantizeInputError(
                f"the evaluation data has labels of shape {list(labels.shape)}, but output {self.output!r} "
                f"of shape {list(self.reference.shape)} answers one class a row: give a class id a row, "
                f"of shape [{self.dataset.size}] (one-hot labels: their argmax), or pick another output "
                "with --output"
            )
        if labels is not None and self.task is not Task.CLASSIFICATION:
            another = (
                f"pick another output with {self._other_output_option()}, " if self.other_outputs else ""
            )
            raise QuantizeInputError(
                f"the evaluation data has labels, but the task is {self.task.value}: labels are class ids "
                f"for a classifier (drop them, {another}or pass --task classification)"
            )
        if labels is not None and runtime.top1(self._reference_answers) is None:
            raise QuantizeInputError(
                f"labels given, but output {self.output!r} of shape {list(self.reference.shape)} "
                "is not a classifier's (class ids, or scores with classes on the last axis)"
            )
        metric, reason = request.metric, "chosen with --metric"
        if metric is None:
            metric, reason = self._default_metric()
        spec = METRICS[metric]
        if (task := TASK_OF_METRIC[metric]) is not self.task:
            raise QuantizeInputError(
                f"--metric {metric.value} is for {task.value}, but the task is {self.task.value} "
                f"({self.task_reason}); pass --task to change it"
            )
        if spec.needs_labels and labels is None:
            raise QuantizeInputError(f"--metric {metric.value} needs labels in the evaluation data")
        if spec.needs_scores and not self._has_class_scores():
            raise QuantizeInputError(f"--metric {metric.value} needs per-class scores; the model gives none")
        if metric is Metric.CONFIDENT_AGREEMENT:
            confident = int(np.count_nonzero(agreement.confident(self._scores())))
            if confident == 0:
                raise QuantizeInputError(
                    "--metric confident_agreement: FP32 is confident on none of the evaluation "
                    f"{'positions' if self.per_position else 'rows'}"
                )
        if metric is Metric.NN_AGREEMENT and self.dataset.size < 3:
            raise QuantizeInputError("--metric nn_agreement needs at least 3 evaluation rows")
        threshold = request.threshold
        if threshold is not None and not math.isfinite(threshold):
            raise QuantizeInputError(f"--threshold must be a finite number, not {threshold}")
        if not math.isfinite(request.max_accuracy_delta):
            raise QuantizeInputError(
                f"--max-accuracy-delta must be a finite number, not {request.max_accuracy_delta}"
            )
        if threshold is not None:
            check_in_domain(metric, threshold)
        if threshold is None:
            threshold = spec.default_threshold
        if threshold is None:
            share = request.max_accuracy_delta
            threshold = share if not spec.higher_is_better else 1.0 - share
        return Gate(metric, threshold, self._rule(metric, request, threshold), reason)

    def _check_position_labels(self, labels: np.ndarray) -> None:
        """Labels for an answer per position: one class id a position ([N, seq], as the output's
        positions), some of them labelled."""
        grid = list(agreement.position_grid(self.reference))
        if list(labels.shape) != grid:
            one = "one class a row" if labels.ndim == 1 else f"shape {list(labels.shape)}"
            raise QuantizeInputError(
                f"the evaluation data has labels of {one}, but output {self.output!r} of shape "
                f"{list(self.reference.shape)} answers at each position: give labels per position, of "
                f"shape {grid} (-100 where a position has none), drop them to gate on agreement with "
                "FP32 at every position, or pick another output with --output (vectors, such as an "
                "encoder's hidden states, are --task embedding, without labels)"
            )
        labelled = self._labelled(self.reference)
        if labelled is not None and not len(labelled[1]):
            raise QuantizeInputError(
                f"the evaluation data's labels label none of the positions output {self.output!r} "
                f"answers{self._padding}: every label is negative, or at padding"
            )

    def _default_metric(self) -> tuple[Metric, str]:
        if self.task is Task.EMBEDDING:
            return Metric.COSINE_AGREEMENT, "embedding: rows agree by cosine, never by argmax"
        if self.task is Task.REGRESSION:
            return Metric.RELATIVE_ERROR, "regression: relative error of the output"
        if self.dataset.labels is not None:
            return Metric.TOP1_ACCURACY, "labels given: accuracy against them"
        if self.per_position and self.reference.dtype.kind in "iu":
            return Metric.TOP1_AGREEMENT, f"class ids at every position: each position judged{self._padding}"
        if not self._has_class_scores():
            return Metric.TOP1_AGREEMENT, "no labels and no scores: top-1 agreement"
        # Positions too: a trained character LM's best INT8 (17 trials) flipped 1.35% of its tokens,
        # every one a near-tie (FP32's top two within 0.052), and kept every confident one; plain
        # onnxruntime static INT8 kept 54% of them. Flipping near-ties is no error of the quantization.
        scores = self._scores()
        confident = int(np.count_nonzero(agreement.confident(scores)))
        unit = f"positions{self._padding}" if self.per_position else "rows"
        if confident < MIN_CONFIDENT_ROWS:
            self.warnings.append(
                f"FP32 is confident on only {confident} of {len(scores)} evaluation {unit}: gating "
                f"on top-1 agreement over all {unit}, which flips between near-ties count against; "
                "labelled data would gate better"
            )
            return Metric.TOP1_AGREEMENT, f"no labels, too few confident {unit} ({confident})"
        return (
            Metric.CONFIDENT_AGREEMENT,
            f"no labels: agreement on the {confident} of {len(scores)} {unit} where FP32 is sure "
            "(flips between near-ties are not errors)",
        )

    @property
    def _padding(self) -> str:
        return f" ({self.mask_input!r} marks the padding, left out)" if self.mask_input else ""

    def _rule(self, metric: Metric, request: GateRequest, threshold: float) -> RowRule:
        match TASK_OF_METRIC[metric]:
            case Task.CLASSIFICATION:
                # Class ids carry no confidence: the shadow judges every row of them (RowRule.judge),
                # though a confident gate read the scores output beside them.
                confident_only = metric is Metric.CONFIDENT_AGREEMENT and self.reference.dtype.kind == "f"
                return RowRule(Kind.TOP1, None, confident_only, None, self.per_position, self.mask_input)
            case Task.EMBEDDING:
                return RowRule(Kind.COSINE, request.min_cosine)
            case Task.REGRESSION:  # the row rule follows the global error's threshold and scale
                return agreement.regression_rule(threshold, self.reference)

    @functools.cached_property
    def _reference_answers(self) -> np.ndarray:
        """The reference's rows (positions) as the metrics read them: made once, not a copy a trial."""
        return self.answers(self.reference)

    @functools.cached_property
    def _reference_score_answers(self) -> np.ndarray | None:
        return None if self.reference_scores is None else self.answers(self.reference_scores)

    def _has_class_scores(self) -> bool:
        """Whether the model gives [N, classes] scores (runtime.top1), or for an answer per position
        [N, seq, classes]: softmaxed per row, scores per position would read as one class over a whole
        sequence."""
        scores = self._reference_score_answers
        return scores is not None and runtime.top1(scores) is not None

    def _scores(self) -> np.ndarray:
        scores = self._reference_score_answers
        return scores if scores is not None else self._reference_answers

    def evaluate(self, int8_model: Path) -> Evaluation:
        # Rows that mix (dynamic quantization: one scale per call) are judged one at a time, as the
        # server runs them (batch_policy.ROWS_MIX: a row a call, a request of several rows too): in
        # 256-row calls the gate measured numbers no request would get (MiniLM per-tensor agreement
        # 0.8867 batched, 0.8933 row by row).
        alone = 1 if self.fixed_batch is None and runtime.rows_mix(int8_model) else None
        candidate, candidate_scores = self._run(runtime.create_session(int8_model), alone)
        values: dict[str, float | None]
        fp32_accuracy = int8_accuracy = None
        if self.task is Task.EMBEDDING:
            values = self._embedding(candidate)
        elif self.task is Task.REGRESSION:
            values = {
                Metric.RELATIVE_ERROR.value: gate_measures.global_relative_error(self.reference, candidate)
            }
        else:
            values = self._classification(candidate, candidate_scores)
            fp32_labelled, int8_labelled = self._labelled(self.reference), self._labelled(candidate)
            if fp32_labelled is not None and int8_labelled is not None:  # both or neither: the same labels
                fp32_accuracy = float(np.mean(np.equal(*fp32_labelled)))
                int8_accuracy = float(np.mean(np.equal(*int8_labelled)))
                values[Metric.TOP1_ACCURACY.value] = (
                    (fp32_accuracy - int8_accuracy) / fp32_accuracy if fp32_accuracy > 0 else 0.0
                )
        value = values.get(self.gate.metric.value)
        if value is None or not math.isfinite(value):
            value = -math.inf if METRICS[self.gate.metric].higher_is_better else math.inf
        return Evaluation(
            self.gate.metric,
            value,
            self.gate.threshold,
            self.dataset.size,
            values,
            fp32_accuracy,
            int8_accuracy,
            self._shadow(candidate),
        )

    def _shadow(self, candidate: np.ndarray) -> tuple[float, int] | None:
        try:
            return self.gate.rule.judge(candidate, self.reference, self.mask)
        except ValueError:  # a top-1 rule on an output with no classes: the gate recorded agreement None
            return None

    def shadow_warning(self, evaluation: Evaluation) -> str | None:
        """What the shadow SLI will read, where the gate passed and more evaluation rows (per position:
        the rows' shares of their positions, averaged) disagree by the shadow's rule than the default
        accuracy-delta SLO allows: the gate judged another measure, or was loosened past the SLO
        (--max-accuracy-delta 0.05). Said, not gated: labels make accuracy the measure (a weakly
        separated classifier flips rows between wrong classes at no cost: a 26%-accurate T5 encoder's
        INT8 kept its accuracy with 4.3% of rows flipped), and the SLO that will judge the canary is
        the rollout's to set."""
        share = evaluation.shadow_disagreement
        if share is None or evaluation.shadow is None:
            return None
        if share <= SHADOW_BUDGET + 1e-12:  # the digits sample: 99.50% agreement, right at the budget
            return None
        disagreeing, compared = evaluation.shadow
        rule = self.gate.rule
        if self.per_position:  # each row by the share of its positions that disagree (RowRule.judge)
            read = f"the {compared} evaluation rows disagree with FP32 at {share:.1%} of their positions"
            read += " (a mean of the rows' shares)"
        else:
            read = f"{disagreeing:.0f} of {compared} evaluation rows ({share:.1%}) disagree with FP32"
        gate_on: str | None
        if self._gate_counts_as_the_shadow:  # it counted the same: and allowed more than the SLO
            of = " of all positions; the shadow weighs each row alike" if self.per_position else ""
            why = f" (the gate allowed up to {self.gate.limit:.1%}{of})"
            # per position, a gate within the SLO can pass what the rows' mean reads over it: no advice
            within = self.gate.limit <= SHADOW_BUDGET + 1e-12
            gate_on = None if within else f"a gate within the SLO (--max-accuracy-delta {SHADOW_BUDGET:g})"
        else:
            why = (
                " (labels judge accuracy, which a flip between two wrong classes leaves as it was; the "
                "shadow has no labels and counts every flip)"
                if self.gate.metric is Metric.TOP1_ACCURACY
                else ""
            )
            counted = {Kind.TOP1: Metric.TOP1_AGREEMENT, Kind.COSINE: Metric.COSINE_AGREEMENT}.get(rule.kind)
            gate_on = "a lower --threshold" if counted is None else f"--metric {counted.value}"
            gate_on = f"a gate on what the shadow counts ({gate_on})"
        return (
            f"the gate passed on {self.gate.metric.value}, but {read} by the shadow SLI's rule "
            f"({rule.describe()}), over the default accuracy-delta SLO's {SHADOW_BUDGET:.1%}{why}: a "
            f"canary on traffic like this burns at ~{share / SHADOW_BUDGET:.1f}x and rolls back. Set "
            f"spec.slos.maxAccuracyDelta to at least {share:.1%}, "
            + ("" if gate_on is None else f"use {gate_on}, ")
            + "or improve the model or calibration"
        )

    @property
    def _gate_counts_as_the_shadow(self) -> bool:
        """Whether the gate's loss is the share of rows the shadow's rule counts (SHADOW_COUNTS; per
        position, of positions): not a confident gate on class ids, whose rule has no confidence to read
        (`_rule`)."""
        metric, rule = self.gate.metric, self.gate.rule
        confident_on_ids = metric is Metric.CONFIDENT_AGREEMENT and not rule.confident_only
        return metric in SHADOW_COUNTS and not confident_on_ids

    def failed(self) -> Evaluation:
        """The verdict on a candidate that could not be quantized or run: the worst value."""
        worst = -math.inf if METRICS[self.gate.metric].higher_is_better else math.inf
        return Evaluation(self.gate.metric, worst, self.gate.threshold, self.dataset.size)

    def _classification(self, candidate: np.ndarray, candidate_scores: np.ndarray | None) -> dict[str, Any]:
        differs = agreement.top1_differs(self.answers(candidate), self._reference_answers)
        agreeing = None if differs is None or not differs.size else 1.0 - float(np.mean(differs))
        values: dict[str, float | None] = {Metric.TOP1_AGREEMENT.value: agreeing}  # none: all padding
        if self.per_position and differs is not None:
            values["positions"] = float(differs.size)
        if self.reference_scores is None or candidate_scores is None or not self._has_class_scores():
            return values
        reference_scores = gate_measures.rows(self._scores())
        candidate_scores = gate_measures.rows(self.answers(candidate_scores))
        # Read both sides as the reference reads: an INT8 softmax output sums only roughly to 1.
        normalized = agreement.are_probabilities(reference_scores)
        per_row = [
            gate_measures.score_agreement(reference_scores[part], candidate_scores[part], normalized)
            for part in agreement.chunks(reference_scores)
        ]
        sure, same, top_k, kl = (np.concatenate(column) for column in zip(*per_row, strict=True))
        values[Metric.CONFIDENT_AGREEMENT.value] = float(np.mean(same[sure])) if sure.any() else None
        values["confident_rows"] = float(np.count_nonzero(sure))
        values[Metric.TOP5_OVERLAP.value] = float(np.mean(top_k))
        values[Metric.KL_DIVERGENCE.value] = float(np.mean(kl))
        return values

    def _embedding(self, candidate: np.ndarray) -> dict[str, float | None]:
        cosines = agreement.cosine(candidate, self.reference)
        assert self.gate.rule.tolerance is not None
        return {
            Metric.COSINE_AGREEMENT.value: float(np.mean(cosines >= self.gate.rule.tolerance)),
            Metric.COSINE_MEAN.value: float(np.mean(cosines)),
            Metric.COSINE_P5.value: float(np.percentile(cosines, 5)),
            COSINE_MIN: float(np.min(cosines)),
            Metric.NN_AGREEMENT.value: gate_measures.nn_agreement(self.reference, candidate),
        }


def _batch_size(dataset: Dataset) -> int:
    return data.rows_per_batch(dataset, MAX_BATCH, data.EVALUATION_BATCH_BYTES) if dataset.stacked else 1
