"""What a model's ONNX graph says before any call: the inputs that index an embedding's table
(`index_tables`), the outputs no input's values reach (`value_free_outputs`), and the ops meant to
run quantized that fell back to float (`fallback_ops`). Read once, at load, by `runner.Runner.load`
and the service.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from quantship import runtime

SHAPE_ONLY_OPS = frozenset({"Shape", "Size"})
"""Ops whose output depends on their input's shape, not its values."""


_VALUES_KEPT = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Cast"})
"""Ops whose first input's values reach their output unchanged (an id stays the id)."""
_INDEX_TYPES = frozenset({onnx.TensorProto.INT32, onnx.TensorProto.INT64})
"""Inputs of these types only: a float input cast to an index (-0.5 truncates to row 0) may be
negative by design."""


def index_tables(graph: onnx.GraphProto) -> dict[str, int]:
    """The graph's int32/int64 inputs that a Gather takes as indices into a constant table (an embedding's
    token ids), each with the table's rows along the gathered axis (the fewest, where it indexes
    several). The ids may reach the Gather reshaped (GPT-2 views them as [-1, seq]) or cast, and the
    table may be stored quantized: a DequantizeLinear of an initializer."""
    inputs = {value.name for value in graph.input if value.type.tensor_type.elem_type in _INDEX_TYPES}
    dims = {init.name: tuple(init.dims) for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    tables: dict[str, int] = {}
    for node in graph.node:
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        table, indices = node.input[0], node.input[1]
        while (carried := producer.get(indices)) is not None and carried.op_type in _VALUES_KEPT:
            indices = carried.input[0]
        if indices not in inputs or indices in dims:
            continue
        source = producer.get(table)
        if source is not None and source.op_type == runtime.DEQUANTIZE:
            table = source.input[0]
        shape = dims.get(table)
        axis = next((attribute.i for attribute in node.attribute if attribute.name == "axis"), 0)
        if not shape or not -len(shape) <= axis < len(shape):
            continue
        rows = shape[axis]
        tables[indices] = min(rows, tables.get(indices, rows))
    return tables


def value_free_outputs(graph: onnx.GraphProto) -> frozenset[str]:
    """Graph outputs computed from no input's values: from initializers, constants and input shapes
    (through SHAPE_ONLY_OPS) only, so equal for every request of one shape. The shape of a computed
    tensor reads values when that tensor does: NonZero's count, a Reshape to a shape read from the
    input. A node with a subgraph (If, Loop, Scan) counts as reading every input, since its body may
    name any outer value."""
    inputs = {i.name for i in graph.input}
    read = set(inputs)
    for node in graph.node:  # ONNX requires topological order
        if node.op_type in SHAPE_ONLY_OPS and (node.input[0] in inputs or node.input[0] not in read):
            continue  # the shape of a request's input, or of a tensor no input's values reach
        has_body = any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
        )
        if has_body or any(name in read for name in node.input):
            read.update(node.output)
    return frozenset(o.name for o in graph.output if o.name not in read)


def fallback_ops(
    model: Path | bytes, *, proto: onnx.ModelProto | None = None, providers: list[str] | None = None
) -> dict[str, int]:
    """Ops meant to run quantized that fall back to float, by op type, with 0 for the types that fused.

    `proto`: `model` already parsed. The counts come from `quantship.runtime.fallback_ops` (the
    optimized graph). The zeros matter: every op type meant to run quantized gets a series, so "no
    fallback" reads as 0, not as no data.
    """
    graph = (proto if proto is not None else runtime.load_proto(model)).graph
    counts = runtime.fallback_ops(model, providers=providers)
    return {**dict.fromkeys(sorted(_meant_quantized(graph)), 0), **counts}


def _meant_quantized(graph: onnx.GraphProto) -> set[str]:
    """Op types the graph as written runs between DequantizeLinear and QuantizeLinear (QDQ groups)."""
    producer = {out: node.op_type for node in graph.node for out in node.output}
    feeds_quantize = {name for node in graph.node if node.op_type == runtime.QUANTIZE for name in node.input}
    return {
        node.op_type
        for node in graph.node
        if node.op_type not in (runtime.QUANTIZE, runtime.DEQUANTIZE)
        and any(producer.get(name) == runtime.DEQUANTIZE for name in node.input)
        and any(name in feeds_quantize for name in node.output)
    }
