"""onnxruntime sessions as quantship serves them, and what the runtime did to a quantized graph.

The accuracy gate (quantize/) and the server (server/) both build sessions here, so the gate
judges the exact kernels that will serve: with graph optimizations on, onnxruntime fuses
QDQ patterns into real int8 kernels, which can be less accurate than the simulated QDQ graph
on CPUs without VNNI. `fallback_ops` reads the optimized graph to find quantized ops that did
not get an int8 kernel.
"""

from __future__ import annotations

import collections
import platform
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from quantship import choices

QUANTIZE = "QuantizeLinear"
DEQUANTIZE = "DequantizeLinear"
CPU_PROVIDER = "CPUExecutionProvider"

# Flags that decide how int8 matmuls run on x86 (VNNI/AMX do 8-bit dot products without
# saturating 16-bit intermediates) and on ARM (dot-product / i8mm instructions).
_INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


ALLOW_SPINNING = "session.intra_op.allow_spinning"
"""onnxruntime's session config key: whether its intra-op pool's threads spin while they wait for work
(its default, "1") or sleep ("0")."""


def session_options(
    *,
    threads: int | None = None,
    spinning: bool = choices.ONNXRUNTIME_SPINNING,
    optimized_model_path: Path | None = None,
) -> ort.SessionOptions:
    """Options for serving: every graph optimization on, so int8 kernels are fused as in production."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # onnxruntime's warnings go to stderr unformatted; errors still raise
    if threads:
        options.intra_op_num_threads = threads
    options.add_session_config_entry(ALLOW_SPINNING, "1" if spinning else "0")
    if optimized_model_path is not None:
        options.optimized_model_filepath = str(optimized_model_path)
    return options


def create_session(
    model: Path | bytes,
    *,
    providers: list[str] | None = None,
    threads: int | None = None,
    spinning: bool = choices.ONNXRUNTIME_SPINNING,
) -> ort.InferenceSession:
    return ort.InferenceSession(
        _source(model),
        session_options(threads=threads, spinning=spinning),
        providers=providers or [CPU_PROVIDER],
    )


def load_proto(model: Path | bytes) -> onnx.ModelProto:
    """The model's graph: parsed from its bytes (what the server verified and serves), or read from
    its file without external data (an artifact's models hold their weights inline)."""
    if isinstance(model, bytes):
        return onnx.load_from_string(model)
    return onnx.load(str(model), load_external_data=False)


def keeps_weights_outside(model: onnx.ModelProto) -> bool:
    """Whether any tensor of the model (in subgraphs too) keeps its data in a file beside it. An
    artifact's models hold theirs inline: a session built from a model's bytes would look for such a
    file in the working directory, never hashed."""
    return any(tensor.data_location == onnx.TensorProto.EXTERNAL for tensor in _tensors(model.graph))


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a graph holds: initializers and constants' attributes, dense or sparse (values and
    indices), in subgraphs too."""
    yield from graph.initializer
    yield from _of_sparse(graph.sparse_initializer)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("sparse_tensor"):
                yield from _of_sparse([attribute.sparse_tensor])
            yield from _of_sparse(attribute.sparse_tensors)
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph)


def _of_sparse(sparse: Iterable[onnx.SparseTensorProto]) -> Iterator[onnx.TensorProto]:
    for tensor in sparse:
        yield tensor.values
        yield tensor.indices


def _source(model: Path | bytes) -> str | bytes:
    """The model as onnxruntime's session takes it: a path's string, or the bytes themselves."""
    return model if isinstance(model, bytes) else str(model)


def top1(output: np.ndarray) -> np.ndarray | None:
    """A classifier's class id per row: the id itself (an integer output such as a `label`, one value
    a row), or the argmax of [N, classes] scores; None when the output is neither, or has no elements
    (a token model's answer to a sequence of length 0). An answer per position (token ids [N, seq],
    scores [N, seq, classes]) is no class per row: read at its first position, a token model was
    gated and shadowed on its first token only (hunt-H H7); agreement.positions makes each position a
    row of its own first. Label feedback reads answers through this one definition."""
    if not output.size:
        return None
    if output.ndim == 1 and output.dtype.kind in "iu":  # a label a row (digits' `label`): as it is
        return output
    rows = output.reshape(len(output), -1) if output.ndim else output.reshape(1, 1)
    if output.dtype.kind in "iu":  # integers (np.issubdtype says the same, at ~10x the cost a request)
        return rows[:, 0] if rows.shape[1] == 1 else None
    if output.ndim == 2 and output.shape[-1] > 1:
        return np.argmax(output, axis=-1)
    return None


@dataclass(frozen=True)
class Hardware:
    """Where a verdict about int8 accuracy or speed was measured: it holds for that hardware only."""

    machine: str
    cpu: str
    int8_flags: tuple[str, ...]
    provider: str

    @property
    def has_vnni(self) -> bool:
        return any(flag in self.int8_flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))

    def to_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "cpu": self.cpu,
            "int8_flags": list(self.int8_flags),
            "vnni": self.has_vnni,
            "provider": self.provider,
            "onnxruntime": ort.__version__,
            "graph_optimization_level": "ORT_ENABLE_ALL",
        }


def hardware(provider: str = CPU_PROVIDER) -> Hardware:
    cpu, flags = platform.processor() or "unknown", set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and cpu in ("unknown", ""):
                cpu = value.strip()
            elif key.strip() in ("flags", "Features"):
                flags.update(value.split())
    except OSError:
        pass
    return Hardware(platform.machine(), cpu, tuple(f for f in _INT8_FLAGS if f in flags), provider)


ROW_MIXING_OPS = frozenset({"DynamicQuantizeLinear", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM"})
"""Ops that compute one quantization scale over their whole input: every row of a call. A row's
answer then depends on the rows it runs with (MiniLM dynamic INT8: cosine 0.987 to its own answer
alone, as large as the whole quantization error)."""


def rows_mix(model: Path | bytes | onnx.ModelProto) -> bool:
    """Whether a row's outputs depend on the other rows of its call (dynamic quantization)."""
    proto = model if isinstance(model, onnx.ModelProto) else load_proto(model)
    return any(node.op_type in ROW_MIXING_OPS for node in proto.graph.node)


