"""The activation ranges a quantized model can represent, read from its QuantizeLinear nodes.

The server counts values outside these ranges (the clipped-activation SLI), so they must be the
ranges the served graph really clamps to: scale * (qmin - zero_point) .. scale * (qmax - zero_point),
not the raw calibration min/max (the quantizer widens those to include 0 and rounds them).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization.calibrate import TensorsData

from quantship import runtime
from quantship.artifact import ActivationRange

_SCALE_SUFFIX = "_scale"  # onnxruntime names a tensor's scale <tensor>_scale, after the tensor it calibrated


def activation_ranges(
    quantized: onnx.ModelProto, fp32: onnx.ModelProto, calibrated: TensorsData | None
) -> list[ActivationRange]:
    constants = {init.name: numpy_helper.to_array(init) for init in quantized.graph.initializer}
    fp32_producers = {out: node for node in fp32.graph.node for out in node.output}
    producers = {out: node for node in quantized.graph.node for out in node.output}
    ranges = []
    for node in quantized.graph.node:
        if node.op_type != runtime.QUANTIZE or node.input[0] in constants:
            continue  # weights are quantized once, offline; only activations can clip at run time
        scale = constants.get(node.input[1])
        zero_point = constants.get(node.input[2]) if len(node.input) > 2 else None
        if scale is None or scale.size != 1:
            continue
        qtype = zero_point.dtype if zero_point is not None else np.dtype(np.uint8)
        zp = int(zero_point) if zero_point is not None else 0
        info = np.iinfo(qtype)
        meant = node.input[1].removesuffix(_SCALE_SUFFIX)
        calibrated_min, calibrated_max = _calibrated(calibrated, meant)
        activation = _folded_activation(producers.get(node.input[0]), fp32_producers.get(meant), fp32)
        ranges.append(
            ActivationRange(
                tensor=node.input[0],
                low=float(scale) * (info.min - zp),
                high=float(scale) * (info.max - zp),
                scale=float(scale),
                calibrated_min=calibrated_min,
                calibrated_max=calibrated_max,
                activation_low=activation[0],
                activation_high=activation[1],
            )
        )
    return ranges


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
    if fp32_producer is None or fp32_producer.op_type not in ("Relu", "Clip"):
        return None, None
    if producer is not None and producer.op_type == fp32_producer.op_type:
        return None, None  # the activation still runs
    if fp32_producer.op_type == "Relu":
        return 0.0, None
    inputs = list(fp32_producer.input)
    constants = {
        init.name: float(numpy_helper.to_array(init))
        for init in fp32.graph.initializer
        if init.name in inputs[1:]
    }
    low = constants.get(inputs[1]) if len(inputs) > 1 else None
    high = constants.get(inputs[2]) if len(inputs) > 2 else None
    return low, high
