"""runtime.top1: the one reading of a classifier's answer (the gate's agreement, the server's shadow
comparisons and label feedback), on every output shape a served model can give."""

from __future__ import annotations

import numpy as np
import pytest

from quantship.runtime import top1


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (np.array([3, 1]), [3, 1]),  # class ids, one a row
        (np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]], dtype=np.float32), [1, 0]),  # scores
        (np.array([[3], [1]]), [3, 1]),
    ],
    ids=["ids", "scores", "ids in a column"],
)
def test_class_ids_by_row(output: np.ndarray, expected: list[int]) -> None:
    found = top1(output)
    assert found is not None
    assert found.tolist() == expected


@pytest.mark.parametrize(
    "output",
    [
        np.array([[0.3], [0.6]]),  # one score a row: a regressor, not a classifier
        np.float32(2.5).reshape(()),
        np.zeros((1, 0, 4), dtype=np.float32),  # a token model's answer to a sequence of length 0
        np.zeros((2, 0), dtype=np.int64),
        np.zeros((0, 10), dtype=np.float32),  # no rows
        # An answer per position is no class a row: position 0 alone was read (hunt-H H7).
        np.array([[[0.1, 0.9], [0.8, 0.2]]]),
        np.array([[3, 1, 4], [1, 5, 9]]),
    ],
    ids=[
        "one score",
        "scalar",
        "empty sequence",
        "empty id rows",
        "no rows",
        "scores per position",
        "token ids",
    ],
)
def test_no_class_ids_where_an_output_gives_none(output: np.ndarray) -> None:
    assert top1(output) is None
