"""The quantization SLIs' parts: disagreement, feedback store, clip counting, and the metrics they feed."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from tiny_models import POSITION_TABLE, build_positions

from quantship import activations, artifact, runtime, slo, zoo
from quantship.agreement import Kind
from quantship.server import service
from quantship.server.clipping import ClipCounter, ClipSample, observer_model
from quantship.server.drift import DriftWindow
from quantship.server.errors import FeedbackConflict, InvalidInput, UnknownRequest
from quantship.server.feedback import FeedbackStore
from quantship.server.metrics import ServerMetrics
from quantship.server.runner import Runner
from quantship.server.runner_signature import TensorSpec
from quantship.server.shadow import Comparator, ShadowEvaluator, ShadowSample

LABELS = {"model": "digits", "revision": "r1", "track": "canary"}


def metrics(per_tensor: bool = False) -> tuple[ServerMetrics, CollectorRegistry]:
    registry = CollectorRegistry()
    return ServerMetrics(registry, LABELS, per_tensor=per_tensor), registry


def value(registry: CollectorRegistry, name: str, **extra: str) -> float | None:
    return registry.get_sample_value(name, {**LABELS, **extra})


# -- disagreement ------------------------------------------------------------------------------


def test_class_ids_disagree_where_top1_differs() -> None:
    comparator = Comparator.for_artifact(TensorSpec("label", "INT64", (None,)), None, tolerance=0.01)
    assert comparator.classifier
    assert comparator.judged(np.array([1, 2, 3]), np.array([1, 0, 3])) == (1, 3, 1)


def test_token_ids_disagree_where_any_position_differs_and_take_no_label_feedback() -> None:
    """A label is one class a row: token ids [N, seq] get no feedback store (their answers were
    never remembered, so every label for them read as an unknown request)."""
    spec = TensorSpec("tokens", "INT64", (None, None))
    for comparator in (
        Comparator.for_artifact(spec, None, tolerance=0.01),
        Comparator.for_artifact(spec, {"kind": "top1"}, tolerance=0.01),
    ):
        assert comparator.rule.kind is Kind.TOP1 and not comparator.classifier
        served, reference = np.array([[1, 2], [3, 4]]), np.array([[1, 2], [3, 0]])
        assert comparator.judged(served, reference) == (1, 2, 1)


def test_a_per_position_rule_counts_rows_by_the_positions_a_request_did_not_pad() -> None:
    """The gate's per-position rule, from the manifest: the request's own attention mask says which
    positions are tokens (a causal LM's logits at padding are answers nobody reads). A row is one
    comparison, disagreeing by the share of its tokens that flip."""
    inputs = (
        TensorSpec("input_ids", "INT64", (None, None)),
        TensorSpec("attention_mask", "INT64", (None, None)),
    )
    rule = {"kind": "top1", "per_position": True, "mask_input": "attention_mask"}
    comparator = Comparator.for_artifact(TensorSpec("logits", "FP32", (None, None, 4)), rule, 0.01, inputs)
    assert not comparator.classifier, "no one class a row: no label feedback"
    reference = np.zeros((4, 3, 4), dtype=np.float32)
    reference[..., 1] = 1.0
    served = reference.copy()
    served[0, 1, 2] = served[2, 0, 2] = 5.0  # a token of 3 flips, and a token of 1
    served[1, 2, 2] = served[3, 0, 2] = 5.0  # padded positions flip
    mask = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=np.int64)
    request = {"input_ids": np.zeros_like(mask), "attention_mask": mask}
    judged = comparator.judged(served, reference, request)
    assert judged.compared == 3, "rows with a token, not their 6 tokens"
    assert judged.disagreeing == pytest.approx(1 / 3 + 0 / 2 + 1 / 1)
    assert judged.disagreeing_rows == 2, "rows with a flip"
    recorder, registry = metrics()
    recorder.compared(judged.compared, judged.disagreeing, judged.disagreeing_rows)
    assert value(registry, "quantship_shadow_disagreeing_rows_total") == 2  # the analysis' whole events


@pytest.mark.parametrize(
    ("mask_input", "refusal"),
    [("padding", "'padding' is none of the model's inputs"), ("scale", "holds float32, not a 0/1 mask")],
)
def test_a_rule_whose_mask_is_no_integer_input_of_the_model_is_refused(mask_input: str, refusal: str) -> None:
    inputs = (TensorSpec("input_ids", "INT64", (None, None)), TensorSpec("scale", "FP32", (None, None)))
    rule = {"kind": "top1", "per_position": True, "mask_input": mask_input}
    with pytest.raises(ValueError, match=refusal):
        Comparator.for_artifact(TensorSpec("logits", "FP32", (None, None, 4)), rule, 0.01, inputs)


def test_scores_per_position_are_no_class_scores() -> None:
    comparator = Comparator.for_artifact(TensorSpec("logits", "FP32", (None, None, 24)), None, tolerance=0.01)
    assert comparator.rule.kind is Kind.RELATIVE_ERROR


def test_class_scores_disagree_where_their_argmax_differs() -> None:
    comparator = Comparator.for_artifact(TensorSpec("p", "FP32", (None, 3)), None, tolerance=0.01)
    served = np.array([[0.1, 0.8, 0.1], [0.5, 0.4, 0.1]], dtype=np.float32)
    reference = np.array([[0.2, 0.7, 0.1], [0.4, 0.5, 0.1]], dtype=np.float32)
    assert comparator.judged(served, reference) == (1, 2, 1)  # scores differ in both, top-1 in one


def test_other_outputs_disagree_where_relative_error_passes_the_tolerance() -> None:
    comparator = Comparator.for_artifact(TensorSpec("y", "FP32", (None, 1)), None, tolerance=0.05)
    assert not comparator.classifier
    served = np.array([[1.04], [1.06], [0.0]], dtype=np.float32)
    assert comparator.judged(served, np.array([[1.0], [1.0], [0.0]], dtype=np.float32)) == (1, 3, 1)


def test_shadow_evaluation_counts_rows_and_hands_reference_answers_to_feedback(
    skewed_artifact: artifact.Artifact, sample: zoo.SampleModel
) -> None:
    served, reference = Runner.load(skewed_artifact.model_path), Runner.load(skewed_artifact.reference_path)
    recorder, registry = metrics()
    store = FeedbackStore(capacity=10, max_bytes=1 << 20)
    comparator = Comparator.for_artifact(served.signature.output("label"), None, tolerance=0.01)
    images = np.load(sample.requests)[zoo.INPUT_NAME]
    batch = {"X": images[:3]}
    served_label = served.run(batch)["label"]
    store.remember("a", 3, served_label, batch)
    ShadowEvaluator(reference, comparator, recorder, store).process(
        [ShadowSample("a", batch, 3, served_label)]
    )
    assert value(registry, "quantship_shadow_comparisons_total") == 3
    np.testing.assert_array_equal(store.get("a").reference, reference.run(batch)["label"])


def test_a_hand_off_that_fails_on_one_sample_counts_none_compared(
    skewed_artifact: artifact.Artifact, sample: zoo.SampleModel
) -> None:
    """The lane counts every sample of a failed hand-off as dropped: those judged before the failing
    one were counted as compared as well (a request all padding failed a confident LM rule)."""
    served, reference = Runner.load(skewed_artifact.model_path), Runner.load(skewed_artifact.reference_path)
    recorder, registry = metrics()
    comparator = Comparator.for_artifact(served.signature.output("label"), None, tolerance=0.01)
    batch = {"X": np.load(sample.requests)[zoo.INPUT_NAME][:3]}
    good = ShadowSample("a", batch, 3, served.run(batch)["label"])
    unjudgeable = ShadowSample("b", batch, 3, np.zeros((3, 2, 2), dtype=np.float32))  # no class a row
    with pytest.raises(ValueError, match="top-1 rule needs"):
        ShadowEvaluator(reference, comparator, recorder).process([good, unjudgeable])
    assert not value(registry, "quantship_shadow_comparisons_total")


# -- feedback store ----------------------------------------------------------------------------


def test_the_feedback_store_forgets_the_oldest_beyond_its_capacity() -> None:
    store = FeedbackStore(capacity=2, max_bytes=1 << 20)
    for request_id in "abc":
        store.remember(request_id, 1, np.array([1]), None)
    with pytest.raises(UnknownRequest, match="no recent request with id 'a'"):
        store.get("a")
    assert store.get("c").rows == 1


def test_the_feedback_store_keeps_its_inputs_within_max_bytes() -> None:
    store = FeedbackStore(capacity=100, max_bytes=1000)
    entry = sys.getsizeof("0") + 8 + 200  # the id, the served class, the input
    for i in range(10):
        store.remember(str(i), 1, np.array([0], dtype=np.int64), {"X": np.zeros(50, dtype=np.float32)})
    assert store.nbytes <= 1000
    assert len(store) == 1000 // entry
    store.mark_labelled("9")
    assert store.nbytes == (len(store) - 1) * entry + entry - 200  # a labelled answer lets its inputs go


def test_a_label_for_a_request_the_bytes_let_go_names_what_the_store_keeps() -> None:
    """Within --feedback-max-bytes an image model's store keeps ~100 requests (EfficientNet-Lite0's
    602 KB in 64 MiB), not --feedback-capacity's 10000, which the 404 named as what it keeps; and
    with the bytes at 0 a request answered a moment ago was "older than the last 10000"."""
    store = FeedbackStore(capacity=100, max_bytes=1000)
    for i in range(10):
        store.remember(str(i), 1, np.array([0], dtype=np.int64), {"X": np.zeros(50, dtype=np.float32)})
    with pytest.raises(UnknownRequest) as refused:
        store.get("0")
    message = str(refused.value)
    assert f"the latest {len(store)} requests (--feedback-capacity 100)" in message, message
    assert "--feedback-max-bytes 1000" in message, message


def test_the_feedback_store_counts_long_ids_and_the_bodies_inputs_view() -> None:
    store = FeedbackStore(capacity=100, max_bytes=100_000)
    store.remember("x" * 60_000, 1, np.array([0], dtype=np.int64), None)
    store.remember("y" * 60_000, 1, np.array([0], dtype=np.int64), None)
    assert len(store) == 1  # two ids of 60 kB do not fit 100 kB
    body = bytes(80_000)  # a binary request: a header, then two inputs' bytes, both viewing the body
    inputs = {
        "a": np.frombuffer(memoryview(body)[1000:1400], dtype=np.float32),
        "b": np.frombuffer(memoryview(body)[1400:1800], dtype=np.float32),
    }
    store.remember("z", 1, np.array([0], dtype=np.int64), inputs)
    assert store.nbytes >= len(body)  # the whole body, once, not the 800 bytes the inputs span
    assert store.nbytes < 2 * len(body)


def test_a_request_gets_one_label() -> None:
    store = FeedbackStore(capacity=2, max_bytes=1 << 20)
    store.remember("a", 1, np.array([1]), None)
    store.mark_labelled("a")
    with pytest.raises(FeedbackConflict, match="already got its label"):
        store.get("a")


# -- clipped activations -----------------------------------------------------------------------


def count_clips(loaded: artifact.Artifact, images: np.ndarray, per_tensor: bool = False) -> CollectorRegistry:
    model, ranges = observer_model(runtime.load_proto(loaded.model_path), loaded.activation_ranges)
    recorder, registry = metrics(per_tensor)
    counter = ClipCounter(Runner.load(model), ranges, recorder)
    counter.process([ClipSample({"X": images[i : i + 1]}, 1) for i in range(len(images))])
    return registry


def test_every_quantized_activation_value_is_observed(
    good_artifact: artifact.Artifact, sample: zoo.SampleModel
) -> None:
    images = np.load(sample.requests)[zoo.INPUT_NAME][:50]
    registry = count_clips(good_artifact, images, per_tensor=True)
    # the digits MLP quantizes 64 inputs, 512 + 512 and 256 + 256 hidden values, and 4 x 10 scores a row
    assert value(registry, "quantship_activations_observed_total") == 50 * (64 + 2 * 512 + 2 * 256 + 4 * 10)
    assert value(registry, "quantship_tensor_activations_observed_total", tensor="mul_result") == 50 * 512


def test_an_artifact_calibrated_on_one_digit_clips_far_more_of_real_traffic(
    good_artifact: artifact.Artifact, skewed_artifact: artifact.Artifact, sample: zoo.SampleModel
) -> None:
    images = np.load(sample.requests)[zoo.INPUT_NAME]

    def clip_rate(loaded: artifact.Artifact) -> float:
        registry = count_clips(loaded, images)
        clipped = value(registry, "quantship_activations_clipped_total")
        observed = value(registry, "quantship_activations_observed_total")
        assert clipped is not None and observed
        return clipped / observed

    good, skewed = clip_rate(good_artifact), clip_rate(skewed_artifact)
    assert skewed > 0.002
    assert skewed > 20 * good


def test_a_hand_off_counted_at_once_reads_as_its_requests_one_at_a_time(
    skewed_artifact: artifact.Artifact, sample: zoo.SampleModel
) -> None:
    """The clip lane counts and bins a hand-off's requests together, a tensor at a time; the counts
    and the drift window (which slides every 4 requests here, inside the hand-off of 10) must be
    those of the same requests processed one by one."""
    images = np.load(sample.requests)[zoo.INPUT_NAME][:10]
    model, ranges = observer_model(
        runtime.load_proto(skewed_artifact.model_path), skewed_artifact.activation_ranges
    )
    histograms = skewed_artifact.activation_histograms
    samples = [ClipSample({"X": images[i : i + 1]}, 1) for i in range(len(images))]

    def run(hand_offs: list[list[ClipSample]]) -> tuple[CollectorRegistry, dict[str, float]]:
        recorder, registry = metrics(per_tensor=True)
        window = DriftWindow(histograms, window=8, ranges=ranges)
        counter = ClipCounter(Runner.load(model), ranges, recorder, window)
        for hand_off in hand_offs:
            counter.process(hand_off)
        return registry, window.distances()

    (together, together_drift), (alone, alone_drift) = run([samples]), run([[s] for s in samples])
    M = slo.Metric
    assert value(together, M.ACTIVATIONS_CLIPPED_TOTAL)  # the skewed artifact clips: a comparison
    for name in (M.ACTIVATIONS_OBSERVED_TOTAL, M.ACTIVATIONS_CLIPPED_TOTAL, M.ACTIVATION_DRIFT_VALUES_TOTAL):
        assert value(together, name) == value(alone, name), name
    for tensor in [r.tensor for r in ranges]:
        clipped = M.TENSOR_ACTIVATIONS_CLIPPED_TOTAL
        assert value(together, clipped, tensor=tensor) == value(alone, clipped, tensor=tensor), tensor
    assert together_drift and together_drift == pytest.approx(alone_drift, abs=1e-12)


def numpy_js(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits, written out apart from drift.py's."""
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2
    return float(sum((a[a > 0] * np.log2(a[a > 0] / m[a > 0])).sum() for a in (p, q)) / 2)


