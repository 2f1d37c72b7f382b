"""One tuning trial at a time: quantize with a config, count what got quantized, judge it.

`pipeline.run` builds a Workbench over the prepared model and hands its methods to the tuner
(`tuner.tune`), which decides what to try; the Workbench holds what trials share: calibration
runs per method (`Calibrations`), the nodes each recipe quantizes, the per-tensor sensitivity of
a recipe (measured only when a stage asks for it).
"""

from __future__ import annotations

import json
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import onnx
from onnxruntime.quantization.calibrate import TensorsData
from rich.progress import Progress

from quantship import runtime
from quantship.quantize import (
    data,
    engine,
    engine_calibration,
    engine_graph,
    gate_metrics,
    outputs,
    ranges,
    sensitivity,
    tuner,
)
from quantship.quantize.config import Calibration, Format, Mode, QuantizeConfig
from quantship.quantize.constants import constant_names
from quantship.quantize.errors import CalibrationFailed, QuantizeInputError, RangeTooWide, first_line
from quantship.quantize.evaluate import Evaluator


class Workbench:
    def __init__(
        self,
        prepared: Path,
        prepared_model: onnx.ModelProto,
        config: QuantizeConfig,
        evaluator: Evaluator,
        calibrations: Calibrations,
        tmp: Path,
        progress: Progress,
        note: Callable[[str], None],
    ) -> None:
        self.prepared, self.prepared_model, self.config = prepared, prepared_model, config
        self.evaluator, self.calibrations = evaluator, calibrations
        self.tmp, self.progress, self.note = tmp, progress, note
        self.quantizable = sum(
            1 for n in prepared_model.graph.node if n.op_type in engine_graph.QUANTIZABLE_OPS
        )
        self.trials: list[tuner.Trial] = []
        self._quantized: dict[str, list[onnx.NodeProto]] = {}
        self._sensitivity: dict[str, list[sensitivity.TensorError]] = {}
        self._announced: set[tuple[str, ...]] = set()
        self._unclamped = [
            (_unclamped_reason(node), (node.name,))
            for node in outputs.folded_into_outputs(prepared_model)
            if node.name not in config.excluded_nodes
        ]
        self._found_by_range: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
        self._sides: set[str] = set()
        """The nodes `unfused` kept in float as a sandwich's side, in any trial (one a later trial does
        not carry on no longer counts)."""
        # No total: the tuner stops at the first passing trial, so its budget (--max-trials and one
        # more) is no plan: the bar read 0/17 and ended 8/8. It counts (3/?) until done says N/N.
        self._task = progress.add_task("tuning", total=None)

    def path(self, trial: tuner.Trial) -> Path:
        return self.tmp / f"trial-{trial.number}.onnx"

    def attempt(self, stage: tuner.Stage, config: QuantizeConfig, excluded: tuple[str, ...]) -> tuner.Trial:
        """tuner.Attempt: one quantization, judged on the fused int8 kernels."""
        begin, number, key = time.perf_counter(), len(self.trials), config.label()
        self.progress.update(self._task, description=f"tuning: {stage.value} trial {number}: {key}")
        candidate = self.tmp / f"trial-{number}.onnx"
        error, latency, fallback = None, None, None
        try:
            cache_path = self.calibrations.cache_for(config)
            # Not the user's own --exclude again: the manifest lists those, then these.
            kept = dict.fromkeys((*self.kept_in_float(config), *excluded))
            excluded = tuple(name for name in kept if name not in self.config.excluded_nodes)
            engine.quantize(
                self.prepared,
                candidate,
                config,
                cache_path=cache_path,
                exclude=self.config.excluded_nodes + excluded,
            )
            if key not in self._quantized:
                self._quantized[key] = engine_graph.quantized_nodes(
                    self.prepared_model, onnx.load(str(candidate)), config.mode, config.format
                )
            result = self.evaluator.evaluate(candidate)
            rows = self.evaluator.fixed_batch or 1
            latency = _latency_ms(candidate, self.evaluator.dataset, rows) if result.passed else None
            if stage is tuner.Stage.UNFUSED:
                fallback = sum(runtime.fallback_ops(candidate).values())
        except CalibrationFailed as exc:
            error, result = str(exc), self.evaluator.failed()
            self.note(f"trial {number} ({key}): {error}")
        except QuantizeInputError:
            raise  # the user's data or model: no other recipe fixes it
        except Exception as exc:  # onnxruntime raises its own pybind types for every failure
            # One recipe onnxruntime cannot quantize or run (an op it mishandles at some setting)
            # is a failed trial, not the end of the tuning.
            error, result = first_line(exc), self.evaluator.failed()
            self.note(f"trial {number} ({key}) failed in onnxruntime: {error}")
        quantized = len(
            {n.name for n in self._quantized.get(key, [])} - set(self.config.excluded_nodes + excluded)
        )
        self.progress.advance(self._task)
        trial = tuner.Trial(
            number,
            stage,
            config,
            excluded,
            quantized,
            quantized / self.quantizable if self.quantizable else 0.0,
            result,
            time.perf_counter() - begin,
            peak_rss_mb(),
            latency,
            error,
            fallback,
        )
        self.trials.append(trial)
        self._log(trial)
        return trial

    def _log(self, trial: tuner.Trial) -> None:
        """A line a trial where the bars do not draw (a CI log, a file): there rich shows them once,
        at the end, and MiniLM's static tuning was five minutes of silence after the gate's line."""
        if self.progress.disable or self.progress.console.is_terminal:
            return
        result = trial.evaluation
        if trial.error is not None:  # no value: the evaluator's worst stands in for one
            said = f"failed: {trial.error}"
        else:
            verdict = "passed" if trial.passed else "failed"  # top1_accuracy stated as a loss, not "0"
            said = f"{gate_metrics.stated(result.metric, result.value)}, {verdict}"
        self.progress.console.print(
            f"trial {trial.number} ({trial.stage.value}, {trial.config.label()}): {said} "
            f"({trial.seconds:.1f} s)",
            highlight=False,
            soft_wrap=True,
        )

    def unfused(
        self, start: tuner.Trial, trial: tuner.Trial, no_side: frozenset[str] = frozenset()
    ) -> list[str]:
        """What to keep in float beyond `trial`'s exclusions so that the nodes onnxruntime runs in float
        behind Q/DQ (runtime.unfused_sources: a node fused from several is those several) run among
        float neighbours, for tuner.without_unfused from `start`: their quantized elementwise
        neighbours (engine_graph.float_region); where those already are in float and onnxruntime still
        sandwiches the node (it fused them into one, fed by a DequantizeLinear and feeding a
        QuantizeLinear), the quantized nodes on its cheaper side (engine_graph.cheaper_side; never one of
        `no_side`, which a trial kept in float for nothing), where those sides, with the sides
        earlier trials of the stage kept in float and `trial` keeps, hold at most
        engine_graph.MAX_FLOAT_SIDE_SHARE of the weight values `start` quantized. Only for nodes of which a
        trial kept one in float (QOperator never quantizes a LayerNormalization: only its residual
        Add is a trial's): an op no recipe quantizes (a ReduceMean pooling attention's context)
        between quantized neighbours keeps them (quantize's warning names them). Not around a node of
        the user's --exclude: their choice of what runs in float stands as given (quantize warns of
        what it leaves behind Q/DQ)."""
        user = set(self.config.excluded_nodes)
        unfused = runtime.unfused_sources(self.path(trial))
        sources = [group for group in unfused if group and not user & set(group)]
        if not sources:
            return []
        quantized = self._still_quantized(trial)
        model = self.prepared_model
        regions = [engine_graph.float_region(model, group, quantized) for group in sources]
        wanted = {name for region in regions for name in region}
        in_float = set(trial.excluded)  # what a trial kept in float: a float op onnxruntime has, not ours
        sides = {
            name
            for group, region in zip(sources, regions, strict=True)
            if not region and in_float & set(group)
            for name in engine_graph.cheaper_side(model, group, quantized - no_side)
        }
        # Cumulative: three trials each given a tenth of what was still quantized kept 27% in float.
        kept = self._sides & in_float
        budget = engine_graph.MAX_FLOAT_SIDE_SHARE * engine_graph.weight_values(
            model, self._still_quantized(start)
        )
        if (
            engine_graph.weight_values(model, sides | kept) <= budget
        ):  # all or none: one left fails a canary all the same
            wanted |= sides
            self._sides |= sides
        return [node.name for node in model.graph.node if node.name in wanted]

    def _still_quantized(self, trial: tuner.Trial) -> set[str]:
        """The nodes `trial` quantized (its recipe's, less those it kept in float)."""
        return {node.name for node in self._quantized.get(trial.config.label(), [])} - set(trial.excluded)

    def cheaper_sides(self, trial: tuner.Trial, sources: list[tuple[str, ...]]) -> list[str]:
        """The quantized nodes that an --exclude would keep in float to lift the nodes `trial`'s model
        runs in float behind Q/DQ (`sources`: runtime.unfused_sources of its model): each one's cheaper
        side (engine_graph.cheaper_side), in graph order."""
        model, quantized = self.prepared_model, self._still_quantized(trial)
        sides = {name for group in sources for name in engine_graph.cheaper_side(model, group, quantized)}
        return [node.name for node in model.graph.node if node.name in sides]

    def kept_in_float(self, config: QuantizeConfig) -> dict[str, str]:
        """The nodes every trial of `config` keeps in float for correctness, not by the user's
        --exclude, each with why (said once). Found in the graph: a Relu/Clip that would serve a graph
        output clamped (outputs.folded_into_outputs). Found by `config`'s calibrated ranges: the
        nodes around a sentinel past ranges.UNQUANTIZABLE_MAGNITUDE and an additive mask's path
        (ranges.MASK_RATIO). Found by the recipe: MatMulConstBOnly's activation MatMuls
        (engine.const_b_exclusions), MatMuls-only's other ops and MLP-activation readers
        (engine.matmuls_only_exclusions), which the manifest then lists. Static recipes only: dynamic
        quantization has no ranges to fold or to lose the data in. The trials' excluded nodes (and so
        the manifest's excluded_nodes), their quantized counts and the fallback stages' candidates
        all read this."""
        if config.mode is not Mode.STATIC:
            return {}
        kept: dict[str, str] = {}
        for why, nodes in [*self._unclamped, *self._by_range(config)]:
            wanted = [name for name in nodes if name not in kept and name not in self.config.excluded_nodes]
            if wanted and nodes not in self._announced:
                self._announced.add(nodes)
                self.note(f"static trials: {why}")  # the manifest keeps it, whichever recipe wins
            kept.update(dict.fromkeys(wanted, why))
        # Said by the recipe's label, not noted: only the recipes with the option keep them.
        const_b = engine.const_b_exclusions(self.prepared_model, config)
        wanted = [name for name in const_b if name not in kept and name not in self.config.excluded_nodes]
        kept.update(dict.fromkeys(wanted, "MatMulConstBOnly: a MatMul of two activations"))
        only = engine.matmuls_only_exclusions(self.prepared_model, config)
        wanted = [name for name in only if name not in kept and name not in self.config.excluded_nodes]
        kept.update(dict.fromkeys(wanted, "MatMuls-only: no MatMul, or one reading an MLP's activation"))
        return kept

    def kept_before_calibrating(self) -> tuple[str, ...]:
        """The most nodes a static trial may keep in float beyond the user's --exclude, as far as the
        graph tells before any calibration: the unclamped ones (every trial keeps them) and every node
        an additive mask could keep (ranges.possible_mask_nodes; calibration says which masks are).
        A calibrated sentinel (ranges.unquantizable) may keep more; in the GPT-2 exports measured
        (4 to 48 layers), every node calibration kept was among these."""
        unclamped = (name for _, nodes in self._unclamped for name in nodes)
        return tuple(dict.fromkeys((*unclamped, *ranges.possible_mask_nodes(self.prepared_model))))

    def _by_range(self, config: QuantizeConfig) -> list[tuple[str, tuple[str, ...]]]:
        """What `config`'s calibration found to keep in float, with why: none before it ran or
        where it failed. The 1e30 rule comes first and stays a rule of its own: it holds for any
        tensor, attention or not, and its tensors are those no histogram can bin; the mask rule
        needs an Add into a Softmax, and catches the -10000 the 1e30 bound misses. Masks are found
        by min-max's ranges whatever `config`'s method, as its own pass observed them
        (engine_calibration.Calibrated.observed): a histogram method clips or symmetrises a mask's range
        (distribution's [-10000, 10000] hid it), and the graph's masks are one set."""
        calibrated = self.calibrations.calibrated(config)
        if calibrated is None:
            return []
        key = self.calibrations.key(config)
        if key not in self._found_by_range:
            found = []
            if wide := ranges.unquantizable(calibrated.ranges):
                found.append(_sentinels_reason(self.prepared_model, wide))
            if masks := ranges.additive_masks(self.prepared_model, calibrated.observed):
                found.append(_masks_reason(self.prepared_model, masks))
            self._found_by_range[key] = found
        return self._found_by_range[key]

    def op_type_groups(self, recipe: QuantizeConfig) -> dict[str, tuple[str, ...]]:
        """The nodes `recipe` quantized that the tuner may leave in float, by op type (stage 2)."""
        groups: dict[str, list[str]] = {}
        for node in self._fallback_candidates(recipe):
            groups.setdefault(_kernel_op_type(node, recipe), []).append(node.name)
        return {op: tuple(names) for op, names in groups.items()}

    def ranking(self, recipe: QuantizeConfig) -> list[str]:
        """The nodes `recipe` quantized that the tuner may leave in float, most sensitive first (stage 3)."""
        candidates = [n.name for n in self._fallback_candidates(recipe)]
        return sensitivity.rank_nodes(self.errors_for(recipe), candidates)

    def _fallback_candidates(self, recipe: QuantizeConfig) -> list[onnx.NodeProto]:
        """Quantized nodes with a range of their own: not one the user already left in float, not a
        follower (engine_graph.FOLLOWER_OPS), whose exclusion would only move its producer's range."""
        excluded = set(self.config.excluded_nodes) | set(self.kept_in_float(recipe))
        return [
            node
            for node in self._quantized.get(recipe.label(), [])
            if node.name not in excluded and node.op_type not in engine_graph.FOLLOWER_OPS
        ]

    def errors_for(self, recipe: QuantizeConfig) -> list[sensitivity.TensorError]:
        """Per-tensor SQNR of `recipe`, measured once."""
        if recipe.label() not in self._sensitivity:
            try:
                errors = _sensitivity(
                    self.prepared,
                    recipe,
                    self.calibrations,
                    tuple(self.kept_in_float(recipe)),
                    self.tmp,
                    self.progress,
                )
            except QuantizeInputError:
                raise
            except Exception as exc:  # onnxruntime's pybind types, as in a trial: a ranking lost, not the run
                errors = []
                self.note(
                    f"per-tensor sensitivity of {recipe.label()} failed in onnxruntime: "
                    f"{first_line(exc)}; nodes are tried in graph order"
                )
            self._sensitivity[recipe.label()] = errors
        return self._sensitivity[recipe.label()]

    def done(self) -> None:
        count = len(self.trials)
        self.progress.update(self._task, total=count, completed=count, description="tuning: done")


