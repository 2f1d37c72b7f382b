"""Which task an output is (classification, embedding, regression), as the accuracy gate judges it:
the one the user named, else one inferred from the output's dtype, shape, values and name
(`infer_task`); and, before the first trial, what says a task the user named does not fit the
output's look (`DOUBTS_OF_REQUESTED_TASK`: warnings, never refusals).
"""

from __future__ import annotations

import numpy as np

from quantship import agreement
from quantship.agreement import Task
from quantship.quantize.data import Dataset
from quantship.quantize.errors import QuantizeInputError

MIN_SCORES_SHARE = 0.05
"""Without labels or a name that says so, a float [N, C] output is read as per-class scores only
when FP32's softmax is confident on at least this share of rows: trained classifiers are on most
(the digits, GRU, ViT logits 97-100%, a 57%-accurate BERT 40%, EfficientNet-Lite0 on random crops
21%), an autoencoder's 64 sigmoid pixels on none, and gating those on argmax agreement misleads."""
EMBEDDING_NAMES = ("embed", "pool", "sentence", "feature", "hidden", "vector")
SCORE_NAMES = ("logit", "prob", "score", "class")


def infer_task(
    requested: Task | None, output: str, reference: np.ndarray, dataset: Dataset
) -> tuple[Task, str]:
    """The task the user named, else one inferred from the output's dtype, shape, values and name."""
    if requested is not None:
        return requested, "--task"
    name = output.lower()
    if np.issubdtype(reference.dtype, np.integer):
        return Task.CLASSIFICATION, f"output {output!r} holds integer class ids"
    if reference.ndim < 2 or reference.shape[-1] == 1:
        return Task.REGRESSION, f"output {output!r} has one value per row"
    rows = reference.reshape(len(reference), -1).astype(np.float64)
    if reference.ndim == 2 and agreement.are_probabilities(rows):
        return Task.CLASSIFICATION, f"output {output!r} rows are probabilities (sum to 1)"
    # An embedding's signs before the labels: labels beside a sentence encoder's data made it a
    # 384-class argmax classifier, where the gate should say the labels do not apply.
    if _unit_rows(reference):
        return Task.EMBEDDING, f"output {output!r} rows are unit vectors"
    if _named_like_embedding(output):
        return Task.EMBEDDING, f"output {output!r} is named like an embedding"
    if dataset.labels is not None:
        return Task.CLASSIFICATION, "the evaluation data has labels"
    if reference.ndim == 2 and any(hint in name for hint in SCORE_NAMES):
        return Task.CLASSIFICATION, f"output {output!r} is named like per-class scores"
    if reference.ndim == 3 and any(hint in name for hint in SCORE_NAMES):
        # [N, seq, classes], as transformers export tokens' scores ([N, classes, frames] would need
        # a Transpose: a convolutional frame classifier's, read here with frames as classes).
        return (
            Task.CLASSIFICATION,
            f"output {output!r} is named like per-class scores, at each position (classes on the last axis)",
        )
    # An autoencoder's [N, 64] reconstruction was gated on its argmax pixel.
    like = _float_input_of_shape(reference.shape, dataset)
    if like is not None:
        return Task.REGRESSION, f"output {output!r} has the shape of input {like!r} (a reconstruction)"
    if reference.ndim > 2:
        return Task.EMBEDDING, f"output {output!r} has a vector per position (shape {list(reference.shape)})"
    # A [N, seq, classes] output not named like scores is read as vectors: judged by argmax, a
    # transformer's hidden states would be classes (--task classification says otherwise).
    confident = int(np.count_nonzero(agreement.confident(rows)))
    if confident < MIN_SCORES_SHARE * len(rows):
        raise QuantizeInputError(
            f"cannot tell what output {output!r} of shape {list(reference.shape)} is: its rows are not "
            f"probabilities, and their softmax is confident on only {confident} of {len(rows)} rows, so "
            "its argmax is no class; pass --task regression (values, judged by relative error), "
            "--task embedding (vectors, judged by cosine) or --task classification (per-class scores), "
            "or labelled evaluation data"
        )
    return Task.CLASSIFICATION, f"output {output!r} has per-class scores on its last axis"


