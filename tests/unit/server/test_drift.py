"""The drift distance (Jensen-Shannon, bits) and its sliding window, on histograms binned by the
artifact's own `ActivationHistogram.bin`."""

from __future__ import annotations

import numpy as np
import pytest

from quantship.activations import ActivationHistogram, ActivationRange
from quantship.server.drift import MAX_BINNED_VALUES_A_ROW, DriftWindow, js_divergence, overall


def calibration(
    values: np.ndarray, low: float = -4.0, high: float = 4.0, tensor: str = "t"
) -> ActivationHistogram:
    counts, under, over = ActivationHistogram.bin(values, low, high)
    return ActivationHistogram(tensor, low, high, tuple(int(c) for c in counts), under, over)


def test_js_is_zero_for_the_same_shape_one_for_disjoint_and_symmetric() -> None:
    p = np.array([1.0, 3.0, 0.0, 0.0])
    q = np.array([0.0, 0.0, 2.0, 5.0])
    assert js_divergence(p, p * 7) == 0.0
    assert js_divergence(p, q) == 1.0
    r = np.array([2.0, 1.0, 1.0, 0.0])
    assert js_divergence(p, r) == js_divergence(r, p)
    assert 0.0 < js_divergence(p, r) < 1.0


def test_empty_calibration_bins_give_a_finite_distance() -> None:
    baseline = np.array([0.0, 10.0, 10.0, 0.0])
    production = np.array([5.0, 10.0, 10.0, 5.0])  # fills bins calibration left empty
    distance = js_divergence(production, baseline)
    assert np.isfinite(distance) and 0.0 < distance < 0.2


def test_a_window_of_calibration_like_values_stays_near_zero_and_a_shifted_one_rises() -> None:
    rng = np.random.default_rng(0)
    window = DriftWindow([calibration(rng.standard_normal(20_000))], window=64)
    for _ in range(64):
        window.add("t", [rng.standard_normal(200)], [1])
        window.samples_done()
    calm = window.distances()["t"]
    for _ in range(64):
        window.add("t", [rng.standard_normal(200) * 0.5 + 1.0], [1])  # same range, moved inside it
        window.samples_done()
    shifted = window.distances()["t"]
    assert calm < 0.01
    assert shifted > 0.2


def test_a_window_is_settled_once_it_held_its_first_half() -> None:
    rng = np.random.default_rng(4)
    window = DriftWindow([calibration(rng.standard_normal(20_000))], window=8)
    for _ in range(3):
        window.add("t", [rng.standard_normal(200)], [1])
        window.samples_done()
        assert not window.settled
    window.add("t", [rng.standard_normal(200)], [1])
    window.samples_done()
    assert window.settled


def test_the_window_forgets_what_is_older_than_a_window() -> None:
    rng = np.random.default_rng(1)
    window = DriftWindow([calibration(rng.standard_normal(20_000))], window=20)
    for _ in range(20):
        window.add("t", [rng.standard_normal(200) + 2.0], [1])
        window.samples_done()
    assert window.distances()["t"] > 0.2
    for _ in range(20):  # one whole window of calm traffic later, the shift has left it
        window.add("t", [rng.standard_normal(200)], [1])
        window.samples_done()
    assert window.distances()["t"] < 0.02


def test_only_tensors_with_a_histogram_and_values_get_a_distance() -> None:
    rng = np.random.default_rng(2)
    empty = ActivationHistogram("empty", 0.0, 1.0, (0,) * 64, 0, 0)
    window = DriftWindow([calibration(rng.standard_normal(1000), tensor="a"), empty], window=8)
    assert window.tensors == ["a"]
    assert window.add("unknown", [np.ones(3)], [1]) == 0
    assert window.distances() == {} and overall({}) is None
    assert window.add("a", [np.array([0.5, np.nan, 9.0])], [1]) == 2  # NaN is not binned; 9.0 overflows
    assert set(window.distances()) == {"a"}
    assert overall({"a": 0.2, "b": 0.4}) == np.mean([0.2, 0.4])


def test_a_folded_relu_is_applied_before_binning_as_the_fp32_model_would() -> None:
    rng = np.random.default_rng(3)
    fp32 = np.maximum(rng.standard_normal(20_000), 0.0)  # calibration saw Relu outputs
    folded = ActivationRange("t", 0.0, 4.0, 4.0 / 255, activation_low=0.0)
    with_fold = DriftWindow([calibration(fp32, 0.0, 4.0)], window=8, ranges=[folded])
    without = DriftWindow([calibration(fp32, 0.0, 4.0)], window=8)
    for window in (with_fold, without):
        window.add("t", [rng.standard_normal(5_000)], [1])  # the quantized graph's pre-activation values
    assert with_fold.distances()["t"] < 0.01
    assert without.distances()["t"] > 0.2


