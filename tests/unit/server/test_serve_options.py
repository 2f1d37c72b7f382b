"""`quantship serve` takes its defaults from the server settings dataclasses, where each is written once;
the quality settings a canary samples differently take theirs from the track."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from quantship import cli
from quantship.cli import serving
from quantship.operator import crd, names
from quantship.operator.spec import SERVER_FLAGS, revision_of
from quantship.rollout import AnalysisSpec
from quantship.server import BatchSettings, QualitySettings, ServerSettings, Track
from quantship.server.settings import CANARY_QUALITY

SAMPLING_FLAGS = {
    "shadow_rate": "--shadow-rate",
    "clip_sample_rate": "--clip-sample-rate",
    "sli_cpu_budget": "--sli-cpu-budget",
    "shadow_budget_share": "--shadow-budget-share",
}


def settings(*args: str) -> ServerSettings:
    """What `quantship serve ARGS` would run with: click's own parsing, then the command's settings."""
    context = serving.serve.make_context("serve", ["artifact", "--model-name", "m", "--revision", "r", *args])
    options = {k: v for k, v in context.params.items() if k not in ("log_level", "access_log")}
    return serving.serve_settings(**options)


def test_every_serve_option_named_after_a_setting_defaults_to_that_setting() -> None:
    defaults = {
        field.name: field.default
        for owner in (ServerSettings, BatchSettings, QualitySettings)
        for field in dataclasses.fields(owner)
        if field.default is not dataclasses.MISSING
    }
    options = {param.name: param.default for param in serving.serve.params if param.name in defaults}
    assert len(options) >= 14  # host, port, grpc_port, batching, sampling, feedback, body, drain ...
    # None: not given, so that QualitySettings.for_track fills in the track's default
    by_track = {name for name, default in options.items() if default is None and defaults[name] is not None}
    assert set(CANARY_QUALITY) <= by_track <= {field.name for field in dataclasses.fields(QualitySettings)}
    for name, default in options.items():
        if name not in by_track:
            expected = defaults[name]
            assert default == getattr(expected, "value", expected), name


@pytest.mark.parametrize("track", list(Track))
def test_serve_takes_the_tracks_sampling_defaults_and_every_given_value(track: Track) -> None:
    assert settings("--track", track.value).quality == QualitySettings.for_track(track)
    given = {"shadow_rate": 0.2, "clip_sample_rate": 0.3, "sli_cpu_budget": 0.003, "shadow_budget_share": 0.6}
    for name, value in given.items():
        chosen = settings("--track", track.value, SAMPLING_FLAGS[name], str(value)).quality
        assert getattr(chosen, name) == value
        assert chosen == dataclasses.replace(QualitySettings.for_track(track), **{name: value})


def test_the_help_and_the_crd_say_each_tracks_default() -> None:
    helps = {param.name: param.help or "" for param in serving.serve.params}
    described = crd.spec_schema()["properties"]["server"]["properties"]
    crd_field = {flag: field for field, flag in SERVER_FLAGS.items()}
    for name, value in CANARY_QUALITY.items():
        stable = getattr(QualitySettings(), name)
        assert f"[default: {stable:g}; on --track canary: {value:g}]" in helps[name]
        said = f"Unset: {stable:g} on the stable revision, {value:g} on the canary"
        assert said in described[crd_field[SAMPLING_FLAGS[name]]]["description"]


def test_onnxruntime_spins_only_when_told() -> None:
    assert not settings().onnxruntime_spinning
    assert settings("--onnxruntime-spinning").onnxruntime_spinning
    assert not settings("--onnxruntime-spinning", "--no-onnxruntime-spinning").onnxruntime_spinning


def test_a_stable_server_takes_the_class_defaults() -> None:
    assert QualitySettings.for_track(Track.STABLE, shadow_rate=None, sli_cpu_budget=None) == QualitySettings()


def test_a_canary_offers_every_request_and_may_spend_more_of_a_core() -> None:
    stable, canary = QualitySettings(), QualitySettings.for_track(Track.CANARY)
    assert QualitySettings.for_track(Track.CANARY.value) == canary  # a track given as its name
    assert canary.shadow_rate == 1.0  # the budget alone decides which requests are compared
    assert canary.sli_cpu_budget > stable.sli_cpu_budget
    assert canary.clip_sample_rate == stable.clip_sample_rate  # clip counts activations: never short
    assert dataclasses.replace(canary, **{name: getattr(stable, name) for name in CANARY_QUALITY}) == stable


def test_the_canary_budget_buys_an_image_model_the_analysis_samples() -> None:
    """The arithmetic behind the default, with the price measured beside a busy server: an
    EfficientNet-Lite0 comparison costs ~10 ms of CPU (9.85 ms in the lane's own log)."""
    price_s = 0.010

    def runs_a_window(quality: QualitySettings) -> float:  # the shadow lane's part, with clip running
        return quality.sli_cpu_budget * quality.shadow_budget_share / price_s * analysis.short_window

    analysis = AnalysisSpec()
    assert runs_a_window(QualitySettings.for_track(Track.CANARY)) >= 2 * analysis.min_samples
    assert runs_a_window(QualitySettings()) < analysis.min_samples  # why the canary has its own


@pytest.mark.parametrize("track", list(Track))
def test_given_values_apply_on_both_tracks(track: Track) -> None:
    given = QualitySettings.for_track(track, shadow_rate=0.2, clip_sample_rate=0.0, sli_cpu_budget=0.003)
    assert (given.shadow_rate, given.clip_sample_rate, given.sli_cpu_budget) == (0.2, 0.0, 0.003)


@pytest.mark.parametrize(
    ("args", "budget"),
    [
        (("--track", "canary", "--canary-sli-cpu-budget", "0.2"), 0.2),
        (("--track", "canary", "--sli-cpu-budget", "0.003", "--canary-sli-cpu-budget", "0.2"), 0.2),
        (("--track", "canary", "--sli-cpu-budget", "0.003"), 0.003),
        (("--track", "stable", "--sli-cpu-budget", "0.003", "--canary-sli-cpu-budget", "0.2"), 0.003),
        (("--track", "stable", "--canary-sli-cpu-budget", "0.2"), QualitySettings().sli_cpu_budget),
    ],
)
def test_the_canary_budget_replaces_the_shared_one_on_a_canary_alone(
    args: tuple[str, ...], budget: float
) -> None:
    quality = settings(*args).quality
    assert quality.sli_cpu_budget == budget
    # the rest is the track's, untouched by the canary's budget
    track = args[args.index("--track") + 1]
    assert dataclasses.replace(quality, sli_cpu_budget=QualitySettings.default("sli_cpu_budget", track)) == (
        QualitySettings.for_track(track)
    )


def test_a_negative_canary_budget_is_refused_on_either_track() -> None:
    for track in Track:
        with pytest.raises(ValueError, match="canary's SLI CPU budget"):
            QualitySettings.for_track(track, canary_sli_cpu_budget=-0.1)
    with pytest.raises(click.BadParameter):
        settings("--canary-sli-cpu-budget", "-1")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize(
    "field", ["max_queue_delay_ms", "body_timeout_s", "idle_timeout_s", "drain_timeout_s", "capture_flush_s"]
)
def test_settings_built_in_process_refuse_a_delay_or_timeout_that_is_not_a_finite_number(
    field: str, value: float
) -> None:
    """What the options refuse, the settings refuse too, for callers that build them directly."""
    with pytest.raises(ValueError, match="finite"):
        if field == "max_queue_delay_ms":
            BatchSettings(max_queue_delay_ms=value)
        else:
            ServerSettings(artifact=Path("artifact"), model_name="m", revision="r", **{field: value})


@pytest.mark.parametrize("flag", ["--sli-cpu-budget", "--canary-sli-cpu-budget", "--shadow-rate"])
def test_a_nan_that_clicks_range_lets_through_is_a_usage_error_not_a_traceback(flag: str) -> None:
    args = ["serve", "artifact", "--model-name", "m", "--revision", "r", flag, "nan"]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 2, result.output  # click's usage error
    assert "is not a finite number" in result.output and result.exception is not None
    assert not isinstance(result.exception, ValueError)


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--revision", "r/1"),
        ("--revision", ""),
        ("--model-name", ""),
        ("--model-name", "team/digits"),
        ("--model-name", ".."),
        ("--model-name", "dígits x"),
    ],
)
def test_a_name_no_http_route_can_address_is_a_usage_error_not_a_traceback(flag: str, value: str) -> None:
    """`--revision r/1` was served and advertised ("versions": ["r/1"]), yet every versioned HTTP call
    was 404 (no route) while gRPC answered it; `--model-name ""` had no HTTP route at all."""
    with pytest.raises(ValueError, match="does not fit a URL path"):
        settings(flag, value)  # first, as a name let through would have the command below serve
    args = ["serve", "artifact", "--model-name", "m", "--revision", "r", flag, value]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 2, result.output  # click's usage error
    assert f"{value!r} does not fit a URL path" in result.output
    assert not isinstance(result.exception, ValueError)