def _unit_rows(reference: np.ndarray) -> bool:
    """Whether a float [N, D] output's rows all have length 1: an L2-normalized embedding's (or
    near one-hot probabilities', which are_probabilities tells apart)."""
    if reference.ndim != 2 or not np.issubdtype(reference.dtype, np.floating):
        return False
    norms = np.linalg.norm(reference.astype(np.float64), axis=1)
    return bool(np.allclose(norms, 1.0, atol=1e-3))


def _doubt_of_requested_classifier(
    requested: Task | None, output: str, reference: np.ndarray, dataset: Dataset
) -> str | None:
    """What to tell a user who asked --task classification of rows that are unit vectors, not
    probabilities, whose softmax is sure of no class: an embedding's look, whose argmax is no class and
    flips under INT8 rounding (MiniLM-L6 ran 17 trials, 7:12, before its gate failed; its first trial
    kept the argmax of 20% of rows against 0.995). A warning before any trial, not a refusal: a real
    classifier whose logits are L2-normalised looks the same, and passed its top-1 gate in one trial.
    Labels keep the user's word silent: the gate then judges accuracy against them (_check_labels_fit)."""
    if requested is not Task.CLASSIFICATION or dataset.labels is not None or not _unit_rows(reference):
        return None
    rows = reference.astype(np.float64)
    if agreement.are_probabilities(rows):
        return None
    confident = int(np.count_nonzero(agreement.confident(rows)))
    if confident >= MIN_SCORES_SHARE * len(rows):
        return None
    return (
        f"--task classification: output {output!r} rows are unit vectors, and their softmax is confident "
        f"on only {confident} of {len(rows)} rows: an embedding's look, whose argmax is no class and fails "
        "the top-1 gate after every trial; if it is one, pass --task embedding (judged by cosine), or give "
        "labelled evaluation data to gate it as a classifier"
    )


def _class_scores_look(output: str, reference: np.ndarray) -> str | None:
    """What says a float output holds a classifier's scores ([N, classes], or [N, seq, classes] at each
    position), in words, or None: rows of probabilities (non-negative, summing to 1), or a name like
    scores (and not like an embedding) on logits whose softmax is sure of one class on at least
    MIN_SCORES_SHARE of the rows (EfficientNet-Lite0 on random crops: 62 of 300; the character LM:
    9494 of its 19200 positions, padding in)."""
    if (
        not np.issubdtype(reference.dtype, np.floating)
        or reference.ndim not in (2, 3)
        or reference.shape[-1] < 2
    ):
        return None
    rows = agreement.positions(reference)  # [N, seq, classes]: each position a row
    unit = "positions" if reference.ndim == 3 else "rows"
    if agreement.are_probabilities(rows):
        return f"output {output!r} {unit} are probabilities (sum to 1)"
    name = output.lower()
    if not any(hint in name for hint in SCORE_NAMES) or _named_like_embedding(output):
        return None
    confident = int(np.count_nonzero(agreement.confident(rows)))
    if confident < MIN_SCORES_SHARE * len(rows):
        return None
    return (
        f"output {output!r} is named like per-class scores, and its softmax is confident on {confident} "
        f"of {len(rows)} {unit}"
    )


def _doubt_of_requested_embedding(
    requested: Task | None, output: str, reference: np.ndarray, dataset: Dataset
) -> str | None:
    """What to tell a user who asked --task embedding of a classifier's scores, whose answer is the
    top class, which cosine does not judge, either way: on the character LM's logits, plain static
    INT8 that kept 52% of its confident tokens kept a cosine of 0.96 to FP32 on every row and passed;
    EfficientNet-Lite0's per-channel INT8, which kept every confident answer, failed at cosine
    agreement 0.93 (0.77 of its softmax). And of one value a row, whose cosine to FP32 is its sign
    alone: INT8 that doubled every value would pass. A warning before any trial: the user's word stands."""
    if requested is not Task.EMBEDDING:
        return None
    if reference.size and reference[0].size == 1:
        return (
            f"--task embedding: output {output!r} has one value a row, whose cosine to FP32 is its sign "
            "alone (twice the value agrees): a regression's look; if it is one, pass --task regression"
        )
    if (look := _class_scores_look(output, reference)) is None:
        return None
    return (
        f"--task embedding: {look}: a classifier's look, whose answer is its top class, which cosine to "
        "FP32 does not judge (it passes INT8 that flips confident answers, and fails INT8 that keeps them "
        "all); if it is one, pass --task classification"
    )


