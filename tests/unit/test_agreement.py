"""The one rule per task that both the accuracy gate and the server's shadow SLI judge rows by."""

from __future__ import annotations

import numpy as np
import pytest

from quantship import agreement
from quantship.agreement import Kind, RowRule


def test_confident_only_top1_ignores_flips_between_near_ties() -> None:
    reference = np.array([[0.9, 0.05, 0.05], [0.35, 0.33, 0.32], [0.1, 0.8, 0.1]], dtype=np.float32)
    served = np.array([[0.1, 0.8, 0.1], [0.3, 0.4, 0.3], [0.1, 0.8, 0.1]], dtype=np.float32)
    assert RowRule(Kind.TOP1).judge(served, reference) == (2, 3)
    # Row 1 is a near-tie for FP32: not compared. Row 0 is a confident answer that flipped.
    assert RowRule(Kind.TOP1, confident_only=True).judge(served, reference) == (1, 2)


def test_an_answer_of_nan_disagrees_whatever_class_fp32_answered() -> None:
    """argmax reads a row's first NaN as its class: a broken kernel's all-NaN answer agreed wherever
    FP32 answered class 0, in the gate and in the shadow, per row and per position."""
    reference = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1]], dtype=np.float32)
    served = np.array([[np.nan, np.nan, np.nan], [0.1, np.nan, 0.1]], dtype=np.float32)
    assert RowRule(Kind.TOP1).judge(served, reference) == (2, 2)
    assert RowRule(Kind.TOP1, confident_only=True).judge(served, reference) == (2, 2)
    per_position = RowRule(Kind.TOP1, per_position=True)
    assert per_position.judge(served[None], reference[None]) == (1.0, 1), "both positions of one row"
    assert RowRule(Kind.TOP1).judge(reference, reference) == (0, 2), "finite answers as before"


def test_token_ids_disagree_on_a_row_where_any_position_differs() -> None:
    """Position 0 alone was compared: a token classifier's flips elsewhere never counted (hunt-H H7)."""
    reference = np.array([[5, 1, 2], [5, 3, 4], [5, 6, 7]], dtype=np.int64)
    served = np.array([[5, 1, 2], [5, 3, 0], [5, 0, 0]], dtype=np.int64)
    assert RowRule(Kind.TOP1).judge(served, reference) == (2, 3)
    assert RowRule(Kind.TOP1, confident_only=True).judge(served, reference) == (2, 3)  # ids: no confidence
    shorter = agreement.top1_differs(served[:, :2], reference)
    assert shorter is not None and shorter.tolist() == [True] * 3, "an answer of another length differs"


def test_a_per_position_rule_judges_each_real_position_and_counts_rows() -> None:
    """A causal LM's [N, seq, vocab] scores: each position is an answer (greedy decoding reads every
    one), and where the request's attention mask is 0 there is no token to answer for. A row is one
    comparison, disagreeing by the share of its real positions that flip (DESIGN: shadow comparisons
    count rows; counted as positions, two 64-token requests met an analysis' minSamples of 100)."""
    reference = np.zeros((4, 4, 5), dtype=np.float32)
    reference[..., 1] = 1.0  # class 1 everywhere
    served = reference.copy()
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=np.int64)
    served[0, 3, 3] = 5.0  # row 0: 1 of its 4 real positions flips
    served[1, 0, 3] = served[1, 3, 0] = 5.0  # row 1: 1 of its 2, and a padded position
    served[3, 0, 2] = 5.0  # row 3: padding only
    rule = RowRule(Kind.TOP1, per_position=True, mask_input="attention_mask")
    assert rule.judge(served, reference, mask) == pytest.approx((1 / 4 + 1 / 2 + 0 / 1, 3))
    assert rule.judge(served, reference) == pytest.approx((1 / 4 + 2 / 4 + 0 + 1 / 4, 4)), "no mask: all in"
    assert rule.judge(served, reference, mask[:, :2]) == pytest.approx((1.0, 4)), "another grid's mask"
    assert RowRule(Kind.TOP1).judge(served[:, 0], reference[:, 0]) == (2, 4)
    ids, reference_ids = np.argmax(served, axis=-1), np.argmax(reference, axis=-1)
    assert rule.judge(ids, reference_ids, mask) == pytest.approx((0.75, 3)), "ids alike"
    assert rule.judge(ids[..., None], reference_ids[..., None], mask) == pytest.approx((0.75, 3))
    assert rule.judge(ids[:, :2], reference_ids, mask) == (3.0, 3), "answers of another length differ"
    assert rule.judge(served[0], reference[0]) == (0.25, 1), "no batch axis: a call is one row"
    assert not rule.classifier, "no one class a row: no label feedback"
    assert rule.judge(served, reference, np.zeros_like(mask)) == (0, 0), "all padding: nothing compared"
    confident = RowRule(Kind.TOP1, confident_only=True, per_position=True, mask_input="attention_mask")
    assert confident.judge(served, reference, mask) == pytest.approx((0.75, 3)), "FP32 sure everywhere"
    assert confident.judge(served, reference, np.zeros_like(mask)) == (0, 0), "all padding, confident too"
    unsure = reference.copy()
    unsure[1, 1] = 0.2  # uniform: FP32 is sure of row 1's first position only, which flips
    unsure[0] = 0.2  # and of nothing in row 0: not compared
    assert confident.judge(served, unsure, mask) == pytest.approx((1.0, 2))


