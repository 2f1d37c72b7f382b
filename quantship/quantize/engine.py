"""The onnxruntime.quantization calls: prepare, calibrate once, quantize as often as the search asks.

Calibration is the slow part, so it runs once and its ranges are cached in onnxruntime's own
calibration cache format; every fallback trial re-quantizes from that cache
(`quantize_static(calibration_cache_path=...)`) with a different set of excluded nodes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import math
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

import numpy as np
import onnx
from google.protobuf import json_format, text_format
from google.protobuf.message import DecodeError
from onnxruntime.quantization import QuantFormat, quantize_dynamic, quantize_static
from onnxruntime.quantization.calibrate import (
    CalibrationMethod,
    HistogramCalibrater,
    HistogramCollector,
    TensorData,
    TensorsData,
    create_calibrator,
    save_tensors_data,
)
from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
from onnxruntime.quantization.quant_utils import load_model_with_shape_infer
from onnxruntime.quantization.registry import (
    CreateQDQQuantizer,
    IntegerOpsRegistry,
    QDQRegistry,
    QLinearOpsRegistry,
)

from quantship import runtime
from quantship.local.lifetime import dying_with_parent
from quantship.quantize import ranges
from quantship.quantize.config import Format, Mode, QuantizeConfig
from quantship.quantize.constants import constant_value, graph_constants
from quantship.quantize.data import CalibrationReader, Dataset
from quantship.quantize.errors import CalibrationFailed, QuantizeInputError, RangeTooWide, first_line

# onnxruntime.quantization logs "Please consider pre-processing" through the root logger on every call.
logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))

QUANTIZABLE_OPS = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))
DYNAMIC_OPS = sorted(set(IntegerOpsRegistry) | {"Gemm"})
"""onnxruntime's dynamic quantizer first rewrites each Gemm it can (alpha = beta = 1, no transA) into
a MatMul named `<gemm>_MatMul` (and a float Add of the bias), then quantizes that MatMul."""
GEMM_AS_MATMUL = "_MatMul"
"""The suffix of the MatMul that dynamic quantization rewrote a Gemm into: it excludes nodes by name,
and counting finds the Gemm's twin under it."""
FOLLOWER_OPS = frozenset(
    {
        "Relu",
        "Clip",
        "MaxPool",
        "Reshape",
        "Squeeze",
        "Unsqueeze",
        "Flatten",
        "Transpose",
        "Slice",
        "TopK",
        "ArgMax",
    }
)
"""Ops onnxruntime quantizes only when their input already is (Direct8BitOp, removable activations,
ArgMax on the int8 tensor): alone, or after float ops, they stay float. Leaving one in float keeps
no range of its own out of the model, so the tuner does not try them."""
ELEMENTWISE_OPS = frozenset(
    {"Add", "Mul", "Sigmoid", "LeakyRelu", "LayerNormalization", "InstanceNormalization"}
    | {"BatchNormalization"}
)
"""Ops onnxruntime quantizes that compute little a value: beside a float op (a Tanh, a Pow, which have
no int8 kernel), the DequantizeLinear before and the QuantizeLinear after it cost more than such an
op's int8 kernel saves (`float_region`)."""
FLOAT_TYPES = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
)
HALF_FLOATS: dict[int, str] = {onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.BFLOAT16: "bfloat16"}
"""Weights onnxruntime does not quantize as weights: pre-processing on the CPU wraps each float16 op in
Casts to float32 (InsertedPrecisionFreeCast_*), and the quantizer, seeing the weights as those Casts'
outputs, quantized them at run time as activations, into an artifact larger than its model; quantized
as they are, their float16 scales are invalid before opset 19. bfloat16 has no CPU kernels at all."""


HALF_COMPUTE_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose"})
"""Ops whose half-float weight input means the op computes in half precision: the ops INT8 is for."""


TOO_MANY_BINS = "Too many bins for data range"
"""numpy's np.histogram, when a range's bin edges are not finite and increasing: a tensor reaching past
finfo.max / 2, or one of zero width (numpy widens it by +-0.5) at a magnitude where float32 cannot
tell its bins apart (about 4096 for 2048 bins)."""
NOT_FINITE = "is not finite"
"""The end of numpy's np.histogram error for a range reaching +-inf ("autodetected range of [0.0, inf]
is not finite"): a sentinel such as T5's log(0) mask. Too wide to bin as TOO_MANY_BINS is, and
learnt from min-max the same way."""

