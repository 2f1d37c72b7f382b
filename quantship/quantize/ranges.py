"""The activation ranges a quantized model can represent, read from its QuantizeLinear nodes and,
in a QOperator model, from the output scale and zero point of its QLinear ops.

The server counts values outside these ranges (the clipped-activation SLI), so they must be the
ranges the served graph really clamps to: scale * (qmin - zero_point) .. scale * (qmax - zero_point),
not the raw calibration min/max (the quantizer widens those to include 0 and rounds them).

A QOperator model quantizes only its float inputs with QuantizeLinear; every tensor after that is
requantized inside a QLinear op's kernel (the output scale and zero point are the op's inputs), so
its range belongs to the op's int8 output (`ActivationRange.requantized_by`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization.calibrate import TensorsData
from onnxruntime.quantization.quant_utils import QUANT_INPUT_SUFFIX

from quantship import runtime
from quantship.activations import ActivationRange
from quantship.quantize.constants import graph_constants
from quantship.quantize.outputs import FOLDED_ACTIVATIONS

_SCALE_SUFFIX = "_scale"  # onnxruntime names a tensor's scale <tensor>_scale, after the tensor it calibrated

OUTPUT_SCALE_INPUT = {
    "QLinearConv": 6,
    "QLinearConvTranspose": 6,
    "QLinearMatMul": 6,
    "QLinearAdd": 6,
    "QLinearMul": 6,
    "QGemm": 7,
    "QLinearWhere": 7,
    "QLinearSoftmax": 3,
    "QLinearSigmoid": 3,
    "QLinearLeakyRelu": 3,
    "QLinearAveragePool": 3,
    "QLinearGlobalAveragePool": 3,
    "QLinearReduceMean": 3,
    "QLinearConcat": 0,
}
"""Where each requantizing op of onnxruntime's QOperator format takes its output scale (the zero
point follows it), from the ONNX and com.microsoft operator specifications. Int8 ops without one
(MaxPool, Reshape, Transpose, ...) pass codes through on their input's scale: they cannot clip."""

UNQUANTIZABLE_MAGNITUDE = 1e30
"""A calibrated activation reaching past +-this holds a sentinel, not data: an additive attention mask
adds finfo(float32).min (-3.4e38) to the scores it hides (Hugging Face exports). No INT8 scale carries
both: the scale of [-3.4e38, 10] is about 1.3e36 per code, every real score rounds to the zero point
and static INT8 of such a BERT lost 70% of its accuracy. Trained activations stay far below 1e30;
past finfo.max / 2 a histogram's symmetric range overflows float32 (numpy: "Too many bins")."""

MASK_RATIO = 10.0
"""An operand of an Add (or a branch of a Where) whose sum reaches a Softmax is an additive mask when
its most negative value is at least this many times the other operand's magnitude, and its largest
no more than it: `(1 - mask) * -10000.0` (older transformers, TF exports) or -1e9 beside attention
scores. One INT8 scale then spans the sum, and the scores get 2 * 255 / (ratio + 1) of its codes:
at this ratio 46, where alone they would have 255. Measured: scores of +-100 beside -10000 (5
codes) lost 22% of a test model's accuracy, BERT's +-10 (one code) 70%. A negative bias that large
before a Softmax would crush the scores the same way, so a false find costs float nodes, not
accuracy; trained biases (relative positions) stay near the scores' magnitude."""

