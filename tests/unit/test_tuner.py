"""The tuner's order and choice, on scripted trial outcomes.

Which recipe or node hurts is scripted here; tests/integration/test_quantize.py and tests/real/
run the same tuner on real quantizations of the digits sample, EfficientNet-Lite0 and MiniLM.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from quantship.agreement import Task
from quantship.quantize import tuner
from quantship.quantize.config import Calibration, Mode, Precision, QuantizeConfig, Strategy
from quantship.quantize.gate_metrics import Evaluation, Metric

CNN = tuner.ModelTraits(
    has_conv=True,
    has_matmul=False,
    has_activation_matmul=False,
    can_calibrate=True,
    lacks_vnni=False,
)
TRANSFORMER = replace(CNN, has_conv=False, has_matmul=True, has_activation_matmul=True)
BASE = QuantizeConfig(reduce_range=False)
NODES = {"Conv": ("c1", "c2", "c3"), "Add": ("a1", "a2")}
ALL_NODES = 5


def _evaluation(agreement: float) -> Evaluation:
    return Evaluation(Metric.TOP1_AGREEMENT, agreement, 0.995, 100)


def _attempt(
    score: Callable[[QuantizeConfig, tuple[str, ...]], float],
    log: list[tuple[tuner.Stage, str, tuple[str, ...]]],
    latency: Callable[[QuantizeConfig], float] = lambda config: 1.0,
    fallback: Callable[[tuple[str, ...]], int] = lambda excluded: 0,
) -> tuner.Attempt:
    """Trials scored by `score`; an unfused one counts `fallback` ops left in float behind Q/DQ."""

    def attempt(stage: tuner.Stage, config: QuantizeConfig, excluded: tuple[str, ...]) -> tuner.Trial:
        log.append((stage, config.label(), excluded))
        evaluation = _evaluation(score(config, excluded))
        quantized = ALL_NODES - len(excluded)
        return tuner.Trial(
            len(log) - 1,
            stage,
            config,
            excluded,
            quantized,
            quantized / ALL_NODES,
            evaluation,
            0.0,
            0.0,
            latency(config) if evaluation.passed else None,
            fallback_ops=fallback(excluded) if stage is tuner.Stage.UNFUSED else None,
        )

    return attempt


def _tune(
    base: QuantizeConfig,
    score: Callable[[QuantizeConfig, tuple[str, ...]], float],
    traits: tuner.ModelTraits = CNN,
    ranking: list[str] | None = None,
    latency: Callable[[QuantizeConfig], float] = lambda config: 1.0,
) -> tuple[list[tuner.Trial], list[tuple[tuner.Stage, str, tuple[str, ...]]]]:
    log: list[tuple[tuner.Stage, str, tuple[str, ...]]] = []
    trials = tuner.tune(
        base,
        traits,
        _attempt(score, log, latency),
        lambda config: NODES,
        lambda config: ranking if ranking is not None else ["c2", "a1", "c1", "c3"],
    )
    return trials, log


# -- stage 1: recipes --------------------------------------------------------------------------


def test_recipes_start_with_the_users_config_then_change_one_knob_at_a_time() -> None:
    recipes = tuner.recipes(BASE, CNN)
    assert recipes[0] == BASE
    assert recipes[1] == replace(BASE, per_channel=True)  # the usual cure for a per-tensor CNN cliff
    singles = recipes[1:5]
    assert [r.label() for r in singles] == [
        "static U8S8 minmax per-channel",
        "static S8S8 minmax per-tensor",
        "static U8S8 percentile per-tensor",
        "static U8S8 entropy per-tensor",
    ]
    assert len(recipes) == len({r.label() for r in recipes}) == 2 * 2 * 3


def test_transformers_also_try_dynamic_and_matmul_const_b_only_and_cnns_do_not() -> None:
    cnn = {r.label() for r in tuner.recipes(BASE, CNN)}
    transformer = tuner.recipes(BASE, TRANSFORMER)
    assert not any("dynamic" in label or "MatMulConstBOnly" in label for label in cnn)
    assert transformer[2].mode is Mode.DYNAMIC  # one knob away, right after per-channel
    assert any(r.matmul_const_b_only for r in transformer)
    # Dynamic quantization ignores activation type and calibration: no duplicates of it.
    assert sum(r.mode is Mode.DYNAMIC for r in transformer) == 2


def test_a_transformer_with_an_mlp_tries_static_matmuls_only_once_no_recipe_passes() -> None:
    """all-MiniLM-L6-v2: static INT8 of every op agreed with FP32 on no row, per-tensor or per-channel;
    MatMuls-only passes. Its FFN down-projections run in float and dynamic per-channel passes as
    closely, faster: not a recipe of stage 1 (it took dynamic per-channel's place there, and the
    README command ended on it after 8 trials, 3:12, where it had taken 4), but the next trial once
    none passed, on the closest static recipe, before the fallback stages."""
    with_mlp = replace(TRANSFORMER, has_mlp_activation_reader=True)
    assert tuner.stage_one(BASE, with_mlp) == tuner.stage_one(BASE, TRANSFORMER)
    assert not any(r.matmuls_only for r in tuner.recipes(BASE, with_mlp))

    def score(config: QuantizeConfig, excluded: tuple[str, ...]) -> float:
        return 1.0 if config.matmuls_only else 0.5 if config.per_channel else 0.0

    base = replace(BASE, max_trials=7)
    trials, _ = _tune(base, score, with_mlp)
    recipes = [t for t in trials if t.stage is tuner.Stage.RECIPE]
    assert len(recipes) == 5 and not any(t.passed for t in recipes[:4])
    assert recipes[-1].config == replace(base, per_channel=True, matmuls_only=True)  # the closest static
    assert recipes[-1].passed and trials[-1] is recipes[-1]
    # Not where a recipe passes, nor for a model without an MLP's activation or a CNN.
    passing, _ = _tune(BASE, lambda config, excluded: float(config.mode is Mode.DYNAMIC), with_mlp)
    assert not any(t.config.matmuls_only for t in passing)
    for traits in (TRANSFORMER, replace(CNN, has_mlp_activation_reader=True)):
        others, _ = _tune(base, score, traits)
        assert not any(t.config.matmuls_only for t in others)


def test_no_matmuls_only_is_a_ban_on_the_trial_and_the_advice() -> None:
    """--no-matmuls-only was the default's value: the tuner ran its MatMuls-only trial all the same,
    where a user who says no expects none (as the CRD's matmulsOnly: false)."""
    with_mlp = replace(TRANSFORMER, has_mlp_activation_reader=True)
    banned = replace(BASE, matmuls_only=False, max_trials=7)

    trials, _ = _tune(banned, lambda config, excluded: 1.0 if config.matmuls_only else 0.0, with_mlp)

    assert not any(t.config.matmuls_only for t in trials) and not any(t.passed for t in trials)
    assert "--matmuls-only" not in tuner.advice(trials, with_mlp, Task.EMBEDDING)
    unset, _ = _tune(replace(banned, matmuls_only=None), lambda config, excluded: 0.0, with_mlp)
    assert any(t.config.matmuls_only for t in unset)  # not given: the tuner's to try


def test_no_matmul_const_b_only_is_a_ban_on_its_recipes_and_yes_a_first_recipe() -> None:
    """--no-matmul-const-b-only was the default's value too: the recipes turned it on regardless.
    Given, it is off in every recipe; not given or --matmul-const-b-only, the recipes try both."""
    assert not any(
        r.matmul_const_b_only for r in tuner.recipes(replace(BASE, matmul_const_b_only=False), TRANSFORMER)
    )
    assert any(r.matmul_const_b_only for r in tuner.recipes(BASE, TRANSFORMER))
    asked = tuner.recipes(replace(BASE, matmul_const_b_only=True), TRANSFORMER)
    assert asked[0].matmul_const_b_only and any(r.matmul_const_b_only is False for r in asked)


def test_without_calibration_data_only_dynamic_recipes_remain() -> None:
    base = replace(BASE, mode=Mode.DYNAMIC)
    recipes = tuner.recipes(base, replace(TRANSFORMER, can_calibrate=False))
    assert {r.mode for r in recipes} == {Mode.DYNAMIC}


def test_a_recipe_whose_method_needs_more_bins_than_given_calibrates_with_its_default() -> None:
    """--num-bins 64 is fine for percentile; entropy with it failed after a whole calibration."""
    base = replace(BASE, calibration=Calibration.PERCENTILE, num_bins=64)
    recipes = tuner.recipes(base, CNN)
    assert {r.calibration for r in recipes} == {
        Calibration.MINMAX,
        Calibration.PERCENTILE,
        Calibration.ENTROPY,
    }
    assert not any(problem for r in recipes for problem in r.problems())
    assert {r.num_bins for r in recipes if r.calibration is Calibration.ENTROPY} == {None}
    assert {r.num_bins for r in recipes if r.calibration is Calibration.PERCENTILE} == {64}, "the user's"
    enough = replace(base, num_bins=256)
    assert {r.num_bins for r in tuner.recipes(enough, CNN)} == {256}


def test_a_distribution_base_is_tried_once_and_its_neighbours_calibrate_with_minmax() -> None:
    """Distribution is onnxruntime's float8 method: on EfficientNet-Lite0 all 4 int8 trials that kept
    it agreed with FP32 on 0.0-0.3% of rows, and the run took 7:32 against 2:14."""
    base = replace(BASE, calibration=Calibration.DISTRIBUTION, num_bins=512)
    recipes = tuner.recipes(base, CNN)
    assert recipes[0] == base, "the user's own configuration comes first, as given"
    assert [r.calibration for r in recipes[1:]].count(Calibration.DISTRIBUTION) == 0
    assert recipes[1] == replace(base, calibration=Calibration.MINMAX)
    assert len(recipes) == 1 + 2 * 2 * 3


def test_reduce_range_is_tried_both_ways_only_where_the_cpu_lacks_vnni() -> None:
    assert {r.reduce_range for r in tuner.recipes(BASE, CNN)} == {False}
    assert {r.reduce_range for r in tuner.recipes(BASE, replace(CNN, lacks_vnni=True))} == {False, True}


def test_without_vnni_the_exact_u8u8_kernel_is_the_knob_after_per_channel() -> None:
    no_vnni = replace(CNN, lacks_vnni=True)
    base = replace(BASE, reduce_range=True)  # what `resolved` picks on such a CPU
    recipes = tuner.recipes(base, no_vnni)
    assert [r.label() for r in recipes[:4]] == [
        "static U8S8 minmax per-tensor reduce-range",
        "static U8S8 minmax per-channel reduce-range",
        "static U8U8 minmax per-tensor",
        "static U8S8 minmax per-tensor",
    ]
    # Per-channel U8U8 (EfficientNet-Lite0's best on AVX2) is within stage 1's half of the budget.
    stage_one = recipes[: (base.max_trials + 1) // 2]
    assert "static U8U8 minmax per-channel" in [r.label() for r in stage_one]
    # No x86 kernel takes int8 activations with uint8 weights; with VNNI, no U8U8 recipe at all.
    assert not any(r.activation_type is Precision.INT8 and r.weight_type is Precision.UINT8 for r in recipes)
    assert {r.weight_type for r in tuner.recipes(BASE, CNN)} == {Precision.INT8}


def test_without_vnni_the_default_budget_reaches_the_u8u8_recipe_that_passes() -> None:
    base = replace(BASE, reduce_range=True)

    def score(config: QuantizeConfig, excluded: tuple[str, ...]) -> float:
        exact = config.weight_type is Precision.UINT8 and config.per_channel
        return 0.998 if exact else 0.85

    trials, log = _tune(base, score, replace(CNN, lacks_vnni=True))
    assert trials[-1].passed and log[-1] == (tuner.Stage.RECIPE, "static U8U8 minmax per-channel", ())
    assert tuner.best(trials).config.weight_type is Precision.UINT8


def test_the_first_passing_recipe_ends_the_tuning() -> None:
    trials, log = _tune(BASE, lambda config, excluded: 1.0 if config.per_channel else 0.7)
    assert [stage for stage, _, _ in log] == [tuner.Stage.RECIPE, tuner.Stage.RECIPE]
    assert tuner.best(trials).config.per_channel


def test_after_a_closer_trial_the_recipes_nearest_it_come_next() -> None:
    """all-MiniLM-L6-v2's shape: every static recipe agrees on no rows, dynamic per-tensor on most,
    and dynamic per-channel, one knob from it, passes; it came eighth, behind four static recipes."""

    def score(config: QuantizeConfig, excluded: tuple[str, ...]) -> float:
        if config.mode is Mode.STATIC:
            return 0.0
        return 1.0 if config.per_channel else 0.94

    trials, log = _tune(BASE, score, TRANSFORMER)
    assert [label for _, label, _ in log] == [
        "static U8S8 minmax per-tensor",
        "static U8S8 minmax per-channel",
        "dynamic int8 weights per-tensor",
        "dynamic int8 weights per-channel",
    ]
    assert tuner.best(trials).config == replace(BASE, mode=Mode.DYNAMIC, per_channel=True)


def test_a_static_recipe_is_more_than_the_mode_away_from_a_dynamic_one() -> None:
    """Without VNNI the kernel is a knob of dynamic recipes too. Once dynamic per-channel came
    closest, dynamic uint8 per-tensor (two knobs from it) comes before static per-channel recipes,
    which differ in the mode and in knobs a dynamic recipe does not have (activation type,
    calibration, MatMulConstBOnly): compared field by field, they would come first."""

    def score(config: QuantizeConfig, excluded: tuple[str, ...]) -> float:
        if config.mode is Mode.STATIC:
            return 0.0
        if config.weight_type is Precision.UINT8:
            return 1.0
        return 0.9 if config.per_channel else 0.5

    _, log = _tune(replace(BASE, max_trials=40), score, replace(TRANSFORMER, lacks_vnni=True))
    assert [label for _, label, _ in log] == [
        "static U8S8 minmax per-tensor",
        "static U8S8 minmax per-channel",
        "dynamic int8 weights per-tensor",
        "dynamic int8 weights per-channel",
        "dynamic uint8 weights per-tensor",
    ]


def test_while_the_first_trial_stays_closest_the_recipes_keep_their_order() -> None:
    """Ties with the user's recipe move nothing: a dynamic recipe, several knobs from a static one
    by the tuner's distance, is still tried where `recipes` put it."""
    _, log = _tune(BASE, lambda config, excluded: 0.5, TRANSFORMER)
    recipe_trials = [label for stage, label, _ in log if stage is tuner.Stage.RECIPE]
    assert recipe_trials == [r.label() for r in tuner.stage_one(BASE, TRANSFORMER)]


def test_keep_going_runs_more_recipes_and_the_fastest_of_equally_quantized_wins() -> None:
    def latency(config: QuantizeConfig) -> float:
        return 0.5 if config.activation_type is Precision.INT8 else 1.0

    trials, log = _tune(replace(BASE, keep_going=True), lambda config, excluded: 1.0, latency=latency)
    assert len(log) == (BASE.max_trials + 1) // 2
    chosen = tuner.best(trials)
    assert chosen.passed and chosen.config.activation_type is Precision.INT8 and chosen.latency_ms == 0.5


def test_the_fallback_strategy_keeps_the_given_recipe() -> None:
    base = replace(BASE, strategy=Strategy.FALLBACK)
    _, log = _tune(base, lambda config, excluded: 1.0 if excluded == NODES["Add"] else 0.7)
    assert {label for _, label, _ in log} == {base.label()}


# -- stage 2: op types -------------------------------------------------------------------------


def test_op_type_fallback_runs_on_the_closest_recipe_fewest_nodes_first() -> None:
    def score(config: QuantizeConfig, excluded: tuple[str, ...]) -> float:
        if excluded == NODES["Add"]:
            return 1.0
        return 0.9 if config.calibration is Calibration.PERCENTILE else 0.5

    trials, log = _tune(BASE, score)
    op_type = [entry for entry in log if entry[0] is tuner.Stage.OP_TYPE]
    assert op_type == [(tuner.Stage.OP_TYPE, "static U8S8 percentile per-tensor", ("a1", "a2"))]
    assert tuner.best(trials).excluded == ("a1", "a2")


# -- stage 3: nodes ----------------------------------------------------------------------------


def _harm(harm: dict[str, float], base: float = 0.9) -> Callable[[QuantizeConfig, tuple[str, ...]], float]:
    """Recipes all score `base`; each node left in float removes its harm, whole op types none."""

    def score(config: QuantizeConfig, excluded: tuple[str, ...]) -> float:
        if excluded in NODES.values():
            return base
        return base + sum(harm.get(n, 0.0) for n in excluded)

    return score


def test_node_fallback_finds_one_bad_node_alone_in_ranking_order() -> None:
    trials, log = _tune(replace(BASE, strategy=Strategy.FALLBACK), _harm({"a1": 0.1}))
    singles = [excluded for stage, _, excluded in log if stage is tuner.Stage.SINGLE]
    assert singles == [("c2",), ("a1",)]
    assert tuner.best(trials).excluded == ("a1",)


def test_cumulative_fallback_orders_by_measured_harm_not_by_sqnr() -> None:
    # SQNR ranks c2 first, but measuring shows c3 and c1 do the damage together.
    base = replace(BASE, strategy=Strategy.FALLBACK, max_trials=20)
    trials, log = _tune(base, _harm({"c1": 0.04, "c3": 0.06}))
    cumulative = [excluded for stage, _, excluded in log if stage is tuner.Stage.CUMULATIVE]
    assert cumulative[0] == ("c3", "c1")
    assert tuner.best(trials).excluded == ("c3", "c1")


def test_the_budget_is_respected_and_the_best_effort_is_the_closest() -> None:
    trials, log = _tune(replace(BASE, max_trials=5), _harm({n: 0.001 for n in "abcdefgh"}, base=0.5))
    assert len(log) == 6
    assert not any(t.passed for t in trials)
    best = tuner.best(trials)
    assert best.shortfall == min(t.shortfall for t in trials)
    said = tuner.advice(trials, CNN, Task.CLASSIFICATION)
    assert "closest: trial" in said and "quantization-aware training" in said
    assert "VNNI" not in said


def test_the_advice_names_the_missing_vnni_and_the_kernels_tried_and_not() -> None:
    no_vnni = replace(CNN, lacks_vnni=True)
    harm = _harm({n: 0.001 for n in "abcdefgh"}, base=0.5)
    trials, _ = _tune(replace(BASE, max_trials=8), harm, no_vnni)
    said = tuner.advice(trials, no_vnni, Task.CLASSIFICATION)
    assert "lacks VNNI" in said and said.startswith("closest: trial")
    assert "Tried: U8S8, U8U8, U8S8 reduce-range" in said and "not reached" not in said
    one, _ = _tune(replace(BASE, max_trials=0), harm, no_vnni)
    said = tuner.advice(one, no_vnni, Task.CLASSIFICATION)
    assert "Tried: U8S8; not reached within --max-trials: U8U8, U8S8 reduce-range" in said
    s8s8 = replace(BASE, max_trials=0, activation_type=Precision.INT8)
    one, _ = _tune(s8s8, harm, no_vnni)  # S8U8 has no x86 kernel: never offered as untried
    assert "Tried: S8S8; not reached within --max-trials: S8S8 reduce-range." in tuner.advice(
        one, no_vnni, Task.CLASSIFICATION
    )


def test_the_advice_suggests_only_what_applies_to_the_mode_the_task_and_the_data() -> None:
    """It was one text: calibration data for dynamic quantization (which reads none), labelled data
    when labels were given, labels for an embedding or a regression (which have no accuracy)."""
    harm = _harm({n: 0.001 for n in "abcdefgh"}, base=0.5)
    static, _ = _tune(replace(BASE, max_trials=0), harm)
    said = tuner.advice(static, CNN, Task.CLASSIFICATION)
    assert "more or more representative calibration data" in said and "labelled evaluation data" in said
    for task in (Task.EMBEDDING, Task.REGRESSION):
        assert "labelled" not in tuner.advice(static, CNN, task)
    labelled = [replace(t, evaluation=replace(t.evaluation, fp32=0.9, int8=0.5)) for t in static]
    assert "labelled" not in tuner.advice(labelled, CNN, Task.CLASSIFICATION)
    dynamic, _ = _tune(replace(BASE, max_trials=0, mode=Mode.DYNAMIC), harm)
    said = tuner.advice(dynamic, CNN, Task.CLASSIFICATION)
    assert "calibration data given" in said and "more or more representative" not in said
    tried_static = [*dynamic, replace(static[0], number=len(dynamic))]  # static lost: the closest is dynamic
    said = tuner.advice(tried_static, CNN, Task.CLASSIFICATION)
    assert tuner.best(tried_static).config.mode is Mode.DYNAMIC, "the case: a dynamic trial came closest"
    assert "--mode static" not in said and "more or more representative calibration data" in said
    uncalibrated = replace(CNN, can_calibrate=False)
    said = tuner.advice(dynamic, uncalibrated, Task.REGRESSION)
    assert "static quantization with representative --calibration data" in said
    assert said.endswith("a larger --max-trials, or quantization-aware training.")


def test_the_advice_names_matmuls_only_where_a_transformers_static_trials_went_without_it() -> None:
    """--strategy fallback, static, on all-MiniLM-L6-v2: cosine agreement 0, and the advice named more
    calibration data, which no amount of fixes."""
    with_mlp = replace(TRANSFORMER, has_mlp_activation_reader=True)
    fallback = replace(BASE, strategy=Strategy.FALLBACK, max_trials=0)
    static, _ = _tune(fallback, lambda config, excluded: 0.0, with_mlp)
    assert "--matmuls-only" in tuner.advice(static, with_mlp, Task.EMBEDDING)
    assert "--matmuls-only" not in tuner.advice(static, TRANSFORMER, Task.EMBEDDING)  # no MLP activation
    # A CNN whose head reads a SiLU through a Flatten: MatMuls-only would keep every Conv in float.
    cnn = replace(CNN, has_mlp_activation_reader=True)
    convolved, _ = _tune(fallback, lambda config, excluded: 0.0, cnn)
    assert "--matmuls-only" not in tuner.advice(convolved, cnn, Task.CLASSIFICATION)
    tried, _ = _tune(replace(fallback, matmuls_only=True), lambda config, excluded: 0.0, with_mlp)
    assert "--matmuls-only" not in tuner.advice(tried, with_mlp, Task.EMBEDDING)


def test_the_advice_names_the_calibration_method_every_trial_kept() -> None:
    """--strategy fallback with distribution failed at agreement 0.0, and the advice named more data,
    labels, --max-trials and QAT, not the method."""
    harm = _harm({n: 0.001 for n in "abcdefgh"}, base=0.5)
    chosen = replace(BASE, calibration=Calibration.DISTRIBUTION, strategy=Strategy.FALLBACK, max_trials=3)
    trials, _ = _tune(chosen, harm)
    said = tuner.advice(trials, CNN, Task.CLASSIFICATION)
    assert "another --calibration-method (every static trial calibrated with distribution)" in said
    default, _ = _tune(replace(BASE, strategy=Strategy.FALLBACK, max_trials=3), harm)
    assert "--calibration-method" not in tuner.advice(default, CNN, Task.CLASSIFICATION)
    tried, _ = _tune(replace(chosen, strategy=Strategy.RECIPES, max_trials=4), harm)
    assert "--calibration-method" not in tuner.advice(tried, CNN, Task.CLASSIFICATION), "minmax was tried"


def test_best_prefers_more_quantized_nodes_among_passing_trials() -> None:
    def trial(number: int, excluded: tuple[str, ...], agreement: float) -> tuner.Trial:
        quantized = ALL_NODES - len(excluded)
        return tuner.Trial(
            number,
            tuner.Stage.CUMULATIVE,
            BASE,
            excluded,
            quantized,
            quantized / ALL_NODES,
            _evaluation(agreement),
            0.0,
            0.0,
            1.0,
        )

    chosen = tuner.best([trial(1, ("a", "b", "c"), 1.0), trial(2, ("a",), 0.996), trial(3, ("b",), 0.998)])
    assert chosen.number == 3


def test_a_trial_that_failed_in_onnxruntime_never_wins_over_a_measured_one() -> None:
    failed = tuner.Trial(
        0, tuner.Stage.RECIPE, BASE, (), 5, 1.0, _evaluation(float("-inf")), 0.0, 0.0, None, "boom"
    )
    measured = replace(failed, number=1, evaluation=_evaluation(0.5), error=None)
    assert tuner.best([failed, measured]).number == 1
    assert failed.to_json()["delta"] is None and failed.to_json()["error"] == "boom"


def test_leaving_every_quantized_node_in_float_is_never_tried_nor_a_pass() -> None:
    # One op type only: its op-type fallback would be the FP32 model itself.
    log: list[tuple[tuner.Stage, str, tuple[str, ...]]] = []
    only_conv = {"Conv": ("c1", "c2", "c3")}
    tuner.tune(
        replace(BASE, strategy=Strategy.FALLBACK),
        CNN,
        _attempt(lambda config, excluded: 1.0 if len(excluded) == 3 else 0.5, log),
        lambda config: only_conv,
        lambda config: list(only_conv["Conv"]),
    )
    assert log and all(len(excluded) < 3 for _, _, excluded in log)
    assert not any(stage is tuner.Stage.OP_TYPE for stage, _, _ in log)
    nothing_quantized = tuner.Trial(
        9, tuner.Stage.CUMULATIVE, BASE, ("c1", "c2", "c3"), 0, 0.0, _evaluation(1.0), 0.0, 0.0
    )
    assert nothing_quantized.evaluation.passed and not nothing_quantized.passed


def test_the_unfused_trial_refines_the_chosen_one_and_wins_where_it_passes() -> None:
    log: list[tuple[tuner.Stage, str, tuple[str, ...]]] = []
    passes = _attempt(lambda config, excluded: 1.0, log)
    chosen = passes(tuner.Stage.SINGLE, BASE, ("c1",))
    # Its own exclusions stay; the nodes already in float are not asked for twice.
    (fused,) = tuner.without_unfused(
        chosen, lambda start, t, no_side: [] if "a1" in t.excluded else ["c1", "a1", "a2"], passes
    )
    assert fused.stage is tuner.Stage.UNFUSED
    assert log[-1] == (tuner.Stage.UNFUSED, BASE.label(), ("c1", "a1", "a2"))
    # Less quantized than the trial it refines, and still the result.
    assert fused.quantized_share < chosen.quantized_share
    assert tuner.best([chosen, fused]) is fused
    failing = _attempt(lambda config, excluded: 0.5, log)
    assert (
        tuner.best([chosen, failing(tuner.Stage.UNFUSED, BASE, ("c1", "a1"))]).stage
        is not tuner.Stage.UNFUSED
    )
    # Nothing unfused, or a chosen trial that failed the gate: no trial.
    assert tuner.without_unfused(chosen, lambda start, t, no_side: ["c1"], passes) == []
    assert (
        tuner.without_unfused(failing(tuner.Stage.RECIPE, BASE, ()), lambda start, t, no_side: ["a1"], passes)
        == []
    )


def test_the_unfused_trials_go_on_while_a_graph_leaves_something_unfused_and_the_last_pass_wins() -> None:
    """onnxruntime fuses what one trial keeps in float (a residual Add and a LayerNormalization) into a
    node the next finds between Q/DQ: each trial refines the one before, up to MAX_UNFUSED_TRIALS."""
    log: list[tuple[tuner.Stage, str, tuple[str, ...]]] = []
    asked: dict[tuple[str, ...], list[str]] = {(): ["a1", "a2"], ("a1", "a2"): ["c3"]}
    passes = _attempt(
        lambda config, excluded: 1.0, log, fallback=lambda excluded: len(asked.get(excluded, []))
    )
    chosen = passes(tuner.Stage.RECIPE, BASE, ())
    starts: list[tuner.Trial] = []

    def unfused(start: tuner.Trial, trial: tuner.Trial, no_side: frozenset[str]) -> list[str]:
        starts.append(start)
        return asked.get(trial.excluded, [])

    first, second = tuner.without_unfused(chosen, unfused, passes)
    assert (first.excluded, second.excluded) == (("a1", "a2"), ("a1", "a2", "c3"))
    # Each is asked of against the trial the stage started from (the sides' budget is the stage's).
    assert len(starts) == 3 and all(start is chosen for start in starts)
    assert first.quantized_share > second.quantized_share and tuner.best([chosen, first, second]) is second
    # A refinement that fails the gate ends the search, and the last that passed is the result.
    gated = _attempt(lambda config, excluded: 0.5 if "c3" in excluded else 1.0, log)
    first, second = tuner.without_unfused(chosen, lambda start, t, no_side: asked.get(t.excluded, []), gated)
    assert first.passed and not second.passed and tuner.best([chosen, first, second]) is first
    # Bounded, even where every graph leaves something new unfused.
    endless = tuner.without_unfused(chosen, lambda start, t, no_side: [f"n{len(t.excluded)}"], passes)
    assert len(endless) == tuner.MAX_UNFUSED_TRIALS


def test_an_unfused_trial_that_lifts_no_sandwich_is_not_carried_on_nor_chosen() -> None:
    """The residual and LayerNormalization in float fuse into one node, still between Q/DQ; mm1, its
    cheaper side, kept in float leaves it there (the input mm1 shares with another quantized MatMul
    keeps its DequantizeLinear): the next trial refines the one before with the other side, the head."""
    log: list[tuple[tuner.Stage, str, tuple[str, ...]]] = []
    left = {(): 1, ("res", "ln"): 1, ("res", "ln", "mm1"): 1, ("res", "ln", "head"): 0}
    passes = _attempt(lambda config, excluded: 1.0, log, fallback=lambda excluded: left[excluded])
    chosen = passes(tuner.Stage.RECIPE, BASE, ())

    def sides(start: tuner.Trial, trial: tuner.Trial, no_side: frozenset[str]) -> list[str]:
        if not trial.excluded:
            return ["res", "ln"]
        return [] if trial.fallback_ops == 0 else ["head"] if "mm1" in no_side else ["mm1"]

    first, futile, other = tuner.without_unfused(chosen, sides, passes)
    assert [t.excluded for t in (first, futile, other)] == [
        ("res", "ln"),
        ("res", "ln", "mm1"),
        ("res", "ln", "head"),
    ]
    assert tuner.best([chosen, first, futile, other]) is other
    # No other side: of the two that leave as much unfused, the more quantized.
    first, futile = tuner.without_unfused(
        chosen, lambda start, t, no_side: sides(start, t, no_side) if "mm1" not in no_side else [], passes
    )
    assert futile.quantized_share < first.quantized_share and tuner.best([chosen, first, futile]) is first


def _nodes(**counts: int) -> list[tuple[str, str]]:
    """A chosen model's (name, op type): `Conv=3` is conv0, conv1, conv2."""
    return [(f"{op_type.lower()}{i}", op_type) for op_type, count in counts.items() for i in range(count)]


def test_a_passing_dynamic_trial_with_most_convs_in_float_names_static_quantization() -> None:
    """EfficientNet-Lite0 --mode dynamic passed with every Conv in float (1.3x smaller, 4:59), and
    nothing said that static quantization is what quantizes a CNN's Convs."""
    (passed,), _ = _tune(replace(BASE, max_trials=0, mode=Mode.DYNAMIC), lambda config, excluded: 1.0)
    assert passed.passed and passed.config.mode is Mode.DYNAMIC
    said = tuner.static_for_convs(passed, _nodes(Conv=3, ConvInteger=1, MatMulInteger=1), CNN)
    assert said == (
        "the passing dynamic trial keeps 3 of the model's 4 Convs in float: static quantization, with "
        "calibration data, is what quantizes a CNN's Convs; try --mode static on the calibration data given"
    )
    uncalibrated = tuner.static_for_convs(passed, _nodes(Conv=1), replace(CNN, can_calibrate=False))
    assert uncalibrated is not None and uncalibrated.endswith("with representative --calibration data")
    assert tuner.static_for_convs(passed, _nodes(Conv=2, ConvInteger=2), CNN) is None, "half is not most"
    assert tuner.static_for_convs(passed, _nodes(MatMulInteger=2), CNN) is None, "no Conv"
    static = replace(passed, config=replace(passed.config, mode=Mode.STATIC))
    assert tuner.static_for_convs(static, _nodes(Conv=4), CNN) is None, "a static QDQ Conv stays a Conv"
    failed = replace(passed, evaluation=_evaluation(0.5))
    assert tuner.static_for_convs(failed, _nodes(Conv=4), CNN) is None, "the advice says it when none passed"


def test_convs_the_user_excluded_are_not_counted_as_kept_in_float_by_dynamic_quantization() -> None:
    """The hint spoke of the user's own --exclude as if dynamic quantization had kept those Convs in
    float. Only the others count; where dynamic kept most of those, it says how many --exclude keeps."""
    config = replace(BASE, max_trials=0, mode=Mode.DYNAMIC, excluded_nodes=("conv0", "conv1", "conv2"))
    (passed,), _ = _tune(config, lambda config, excluded: 1.0)
    assert tuner.static_for_convs(passed, _nodes(Conv=3, ConvInteger=2), CNN) is None, "only the user's"
    assert tuner.static_for_convs(passed, _nodes(Conv=3), CNN) is None, "every Conv the user's"
    assert tuner.static_for_convs(passed, _nodes(Conv=4, ConvInteger=1), CNN) is None, "1 of 2 is not most"
    assert tuner.static_for_convs(passed, _nodes(Conv=5, ConvInteger=1), CNN) == (
        "--exclude keeps 3 of the model's 6 Convs in float, and the passing dynamic trial 2 of the other 3: "
        "static quantization, with calibration data, is what quantizes a CNN's Convs; try --mode static on "
        "the calibration data given"
    )
