"""What a server's load checks of a verified artifact before it serves it: the served model opens in
onnxruntime from its verified bytes with its weights inline (`open_model`), its manifest fits that
model (`check_manifest`), its reference takes the model's inputs and has the compared output
(`open_reference`), and, where asked, this machine is the hardware the accuracy gate ran on. A
refusal is a LoadRefused whose reason labels the failure metric. Used by the service's load, and by
`quantship verify` through `check_loadable`, so that verify calls good what a server serves.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
from google.protobuf.message import DecodeError

from quantship import runtime
from quantship.artifact import Artifact
from quantship.choices import ONNXRUNTIME_SPINNING
from quantship.server import hardware
from quantship.server.clipping import unusable_ranges
from quantship.server.runner import Runner
from quantship.server.runner_signature import Signature, TensorSpec, UnsupportedModel
from quantship.server.settings import QualitySettings
from quantship.server.shadow import Comparator

# onnxruntime's own exception types (pybind, no common base): what it raises for a model it refuses.
ORT_ERRORS: tuple[type[Exception], ...] = tuple(
    kind
    for kind in vars(onnxruntime.capi.onnxruntime_pybind11_state).values()
    if isinstance(kind, type) and issubclass(kind, Exception)
)


class LoadRefused(Exception):
    """The artifact verified, but what it asks for cannot be served. `reason` labels the failure metric."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_manifest(
    manifest: Mapping[str, Any], proto: onnx.ModelProto, signature: Signature, tolerance: float
) -> Comparator:
    """What a load checks of the manifest against the model it serves (`proto`, whose session has
    `signature`), and the comparator of its gated output: that output is one of the model's, its
    shadow rule fits it (`tolerance` makes the rule of a manifest that has none), and its activation
    ranges and histograms are usable by the clip and drift SLIs. `check_loadable` (`quantship verify`)
    runs it too, so an artifact verify calls good is not refused here. LoadRefused names what fails."""
    compared = manifest.get("quantization", {}).get("output") or signature.outputs[0].name
    try:
        spec = signature.output(compared)
    except KeyError:
        raise LoadRefused(
            f"the manifest names output {compared!r}, the model has none", reason="format"
        ) from None
    rule = manifest.get("validation", {}).get("shadow_rule")
    try:
        comparator = Comparator.for_artifact(spec, rule, tolerance, signature.inputs)
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise LoadRefused(
            f"the manifest's shadow_rule {rule!r} is not valid: {exc}", reason="format"
        ) from None
    problem = unusable_ranges(proto, manifest)
    if problem is not None:  # served, the clip and drift SLIs would fail or count nonsense
        raise LoadRefused(f"the manifest's {problem}", reason="format")
    return comparator


def check_loadable(
    loaded: Artifact, *, reference: Path | None = None, require_gate_hardware: bool = False
) -> None:
    """What a server's load checks of a verified artifact beyond its files, without serving it: its
    model opens in onnxruntime, its manifest fits that model (`check_manifest`), and its reference,
    if it has one, takes the model's inputs and has the compared output. Run by `quantship verify`;
    LoadRefused names what fails, as a server's load would. `reference` and `require_gate_hardware`
    are serve's --reference FILE (checked in place of the artifact's) and --require-gate-hardware
    (against this machine's hardware)."""
    try:
        runner, proto = open_model(loaded.model_path.read_bytes(), loaded.model_path, threads=1)
    except ORT_ERRORS as exc:  # a server's load says the same (`ModelService.load`)
        raise LoadRefused(f"onnxruntime cannot load {loaded.model_path}: {exc}", reason="model") from exc
    if require_gate_hardware:
        refuse_other_hardware(hardware_check(loaded, runner))
    tolerance = QualitySettings().disagreement_tolerance  # read only where a manifest has no shadow rule
    signature = runner.signature
    comparator = check_manifest(loaded.manifest, proto, signature, tolerance)
    del runner, proto  # before the reference's session: one model in memory at a time
    if reference is not None:
        open_reference(read_reference(reference), signature, comparator.output)
    elif loaded.reference_path is not None:
        path = loaded.reference_path
        open_reference((path, path.read_bytes()), signature, comparator.output)


def hardware_check(loaded: Artifact, runner: Runner) -> hardware.HardwareCheck:
    """This machine's hardware, as the served model's session runs on it, against the gate's."""
    return hardware.compare(loaded.manifest, runtime.hardware(runner.session.get_providers()[0]))


