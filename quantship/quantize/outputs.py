"""Graph outputs besides the gated one: served as FP32 computes them.

onnxruntime's static quantizer gives a Relu's or Clip's input the activation's output range when
the activation is the only node reading it (`BaseQuantizer.adjust_tensor_ranges`, onnxruntime
1.32; the one-reader rule came with microsoft/onnxruntime#21573): the producer then requantizes
straight into the activation's range, and the activation costs nothing. It does not ask whether
that input is a graph output too (its QDQ removal of the activation does, in
`try_replacing_upstream_output`), so such an output is served clamped: below a Relu, every
negative value comes back 0. Left in float, the activation folds nothing and its input keeps its
own calibrated range (`folded_into_outputs`).
"""

from __future__ import annotations

from collections import Counter

import onnx

FOLDED_ACTIVATIONS = ("Relu", "Clip")
"""The ops whose range onnxruntime moves onto their input (`adjust_tensor_ranges`)."""


def folded_into_outputs(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The Relu/Clip nodes whose range onnxruntime would give a graph output (their input).

    onnxruntime's own condition (the activation is the only node reading its input; it also needs
    the activation quantized, so excluding these undoes it), plus the graph output."""
    graph_outputs = {output.name for output in model.graph.output}
    readers = Counter(name for node in model.graph.node for name in node.input if name)
    return [
        node
        for node in model.graph.node
        if node.op_type in FOLDED_ACTIVATIONS
        and node.input
        and node.input[0] in graph_outputs
        and readers[node.input[0]] == 1
    ]