MAX_INLINE_BYTES = 2**31 - 1
"""protobuf's limit on one message: a model over it must keep its weights in external data."""


def self_contained(path: Path, folder: Path) -> Path:
    """`path` when its weights are inside it; else a copy in `folder` with them inlined. An artifact
    hashes and ships its files one by one: a weights file beside the model would be neither listed nor
    copied, and the artifact's model would not load."""
    model = onnx.load(str(path), load_external_data=False)
    if not runtime.keeps_weights_outside(model):
        return path
    onnx.load_external_data_for_model(model, str(path.parent))
    if model.ByteSize() > MAX_INLINE_BYTES:
        raise QuantizeInputError(
            f"{path}: over 2 GB with its external data; artifacts hold self-contained models only (for now)"
        )
    inlined = folder / "self-contained" / path.name  # apart from the run's other files (prepared.onnx)
    inlined.parent.mkdir()
    onnx.save(model, str(inlined))
    return inlined


def load_model(path: Path) -> onnx.ModelProto:
    """Load an FP32 model, refusing what is not ONNX, what holds 16-bit float weights or what
    onnxruntime cannot run."""
    try:
        model = onnx.load(str(path))
    except FileNotFoundError as exc:
        raise QuantizeInputError(f"model {path} does not exist") from exc
    except onnx.checker.ValidationError as exc:  # external data that is missing or not a file
        raise QuantizeInputError(f"{path}: {first_line(exc)}") from exc
    # onnx picks its parser by the file's suffix: a .json or .txt given by mistake fails to parse as text
    except (
        DecodeError,
        json_format.ParseError,
        text_format.ParseError,
        OSError,
        ValueError,
        RuntimeError,
    ) as exc:
        raise QuantizeInputError(f"{path} is not an ONNX model: {first_line(exc)}") from exc
    if not model.graph.node:
        raise QuantizeInputError(f"{path} is not an ONNX model: its graph has no nodes")
    _refuse_half_float_weights(model, path)  # before the session: bfloat16 ones fail there, unexplained
    try:
        runtime.create_session(path)
    except Exception as exc:  # onnxruntime raises its own pybind types for every load failure
        raise QuantizeInputError(f"onnxruntime cannot load {path}: {first_line(exc)}") from exc
    return model


def _refuse_half_float_weights(model: onnx.ModelProto, path: Path) -> None:
    """A model exported in float16 (torch's model.half()) or bfloat16: HALF_FLOATS says why it cannot
    be quantized as it is. Judged by where most of its float weight values are, not by any one
    tensor: a float32 model may hold a float16 Constant (a Cast chain some exporters emit around an
    op they run in half precision), a scalar no quantizable op reads as its weight, and quantizes as
    any float32 model does; a half-precision export holds (almost) all its weights in it."""
    weights = graph_constants(model)
    floats = {name: weight for name, weight in weights.items() if weight.data_type in FLOAT_TYPES}
    half = [name for name, weight in floats.items() if weight.data_type in HALF_FLOATS]
    values = {name: math.prod(weight.dims) for name, weight in floats.items()}
    # A MatMul or Conv computing in half precision, even in a mostly float32 model, is one whose weight
    # no trial quantizes: a review's mixed model (43% of values float16) became a larger "INT8" model.
    computed = {name for node in model.graph.node if node.op_type in HALF_COMPUTE_OPS for name in node.input}
    in_half = [name for name in half if name in computed]
    if 2 * sum(values[name] for name in half) <= sum(values.values()) and not in_half:
        return
    kinds = " and ".join(sorted({HALF_FLOATS[floats[name].data_type] for name in half}))
    first = in_half[0] if in_half else half[0]
    raise QuantizeInputError(
        f"{path}: {len(half)} of its {len(floats)} float weights are {kinds} ({first!r} first), "
        f"{len(in_half)} of them a MatMul, Gemm or Conv's; quantship quantizes float32 models: export the "
        "model in float32 (from torch: without model.half()) and quantize that"
    )


