"""Calibration: onnxruntime's calibrator over the data once, its ranges saved in onnxruntime's
calibration cache format (what every quantization then reads); a histogram numpy could not bin
names the tensors it could not."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization.calibrate import (
    CalibrationMethod,
    HistogramCalibrater,
    HistogramCollector,
    TensorData,
    TensorsData,
    create_calibrator,
    save_tensors_data,
)

from quantship.quantize.config import QuantizeConfig
from quantship.quantize.constants import constant_value
from quantship.quantize.data import CalibrationReader, Dataset
from quantship.quantize.engine_graph import QUANTIZABLE_OPS
from quantship.quantize.errors import CalibrationFailed, RangeTooWide, first_line

TOO_MANY_BINS = "Too many bins for data range"
"""numpy's np.histogram, when a range's bin edges are not finite and increasing: a tensor reaching past
finfo.max / 2, or one of zero width (numpy widens it by +-0.5) at a magnitude where float32 cannot
tell its bins apart (about 4096 for 2048 bins)."""


NOT_FINITE = "is not finite"
"""The end of numpy's np.histogram error for a range reaching +-inf ("autodetected range of [0.0, inf]
is not finite"): a sentinel such as T5's log(0) mask. Too wide to bin as TOO_MANY_BINS is, and
learnt from min-max the same way."""


@dataclasses.dataclass(frozen=True)
class Calibrated:
    """What one calibration pass learnt."""

    ranges: TensorsData
    """The method's ranges: what the quantizer reads (the cache)."""
    observed: TensorsData
    """Every calibrated tensor's lowest and highest value over the data: min-max's ranges, found by
    the same pass whatever the method (the additive-mask rule reads them: a histogram method clips
    or symmetrises a mask's range)."""


def calibrate(
    model_path: Path,
    dataset: Dataset,
    config: QuantizeConfig,
    batch_size: int,
    cache_path: Path,
    on_batch: Callable[[int], None],
    given: Mapping[str, tuple[float, float]] | None = None,
) -> Calibrated:
    """Run onnxruntime's calibrator over the data once and save its ranges to `cache_path`.

    The data goes in one batch per `collect_data` call: onnxruntime keeps every intermediate
    output of a call until it ends (all activations, for histogram methods), and merges ranges
    and histograms across calls. Memory stays that of one batch, whatever the sample count.
    A histogram method bins neither a Constant node's output (its value is its range: constant_ranges)
    nor the tensors `given` a range (min-max's, where a histogram cannot bin it): they take those
    ranges as they are. numpy bins neither a range past about finfo.max / 2 (an additive mask's
    finfo.min) nor a zero-width one at a large magnitude (a -10000 Constant)."""
    augmented = cache_path.with_name(f"augmented-{config.calibration.value}.onnx")
    calibrator = create_calibrator(
        model_path,
        QUANTIZABLE_OPS,
        augmented_model_path=str(augmented),
        calibrate_method=config.ort_calibration,
        extra_options=config.calibration_params(),
    )
    fixed: dict[str, tuple[float, float]] = {}
    if isinstance(calibrator, HistogramCalibrater):  # min-max ranges every tensor as it is
        # tensors_to_calibrate: the tensors its collect_data keeps and bins.
        wanted = set(calibrator.tensors_to_calibrate)
        fixed = {
            name: span
            for name, span in {**constant_ranges(calibrator.model), **(given or {})}.items()
            if name in wanted
        }
        calibrator.tensors_to_calibrate = wanted - set(fixed)
    try:
        with warnings.catch_warnings():
            # Histogram methods square large activations in float32 ("overflow encountered in
            # dot"); the ranges they pick are still checked by the gate.
            warnings.simplefilter("ignore", RuntimeWarning)
            # Histogram calibrators print() per batch ("Collecting tensor data and making histogram
            # ...", "Finding optimal threshold ..."): noise on stdout, mixed into the summary table.
            with contextlib.redirect_stdout(io.StringIO()):
                try:
                    for chunk in dataset.chunks(batch_size):
                        calibrator.collect_data(CalibrationReader(chunk, batch_size, on_batch))
                    ranges = calibrator.compute_data()
                except ValueError as exc:
                    raise _calibration_failed(exc, calibrator, config, dataset) from exc
    finally:
        augmented.unlink(missing_ok=True)
    if fixed:
        ranges = TensorsData(ranges.calibration_method, {**ranges.data, **_as_tensor_data(fixed)})
    save_tensors_data(_finite(ranges), cache_path)
    observed = _observed(calibrator, fixed) if isinstance(calibrator, HistogramCalibrater) else ranges
    return Calibrated(ranges, observed)