def numpy_bins(values: np.ndarray, low: float, high: float) -> np.ndarray:
    inside, _ = np.histogram(values[(values >= low) & (values <= high)], bins=64, range=(low, high))
    return np.concatenate(([(values < low).sum()], inside, [(values > high).sum()])).astype(float)


def test_a_tensor_without_a_batch_dimension_is_observed_once_a_request_in_one_call(tmp_path: Path) -> None:
    """A static BERT's position embeddings (1, seq, hidden) whatever the batch: the hand-off runs
    the observer once, and every request counts and bins them once, as its own call would give them;
    the counts and the drift are what numpy computes from the requests and the table."""
    path = build_positions(tmp_path / "positions.onnx")
    calibration = {"H": np.linspace(-1, 1, 640), "P": np.linspace(-1.1, 0.6, 640)}
    ranges = [
        activations.ActivationRange(t, float(v.min()), float(v.max()), 0.1) for t, v in calibration.items()
    ]
    histograms = [
        activations.ActivationHistogram(t, r.low, r.high, tuple(int(c) for c in b[0]), b[1], b[2])
        for (t, v), r in zip(calibration.items(), ranges, strict=True)
        for b in [activations.ActivationHistogram.bin(v, r.low, r.high)]
    ]
    model, kept = observer_model(runtime.load_proto(path), ranges)
    recorder, registry = metrics(per_tensor=True)
    window = DriftWindow(histograms, window=64, ranges=kept)
    counter = ClipCounter(Runner.load(model, threads=1), kept, recorder, window)
    calls = 0
    run = counter.observer.run

    def counted(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        nonlocal calls
        calls += 1
        return run(inputs)

    counter.observer.run = counted  # type: ignore[method-assign]
    rng = np.random.default_rng(7)
    requests = [rng.standard_normal((n, 5)).astype(np.float32) / 2 for n in (1, 1, 3, 1, 1, 1, 2, 1)]
    counter.process([ClipSample({"X": x}, len(x)) for x in requests])
    assert calls == 1

    observed = {
        "H": np.concatenate([2 * x.ravel() for x in requests]),
        "P": np.tile(POSITION_TABLE[:5].ravel(), 8),
    }
    M = slo.Metric
    for r in ranges:
        half = r.scale / 2
        clipped = int(((observed[r.tensor] < r.low - half) | (observed[r.tensor] > r.high + half)).sum())
        assert (
            value(registry, M.TENSOR_ACTIVATIONS_OBSERVED_TOTAL, tensor=r.tensor) == observed[r.tensor].size
        )
        assert value(registry, M.TENSOR_ACTIVATIONS_CLIPPED_TOTAL, tensor=r.tensor) == clipped
    assert clipped == 3 * 8  # P's -1.5, -1.25 and 0.75, once a request
    drift = window.distances()
    for r in ranges:
        expected = numpy_js(
            numpy_bins(observed[r.tensor], r.low, r.high), numpy_bins(calibration[r.tensor], r.low, r.high)
        )
        assert drift[r.tensor] == pytest.approx(expected, abs=1e-9), r.tensor


def test_the_clip_lane_bins_a_batched_request_as_its_rows_one_a_request(tmp_path: Path) -> None:
    """The same 12 rows of 20,000 values (past the drift window's cap), the 8 shifted ones one
    request or each their own: the clip lane hands the window each request's rows, so both read
    alike (a stride of 3 within rows on both sides; see test_drift for the tolerance)."""
    model, kept = observer_model(
        runtime.load_proto(build_positions(tmp_path / "positions.onnx")),
        [activations.ActivationRange("H", -4.0, 4.0, 0.1)],
    )
    rng = np.random.default_rng(8)
    counts, under, over = activations.ActivationHistogram.bin(2 * rng.standard_normal(50_000), -4.0, 4.0)
    histogram = activations.ActivationHistogram("H", -4.0, 4.0, tuple(int(c) for c in counts), under, over)
    calm = rng.standard_normal((4, 20_000)).astype(np.float32)
    shifted = rng.standard_normal((8, 20_000)).astype(np.float32) + 1.5

    def drift(requests: list[np.ndarray]) -> float:
        window = DriftWindow([histogram], window=64, ranges=kept)
        counter = ClipCounter(Runner.load(model, threads=1), kept, metrics()[0], window)
        counter.process([ClipSample({"X": x}, len(x)) for x in requests])
        return window.distances()["H"]

    rows = drift([calm[i : i + 1] for i in range(4)] + [shifted[i : i + 1] for i in range(8)])
    assert rows > 0.1
    assert drift([calm[i : i + 1] for i in range(4)] + [shifted]) == pytest.approx(rows, abs=0.005)


# -- metrics -----------------------------------------------------------------------------------


def test_the_counters_slis_read_exist_at_zero_from_the_start() -> None:
    _, registry = metrics()
    for objective in (
        slo.Objective(slo.SLI.ACCURACY_DELTA, 0.01),
        slo.Objective(slo.SLI.CLIP_RATE, 0.01),
        slo.Objective(slo.SLI.LATENCY, 0.01, latency_threshold=0.1),
    ):
        for series in (slo.counters(objective).bad, slo.counters(objective).total):
            name, _, matchers = series.partition("{")
            extra = dict(m.replace('"', "").split("=") for m in matchers.rstrip("}").split(",") if m)
            assert value(registry, name, **extra) == 0.0, series
    assert value(registry, "quantship_requests_total", code="200") == 0.0
    assert value(registry, "quantship_feedback_total", variant="reference", correct="false") == 0.0
    assert value(registry, "quantship_model_load_failures_total", reason="hash_mismatch") == 0.0


def test_a_manifest_rule_that_cannot_judge_the_output_is_refused_at_load() -> None:
    with pytest.raises(ValueError, match="class ids or per-class scores"):
        Comparator.for_artifact(TensorSpec("y", "FP32", (None,)), {"kind": "top1"}, tolerance=0.01)
    with pytest.raises(ValueError, match="numeric tolerance"):
        Comparator.for_artifact(TensorSpec("e", "FP32", (None, 8)), {"kind": "cosine"}, tolerance=0.01)
    rule = {"kind": "cosine", "tolerance": 0.9, "confident_only": False}
    comparator = Comparator.for_artifact(TensorSpec("e", "FP32", (None, 8)), rule, tolerance=0.01)
    assert comparator.rule.tolerance == 0.9 and not comparator.classifier


def test_labels_past_the_models_classes_are_refused() -> None:
    np.testing.assert_array_equal(service._labels([0, 9], 2, "a", classes=10), [0, 9])
    with pytest.raises(InvalidInput, match="label 10 is not a class id: the model's are 0 to 9"):
        service._labels([0, 10], 2, "a", classes=10)
    with pytest.raises(InvalidInput, match="label -1 is not a class id"):
        service._labels(-1, 1, "a", classes=None)


def test_every_code_the_server_answers_with_is_counted_from_zero() -> None:
    """A series born at its third 500 shows Prometheus' increase() none of the three: on a canary's
    first scrape that was every error of a window (the error SLI read 0 of 3)."""
    _, registry = metrics()
    requests = f"{slo.Metric.REQUESTS_TOTAL}"
    for code in ("200", "400", "404", "408", "413", "429", "499", "500", "503"):
        assert value(registry, requests, code=code) == 0, code


def test_a_qoperator_model_counts_saturated_codes_of_every_qlinear_output(
    qoperator_skewed_artifact: artifact.Artifact, sample: zoo.SampleModel
) -> None:
    """QOperator: the QLinear ops requantize in their kernels, so the clip SLI counts their outputs'
    codes at an end of the type, computed here apart: from the ops' own zero points, a low end that
    stands for 0 (a fused Relu's) and a Softmax's codes (bounded by 1) not counted."""
    import onnx

    images = np.load(sample.requests)[zoo.INPUT_NAME][:200]
    registry = count_clips(qoperator_skewed_artifact, images, per_tensor=True)
    model = onnx.load(str(qoperator_skewed_artifact.model_path))
    constants = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
    qlinear = {n.output[0]: n for n in model.graph.node if n.op_type.startswith("QLinear")}
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in qlinear)
    session = runtime.create_session(model.SerializeToString())
    codes = dict(zip(qlinear, session.run(list(qlinear), {"X": images}), strict=True))
    expected_total = 0
    for tensor, node in qlinear.items():
        zero_point = constants[tensor.removesuffix("_quantized") + "_zero_point"]
        info = np.iinfo(zero_point.dtype)
        saturated = 0
        if node.op_type != "QLinearSoftmax":
            saturated += int(np.count_nonzero(codes[tensor] == info.max))
            if int(zero_point) != info.min:
                saturated += int(np.count_nonzero(codes[tensor] == info.min))
        observed = value(registry, "quantship_tensor_activations_observed_total", tensor=tensor)
        assert observed == codes[tensor].size, tensor
        assert value(registry, "quantship_tensor_activations_clipped_total", tensor=tensor) == saturated, (
            tensor
        )
        expected_total += saturated
    assert expected_total > 0  # the skewed calibration saturates real traffic: a comparison
    inputs = value(registry, "quantship_tensor_activations_clipped_total", tensor="cast_input")
    assert value(registry, "quantship_activations_clipped_total") == expected_total + inputs
    # 64 inputs, 512 + 512 and 256 + 256 hidden values, 3 x 10 scores a row (the QDQ graph quantizes
    # the probabilities twice: 4 x 10)
    assert value(registry, "quantship_activations_observed_total") == 200 * (64 + 2 * 512 + 2 * 256 + 3 * 10)