def test_positions_are_rows_of_their_own() -> None:
    scores = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    assert agreement.positions(scores).shape == (6, 4)
    assert agreement.positions(scores, np.array([[1, 0, 0], [0, 1, 1]])).tolist() == [
        scores[0, 0].tolist(),
        scores[1, 1].tolist(),
        scores[1, 2].tolist(),
    ]
    ids = np.array([[4, 5], [6, 7]], dtype=np.int64)
    assert agreement.positions(ids, np.array([[True, False], [True, True]])).tolist() == [4, 6, 7]
    kept_axis = ids[..., None]  # ArgMax(keepdims=1): [N, seq, 1]
    assert agreement.positions(kept_axis, np.array([[True, False], [True, True]])).tolist() == [4, 6, 7]


def test_logits_are_read_through_their_softmax() -> None:
    logits = np.array([[4.0, 0.0, 0.0], [0.1, 0.0, 0.0]])
    assert agreement.confident(logits).tolist() == [True, False]
    probabilities = agreement.probabilities(logits)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)


def test_confidence_is_the_top_class_share_of_the_softmax_without_building_it() -> None:
    """`confident` reads the top probability from the softmax's sum alone; it must say what the
    whole softmax says, on every row a model can answer: logits, NaN, infinities, probabilities."""
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(400, 1000)).astype(np.float32)
    logits[::7, 3] += 12.0  # some rows sure of one class
    logits[1, 5], logits[2, 6], logits[3, 7] = np.nan, np.inf, -np.inf
    with np.errstate(invalid="ignore"):  # the row holding inf is NaN after softmax's subtraction
        whole = agreement.probabilities(logits).max(axis=1) > agreement.CONFIDENT_PROBABILITY
    assert 0 < whole.sum() < len(whole), "the rows must be of both kinds for this to say anything"
    assert agreement.confident(logits).tolist() == whole.tolist()
    softmaxed = agreement.probabilities(logits[4:]).astype(np.float32)  # the NaN and inf rows left out
    assert agreement.are_probabilities(softmaxed)
    assert agreement.confident(softmaxed).tolist() == whole[4:].tolist()
    assert agreement.confident(np.zeros((0, 7), dtype=np.float32)).shape == (0,)
    assert not agreement.are_probabilities(np.array([[0.5, np.nan, 0.5]])), "NaN is no probability"
    assert not agreement.are_probabilities(np.array([[1.5, -0.5]])), "sums to 1, but a negative share"


def test_embeddings_disagree_by_cosine_not_by_argmax() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(4, 384)).astype(np.float32)
    noisy = reference + rng.normal(scale=0.05, size=reference.shape).astype(np.float32)
    # The argmax of a 384-wide embedding moves with small noise; its direction does not.
    rule = RowRule(Kind.COSINE, 0.95)
    assert rule.judge(noisy, reference) == (0, 4)
    flipped = noisy.copy()
    flipped[0] = -flipped[0]
    assert rule.judge(flipped, reference) == (1, 4)
    assert not rule.classifier


def test_regression_rows_disagree_above_the_relative_error() -> None:
    rule = RowRule(Kind.RELATIVE_ERROR, 0.05)
    served = np.array([[1.04], [1.06], [0.0]], dtype=np.float32)
    assert rule.judge(served, np.array([[1.0], [1.0], [0.0]], dtype=np.float32)) == (1, 3)


def test_a_regression_row_near_zero_is_judged_against_the_typical_row_norm() -> None:
    """Rounding of 0.01 on a row of norm 0.1 is 10% of nothing much: against its own norm it
    disagreed, against the evaluation data's typical row norm (the floor) it does not."""
    reference = np.array([[10.0, 0.0], [0.1, 0.0]])
    served = reference + np.array([[0.05, 0.0], [0.01, 0.0]])
    assert RowRule(Kind.RELATIVE_ERROR, 0.02).judge(served, reference) == (1, 2)
    floored = RowRule(Kind.RELATIVE_ERROR, 0.02, norm_floor=agreement.rms_row_norm(reference))
    assert floored.judge(served, reference) == (0, 2)
    # A row above the floor keeps its own norm: 0.5 on 10 is 5%, past the tolerance.
    assert floored.judge(reference + np.array([[0.5, 0.0], [0.0, 0.0]]), reference) == (1, 2)