def _unclamped_reason(node: onnx.NodeProto) -> str:
    return (
        f"{node.op_type} {node.name!r} is kept in float: its input {node.input[0]!r} is a graph output, "
        f"which onnxruntime would quantize to the {node.op_type}'s output range and serve clamped to it"
    )


def _sentinels_reason(
    model: onnx.ModelProto, wide: dict[str, tuple[float, float]]
) -> tuple[str, tuple[str, ...]]:
    """Why the nodes around tensors past ranges.UNQUANTIZABLE_MAGNITUDE stay in float, and those nodes."""
    nodes = ranges.nodes_around(model, wide)
    spans = ", ".join(f"{name} [{low:.3g}, {high:.3g}]" for name, (low, high) in wide.items())
    why = (
        f"{len(wide)} calibrated tensors reach past +-{ranges.UNQUANTIZABLE_MAGNITUDE:g}: a sentinel, "
        f"not data (an additive attention mask's finfo.min, the -inf of a log of 0), that no INT8 "
        f"scale carries with the data "
        f"({spans}); their producers and consumers stay in float: {', '.join(nodes)}"
    )
    return why, nodes


def _masks_reason(model: onnx.ModelProto, masks: list[ranges.Mask]) -> tuple[str, tuple[str, ...]]:
    """Why the masks' paths stay in float, and their nodes (in graph order, once each)."""
    named = {node for mask in masks for node in mask.nodes}
    nodes = tuple(node.name for node in model.graph.node if node.name in named)
    once: dict[str, ranges.Mask] = {}
    for mask in masks:  # one mask read by every layer's Add: named once, as first found
        once.setdefault(mask.tensor, mask)
    spans = ", ".join(f"{m.tensor} [{m.low:.3g}, {m.high:.3g}] beside +-{m.data:.3g}" for m in once.values())
    why = (
        f"additive masks reach {ranges.MASK_RATIO:g}x or more below the data they are added "
        f"to before a Softmax ({spans}): one INT8 scale for both leaves the data a few codes, so "
        f"what makes the mask, the sum and the Softmax stay in float: {', '.join(nodes)}"
    )
    return why, nodes


