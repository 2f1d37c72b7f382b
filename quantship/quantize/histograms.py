"""Calibration histograms: how the calibration data spread over each quantized activation's range.

The artifact keeps one `ActivationHistogram` per activation range, the baseline a drift SLI
compares production traffic with: clipping only sees values leaving the range, a histogram also
sees a distribution that moved inside it. The values come from the FP32 model (the prepared one
the quantizer calibrated), run over the calibration data with those tensors exposed as outputs,
one batch at a time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from quantship import runtime
from quantship.artifact import ActivationHistogram, ActivationRange
from quantship.quantize.data import Dataset

_RENAMED_OUTPUT = "_QuantizeLinear_Input"


def calibration_histograms(
    prepared: Path, ranges: list[ActivationRange], dataset: Dataset, batch_size: int
) -> list[ActivationHistogram]:
    model = onnx.load(str(prepared))
    tensors = {name for node in model.graph.node for name in node.output} | {
        i.name for i in model.graph.input
    }
    # The quantizer renames a quantized graph output `y` to `y_QuantizeLinear_Input`: same values.
    fp32_name = {r.tensor: r.tensor.removesuffix(_RENAMED_OUTPUT) for r in ranges}
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
            counts, below, above = ActivationHistogram.bin(outputs[fp32_name[r.tensor]], r.low, r.high)
            totals[r.tensor] = counts if not totals[r.tensor].size else totals[r.tensor] + counts
            under[r.tensor] += below
            over[r.tensor] += above
    return [
        ActivationHistogram(
            r.tensor, r.low, r.high, tuple(int(c) for c in totals[r.tensor]), under[r.tensor], over[r.tensor]
        )
        for r in wanted
    ]
