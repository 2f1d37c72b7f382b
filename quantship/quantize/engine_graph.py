"""What onnxruntime's quantizers do to a graph's nodes, read from the graph: the ops they quantize
and those that only follow a quantized input, which FP32 nodes a quantized model runs quantized, the
float region and the cheaper side around an unfused node, and the weight values nodes read."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping

import onnx
from onnxruntime.quantization.registry import (
    IntegerOpsRegistry,
    QDQRegistry,
    QLinearOpsRegistry,
)

from quantship import runtime
from quantship.quantize.config import Format, Mode
from quantship.quantize.constants import graph_constants

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
        constant_behind(name, constants, producers)
        for node in model.graph.node
        if node.name in names
        for name in node.input
    }
    return sum(math.prod(constants[name].dims) for name in read if name is not None)


def constant_behind(
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
