"""The tuner: which configurations to try, in which order, and which result to keep.

Like Intel Neural Compressor's basic strategy, in three stages, each stopping at its first
passing trial (unless asked to keep going):

1. **recipes** on the whole model: per-channel weights, the int8 kernel (where the CPU lacks
   VNNI: reduce_range or uint8 weights), activation type, calibration method, dynamic vs static
   and MatMulConstBOnly for transformers. Nearest recipes first: one knob changed from the
   user's config, then two... and best-first: once a failed trial other than the first comes
   closest to the gate, the recipes left are tried nearest to it first (fewest knobs differing;
   ties in that order). On all-MiniLM-L6-v2 every static
   recipe of every op scored 0 and dynamic per-tensor 0.89: dynamic per-channel, one knob from
   it, passed, but waited behind four static recipes. A per-tensor CNN that falls off a cliff is
   usually one knob (per-channel) from passing. Where none passes on a transformer with an MLP,
   the closest static recipe with MatMuls-only (`_matmuls_only_for`) is one more;
2. **op-type fallback** on the recipe that came closest: every node of one op type in float;
3. **node-wise fallback** on that recipe: the most sensitive nodes in float one at a time, then
   cumulatively in the order the single trials measured.

Among passing trials the most quantized wins (the share of quantizable FP32 nodes still
quantized), then the fastest on this machine (measured batch-1 latency). With none passing, the
trial closest to the gate is the best effort.

Then up to MAX_UNFUSED_TRIALS more, past the budget (`without_unfused`): the winner with the nodes
onnxruntime could not fuse into int8 kernels (runtime.fallback_ops: a GPT-2's LayerNormalization,
Pow, Tanh) kept in float, then what onnxruntime still runs in float behind Q/DQ in that graph (a
SkipLayerNormalization it fused from float nodes). Quantized, such a node runs in float between a
DequantizeLinear and a QuantizeLinear, paying both conversions for nothing, and a canary over
`maxFallbackOps` fails. Judged like any trial, on the int8 kernels; the passing one that leaves
the fewest such ops is the result.

This module decides; `pipeline.py` quantizes and measures through the `Attempt` it is given.
"""

from __future__ import annotations

import enum
import itertools
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any

from quantship.agreement import Task
from quantship.quantize.config import MIN_NUM_BINS, Calibration, Mode, Precision, QuantizeConfig, Strategy
from quantship.quantize.gate_metrics import Evaluation


class Stage(enum.StrEnum):
    RECIPE = "recipe"
    OP_TYPE = "op_type"
    SINGLE = "node_single"
    CUMULATIVE = "node_cumulative"
    UNFUSED = "unfused_in_float"


@dataclass(frozen=True)
class Trial:
    number: int
    stage: Stage
    config: QuantizeConfig
    excluded: tuple[str, ...]
    """Nodes this trial left in float, beyond those the user excluded."""
    quantized_nodes: int
    quantized_share: float
    """quantized_nodes over the FP32 nodes of quantizable op types: comparable across recipes."""
    evaluation: Evaluation
    seconds: float
    peak_rss_mb: float
    """The process's peak resident memory when the trial ended (a high-water mark)."""
    latency_ms: float | None = None
    """Batch-1 median on this machine; measured for passing trials only."""
    error: str | None = None
    """Why onnxruntime could not quantize or run this configuration (then it failed)."""
    fallback_ops: int | None = None
    """How many ops its model runs in float behind Q/DQ (runtime.fallback_ops): counted for the
    `without_unfused` trials, which `best` ranks by it."""

    @property
    def passed(self) -> bool:
        """The gate passed with something still quantized (all in float is FP32, not a result)."""
        return self.evaluation.passed and self.quantized_nodes > 0

    @property
    def shortfall(self) -> float:
        """How far the gated metric is from the limit, in loss units (<= 0 passes)."""
        return self.evaluation.delta - self.evaluation.limit

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "stage": self.stage.value,
            "recipe": self.config.label(),
            "config": {
                key: value
                for key, value in self.config.to_json().items()
                if key
                in (
                    "mode",
                    "per_channel",
                    "activation_type",
                    "weight_type",
                    "calibration",
                    "reduce_range",
                    "matmul_const_b_only",
                    "matmuls_only",
                )
            },
            "excluded": list(self.excluded),
            "quantized_nodes": self.quantized_nodes,
            "quantized_share": round(self.quantized_share, 4),
            "passed": self.passed,
            "seconds": round(self.seconds, 3),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 4),
            "error": self.error,
            **{k: v for k, v in self.evaluation.to_json().items() if k != "samples"},
        }