@given(st.from_regex(names.LABEL_VALUE, fullmatch=True).filter(lambda name: len(name) <= 63))
def test_every_model_name_and_revision_the_operator_makes_is_served(model_name: str) -> None:
    """spec.modelName is what the CRD admits (a Kubernetes label value); the revision, its hex id."""
    revision = revision_of({"modelName": model_name})
    chosen = settings("--model-name", model_name, "--revision", revision)
    assert (chosen.model_name, chosen.revision) == (model_name, revision)


def test_one_port_for_http_and_grpc_is_a_usage_error_before_anything_loads() -> None:
    """Each port was free when asked alone, so serve loaded the model, gRPC took the port, and
    uvicorn's bind failed after it, among its startup and drain lines."""
    with pytest.raises(ValueError, match="must not be the HTTP port"):
        settings("--port", "8123", "--grpc-port", "8123")  # first: let through, the command below serves
    args = ["serve", "artifact", "--model-name", "m", "--revision", "r", "--port", "8123"]
    result = CliRunner().invoke(cli.main, [*args, "--grpc-port", "8123"])
    assert result.exit_code == 2, result.output  # click's usage error
    assert "the gRPC port must not be the HTTP port (8123)" in result.output
    assert settings("--port", "0", "--grpc-port", "0").grpc_port == 0  # two ports the system picks
