"""`quantship quantize`: FP32 model + data in, verified artifact out.

load and check -> prepare -> calibrate once -> quantize -> gate -> (fallback trials) -> artifact.
Works in a temporary directory; the artifact appears at `out` only when complete.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
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
from quantship.quantize import data, engine, ranges, sensitivity, tuner
from quantship.quantize.config import Format, Mode, QuantizeConfig, Strategy
from quantship.quantize.errors import CalibrationFailed, QuantizeInputError
from quantship.quantize.evaluate import Evaluator


@dataclass(frozen=True)
class QuantizeResult:
    artifact: artifact.Artifact
    trials: list[tuner.Trial]
    chosen: tuner.Trial
    fp32_bytes: int
    int8_bytes: int
    seconds: float
    warnings: list[str]

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
    warn: Callable[[str], None] | None = None,
) -> QuantizeResult:
    """Quantize, tune until the gate passes (or the trials run out), write the artifact.

    `warn` hears every behaviour the user did not ask for (a skipped step, ignored data, a
    weaker default metric); the manifest records the same sentences."""
    started = time.perf_counter()
    progress = progress or quiet_progress()
    said: list[str] = []

    def note(message: str) -> None:
        said.append(message)
        if warn is not None:
            warn(message)

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
    if evaluation is None:
        note("no --evaluation data: the gate compares FP32 and INT8 on the calibration data itself")
    if calib is not None and config.mode is Mode.DYNAMIC and config.strategy is Strategy.FALLBACK:
        note(
            "--calibration is not used: dynamic quantization computes activation ranges at run time, "
            "and --strategy fallback tries no static recipe"
        )
    hardware = runtime.hardware()
    config = config.resolved(hardware)

    with tempfile.TemporaryDirectory(prefix="quantship-quantize-") as tmp_name, progress:
        tmp = Path(tmp_name)
        # The gate first: a metric that cannot apply fails in a second, not after calibration.
        evaluator = Evaluator(model_path, evalset, config.output, config.gate_request())
        for message in evaluator.warnings:
            note(message)
        prepared = tmp / "prepared.onnx"
        pre_processed = engine.prepare(model_path, prepared, pre_process=config.pre_process)
        prepared_model = onnx.load(str(prepared))
        _check_exclusions(config, prepared_model)
        if pre_processed.startswith("skipped"):
            note(f"onnxruntime's quant_pre_process was {pre_processed}; quantizing the model as given")

        gate = evaluator.gate
        progress.console.print(
            f"gate: {gate.describe()} on {evalset.size} samples "
            f"({evaluator.task.value}: {evaluator.task_reason}; {gate.reason})"
        )
        batch = data.calibration_batch_size(calib, config.batch_size, inputs) if calib is not None else 1
        calibrations = _Calibrations(prepared, calib, batch, tmp, progress)
        quantizable = sum(1 for node in prepared_model.graph.node if node.op_type in engine.QUANTIZABLE_OPS)
        quantized_by_recipe: dict[str, list[onnx.NodeProto]] = {}
        trials_run: list[tuner.Trial] = []
        trial_task = progress.add_task("tuning", total=config.max_trials + 1)

        def attempt(
            stage: tuner.Stage, trial_config: QuantizeConfig, excluded: tuple[str, ...]
        ) -> tuner.Trial:
            begin = time.perf_counter()
            number = len(trials_run)
            progress.update(
                trial_task, description=f"tuning: {stage.value} trial {number}: {trial_config.label()}"
            )
            candidate = tmp / f"trial-{number}.onnx"
            key, error, latency = trial_config.label(), None, None
            try:
                engine.quantize(
                    prepared,
                    candidate,
                    trial_config,
                    cache_path=calibrations.cache_for(trial_config),
                    exclude=config.excluded_nodes + excluded,
                )
                if key not in quantized_by_recipe:
                    quantized_by_recipe[key] = engine.quantized_nodes(
                        prepared_model, onnx.load(str(candidate)), trial_config.mode
                    )
                result = evaluator.evaluate(candidate)
                latency = _latency_ms(candidate, evalset) if result.passed else None
            except CalibrationFailed as exc:
                error = str(exc)
                result = evaluator.failed()
                note(f"trial {number} ({key}): {error}")
            except QuantizeInputError:
                raise  # the user's data or model: no other recipe fixes it
            except Exception as exc:  # onnxruntime raises its own pybind types for every failure
                # One recipe onnxruntime cannot quantize or run (an op it mishandles at some
                # setting) is a failed trial, not the end of the tuning.
                error = engine.first_line(exc)
                result = evaluator.failed()
                note(f"trial {number} ({key}) failed in onnxruntime: {error}")
            quantized = len({n.name for n in quantized_by_recipe.get(key, [])} - set(excluded))
            progress.advance(trial_task)
            trial = tuner.Trial(
                number,
                stage,
                trial_config,
                excluded,
                quantized,
                quantized / quantizable if quantizable else 0.0,
                result,
                time.perf_counter() - begin,
                _peak_rss_mb(),
                latency,
                error,
            )
            trials_run.append(trial)
            return trial

        def op_type_groups(recipe: QuantizeConfig) -> dict[str, tuple[str, ...]]:
            groups: dict[str, list[str]] = {}
            for node in quantized_by_recipe.get(recipe.label(), []):
                groups.setdefault(node.op_type, []).append(node.name)
            return {op: tuple(names) for op, names in groups.items()}

        sensitivities: dict[str, list[sensitivity.TensorError]] = {}

        def errors_for(recipe: QuantizeConfig) -> list[sensitivity.TensorError]:
            if recipe.label() not in sensitivities:
                sensitivities[recipe.label()] = _sensitivity(
                    prepared, recipe, calibrations, calib, tmp, progress
                )
            return sensitivities[recipe.label()]

        def ranking(recipe: QuantizeConfig) -> list[str]:
            candidates = [n.name for n in quantized_by_recipe.get(recipe.label(), [])]
            return sensitivity.rank_nodes(errors_for(recipe), candidates)

        trials = tuner.tune(
            config, _traits(prepared_model, calib is not None, hardware), attempt, op_type_groups, ranking
        )
        progress.update(trial_task, total=len(trials), completed=len(trials), description="tuning: done")
        chosen = tuner.best(trials)
        if chosen.error is not None:
            raise QuantizeInputError(
                f"onnxruntime could not quantize {model_path} in any trial: {chosen.error}"
            )
        if not chosen.passed:
            note(f"no trial passed the gate ({gate.describe()}); {tuner.advice(trials)}")

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
            calibrated=calibrations.ranges_for(chosen.config),
            chosen_model=chosen_model,
            prepared_model=prepared_model,
            errors=errors_for(chosen.config),
            hardware=hardware,
            pre_processed=pre_processed,
            fallback=runtime.fallback_ops(chosen_path),
            evaluator=evaluator,
            warnings=said,
            seconds=time.perf_counter() - started,
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
        said,
    )


class _Calibrations:
    """Calibration runs, one per method, made when a trial first needs that method and reused
    (onnxruntime's calibration cache) by every later trial of it."""

    def __init__(
        self,
        prepared: Path,
        dataset: data.Dataset | None,
        batch_size: int,
        tmp: Path,
        progress: Progress,
    ) -> None:
        self.prepared, self.dataset, self.batch_size = prepared, dataset, batch_size
        self.tmp, self.progress = tmp, progress
        self._done: dict[str, tuple[Path, TensorsData]] = {}
        self._failed: dict[str, CalibrationFailed] = {}

    def _key(self, config: QuantizeConfig) -> str:
        return json.dumps([config.calibration.value, config.calibration_params()], sort_keys=True)

    def cache_for(self, config: QuantizeConfig) -> Path | None:
        if config.mode is not Mode.STATIC or self.dataset is None:
            return None
        key = self._key(config)
        if key in self._failed:
            raise self._failed[key]
        if key not in self._done:
            dataset = self.dataset
            task = self.progress.add_task(f"calibrating ({config.calibration.value})", total=dataset.size)
            cache = self.tmp / f"calibration-{len(self._done)}.json"
            try:
                ranges = engine.calibrate(
                    self.prepared,
                    dataset,
                    config,
                    self.batch_size,
                    cache,
                    lambda n: self.progress.advance(task, n),
                )
            except CalibrationFailed as exc:
                self._failed[key] = exc
                raise
            self._done[key] = (cache, ranges)
        return self._done[key][0]

    def ranges_for(self, config: QuantizeConfig) -> TensorsData | None:
        if self.cache_for(config) is None:
            return None
        return self._done[self._key(config)][1]


def _traits(model: onnx.ModelProto, can_calibrate: bool, hardware: runtime.Hardware) -> tuner.ModelTraits:
    constants = {init.name for init in model.graph.initializer}
    constants |= {out for node in model.graph.node if node.op_type == "Constant" for out in node.output}
    matmuls = [node for node in model.graph.node if node.op_type == "MatMul"]
    is_x86 = hardware.machine.lower() in ("x86_64", "amd64", "i686")
    return tuner.ModelTraits(
        has_conv=any(node.op_type == "Conv" for node in model.graph.node),
        has_matmul=bool(matmuls) or any(node.op_type == "Gemm" for node in model.graph.node),
        has_activation_matmul=any(len(node.input) > 1 and node.input[1] not in constants for node in matmuls),
        can_calibrate=can_calibrate,
        lacks_vnni=is_x86 and not hardware.has_vnni,
    )


LATENCY_RUNS = 15


def _latency_ms(model: Path, dataset: data.Dataset) -> float:
    """Batch-1 median on this machine, as served (all cores, all optimizations)."""
    session = runtime.create_session(model)
    row = next(dataset.subset(1).batches(1))
    for _ in range(3):
        session.run(None, row)
    times = []
    for _ in range(LATENCY_RUNS):
        begin = time.perf_counter()
        session.run(None, row)
        times.append(time.perf_counter() - begin)
    return statistics.median(times) * 1000


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


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
    calibrations: _Calibrations,
    calib: data.Dataset | None,
    tmp: Path,
    progress: Progress,
) -> list[sensitivity.TensorError]:
    """Per-tensor SQNR of a QDQ quantization of the model with `config` (static mode only: dynamic
    quantization has no activation ranges to debug)."""
    if config.mode is not Mode.STATIC or calib is None:
        return []
    task = progress.add_task("per-tensor sensitivity (qdq_loss_debug)", total=1)
    qdq = tmp / "sensitivity-qdq.onnx"
    engine.quantize(
        prepared,
        qdq,
        config,
        cache_path=calibrations.cache_for(config),
        exclude=config.excluded_nodes,
        format=Format.QDQ,
    )
    errors = sensitivity.measure(prepared, qdq, calib, calibrations.batch_size, tmp)
    progress.advance(task)
    return errors


