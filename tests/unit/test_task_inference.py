"""Which task an output is, read from its dtype, shape, values and name when --task is omitted."""

from __future__ import annotations

import numpy as np
import pytest

from quantship.agreement import Task
from quantship.quantize.data import Dataset
from quantship.quantize.errors import QuantizeInputError
from quantship.quantize.tasks import DOUBTS_OF_REQUESTED_TASK, _doubt_of_requested_classifier, infer_task


def _data(rows: int, labels: bool = False) -> Dataset:
    x = np.zeros((rows, 4), dtype=np.float32)
    return Dataset({"x": x}, np.zeros(rows, dtype=np.int64) if labels else None, True, "sha", "test")


@pytest.mark.parametrize(
    ("output", "values", "task"),
    [
        ("label", np.array([1, 2, 3]), Task.CLASSIFICATION),
        ("y", np.array([[0.3], [0.1], [0.2]], dtype=np.float32), Task.REGRESSION),
        # Near one-hot probabilities have a unit L2 norm too: they are still a classifier's.
        ("probabilities", np.array([[0.9995, 0.0005, 0.0]] * 3, dtype=np.float32), Task.CLASSIFICATION),
        ("out", np.array([[0.6, 0.8], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32), Task.EMBEDDING),
        ("sentence_embedding", np.array([[3.0, 4.0, 1.0]] * 3, dtype=np.float32), Task.EMBEDDING),
        ("last_hidden_state", np.ones((3, 5, 8), dtype=np.float32), Task.EMBEDDING),
        ("logits", np.array([[3.0, -1.0, 0.5]] * 3, dtype=np.float32), Task.CLASSIFICATION),
    ],
)
def test_the_task_is_inferred_from_the_output(output: str, values: np.ndarray, task: Task) -> None:
    inferred, why = infer_task(None, output, values, _data(3))
    assert inferred is task, why


def test_labels_make_a_float_output_a_classifier_and_the_user_has_the_last_word() -> None:
    rows = np.array([[0.6, 0.8]] * 3, dtype=np.float32)
    assert infer_task(None, "out", rows * 2, _data(3, labels=True))[0] is Task.CLASSIFICATION
    assert infer_task(Task.REGRESSION, "out", rows, _data(3)) == (Task.REGRESSION, "--task")


@pytest.mark.parametrize(
    ("output", "values"),
    [
        ("out", np.array([[0.6, 0.8], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)),
        ("sentence_embedding", np.array([[3.0, 4.0, 1.0]] * 3, dtype=np.float32)),
    ],
)
def test_labels_do_not_make_an_embedding_a_classifier(output: str, values: np.ndarray) -> None:
    """MiniLM with labels 0..9 beside its data was gated as a 384-class argmax classifier."""
    assert infer_task(None, output, values, _data(3, labels=True))[0] is Task.EMBEDDING


PIXELS = np.array([[0.1, 0.9, 0.4, 0.2], [0.7, 0.3, 0.5, 0.6], [0.2, 0.2, 0.8, 0.1]], dtype=np.float32)
"""Sigmoid values, no row sure of one column: an autoencoder's pixels, not a classifier's scores."""


def test_an_output_shaped_like_a_float_input_is_a_reconstruction_not_a_classifier() -> None:
    """An autoencoder's [N, 64] sigmoid reconstruction was gated on its argmax pixel."""
    inferred, why = infer_task(None, "reconstruction", PIXELS, _data(3))
    assert inferred is Task.REGRESSION
    assert why == "output 'reconstruction' has the shape of input 'x' (a reconstruction)"


def test_scores_that_are_no_ones_class_are_refused_with_the_choices_not_read_by_argmax() -> None:
    decoded = np.concatenate([PIXELS, PIXELS[:, :1]], axis=1)  # not the input's shape
    with pytest.raises(QuantizeInputError) as refused:
        infer_task(None, "decoded", decoded, _data(3))
    said = str(refused.value)
    assert "softmax is confident on only 0 of 3 rows" in said
    assert all(f"--task {task.value}" in said for task in Task)


@pytest.mark.parametrize(
    ("output", "values"),
    [
        # A name that says scores keeps an unsure classifier a classifier (the gate then warns).
        ("logits", PIXELS),
        # Sure of one class on its rows: scores, whatever the name.
        ("out", np.array([[4.0, 0.0, 0.5, 0.1, -1.0]] * 3, dtype=np.float32)),
    ],
)
def test_scores_a_classifier_gives_stay_a_classifiers(output: str, values: np.ndarray) -> None:
    assert infer_task(None, output, values, _data(3))[0] is Task.CLASSIFICATION


UNIT_ROWS = np.random.default_rng(0).normal(size=(40, 64))
UNIT_ROWS = (UNIT_ROWS / np.linalg.norm(UNIT_ROWS, axis=1, keepdims=True)).astype(np.float32)
"""A sentence encoder's output: unit-length rows, whose softmax is sure of no column."""


def test_classification_asked_of_unit_vectors_sure_of_no_class_is_doubted_naming_embedding() -> None:
    """MiniLM-L6 with --task classification ran 17 trials (7:12) before its gate failed: told before the
    first. The user's word stands (a classifier's L2-normalised logits look the same)."""
    assert infer_task(Task.CLASSIFICATION, "sentence_embedding", UNIT_ROWS, _data(40)) == (
        Task.CLASSIFICATION,
        "--task",
    )
    said = _doubt_of_requested_classifier(Task.CLASSIFICATION, "sentence_embedding", UNIT_ROWS, _data(40))
    assert said is not None
    assert said.startswith("--task classification: output 'sentence_embedding' rows are unit vectors")
    assert "confident on only 0 of 40 rows" in said and "pass --task embedding" in said


@pytest.mark.parametrize(
    ("values", "labels"),
    [
        (UNIT_ROWS, True),  # labels: the gate judges accuracy against them (_check_labels_fit)
        (UNIT_ROWS * 2, False),  # not unit length
        (np.array([[0.9995, 0.0005, 0.0]] * 40, dtype=np.float32), False),  # near one-hot probabilities
        (np.array([[0.0, 1.0, 0.0]] * 40, dtype=np.float32), False),  # unit rows, but sure of a class
    ],
)
def test_classification_asked_of_what_may_be_scores_is_the_users_word(
    values: np.ndarray, labels: bool
) -> None:
    assert infer_task(Task.CLASSIFICATION, "out", values, _data(40, labels=labels)) == (
        Task.CLASSIFICATION,
        "--task",
    )
    assert (
        _doubt_of_requested_classifier(Task.CLASSIFICATION, "out", values, _data(40, labels=labels)) is None
    )


def _doubts(task: Task, output: str, values: np.ndarray, labels: bool = False) -> list[str]:
    """What quantize says before the first trial of --task `task` on `output`."""
    data = _data(len(values), labels=labels)
    return [said for doubt in DOUBTS_OF_REQUESTED_TASK if (said := doubt(task, output, values, data))]


LOGITS = np.random.default_rng(1).normal(scale=3.0, size=(40, 10)).astype(np.float32)
"""A classifier's logits: its softmax sure of one class on some rows (EfficientNet-Lite0 on random
crops: 62 of 300)."""
PROBABILITIES = (np.exp(LOGITS) / np.exp(LOGITS).sum(axis=1, keepdims=True)).astype(np.float32)
TOKEN_LOGITS = np.random.default_rng(2).normal(scale=3.0, size=(4, 8, 16)).astype(np.float32)
"""A causal LM's [N, seq, vocab] logits."""


@pytest.mark.parametrize(
    ("output", "values", "look"),
    [
        (
            "logits",
            LOGITS,
            "output 'logits' is named like per-class scores, and its softmax is confident on ",
        ),
        ("out", PROBABILITIES, "output 'out' rows are probabilities (sum to 1)"),
        (
            "logits",
            TOKEN_LOGITS,
            "output 'logits' is named like per-class scores, and its softmax is confident on ",
        ),
    ],
)
def test_embedding_or_regression_asked_of_a_classifiers_scores_is_doubted_naming_classification(
    output: str, values: np.ndarray, look: str
) -> None:
    """Judged as an embedding, a character LM's plain INT8 that flipped 48% of its confident tokens
    passed at cosine 0.96 on every row, and EfficientNet-Lite0's per-channel INT8 that kept every
    confident answer failed (cosine agreement 0.93); as a regression, that one failed at relative
    error 0.19. Both told before the first trial; the user's word stands."""
    for task in (Task.EMBEDDING, Task.REGRESSION):
        assert infer_task(task, output, values, _data(len(values))) == (task, "--task")
        (said,) = _doubts(task, output, values)
        assert said.startswith(f"--task {task.value}: {look}"), said
        assert "a classifier's look" in said and said.endswith("pass --task classification")
    assert "positions" in _doubts(Task.EMBEDDING, "logits", TOKEN_LOGITS)[0]


@pytest.mark.parametrize(
    "values", [np.array([[0.3], [-4.0], [0.2]], dtype=np.float32), np.array([0.3, -4.0])]
)
def test_embedding_asked_of_one_value_a_row_is_doubted_naming_regression(values: np.ndarray) -> None:
    """The cosine of two numbers is their signs' agreement: INT8 that doubled every value passed."""
    (said,) = _doubts(Task.EMBEDDING, "y", values)
    assert said == (
        "--task embedding: output 'y' has one value a row, whose cosine to FP32 is its sign alone (twice "
        "the value agrees): a regression's look; if it is one, pass --task regression"
    )


def test_regression_asked_of_unit_vectors_is_doubted_naming_embedding() -> None:
    """all-MiniLM-L6-v2's dynamic INT8 at cosine 0.96 to FP32 was 0.27 off by relative error: a unit
    vector's error is its chord, and a gate of 0.5% asks for a cosine of 0.99999."""
    (said,) = _doubts(Task.REGRESSION, "sentence_embedding", UNIT_ROWS)
    assert said == (
        "--task regression: output 'sentence_embedding' rows are unit vectors: an embedding's look, whose "
        "relative error is its chord to FP32: the default 0.5% asks for a cosine of 0.99999; if it is one, "
        "pass --task embedding (judged by cosine)"
    )


UNNORMALISED_ROWS = np.random.default_rng(4).normal(scale=0.3, size=(40, 384)).astype(np.float32)
"""Mean-pooled token vectors before an L2 normalisation: rows of length about 6."""


@pytest.mark.parametrize(
    ("output", "values"),
    [
        ("sentence_embedding", UNNORMALISED_ROWS),
        ("pooler_output", UNNORMALISED_ROWS),
        ("last_hidden_state", UNNORMALISED_ROWS.reshape(40, 8, 48)),
    ],
)
def test_regression_asked_of_vectors_named_like_an_embedding_is_doubted_naming_embedding(
    output: str, values: np.ndarray
) -> None:
    """all-MiniLM-L6-v2's pooled output before its L2 normalisation was 0.27 off by relative error
    (cosine 0.96) as its unit vectors were: relative error divides the length out, and unit rows
    were the only sign quantize read."""
    assert infer_task(None, output, values, _data(len(values)))[0] is Task.EMBEDDING
    (said,) = _doubts(Task.REGRESSION, output, values)
    assert said == (
        f"--task regression: output {output!r} is named like an embedding: an embedding's look, whose "
        "relative error is its chord to FP32 over its length, whatever the length: the default 0.5% asks "
        "for a cosine of 0.99999; if it is one, pass --task embedding (judged by cosine)"
    )


@pytest.mark.parametrize(
    ("task", "output", "values"),
    [
        # Each task on the look that fits it: the zoo's three models, and an autoencoder.
        (Task.CLASSIFICATION, "logits", LOGITS),
        (Task.CLASSIFICATION, "probabilities", PROBABILITIES),
        (Task.CLASSIFICATION, "logits", TOKEN_LOGITS),
        (Task.EMBEDDING, "sentence_embedding", UNIT_ROWS),
        (Task.REGRESSION, "reconstruction", PIXELS),
        # No clear look of another task: a name like scores on an unsure softmax (an autoencoder's
        # pixels), confident rows with no such name, a name like an embedding's, one value a row.
        (Task.EMBEDDING, "logits", PIXELS),
        (Task.EMBEDDING, "out", LOGITS),
        (Task.EMBEDDING, "class_embedding", LOGITS),
        (Task.REGRESSION, "logits", PIXELS),
        (Task.REGRESSION, "out", LOGITS),
        (Task.REGRESSION, "score", np.array([[0.3], [4.0], [0.2]], dtype=np.float32)),
        (Task.REGRESSION, "y", np.array([0.3, -4.0, 0.2], dtype=np.float32)),
        # Named like an embedding with one value a row: no vector, no direction to judge.
        (Task.REGRESSION, "feature", np.array([[0.3], [4.0], [0.2]], dtype=np.float32)),
        (Task.REGRESSION, "hidden", UNNORMALISED_ROWS.reshape(40, 384, 1)),  # one value a position
        (Task.REGRESSION, "out", UNNORMALISED_ROWS),
    ],
)
def test_a_task_whose_output_has_no_clear_look_of_another_is_not_doubted(
    task: Task, output: str, values: np.ndarray
) -> None:
    assert _doubts(task, output, values) == []


@pytest.mark.parametrize(
    "values",
    [UNNORMALISED_ROWS, UNNORMALISED_ROWS.reshape(40, 8, 48), UNNORMALISED_ROWS.reshape(40, 384, 1)],
    ids=["a vector a row", "a vector a position", "one value a position"],
)
def test_regression_is_doubted_of_an_embedding_named_output_exactly_where_it_would_be_inferred_otherwise(
    values: np.ndarray,
) -> None:
    """The doubt reads the output as infer_task does without --task: a [N, seq, 1] output named
    `hidden` is a regression's there (one value a position), so asking for regression is no mistake."""
    inferred, _ = infer_task(None, "hidden", values, _data(len(values)))
    assert (_doubts(Task.REGRESSION, "hidden", values) != []) is (inferred is Task.EMBEDDING)