def _doubt_of_requested_regression(
    requested: Task | None, output: str, reference: np.ndarray, dataset: Dataset
) -> str | None:
    """What to tell a user who asked --task regression of a classifier's scores, or of an embedding
    (unit vectors, or vectors named like one): relative error within 0.5% is out of int8's reach on
    both, and the gate fails, after every trial, a model the fitting task passes. EfficientNet-Lite0's
    per-channel INT8 kept every confident answer at relative error 0.19, the character LM's 0.24;
    all-MiniLM-L6-v2's dynamic INT8 (cosine 0.96 to FP32) was at 0.27: a unit vector's relative error
    is its chord to FP32, and 0.5% asks for a cosine of 0.99999. Its pooled output before the L2
    normalisation (lengths 3 to 6) was at 0.27 too (cosine 0.96): relative error divides the length
    out, so it is the same chord whatever the length, with no unit rows to tell. A warning before any
    trial: the user's word stands (a model may regress proportions, or a direction)."""
    if requested is not Task.REGRESSION:
        return None
    if (look := _class_scores_look(output, reference)) is not None:
        fits = "classification"
        why = (
            "a classifier's look, whose answer is its top class: int8 moves its scores by far more than "
            "relative error allows while it keeps the answer"
        )
    elif _unit_rows(reference):
        look, fits = f"output {output!r} rows are unit vectors", "embedding (judged by cosine)"
        why = (
            "an embedding's look, whose relative error is its chord to FP32: the default 0.5% asks for a "
            "cosine of 0.99999"
        )
    elif _vectors_named_like_embedding(output, reference):
        look, fits = f"output {output!r} is named like an embedding", "embedding (judged by cosine)"
        why = (
            "an embedding's look, whose relative error is its chord to FP32 over its length, whatever the "
            "length: the default 0.5% asks for a cosine of 0.99999"
        )
    else:
        return None
    return f"--task regression: {look}: {why}; if it is one, pass --task {fits}"


def _vectors_named_like_embedding(output: str, reference: np.ndarray) -> bool:
    """Whether a float output holds a vector a row (or a position: on its last axis) and is named like
    an embedding: infer_task's reading of it without --task, unit length or not; one value a row or a
    position is a regression's there, whatever the name."""
    return (
        np.issubdtype(reference.dtype, np.floating)
        and reference.ndim >= 2
        and reference.shape[-1] > 1
        and _named_like_embedding(output)
    )


def _named_like_embedding(output: str) -> bool:
    return any(hint in output.lower() for hint in EMBEDDING_NAMES)


DOUBTS_OF_REQUESTED_TASK = (
    _doubt_of_requested_classifier,
    _doubt_of_requested_embedding,
    _doubt_of_requested_regression,
)
"""What may say, before the first trial, that the --task given does not fit the output's look: each a
warning, not a refusal (the user's word stands), on the console and in the manifest."""


def answers_per_position(reference: np.ndarray) -> bool:
    """Whether a classifier's output answers at each position: class ids with more than one value a
    row ([N, seq]), or scores [N, seq, classes]."""
    if reference.dtype.kind in "iu":
        return reference.ndim >= 2 and reference[0].size > 1
    return reference.ndim == 3


def _float_input_of_shape(shape: tuple[int, ...], dataset: Dataset) -> str | None:
    """The float input the output has the shape of: what it reconstructs."""
    for name, array in dataset.arrays.items():
        if array.shape == shape and np.issubdtype(array.dtype, np.floating):
            return name
    return None
