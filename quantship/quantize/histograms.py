"""Calibration histograms: how the calibration data spread over each quantized activation's range.

The artifact keeps one `ActivationHistogram` per activation range, the baseline a drift SLI
compares production traffic with: clipping only sees values leaving the range, a histogram also
sees a distribution that moved inside it. The values come from the FP32 model (the prepared one
the quantizer calibrated), run over the calibration data with those tensors exposed as outputs,
one batch at a time. A QLinear op's output (QOperator) reaches the server only as int8 codes, so
its FP32 values are binned as the op would output them (`ActivationRange.requantized`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from quantship import runtime
from quantship.activations import ActivationHistogram, ActivationRange
from quantship.quantize.data import Dataset

_RENAMED_OUTPUT = "_QuantizeLinear_Input"


def calibration_histograms(
    prepared: Path, ranges: list[ActivationRange], dataset: Dataset, batch_size: int
) -> list[ActivationHistogram]:
    model = onnx.load(str(prepared))
    tensors = {name for node in model.graph.node for name in node.output} | {
        i.name for i in model.graph.input
    }
    # The quantizer renames a quantized graph output `y` to `y_QuantizeLinear_Input`: same values. A
    # QLinear op's int8 output (QOperator) names the FP32 tensor it stands for.
    fp32_name = {r.tensor: r.float_tensor or r.tensor.removesuffix(_RENAMED_OUTPUT) for r in ranges}
    wanted = [r for r in ranges if r.high > r.low and fp32_name[r.tensor] in tensors]
    if not wanted:
        return []
    names = list(dict.fromkeys(fp32_name[r.tensor] for r in wanted))
    present = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names if name not in present)
    session = runtime.create_session(model.SerializeToString())
    totals = {r.tensor: np.zeros(0, dtype=np.int64) for r in wanted}
    under = {r.tensor: 0 for r in wanted}
    over = {r.tensor: 0 for r in wanted}
    for batch in dataset.batches(batch_size):
        outputs = dict(zip(names, session.run(names, batch), strict=True))
        for r in wanted:
            values = outputs[fp32_name[r.tensor]]
            if r.requantized_by is not None:  # the server sees this tensor as the op's int8 codes
                values = r.requantized(values)
            counts, below, above = ActivationHistogram.bin(values, r.low, r.high)
            totals[r.tensor] = counts if not totals[r.tensor].size else totals[r.tensor] + counts
            under[r.tensor] += below
            over[r.tensor] += above
    return [
        ActivationHistogram(
            r.tensor, r.low, r.high, tuple(int(c) for c in totals[r.tensor]), under[r.tensor], over[r.tensor]
        )
        for r in wanted
    ]