def refuse_other_hardware(check: hardware.HardwareCheck) -> None:
    """--require-gate-hardware: refused where this machine is not what the accuracy gate ran on."""
    if check.differs:
        raise LoadRefused(
            f"serving hardware differs from the gate's ({check.describe()}) and "
            "--require-gate-hardware is set",
            reason="hardware",
        )


def read_reference(path: Path) -> tuple[Path, bytes]:
    """--reference FILE: its path (for messages) and its bytes, read once."""
    if not path.is_file():
        raise LoadRefused(f"reference model {path} does not exist", reason="reference")
    try:
        return path, path.read_bytes()
    except OSError as exc:
        raise LoadRefused(f"cannot read reference {path}: {exc.strerror or exc}", reason="reference") from exc


def open_reference(source: tuple[Path, bytes] | None, served: Signature, compared: str) -> Runner | None:
    """A session of the reference (`source`: its path, for messages, and its bytes), refused
    unless it takes what the served model takes (names, types, ranks, fixed dimensions): one
    that took other shapes would fail every shadow sample, and the rollout would see no data."""
    if source is None:
        return None
    path, content = source
    # Its graph is parsed for the check, dropped, and parsed again once its session is built: held
    # meanwhile, a large FP32 graph raised the peak (MiniLM-L6's 90 MB reference: ~50 MB to ready).
    unshaped = _unshaped_inputs(_inline_graph(content, path, reason="reference"))
    try:
        reference = Runner.load(content, threads=1)
    except ORT_ERRORS as exc:
        raise LoadRefused(f"onnxruntime cannot load reference {path}: {exc}", reason="reference") from exc
    if not _takes_alike(reference.signature.inputs, served.inputs, unshaped):
        raise LoadRefused(
            f"reference {path} takes {_inputs(reference.signature)}, the served model {_inputs(served)}",
            reason="reference",
        )
    if compared not in {spec.name for spec in reference.signature.outputs}:
        raise LoadRefused(f"reference {path} has no output {compared!r} to compare", reason="reference")
    return reference


def open_model(
    model: bytes, path: Path, threads: int | None, *, spinning: bool = ONNXRUNTIME_SPINNING
) -> tuple[Runner, onnx.ModelProto]:
    """A session of the served model's verified bytes, and its graph (for the load-time analyses)."""
    proto = _inline_graph(model, path, reason="format")
    try:
        runner = Runner.load(model, threads=threads, spinning=spinning, proto=proto)
    except UnsupportedModel as exc:
        raise LoadRefused(f"{path}: {exc}", reason="model") from exc
    return runner, proto or runtime.load_proto(model)  # onnxruntime took it: protobuf reads it


def _inline_graph(content: bytes, path: Path, *, reason: str) -> onnx.ModelProto | None:
    """The graph of verified model bytes; None when protobuf cannot read them (onnxruntime will say
    why). Refused when its weights live in a file beside it: a session built from bytes looks for
    that file in the working directory, unhashed, whatever the artifact's own copy says."""
    try:
        proto = runtime.load_proto(content)
    except DecodeError:
        return None
    if runtime.keeps_weights_outside(proto):
        raise LoadRefused(
            f"{path} keeps weights in external data; an artifact's models hold theirs inline", reason=reason
        )
    return proto


def _takes_alike(
    reference: tuple[TensorSpec, ...], served: tuple[TensorSpec, ...], unshaped: frozenset[str]
) -> bool:
    """Whether the reference takes the served model's inputs: the same names and types, the same
    ranks, and equal sizes where both fix a dimension (an open one takes any; an input declaring no
    shape at all, in `unshaped`, takes any shape)."""
    by_name = {spec.name: spec for spec in reference}
    if by_name.keys() != {spec.name for spec in served} or len(by_name) != len(served):
        return False
    return all(_fits(by_name[spec.name], spec, spec.name in unshaped) for spec in served)


def _fits(reference: TensorSpec, served: TensorSpec, unshaped: bool) -> bool:
    if reference.datatype != served.datatype:
        return False
    return unshaped or (
        len(reference.shape) == len(served.shape)
        and all(a is None or b is None or a == b for a, b in zip(reference.shape, served.shape, strict=True))
    )


def _unshaped_inputs(model: onnx.ModelProto | None) -> frozenset[str]:
    """Inputs that declare no shape: onnxruntime lists them with shape [], a scalar's."""
    if model is None:
        return frozenset()
    return frozenset(i.name for i in model.graph.input if not i.type.tensor_type.HasField("shape"))


def _inputs(signature: Signature) -> str:
    return ", ".join(spec.describe() for spec in sorted(signature.inputs, key=lambda spec: spec.name))