def fallback_ops(model: Path | bytes, *, providers: list[str] | None = None) -> dict[str, int]:
    """Ops meant to run quantized that run in float, by op type.

    In the optimized graph, a float compute node fed by DequantizeLinear and feeding
    QuantizeLinear is a QDQ group onnxruntime could not fuse into an int8 kernel: it pays for
    the conversions and gains nothing. With a non-CPU provider first in `providers`, nodes the
    session assigned to the CPU provider count too, under `cpu:<op_type>`.
    """
    providers = providers or [CPU_PROVIDER]
    record_assignment = providers[0] != CPU_PROVIDER
    session, graph = _optimized(model, providers, record_assignment=record_assignment)
    counts = collections.Counter(node.op_type for node in _unfused_qdq_nodes(graph))
    if record_assignment:
        for subgraph in session.get_provider_graph_assignment_info():
            if subgraph.ep_name == CPU_PROVIDER:
                counts.update(f"cpu:{node.op_type}" for node in subgraph.get_nodes())
    return dict(sorted(counts.items()))


def unfused_nodes(model: Path | bytes) -> list[str]:
    """The names of the nodes `fallback_ops` counts on the CPU provider, in graph order: onnxruntime
    keeps the names of the nodes it leaves as they are, so they name the quantized model's nodes;
    a node it fused from several (a SkipLayerNormalization) has a name of its own."""
    _, graph = _optimized(model, [CPU_PROVIDER])
    return [node.name for node in _unfused_qdq_nodes(graph)]


MAX_FUSED_NODES = 16
"""The most nodes of the quantized model that `unfused_sources` traces one fused node back to: past
it, what it found is no one fusion's pattern."""