Attempt = Callable[[Stage, QuantizeConfig, tuple[str, ...]], Trial]
"""Quantize with a config, leaving nodes in float, and judge it: one trial."""


@dataclass(frozen=True)
class ModelTraits:
    """What decides which recipes make sense for a model."""

    has_conv: bool
    has_matmul: bool
    has_activation_matmul: bool
    """A MatMul of two activations (attention): what MatMulConstBOnly leaves in float."""
    can_calibrate: bool
    """Calibration data was given: static recipes are possible."""
    lacks_vnni: bool
    """x86 without VNNI: the choice of int8 kernel is a knob of its own (`_kernels`)."""
    has_mlp_activation_reader: bool = False
    """A MatMul by a weight that reads an MLP's GELU or SiLU (engine.mlp_activation_readers): a
    transformer whose static INT8 may need MatMuls-only."""

    @property
    def transformer_like(self) -> bool:
        return self.has_matmul and not self.has_conv

    @property
    def may_need_matmuls_only(self) -> bool:
        """A transformer with an MLP: MatMuls-only is for it alone (on a CNN it keeps every Conv in
        float), in the trial after stage 1 and in the advice alike."""
        return self.transformer_like and self.has_mlp_activation_reader


def recipes(base: QuantizeConfig, traits: ModelTraits) -> list[QuantizeConfig]:
    """Whole-model configurations, `base` first, then by how many knobs differ from it. A base
    calibrated with distribution is tried as given, once: its neighbours calibrate with min-max, as
    distribution is onnxruntime's float8 method (config.DISTRIBUTION_CAUTION) and on
    EfficientNet-Lite0 all 4 of its int8 neighbours agreed with FP32 on 0.0-0.3% of rows."""
    if base.calibration is Calibration.DISTRIBUTION:
        return [base, *recipes(replace(base, calibration=Calibration.MINMAX), traits)]
    axes: list[list[dict[str, Any]]] = [_values("per_channel", [base.per_channel, not base.per_channel])]
    if traits.transformer_like:
        modes = [base.mode, Mode.STATIC if base.mode is Mode.DYNAMIC else Mode.DYNAMIC]
        axes.append(_values("mode", [m for m in modes if m is Mode.DYNAMIC or traits.can_calibrate]))
    if traits.lacks_vnni:
        axes.append(_kernels(base))
    axes.append(_values("activation_type", _other_first(base.activation_type, list(Precision))))
    axes.append(
        _values(
            "calibration",
            _other_first(base.calibration, [Calibration.MINMAX, Calibration.PERCENTILE, Calibration.ENTROPY]),
        )
    )
    if traits.has_activation_matmul and base.matmul_const_b_only is not False:  # False: the user's no
        axes.append(_values("matmul_const_b_only", [base.matmul_const_b_only, not base.matmul_const_b_only]))

    ranked: list[tuple[tuple[int, tuple[int, ...]], QuantizeConfig]] = []
    seen: set[str] = set()
    for choice in itertools.product(*(range(len(values)) for values in axes)):
        changes: dict[str, Any] = {}
        for values, i in zip(axes, choice, strict=True):
            changes.update(values[i])
        config = _with_enough_bins(replace(base, **changes))
        if config.mode is Mode.STATIC and not traits.can_calibrate:
            continue
        if _no_x86_kernel(config) and not _no_x86_kernel(base):
            continue
        key = config.label()  # two configs with one label quantize alike (dynamic ignores calibration)
        if key in seen:
            continue
        seen.add(key)
        changed = tuple(axis for axis, i in enumerate(choice) if i)
        ranked.append(((len(changed), changed), config))
    ranked.sort(key=lambda item: item[0])
    return [config for _, config in ranked]


def _with_enough_bins(config: QuantizeConfig) -> QuantizeConfig:
    """A recipe whose calibration method needs more bins than the user's --num-bins (given for
    another method: percentile) calibrates with its method's default instead. Kept, it failed after a
    whole calibration and spent a trial; skipped, entropy would never be tried."""
    least = MIN_NUM_BINS.get(config.calibration)
    if least is not None and config.num_bins is not None and config.num_bins < least:
        return replace(config, num_bins=None)
    return config


def _values(name: str, values: list[Any]) -> list[dict[str, Any]]:
    return [{name: value} for value in values]


