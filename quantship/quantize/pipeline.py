"""`quantship quantize`: FP32 model + data in, verified artifact out.

load and check -> prepare -> calibrate once -> quantize -> gate -> (fallback trials) -> the
unfused ops in float (up to tuner.MAX_UNFUSED_TRIALS more trials) -> artifact.
Works in a temporary directory; the artifact appears at `out` only when complete.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import quantship
from quantship import (
    activations,
    artifact,
    artifact_dirs,
    artifact_format,
    artifact_manifest,
    runtime,
    scratch,
)
from quantship.quantize import (
    canary,
    data,
    engine,
    engine_graph,
    engine_model,
    outputs,
    ranges,
    sensitivity,
    tuner,
    workbench,
)
from quantship.quantize.config import Mode, QuantizeConfig
from quantship.quantize.errors import QuantizeInputError
from quantship.quantize.evaluate import Evaluator
from quantship.quantize.histograms import calibration_histograms


@dataclass(frozen=True)
class QuantizeResult:
    artifact: artifact.Artifact
    trials: list[tuner.Trial]
    chosen: tuner.Trial
    fp32_bytes: int
    int8_bytes: int
    seconds: float
    warnings: list[str]
    out: Path
    written_to: Path
    """Where the artifact went: `out`, or `<out>.gate-failed` when the gate failed and `out` holds
    an artifact it must not replace (`kept`)."""
    replaced: bool = False
    """`written_to` held an older artifact, which the new one replaced (as `pull -o` and `pack` say)."""

    @property
    def kept(self) -> bool:
        return self.written_to != self.out

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
        # On stderr with the warnings, which `quantize` prints through this console, above the bars:
        # stdout holds the summary table alone, for a pipe or a file (and calibration's silencing of
        # onnxruntime's print()s, by redirecting sys.stdout, cannot silence the bars).
        console=Console(file=sys.stderr),
    )


def printed_warnings(console: Console) -> Callable[[str], None]:
    """`run`'s `warn` for a person: each warning printed whole on `console`, as `quantship quantize`
    and the demo print them. Give it the progress' own console: printed by another, a warning
    followed the bars' last line, and the next redraw moved up over its wrapped lines and drew the
    bars across its tail (MiniLM's 1,700-character warning of the sentinel ranges lost its last lines
    in a 160-column terminal)."""

    def warn(message: str) -> None:
        console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)

    return warn


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

    if problems := config.problems():
        raise QuantizeInputError(problems[0])
    out = out.resolve()  # `current -> v3/`: the artifact judged below is v3, as write_artifact writes it
    _check_writable(out)
    artifact_dirs.restore_interrupted(out)  # before judging what is there (a failed gate must not replace it)
    fp32, inputs, calib, evalset = _read_inputs(model_path, config, calibration, evaluation, note)
    _check_quantizable(fp32, model_path)
    hardware = runtime.hardware()
    config = config.resolved(hardware)

    scratch.sweep()  # what quantizations, servers and verifies killed before us (kill -9) left behind
    with scratch.directory(scratch.QUANTIZE_PREFIX) as tmp, progress:
        fp32_path = engine_model.self_contained(model_path, tmp)  # the reference ships as one file
        # The gate first: a metric that cannot apply fails in a second, not after calibration.
        evaluator = Evaluator(fp32_path, evalset, config.output, config.gate_request())
        for message in evaluator.warnings:
            note(message)
        prepared = tmp / "prepared.onnx"
        pre_processed = engine_model.prepare(fp32_path, prepared, pre_process=config.pre_process)
        prepared_model = onnx.load(str(prepared))
        _check_exclusions(config, prepared_model, pre_processed=pre_processed == "applied")
        if pre_processed.startswith("skipped"):
            note(f"onnxruntime's quant_pre_process was {pre_processed}; quantizing the model as given")

        gate = evaluator.gate
        if not progress.disable:  # -q: the summary table alone on stdout
            progress.console.print(
                f"gate: {gate.describe()} on {evalset.size} samples "
                f"({evaluator.task.value}: {evaluator.task_reason}; {gate.reason})",
                soft_wrap=True,  # one line in a log, not cut at 80 columns
            )
        batch = data.calibration_batch_size(calib, config.batch_size, inputs) if calib is not None else 1
        if calib is not None and batch != config.batch_size:
            if config.batch_size != QuantizeConfig.batch_size:  # the default lowered is no news
                why = data.why_fewer_calibration_rows(calib, config.batch_size, batch, inputs)
                note(f"--batch-size {config.batch_size}: calibrating {batch} rows per batch ({why})")
            config = replace(config, batch_size=batch)  # the manifest records what calibrated
        calibrations = workbench.Calibrations(prepared, calib, batch, tmp, progress)
        bench = workbench.Workbench(
            prepared, prepared_model, config, evaluator, calibrations, tmp, progress, note
        )
        traits = workbench.traits(prepared_model, calib is not None, hardware)
        _check_manifest_fits(prepared, config, traits, model_path, tmp, bench.kept_before_calibrating())
        trials = tuner.tune(
            config,
            traits,
            bench.attempt,
            bench.op_type_groups,
            bench.ranking,
        )
        if calib is not None and not any(t.config.mode is Mode.STATIC for t in trials):
            note(
                "--calibration is not used: dynamic quantization computes activation ranges at run "
                "time, and no static recipe was tried"
            )
        chosen = tuner.best(trials)
        if chosen.error is not None:
            raise QuantizeInputError(
                f"onnxruntime could not quantize {model_path} in any trial: {chosen.error}"
            )
        if refined := tuner.without_unfused(chosen, bench.unfused, bench.attempt):
            trials.extend(refined)
            chosen = tuner.best(trials)
        bench.done()
        _check_something_quantized(trials, config.excluded_nodes, model_path)
        advice = None if chosen.passed else tuner.advice(trials, traits, evaluator.task)
        if advice is not None and warn is not None:  # said, not noted: the manifest holds it as tuning.advice
            warn(f"no trial passed the gate ({gate.describe()}); {advice}")

        chosen_path = bench.path(chosen)
        for name, error in outputs.broken_outputs(evaluator, fp32_path, chosen_path).items():
            note(
                f"output {name!r} is {error:.1%} off FP32 (relative error on the evaluation data), where "
                f"rounding leaves 1-2%; the gate measures {evaluator.output!r} only: check {name!r} "
                "before anything reads it"
            )
        if chosen.passed and (shadow := evaluator.shadow_warning(chosen.evaluation)) is not None:
            note(shadow)
        chosen_model = onnx.load(str(chosen_path))
        if hint := tuner.static_for_convs(
            chosen, [(n.name, n.op_type) for n in chosen_model.graph.node], traits
        ):
            note(hint)
        kept = engine.matmuls_only_exclusions(prepared_model, chosen.config)
        if hint := tuner.matmuls_only_in_float(
            chosen, [(n.name, n.op_type) for n in prepared_model.graph.node], kept
        ):
            note(hint)
        chosen_ranges = ranges.activation_ranges(
            chosen_model, prepared_model, calibrations.ranges_for(chosen.config)
        )
        fallback = runtime.fallback_ops(chosen_path)
        if chosen.passed:
            sources = runtime.unfused_sources(chosen_path) if fallback else []
            sides = bench.cheaper_sides(chosen, sources)
            _warn_of_the_canary(
                fallback, sources, sides, chosen_path, chosen_ranges, evalset, inputs, config, note
            )
        histograms = []
        if calib is not None and chosen_ranges:
            task = progress.add_task("calibration histograms (drift baseline)", total=1)
            histograms = calibration_histograms(prepared, chosen_ranges, calib, batch)
            progress.advance(task)
        manifest = _manifest(
            fp32=fp32,
            model_path=model_path,
            config=config,
            chosen=chosen,
            trials=trials,
            advice=advice,
            calib=calib,
            evalset=evalset,
            activation_ranges=chosen_ranges,
            histograms=histograms,
            errors=bench.errors_for(chosen.config),
            hardware=hardware,
            pre_processed=pre_processed,
            fallback=fallback,
            evaluator=evaluator,
            warnings=said,
            seconds=time.perf_counter() - started,
            # After the drift histograms, which can outgrow every trial (EfficientNet: 977 -> 1272 MB).
            peak_rss_mb=workbench.peak_rss_mb(),
        )
        destination = _destination(out, chosen.passed)
        replaced = artifact_manifest.is_artifact_dir(destination)
        written = artifact.write_artifact(
            destination,
            {artifact.MODEL_FILE: chosen_path, artifact.REFERENCE_FILE: fp32_path},
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
        out,
        destination,
        replaced,
    )


def _warn_of_the_canary(
    fallback: dict[str, int],
    sources: list[tuple[str, ...]],
    sides: list[str],
    model: Path,
    activation_ranges: list[activations.ActivationRange],
    evalset: data.Dataset,
    inputs: list[data.InputSpec],
    config: QuantizeConfig,
    note: Callable[[str], None],
) -> None:
    """Say what a canary of the passing artifact fails on under the default SLOs: ops left in float
    behind Q/DQ (which tuner.without_unfused could not remove; `sources`, the model's nodes behind
    each, runtime.unfused_sources; `sides`, the quantized nodes an --exclude keeps in float to lift
    them, Workbench.cheaper_sides), and the clip rate of the evaluation rows as the server counts it."""
    nodes = [name for group in sources for name in group]
    if (warning := canary.fallback_warning(fallback, nodes, sides)) is not None:
        note(warning)
    if activation_ranges:
        fixed = next((spec.batch_dim for spec in inputs if spec.batch_dim), None) if evalset.stacked else None
        if warning := canary.clip_warning(canary.clipping(model, activation_ranges, evalset, fixed)):
            note(warning)


def _destination(out: Path, passed: bool) -> Path:
    """`out`, unless the gate failed and `out` holds a servable artifact: a rerun whose gate failed
    replaced it, and then `verify` said ok of the failed model and `serve` served it."""
    if passed or not artifact_dirs.holds_servable(out):
        return out
    return artifact_dirs.gate_failed_path(out)


def _read_inputs(
    model_path: Path,
    config: QuantizeConfig,
    calibration: Path | None,
    evaluation: Path | None,
    note: Callable[[str], None],
) -> tuple[onnx.ModelProto, list[data.InputSpec], data.Dataset | None, data.Dataset]:
    """The FP32 model and the data, checked against it: everything the user handed in."""
    fp32 = engine_model.load_model(model_path)
    inputs = data.model_inputs(fp32)
    if config.mode is Mode.STATIC and calibration is None:
        raise QuantizeInputError(
            "static quantization needs calibration data (--calibration); without any, --mode dynamic "
            "quantizes weights only and needs evaluation data (--evaluation) for the gate"
        )
    calib = data.load_dataset(calibration, inputs, role="calibration") if calibration else None
    evalset = data.load_dataset(evaluation, inputs, role="evaluation") if evaluation else calib
    if evalset is None:
        raise QuantizeInputError(
            "dynamic quantization needs evaluation data (--evaluation) for the accuracy gate"
        )
    if evaluation is None:
        note("no --evaluation data: the gate compares FP32 and INT8 on the calibration data itself")
    return fp32, inputs, calib, evalset


def _check_writable(out: Path) -> None:
    """Fail before an hour of calibration, not after."""
    try:
        artifact.refuse_inside_an_artifact(out)
    except artifact.ArtifactError as exc:
        raise QuantizeInputError(str(exc)) from None
    if os.path.ismount(out):  # the artifact is built beside it and renamed into place: not across
        raise QuantizeInputError(f"{out} is a mount point: write the artifact to a directory inside it")
    parent = out.resolve().parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise QuantizeInputError(f"cannot write the artifact to {out}: {existing or parent} is not writable")
    for destination in (out, artifact_dirs.gate_failed_path(out)):  # the second, should the gate fail
        if (refused := artifact_dirs.in_the_way(destination)) is not None:
            raise QuantizeInputError(f"{refused} exists and is not an artifact; refusing to overwrite it")


def _check_manifest_fits(
    prepared: Path,
    config: QuantizeConfig,
    traits: tuner.ModelTraits,
    source: Path,
    folder: Path,
    kept: tuple[str, ...],
) -> None:
    """Refuse, before calibrating, a model whose artifact could not hold its activations' ranges: the
    manifest holds MAX_MANIFEST_BYTES, and a range with its drift histogram takes about 0.7 KB, so
    the write at the end refused it after every trial. Where every recipe the trials use is static
    (`tuner.stage_one`; dynamic ones write no ranges), by the activations that the recipe quantizing
    fewest gives a range (`engine.quantized_activations`: MatMulConstBOnly leaves some out), less
    those of the nodes its trials may keep in float (`kept`: a mask's path, which calibration
    confirms), at their fewest bytes (`artifact_manifest.least_manifest_bytes`): the write's own check keeps
    the last word."""
    recipes = tuner.stage_one(config, traits)
    if any(recipe.mode is Mode.DYNAMIC for recipe in recipes):
        return
    # Only the format, onnxruntime's extra options and MatMuls-only change which tensors get a range.
    excluded = tuple(dict.fromkeys((*config.excluded_nodes, *kept)))
    alike = {
        (recipe.format, repr(recipe.extra_options()), recipe.matmuls_only): replace(
            recipe, excluded_nodes=excluded
        )
        for recipe in recipes
    }
    try:
        tensors = min(
            (engine.quantized_activations(prepared, recipe, folder) for recipe in alike.values()), key=len
        )
    except Exception:  # onnxruntime raises its own pybind types for every failure
        return  # a recipe onnxruntime cannot quantize fails as a trial, which says why
    least = artifact_manifest.least_manifest_bytes(tensors)
    if least > artifact_format.MAX_MANIFEST_BYTES:
        raise QuantizeInputError(
            f"{source}: quantizing its {len(tensors)} activations takes at least {least} bytes of "
            f"ranges and histograms, more than the {artifact_format.MAX_MANIFEST_BYTES} an artifact's "
            "manifest may hold; keep part of the model in float (--exclude) or quantize dynamically "
            "(--mode dynamic)"
        )


def _check_exclusions(config: QuantizeConfig, model: onnx.ModelProto, *, pre_processed: bool) -> None:
    """onnxruntime ignores unknown names in nodes_to_exclude; a typo would silently quantize the node.
    The names are the prepared model's: pre-processing fuses nodes under new names."""
    names = {node.name for node in model.graph.node}
    unknown = [name for name in config.excluded_nodes if name not in names]
    if unknown:
        known = ", ".join(sorted(names)[:12]) + (" ..." if len(names) > 12 else "")
        fused = (
            " after onnxruntime's pre-processing (--no-pre-process keeps your names)" if pre_processed else ""
        )
        raise QuantizeInputError(
            f"--exclude names no node of the model{fused}: {', '.join(unknown)} (nodes: {known})"
        )