def _kernel_op_type(node: onnx.NodeProto, recipe: QuantizeConfig) -> str:
    """The op type whose int8 kernel runs `node`: dynamic quantization runs a Gemm as a MatMul
    (engine_graph.DYNAMIC_OPS), so a Gemm head is no op type of its own beside a transformer's MatMuls."""
    return "MatMul" if recipe.mode is Mode.DYNAMIC and node.op_type == "Gemm" else node.op_type


class Calibrations:
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
        self._done: dict[str, tuple[Path, engine_calibration.Calibrated]] = {}
        self._failed: dict[str, CalibrationFailed] = {}

    def key(self, config: QuantizeConfig) -> str:
        """What sets a calibration apart: two configs of one key share it."""
        return json.dumps([config.calibration.value, config.calibration_params()], sort_keys=True)

    def cache_for(self, config: QuantizeConfig) -> Path | None:
        if config.mode is not Mode.STATIC or self.dataset is None:
            return None
        key = self.key(config)
        if key in self._failed:
            raise self._failed[key]
        if key not in self._done:
            try:
                self._done[key] = self._calibrate(config)
            except CalibrationFailed as exc:
                self._failed[key] = exc
                raise
        return self._done[key][0]

    def _calibrate(self, config: QuantizeConfig) -> tuple[Path, engine_calibration.Calibrated]:
        """A calibration. A histogram method that cannot bin a sentinel's range takes those tensors'
        ranges from min-max (a run the tuner reuses) and bins the rest."""
        try:
            return self._run(config, {})
        except RangeTooWide:
            wide = self._wide_by_minmax(config)
            if not wide:
                raise
            return self._run(config, wide)

    def _wide_by_minmax(self, config: QuantizeConfig) -> dict[str, tuple[float, float]]:
        """Min-max's ranges past ranges.UNQUANTIZABLE_MAGNITUDE, for a histogram method that could
        not bin them: a min-max pass over `config`'s data (none where min-max fails too)."""
        if config.calibration is Calibration.MINMAX:
            return {}
        minmax = replace(config, calibration=Calibration.MINMAX)
        try:
            self.cache_for(minmax)
        except CalibrationFailed:
            return {}
        calibrated = self.calibrated(minmax)
        return ranges.unquantizable(calibrated.ranges) if calibrated is not None else {}

    def _run(
        self, config: QuantizeConfig, given: dict[str, tuple[float, float]]
    ) -> tuple[Path, engine_calibration.Calibrated]:
        assert self.dataset is not None
        described = f"calibrating ({config.calibration.value}"
        described += f", {len(given)} ranges from min-max)" if given else ")"
        task = self.progress.add_task(described, total=self.dataset.size)
        cache = self.tmp / f"calibration-{len(self._done)}-{config.calibration.value}.json"
        try:
            calibrated = engine_calibration.calibrate(
                self.prepared,
                self.dataset,
                config,
                self.batch_size,
                cache,
                lambda n: self.progress.advance(task, n),
                given,
            )
        except CalibrationFailed as exc:
            # Its bar stays on screen: left as it was (MiniLM's entropy pass at 8/200, its clock
            # still running, with the pass run again below it) it read as a calibration that stalled.
            why = "a range too wide to bin" if isinstance(exc, RangeTooWide) else "failed"
            self.progress.update(task, description=f"{described}: stopped, {why}")
            self.progress.stop_task(task)
            raise
        return cache, calibrated

    def ranges_for(self, config: QuantizeConfig) -> TensorsData | None:
        if self.cache_for(config) is None:
            return None
        return self._done[self.key(config)][1].ranges

    def calibrated(self, config: QuantizeConfig) -> engine_calibration.Calibrated | None:
        """`config`'s calibration where it ran; None in dynamic mode, before it ran, or where it
        failed (unlike ranges_for, never calibrates)."""
        done = self._done.get(self.key(config)) if config.mode is Mode.STATIC else None
        return done[1] if done else None