MASK_PATH_OPS = frozenset(
    {"Add", "Reshape", "Cast", "Unsqueeze", "Squeeze", "Transpose", "Expand", "Identity"}
)
"""Ops an additive mask's sum may pass through on its way to the Softmax (and the mask itself, back
to what makes it): they move or add values, and keep the mask's magnitude. So does a Mul or Div of
the sum by a scalar constant on its way (`(scores + mask) * 0.25`): it keeps the ratio."""
SCALING_OPS = frozenset({"Mul", "Div"})
MASK_PATH_HOPS = 3
"""How many MASK_PATH_OPS may stand between the masking Add or Where and its Softmax."""
MASK_MAKER_HOPS = 3
"""How many MASK_PATH_OPS may stand between what makes a mask (its Where or Mul) and the Add or
Where it masks (an Unsqueeze or two and a Cast, in exports)."""
MASK_CONSTANT = -1e4
"""A constant this negative or more (-1e9, finfo.min, -inf) that a Where, Mul or Sub makes into an
operand of an Add (or a Where's branch) reaching a Softmax is a mask by the graph alone, whatever
the calibration rows hold: where none is padded the mask calibrates to [0, 0] and its range shows
nothing, and padded requests would then have their masked scores clamped, not removed. -10000 is
the mildest masking constant in use (`(1 - mask) * -10000.0`); exp(-10000) is already 0, so no
trained bias before a Softmax comes near it."""
MASK_MAKERS = frozenset({"Where", "Mul", "Sub"})
"""The ops that make a mask of a constant: Where(padded, lowest, 0), (1 - mask) * lowest,
mask * c - c."""
SOFTMAX_OPS = frozenset({"Softmax", "LogSoftmax"})
MASKING_OPS = frozenset({"Add", "Where"})
"""Where a mask meets the scores: an Add's two operands, a Where's two branches."""

OUTPUT_BOUNDS = {"QLinearSoftmax": (0.0, 1.0), "QLinearSigmoid": (0.0, 1.0)}
"""Ops whose output is bounded by what they compute: recorded as the range's activation bounds, so
an end code that only stands for the bound (a sure prediction's 1.0) is not counted as clipping."""


def activation_ranges(
    quantized: onnx.ModelProto, fp32: onnx.ModelProto, calibrated: TensorsData | None
) -> list[ActivationRange]:
    """One range a quantized tensor, in graph order. onnxruntime may quantize a tensor once per
    consumer (DedicatedQDQPair), each QuantizeLinear with the same scale and zero point: the same
    range, kept once. Two that differ (per-consumer overrides, which quantship never sets) are both
    kept, and the manifest's writer refuses them (`manifest_schema._twice_problem`)."""
    graph = _Graphs(quantized, fp32, calibrated)
    ranges = []
    for node in quantized.graph.node:
        if node.op_type == runtime.QUANTIZE and node.input[0] not in graph.constants:
            # (weights are quantized once, offline; only activations can clip at run time)
            found = _quantize_linear_range(node, graph)
        elif node.op_type in OUTPUT_SCALE_INPUT:
            found = _requantized_range(node, graph)
        else:
            continue
        if found is not None:
            ranges.append(found)
    return list(dict.fromkeys(ranges))


def model_tensor(activation: ActivationRange) -> str:
    """The tensor of the model as given that a range is of, for people to find in it. The range names
    the quantized graph's tensor, which the server observes and labels its metrics with: a QLinear
    op's int8 output (QOperator) stands for the FP32 `float_tensor`, and where a graph output is
    quantized, onnxruntime renames what writes it `<output>_QuantizeLinear_Input` (EfficientNet-Lite0's
    `logits_QuantizeLinear_Input`), its DequantizeLinear writing the output's own name."""
    if activation.float_tensor is not None:
        return activation.float_tensor
    return activation.tensor.removesuffix(QUANT_INPUT_SUFFIX)


class _Graphs:
    """What the range readers look up in the quantized and the FP32 graph."""

    def __init__(self, quantized: onnx.ModelProto, fp32: onnx.ModelProto, calibrated: TensorsData | None):
        self.fp32 = fp32
        self.calibrated = calibrated
        self.constants = {init.name: numpy_helper.to_array(init) for init in quantized.graph.initializer}
        self.producers = {out: node for node in quantized.graph.node for out in node.output}
        self.fp32_producers = {out: node for node in fp32.graph.node for out in node.output}
        self.fp32_consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in fp32.graph.node:
            for name in node.input:
                self.fp32_consumers.setdefault(name, []).append(node)


def _quantize_linear_range(node: onnx.NodeProto, graph: _Graphs) -> ActivationRange | None:
    """A QuantizeLinear's float input: what the served graph quantizes, observed as it is."""
    scale_name = node.input[1]
    meant = scale_name.removesuffix(_SCALE_SUFFIX)
    activation = _folded_activation(
        graph.producers.get(node.input[0]), graph.fp32_producers.get(meant), graph.fp32
    )
    return _range(node.input[0], node, 1, graph, _calibrated(graph.calibrated, meant), activation)