def prepare(model_path: Path, out_path: Path, *, pre_process: bool) -> str:
    """Write the model to quantize: every node named (exclusions name nodes), pre-processed when
    asked. Returns how it was pre-processed, for the manifest."""
    model = onnx.load(str(model_path))
    taken = {node.name for node in model.graph.node if node.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = _unique(f"{node.op_type}_{index}", taken)
    named = out_path.with_suffix(".named.onnx")
    onnx.save(model, named)
    if not pre_process:
        named.rename(out_path)
        return "not requested"
    # onnxruntime's own CLI, in a child process whose working directory is ours: on failure its
    # symbolic shape inference drops a debug model into the current directory. It dies with us: a
    # kill -9 of a quantization left it running for minutes, writing into a scratch being swept.
    preprocess = [sys.executable, "-m", "onnxruntime.quantization.preprocess"]
    result = subprocess.run(
        dying_with_parent([*preprocess, "--input", str(named), "--output", str(out_path)], signal.SIGKILL),
        cwd=out_path.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode == 0:
        return "applied"
    # Symbolic shape inference gives up on ops it does not know (ai.onnx.ml ones among them), and
    # what is left of pre-processing then loses the tensor types calibration needs: skip it whole.
    named.rename(out_path)
    reason = (result.stderr.strip().splitlines() or ["unknown error"])[-1]
    return f"skipped: {reason}"


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


def quantize(
    model_path: Path,
    out_path: Path,
    config: QuantizeConfig,
    *,
    cache_path: Path | None,
    exclude: tuple[str, ...],
    format: Format | None = None,
) -> None:
    """One quantization of `model_path`, leaving `exclude` in float. `format` overrides the config's."""
    if config.mode is Mode.DYNAMIC:
        quantize_dynamic(
            model_path,
            out_path,
            per_channel=config.per_channel,
            reduce_range=bool(config.reduce_range),
            weight_type=config.ort_weight_type,
            nodes_to_exclude=_dynamic_exclusions(model_path, exclude),
            extra_options=config.extra_options(),
        )
        return
    chosen = format or config.format
    # Mode is static here: MatMulConstBOnly is all that decides.
    in_float = activation_matmuls(onnx.load(str(model_path))) if config.matmul_const_b_only else []
    quantize_static(
        model_path,
        out_path,
        calibration_data_reader=None,
        quant_format=QuantFormat.QDQ if chosen is Format.QDQ else QuantFormat.QOperator,
        per_channel=config.per_channel,
        reduce_range=bool(config.reduce_range),
        activation_type=config.ort_activation_type,
        weight_type=config.ort_weight_type,
        nodes_to_exclude=list(dict.fromkeys((*exclude, *in_float))),
        calibrate_method=config.ort_calibration,
        calibration_cache_path=cache_path,
        extra_options=config.extra_options(),
    )
    if in_float and chosen is Format.QDQ:
        quantized = onnx.load(str(out_path))
        _read_float_operands(quantized, in_float)
        onnx.save(quantized, str(out_path))


def activation_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMuls whose B input is no constant (attention's Q x K^T and P x V): not an initializer or
    Constant, nor one reached through WEIGHT_CARRIERS (the layout ops onnxruntime folds). In graph
    order."""
    constants = graph_constants(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "MatMul"
        and len(node.input) > 1
        and _constant_behind(node.input[1], constants, producers) is None
    ]


def const_b_exclusions(model: onnx.ModelProto, config: QuantizeConfig) -> list[str]:
    """What MatMulConstBOnly keeps in float in `model`: its activation MatMuls, in static mode.
    onnxruntime 1.32 reads the option only in QOperator (QOpMatMul); its QDQ quantizer ignores it,
    so quantship excludes them itself, in both formats alike."""
    if config.mode is not Mode.STATIC or not config.matmul_const_b_only:
        return []
    return activation_matmuls(model)


def _read_float_operands(model: onnx.ModelProto, nodes: Collection[str]) -> None:
    """Let each of `nodes`, and the DATA_MOVERS that feed it, read the float tensor behind a
    QuantizeLinear -> DequantizeLinear pair instead of the pair's output. An excluded node still
    reads its neighbours' Q/DQ pairs in QDQ, and onnxruntime moves a DequantizeLinear forward past a
    Transpose or Reshape, then fuses a MatMul fed by DequantizeLinears into an int8 kernel
    (QLinearMatMul, MatMulIntegerToFloat) all the same: excluded alone, GPT-2's attention MatMuls
    ran in int8."""
    producers = {out: node for node in model.graph.node for out in node.output}
    names = set(nodes)
    frontier = [node for node in model.graph.node if node.name in names]
    while frontier:
        node = frontier.pop()
        data = node.input[: DATA_OPERANDS.get(node.op_type)] if node.op_type in DATA_MOVERS else node.input
        for index, name in enumerate(data):
            producer = producers.get(name)
            if producer is not None and producer.op_type == runtime.DEQUANTIZE:
                quantize = producers.get(producer.input[0])
                if quantize is None or quantize.op_type != runtime.QUANTIZE:
                    continue
                node.input[index] = quantize.input[0]
                producer = producers.get(quantize.input[0])
            if producer is not None and producer.op_type in DATA_MOVERS:
                frontier.append(producer)
    _drop_unread_qdq(model)


def _drop_unread_qdq(model: onnx.ModelProto) -> None:
    """Remove the Q/DQ nodes no node or graph output reads any more, and the initializers only they
    read: onnxruntime keeps running a dangling pair, and one after a Gemm left it unfused (a float
    output beside a QuantizeLinear), which the tuner then kept in float."""
    graph, dropped_inputs = model.graph, set[str]()
    while True:
        read = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
        unread = [
            node
            for node in graph.node
            if node.op_type in (runtime.QUANTIZE, runtime.DEQUANTIZE) and not set(node.output) & read
        ]
        if not unread:
            break
        for node in unread:
            dropped_inputs.update(node.input)
            graph.node.remove(node)
    read = {name for node in graph.node for name in node.input} | {value.name for value in graph.input}
    for init in [init for init in graph.initializer if init.name in dropped_inputs - read]:
        graph.initializer.remove(init)


def _dynamic_exclusions(model_path: Path, exclude: tuple[str, ...]) -> list[str]:
    """`exclude`, with the MatMul each excluded Gemm is rewritten into: the rewrite renames it, and
    onnxruntime would quantize it all the same."""
    if not exclude:
        return []
    graph = onnx.load(str(model_path), load_external_data=False).graph
    gemms = {node.name for node in graph.node if node.op_type == "Gemm"}
    return [*exclude, *(name + GEMM_AS_MATMUL for name in exclude if name in gemms)]


def quantized_nodes(
    fp32: onnx.ModelProto, quantized: onnx.ModelProto, mode: Mode, format: Format
) -> list[onnx.NodeProto]:
    """FP32 nodes the quantized model runs quantized, in graph order.

    The node was replaced (QOperator, dynamic: quantized ops get new names derived from it; QDQ:
    a removed Relu or Clip was folded into its producer's range), or, in QDQ, it runs on
    dequantized operands only, as onnxruntime fuses it into an int8 kernel. A node left in float
    keeps its name and op type: in QOperator a float op after a quantized one reads a
    DequantizeLinear output all the same, and in QDQ an excluded node still reads its producer's
    Q/DQ pair but keeps its float weights. In dynamic mode a Gemm left in float may also be the
    float MatMul it was rewritten into (DYNAMIC_OPS).
    """
    q_nodes = {node.name: node for node in quantized.graph.node}
    candidates = DYNAMIC_OPS if mode is Mode.DYNAMIC else QUANTIZABLE_OPS
    qdq = mode is Mode.STATIC and format is Format.QDQ
    runs_dequantized = _runs_dequantized(fp32, quantized) if qdq else lambda _: False
    result = []
    for node in fp32.graph.node:
        if node.op_type not in candidates:
            continue
        twin = q_nodes.get(node.name)
        if twin is None and mode is Mode.DYNAMIC and node.op_type == "Gemm":
            rewritten = q_nodes.get(node.name + GEMM_AS_MATMUL)
            if rewritten is not None and rewritten.op_type == "MatMul":
                continue  # rewritten, then left in float (a quantized one is `<gemm>_MatMul_quant`)
        if twin is None or twin.op_type != node.op_type or runs_dequantized(twin):
            result.append(node)
    return result


DATA_OPERANDS = {"Clip": 1, "Resize": 1, "Pad": 1, "Reshape": 1, "Expand": 1, "Tile": 1, "Slice": 1}
"""How many leading inputs of these ops carry the data onnxruntime quantizes; the rest (Clip's min and
max, Resize's roi and scales, Pad's pads...) are parameters it leaves in float by design."""
DATA_MOVERS = frozenset(
    {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Split", "Slice"}
)
"""Ops that only move their input's values: onnxruntime passes a quantization through them."""


def _runs_dequantized(fp32: onnx.ModelProto, quantized: onnx.ModelProto) -> Callable[[onnx.NodeProto], bool]:
    """Whether a QDQ node reads a DequantizeLinear output and no other float tensor (a float
    initializer is a weight left unquantized; a float activation is a producer left in float):
    onnxruntime fuses only such a node into an int8 kernel."""
    dq_outputs = {
        out for node in quantized.graph.node if node.op_type == runtime.DEQUANTIZE for out in node.output
    }
    float_tensors = {init.name for init in quantized.graph.initializer if init.data_type in FLOAT_TYPES} | {
        name for name, kind in _tensor_types(fp32).items() if kind in FLOAT_TYPES
    }

    def check(node: onnx.NodeProto) -> bool:
        operands = DATA_OPERANDS.get(node.op_type)
        inputs = [name for name in node.input[:operands] if name]
        return any(name in dq_outputs for name in inputs) and not any(
            name in float_tensors for name in inputs if name not in dq_outputs
        )

    return check


def leading_quantizable_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes onnxruntime can quantize on their own: an op it quantizes, not one that only follows a
    quantized input (FOLLOWER_OPS), with a float input (it leaves int64 arithmetic alone). An input
    of unknown type counts as float: the check refuses only what surely cannot quantize."""
    ops = (set(QUANTIZABLE_OPS) | set(DYNAMIC_OPS)) - FOLLOWER_OPS
    candidates = [node for node in model.graph.node if node.domain in ("", "ai.onnx") and node.op_type in ops]
    if not candidates:
        return []
    types = _tensor_types(model)
    if not all(name in types for node in candidates for name in node.input if name):
        types = _tensor_types(_with_inferred_types(model))  # only then: it copies the model
    return [
        node
        for node in candidates
        if any(types.get(name, onnx.TensorProto.FLOAT) in FLOAT_TYPES for name in node.input if name)
    ]


PLACEHOLDER_RANGE = (-1.0, 1.0)
"""The range `quantized_activations` gives every tensor: a range sets a tensor's scale and zero point,
never whether onnxruntime quantizes it."""


def quantized_activations(model_path: Path, config: QuantizeConfig, folder: Path) -> list[str]:
    """The activations `config` gives a range in `model_path`, known before any calibration, as
    onnxruntime's own quantizer decides them with a placeholder range for every computed tensor
    (a superset of what its calibrator selects; it reads those of the tensors it quantizes only):
    every computed input of a quantized op, and the outputs it requantizes or passes on quantized
    (QDQ's Transpose, Reshape, Gather...). About 39 a GPT-2 layer, where the first inputs of the
    ops that quantize alone were 18. QDQ: the tensors its quantizer marks (`_marked_for_qdq`);
    QOperator, which decides as it rewrites: the ranges of a quantization in `folder`, read as the
    manifest's are (`ranges.activation_ranges`)."""
    if config.format is Format.QDQ:
        return _marked_for_qdq(load_model_with_shape_infer(model_path), config)
    model = onnx.load(str(model_path))
    cache, quantized = folder / "placeholder-ranges.json", folder / "placeholder-ranges.onnx"
    save_tensors_data(_placeholder_ranges(model, config), cache)
    try:
        quantize(model_path, quantized, config, cache_path=cache, exclude=config.excluded_nodes)
        found = ranges.activation_ranges(onnx.load(str(quantized)), model, None)
    finally:
        cache.unlink(missing_ok=True)
        quantized.unlink(missing_ok=True)
    return list(dict.fromkeys(found_range.tensor for found_range in found))


def _placeholder_ranges(model: onnx.ModelProto, config: QuantizeConfig) -> TensorsData:
    """PLACEHOLDER_RANGE for every tensor but the weights (a Constant node's output may be quantized)."""
    weights = {init.name for init in model.graph.initializer}
    tensors = [value.name for value in model.graph.input] + [
        out for node in model.graph.node for out in node.output
    ]
    low, high = (np.array(end, np.float32) for end in PLACEHOLDER_RANGE)
    return TensorsData(
        config.ort_calibration,
        {name: TensorData(lowest=low, highest=high) for name in tensors if name and name not in weights},
    )


def _marked_for_qdq(model: onnx.ModelProto, config: QuantizeConfig) -> list[str]:
    """The activations onnxruntime's QDQ quantizer marks for a QuantizeLinear: the first pass of its
    quantize_model, each quantized node's op quantizer marking its inputs and outputs, on `model` as
    quantize_static loads it (load_model_with_shape_infer). It stops before the Q/DQ pairs go in,
    an insertion quadratic in the graph (an 80-layer Llama's 3,693: 467 s on a busy 2-core host,
    where this took 5.7), and before any weight is quantized. A tensor that a DequantizeLinear of
    the model makes is quantized already: skipped, as onnxruntime skips it."""
    quantizer = QDQQuantizer(
        model,
        config.per_channel,
        bool(config.reduce_range),
        config.ort_weight_type,
        config.ort_activation_type,
        _placeholder_ranges(model, config),
        [],
        list(dict.fromkeys((*config.excluded_nodes, *const_b_exclusions(model, config)))),
        QUANTIZABLE_OPS,
        config.extra_options(),
    )
    dequantized: set[str] = set()
    for node in quantizer.model.nodes():
        if quantizer.should_quantize_node(node):
            CreateQDQQuantizer(quantizer, node).quantize()
        if node.op_type == runtime.DEQUANTIZE:
            dequantized.update(node.output)
    return [
        name
        for name in quantizer.tensors_to_quantize
        if name not in quantizer.initializers and name not in dequantized
    ]


def _with_inferred_types(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception:  # onnx raises its own C++ types; the model's own value_info is all there is
        return model


def _tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor whose type the model states."""
    graph = model.graph
    types = {init.name: init.data_type for init in graph.initializer}
    for value in (*graph.input, *graph.value_info, *graph.output):
        if value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    return types


def _unique(name: str, taken: set[str]) -> str:
    candidate, suffix = name, 1
    while candidate in taken:
        candidate, suffix = f"{name}_{suffix}", suffix + 1
    taken.add(candidate)
    return candidate


def float_region(model: onnx.ModelProto, unfused: Collection[str], quantized: Collection[str]) -> list[str]:
    """The `quantized` nodes to keep in float so that the `unfused` ones (run in float between a
    DequantizeLinear and a QuantizeLinear: runtime.unfused_nodes) run among float neighbours: those
    connected to them through ELEMENTWISE_OPS, in graph order. A quantized neighbour is why a float
    node sits between Q/DQ (the quantizer puts Q/DQ on every tensor a quantized node reads or
    writes), and leaving only the unfused node itself in float changes nothing: GPT-2's GELU
    (Pow, Mul, Add, Mul, Tanh, Add, Mul) kept its Q/DQ pairs with Pow and Tanh excluded. The region
    stops at the ops worth an int8 kernel (MatMul, Gemm, Conv) and at any other op."""
    producers = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    region = {node.name for node in model.graph.node if node.name in set(unfused)}
    frontier = [node for node in model.graph.node if node.name in region]
    while frontier:
        node = frontier.pop()
        neighbours = [producers[name] for name in node.input if name in producers]
        neighbours += [reader for name in node.output for reader in consumers.get(name, ())]
        for neighbour in neighbours:
            if neighbour.op_type in ELEMENTWISE_OPS and neighbour.name not in region:
                region.add(neighbour.name)
                frontier.append(neighbour)
    wanted = set(quantized)
    return [node.name for node in model.graph.node if node.name in region and node.name in wanted]


def cheaper_side(model: onnx.ModelProto, nodes: Collection[str], quantized: Collection[str]) -> list[str]:
    """The `quantized` nodes on one side of `nodes` (an unfused node's sources, already in float with
    their elementwise neighbours: `float_region`) whose Q/DQ still sandwich them: those writing what
    `nodes` read (their output's Q/DQ feeds them a DequantizeLinear), or those reading what `nodes`
    write (their input's Q/DQ puts a QuantizeLinear after them), through FOLLOWER_OPS, which carry
    their input's quantization. One side in float is enough: the side of fewer weight values, the
    cheaper to leave in float (GPT-2's residual Add and ln_f, fused into one SkipLayerNormalization
    between the last MLP's projection and the head). In graph order; empty where neither side holds
    a quantized node."""
    producers = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    inside, wanted = set(nodes), set(quantized)
    group = [node for node in model.graph.node if node.name in inside]

    def across(node: onnx.NodeProto, step: Callable[[onnx.NodeProto], list[onnx.NodeProto]]) -> set[str]:
        found, frontier, seen = set[str](), step(node), set[str]()
        while frontier:
            neighbour = frontier.pop()
            if neighbour.name in seen or neighbour.name in inside:
                continue
            seen.add(neighbour.name)
            if neighbour.op_type in FOLLOWER_OPS:
                frontier.extend(step(neighbour))
            elif neighbour.name in wanted:
                found.add(neighbour.name)
        return found

    def upstream(node: onnx.NodeProto) -> list[onnx.NodeProto]:
        data = node.input[: DATA_OPERANDS.get(node.op_type)] if node.op_type in FOLLOWER_OPS else node.input
        return [producers[name] for name in data if name in producers]

    def downstream(node: onnx.NodeProto) -> list[onnx.NodeProto]:
        return [reader for name in node.output for reader in consumers.get(name, ())]

    writers = set[str]().union(*(across(node, upstream) for node in group))
    readers = set[str]().union(*(across(node, downstream) for node in group))
    sides = [side for side in (writers, readers) if side]
    chosen = min(sides, key=lambda side: weight_values(model, side), default=set())
    return [node.name for node in model.graph.node if node.name in chosen]


MAX_FLOAT_SIDE_SHARE = 0.1
"""The most of the weight values quantized by the trial the unfused stage started from that the sides
`cheaper_side` finds may hold, those of all its trials together, for a trial to keep them in float:
through this rule the model never keeps more than this share of its quantized weights in float (a
bound per trial, on what each still quantized, let three trials keep up to 27%). gpt2-lm's head is
about 7%; the digits MLP quantized S8S8 (no int8 Add on x86) would give up two of its three MatMuls,
21%, for its two bias Adds."""


WEIGHT_CARRIERS = frozenset({"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Cast"})
"""Ops that hand a constant on to its reader changed in layout or type only, from their first input
(an export's Transpose of a Linear's weight, a Cast of a float16 one, a DequantizeLinear of an int8
one): what the reader computes with is that constant's values (`weight_values`)."""


def weight_values(model: onnx.ModelProto, nodes: Collection[str]) -> int:
    """How many values the constants that `nodes` read hold (a MatMul's or Gemm's weights, biases),
    each constant once: read directly or through a chain of WEIGHT_CARRIERS and DequantizeLinears.
    Counting direct reads only, a MatMul reading its weight through a Transpose held none, and as
    a sandwich's side (`cheaper_side`) looked free beside one truly cheaper."""
    constants = graph_constants(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    names = set(nodes)
    read = {
        _constant_behind(name, constants, producers)
        for node in model.graph.node
        if node.name in names
        for name in node.input
    }
    return sum(math.prod(constants[name].dims) for name in read if name is not None)


def _constant_behind(
    tensor: str, constants: Mapping[str, onnx.TensorProto], producers: Mapping[str, onnx.NodeProto]
) -> str | None:
    """The constant `tensor` is, or is made from through WEIGHT_CARRIERS and DequantizeLinears
    (their first input); None for an activation."""
    while tensor not in constants:
        producer = producers.get(tensor)
        if producer is None or producer.op_type not in WEIGHT_CARRIERS | {runtime.DEQUANTIZE}:
            return None
        tensor = producer.input[0]
    return tensor