def _kernels(base: QuantizeConfig) -> list[dict[str, Any]]:
    """Which int8 kernel runs, on x86 without VNNI: there it decides accuracy more than any other
    knob, so it comes right after per-channel weights (and, for transformers, the mode). U8S8
    multiplies in 16-bit pairs that saturate with 8-bit weights, unless reduce_range makes them
    7-bit (exact, but coarser weights); U8U8 widens to 32 bits first: exact with 8-bit weights, and
    slower. Measured on EfficientNet-Lite0 (AMD EPYC, AVX2), per-channel, confident agreement with
    FP32: U8S8 0.82, U8S8 reduce-range 0.82, U8U8 0.98."""
    kernels: list[dict[str, Any]] = [
        {"weight_type": base.weight_type, "reduce_range": base.reduce_range},
        {"weight_type": Precision.UINT8, "reduce_range": False},
        {"weight_type": base.weight_type, "reduce_range": not base.reduce_range},
    ]
    unique: list[dict[str, Any]] = []
    for kernel in kernels:
        if kernel not in unique:
            unique.append(kernel)
    return unique


def _no_x86_kernel(config: QuantizeConfig) -> bool:
    """int8 activations with uint8 weights (S8U8): onnxruntime has no x86 int8 kernel for it."""
    return (
        config.mode is Mode.STATIC
        and config.activation_type is Precision.INT8
        and config.weight_type is Precision.UINT8
    )


def _other_first(current: Any, values: list[Any]) -> list[Any]:
    return [current, *(v for v in values if v != current)]


def _knob_distance(a: QuantizeConfig, b: QuantizeConfig) -> int:
    """How many of the knobs `recipes` turns differ between two configs."""
    return sum(x != y for x, y in zip(_knobs(a), _knobs(b), strict=True))


def _knobs(config: QuantizeConfig) -> tuple[Any, ...]:
    """The knobs `recipes` turns, one entry each (the int8 kernel is one knob of two fields). A
    dynamic config has none of the static-only ones: None, unlike any static value, so a static
    recipe is that many knobs away from a dynamic one, not the mode alone (MiniLM: after dynamic
    per-tensor came closest, a static recipe one mode away would be tried before dynamic per-channel)."""
    static = config.mode is Mode.STATIC
    return (
        config.per_channel,
        config.mode,
        (config.weight_type, config.reduce_range),
        config.activation_type if static else None,
        config.calibration if static else None,
        config.matmul_const_b_only if static else None,
        config.matmuls_only if static else None,
    )


