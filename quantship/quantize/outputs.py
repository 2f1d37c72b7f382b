"""Every float graph output is served, not only the one the gate measures.

onnxruntime's static quantizer gives a Relu's or Clip's input the activation's output range when
the activation is the only node reading it (`BaseQuantizer.adjust_tensor_ranges`, onnxruntime
1.32; the one-reader rule came with microsoft/onnxruntime#21573): the producer then requantizes
straight into the activation's range, and the activation costs nothing. It does not ask whether
that input is a graph output too (its QDQ removal of the activation does, in
`try_replacing_upstream_output`), so such an output is served clamped: below a Relu, every
negative value comes back 0. Left in float, the activation folds nothing and its input keeps its
own calibrated range (`folded_into_outputs`).

The gate measures one output; `broken_outputs` measures the others against FP32 on the same data,
coarsely: not a gate, a warning that one is clearly wrong.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx

from quantship import runtime
from quantship.quantize.evaluate import Evaluator

FOLDED_ACTIVATIONS = ("Relu", "Clip")
"""The ops whose range onnxruntime moves onto their input (`adjust_tensor_ranges`)."""
FLOAT_OUTPUTS = ("tensor(float)", "tensor(double)", "tensor(float16)")

BROKEN_RELATIVE_ERROR = 0.1
"""An output further than this from FP32 (||INT8 - FP32|| / ||FP32|| over the evaluation data) is
named in a warning. Measured: the digits sample's probabilities 0.015 (0.069 calibrated on one
digit only, whose gate still passes); a digits MLP's embedding served clamped to its Relu's range
0.20, its logits beside it 0.009."""


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


def broken_outputs(evaluator: Evaluator, fp32_model: Path, int8_model: Path) -> dict[str, float]:
    """The float outputs besides the gated one whose relative error to FP32 on the evaluation data
    exceeds BROKEN_RELATIVE_ERROR: {output: relative error}. Rows are run as the gate runs them."""
    if not evaluator.other_outputs:  # one output, the gated one: no session to build for nothing
        return {}
    fp32 = runtime.create_session(fp32_model)
    names = [o.name for o in fp32.get_outputs() if o.name != evaluator.output and o.type in FLOAT_OUTPUTS]
    if not names:
        return {}
    int8 = runtime.create_session(int8_model)
    alone = evaluator.fixed_batch is None and runtime.rows_mix(int8_model)
    error, norm = np.zeros(len(names)), np.zeros(len(names))
    for batch in evaluator.dataset.batches(1 if alone else evaluator.batch_size):
        for i, (want, got) in enumerate(zip(fp32.run(names, batch), int8.run(names, batch), strict=True)):
            want = np.asarray(want, dtype=np.float64)
            error[i] += np.sum((np.asarray(got, dtype=np.float64) - want) ** 2)
            norm[i] += np.sum(want**2)
    relative = {name: float(np.sqrt(e / n)) for name, e, n in zip(names, error, norm, strict=True) if n > 0}
    return {name: value for name, value in relative.items() if not value <= BROKEN_RELATIVE_ERROR}