def _requantized_range(node: onnx.NodeProto, graph: _Graphs) -> ActivationRange | None:
    """A QLinear op's int8 output (QOperator). Its scale is named after the FP32 tensor calibrated
    for it; when a Relu/Clip followed that tensor and the quantizer fused it into the op (its output
    is gone from the quantized graph), the op's output stands for the activation's output, and the
    activation's bounds are the range's own ends, not clipping."""
    at = OUTPUT_SCALE_INPUT[node.op_type]
    if len(node.input) <= at or not node.input[at]:
        return None  # a QGemm without an output scale returns float: nothing requantized
    meant = node.input[at].removesuffix(_SCALE_SUFFIX)
    fused = _fused_activation(meant, graph)
    float_tensor = meant if fused is None else fused.output[0]
    if fused is not None:
        activation = _activation_bounds(fused, graph.fp32)
    else:
        activation = OUTPUT_BOUNDS.get(node.op_type, (None, None))
    found = _range(node.output[0], node, at, graph, _calibrated(graph.calibrated, float_tensor), activation)
    if found is None:
        return None
    return dataclasses.replace(found, requantized_by=node.op_type, float_tensor=float_tensor)


def _range(
    tensor: str,
    node: onnx.NodeProto,
    at: int,
    graph: _Graphs,
    calibrated: tuple[float | None, float | None],
    activation: tuple[float | None, float | None],
) -> ActivationRange | None:
    """The range `node` quantizes `tensor` to, from its scale at input `at` and zero point after it."""
    scale = graph.constants.get(node.input[at])
    zero_point = graph.constants.get(node.input[at + 1]) if len(node.input) > at + 1 else None
    if scale is None or scale.size != 1:
        return None
    qtype = zero_point.dtype if zero_point is not None else np.dtype(np.uint8)
    zp = int(zero_point) if zero_point is not None else 0
    info = np.iinfo(qtype)
    return ActivationRange(
        tensor=tensor,
        low=float(scale) * (info.min - zp),
        high=float(scale) * (info.max - zp),
        scale=float(scale),
        calibrated_min=calibrated[0],
        calibrated_max=calibrated[1],
        activation_low=activation[0],
        activation_high=activation[1],
        zero_point=zp if node.op_type != runtime.QUANTIZE else None,
    )


def _fused_activation(meant: str, graph: _Graphs) -> onnx.NodeProto | None:
    """The FP32 Relu/Clip that alone read `meant` and is gone from the quantized graph."""
    consumers = graph.fp32_consumers.get(meant, [])
    if len(consumers) != 1 or consumers[0].op_type not in FOLDED_ACTIVATIONS:
        return None
    return None if consumers[0].output[0] in graph.producers else consumers[0]


def _calibrated(calibrated: TensorsData | None, tensor: str) -> tuple[float | None, float | None]:
    if calibrated is None or tensor not in calibrated:
        return None, None
    low, high = calibrated[tensor].range_value
    return float(np.min(low)), float(np.max(high))


def _folded_activation(
    producer: onnx.NodeProto | None, fp32_producer: onnx.NodeProto | None, fp32: onnx.ModelProto
) -> tuple[float | None, float | None]:
    """Bounds of a Relu/Clip the quantizer removed: the range was calibrated on the activation's
    output, but the activation is gone and the QuantizeLinear now reads what fed it."""
    if fp32_producer is None or not folded(producer, fp32_producer):
        return None, None
    return _activation_bounds(fp32_producer, fp32)


def folded(producer: onnx.NodeProto | None, fp32_producer: onnx.NodeProto | None) -> bool:
    """Whether the quantizer removed the Relu/Clip that writes a tensor in the FP32 model
    (`fp32_producer`): the tensor keeps its name, now written by what fed the activation
    (`producer`, in the quantized graph), and carries the activation's range."""
    if fp32_producer is None or fp32_producer.op_type not in FOLDED_ACTIVATIONS:
        return False
    return producer is None or producer.op_type != fp32_producer.op_type  # else the activation still runs


