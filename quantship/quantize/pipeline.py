"""`quantship quantize`: FP32 model + data in, verified artifact out.

load and check -> prepare -> calibrate once -> quantize -> gate -> (fallback trials) -> artifact.
Works in a temporary directory; the artifact appears at `out` only when complete.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from onnxruntime.quantization.calibrate import TensorsData
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import quantship
from quantship import artifact, runtime
from quantship.quantize import data, engine, ranges, search, sensitivity
from quantship.quantize.config import Format, Mode, QuantizeConfig
from quantship.quantize.errors import QuantizeInputError
from quantship.quantize.evaluate import Evaluator


@dataclass(frozen=True)
class QuantizeResult:
    artifact: artifact.Artifact
    trials: list[search.Trial]
    chosen: search.Trial
    fp32_bytes: int
    int8_bytes: int
    seconds: float

    @property
    def gate_passed(self) -> bool:
        return self.chosen.passed


def quiet_progress() -> Progress:
    return Progress(disable=True)


def default_progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=False,
    )


def run(
    model_path: Path,
    out: Path,
    config: QuantizeConfig,
    *,
    calibration: Path | None = None,
    evaluation: Path | None = None,
    sign_key: Ed25519PrivateKey | None = None,
    progress: Progress | None = None,
) -> QuantizeResult:
    started = time.perf_counter()
    progress = progress or quiet_progress()
    _check_writable(out)
    fp32 = engine.load_model(model_path)
    inputs = data.model_inputs(fp32)
    if config.mode is Mode.STATIC and calibration is None:
        raise QuantizeInputError("static quantization needs calibration data (--calibration)")
    calib = data.load_dataset(calibration, inputs, role="calibration") if calibration else None
    evalset = data.load_dataset(evaluation, inputs, role="evaluation") if evaluation else calib
    if evalset is None:
        raise QuantizeInputError(
            "dynamic quantization needs evaluation data (--evaluation) for the accuracy gate"
        )
    hardware = runtime.hardware()
    config = config.resolved(hardware)

    with tempfile.TemporaryDirectory(prefix="quantship-quantize-") as tmp_name, progress:
        tmp = Path(tmp_name)
        prepared = tmp / "prepared.onnx"
        pre_processed = engine.prepare(model_path, prepared, pre_process=config.pre_process)
        prepared_model = onnx.load(str(prepared))
        _check_exclusions(config, prepared_model)

        cache, calibrated, batch = None, None, 1
        if calib is not None and config.mode is Mode.STATIC:
            batch = data.calibration_batch_size(calib, config.batch_size, inputs)
            task = progress.add_task(f"calibrating ({config.calibration.value})", total=calib.size)
            cache = tmp / "calibration.json"
            calibrated = engine.calibrate(
                prepared, calib, config, batch, cache, lambda n: progress.advance(task, n)
            )

        evaluator = Evaluator(model_path, evalset, config.output)
        trial_task = progress.add_task("accuracy gate and fallback trials", total=config.max_trials + 1)
        candidates: list[str] = []  # quantized nodes of the baseline: what a trial may leave in float

        def attempt(phase: search.Phase, excluded: tuple[str, ...]) -> search.Trial:
            begin = time.perf_counter()
            number = len(trials_run)
            candidate = tmp / f"trial-{number}.onnx"
            engine.quantize(
                prepared, candidate, config, cache_path=cache, exclude=config.excluded_nodes + excluded
            )
            if not candidates:
                quantized = engine.quantized_nodes(prepared_model, onnx.load(str(candidate)), config.mode)
                candidates.extend(node.name for node in quantized)
            result = evaluator.evaluate(candidate)
            progress.advance(trial_task)
            trial = search.Trial(
                number,
                phase,
                excluded,
                len(set(candidates) - set(excluded)),
                result,
                result.passes(config.max_accuracy_delta),
                time.perf_counter() - begin,
            )
            trials_run.append(trial)
            return trial

        trials_run: list[search.Trial] = []
        baseline = attempt(search.Phase.BASELINE, ())
        errors = _sensitivity(prepared, config, cache, calib, batch, tmp, progress)
        ranking = sensitivity.rank_nodes(errors, candidates)
        trials = search.search(baseline, ranking, attempt, config.max_trials)
        progress.update(trial_task, total=len(trials), completed=len(trials))
        chosen = search.best(trials)

        chosen_path = tmp / f"trial-{chosen.number}.onnx"
        chosen_model = onnx.load(str(chosen_path))
        manifest = _manifest(
            fp32=fp32,
            model_path=model_path,
            config=config,
            chosen=chosen,
            trials=trials,
            calib=calib,
            evalset=evalset,
            calibrated=calibrated,
            chosen_model=chosen_model,
            prepared_model=prepared_model,
            errors=errors,
            hardware=hardware,
            pre_processed=pre_processed,
            fallback=runtime.fallback_ops(chosen_path),
        )
        written = artifact.write_artifact(
            out,
            {artifact.MODEL_FILE: chosen_path, artifact.REFERENCE_FILE: model_path},
            manifest,
            sign_key=sign_key,
        )
    sizes = written.manifest["files"]
    return QuantizeResult(
        written,
        trials,
        chosen,
        sizes[artifact.REFERENCE_FILE]["size"],
        sizes[artifact.MODEL_FILE]["size"],
        time.perf_counter() - started,
    )


def _check_writable(out: Path) -> None:
    """Fail before an hour of calibration, not after."""
    parent = out.resolve().parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise QuantizeInputError(f"cannot write the artifact to {out}: {existing or parent} is not writable")
    if out.exists() and not (out / artifact.MANIFEST_FILE).is_file():
        raise QuantizeInputError(f"{out} exists and is not an artifact; refusing to overwrite it")


def _check_exclusions(config: QuantizeConfig, model: onnx.ModelProto) -> None:
    """onnxruntime ignores unknown names in nodes_to_exclude; a typo would silently quantize the node."""
    names = {node.name for node in model.graph.node}
    unknown = [name for name in config.excluded_nodes if name not in names]
    if unknown:
        known = ", ".join(sorted(names)[:12]) + (" ..." if len(names) > 12 else "")
        raise QuantizeInputError(
            f"--exclude names no node of the model: {', '.join(unknown)} (nodes: {known})"
        )


def _sensitivity(
    prepared: Path,
    config: QuantizeConfig,
    cache: Path | None,
    calib: data.Dataset | None,
    batch: int,
    tmp: Path,
    progress: Progress,
) -> list[sensitivity.TensorError]:
    """Per-tensor SQNR of a QDQ quantization of the model (static mode only: dynamic quantization
    has no activation ranges to debug)."""
    if config.mode is not Mode.STATIC or calib is None:
        return []
    task = progress.add_task("per-tensor sensitivity (qdq_loss_debug)", total=1)
    qdq = tmp / "sensitivity-qdq.onnx"
    engine.quantize(prepared, qdq, config, cache_path=cache, exclude=config.excluded_nodes, format=Format.QDQ)
    errors = sensitivity.measure(prepared, qdq, calib, batch, tmp)
    progress.advance(task)
    return errors


def _manifest(
    *,
    fp32: onnx.ModelProto,
    model_path: Path,
    config: QuantizeConfig,
    chosen: search.Trial,
    trials: list[search.Trial],
    calib: data.Dataset | None,
    evalset: data.Dataset,
    calibrated: TensorsData | None,
    chosen_model: onnx.ModelProto,
    prepared_model: onnx.ModelProto,
    errors: list[sensitivity.TensorError],
    hardware: runtime.Hardware,
    pre_processed: str,
    fallback: dict[str, int],
) -> dict[str, Any]:
    gate = "passed" if chosen.passed else "failed"
    final_config = replace(config, excluded_nodes=config.excluded_nodes + chosen.excluded)
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": {
            **_model_section(fp32, model_path),
            "quantized_nodes": chosen.quantized_nodes,
            "quantized_nodes_without_fallback": trials[0].quantized_nodes,
        },
        "runtime": _runtime_section(),
        "quantization": {**final_config.to_json(), "pre_process": pre_processed, "precision": "int8"},
        "calibration": None
        if calib is None or config.mode is Mode.DYNAMIC
        else {
            "sha256": calib.sha256,
            "samples": calib.size,
            "method": config.calibration.value,
            "params": config.calibration_params(),
        },
        "activation_ranges": [
            r.to_json() for r in ranges.activation_ranges(chosen_model, prepared_model, calibrated)
        ],
        "validation": {
            "gate": gate,
            "max_accuracy_delta": config.max_accuracy_delta,
            "data_sha256": evalset.sha256,
            "on_calibration_data": evalset is calib,
            **chosen.evaluation.to_json(),
            "hardware": hardware.to_json(),
        },
        "sensitivity": [e.to_json() for e in errors],
        "fallback_trials": [t.to_json() for t in trials],
        "fallback_ops": fallback,
    }


def package_fp32(
    model_path: Path, out: Path, *, sign_key: Ed25519PrivateKey | None = None
) -> artifact.Artifact:
    """Wrap an FP32 model as an artifact, unquantized: the baseline a quantized canary replaces.

    The server serves it like any artifact (hashes, signature), with precision "fp32" and no
    activation ranges or reference, so it exports no clip or shadow SLIs of its own.
    """
    _check_writable(out)
    fp32 = engine.load_model(model_path)
    manifest = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": _model_section(fp32, model_path),
        "runtime": _runtime_section(),
        "quantization": {"precision": "fp32", "mode": "none"},
    }
    return artifact.write_artifact(out, {artifact.MODEL_FILE: model_path}, manifest, sign_key=sign_key)


def _model_section(fp32: onnx.ModelProto, model_path: Path) -> dict[str, Any]:
    initializers = {init.name for init in fp32.graph.initializer}
    return {
        "source": model_path.name,
        "opset": {entry.domain or "ai.onnx": entry.version for entry in fp32.opset_import},
        "inputs": [_io(v) for v in fp32.graph.input if v.name not in initializers],
        "outputs": [_io(v) for v in fp32.graph.output],
    }


def _runtime_section() -> dict[str, str]:
    return {
        "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__,
        "quantship": quantship.__version__,
    }


def _io(value: onnx.ValueInfoProto) -> dict[str, Any]:
    tensor = value.type.tensor_type
    return {
        "name": value.name,
        "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name if tensor.elem_type else None,
        "shape": [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim
        ],
    }