@pytest.mark.parametrize("rows_with_error", [1, 5, 9, 11, 40, 160])
def test_a_regression_artifact_at_its_threshold_disagrees_on_at_most_a_sixteenth_of_its_rows(
    rows_with_error: int,
) -> None:
    """The whole allowed error (global relative error = the threshold) put in a few rows, or spread
    over all: the rule built for the gate counts at most 1/ROW_ERROR_FACTOR² of the rows."""
    threshold, rows = 0.02, 160
    reference = np.random.default_rng(0).normal(size=(rows, 8))
    reference *= 3.0 / np.linalg.norm(reference, axis=1, keepdims=True)  # every row of norm 3
    direction = np.zeros(8)
    direction[0] = 1.0
    error = np.zeros_like(reference)
    error[:rows_with_error] = direction * threshold * np.linalg.norm(reference) / np.sqrt(rows_with_error)
    served = reference + error
    assert np.linalg.norm(served - reference) / np.linalg.norm(reference) == pytest.approx(threshold)
    disagreeing, compared = agreement.regression_rule(threshold, reference).judge(served, reference)
    assert compared == rows and disagreeing <= rows / agreement.ROW_ERROR_FACTOR**2
    # In under rows/16 rows (10: each exactly at the tolerance) each is past the tolerance and
    # disagrees: a broken few still shows.
    assert disagreeing == (rows_with_error if rows_with_error < rows / agreement.ROW_ERROR_FACTOR**2 else 0)


@pytest.mark.parametrize(
    "rule", [RowRule(Kind.TOP1), RowRule(Kind.TOP1, confident_only=True), RowRule(Kind.COSINE, 0.9)]
)
def test_rows_of_no_elements_are_not_compared(rule: RowRule) -> None:
    """A token model's answer to a sequence of length 0 ([1, 0, width]): nothing to agree or disagree
    on (top-1 raised, and cosine counted the row as disagreeing: zero norms)."""
    empty = np.zeros((1, 0, 4), dtype=np.float32)
    assert rule.judge(empty, empty) == (0, 0)


@pytest.mark.parametrize(
    "rule",
    [
        RowRule(Kind.TOP1, confident_only=True),
        RowRule(Kind.COSINE, 0.9),
        RowRule(Kind.RELATIVE_ERROR, 0.01),
        RowRule(Kind.RELATIVE_ERROR, 0.06, norm_floor=3.5),
        RowRule(Kind.TOP1, per_position=True),
        RowRule(Kind.TOP1, confident_only=True, per_position=True, mask_input="attention_mask"),
    ],
)
def test_a_rule_travels_through_the_manifest_unchanged(rule: RowRule) -> None:
    assert RowRule.from_json(rule.to_json()) == rule


def test_a_row_rule_is_written_as_before_per_position_rules_were() -> None:
    """A manifest of a row rule reads the same to a server that knows nothing of positions."""
    assert RowRule(Kind.TOP1).to_json() == {"kind": "top1", "tolerance": None, "confident_only": False}


def test_a_rule_that_needs_a_tolerance_says_so() -> None:
    with pytest.raises(ValueError, match="needs a tolerance"):
        RowRule(Kind.COSINE).judge(np.ones((1, 3)), np.ones((1, 3)))
    with pytest.raises(ValueError):
        RowRule.from_json({"kind": "argmax"})