def _activation_bounds(
    activation: onnx.NodeProto, fp32: onnx.ModelProto
) -> tuple[float | None, float | None]:
    """A Relu's or Clip's bounds (a Clip's from its constant min/max inputs: initializers, or
    Constant nodes where pre-processing, which folds those, was skipped)."""
    if activation.op_type == "Relu":
        return 0.0, None
    inputs = list(activation.input)
    tensors = graph_constants(fp32)
    bounds = {name: float(numpy_helper.to_array(tensors[name])) for name in inputs[1:] if name in tensors}
    low = bounds.get(inputs[1]) if len(inputs) > 1 else None
    high = bounds.get(inputs[2]) if len(inputs) > 2 else None
    return low, high


def unquantizable(calibrated: TensorsData) -> dict[str, tuple[float, float]]:
    """The calibrated tensors whose range reaches UNQUANTIZABLE_MAGNITUDE, with that range."""
    found = {}
    for tensor in calibrated:
        low, high = _calibrated(calibrated, tensor)
        if max(abs(low or 0.0), abs(high or 0.0)) >= UNQUANTIZABLE_MAGNITUDE:
            found[tensor] = (low or 0.0, high or 0.0)
    return found


def nodes_around(model: onnx.ModelProto, tensors: Iterable[str]) -> tuple[str, ...]:
    """The nodes that produce or read `tensors`, in graph order: left in float, none of them puts a
    QuantizeLinear on those tensors (a quantized Softmax would quantize the masked scores it reads).
    A Constant (the mask's finfo.min itself) is never quantized: not named."""
    wanted = set(tensors)
    return tuple(
        node.name
        for node in model.graph.node
        if node.op_type != "Constant" and wanted & {*node.input, *node.output}
    )


@dataclasses.dataclass(frozen=True)
class Mask:
    """An additive mask (MASK_RATIO) and the nodes kept in float for it."""

    tensor: str
    low: float
    high: float
    data: float
    """The magnitude of the operand it is added to (the scores)."""
    nodes: tuple[str, ...]
    """What makes the mask (back through MASK_PATH_OPS), the Add or Where, and the path to the
    Softmax, the Softmax included."""


def additive_masks(model: onnx.ModelProto, calibrated: TensorsData) -> list[Mask]:
    """The additive masks of `model` by `calibrated`'s ranges (an initializer's by its value) or
    made of a MASK_CONSTANT, in graph order."""
    initializers = {init.name: init for init in model.graph.initializer}
    values = _constant_values(model)
    constants = {name: (float(value.min()), float(value.max())) for name, value in values.items()}
    producers = {out: node for node in model.graph.node for out in node.output}

    def span(tensor: str) -> tuple[float, float] | None:
        if tensor in initializers:
            value = numpy_helper.to_array(initializers[tensor])
            if not value.size or value.dtype.kind != "f":
                return None
            return float(value.min()), float(value.max())
        low, high = _calibrated(calibrated, tensor)
        return None if low is None or high is None else (low, high)

    masks = []
    for node, path in _mask_sites(model, values):
        operands = list(node.input[:2] if node.op_type == "Add" else node.input[1:3])
        spans = [span(name) for name in operands]
        for name, mine, other in ((operands[0], spans[0], spans[1]), (operands[1], spans[1], spans[0])):
            if mine is None or other is None:
                continue
            data = max(abs(other[0]), abs(other[1]))
            made = _made_by(name, producers)
            constant = _masking_constant(made[0], constants) if made else None
            by_range = data > 0 and mine[0] <= -MASK_RATIO * data and mine[1] <= data
            if by_range or constant is not None:
                low = min(mine[0], constant if constant is not None else mine[0])
                nodes = tuple(n.name for n in (*made, *path))
                masks.append(Mask(name, low, mine[1], data, nodes))
    return masks


