"""What the server checks at load besides the artifact's integrity: that it serves on the hardware the
accuracy gate measured (a mismatch is a warning and a metric, or a refusal with --require-gate-hardware),
that a fixed probe input gives the same outputs twice, and that a model the batch policy's synthetic
input fails on is still served. Nothing is faked but the manifest."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from prometheus_client import CollectorRegistry
from server_harness import LocalServer, build_divide_by_input, fp32_artifact, settings_for, wait_until

from quantship import artifact, runtime, zoo
from quantship.cli import ExitCode, main
from quantship.quantize import QuantizeConfig, run
from quantship.server import batch_policy
from quantship.server.metrics import ServerMetrics
from quantship.server.runner import Runner
from quantship.server.service import ModelService, Phase
from quantship.server.settings import ServerSettings


def rewritten(
    loaded: artifact.Artifact, out: Path, edit: Callable[[dict[str, Any]], object]
) -> artifact.Artifact:
    """`loaded` re-written to `out` (hashed again by the artifact writer) with its manifest changed by
    `edit`: what a producer other than quantship may write, and verify passes."""
    manifest = copy.deepcopy(
        {key: value for key, value in loaded.manifest.items() if key not in ("files", "format_version")}
    )
    edit(manifest)
    files = {name: loaded.root / name for name in loaded.manifest["files"]}
    return artifact.write_artifact(out, files, manifest)


def claiming_other_hardware(good: artifact.Artifact, out: Path) -> artifact.Artifact:
    """The good artifact with a manifest whose gate ran on CPU int8 features this machine lacks or
    has (VNNI toggled) and on another onnxruntime."""

    def edit(manifest: dict[str, Any]) -> None:
        recorded = manifest["validation"]["hardware"]
        recorded["int8_flags"] = sorted(set(runtime.hardware().int8_flags) ^ {"avx512_vnni"})
        recorded["onnxruntime"] = "1.0.0"

    return rewritten(good, out, edit)


def service_for(settings: ServerSettings) -> tuple[ModelService, CollectorRegistry]:
    registry = CollectorRegistry()
    return ModelService(settings, ServerMetrics(registry, settings.labels)), registry


def sample(registry: CollectorRegistry, settings: ServerSettings, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {**settings.labels, **labels})


async def test_an_artifact_gated_here_shows_no_hardware_mismatch_and_deterministic_outputs(
    good_artifact: artifact.Artifact,
) -> None:
    settings = settings_for(good_artifact, "here")
    service, registry = service_for(settings)
    await service.load()
    assert service.phase is Phase.READY
    for aspect in ("int8_flags", "onnxruntime", "provider"):
        assert sample(registry, settings, "quantship_hardware_mismatch", aspect=aspect) == 0
    sides = [s.labels for m in registry.collect() if m.name == "quantship_hardware_info" for s in m.samples]
    assert {labels["side"] for labels in sides} == {"serving", "gate"}
    serving, gate = sorted(sides, key=lambda labels: labels["side"] != "serving")
    assert serving["int8_flags"] == gate["int8_flags"] == ",".join(sorted(runtime.hardware().int8_flags))
    assert sample(registry, settings, "quantship_nondeterministic_outputs") == 0
    await service.close(1)


def test_an_artifact_gated_on_other_hardware_serves_with_a_warning_and_the_mismatch_exported(
    good_artifact: artifact.Artifact, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = claiming_other_hardware(good_artifact, tmp_path / "other-hardware")
    with caplog.at_level(logging.WARNING, logger="quantship.server"):
        server = LocalServer(settings_for(other, "other")).start()
    try:
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
        assert server.metric("quantship_hardware_mismatch", aspect="int8_flags") == 1
        assert server.metric("quantship_hardware_mismatch", aspect="onnxruntime") == 1
        assert server.metric("quantship_hardware_mismatch", aspect="provider") == 0
        exposition = httpx.get(f"{server.url}/metrics").text
        claimed = ",".join(other.manifest["validation"]["hardware"]["int8_flags"])
        assert 'side="gate"' in exposition and f'int8_flags="{claimed}"' in exposition
        assert 'onnxruntime="1.0.0"' in exposition
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(
            "other hardware than the accuracy gate" in m and "onnxruntime: gate 1.0.0" in m for m in warned
        )
        rows = np.zeros((1, 64), dtype=np.float32)
        body = {
            "inputs": [
                {"name": zoo.INPUT_NAME, "datatype": "FP32", "shape": [1, 64], "data": rows.ravel().tolist()}
            ]
        }
        assert httpx.post(f"{server.url}/v2/models/digits/infer", json=body).status_code == 200
    finally:
        server.stop()


def test_with_require_gate_hardware_a_mismatch_is_refused_and_the_server_stays_up_unready(
    good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    other = claiming_other_hardware(good_artifact, tmp_path / "other-hardware")
    server = LocalServer(settings_for(other, "strict", require_gate_hardware=True)).start(ready=False)
    try:
        wait_until(lambda: server.metric("quantship_model_load_failures_total", reason="hardware") == 1)
        assert httpx.get(f"{server.url}/v2/health/live").status_code == 200
        ready = httpx.get(f"{server.url}/v2/health/ready")
        assert ready.status_code == 503
        assert server.service.phase is Phase.REFUSED
        assert "--require-gate-hardware" in server.service.problem and "int8_flags" in server.service.problem
        assert server.metric("quantship_hardware_mismatch", aspect="int8_flags") == 1
        refusal = server.service.problem.split(" is not served: ", 1)[1]
    finally:
        server.stop()
    assert CliRunner().invoke(main, ["verify", str(other.root)]).exit_code == ExitCode.OK  # a warning
    verified = CliRunner().invoke(main, ["verify", str(other.root), "--require-gate-hardware"])
    assert verified.exit_code == ExitCode.REFUSED, verified.output
    assert verified.output == f"error: {other.root}: a server refuses to load it: {refusal}\n"


def test_require_gate_hardware_serves_an_artifact_gated_here(good_artifact: artifact.Artifact) -> None:
    settings = settings_for(good_artifact, "strict-here", require_gate_hardware=True)
    server = LocalServer(settings).start()
    try:
        assert server.metric("quantship_model_load_failures_total", reason="hardware") == 0
    finally:
        server.stop()
    verified = CliRunner().invoke(main, ["verify", str(good_artifact.root), "--require-gate-hardware"])
    assert verified.exit_code == ExitCode.OK, verified.output


def random_noise_model(path: Path) -> Path:
    """Y = X + U(0, 1) noise: a real graph whose outputs differ run to run (an unseeded RandomUniformLike)."""
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph(
        [
            helper.make_node("RandomUniformLike", ["X"], ["noise"]),
            helper.make_node("Add", ["X", "noise"], ["Y"]),
        ],
        "noisy",
        [x],
        [y],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


async def test_a_model_whose_outputs_differ_run_to_run_is_flagged_nondeterministic(tmp_path: Path) -> None:
    model = random_noise_model(tmp_path / "noisy.onnx")
    manifest = {"quantization": {"precision": "fp32", "mode": "none"}}
    written = artifact.write_artifact(tmp_path / "noisy", {artifact.MODEL_FILE: model}, manifest)
    settings = settings_for(written, "noisy")
    service, registry = service_for(settings)
    await service.load()
    assert service.phase is Phase.READY  # a warning, not a refusal
    assert sample(registry, settings, "quantship_nondeterministic_outputs") == 1
    # an FP32 artifact records no gate hardware: nothing differs, only the serving side is shown
    assert sample(registry, settings, "quantship_hardware_mismatch", aspect="int8_flags") == 0
    await service.close(1)


SAMPLES = 64
"""A waveform's length in the test data: any length from KERNEL up runs."""
KERNEL = 8