def stage_one(base: QuantizeConfig, traits: ModelTraits) -> list[QuantizeConfig]:
    """The recipes stage 1 tries, and so every recipe a trial quantizes with (the fallback stages
    reuse the closest): `recipes`, or `base` alone (Strategy.FALLBACK), in half the trial budget at
    most, which the fallback stages need when no recipe passes."""
    candidates = recipes(base, traits) if base.strategy is Strategy.RECIPES else [base]
    return candidates[: max(1, (base.max_trials + 1) // 2)]


def tune(
    base: QuantizeConfig,
    traits: ModelTraits,
    attempt: Attempt,
    op_type_groups: Callable[[QuantizeConfig], dict[str, tuple[str, ...]]],
    sensitivity_ranking: Callable[[QuantizeConfig], list[str]],
) -> list[Trial]:
    """Every trial run, in order. `op_type_groups(config)`: the nodes a config quantizes, by op
    type; `sensitivity_ranking(config)`: them, most sensitive first. Both are asked only when a
    stage needs them (the ranking costs a qdq_loss_debug run)."""
    budget = base.max_trials + 1
    trials: list[Trial] = []

    def run(stage: Stage, config: QuantizeConfig, excluded: tuple[str, ...]) -> Trial | None:
        if len(trials) >= budget:
            return None
        trial = attempt(stage, config, excluded)
        trials.append(trial)
        return trial

    candidates = stage_one(base, traits)
    remaining = list(candidates)
    while remaining:
        trial = run(Stage.RECIPE, remaining.pop(0), ())
        if trial is None:
            break
        if trial.passed:
            if not base.keep_going:
                return trials
        elif (nearest := _closest(trials)) is not trials[0]:
            remaining.sort(key=lambda c: (_knob_distance(nearest.config, c), candidates.index(c)))
    if any(t.passed for t in trials):
        return trials
    if (matmuls_only := _matmuls_only_for(trials, traits)) is not None:
        trial = run(Stage.RECIPE, matmuls_only, ())
        if trial is None or trial.passed:
            return trials

    closest = _closest(trials).config
    groups = op_type_groups(closest)
    if len(groups) == 1:
        groups = {}  # leaving the only op type in float leaves nothing quantized
    # Fewest nodes first: the cheapest op type to give up.
    for _, nodes in sorted(groups.items(), key=lambda item: (len(item[1]), item[0]))[: max(0, budget // 4)]:
        trial = run(Stage.OP_TYPE, closest, nodes)
        if trial is None or trial.passed:
            return trials
    if len(trials) >= budget:
        return trials

    _node_search(closest, sensitivity_ranking(closest), run, budget - len(trials))
    return trials


def _matmuls_only_for(trials: Sequence[Trial], traits: ModelTraits) -> QuantizeConfig | None:
    """The static recipe closest to the gate with MatMuls-only (config.matmuls_only), for a
    transformer with an MLP whose static recipes all failed without it; None otherwise, and where
    the user said --no-matmuls-only (a ban: no trial, no advice to use it). Not a
    recipe of stage 1: it runs 6 of all-MiniLM-L6-v2's 36 weight MatMuls in float, and dynamic
    per-channel passes as closely, 1.8x faster a row and 22 MB against 33; where the static
    recipes of every op fail on a BERT's outlier channels (all-MiniLM-L6-v2: cosine agreement 0), it
    is the static recipe that passes, before any fallback stage."""
    static = [t for t in trials if t.config.mode is Mode.STATIC]
    if not traits.may_need_matmuls_only or not static:
        return None
    if any(t.config.matmuls_only is not None for t in static):  # tried already, or the user's no
        return None
    return replace(_closest(static).config, matmuls_only=True)


def _node_search(
    config: QuantizeConfig,
    ranking: Sequence[str],
    run: Callable[[Stage, QuantizeConfig, tuple[str, ...]], Trial | None],
    budget: int,
) -> None:
    """Single nodes in ranking order (any pass keeps the rest quantized), then growing prefixes
    re-ordered by the deltas the single trials measured."""
    if not ranking or budget <= 0:
        return
    measured: dict[str, float] = {}
    for node in ranking[: max(1, budget // 2)]:
        trial = run(Stage.SINGLE, config, (node,))
        if trial is None or trial.passed:
            return
        measured[node] = trial.evaluation.delta
    # Measured single-node deltas know better than SQNR which nodes hurt most; unmeasured nodes
    # keep their SQNR order behind the measured ones.
    order = sorted(measured, key=measured.__getitem__) + [n for n in ranking if n not in measured]
    for size in range(2, len(order)):  # all of them in float leaves nothing quantized
        trial = run(Stage.CUMULATIVE, config, tuple(order[:size]))
        if trial is None or trial.passed:
            return


MAX_UNFUSED_TRIALS = 3
"""The most `without_unfused` trials: the first keeps GPT-2's GELUs and LayerNormalizations in float
with their elementwise neighbours, the second a side of the SkipLayerNormalization onnxruntime then
fuses from its last residual Add and ln_f; a third for what only that graph leaves unfused."""


Unfused = Callable[[Trial, Trial, frozenset[str]], Sequence[str]]
"""What to keep in float beyond a trial's (the second's) exclusions for the nodes its model leaves
unfused, never a node of the given set as a sandwich's side; the first trial is the one the stage
started from, against which the sides' weight values are bounded (Workbench.unfused)."""


def without_unfused(chosen: Trial, unfused: Unfused, attempt: Attempt) -> list[Trial]:
    """`chosen` again with what `unfused` says of its model kept in float as well (the nodes
    onnxruntime runs in float behind Q/DQ, and the neighbours that put them there), then that trial
    refined the same way while it passes and something is left unfused, up to MAX_UNFUSED_TRIALS:
    onnxruntime fuses the float nodes of one trial into a node the next one finds unfused. A
    refinement whose fallback_ops did not fall lifted no sandwich (its side's DequantizeLinear stays
    for another quantized reader): its nodes are not carried on, and the next trial refines the one
    before without them as a side. Each trial passed or failed (`best` takes a passing one of the
    fewest fallback ops); none where `chosen` failed or nothing was left unfused. One quantization
    each, on the calibration `chosen` used; what the best leaves unfused stays (the manifest's
    fallback_ops counts it, and quantize warns)."""
    refined: list[Trial] = []
    last, futile = chosen, frozenset[str]()
    while last.passed and len(refined) < MAX_UNFUSED_TRIALS:
        wanted = tuple(name for name in unfused(chosen, last, futile) if name not in last.excluded)
        if not wanted:
            break
        trial = attempt(Stage.UNFUSED, chosen.config, (*last.excluded, *wanted))
        refined.append(trial)
        if trial.passed and last is not chosen and not _fewer_fallback_ops(trial, last):
            futile |= set(wanted)
        else:
            last = trial
    return refined


def _fewer_fallback_ops(trial: Trial, before: Trial) -> bool:
    """Whether `trial` runs fewer ops in float behind Q/DQ than `before` (uncounted: as many)."""
    return (
        trial.fallback_ops is not None
        and before.fallback_ops is not None
        and (trial.fallback_ops < before.fallback_ops)
    )


def best(trials: list[Trial]) -> Trial:
    """The passing `without_unfused` trial of the fewest fallback ops, then the most quantized, then
    the last (each refines one before, which the best of the others began); else the most quantized
    passing trial, then the fastest; else the one closest to the gate. The refinement wins even
    where its figures read a little worse: the trial it refines runs ops in float behind Q/DQ, which
    the canary's fallback gate (spec.slos.maxFallbackOps, 0 by default) fails outright, and dropping
    their conversions costs no kernel its int8 (on gpt2-lm: 0.569 against 0.569 ms a row, agreement
    higher) but the few a sandwich's cheaper side leaves in float (engine_graph.cheaper_side)."""
    passing = [t for t in trials if t.passed]
    if passing:
        return max(
            passing,
            key=lambda t: (
                t.stage is Stage.UNFUSED,
                -(t.fallback_ops or 0) if t.stage is Stage.UNFUSED else 0,
                round(t.quantized_share, 6),
                t.number if t.stage is Stage.UNFUSED else -1,
                -(t.latency_ms if t.latency_ms is not None else float("inf")),
                -t.evaluation.delta,
            ),
        )
    return _closest(trials)


def _closest(trials: Sequence[Trial]) -> Trial:
    """The trial nearest the gate: least shortfall, then most quantized, then the first."""
    return min(trials, key=lambda t: (t.shortfall, -t.quantized_share))


def _kernel(config: QuantizeConfig) -> str:
    return config.int8_pair + (" reduce-range" if config.reduce_range else "")


def _without_vnni(trials: list[Trial]) -> str:
    """What the missing VNNI meant for this model: the kernels tried, and those the budget left out."""
    tried = list(dict.fromkeys(_kernel(t.config) for t in trials))
    base = trials[0].config  # the first recipe is the user's own configuration
    knob = [replace(base, **kernel) for kernel in _kernels(base)]
    untried = [k for k in dict.fromkeys(_kernel(c) for c in knob if not _no_x86_kernel(c)) if k not in tried]
    return (
        " This CPU lacks VNNI, so the int8 kernel decides accuracy: U8S8 sums pairs of products in 16 "
        "bits (which saturates), reduce-range makes weights 7-bit, U8U8 is exact but slower. Tried: "
        + ", ".join(tried)
        + (f"; not reached within --max-trials: {', '.join(untried)}" if untried else "")
        + ". On a CPU with VNNI or AMX, U8S8 is exact: the same model may pass there (quantize where "
        "it is served)."
    )


def advice(trials: list[Trial], traits: ModelTraits, task: Task) -> str:
    """What to try next when nothing passed: said in the report and on the console."""
    closest = best(trials)
    evaluation = closest.evaluation
    hardware = _without_vnni(trials) if traits.lacks_vnni else ""
    return (
        f"closest: trial {closest.number} ({closest.config.label()}"
        f"{', ' + str(len(closest.excluded)) + ' nodes in float' if closest.excluded else ''}) with "
        f"{evaluation.metric.value} {evaluation.value:.4g} against {evaluation.threshold:g}. Next: "
        + ", ".join(_next_steps(closest, trials, traits, task))
        + "."
        + hardware
    )


def static_for_convs(chosen: Trial, nodes: Sequence[tuple[str, str]], traits: ModelTraits) -> str | None:
    """Where a passing dynamic trial left most of its Convs in float (`nodes`: its model's, as (name,
    op type); a Conv dynamic quantization keeps is a ConvInteger): static quantization is what
    quantizes a CNN's Convs. EfficientNet-Lite0 dynamic passed with every Conv in float, 1.3x smaller,
    and nothing said so. Convs the user's --exclude keeps in float (`chosen.config.excluded_nodes`)
    are their choice, not the mode's: only the others count, and the hint says how many --exclude keeps."""
    if not chosen.passed or chosen.config.mode is not Mode.DYNAMIC:
        return None
    in_float = [name for name, op_type in nodes if op_type == "Conv"]
    quantized = sum(1 for _, op_type in nodes if op_type == "ConvInteger")
    by_user = sum(1 for name in in_float if name in chosen.config.excluded_nodes)
    left = len(in_float) - by_user
    total = left + quantized
    if not total or left * 2 <= total:
        return None
    how = (
        "--mode static on the calibration data given"
        if traits.can_calibrate
        else "--mode static with representative --calibration data"
    )
    kept = (
        f"--exclude keeps {by_user} of the model's {by_user + total} Convs in float, and the passing "
        f"dynamic trial {left} of the other {total}"
        if by_user
        else f"the passing dynamic trial keeps {left} of the model's {total} Convs in float"
    )
    return f"{kept}: static quantization, with calibration data, is what quantizes a CNN's Convs; try {how}"


COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
"""The ops that do a model's multiply-accumulate work (an embedding Gather only looks a row up)."""


def matmuls_only_in_float(
    chosen: Trial, nodes: Sequence[tuple[str, str]], kept: Collection[str]
) -> str | None:
    """Where MatMuls-only keeps most of a model's compute ops (COMPUTE_OPS) in float (`nodes`: the
    model's, as (name, op type); `kept`: those the option keeps, engine.matmuls_only_exclusions): it
    is for a transformer, and on a CNN it keeps every Conv in float. EfficientNet-Lite0 with
    --matmuls-only passed with its 49 Convs in float, 1.3x smaller, not 4x, and nothing said so;
    all-MiniLM-L6-v2 keeps 6 of its 48 MatMuls (the FFN down-projections), gpt2-lm 2 of its 13
    MatMuls and Gemms: no word. Nodes the user's --exclude keeps are their choice, counted in
    neither."""
    config = chosen.config
    if config.mode is not Mode.STATIC or not config.matmuls_only:
        return None
    compute = [(name, op) for name, op in nodes if op in COMPUTE_OPS and name not in config.excluded_nodes]
    in_float = Counter(op_type for name, op_type in compute if name in kept)
    left, total = sum(in_float.values()), len(compute)
    if not total or left * 2 <= total:
        return None
    ops = ", ".join(f"{count} {op_type}" for op_type, count in sorted(in_float.items()))
    return (
        f"--matmuls-only keeps {left} of the model's {total} compute ops in float ({ops}): it quantizes "
        "only MatMuls, Gemms and embedding Gathers, for a transformer's outlier channels; without it, "
        "static quantization quantizes them too"
    )


def _next_steps(closest: Trial, trials: list[Trial], traits: ModelTraits, task: Task) -> list[str]:
    """Only what applies: dynamic quantization reads no calibration data, static quantization is no
    suggestion once a trial of this run tried it (and lost, or errored on the data), labels already
    given are no suggestion, and only a classifier has labels or an accuracy to gate on. A calibration
    method the user chose, and that every static trial kept, comes first: it may be the cause
    (distribution left EfficientNet-Lite0 at 0% agreement, and the advice named everything else)."""
    steps = []
    methods = {t.config.calibration for t in trials if t.config.mode is Mode.STATIC}
    if len(methods) == 1 and (method := methods.pop()) is not Calibration.MINMAX:
        steps.append(f"another --calibration-method (every static trial calibrated with {method.value})")
    if _matmuls_only_for(trials, traits) is not None:  # the trial it would have run did not
        steps.append(
            "--matmuls-only (a transformer's residual stream and GELU outputs carry outlier channels "
            "that one INT8 scale cannot; static all-MiniLM-L6-v2 passes with it)"
        )
    if closest.config.mode is Mode.STATIC or any(t.config.mode is Mode.STATIC for t in trials):
        steps.append("more or more representative calibration data")
    elif traits.can_calibrate:
        steps.append("static quantization (--mode static) on the calibration data given")
    else:
        steps.append("static quantization with representative --calibration data")
    if task is Task.CLASSIFICATION and closest.evaluation.fp32 is None:  # fp32 accuracy: labels given
        steps.append(
            "labelled evaluation data (gate on accuracy, not agreement with FP32 on ambiguous inputs)"
        )
    steps += ["a larger --max-trials", "or quantization-aware training"]
    return steps