def test_a_qlinear_ops_codes_are_binned_dequantized() -> None:
    """QOperator: the clip lane hands the window an op's int8 codes, which calibration binned as the
    float values they stand for: a calm window of codes reads near 0, as those values would."""
    rng = np.random.default_rng(5)
    scale, zero_point = 8.0 / 255, -1
    requantized = ActivationRange(
        "t", (-128 - zero_point) * scale, (127 - zero_point) * scale, scale,
        requantized_by="QLinearConv", zero_point=zero_point,
    )  # fmt: skip
    fp32 = rng.standard_normal(20_000)
    window = DriftWindow([calibration(requantized.requantized(fp32))], window=8, ranges=[requantized])
    codes = np.clip(np.rint(rng.standard_normal(5_000) / scale) + zero_point, -128, 127).astype(np.int8)
    window.add("t", [codes], [1])
    assert window.distances()["t"] < 0.01


def test_a_large_tensor_is_binned_from_a_strided_subset_that_keeps_its_shape() -> None:
    """A CNN's activations: millions of values a request. At most MAX_BINNED_VALUES_A_ROW of each tensor are
    binned, spread over the whole tensor (a channel-by-channel layout: the subset must not see only
    the first channels), and the distance is what binning every value gives."""
    rng = np.random.default_rng(1)
    # 16 channels of 4096 values, each channel its own mean: calibration saw the same layout
    layout = np.arange(16, dtype=np.float32)[:, None] * 0.25 - 2.0
    calibrated = calibration((layout + rng.standard_normal((16, 4096))).ravel())
    window = DriftWindow([calibrated], window=8)
    everything = DriftWindow([calibrated], window=8)
    sample = layout + rng.standard_normal((16, 4096))
    assert window.add("t", [sample], [1]) <= MAX_BINNED_VALUES_A_ROW < sample.size
    for _ in range(3):
        window.add("t", [layout + rng.standard_normal((16, 4096))], [1])
    full = ActivationHistogram.bin(sample, calibrated.low, calibrated.high)
    everything._current["t"] += np.concatenate(([full[1]], full[0], [full[2]]))
    assert window.distances()["t"] < 0.01
    assert abs(window.distances()["t"] - everything.distances()["t"]) < 0.01
    shifted = DriftWindow([calibrated], window=8)
    shifted.add("t", [(layout + rng.standard_normal((16, 4096))) * 0.5], [1])
    assert shifted.distances()["t"] > 0.05


def test_a_hand_off_is_binned_as_its_requests_one_at_a_time_each_within_its_own_cap() -> None:
    """The clip lane adds a hand-off's requests together: one large request must weigh what it
    weighs alone (MAX_BINNED_VALUES_A_ROW of it), not crowd out the small ones."""
    rng = np.random.default_rng(4)
    calibrated = calibration(rng.standard_normal(20_000))
    large = rng.standard_normal(100_000) + 1.5  # drifted, and far over the cap
    small = [rng.standard_normal(100) for _ in range(15)]
    together, alone = DriftWindow([calibrated], window=64), DriftWindow([calibrated], window=64)
    binned = together.add("t", [large, *small], [1] * 16)
    together.samples_done(16)
    one_by_one = 0
    for values in (large, *small):
        one_by_one += alone.add("t", [values], [1])
        alone.samples_done()
    assert binned == one_by_one <= MAX_BINNED_VALUES_A_ROW + 15 * 100
    assert together.distances()["t"] == alone.distances()["t"]


def test_a_hand_off_may_not_span_the_slide_of_the_window() -> None:
    window = DriftWindow([calibration(np.random.default_rng(5).standard_normal(1000))], window=8)
    window.samples_done(3)
    assert window.room() == 1
    with pytest.raises(ValueError, match="do not fit"):
        window.samples_done(2)


def test_rows_weigh_alike_whether_they_come_one_a_request_or_batched() -> None:
    """4 calm rows and 8 shifted ones, each past the cap: as 12 one-row requests, or the 8 shifted
    in one request, the window reads what binning every value reads. Each row is binned from a
    third of its values (a stride of 3), 80,000 values over 66 bins: the sampling noise of the
    distance is about bins/values, 1e-3; a cap a request read the batched rows as 1 in 5 shifted
    instead of 8 in 12, 0.1 lower."""
    rng = np.random.default_rng(6)
    calibrated = calibration(rng.standard_normal(50_000))
    calm = rng.standard_normal((4, 20_000))
    shifted = rng.standard_normal((8, 20_000)) + 1.5
    everything = DriftWindow([calibrated], window=64)
    counts, under, over = ActivationHistogram.bin(
        np.concatenate([calm, shifted]), calibrated.low, calibrated.high
    )
    everything._current["t"] += np.concatenate(([under], counts, [over]))
    one_a_request, batched = DriftWindow([calibrated], window=64), DriftWindow([calibrated], window=64)
    one_a_request.add("t", [*calm, *shifted], [1] * 12)
    batched.add("t", [*calm, shifted], [1, 1, 1, 1, 8])
    exact = everything.distances()["t"]
    assert exact > 0.1
    assert one_a_request.distances()["t"] == pytest.approx(exact, abs=0.005)
    assert batched.distances()["t"] == pytest.approx(exact, abs=0.005)
