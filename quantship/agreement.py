"""When a quantized model's answer for one row agrees with the FP32 reference's, per task.

The accuracy gate (quantize/evaluate.py) and the server's shadow SLI (server/shadow.py) both judge
rows through `RowRule`, and the rule travels in the artifact's manifest, so the disagreement rate
on production traffic means what the gate measured offline:

- classification: top-1 differs (ids at any position, `top1_differs`); with `confident_only`, only
  rows where the reference is confident count at all. Real inputs are often ambiguous to the FP32
  model itself (two classes at 30% each), and a flip between near-ties says nothing about the
  quantization. With `per_position`, an answer per position (a causal LM's or a token classifier's
  [N, seq, classes] scores, or its [N, seq] ids) is judged at every position, padding left out where
  the rule names the attention mask input; rows are still what is counted, each disagreeing by the
  share of its judged positions that do (`RowRule.judge`);
- embedding: cosine similarity to the reference below `tolerance` (argmax of an embedding means
  nothing);
- regression: relative L2 error above `tolerance`, against the larger of the row's norm and
  `norm_floor` (see `regression_rule`: both follow the gate's threshold and evaluation data).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from quantship import runtime
from quantship.choices import Task as Task  # the gate and the server name it here
from quantship.manifest_schema import MAX_TENSOR_NAME_CHARS
from quantship.printable import brief

CONFIDENT_PROBABILITY = 0.5
"""A row is confident when the reference's top class holds more than half the probability: then
no other class can be its near-tie, and a flip is a real change of answer."""
MIN_COSINE = 0.95
"""An embedding row agrees when its cosine to the reference is at least this. int8 rounding of a
healthy sentence encoder stays above 0.96 (all-MiniLM-L6-v2 dynamic: 0.961 worst of 300 rows);
a clipped range or a broken kernel falls well below."""
ROW_ERROR_FACTOR = 4.0
"""A regression row disagrees when its relative error is more than this many times the gate's
threshold. The gate's error, ||INT8 - FP32|| / ||FP32|| over the whole evaluation output, is the
root mean square of the rows' ||int8 - fp32|| / floor (floor: the RMS row norm, `regression_rule`),
and no row's error is above its term: so at most 1/4² = 6.25% of a passing artifact's evaluation
rows can disagree, however the error spreads (Chebyshev). That bound is only a worst case, 12.5x
the accuracy SLO's 0.5% budget (slo.DEFAULT_OBJECTIVES): it does not keep a passing artifact inside
the budget. What does is that int8 rounding spreads the error evenly over rows: the worst
evaluation row was 1.6-3.2x the global error (torch-trained regressor and autoencoder, random
two-layer MLPs on digits), under 4x, so no row disagrees; a fixed 1% per row had counted 94% of
the rows of an autoencoder that passed at 0.015. 4x leaves room for traffic a little off the
evaluation data."""


class Kind(enum.StrEnum):
    TOP1 = "top1"
    COSINE = "cosine"
    RELATIVE_ERROR = "relative_error"


PROBABILITY_SUM_TOLERANCE = 1e-3
"""Rows of non-negative scores summing to 1 within this are probabilities (a softmax output), not
logits."""


PROBABILITY_CHUNK_VALUES = 2**23
"""Scores turned into float64 probabilities at once (64 MiB): an LM's [positions, vocab] whole is
8 bytes x vocab a position (GPT-2's 50257: 400 KB), so 18,000 positions held 7 GB, twice."""


def chunks(rows: np.ndarray) -> Iterator[slice]:
    """Slices of `rows` ([rows, classes] scores) small enough to hold as probabilities at once."""
    step = max(1, PROBABILITY_CHUNK_VALUES // max(1, rows[0].size if len(rows) else 1))
    for begin in range(0, len(rows), step):
        yield slice(begin, begin + step)


def are_probabilities(scores: np.ndarray) -> bool:
    """Whether every row is already a probability distribution (a softmax output)."""
    rows = scores.reshape(len(scores), -1)
    if rows.size and not rows.min() >= 0:  # logits, or NaN: one pass, with no [rows, classes] booleans
        return False
    sums = rows.sum(axis=1, dtype=np.float64)
    return bool(np.allclose(sums, 1.0, atol=PROBABILITY_SUM_TOLERANCE))


def probabilities(scores: np.ndarray, normalized: bool | None = None) -> np.ndarray:
    """Rows of class probabilities. `normalized`: whether the scores already are probabilities
    (then rows are only rescaled to sum to 1) or logits (then softmaxed); None judges these scores.
    Two outputs compared must be read alike, so the caller decides from the FP32 reference: an
    INT8 softmax output's rows sum to 0.992..1 (uint8 steps), and softmaxing them again as logits
    flattens them (KL 1.43 where it is 0.0068)."""
    rows = scores.reshape(len(scores), -1).astype(np.float64)
    if normalized is None:
        normalized = are_probabilities(rows)
    if normalized:
        rows = np.maximum(rows, 0.0)  # keeps NaN: a broken row stays broken, and disagrees
        sums = rows.sum(axis=1, keepdims=True)
        # A row rounded to all zeros (every class under one uint8 step) says only "all small".
        flat = (sums == 0)[:, 0]
        rows[flat], sums[flat] = 1.0, rows.shape[1]
        return rows / sums
    shifted = np.exp(rows - rows.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def confident(scores: np.ndarray) -> np.ndarray:
    """Per row: whether the top class holds more than CONFIDENT_PROBABILITY."""
    if not len(scores):  # no rows (a request all padding): numpy cannot infer the classes of none
        return np.zeros(0, dtype=bool)
    rows = scores.reshape(len(scores), -1)
    normalized = are_probabilities(rows)
    tops = [_top_probability(rows[part], normalized) for part in chunks(rows)]
    return np.concatenate(tops) > CONFIDENT_PROBABILITY if tops else np.zeros(0, dtype=bool)


def _top_probability(rows: np.ndarray, normalized: bool) -> np.ndarray:
    """Per row, the probability of the top class, as `probabilities` gives it. Of logits, softmax's
    largest value is exp(0) / sum(exp(x - max)): the sum alone, without dividing every class by it
    and searching the quotients again (a GPT-2 vocabulary's confident shadow rule took 15 times the
    plain top-1 rule's CPU)."""
    if normalized:
        return probabilities(rows, normalized).max(axis=1)
    with np.errstate(invalid="ignore"):  # inf - inf: a row with an infinite logit is NaN, never sure
        shifted = np.subtract(rows, rows.max(axis=1, keepdims=True), dtype=np.float64)
    return 1.0 / np.exp(shifted, out=shifted).sum(axis=1)


def top1_differs(served: np.ndarray, reference: np.ndarray) -> np.ndarray | None:
    """Per row: whether the served answer is another class than the reference's; None when the outputs
    give no class per row (runtime.top1). Class ids are compared whole: an id output with a value per
    position (a token classifier's [N, seq]) differs on a row when any position does (position 0 alone
    saw none of a causal LM's flipped tokens, hunt-H H7). The gate's metrics per position hand this
    their positions as rows (`positions`); a row rule of an older manifest judges such ids whole. The
    gate's top-1 agreement and the server's shadow both judge rows here (a per-position rule's shadow:
    `RowRule.judge`)."""
    if served.dtype.kind in "iu" and reference.dtype.kind in "iu":
        served_rows, reference_rows = _id_rows(served), _id_rows(reference)
        if served_rows.shape != reference_rows.shape:  # answers of another length are other answers
            return np.ones(len(served_rows), dtype=bool)
        return np.any(served_rows != reference_rows, axis=1)
    served_top1, reference_top1 = runtime.top1(served), runtime.top1(reference)
    if served_top1 is None or reference_top1 is None:
        return None
    if served.dtype.kind == "f":
        served_top1 = _no_class_where_nan(served_top1, served)
    return served_top1 != reference_top1


def position_grid(answers: np.ndarray) -> tuple[int, ...]:
    """The positions an answer per position has: a class id's ([N, seq], or [N, seq, 1] from an ArgMax
    that keeps its axis), a set of scores' ([N, seq, classes])."""
    if answers.dtype.kind not in "iu":
        return answers.shape[:-1]
    grid = answers.shape
    while len(grid) > 2 and grid[-1] == 1:
        grid = grid[:-1]
    return grid


def positions(answers: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """An answer per position as rows of their own: class ids [N, seq, ...] as [M] ids, scores
    [N, seq, classes] as [M, classes]; only the positions where `mask` (the request's attention mask,
    [N, seq]) is non-zero, as padding is no token anyone reads. A mask of another shape than the
    positions (`position_grid`) is not this output's, and leaves every position in."""
    ids = answers.dtype.kind in "iu"
    rows = answers.reshape(-1) if ids else answers.reshape(-1, answers.shape[-1] if answers.ndim else 1)
    if mask is not None and mask.shape == position_grid(answers):
        rows = rows[mask.reshape(-1) != 0]
    return rows


def _position_classes(answers: np.ndarray) -> np.ndarray:
    """The class answered at each position: ids as they are, scores' argmax (none where NaN)."""
    if answers.dtype.kind in "iu":
        return answers.reshape(position_grid(answers))
    return _no_class_where_nan(np.argmax(answers, axis=-1), answers)


def _no_class_where_nan(classes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """`classes` (the argmax of `scores` over their last axis), -1 where a row of scores holds NaN:
    argmax reads the first NaN as the class, so a broken kernel's answer of NaN agreed wherever FP32
    answered class 0. A max is one pass that NaN propagates through, and no [rows, classes] booleans."""
    broken = np.isnan(scores.max(axis=-1))
    if not broken.any():
        return classes
    classes = classes.copy()
    classes[broken] = -1
    return classes


def _id_rows(ids: np.ndarray) -> np.ndarray:
    return ids.reshape(len(ids), -1) if ids.ndim else ids.reshape(1, 1)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row cosine similarity (rows flattened; a zero row has cosine 0 to anything)."""
    a_rows = a.reshape(len(a), -1).astype(np.float64)
    b_rows = b.reshape(len(b), -1).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # a NaN/inf row gives NaN: it disagrees
        norms = np.linalg.norm(a_rows, axis=1) * np.linalg.norm(b_rows, axis=1)
        dots = np.einsum("ij,ij->i", a_rows, b_rows)
        return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def relative_error(candidate: np.ndarray, reference: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """Per row ||candidate - reference|| / max(||reference||, floor)."""
    c_rows = candidate.reshape(len(candidate), -1).astype(np.float64)
    r_rows = reference.reshape(len(reference), -1).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # a NaN/inf row gives NaN: it disagrees
        scale = np.maximum(np.linalg.norm(r_rows, axis=1), max(floor, np.finfo(np.float64).tiny))
        return np.linalg.norm(c_rows - r_rows, axis=1) / scale


def rms_row_norm(reference: np.ndarray) -> float:
    """The root mean square of the rows' L2 norms: the output's typical size per row."""
    rows = reference.reshape(len(reference), -1).astype(np.float64)
    return float(np.linalg.norm(rows) / math.sqrt(len(rows))) if len(rows) else 0.0


class Judged(NamedTuple):
    """A batch judged by a RowRule."""

    disagreeing: float
    """Rows that disagree; per position, each by the share of its judged positions that flip."""
    compared: int
    disagreeing_rows: int
    """Rows that disagree at all: whole events, where `disagreeing` may count shares of them (the
    canary analysis needs MIN_BAD_EVENTS whole ones before its burn rate may fail a canary)."""


@dataclass(frozen=True)
class RowRule:
    """What makes one row disagree. `tolerance`: the least cosine (COSINE) or the largest relative
    error (RELATIVE_ERROR); unused for TOP1. `norm_floor` (RELATIVE_ERROR): a row's error is
    measured against the larger of its own norm and this, so that rows near zero, where any
    rounding is a large share of nothing, do not read as disagreeing. `per_position` (TOP1): the
    output answers per position, and each position is judged; `mask_input` names the model input
    whose zeros mark padding, left out."""

    kind: Kind
    tolerance: float | None = None
    confident_only: bool = False
    norm_floor: float | None = None
    per_position: bool = False
    mask_input: str | None = None

    @property
    def classifier(self) -> bool:
        """Whether the rule judges one class a row: what label feedback can judge too."""
        return self.kind is Kind.TOP1 and not self.per_position

    def judge(
        self, served: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None
    ) -> tuple[float, int]:
        """(disagreeing rows, compared rows) of a batch. Rows outside the rule (an unconfident
        reference under `confident_only`) are not compared. With `per_position`, a row is compared
        where any of its positions is judged (`mask`, the `mask_input` sent with the batch, non-zero),
        and disagrees by the share of those that flip: so a comparison stays a request's row (an
        analysis' minSamples counted two LM requests of 64 tokens as 128 samples), and the ratio
        stays a flip rate (the positions' own where every row has as many judged positions)."""
        judged = self.judge_rows(served, reference, mask)
        return judged.disagreeing, judged.compared

    def judge_rows(self, served: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None) -> Judged:
        """`judge`'s counts, and the rows that disagree at all (per position: with a position flipped)."""
        if served.ndim == 0:
            served, reference = served.reshape(1), reference.reshape(1)
        if not served.size:  # rows of no elements (a token model's answer to a sequence of length 0)
            return Judged(0, 0, 0)
        if self.per_position:
            return self._judge_per_position(served, reference, mask)
        if self.kind is Kind.TOP1:
            differs = top1_differs(served, reference)
            if differs is None:
                raise ValueError("a top-1 rule needs class ids or per-class scores")
            if self.confident_only and np.issubdtype(reference.dtype, np.floating):
                differs = differs[confident(reference)]
        # Written as "not agreeing" so that a NaN or infinite output (a broken kernel) disagrees.
        elif self.kind is Kind.COSINE:
            differs = ~(cosine(served, reference) >= self._tolerance)
        else:
            differs = ~(relative_error(served, reference, self.norm_floor or 0.0) <= self._tolerance)
        disagreeing = int(np.count_nonzero(differs))
        return Judged(disagreeing, len(differs), disagreeing)

    def _judge_per_position(
        self, served: np.ndarray, reference: np.ndarray, mask: np.ndarray | None
    ) -> Judged:
        """The rows' shares of flipped positions summed, the rows with a position judged, and those
        with one flipped, of answers per position ([N, seq] ids or [N, seq, classes] scores; without a
        batch axis, one row)."""
        differs, judged = self._flips(served, reference, mask)
        rows = len(judged) if judged.ndim > 1 else 1
        flipped = np.count_nonzero((differs & judged).reshape(rows, -1), axis=1)
        counted = np.count_nonzero(judged.reshape(rows, -1), axis=1)
        compared = counted > 0  # a row of padding only, or where FP32 is sure of nothing, compares nothing
        return Judged(
            float(np.sum(flipped[compared] / counted[compared])),
            int(np.count_nonzero(compared)),
            int(np.count_nonzero(flipped)),
        )

    def _flips(
        self, served: np.ndarray, reference: np.ndarray, mask: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per position (`position_grid`): whether the served class differs from the reference's, and
        whether the position is judged: where `mask` is non-zero (a mask of other positions is not this
        output's) and, under `confident_only`, FP32 is sure. Classes are read in place, and FP32's
        confidence, the costly part (a softmax's sum over the vocabulary), at real positions only."""
        served_classes, reference_classes = _position_classes(served), _position_classes(reference)
        judged = np.ones(reference_classes.shape, dtype=bool)
        if mask is not None and mask.shape == judged.shape:
            judged &= mask != 0
        if self.confident_only and reference.dtype.kind == "f":
            rows, real = reference.reshape(-1, reference.shape[-1]), judged.reshape(-1)
            sure = np.zeros_like(real)
            sure[real] = confident(rows if real.all() else rows[real])
            judged &= sure.reshape(judged.shape)
        if served_classes.shape != judged.shape:  # answers of another length are other answers
            return np.ones_like(judged), judged
        return served_classes != reference_classes, judged

    @property
    def _tolerance(self) -> float:
        if self.tolerance is None:
            raise ValueError(f"a {self.kind.value} rule needs a tolerance")
        return self.tolerance

    def check_output(self, dtype: np.dtype, shape: tuple[int | None, ...]) -> None:
        """Raise ValueError unless this rule can judge an output of `dtype` and `shape` (the
        server checks at load, not on every sampled batch)."""
        if self.kind is Kind.TOP1 and self.per_position:
            # A model without a batch axis answers [seq] ids or [seq, classes] scores a call.
            ids = np.issubdtype(dtype, np.integer) and len(shape) >= 1
            scores = np.issubdtype(dtype, np.floating) and len(shape) in (2, 3) and (shape[-1] or 2) > 1
            if not (ids or scores):
                raise ValueError(
                    "a per-position top-1 rule needs class ids [N, seq] or scores [N, seq, classes] "
                    "([seq], [seq, classes] without a batch axis), "
                    f"not {dtype} {list(shape)}"
                )
        elif self.kind is Kind.TOP1:
            ids = np.issubdtype(dtype, np.integer)
            # [N, classes] only: scores per position have no one class a row (runtime.top1).
            scores = np.issubdtype(dtype, np.floating) and len(shape) == 2 and (shape[-1] or 2) > 1
            if not (ids or scores):
                raise ValueError(
                    "a top-1 rule needs class ids or per-class scores [N, classes], "
                    f"not {dtype} {list(shape)}"
                )
        elif not np.issubdtype(dtype, np.floating):
            raise ValueError(f"a {self.kind.value} rule needs a float output, not {dtype}")

    def describe(self) -> str:
        match self.kind:
            case Kind.TOP1:
                unit = "positions" if self.per_position else "rows"
                scope = (
                    f" ({unit} where FP32 > {CONFIDENT_PROBABILITY:.0%} sure)" if self.confident_only else ""
                )
                if not self.per_position:
                    return f"top-1 differs{scope}"
                mask = brief(self.mask_input, 40) if self.mask_input else None
                padding = f", without the padding {mask} marks" if mask else ""
                return f"top-1 differs, judged at each position{padding}{scope}"
            case Kind.COSINE:
                return f"cosine < {self.tolerance}"
            case Kind.RELATIVE_ERROR:
                floor = f" (of the row's norm, at least {self.norm_floor:.4g})" if self.norm_floor else ""
                return f"relative error > {self.tolerance}{floor}"

    def to_json(self) -> dict[str, Any]:
        rule: dict[str, Any] = {
            "kind": self.kind.value,
            "tolerance": self.tolerance,
            "confident_only": self.confident_only,
        }
        if self.norm_floor is not None:
            rule["norm_floor"] = self.norm_floor
        if self.per_position:  # written only when set: a row rule's manifest reads as before
            rule["per_position"] = True
            rule["mask_input"] = self.mask_input
        return rule

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RowRule:
        """The rule a manifest carries; ValueError names what is wrong with it."""
        kind = Kind(data["kind"])
        tolerance, confident_only = data.get("tolerance"), data.get("confident_only", False)
        if not isinstance(confident_only, bool):
            raise ValueError(f"confident_only must be true or false, not {confident_only!r}")
        if kind is not Kind.TOP1:
            if isinstance(tolerance, bool) or not isinstance(tolerance, int | float):
                raise ValueError(f"a {kind.value} rule needs a numeric tolerance, not {tolerance!r}")
            if (tolerance := _finite_float(tolerance)) is None:
                shown = brief(repr(data["tolerance"]), 40)
                raise ValueError(f"a {kind.value} rule needs a finite tolerance, not {shown}")
        norm_floor = data.get("norm_floor")
        if norm_floor is not None:
            if kind is not Kind.RELATIVE_ERROR:
                raise ValueError(f"a {kind.value} rule takes no norm_floor")
            numeric = isinstance(norm_floor, int | float) and not isinstance(norm_floor, bool)
            floor = _finite_float(norm_floor) if numeric else None
            if floor is None or floor < 0:
                shown = brief(repr(norm_floor), 40)
                raise ValueError(f"norm_floor must be a finite number >= 0, not {shown}")
            norm_floor = floor
        per_position, mask_input = data.get("per_position", False), data.get("mask_input")
        if not isinstance(per_position, bool):
            raise ValueError(f"per_position must be true or false, not {brief(repr(per_position), 40)}")
        if per_position and kind is not Kind.TOP1:
            raise ValueError(f"a {kind.value} rule is not judged per position")
        if mask_input is not None:
            if not per_position:
                raise ValueError("a mask_input needs per_position")
            if not isinstance(mask_input, str) or not 0 < len(mask_input) <= MAX_TENSOR_NAME_CHARS:
                raise ValueError(f"mask_input must be an input's name, not {brief(repr(mask_input), 40)}")
        tolerance = tolerance if kind is not Kind.TOP1 else None
        return cls(kind, tolerance, confident_only, norm_floor, per_position, mask_input)


def _finite_float(number: float) -> float | None:
    """`number` as a finite float, or None: JSON keeps integer literals as Python ints, and one of
    400 digits is no float (OverflowError), which a manifest's reader must refuse, not crash on."""
    try:
        value = float(number)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def regression_rule(threshold: float, reference: np.ndarray) -> RowRule:
    """The row rule of a regression gate at `threshold` on FP32 outputs `reference`: the tolerance
    and floor that bound the disagreeing share of a passing artifact (ROW_ERROR_FACTOR)."""
    return RowRule(Kind.RELATIVE_ERROR, ROW_ERROR_FACTOR * threshold, norm_floor=rms_row_norm(reference))