def _check_quantizable(model: onnx.ModelProto, source: Path) -> None:
    """A model none of whose ops onnxruntime quantizes would run every trial and fail the gate with
    advice about calibration data: say what it is at once."""
    if engine_graph.leading_quantizable_nodes(model):
        return
    found = {node.op_type for node in model.graph.node}
    followers = sorted(found & engine_graph.FOLLOWER_OPS)
    on_ints = sorted(
        found
        & (set(engine_graph.QUANTIZABLE_OPS) | set(engine_graph.DYNAMIC_OPS)) - engine_graph.FOLLOWER_OPS
    )
    why = [f"{', '.join(followers)} only after an op it quantized"] if followers else []
    why += [f"{', '.join(on_ints)} only on float inputs"] if on_ints else []
    because = f": it quantizes {' and '.join(why)}" if why else ""
    raise QuantizeInputError(
        f"{source}: onnxruntime quantizes none of the model's ops ({', '.join(sorted(found))}){because}"
    )


def _check_something_quantized(
    trials: list[tuner.Trial], excluded_by_user: tuple[str, ...], source: Path
) -> None:
    """The backstop of _check_quantizable: trials that all left every node in float are FP32 under
    another name, whatever the gate said of them. `excluded_by_user`: the --exclude given, not the
    nodes quantship keeps in float itself (Workbench.kept_in_float)."""
    if any(trial.quantized_nodes for trial in trials):
        return
    why = " (or --exclude named every node it would)" if excluded_by_user else ""
    if all(trial.config.mode is Mode.DYNAMIC for trial in trials):
        ops = ", ".join(sorted(set(engine_graph.DYNAMIC_OPS) - engine_graph.FOLLOWER_OPS))
        why += f"; dynamic quantization covers only {ops} (static, with --calibration, covers more)"
    raise QuantizeInputError(
        f"{source}: onnxruntime quantized no node of the model in any of {len(trials)} trials{why}"
    )