def traits(model: onnx.ModelProto, can_calibrate: bool, hardware: runtime.Hardware) -> tuner.ModelTraits:
    fixed = constant_names(model)
    matmuls = [node for node in model.graph.node if node.op_type == "MatMul"]
    is_x86 = hardware.machine.lower() in ("x86_64", "amd64", "i686")
    return tuner.ModelTraits(
        has_conv=any(node.op_type == "Conv" for node in model.graph.node),
        has_matmul=bool(matmuls) or any(node.op_type == "Gemm" for node in model.graph.node),
        has_activation_matmul=any(len(node.input) > 1 and node.input[1] not in fixed for node in matmuls),
        has_mlp_activation_reader=bool(engine.mlp_activation_readers(model)),
        can_calibrate=can_calibrate,
        lacks_vnni=is_x86 and not hardware.has_vnni,
    )


LATENCY_RUNS = 15


def _latency_ms(model: Path, dataset: data.Dataset, rows: int) -> float:
    """The median of a call of `rows` rows (1; a model that fixes its batch size, that size) on this
    machine, as served (all cores, all optimizations)."""
    session = runtime.create_session(model)
    row = next(dataset.subset(rows).batches(rows))
    for _ in range(3):
        session.run(None, row)
    times = []
    for _ in range(LATENCY_RUNS):
        begin = time.perf_counter()
        session.run(None, row)
        times.append(time.perf_counter() - begin)
    return statistics.median(times) * 1000


def peak_rss_mb() -> float:
    """This process's peak so far, or a child's (quant_pre_process runs in one) where that was higher."""
    peaks = (resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return max(peaks) / 1024  # KiB on Linux


def _sensitivity(
    prepared: Path,
    config: QuantizeConfig,
    calibrations: Calibrations,
    kept_in_float: tuple[str, ...],
    tmp: Path,
    progress: Progress,
) -> list[sensitivity.TensorError]:
    """Per-tensor SQNR of a QDQ quantization of the model with `config` (static mode only: dynamic
    quantization has no activation ranges to debug)."""
    calib = calibrations.dataset
    if config.mode is not Mode.STATIC or calib is None:
        return []
    task = progress.add_task("per-tensor sensitivity (qdq_loss_debug)", total=1)
    qdq = tmp / "sensitivity-qdq.onnx"
    engine.quantize(
        prepared,
        qdq,
        config,
        cache_path=calibrations.cache_for(config),
        exclude=config.excluded_nodes + kept_in_float,
        format=Format.QDQ,
    )
    errors = sensitivity.measure(prepared, qdq, calib, calibrations.batch_size, tmp)
    progress.advance(task)
    return errors