def build_waveform_classifier(path: Path) -> Path:
    """X float[N, samples] -> Conv1d (kernel KERNEL, stride 4) -> Relu -> mean over time -> MatMul ->
    logits float[N, 3]: an audio front end along an open axis, which refuses fewer than KERNEL samples."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.normal(size=(4, 1, KERNEL)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "head_w"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "channel_axis"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Unsqueeze", ["X", "channel_axis"], ["wave"]),
            helper.make_node("Conv", ["wave", "conv_w"], ["conv"], strides=[4], name="front_end"),
            helper.make_node("Relu", ["conv"], ["relu"]),
            helper.make_node("ReduceMean", ["relu"], ["pooled"], axes=[2], keepdims=0),
            helper.make_node("MatMul", ["pooled", "head_w"], ["logits"], name="head"),
        ],
        "waveform",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", "samples"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def waveform_artifact(tmp_path_factory: pytest.TempPathFactory) -> artifact.Artifact:
    """The waveform classifier quantized on rows of SAMPLES samples, labelled by its FP32 answers."""
    tmp = tmp_path_factory.mktemp("waveform")
    model = build_waveform_classifier(tmp / "waveform.onnx")
    rows = np.random.default_rng(1).normal(size=(96, SAMPLES)).astype(np.float32)
    labels = runtime.create_session(model).run(None, {"X": rows})[0].argmax(axis=1)
    np.savez(tmp / "calibration.npz", X=rows[:64])
    np.savez(tmp / "evaluation.npz", X=rows[64:], labels=labels[64:])
    config = QuantizeConfig()
    calibration, evaluation = tmp / "calibration.npz", tmp / "evaluation.npz"
    return run(model, tmp / "a", config, calibration=calibration, evaluation=evaluation).artifact


def test_a_model_refusing_one_sample_on_its_open_axis_is_probed_and_exemplified_at_the_gates_length(
    waveform_artifact: artifact.Artifact,
) -> None:
    """The probe and the OpenAPI example set open dimensions to 1: a convolution along a waveform's
    open axis refused that at every load, so an audio model never exported
    quantship_nondeterministic_outputs, and its documented example request was answered 400."""
    assert waveform_artifact.gate_passed
    assert waveform_artifact.manifest["model"]["inputs"][0]["row_shape"] == [1, SAMPLES]

    server = LocalServer(settings_for(waveform_artifact, "waveform")).start()
    try:
        labels = server.settings.labels
        assert server.registry.get_sample_value("quantship_nondeterministic_outputs", labels) == 0
        document = httpx.get(f"{server.url}/openapi.json").json()
        infer = next(ops["post"] for path, ops in document["paths"].items() if path.endswith("/infer"))
        example = infer["requestBody"]["content"]["application/json"]["example"]
        assert example["inputs"][0]["shape"] == [1, SAMPLES]
        infer_url = f"{server.url}/v2/models/{server.settings.model_name}/infer"
        answer = httpx.post(infer_url, json=example)
        assert answer.status_code == 200, answer.text
        too_short = {"inputs": [{"name": "X", "shape": [1, 1], "datatype": "FP32", "data": [0.5]}]}
        assert httpx.post(infer_url, json=too_short).status_code == 400  # what both used to send
    finally:
        server.stop()


async def test_a_row_shape_past_memory_skips_the_probe_and_the_model_still_loads(
    waveform_artifact: artifact.Artifact, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A manifest is as hostile as its artifact: a row_shape claiming 10**12 samples is not allocated."""
    claimed = rewritten(
        waveform_artifact, tmp_path / "huge", lambda m: m["model"]["inputs"][0].update(row_shape=[1, 10**12])
    )
    settings = settings_for(claimed, "huge")
    service, registry = service_for(settings)
    with caplog.at_level(logging.WARNING, logger="quantship.server"):
        await service.load()
    assert service.phase is Phase.READY
    assert sample(registry, settings, "quantship_nondeterministic_outputs") is None
    assert any(
        "determinism probe not run: the manifest's row_shape" in r.getMessage() for r in caplog.records
    )
    await service.close(1)