def possible_mask_nodes(model: onnx.ModelProto) -> tuple[str, ...]:
    """Every node `additive_masks` could keep in float, as the graph tells before any calibration
    (which operand is a mask is the calibration's to say): each mask site's path to its Softmax and
    what makes either of its operands, in graph order."""
    producers = {out: node for node in model.graph.node for out in node.output}
    named = set()
    for node, path in _mask_sites(model, _constant_values(model)):
        operands = node.input[:2] if node.op_type == "Add" else node.input[1:3]
        named |= {n.name for n in path} | {n.name for name in operands for n in _made_by(name, producers)}
    return tuple(node.name for node in model.graph.node if node.name in named)


def _constant_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The float initializers and Constant node outputs of `model`, with their values."""
    values = {name: numpy_helper.to_array(tensor) for name, tensor in graph_constants(model).items()}
    return {name: value for name, value in values.items() if value.size and value.dtype.kind == "f"}


def _masking_constant(maker: onnx.NodeProto, constants: dict[str, tuple[float, float]]) -> float | None:
    """The MASK_CONSTANT (or lower) that `maker`, a MASK_MAKERS op, puts into its output: a
    constant operand's lowest value, or for a Sub's subtrahend its highest, negated."""
    if maker.op_type not in MASK_MAKERS:
        return None
    lows = [
        -constants[name][1] if maker.op_type == "Sub" and index == 1 else constants[name][0]
        for index, name in enumerate(maker.input)
        if name in constants
    ]
    return min(lows) if lows and min(lows) <= MASK_CONSTANT else None


def _mask_sites(
    model: onnx.ModelProto, values: dict[str, np.ndarray]
) -> list[tuple[onnx.NodeProto, list[onnx.NodeProto]]]:
    """Each Add or Where with two operands that reaches a Softmax, with its path there."""
    scalars = {name for name, value in values.items() if value.size == 1}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    sites = []
    for node in model.graph.node:
        operands = node.input[:2] if node.op_type == "Add" else node.input[1:3]
        if node.op_type not in MASKING_OPS or len(operands) != 2:
            continue
        path = _into_softmax(node, consumers, MASK_PATH_HOPS, scalars)
        if path is not None:
            sites.append((node, path))
    return sites


def _into_softmax(
    node: onnx.NodeProto, consumers: dict[str, list[onnx.NodeProto]], hops: int, scalars: set[str]
) -> list[onnx.NodeProto] | None:
    """`node` and every node after it on a path to a Softmax through at most `hops` MASK_PATH_OPS
    (or SCALING_OPS by one of the `scalars`), the Softmax included; None when no such path."""
    after: list[onnx.NodeProto] = []
    for reader in consumers.get(node.output[0], []):
        if reader.op_type in SOFTMAX_OPS:
            after.append(reader)
        elif hops > 0 and (reader.op_type in MASK_PATH_OPS or _scales(reader, node.output[0], scalars)):
            after += _into_softmax(reader, consumers, hops - 1, scalars) or []
    return [node, *after] if after else None


def _scales(reader: onnx.NodeProto, tensor: str, scalars: set[str]) -> bool:
    """Whether `reader` multiplies `tensor` by one of the `scalars`, or divides it by one."""
    if reader.op_type not in SCALING_OPS or len(reader.input) != 2:
        return False
    by = reader.input[1] if reader.input[0] == tensor else reader.input[0]
    return by in scalars and (reader.op_type == "Mul" or reader.input[0] == tensor)


def _made_by(tensor: str, producers: dict[str, onnx.NodeProto]) -> list[onnx.NodeProto]:
    """The nodes that make `tensor`: its producer and, back through at most MASK_MAKER_HOPS
    MASK_PATH_OPS of one data input, theirs (a Where of -10000, unsqueezed); none for a Constant or
    an initializer, never quantized."""
    made: list[onnx.NodeProto] = []  # MASK_PATH_OPS only, until what makes the mask goes first
    producer = producers.get(tensor)
    while producer is not None and producer.op_type != "Constant":
        moves = producer.op_type in MASK_PATH_OPS - {"Add"}
        if moves and len(made) == MASK_MAKER_HOPS:
            break
        made.insert(0, producer)
        if not moves:
            break
        producer = producers.get(producer.input[0])
    return made
