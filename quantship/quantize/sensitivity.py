"""Per-tensor quantization error, from onnxruntime.quantization.qdq_loss_debug.

Activations: `xmodel_err` is the SQNR (dB) of a tensor in the QDQ model against the same tensor
in the FP32 model, on the same inputs: the error that has built up by that point. `qdq_err`
(before vs after one QDQ pair) misleads where a Relu/Clip is folded into the range, so nodes are
ranked by `xmodel_err` of their output, lowest first. Weights: SQNR of dequantized vs float, with
the node that reads the weight.

Ranking by the error each node adds instead (its output's SQNR below the lowest of its inputs', an
exact or unmeasured input counting as 50 dB, one ideal 8-bit rounding) was measured against this,
`--strategy fallback`, and lost (2026-12-07, AMD EPYC with VNNI, load 2-5): gpt2-lm
(`--no-matmuls-only --metric kl_divergence --threshold 0.00415 --max-trials 12`) passed in trial 12
with 6 nodes in float, against trial 9 with 3 (attention's MatMul_1s and a c_proj first here, its
embedding Gathers there); all-MiniLM-L6-v2 (`--no-matmuls-only`, 8 and 16 trials) passed in
neither, its node trials reaching cosine mean 0.769 against 0.779. It won on EfficientNet-Lite0
per-tensor (`--threshold 0.85`, 8 and 12 trials): trials 8 and 10, the stem and block 0 in float
(KL 0.756 -> 0.300), where this passed in neither. `xmodel_err` includes the tensor's own QDQ
rounding, so MiniLM's FFN down-projections add nothing by that measure (layer 0: 12.7 dB in, 13.1
out): the GELU output's rounding is its Mul's (19.6 -> 12.7 dB). That rule ranked the embedding
Gathers, layer 0's output LayerNorm (12.3 -> 5.4 dB) and the GELU Muls first, and none in float
alone lifted the cosine mean past 0.768 (static every op: 0.7648); layer 3's down-projection, 4th
here, lifted it to 0.771.

Where the quantizer removed a Relu/Clip and quantizes its output's range on what fed it, `qdq_err`
compares the unclipped input with its quantized, clipped self: it measures what the activation
removes, not quantization (EfficientNet-Lite0's 33 ReLU6 outputs read 0.09-8.4 dB against an
`xmodel_err` of 13-31 dB, per-channel U8S8), and is left out (`qdq_sqnr_db` None) rather than
recorded as an error. Such a tensor is credited to the node that writes it in the quantized graph
(the Conv before a ReLU6), not to the removed activation: that node is the one the tuner can leave in
float, and its own output tensor no longer exists to be measured (EfficientNet-Lite0: 33 of its 62
activations).

Exposing every intermediate tensor stops onnxruntime from fusing int8 kernels, so these numbers
describe the QDQ simulation; the gate itself always measures the fused kernels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization.qdq_loss_debug import (
    collect_activations,
    compute_activation_error,
    compute_weight_error,
    create_activation_matching,
    modify_model_output_intermediate_tensors,
)

from quantship.quantize import ranges
from quantship.quantize.data import CalibrationReader, Dataset

SAMPLES = 4
"""Samples run through both augmented models. Every intermediate tensor of every sample is held
at once (32 EfficientNet-Lite0 images: 5 GB), and a ranking needs few: SQNR is a ratio of
energies over millions of values per tensor, stable across a handful of images."""


@dataclass(frozen=True)
class TensorError:
    tensor: str
    kind: str  # "activation" | "weight"
    sqnr_db: float
    node: str | None = None
    op_type: str | None = None
    qdq_sqnr_db: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: _finite(v) for k, v in self.__dict__.items() if v is not None}


def measure(
    fp32_path: Path, qdq_path: Path, dataset: Dataset, batch_size: int, workdir: Path
) -> list[TensorError]:
    """SQNR of every activation and weight tensor of a QDQ model, worst first within each kind."""
    fp32_aug, qdq_aug = workdir / "debug-fp32.onnx", workdir / "debug-qdq.onnx"
    modify_model_output_intermediate_tensors(fp32_path, fp32_aug)
    modify_model_output_intermediate_tensors(qdq_path, qdq_aug)
    sample = dataset.subset(min(SAMPLES, dataset.size))
    fp32_acts = collect_activations(str(fp32_aug), CalibrationReader(sample, batch_size))
    qdq_acts = collect_activations(str(qdq_aug), CalibrationReader(sample, batch_size))
    errors = compute_activation_error(create_activation_matching(qdq_acts, fp32_acts))

    fp32, qdq = onnx.load(str(fp32_path)), onnx.load(str(qdq_path))
    producers = _producers(fp32)
    qdq_producers = _producers(qdq)
    activations = []
    for tensor, error in errors.items():
        if "xmodel_err" not in error:
            continue
        producer = producers.get(tensor)
        writer = qdq_producers.get(tensor)
        folded = ranges.folded(writer, producer)
        if folded and writer is not None:
            producer = writer  # the Conv/MatMul that writes the folded Relu/Clip's output now
        activations.append(
            TensorError(
                tensor=tensor,
                kind="activation",
                sqnr_db=error["xmodel_err"],
                node=producer.name if producer is not None else None,
                op_type=producer.op_type if producer is not None else None,
                qdq_sqnr_db=None if folded else error.get("qdq_err"),
            )
        )
    readers = _quantized_readers(qdq)
    weights = [
        TensorError(
            tensor=name,
            kind="weight",
            sqnr_db=sqnr,
            node=readers[name].name if name in readers else None,
            op_type=readers[name].op_type if name in readers else None,
        )
        for name, sqnr in compute_weight_error(_weight_matching(fp32_path, qdq_path)).items()
    ]
    return sorted(activations, key=lambda e: e.sqnr_db) + sorted(weights, key=lambda e: e.sqnr_db)


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def _quantized_readers(qdq: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """The node that reads each weight quantized, by the float weight's name (as _weight_matching
    keys it): a weight's row names it, as `--exclude` takes node names and exporters name weights
    anything (EfficientNet-Lite0's `onnx::Conv_971`). onnxruntime hands every reader of a weight it
    quantizes the dequantized weight, a node kept in float too: of those, the first whose inputs all
    come from a DequantizeLinear (the quantized node, whose weight `--exclude` keeps in float), else
    the first. The FP32 graph's first reader named a node kept in float where it came first."""
    constants = {init.name for init in qdq.graph.initializer}
    dequantized = {node.output[0]: node for node in qdq.graph.node if node.op_type == "DequantizeLinear"}
    weights = {
        out: dq.input[0].removesuffix("_quantized")
        for out, dq in dequantized.items()
        if dq.input[0] in constants
    }
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in qdq.graph.node:
        for name in dict.fromkeys(node.input):
            if name in weights:
                readers.setdefault(weights[name], []).append(node)
    return {
        weight: next((n for n in nodes if all(i in dequantized for i in n.input if i)), nodes[0])
        for weight, nodes in readers.items()
    }


def _weight_matching(fp32_path: Path, qdq_path: Path) -> dict[str, dict[str, np.ndarray]]:
    """Float and dequantized weights, as qdq_loss_debug.create_weight_matching pairs them.

    That helper (onnxruntime 1.32) subtracts the zero point in the weights' own uint8/int8 type;
    under numpy 2 this wraps around (62 - 116 reads as 202), so its biases look like noise. Here the
    subtraction happens in int64.
    """
    floats = {init.name: numpy_helper.to_array(init) for init in onnx.load(str(fp32_path)).graph.initializer}
    qdq = onnx.load(str(qdq_path))
    constants = {init.name: numpy_helper.to_array(init) for init in qdq.graph.initializer}
    matching = {}
    for node in qdq.graph.node:
        if node.op_type != "DequantizeLinear" or not node.input or node.input[0] not in constants:
            continue
        name = node.input[0].removesuffix("_quantized")
        if name not in floats:
            continue
        quantized = constants[node.input[0]].astype(np.int64)
        scale = constants[node.input[1]]
        zero_point = (
            constants[node.input[2]].astype(np.int64)
            if len(node.input) > 2
            else np.zeros_like(scale, np.int64)
        )
        if scale.size > 1:  # per channel: broadcast along the node's axis
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            shape = [1] * quantized.ndim
            shape[axis] = -1
            scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
        # At least 1-d: a scalar weight (MiniLM's attention scale) dequantizes to a numpy scalar,
        # which compute_weight_error cannot take (it measures arrays: a TypeError).
        matching[name] = {
            "float": np.atleast_1d(floats[name]),
            "dequantized": np.atleast_1d(((quantized - zero_point) * scale).astype(np.float32)),
        }
    return matching


def rank_nodes(errors: list[TensorError], candidates: list[str]) -> list[str]:
    """Candidate nodes, most sensitive first: by the SQNR of their output; unmeasured ones last, in
    graph order."""
    worst: dict[str, float] = {}
    for error in errors:
        if error.kind == "activation" and error.node in candidates:
            worst[error.node] = min(worst.get(error.node, math.inf), error.sqnr_db)
    order = {name: index for index, name in enumerate(candidates)}
    return sorted(candidates, key=lambda name: (worst.get(name, math.inf), order[name]))


def _finite(value: Any) -> Any:
    # JSON has no infinity: a tensor with no quantization noise at all reads as None (perfect).
    return None if isinstance(value, float) and not math.isfinite(value) else value