def test_a_model_that_divides_by_its_input_is_timed_on_ones(tmp_path: Path) -> None:
    """Zeros would be refused ("Integer division by zero"): timed on them, the model was never served."""
    runner = Runner.load(build_divide_by_input(tmp_path / "divide.onnx"), threads=1)
    assert runner.refusal(runner.filled(1, 0)) is not None

    policy = batch_policy.choose(runner, 4)

    assert policy.reason.startswith("measured")
    assert set(policy.seconds_per_row) >= {1, 2}


def test_a_model_no_synthetic_input_runs_is_served_unbatched_and_says_why(tmp_path: Path) -> None:
    runner = Runner.load(build_divide_by_input(tmp_path / "divide.onnx", offset=1), threads=1)

    policy = batch_policy.choose(runner, 32, lambda runner, rows: pytest.fail("nothing to time"))

    assert policy.max_batch_size == 1 and policy.seconds_per_row == {}
    assert policy.reason.startswith("not measured: the model fails on inputs of 1 and of 0")
    assert "Integer division by zero" in policy.reason


@pytest.mark.parametrize("offset", [0, 1], ids=["fails on zeros", "fails on zeros and ones"])
def test_a_model_that_fails_on_synthetic_inputs_is_served_and_answers_its_example(
    tmp_path: Path, offset: int
) -> None:
    model = build_divide_by_input(tmp_path / "divide.onnx", offset=offset)
    server = LocalServer(settings_for(fp32_artifact(model, tmp_path / "divide"), "divide")).start()
    try:
        document = httpx.get(f"{server.url}/openapi.json").json()
        infer = next(ops["post"] for path, ops in document["paths"].items() if path.endswith("/infer"))
        example = infer["requestBody"]["content"]["application/json"]["example"]
        infer_url = f"{server.url}/v2/models/{server.settings.model_name}/infer"
        answers = {divisor: httpx.post(infer_url, json=divide(divisor)) for divisor in (3, 0)}
        if offset == 0:
            assert httpx.post(infer_url, json=example).json()["outputs"][0]["data"] == [12, 12]
        assert answers[3].json()["outputs"][0]["data"] == [12 // (3 * (3 - offset))] * 2
        # judged by ones of its shapes (runner_failures.Controls): they run on offset 0 only
        assert answers[0].status_code == (500 if offset else 400)
        assert "Integer division by zero" in answers[0].json()["error"]
        metadata = httpx.get(f"{server.url}/v2/models/{server.settings.model_name}").json()
        assert metadata["batching"]["reason"].startswith("not measured" if offset else "measured")
    finally:
        server.stop()


def divide(divisor: int) -> dict[str, Any]:
    return {"inputs": [{"name": "D", "shape": [1, 2], "datatype": "INT64", "data": [divisor, divisor]}]}


def build_one_row_model(path: Path) -> Path:
    """Y = Reshape(X, [1, 4]) + 1 for X float[N, 4]: written for one row, as an export traced with a
    batch of one can be. Its shapes say N rows; onnxruntime fails it on two."""
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 4])
    constants = [
        helper.make_tensor("one_row", TensorProto.INT64, [2], [1, 4]),
        helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["X", "one_row"], ["row"]),
            helper.make_node("Add", ["row", "one"], ["Y"]),
        ],
        "one_row",
        [x],
        [y],
        constants,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_a_model_that_fails_on_two_rows_is_not_batched_and_says_why(tmp_path: Path) -> None:
    runner = Runner.load(build_one_row_model(tmp_path / "one_row.onnx"), threads=1)

    policy = batch_policy.choose(runner, 32)

    assert policy.max_batch_size == 1
    assert policy.reason.startswith("not batched: the model fails on 2 rows, though it runs on one (")
    assert "requested shape:{1,4}" in policy.reason  # onnxruntime's own words, for whoever reads it
    assert set(policy.seconds_per_row) == {1}  # still timed: short calls run on the event loop


