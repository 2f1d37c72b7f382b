"""Which task an output is, read from its dtype, shape, values and name when --task is omitted."""

from __future__ import annotations

import numpy as np
import pytest

from quantship.agreement import Task
from quantship.quantize.data import Dataset
from quantship.quantize.evaluate import _task


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
    inferred, why = _task(None, output, values, _data(3))
    assert inferred is task, why


def test_labels_make_a_float_output_a_classifier_and_the_user_has_the_last_word() -> None:
    rows = np.array([[0.6, 0.8]] * 3, dtype=np.float32)
    assert _task(None, "out", rows * 2, _data(3, labels=True))[0] is Task.CLASSIFICATION
    assert _task(Task.REGRESSION, "out", rows, _data(3)) == (Task.REGRESSION, "--task")


@pytest.mark.parametrize(
    ("output", "values"),
    [
        ("out", np.array([[0.6, 0.8], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)),
        ("sentence_embedding", np.array([[3.0, 4.0, 1.0]] * 3, dtype=np.float32)),
    ],
)
def test_labels_do_not_make_an_embedding_a_classifier(output: str, values: np.ndarray) -> None:
    """MiniLM with labels 0..9 beside its data was gated as a 384-class argmax classifier."""
    assert _task(None, output, values, _data(3, labels=True))[0] is Task.EMBEDDING