def _manifest(
    *,
    fp32: onnx.ModelProto,
    model_path: Path,
    config: QuantizeConfig,
    chosen: tuner.Trial,
    trials: list[tuner.Trial],
    calib: data.Dataset | None,
    evalset: data.Dataset,
    calibrated: TensorsData | None,
    chosen_model: onnx.ModelProto,
    prepared_model: onnx.ModelProto,
    errors: list[sensitivity.TensorError],
    hardware: runtime.Hardware,
    pre_processed: str,
    fallback: dict[str, int],
    evaluator: Evaluator,
    warnings: list[str],
    seconds: float,
) -> dict[str, Any]:
    gate = "passed" if chosen.passed else "failed"
    final = replace(chosen.config, excluded_nodes=config.excluded_nodes + chosen.excluded)
    quantization = {
        key: value
        for key, value in final.to_json().items()
        if key not in ("task", "metric", "threshold", "min_cosine", "max_trials", "keep_going", "strategy")
    }
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": {
            **_model_section(fp32, model_path),
            "quantized_nodes": chosen.quantized_nodes,
            "quantized_share": round(chosen.quantized_share, 4),
        },
        "runtime": _runtime_section(),
        "task": {"name": evaluator.task.value, "why": evaluator.task_reason},
        "quantization": {**quantization, "pre_process": pre_processed, "precision": "int8"},
        "calibration": None
        if calib is None or final.mode is Mode.DYNAMIC
        else {
            "sha256": calib.sha256,
            "samples": calib.size,
            "method": final.calibration.value,
            "params": final.calibration_params(),
        },
        "activation_ranges": [
            r.to_json() for r in ranges.activation_ranges(chosen_model, prepared_model, calibrated)
        ],
        "validation": {
            "gate": gate,
            "gate_reason": evaluator.gate.reason,
            "max_accuracy_delta": config.max_accuracy_delta,
            "shadow_rule": evaluator.gate.rule.to_json(),
            "data_sha256": evalset.sha256,
            "on_calibration_data": evalset is calib,
            **chosen.evaluation.to_json(),
            "hardware": hardware.to_json(),
        },
        "tuning": {
            "strategy": config.strategy.value,
            "keep_going": config.keep_going,
            "max_trials": config.max_trials,
            "chosen": chosen.number,
            "stage": chosen.stage.value,
            "seconds": round(seconds, 2),
            "peak_rss_mb": round(max(t.peak_rss_mb for t in trials), 1),
            "advice": None if chosen.passed else tuner.advice(trials),
        },
        "sensitivity": [e.to_json() for e in errors],
        "trials": [t.to_json() for t in trials],
        "fallback_ops": fallback,
        "warnings": warnings,
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