def test_a_nan_or_infinite_row_always_disagrees() -> None:
    reference = np.ones((3, 4), dtype=np.float32)
    served = reference.copy()
    served[1] = np.nan
    served[2, 0] = np.inf
    assert RowRule(Kind.COSINE, 0.95).judge(served, reference) == (2, 3)
    assert RowRule(Kind.RELATIVE_ERROR, 0.01).judge(served, reference) == (2, 3)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"kind": "cosine"}, "numeric tolerance"),
        ({"kind": "cosine", "tolerance": "0.9"}, "numeric tolerance"),
        ({"kind": "relative_error", "tolerance": float("nan")}, "finite tolerance"),
        ({"kind": "top1", "confident_only": "false"}, "true or false"),
        ({"kind": "relative_error", "tolerance": 0.02, "norm_floor": -1.0}, "finite number >= 0"),
        ({"kind": "relative_error", "tolerance": 0.02, "norm_floor": "3"}, "finite number >= 0"),
        ({"kind": "relative_error", "tolerance": 0.02, "norm_floor": float("inf")}, "finite number >= 0"),
        ({"kind": "cosine", "tolerance": 0.9, "norm_floor": 1.0}, "takes no norm_floor"),
        ({"kind": "relative_error", "tolerance": 10**400}, "finite tolerance"),  # JSON: an int, no float
        ({"kind": "relative_error", "tolerance": 0.02, "norm_floor": 10**400}, "finite number >= 0"),
        ({"kind": "top1", "per_position": 1}, "true or false"),
        ({"kind": "cosine", "tolerance": 0.9, "per_position": True}, "not judged per position"),
        ({"kind": "top1", "mask_input": "attention_mask"}, "needs per_position"),
        ({"kind": "top1", "per_position": True, "mask_input": ["m"]}, "an input's name"),
        ({"kind": "top1", "per_position": True, "mask_input": ""}, "an input's name"),
        ({"kind": "top1", "per_position": True, "mask_input": "m" * 5000}, "an input's name"),
    ],
)
def test_a_malformed_rule_in_a_manifest_is_refused_with_its_reason(data: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as refused:
        RowRule.from_json(data)
    assert len(str(refused.value)) < 120, "a hostile value is shown cut, not whole"


def test_a_rule_checks_that_it_fits_the_output_it_will_judge() -> None:
    RowRule(Kind.TOP1).check_output(np.dtype(np.int64), (None,))
    RowRule(Kind.TOP1).check_output(np.dtype(np.float32), (None, 10))
    RowRule(Kind.TOP1).check_output(np.dtype(np.int64), (None, None))  # token ids: every position
    with pytest.raises(ValueError, match=r"class ids or per-class scores \[N, classes\]"):
        RowRule(Kind.TOP1).check_output(np.dtype(np.float32), (None,))
    with pytest.raises(ValueError, match=r"not float32 \[None, None, 24\]"):  # scores per position
        RowRule(Kind.TOP1).check_output(np.dtype(np.float32), (None, None, 24))
    with pytest.raises(ValueError, match="not bool"):
        RowRule(Kind.TOP1).check_output(np.dtype(np.bool_), (None,))
    with pytest.raises(ValueError, match="needs a float output"):
        RowRule(Kind.COSINE, 0.9).check_output(np.dtype(np.int64), (None, 8))
    per_position = RowRule(Kind.TOP1, per_position=True)
    per_position.check_output(np.dtype(np.float32), (None, None, 24))
    per_position.check_output(np.dtype(np.int64), (None, None))
    per_position.check_output(np.dtype(np.int64), (None, None, 1))  # ArgMax keeping its axis
    per_position.check_output(np.dtype(np.int64), (12,))  # no batch axis: [seq] a call
    per_position.check_output(np.dtype(np.float32), (12, 8))  # and [seq, classes]
    for dtype, shape in [(np.float32, (None,)), (np.float32, (None, 1)), (np.float32, (1, 3, 8, 8))]:
        with pytest.raises(ValueError, match=r"class ids \[N, seq\] or scores \[N, seq, classes\]"):
            per_position.check_output(np.dtype(dtype), shape)


def test_probabilities_decided_by_the_reference_are_renormalised_not_softmaxed() -> None:
    # An INT8 softmax output: uint8 steps leave its rows summing to 0.992, under the 1e-3 a
    # reference's probabilities sum within.
    int8 = np.array([[0.992, 0.0, 0.0], [0.5, 0.492, 0.0]])
    read_alone = agreement.probabilities(int8)
    assert read_alone[0, 0] < 0.6  # softmaxed as logits: flattened
    read_as_probabilities = agreement.probabilities(int8, normalized=True)
    np.testing.assert_allclose(read_as_probabilities, int8 / int8.sum(axis=1, keepdims=True))
    # A row rounded to all zeros says only that every class was small.
    np.testing.assert_allclose(agreement.probabilities(np.zeros((1, 4)), normalized=True), 0.25)


def test_top5_overlap_keeps_ties_lost_to_rounding_and_scores_a_collapsed_row_as_chance() -> None:
    """A constant candidate row ties every class with its 5th score: counting every tie as kept
    scored a collapsed model 1.0. Classes a quantized softmax rounded to 0, which the reference
    scores within one step of 0, lost only their order."""
    from quantship.quantize.gate_measures import _top_k_shares

    reference = np.random.default_rng(0).normal(size=(20, 1000))
    assert np.mean(_top_k_shares(reference, reference, 5)) == 1.0
    assert np.mean(_top_k_shares(reference, np.zeros_like(reference), 5)) == pytest.approx(5 / 1000)
    probabilities = np.array([[0.9, 0.05, 0.03, 0.01, 0.005, 0.003, 0.002]])
    rounded = np.array([[0.9, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0]])  # steps of 0.1: the rest is below one
    assert np.mean(_top_k_shares(probabilities, rounded, 5)) == 1.0
