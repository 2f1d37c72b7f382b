"""The per-task metrics' numbers, FP32's outputs against INT8's: per row of class scores (confidence,
top-1 kept, top-5 overlap, KL), nearest-neighbour agreement of embeddings, a regression's global
relative error."""

from __future__ import annotations

import numpy as np

from quantship import agreement

TOP_K = 5


def rows(scores: np.ndarray) -> np.ndarray:
    return scores.reshape(len(scores), -1)


def score_agreement(
    reference_scores: np.ndarray, candidate_scores: np.ndarray, normalized: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row of [rows, classes] scores: whether FP32 is confident, whether the top-1 is kept, the
    share of FP32's top 5 kept (`_top_k_shares`), and KL(FP32 || INT8) of their probabilities."""
    ref_p = agreement.probabilities(reference_scores, normalized)
    int8_p = agreement.probabilities(candidate_scores, normalized)
    sure = ref_p.max(axis=1) > agreement.CONFIDENT_PROBABILITY
    same = ref_p.argmax(axis=1) == int8_p.argmax(axis=1)
    top_k = _top_k_shares(ref_p, int8_p, min(TOP_K, ref_p.shape[1]))
    # A quantized softmax output rounds small probabilities to exactly 0 (uint8: steps of
    # 1/255), which would make KL infinite: floor both at one in a million.
    eps = 1e-6
    kl = np.sum(ref_p * (np.log(ref_p + eps) - np.log(int8_p + eps)), axis=1)
    return sure, same, top_k, kl


def _top_k_shares(reference: np.ndarray, candidate: np.ndarray, k: int) -> np.ndarray:
    """Per row, the share of the reference's top-k classes that are in the candidate's top k. A class tied
    with the candidate's k-th score is kept when the reference scores it within one of the
    candidate's steps of that score: a quantized softmax rounds the small classes to exactly 0, and
    their order was lost to rounding, not changed (ranking those ties counted 0.57 overlap at 100%
    top-1 agreement). Other ties share the places left: a collapsed (constant) row has no step,
    and scores what chance gives, not 1.0."""
    reference_top = np.argsort(-reference, axis=1, kind="stable")[:, :k]
    kth_score = -np.sort(-candidate, axis=1)[:, k - 1 : k]
    gaps = np.diff(np.sort(candidate, axis=1), axis=1)
    gaps[gaps <= 0] = np.inf
    step = gaps.min(axis=1, keepdims=True) if gaps.shape[1] else np.full((len(candidate), 1), np.inf)
    step[np.isinf(step)] = 0.0  # one value only: no resolution to lose an order to
    above = (candidate > kth_score).sum(axis=1, keepdims=True)
    tied = (candidate == kth_score).sum(axis=1, keepdims=True)
    share_of_a_tie = (k - above) / np.maximum(tied, 1)
    scores = np.take_along_axis(candidate, reference_top, axis=1)
    rounded_alike = np.abs(np.take_along_axis(reference, reference_top, axis=1) - kth_score) <= step
    tie = np.where(rounded_alike, 1.0, share_of_a_tie)
    kept = np.where(scores > kth_score, 1.0, np.where(scores == kth_score, tie, 0.0))
    return np.mean(kept, axis=1)


def nn_agreement(reference: np.ndarray, candidate: np.ndarray) -> float | None:
    if len(reference) < 3:
        return None

    def neighbours(rows: np.ndarray) -> np.ndarray:
        flat = rows.reshape(len(rows), -1).astype(np.float64)
        flat = flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), np.finfo(np.float64).tiny)
        similarity = flat @ flat.T
        np.fill_diagonal(similarity, -np.inf)
        return similarity.argmax(axis=1)

    return float(np.mean(neighbours(reference) == neighbours(candidate)))


def global_relative_error(reference: np.ndarray, candidate: np.ndarray) -> float | None:
    """||candidate - reference|| / ||reference|| over every row: the RMS of the rows' errors against
    the RMS row norm, which is what bounds the shadow rule's disagreements (agreement.ROW_ERROR_FACTOR)."""
    norm = float(np.linalg.norm(reference))
    return float(np.linalg.norm(candidate.astype(np.float64) - reference)) / norm if norm > 0 else None