def unfused_sources(model: Path | bytes) -> list[tuple[str, ...]]:
    """The quantized model's nodes behind each node `fallback_ops` counts on the CPU provider: the
    node itself where onnxruntime kept it, else the nodes it fused it from (a SkipLayerNormalization:
    the residual Add and the LayerNormalization). Those are what must stay in float to leave it in
    float; empty where the fused node cannot be traced back."""
    _, graph = _optimized(model, [CPU_PROVIDER])
    quantized = load_proto(model).graph
    names = {node.name for node in quantized.node}
    kept = {node.name for node in graph.node}
    fused = [node for node in graph.node if node.name not in names]
    return [
        (node.name,)
        if node.name in names
        else _fused_from(node, [n for n in fused if n is not node], quantized, kept)
        for node in _unfused_qdq_nodes(graph)
    ]


def _fused_from(
    fused: onnx.NodeProto, others: list[onnx.NodeProto], graph: onnx.GraphProto, kept: set[str]
) -> tuple[str, ...]:
    """The nodes of `graph` that `fused` replaced: nodes the optimizer did not keep (`kept` names the
    optimized graph's), never a Q/DQ, that compute `fused`'s outputs or are computed from its inputs
    alone. Both ways: the optimizer renames an input where it duplicates a DequantizeLinear for each
    reader (`X_DequantizeLinear_Output/duplicated`), an output where it moves a QuantizeLinear up to
    it (GPT-2's ln_f output became `..._pre_q`). Not those that compute the outputs of the `others`
    (the optimizer's other new nodes): a float GELU that reads only a residual's skip input, fused
    into a Gelu of its own, is no part of the SkipLayerNormalization."""
    replaced = [n for n in graph.node if n.name not in kept and n.op_type not in (QUANTIZE, DEQUANTIZE)]
    found = _computing(fused.output, set(fused.input), replaced)
    found |= _computed_from(fused.input, replaced, graph) - {
        name for other in others for name in _computing(other.output, set(other.input), replaced)
    }
    return tuple(n.name for n in replaced if n.name in found) if len(found) <= MAX_FUSED_NODES else ()


def _computing(outputs: Iterable[str], inputs: set[str], nodes: list[onnx.NodeProto]) -> set[str]:
    """The `nodes` that the `outputs` are computed by, walked back to the `inputs`."""
    producers = {out: node for node in nodes for out in node.output}
    found: set[str] = set()
    tensors = list(outputs)
    while tensors and len(found) <= MAX_FUSED_NODES:
        node = producers.get(tensor := tensors.pop())
        if tensor not in inputs and node is not None and node.name not in found:
            found.add(node.name)
            tensors.extend(node.input)
    return found


def _computed_from(inputs: Iterable[str], nodes: list[onnx.NodeProto], graph: onnx.GraphProto) -> set[str]:
    """The `nodes` computed from the `inputs` and constants alone, one from another (in the graph's
    topological order, as ONNX requires)."""
    constants = {init.name for init in graph.initializer}
    constants.update(out for node in graph.node if node.op_type == "Constant" for out in node.output)
    known, found = set(inputs), set[str]()
    for node in nodes:
        data = [name for name in node.input if name and name not in constants]
        if data and all(name in known for name in data):
            found.add(node.name)
            known.update(node.output)
    return found


def _optimized(
    model: Path | bytes, providers: list[str], *, record_assignment: bool = False
) -> tuple[ort.InferenceSession, onnx.GraphProto]:
    """A serving session of `model`, and the graph it optimized (as served: every optimization on)."""
    with tempfile.TemporaryDirectory(prefix="quantship-opt-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        options = session_options(optimized_model_path=optimized)
        if record_assignment:
            options.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
        session = ort.InferenceSession(_source(model), options, providers=providers)
        return session, onnx.load(str(optimized), load_external_data=False).graph


def _unfused_qdq_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    producer = {out: node.op_type for node in graph.node for out in node.output}
    consumers: dict[str, list[str]] = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node.op_type)
    unfused = []
    for node in graph.node:
        if node.op_type in (QUANTIZE, DEQUANTIZE):
            continue
        fed_by_dq = any(producer.get(name) == DEQUANTIZE for name in node.input)
        feeds_q = any(QUANTIZE in consumers.get(name, ()) for name in node.output)
        if fed_by_dq and feeds_q:
            unfused.append(node)
    return unfused