def _observed(calibrator: HistogramCalibrater, fixed: Mapping[str, tuple[float, float]]) -> TensorsData:
    """The min-max ranges of a histogram pass: onnxruntime's HistogramCollector keeps each tensor's
    raw lowest and highest value beside its histogram, `(hist, edges, min, max, ...)`, merged over
    the batches as a MinMax calibrator merges them (not symmetrised, not clipped); the `fixed`
    tensors were not binned, and their range is min-max's (a Constant's value, min-max's own)."""
    collected = calibrator.collector.get_histogram_dict() if calibrator.collector else {}
    spans = {
        name: TensorData(lowest=np.asarray(entry[2]), highest=np.asarray(entry[3]))
        for name, entry in collected.items()
    }
    return TensorsData(CalibrationMethod.MinMax, {**spans, **_as_tensor_data(fixed)})


def _calibration_failed(
    exc: ValueError, calibrator: object, config: QuantizeConfig, dataset: Dataset
) -> CalibrationFailed:
    """The error to raise for onnxruntime's `exc`: a histogram that numpy could not bin names the
    tensors it could not (RangeTooWide)."""
    failed = f"{config.calibration.value} calibration failed on {dataset.source}"
    unbinned = str(exc).startswith(TOO_MANY_BINS) or first_line(exc).endswith(NOT_FINITE)
    if not unbinned or not isinstance(calibrator, HistogramCalibrater):
        return CalibrationFailed(f"{failed}: {first_line(exc)}")
    unbinnable = _unbinnable(calibrator)
    if not unbinnable:
        return RangeTooWide(f"{failed}: {first_line(exc)}")
    return RangeTooWide(f"{failed}: numpy cannot bin {'; '.join(unbinnable)} ({first_line(exc)})")


def constant_ranges(model: onnx.ModelProto) -> dict[str, tuple[float, float]]:
    """The float outputs of the model's Constant nodes, with their value's range: their exact range,
    what min-max finds, without binning a value that never varies. A histogram of one (zero width)
    fails once its magnitude is past float32's resolution of numpy's +-0.5 bins. The quantizer may
    still quantize one as an activation (a runtime QuantizeLinear where pre-processing, which folds
    Constants into initializers, was skipped or gave up), with this range."""
    found = {}
    for node in model.graph.node:
        value = constant_value(node)
        if value is not None and value.dtype.kind == "f" and value.size:  # ints: nothing calibrated
            found[node.output[0]] = (float(value.min()), float(value.max()))
    return found


def _finite(ranges: TensorsData) -> TensorsData:
    """`ranges` for the quantizer, +-inf (a log(0) mask) held at +-finfo(float32).max / 2: it computes
    every calibrated tensor's scale, those of tensors kept in float too, and inf / inf is nan
    (numpy's "invalid value" warnings). Still past ranges.UNQUANTIZABLE_MAGNITUDE, and the sum of two such
    ends is finite. The ranges returned to quantship keep their inf, as calibrated."""
    limit = np.float32(np.finfo(np.float32).max / 2)
    finite = {}
    for name, data in ranges.data.items():
        fields = {key: value for key, value in data.to_dict().items() if key != "CLS"}
        for end in ("lowest", "highest"):
            if end in fields:
                fields[end] = np.clip(fields[end], -limit, limit).astype(np.float32)
        finite[name] = TensorData(**fields)
    return TensorsData(ranges.calibration_method, finite)


def _as_tensor_data(spans: Mapping[str, tuple[float, float]]) -> dict[str, TensorData]:
    return {
        name: TensorData(lowest=np.array(low, np.float32), highest=np.array(high, np.float32))
        for name, (low, high) in spans.items()
    }


def _unbinnable(calibrator: HistogramCalibrater) -> list[str]:
    """The tensors of the batch a histogram failed on that onnxruntime's own collector, with the
    calibrator's settings, cannot bin alone: each named with its range and why. The batch is the
    calibrator's intermediate_outputs, kept when collect_data raised (none where compute_data did)."""
    batches = getattr(calibrator, "intermediate_outputs", None) or []
    names = [output.name for output in calibrator.infer_session.get_outputs()]
    found = []
    for index, name in enumerate(names):
        if name not in calibrator.tensors_to_calibrate:
            continue
        values = np.concatenate([np.ravel(batch[index]) for batch in batches]) if batches else None
        if values is None or not values.size:
            continue
        collector = HistogramCollector(
            method=calibrator.method,
            symmetric=calibrator.symmetric,
            num_bins=calibrator.num_bins,
            num_quantized_bins=calibrator.num_quantized_bins,
            percentile=calibrator.percentile,
            scenario=calibrator.scenario,
        )
        try:
            collector.collect({name: values})
        except ValueError:
            low, high = float(np.nanmin(values)), float(np.nanmax(values))
            wide = "not finite" if np.isinf([low, high]).any() else "a range too wide for float32 bin edges"
            found.append(
                f"{name}, {low:.6g} in every row: a zero-width range at a magnitude where its "
                f"{calibrator.num_bins} bins are finer than float32 resolves"
                if low == high
                else f"{name} [{low:.3g}, {high:.3g}]: {wide}"
            )
    return found