def test_a_model_that_fails_on_two_rows_is_served_one_request_a_call(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """It was refused as "a bug" (reason internal, with a traceback): the batch policy's timing of
    two rows raised the model's failure. Triton serves such a model; only batching is off."""
    model = build_one_row_model(tmp_path / "one_row.onnx")
    with caplog.at_level(logging.WARNING, logger="quantship.server"):
        server = LocalServer(settings_for(fp32_artifact(model, tmp_path / "one_row"), "one-row")).start()
    try:
        assert server.metric("quantship_model_load_failures_total", reason="internal") == 0
        metadata = httpx.get(f"{server.url}/v2/models/{server.settings.model_name}").json()
        assert metadata["batching"]["max_batch_size"] == 1
        assert metadata["batching"]["reason"].startswith("not batched: the model fails on 2 rows")
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("cannot be batched, so each request runs alone" in message for message in warned)

        def infer(row: float) -> httpx.Response:
            body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 4], "data": [row] * 4}]}
            return httpx.post(f"{server.url}/v2/models/{server.settings.model_name}/infer", json=body)

        with ThreadPoolExecutor(8) as clients:  # at once: each still its own call
            answers = list(clients.map(infer, range(16)))
        assert [answer.json()["outputs"][0]["data"] for answer in answers] == [
            [row + 1.0] * 4 for row in range(16)
        ]
    finally:
        server.stop()


def second(manifest: dict[str, Any], kind: str, **changes: Any) -> None:
    """Change the second activation range (or histogram) of `manifest`."""
    manifest[f"activation_{kind}"][1].update(changes)


def swapped_bounds(manifest: dict[str, Any]) -> None:
    entry = manifest["activation_ranges"][1]
    entry["low"], entry["high"] = entry["high"], entry["low"]


UNUSABLE = {
    "a histogram of a tensor not in the model": (
        lambda m: second(m, "histograms", tensor="no_such_tensor"),
        "histogram",
        "names no tensor of the model",
    ),
    "scale 0": (lambda m: second(m, "ranges", scale=0), "range", "has a scale of 0, not above 0"),
    "low above high": (swapped_bounds, "range", "has its low"),
    "a bound past any float": (lambda m: second(m, "ranges", high=10**400), "range", None),
    "a tensor not in the model": (
        lambda m: second(m, "ranges", tensor="no_such_tensor"),
        "range",
        "names no tensor the model quantizes (the input of a QuantizeLinear)",
    ),
    "a QLinear op the model lacks": (
        lambda m: second(m, "ranges", requantized_by="QLinearConv", zero_point=0),
        "range",
        "names no output of a QLinearConv op of the model",
    ),
}


