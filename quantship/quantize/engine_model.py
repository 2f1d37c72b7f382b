"""The FP32 model before quantization: loaded (refusing what is not ONNX, what holds half-float
weights, what onnxruntime cannot run), made self-contained, prepared (every node named,
pre-processed when asked)."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
from pathlib import Path

import onnx
from google.protobuf import json_format, text_format
from google.protobuf.message import DecodeError

from quantship import runtime
from quantship.local.lifetime import dying_with_parent
from quantship.quantize.constants import graph_constants
from quantship.quantize.engine_graph import FLOAT_TYPES
from quantship.quantize.errors import QuantizeInputError, first_line

HALF_FLOATS: dict[int, str] = {onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.BFLOAT16: "bfloat16"}
"""Weights onnxruntime does not quantize as weights: pre-processing on the CPU wraps each float16 op in
Casts to float32 (InsertedPrecisionFreeCast_*), and the quantizer, seeing the weights as those Casts'
outputs, quantized them at run time as activations, into an artifact larger than its model; quantized
as they are, their float16 scales are invalid before opset 19. bfloat16 has no CPU kernels at all."""


HALF_COMPUTE_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose"})
"""Ops whose half-float weight input means the op computes in half precision: the ops INT8 is for."""


MAX_INLINE_BYTES = 2**31 - 1
"""protobuf's limit on one message: a model over it must keep its weights in external data."""


def self_contained(path: Path, folder: Path) -> Path:
    """`path` when its weights are inside it; else a copy in `folder` with them inlined. An artifact
    hashes and ships its files one by one: a weights file beside the model would be neither listed nor
    copied, and the artifact's model would not load."""
    model = onnx.load(str(path), load_external_data=False)
    if not runtime.keeps_weights_outside(model):
        return path
    onnx.load_external_data_for_model(model, str(path.parent))
    if model.ByteSize() > MAX_INLINE_BYTES:
        raise QuantizeInputError(
            f"{path}: over 2 GB with its external data; artifacts hold self-contained models only (for now)"
        )
    inlined = folder / "self-contained" / path.name  # apart from the run's other files (prepared.onnx)
    inlined.parent.mkdir()
    onnx.save(model, str(inlined))
    return inlined


def load_model(path: Path) -> onnx.ModelProto:
    """Load an FP32 model, refusing what is not ONNX, what holds 16-bit float weights or what
    onnxruntime cannot run."""
    try:
        model = onnx.load(str(path))
    except FileNotFoundError as exc:
        raise QuantizeInputError(f"model {path} does not exist") from exc
    except onnx.checker.ValidationError as exc:  # external data that is missing or not a file
        raise QuantizeInputError(f"{path}: {first_line(exc)}") from exc
    # onnx picks its parser by the file's suffix: a .json or .txt given by mistake fails to parse as text
    except (
        DecodeError,
        json_format.ParseError,
        text_format.ParseError,
        OSError,
        ValueError,
        RuntimeError,
    ) as exc:
        raise QuantizeInputError(f"{path} is not an ONNX model: {first_line(exc)}") from exc
    if not model.graph.node:
        raise QuantizeInputError(f"{path} is not an ONNX model: its graph has no nodes")
    _refuse_half_float_weights(model, path)  # before the session: bfloat16 ones fail there, unexplained
    try:
        runtime.create_session(path)
    except Exception as exc:  # onnxruntime raises its own pybind types for every load failure
        raise QuantizeInputError(f"onnxruntime cannot load {path}: {first_line(exc)}") from exc
    return model


def _refuse_half_float_weights(model: onnx.ModelProto, path: Path) -> None:
    """A model exported in float16 (torch's model.half()) or bfloat16: HALF_FLOATS says why it cannot
    be quantized as it is. Judged by where most of its float weight values are, not by any one
    tensor: a float32 model may hold a float16 Constant (a Cast chain some exporters emit around an
    op they run in half precision), a scalar no quantizable op reads as its weight, and quantizes as
    any float32 model does; a half-precision export holds (almost) all its weights in it."""
    weights = graph_constants(model)
    floats = {name: weight for name, weight in weights.items() if weight.data_type in FLOAT_TYPES}
    half = [name for name, weight in floats.items() if weight.data_type in HALF_FLOATS]
    values = {name: math.prod(weight.dims) for name, weight in floats.items()}
    # A MatMul or Conv computing in half precision, even in a mostly float32 model, is one whose weight
    # no trial quantizes: a review's mixed model (43% of values float16) became a larger "INT8" model.
    computed = {name for node in model.graph.node if node.op_type in HALF_COMPUTE_OPS for name in node.input}
    in_half = [name for name in half if name in computed]
    if 2 * sum(values[name] for name in half) <= sum(values.values()) and not in_half:
        return
    kinds = " and ".join(sorted({HALF_FLOATS[floats[name].data_type] for name in half}))
    first = in_half[0] if in_half else half[0]
    raise QuantizeInputError(
        f"{path}: {len(half)} of its {len(floats)} float weights are {kinds} ({first!r} first), "
        f"{len(in_half)} of them a MatMul, Gemm or Conv's; quantship quantizes float32 models: export the "
        "model in float32 (from torch: without model.half()) and quantize that"
    )


def prepare(model_path: Path, out_path: Path, *, pre_process: bool) -> str:
    """Write the model to quantize: every node named (exclusions name nodes), pre-processed when
    asked. Returns how it was pre-processed, for the manifest."""
    model = onnx.load(str(model_path))
    taken = {node.name for node in model.graph.node if node.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = _unique(f"{node.op_type}_{index}", taken)
    named = out_path.with_suffix(".named.onnx")
    onnx.save(model, named)
    if not pre_process:
        named.rename(out_path)
        return "not requested"
    # onnxruntime's own CLI, in a child process whose working directory is ours: on failure its
    # symbolic shape inference drops a debug model into the current directory. It dies with us: a
    # kill -9 of a quantization left it running for minutes, writing into a scratch being swept.
    preprocess = [sys.executable, "-m", "onnxruntime.quantization.preprocess"]
    result = subprocess.run(
        dying_with_parent([*preprocess, "--input", str(named), "--output", str(out_path)], signal.SIGKILL),
        cwd=out_path.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode == 0:
        return "applied"
    # Symbolic shape inference gives up on ops it does not know (ai.onnx.ml ones among them), and
    # what is left of pre-processing then loses the tensor types calibration needs: skip it whole.
    named.rename(out_path)
    reason = (result.stderr.strip().splitlines() or ["unknown error"])[-1]
    return f"skipped: {reason}"


def _unique(name: str, taken: set[str]) -> str:
    candidate, suffix = name, 1
    while candidate in taken:
        candidate, suffix = f"{name}_{suffix}", suffix + 1
    taken.add(candidate)
    return candidate
