"""The onnxruntime.quantization calls: prepare, calibrate once, quantize as often as the search asks.

Calibration is the slow part, so it runs once and its ranges are cached in onnxruntime's own
calibration cache format; every fallback trial re-quantizes from that cache
(`quantize_static(calibration_cache_path=...)`) with a different set of excluded nodes.

Its parts: loading and preparing the FP32 model (engine_model), calibration
(engine_calibration), and what the quantizers do to the graph's nodes (engine_graph).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import QuantFormat, quantize_dynamic, quantize_static
from onnxruntime.quantization.calibrate import (
    TensorData,
    TensorsData,
    save_tensors_data,
)
from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
from onnxruntime.quantization.quant_utils import load_model_with_shape_infer
from onnxruntime.quantization.registry import (
    CreateQDQQuantizer,
)

from quantship import runtime
from quantship.quantize import ranges
from quantship.quantize.config import Format, Mode, QuantizeConfig
from quantship.quantize.constants import graph_constants
from quantship.quantize.engine_graph import (
    DATA_MOVERS,
    DATA_OPERANDS,
    FOLLOWER_OPS,
    GEMM_AS_MATMUL,
    QUANTIZABLE_OPS,
    constant_behind,
)

# onnxruntime.quantization logs "Please consider pre-processing" through the root logger on every call.
logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))


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
    # Mode is static here: the recipe's own options are all that decide.
    fp32 = onnx.load(str(model_path)) if config.matmul_const_b_only or config.matmuls_only else None
    in_float = (
        [*const_b_exclusions(fp32, config), *matmuls_only_exclusions(fp32, config)]
        if fp32 is not None
        else []
    )
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
        and constant_behind(node.input[1], constants, producers) is None
    ]


def const_b_exclusions(model: onnx.ModelProto, config: QuantizeConfig) -> list[str]:
    """What MatMulConstBOnly keeps in float in `model`: its activation MatMuls, in static mode.
    onnxruntime 1.32 reads the option only in QOperator (QOpMatMul); its QDQ quantizer ignores it,
    so quantship excludes them itself, in both formats alike."""
    if config.mode is not Mode.STATIC or not config.matmul_const_b_only:
        return []
    return activation_matmuls(model)


MLP_ACTIVATIONS = frozenset({"Erf", "Tanh", "Sigmoid", "Gelu", "FastGelu", "BiasGelu", "QuickGelu"})
"""What a transformer's MLP computes its activation with: GELU's Erf or Tanh, SiLU's Sigmoid, or one
fused op. Their output, the FFN's down-projection's input, sits near 0 with a few channels far
larger (all-MiniLM-L6-v2: 24.6 in one of 1536 channels, whose median reaches 1.1)."""

MLP_ACTIVATION_TAIL = frozenset({"Mul", "Add", "Div", "Sub"})
"""The ops after an MLP_ACTIVATIONS op that finish the activation: `x * 0.5 * (1 + erf(x / sqrt 2))`."""
MLP_ACTIVATION_HOPS = 3
"""How many MLP_ACTIVATION_TAIL ops may stand between the activation op and the MatMul that reads it
(the exported Erf GELU: Add, Mul, Mul). DATA_MOVERS among them do not count: they change no value,
and an Erf GELU flattened by a Reshape before its down-projection's Gemm was not found."""


def mlp_activation_readers(model: onnx.ModelProto) -> list[str]:
    """The MatMuls and Gemms by a constant that read an MLP's activation (MLP_ACTIVATIONS, through at
    most MLP_ACTIVATION_HOPS ops of its tail, and any DATA_MOVERS): the FFN's down-projection. In
    graph order."""
    constants = graph_constants(model)
    producers = {out: node for node in model.graph.node for out in node.output}

    def after_activation(tensor: str) -> bool:
        frontier, fewest = [(producers.get(tensor), 0)], dict[str, int]()
        while frontier:
            node, hops = frontier.pop()
            if node is None or fewest.get(node.name, hops + 1) <= hops:
                continue  # seen by a path of no more tail ops
            fewest[node.name] = hops
            if node.op_type in MLP_ACTIVATIONS:
                return True
            if node.op_type in DATA_MOVERS:  # its data, not a Reshape's shape
                frontier.append((producers.get(node.input[0]), hops))
            elif node.op_type in MLP_ACTIVATION_TAIL and hops < MLP_ACTIVATION_HOPS:
                frontier += [(producers.get(name), hops + 1) for name in node.input if name not in constants]
        return False

    return [
        node.name
        for node in model.graph.node
        if node.op_type in ("MatMul", "Gemm")
        and len(node.input) > 1
        and constant_behind(node.input[1], constants, producers) is not None
        and after_activation(node.input[0])
    ]


MATMULS_ONLY_OPS = frozenset({"MatMul", "Gemm", "Gather"})
"""What MatMuls-only quantizes: the MatMuls and Gemms, and the Gather of an embedding table, a
weight looked up (quantized, all-MiniLM-L6-v2 is 33 MB, not 69, and as close to FP32)."""


def matmuls_only_exclusions(model: onnx.ModelProto, config: QuantizeConfig) -> list[str]:
    """What `matmuls_only` keeps in float in `model`, in static mode: every node of an op onnxruntime
    quantizes on its own (FOLLOWER_OPS follow their input as they are) but MATMULS_ONLY_OPS, and
    the readers of an MLP's activation (`mlp_activation_readers`). In graph order."""
    if config.mode is not Mode.STATIC or not config.matmuls_only:
        return []
    readers = set(mlp_activation_readers(model))
    return [
        node.name
        for node in model.graph.node
        if node.name in readers
        or (
            node.op_type in QUANTIZABLE_OPS
            and node.op_type not in FOLLOWER_OPS
            and node.op_type not in MATMULS_ONLY_OPS
        )
    ]


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
        list(
            dict.fromkeys(
                (
                    *config.excluded_nodes,
                    *const_b_exclusions(model, config),
                    *matmuls_only_exclusions(model, config),
                )
            )
        ),
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