@pytest.mark.parametrize(
    ("kind", "edit", "says"),
    [(kind, edit, says) for edit, kind, says in UNUSABLE.values()],
    ids=list(UNUSABLE),
)
async def test_ranges_or_histograms_the_slis_cannot_use_refuse_the_artifact(
    good_artifact: artifact.Artifact,
    tmp_path: Path,
    kind: str,
    edit: Callable[[dict[str, Any]], object],
    says: str | None,
) -> None:
    """Served, they went ready, then failed every clip sample (a histogram of other bins broke
    drift's binning, a requantized scale of 0 divided by zero), which stopped the clip and drift SLIs
    of the whole model, or counted nonsense (upside-down ranges clip everything). quantship writes
    none of them: refused at load, as a shadow rule that cannot work is, not one tensor quietly off."""
    broken = rewritten(good_artifact, tmp_path / "broken", edit)
    settings = settings_for(broken, "broken")
    service, registry = service_for(settings)

    await service.load()

    assert service.phase is Phase.REFUSED
    assert sample(registry, settings, "quantship_model_load_failures_total", reason="format") == 1
    assert sample(registry, settings, "quantship_model_load_failures_total", reason="internal") == 0
    tensor = broken.manifest[f"activation_{kind}s"][1]["tensor"]
    if says is not None:  # (a number past any float may be refused by the manifest's reader first)
        assert f"the manifest's activation {kind} {tensor!r} {says}" in service.problem
    await service.close(1)


@pytest.mark.parametrize(
    ("changes", "says"),
    [({"scale": 0}, "has a scale of 0, not above 0"), ({"zero_point": 10**40}, "has a zero point no 8- or")],
    ids=["scale 0", "a zero point past 16 bits"],
)
async def test_a_qlinear_range_the_clip_counter_cannot_use_refuses_the_artifact(
    qoperator_skewed_artifact: artifact.Artifact, tmp_path: Path, changes: dict[str, Any], says: str
) -> None:
    """A QLinear op's range counts its int8 codes at the ends, found by dividing by the scale (0:
    ZeroDivisionError on every clip sample), against the zero point (10**40: every code counted)."""
    requantized = next(
        index
        for index, entry in enumerate(qoperator_skewed_artifact.manifest["activation_ranges"])
        if entry.get("requantized_by")
    )
    broken = rewritten(
        qoperator_skewed_artifact,
        tmp_path / "broken",
        lambda m: m["activation_ranges"][requantized].update(changes),
    )
    settings = settings_for(broken, "broken")
    service, registry = service_for(settings)

    await service.load()

    assert service.phase is Phase.REFUSED
    assert sample(registry, settings, "quantship_model_load_failures_total", reason="format") == 1
    tensor = broken.manifest["activation_ranges"][requantized]["tensor"]
    assert f"the manifest's activation range {tensor!r} {says}" in service.problem
    await service.close(1)


MISFITS = {
    **{name: edit for name, (edit, _, says) in UNUSABLE.items() if says is not None},  # (else the reader's)
    "an output the model lacks": lambda m: m["quantization"].update(output="no_such_output"),
    "a shadow rule that cannot work": lambda m: m["validation"].update(
        shadow_rule={"kind": "relative_error", "tolerance": 0.1, "norm_floor": -1}
    ),
}


@pytest.mark.parametrize("edit", MISFITS.values(), ids=list(MISFITS))
async def test_verify_refuses_what_a_load_refuses_in_the_same_words(
    good_artifact: artifact.Artifact, tmp_path: Path, edit: Callable[[dict[str, Any]], object]
) -> None:
    """verify checked the files and the manifest's types only: it said ok of each of these, and a
    server then refused the artifact at load. Both now run the load's checks (`check_manifest`)."""
    broken = rewritten(good_artifact, tmp_path / "broken", edit)
    settings = settings_for(broken, "broken")
    service, _ = service_for(settings)
    await service.load()
    assert service.phase is Phase.REFUSED
    refusal = service.problem.split(" is not served: ", 1)[1]
    await service.close(1)

    artifact.pack(broken.root, tmp_path / "broken.tar.gz")
    for path in (broken.root, tmp_path / "broken.tar.gz"):
        verified = CliRunner().invoke(main, ["verify", str(path)])
        assert verified.exit_code == ExitCode.REFUSED, verified.output
        lines = verified.output.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), verified.output
        assert lines[0].endswith(refusal) and "Traceback" not in verified.output, (verified.output, refusal)
