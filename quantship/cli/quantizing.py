"""`quantship quantize`: its options (their defaults the config's, `quantize.config`), the
refusal of options that cannot work together and the warning of those given that will not apply;
the work is `quantship.quantize.run`'s."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from click.core import ParameterSource

from quantship import artifact_keys
from quantship.agreement import Task
from quantship.choices import MAX_NUM_BINS
from quantship.cli.errors import BadUsage, user_errors
from quantship.cli.options import FINITE, FiniteRange, artifact_out, choice
from quantship.cli.output import stderr, stdout
from quantship.quantize import config as q_config
from quantship.quantize.evaluate import Metric

_QUANTIZE = q_config.QuantizeConfig()
"""`quantship quantize`'s defaults are the config's: written once, there."""


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@artifact_out
@click.option(
    "--calibration", type=click.Path(path_type=Path), help=".npz keyed by input name, or a folder of .npy."
)
@click.option(
    "--evaluation",
    type=click.Path(path_type=Path),
    help="Data for the gate; with a 'labels' array for accuracy.",
)
@click.option("--mode", type=choice(q_config.Mode), default=_QUANTIZE.mode.value, show_default=True)
@click.option(
    "--format",
    "quant_format",
    type=choice(q_config.Format),
    default=_QUANTIZE.format.value,
    show_default=True,
)
@click.option("--per-channel", is_flag=True, help="Quantize weights per output channel.")
@click.option(
    "--activation-type",
    type=choice(q_config.Precision),
    default=_QUANTIZE.activation_type.value,
    show_default=True,
)
@click.option(
    "--weight-type", type=choice(q_config.Precision), default=_QUANTIZE.weight_type.value, show_default=True
)
@click.option(
    "--reduce-range/--no-reduce-range",
    default=None,
    help="7-bit weights. Default: on where the CPU lacks VNNI.",
)
@click.option(
    "--calibration-method",
    type=choice(q_config.Calibration),
    default=_QUANTIZE.calibration.value,
    show_default=True,
)
@click.option(
    "--percentile",
    type=FiniteRange(0, 100, min_open=True),
    default=_QUANTIZE.percentile,
    show_default=True,
)
@click.option(
    "--num-bins",
    type=click.IntRange(min=2, max=MAX_NUM_BINS),
    default=None,
    help="Histogram bins (histogram methods; entropy's search grows with their square).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=_QUANTIZE.batch_size,
    show_default=True,
    help="Calibration rows per batch at most (memory grows with it; large inputs lower it).",
)
@click.option(
    "--pre-process/--no-pre-process",
    default=True,
    show_default=True,
    help="Run onnxruntime's quant_pre_process first.",
)
@click.option(
    "--max-accuracy-delta",
    type=FiniteRange(0, 1),  # a share: of accuracy, of rows, or a relative error
    default=_QUANTIZE.max_accuracy_delta,
    show_default=True,
    help="Gate: the relative accuracy loss with labels, else the share of rows that may disagree "
    "with FP32 (top-1, or cosine below --min-cosine), or the relative error of a regressor.",
)
@click.option(
    "--task",
    type=choice(Task),
    default=None,
    help="What the output is; inferred from its dtype, shape and values when omitted. A task the output "
    "does not look like is warned of, naming the one it looks like: classification on unit-length rows "
    "sure of no class without labels, regression on them or on vectors named like an embedding (an "
    "embedding's look); embedding or regression "
    "on probabilities, or on confident scores named like them (a classifier's); embedding on one value a "
    "row (a regression's).",
)
@click.option(
    "--metric",
    type=choice(Metric),
    default=None,
    help="Gating metric. Default: top1_accuracy with labels; without, confident_agreement (top1_agreement "
    "for class ids, or when FP32 is confident on under 30 rows, or positions for a token model); "
    "cosine_agreement for embeddings; relative_error for regression.",
)
@click.option(
    "--threshold",
    type=FINITE,
    default=None,
    help="The gating metric's limit in its own units (least for agreement/cosine, most for "
    "losses). Default: from --max-accuracy-delta for accuracy and agreement shares.",
)
@click.option(
    "--min-cosine",
    type=FiniteRange(-1, 1),
    default=_QUANTIZE.min_cosine,
    show_default=True,
    help="Embeddings: the least cosine to FP32 at which a row agrees (gate and shadow SLI).",
)
@click.option(
    "--mask-input",
    default=None,
    metavar="NAME",
    help="An answer per position (a token model's): the input whose zeros mark padding, left out of the "
    "gate and the shadow SLI (ignored, with a warning, for other outputs). Default: the one input named "
    "like an attention mask.",
)
@click.option(
    "--matmul-const-b-only/--no-matmul-const-b-only",
    default=_QUANTIZE.matmul_const_b_only,
    help="Static: quantize only MatMuls by a weight, leaving attention products in float (QDQ; "
    "QOperator's graph optimizations may still fuse some). Default: off, and the tuner's recipes "
    "try it on a transformer; --no-matmul-const-b-only: never.",
)
@click.option(
    "--matmuls-only/--no-matmuls-only",
    default=_QUANTIZE.matmuls_only,
    help="Static: quantize only MatMuls and Gemms, less those reading an MLP's GELU or SiLU, leaving "
    "the residual stream, LayerNorm, Softmax and GELU in float (a BERT's outlier channels; a CNN's "
    "Convs too). Default: off, and the tuner tries it once no recipe passes on a transformer with an "
    "MLP; --no-matmuls-only: never.",
)
@click.option(
    "--strategy",
    type=choice(q_config.Strategy),
    default=_QUANTIZE.strategy.value,
    show_default=True,
    help="recipes: try whole-model recipes first, then op-type and node fallback; fallback: keep "
    "the given recipe, fall back only (keep ops in float: MatMuls-only on a transformer with an MLP, op "
    "types, nodes).",
)
@click.option(
    "--keep-going",
    is_flag=True,
    help="Run stage 1's recipes on after one passes (up to half of --max-trials), keeping the most "
    "quantized, then fastest, passing one (or its refinement with the ops onnxruntime cannot fuse in "
    "float, which is tried once more).",
)
@click.option(
    "--max-trials",
    type=click.IntRange(min=0),
    default=_QUANTIZE.max_trials,
    show_default=True,
    help="Trials after the first before giving up; a passing trial's refinement with the ops "
    "onnxruntime cannot fuse kept in float runs beyond them.",
)
@click.option("--exclude", multiple=True, help="Node to keep in float (repeatable).")
@click.option("--output", "output_name", help="Model output the gate compares (default: the first).")
@click.option(
    "--sign-key", type=click.Path(path_type=Path), help="ed25519 private key (PEM) to sign the manifest."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@user_errors
def quantize(
    model: Path,
    out: Path,
    calibration: Path | None,
    evaluation: Path | None,
    mode: str,
    quant_format: str,
    per_channel: bool,
    activation_type: str,
    weight_type: str,
    reduce_range: bool | None,
    calibration_method: str,
    percentile: float,
    num_bins: int | None,
    batch_size: int,
    pre_process: bool,
    max_accuracy_delta: float,
    task: str | None,
    metric: str | None,
    threshold: float | None,
    min_cosine: float,
    mask_input: str | None,
    matmul_const_b_only: bool | None,
    matmuls_only: bool | None,
    strategy: str,
    keep_going: bool,
    max_trials: int,
    exclude: tuple[str, ...],
    output_name: str | None,
    sign_key: Path | None,
    quiet: bool,
) -> None:
    """Quantize MODEL to INT8, gate it on accuracy, and write a verifiable artifact to --out."""
    from quantship import quantize as q
    from quantship.quantize import summary

    config = q.QuantizeConfig(
        mode=q.Mode(mode),
        format=q.Format(quant_format),
        per_channel=per_channel,
        activation_type=q.Precision(activation_type),
        weight_type=q.Precision(weight_type),
        reduce_range=reduce_range,
        calibration=q.Calibration(calibration_method),
        percentile=percentile,
        num_bins=num_bins,
        batch_size=batch_size,
        pre_process=pre_process,
        max_accuracy_delta=max_accuracy_delta,
        task=Task(task) if task else None,
        metric=Metric(metric) if metric else None,
        threshold=threshold,
        min_cosine=min_cosine,
        mask_input=mask_input,
        matmul_const_b_only=matmul_const_b_only,
        matmuls_only=matmuls_only,
        strategy=q.Strategy(strategy),
        keep_going=keep_going,
        max_trials=max_trials,
        output=output_name,
        excluded_nodes=tuple(exclude),
    )
    _check_quantize_options(config, click.get_current_context())
    key = artifact_keys.load_private_key(sign_key) if sign_key else None
    progress = None if quiet else q.default_progress()
    result = q.run(
        model,
        out,
        config,
        calibration=calibration,
        evaluation=evaluation,
        sign_key=key,
        progress=progress,
        warn=q.printed_warnings(stderr if progress is None else progress.console),
    )
    stdout.print(summary.table([(result.written_to.name, result.artifact)]))
    if result.replaced:  # on stderr: stdout is the table's alone
        stderr.print(
            f"wrote {result.written_to} (in place of the older artifact there)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    if not result.gate_passed:
        kept = f"; the artifact at {out}, whose gate did not fail, is left as it was" if result.kept else ""
        stderr.print(
            f"[red]accuracy gate failed[/]: best effort written to {result.written_to} "
            f"(marked gate: failed){kept}"
        )
        sys.exit(1)


_OPTION_OF_FIELD = {
    "format": "quant_format",
    "calibration": "calibration_method",
    "activation_type": "activation_type",
    "percentile": "percentile",
    "num_bins": "num_bins",
    "batch_size": "batch_size",
    "matmul_const_b_only": "matmul_const_b_only",
    "matmuls_only": "matmuls_only",
}
"""quantize's parameter for each config field a recipe may leave unread."""