GATE_SETTINGS = (
    *("task", "metric", "threshold", "min_cosine", "mask_input"),
    *("max_trials", "keep_going", "strategy"),
)
"""Config fields not in the manifest's quantization settings: the validation section records what
the gate's became (the task, the metric, its rule), and the search's are no setting of the model."""


def _manifest(
    *,
    fp32: onnx.ModelProto,
    model_path: Path,
    config: QuantizeConfig,
    chosen: tuner.Trial,
    trials: list[tuner.Trial],
    advice: str | None,
    calib: data.Dataset | None,
    evalset: data.Dataset,
    activation_ranges: list[activations.ActivationRange],
    histograms: list[activations.ActivationHistogram],
    errors: list[sensitivity.TensorError],
    hardware: runtime.Hardware,
    pre_processed: str,
    fallback: dict[str, int],
    evaluator: Evaluator,
    warnings: list[str],
    seconds: float,
    peak_rss_mb: float,
) -> dict[str, Any]:
    gate = "passed" if chosen.passed else "failed"
    final = replace(chosen.config, excluded_nodes=config.excluded_nodes + chosen.excluded)
    quantization = {key: value for key, value in final.to_json().items() if key not in GATE_SETTINGS}
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": {
            **_model_section(fp32, model_path, evalset),
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
        "activation_ranges": [r.to_json() for r in activation_ranges],
        "activation_histograms": [h.to_json() for h in histograms],
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
            "peak_rss_mb": round(peak_rss_mb, 1),
            "advice": advice,
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
    out = out.resolve()  # as `run`'s: `-o .` has no name to build beside (a traceback)
    _check_writable(out)
    fp32 = engine_model.load_model(model_path)
    with scratch.directory(scratch.QUANTIZE_PREFIX) as tmp:
        return _package(fp32, engine_model.self_contained(model_path, tmp), out, sign_key)


def _package(
    fp32: onnx.ModelProto, model_path: Path, out: Path, sign_key: Ed25519PrivateKey | None
) -> artifact.Artifact:
    manifest = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": _model_section(fp32, model_path),
        "runtime": _runtime_section(),
        "quantization": {"precision": artifact_format.FP32_PRECISION, "mode": "none"},
    }
    return artifact.write_artifact(out, {artifact.MODEL_FILE: model_path}, manifest, sign_key=sign_key)


def _model_section(
    fp32: onnx.ModelProto, model_path: Path, gated: data.Dataset | None = None
) -> dict[str, Any]:
    """The model's inputs and outputs; with the data the gate ran, each input's `row_shape` too (one
    sample's call), which the server's load-time probe and example request use for open dimensions."""
    initializers = {init.name for init in fp32.graph.initializer}
    inputs = [_io(v) for v in fp32.graph.input if v.name not in initializers]
    row_shapes = gated.row_shapes() if gated is not None else {}
    for entry in inputs:
        if entry["name"] in row_shapes:
            entry["row_shape"] = row_shapes[entry["name"]]
    return {
        "source": model_path.name,
        "opset": {entry.domain or "ai.onnx": entry.version for entry in fp32.opset_import},
        "inputs": inputs,
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