def _check_quantize_options(config: q_config.QuantizeConfig, ctx: click.Context) -> None:
    """Refuse options that cannot work together; name, once, those given that will not apply (a
    warning, not a refusal: the operator's quantize Job passes what a QuantizedModel sets, and a run
    that would have worked must not fail after its downloads)."""
    from quantship.quantize.gate_metrics import METRICS

    if problems := config.problems():
        raise BadUsage(problems[0])
    for caution in config.cautions():
        stderr.print(f"[yellow]warning:[/] {caution}", highlight=False, soft_wrap=True)
    given = {name for name in ctx.params if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT}
    if "max_accuracy_delta" in given and (
        config.threshold is not None
        or (config.metric is not None and METRICS[config.metric].default_threshold is not None)
    ):
        why = "--threshold" if config.threshold is not None else f"--metric {config.metric}'s own default"
        stderr.print(
            f"[yellow]warning:[/] --max-accuracy-delta ignored: the gate's limit is {why}",
            highlight=False,
            soft_wrap=True,
        )
    if "keep_going" in given and config.keep_going and config.strategy is q_config.Strategy.FALLBACK:
        stderr.print(  # stage 1 is the user's recipe alone (tuner.stage_one)
            "[yellow]warning:[/] --keep-going ignored: --strategy fallback runs your recipe alone, with no "
            "recipes to go on to",
            highlight=False,
            soft_wrap=True,
        )
    unread = config.not_applied({field for field, param in _OPTION_OF_FIELD.items() if param in given})
    if unread:
        options = ", ".join(_option_as_given(ctx, _OPTION_OF_FIELD[field]) for field in unread)
        stderr.print(
            f"[yellow]warning:[/] ignored, {config.label()} does not use them: {options}",
            highlight=False,
            soft_wrap=True,
        )


def _option_as_given(ctx: click.Context, param: str) -> str:
    """The option's name as the user wrote it: a boolean pair's off switch where it is off (a warning
    named `--matmuls-only` to someone who had written `--no-matmuls-only`)."""
    option = next(p for p in ctx.command.params if p.name == param)
    switched_off = isinstance(option, click.Option) and option.is_flag and not ctx.params[param]
    return option.secondary_opts[0] if switched_off and option.secondary_opts else option.opts[0]
