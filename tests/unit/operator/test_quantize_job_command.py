"""The quantization Job's container command line, as the operator writes it, run for real
(`python -m quantship quantize-job ...`) on the digits sample with file:// inputs and a pvc://
target under a local claim root: the verdict it leaves in its termination-message file, its exit
code, and the artifact the model servers' init container then fetches."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import pytest
from click.core import ParameterSource

from quantship import UNIQUE_TAG_ENV, artifact, oci, runtime, zoo
from quantship.cli import quantizing
from quantship.operator import crd, fetch, names, quantization, quantize_job
from quantship.operator.quantize_job import Verdict, read_result
from quantship.operator.spec import InvalidSpec
from quantship.quantize.evaluate import Metric

TIMEOUT = 600  # two cores, other suites running at once


def spec(
    sample: zoo.SampleModel, *, calibration: Path | None = None, **options: Any
) -> quantization.QuantizeSpec:
    section = {
        "model": f"file://{sample.model}",
        "calibration": f"file://{calibration or sample.calibration}",
        "evaluation": f"file://{sample.evaluation}",
        "options": {"maxTrials": 0, **options},
        "target": {"uri": "pvc://models/digits/int8"},
    }
    built = quantization.QuantizeSpec.from_spec({"quantize": section})
    assert built is not None
    return built


def run_job(
    command: list[str], tmp_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The container's command, with the pod's mount points moved under tmp_path."""
    assert command[0] == "quantship"
    local = {
        "--workdir": tmp_path / "work",
        "--result-file": tmp_path / "termination-log",
        "--pvc-root": tmp_path / "pvc",
    }
    args = list(command[1:])
    for flag, path in local.items():
        args[args.index(flag) + 1] = str(path)
    done = subprocess.run(
        [sys.executable, "-m", "quantship", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        env=None if env is None else {**os.environ, **env},
        cwd=cwd,
    )
    return done, local["--result-file"]


def test_a_passing_gate_exits_0_publishes_under_the_jobs_folder_and_the_servers_can_fetch_it(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    job = spec(sample, mode="static", metric="top1_agreement", threshold=0.9)
    done, result = run_job(job.command("digits"), tmp_path)
    assert done.returncode == 0, done.stderr
    verdict = read_result(result.read_text())
    assert isinstance(verdict, Verdict) and verdict.passed
    assert (verdict.metric, verdict.threshold) == ("top1_agreement", 0.9)
    assert verdict.value is not None and verdict.value >= 0.9
    assert verdict.artifact == f"pvc://models/digits/int8/digits/{job.hash}" == job.output("digits")
    installed = fetch.fetch(verdict.artifact, tmp_path / "served", pvc_root=tmp_path / "pvc")
    assert installed.manifest["validation"]["gate"] == "passed"
    assert installed.manifest["quantization"]["mode"] == "static"
    # the gate machine's int8 features travel with the verdict (for spec.placement.matchGateHardware)
    recorded = installed.manifest["validation"]["hardware"]["int8_flags"]
    assert verdict.int8_flags == tuple(recorded) == runtime.hardware().int8_flags
    # and the share of its evaluation rows the shadow SLI's rule counts: the operator warns when it
    # is over the accuracy-delta SLO the canary will be judged by
    shadow = installed.manifest["validation"]["shadow_disagreement"]
    assert shadow is not None and verdict.shadow_disagreement == shadow


def test_a_failing_gate_exits_1_with_the_numbers_and_publishes_nothing(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    # calibrated on one digit only, and asked to agree with FP32 on every row: it cannot
    job = spec(sample, calibration=sample.calibration_skewed, metric="top1_agreement", threshold=1.0)
    done, result = run_job(job.command("digits"), tmp_path)
    assert done.returncode == 1, done.stderr
    written = json.loads(result.read_text())
    assert written["gate"] == "failed" and written["artifact"] is None
    verdict = read_result(result.read_text())
    assert isinstance(verdict, Verdict) and not verdict.passed
    assert (verdict.metric, verdict.threshold) == ("top1_agreement", 1.0)
    assert verdict.value is not None and verdict.value < 1.0
    # what the number is travels with it: the operator says it without importing onnxruntime
    assert (verdict.meaning, verdict.higher_is_better) == ("share of rows with FP32's top-1", True)
    assert verdict.describe().endswith("; the gate needs at least 1.0")
    assert not (tmp_path / "pvc").exists(), "nothing published"


def test_an_input_that_cannot_be_read_exits_3_and_says_why_in_the_termination_message(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    job = spec(sample)
    command = job.command("digits")
    command[command.index("--model") + 1] = f"file://{tmp_path}/missing.onnx"
    done, result = run_job(command, tmp_path)
    assert done.returncode == 3
    assert (
        read_result(result.read_text())
        == f"file://{tmp_path}/missing.onnx: {tmp_path}/missing.onnx is not a file"
    )
    assert not (tmp_path / "pvc").exists()


def test_a_flag_quantize_does_not_know_is_refused_with_clicks_whole_message(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    """An older image's quantize, given a flag a newer CRD writes (or a typo): exit 3 as the help
    says, with click's suggestion in the termination message, not usage's exit 2."""
    command = spec(sample).command("digits")
    assert "--" in command  # quantize's own flags follow
    done, result = run_job([*command, "--metrc", "top1"], tmp_path)
    assert done.returncode == 3, done.stderr
    message = read_result(result.read_text())
    assert message.startswith("quantize: No such option '--metrc'.") and "'--metric'" in message, message
    assert not (tmp_path / "pvc").exists()


@pytest.mark.parametrize("flags", [["--out", "elsewhere"], ["-oelsewhere"], ["--evaluation=other.npz"]])
def test_a_flag_the_job_sets_itself_is_refused_before_anything_is_fetched(
    sample: zoo.SampleModel, tmp_path: Path, flags: list[str]
) -> None:
    """`quantize-job ... -- --out X` (by hand: the CRD has no such option) quantized into X, as
    click takes the last -o, and the Job then said "WORKDIR/artifact: no such artifact", leaving X
    outside its work folder; an --evaluation after -- gated on other data than the Job fetched."""
    command = spec(sample).command("digits")
    command[command.index("--model") + 1] = f"file://{tmp_path}/missing.onnx"  # never looked at
    done, result = run_job([*command, *flags], tmp_path, cwd=tmp_path)

    assert done.returncode == 3, done.stderr
    said = read_result(result.read_text())
    assert isinstance(said, str) and "the Job's own" in said and "missing.onnx" not in said, said
    assert sorted(p.name for p in tmp_path.iterdir()) == ["termination-log"], "nothing fetched or written"


@pytest.mark.parametrize(
    "target",
    [
        "oci://127.0.0.1:9/ml/digits",
        f"oci://127.0.0.1:9/ml/digits@sha256:{'ab' * 32}",
        f"oci://127.0.0.1:9/ml/digits:int8@sha256:{'ab' * 32}",
        "pvc://models/in-the-way/int8",  # a file where the folder goes
    ],
)
def test_a_target_that_cannot_be_published_to_is_refused_before_anything_is_fetched_or_quantized(
    sample: zoo.SampleModel, tmp_path: Path, target: str
) -> None:
    """The Job found out at the push, after the whole quantization (up to its deadline of CPU)."""
    (tmp_path / "pvc" / "models").mkdir(parents=True)
    (tmp_path / "pvc" / "models" / "in-the-way").write_text("a file")
    command = spec(sample).command("digits")
    command[command.index("--target") + 1] = target
    command[command.index("--model") + 1] = f"file://{tmp_path}/missing.onnx"  # never looked at

    done, result = run_job(command, tmp_path)

    assert done.returncode == 3
    said = read_result(result.read_text())
    assert isinstance(said, str) and target in said, said
    assert "missing.onnx" not in said
    assert not (tmp_path / "work" / "artifact").exists(), "nothing quantized"


@pytest.mark.parametrize("number", ["1" + "0" * 400, "1e999", "-1e999"])
def test_a_verdicts_number_the_status_cannot_hold_reads_as_none(number: str) -> None:
    """A 400-digit integer raised OverflowError out of every tick; 1e999 became inf, which the status
    patch cannot write as JSON."""
    verdict = read_result(f'{{"gate": "failed", "metric": "x", "value": {number}, "threshold": {number}}}')
    assert isinstance(verdict, Verdict)
    assert (verdict.value, verdict.threshold) == (None, None)


@pytest.mark.parametrize(
    ("written", "read"),
    [("0.043", 0.043), ("0", 0.0), ("1", 1.0), ("null", None), ('"0.043"', None), ("true", None)]
    + [(number, None) for number in ("NaN", "-0.5", "1.5", "1e999", "1" + "0" * 400)],
)
def test_a_verdicts_shadow_disagreement_is_a_share_or_none(written: str, read: float | None) -> None:
    """What the operator compares with the accuracy-delta SLO: anything but a share of rows (a string,
    NaN, a negative or above 1) would warn of a burn no canary can read, or fail the status write."""
    verdict = read_result(
        f'{{"gate": "passed", "metric": "x", "value": 1, "threshold": 0.9, '
        f'"artifact": "pvc://models/digits/int8", "shadowDisagreement": {written}}}'
    )
    assert isinstance(verdict, Verdict)
    assert verdict.shadow_disagreement == read


@pytest.mark.parametrize(
    "produced",
    [
        "--insecure",  # a flag of the servers' fetch command
        "ftp://models.example.com/digits",
        "pvc://models/../secrets",
        "oci://registry.example.com/x//evil.example.com:1/y:t",
        "file:///models/a\nhttps://evil.example.com/b",
    ],
)
def test_a_passed_verdict_whose_artifact_is_no_uri_the_crd_takes_is_malformed(produced: str) -> None:
    """It goes into the servers' fetch command as spec.artifact.uri would, which the CRD checks."""
    message = json.dumps(
        {"gate": "passed", "metric": "x", "value": 1.0, "threshold": 0.9, "artifact": produced}
    )
    assert read_result(message) == f"the gate passed but the Job named no artifact URI: {produced!r}"


EVERY_OPTION = {
    "mode": "dynamic",
    "format": "QOperator",
    "perChannel": True,
    "activationType": "int8",
    "weightType": "uint8",
    "reduceRange": False,
    "calibrationMethod": "entropy",
    "percentile": 99.9,
    "numBins": 256,
    "batchSize": 4,
    "preProcess": False,
    "matmulConstBOnly": True,
    "matmulsOnly": True,
    "task": "embedding",
    "output": "--sign-key",  # a name click must read as the value, not as a flag
    "maskInput": "attention_mask",
    "metric": "cosine_mean",
    "threshold": -0.5,  # a value click must read as one, not as a flag; a cosine may be negative
    "minCosine": 0.9,
    "strategy": "fallback",
    "keepGoing": True,
    "maxTrials": 3,
    "excludeNodes": ["MatMul2", "-q"],
}
"""spec.quantize.options, each set to other than quantize's default; all but maxAccuracyDelta,
which the CRD refuses beside threshold."""
JOBS_OWN = {"model", "out", "calibration", "evaluation", "sign_key", "quiet"}
"""quantize's parameters the Job sets itself (the files it fetched, signingKeySecret, no progress
bars): never in spec.quantize.options."""
SECTION = {"model": "file:///m.onnx", "calibration": "file:///c.npz", "target": {"uri": "pvc://m/q"}}


def parsed_by_quantize(options: dict[str, Any]) -> click.Context:
    """The operator's quantize flags for `options`, parsed by `quantship quantize` itself."""
    job = quantization.QuantizeSpec.from_spec({"quantize": {**SECTION, "options": options}})
    assert job is not None
    return quantizing.quantize.make_context("quantize", ["m.onnx", "-o", "out", *job.quantize_args()])


def test_every_option_reaches_the_quantize_parameter_it_names_and_every_other_parameter_is_the_jobs() -> None:
    """A new flag of `quantship quantize` is an option of the CRD or the Job's own; each option
    arrives as its value."""
    schema = crd.spec_schema()["properties"]["quantize"]["properties"]["options"]["properties"]
    assert set(EVERY_OPTION) | {"maxAccuracyDelta"} == set(schema)

    context = parsed_by_quantize(EVERY_OPTION)

    source = context.get_parameter_source
    given = {name for name in context.params if source(name) is ParameterSource.COMMANDLINE} - JOBS_OWN
    assert given == set(context.params) - JOBS_OWN - {"max_accuracy_delta"}
    assert {name: context.params[name] for name in given} == {
        "mode": "dynamic",
        "quant_format": "QOperator",
        "per_channel": True,
        "activation_type": "int8",
        "weight_type": "uint8",
        "reduce_range": False,
        "calibration_method": "entropy",
        "percentile": 99.9,
        "num_bins": 256,
        "batch_size": 4,
        "pre_process": False,
        "matmul_const_b_only": True,
        "matmuls_only": True,
        "task": "embedding",
        "output_name": "--sign-key",
        "mask_input": "attention_mask",
        "metric": "cosine_mean",
        "threshold": -0.5,
        "min_cosine": 0.9,
        "strategy": "fallback",
        "keep_going": True,
        "max_trials": 3,
        "exclude": ("MatMul2", "-q"),
    }
    assert context.params["sign_key"] is None and not context.params["quiet"]


def test_the_operator_takes_quantizes_choices_without_loading_onnxruntime() -> None:
    """The CRD's enums and rules come from quantship.choices, as the CLI's options do: the operator
    never loads onnxruntime for them."""
    code = "import sys, quantship.operator.main; print('onnxruntime' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "False"
    options = crd.spec_schema()["properties"]["quantize"]["properties"]["options"]["properties"]
    assert options["metric"]["enum"] == [metric.value for metric in Metric]


def test_the_other_gate_limit_and_the_opposite_booleans_reach_quantize_too() -> None:
    """false is a flag of its own for the pairs (quantize's default may be either: reduceRange's is
    the Job's CPU's), and no flag for the switches."""
    options = {
        "maxAccuracyDelta": 0.01,
        "reduceRange": True,
        "preProcess": True,
        "matmulConstBOnly": False,
        "perChannel": False,
        "keepGoing": False,
    }
    context = parsed_by_quantize(options)
    assert context.params["max_accuracy_delta"] == 0.01
    assert (context.params["reduce_range"], context.params["pre_process"]) == (True, True)
    assert (context.params["matmul_const_b_only"], context.params["per_channel"]) == (False, False)
    assert context.get_parameter_source("keep_going") is ParameterSource.DEFAULT


def test_false_reaches_quantize_as_a_no_and_unset_as_no_choice_for_the_tuners_options() -> None:
    """matmulsOnly: false became --no-matmuls-only, whose value was the default's: quantize could not
    tell it from unset, and its tuner ran a MatMuls-only trial all the same (matmulConstBOnly: false,
    its MatMulConstBOnly recipes). false is a ban; unset leaves the tuner to choose."""
    for option, parameter in (("matmulsOnly", "matmuls_only"), ("matmulConstBOnly", "matmul_const_b_only")):
        assert parsed_by_quantize({option: False}).params[parameter] is False
        assert parsed_by_quantize({option: True}).params[parameter] is True
        assert parsed_by_quantize({}).params[parameter] is None


def test_whole_numbers_the_api_server_admits_as_floats_reach_quantize_as_integers() -> None:
    """A real API server admits 4.0 for an integer field (JSON has one number type), and quantize's
    --batch-size 4.0 was a usage error: the Job failed at once."""
    context = parsed_by_quantize({"batchSize": 4.0, "maxTrials": 2.0, "numBins": 512.0, "threshold": 1.0})
    assert [context.params[name] for name in ("batch_size", "max_trials", "num_bins")] == [4, 2, 512]
    assert context.params["threshold"] == 1.0


def test_a_job_given_every_option_runs_quantize_and_its_artifact_records_them(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    """The Job's own command line, run: a flag the operator misspelt fails it with a usage error."""
    options = {
        **EVERY_OPTION,
        "mode": "static",
        "format": "QDQ",
        "weightType": "int8",
        "calibrationMethod": "percentile",
        "percentile": 99.99,
        "numBins": 512,
        "task": "classification",
        "metric": "top1_agreement",
        "threshold": 0.9,
        "maxTrials": 0,
        "output": "probabilities",  # not the first output, label
        "excludeNodes": ["MatMul2"],  # preProcess false: the model's own names
    }
    del options["maskInput"]  # the digits model answers once per row: its refusal is tested below
    job = spec(sample, **options)
    done, result = run_job(job.command("digits"), tmp_path)
    assert done.returncode == 0, done.stderr
    verdict = read_result(result.read_text())
    assert isinstance(verdict, Verdict) and verdict.passed and verdict.artifact is not None
    manifest = fetch.fetch(verdict.artifact, tmp_path / "served", pvc_root=tmp_path / "pvc").manifest
    quantized = manifest["quantization"]
    # The user's exclusion first; then what S8S8 runs in float behind Q/DQ (no x86 int8 Add or
    # Softmax), which the tuner's unfused_in_float trial keeps in float.
    assert (quantized["output"], quantized["excluded_nodes"][0]) == ("probabilities", "MatMul2")
    assert (quantized["activation_type"], quantized["weight_type"], quantized["format"]) == (
        "int8",
        "int8",
        "QDQ",
    )
    assert quantized["calibration_params"] == {"percentile": 99.99, "num_bins": 512}
    assert (quantized["batch_size"], quantized["per_channel"], quantized["reduce_range"]) == (4, True, False)
    assert quantized["extra_options"] == {"MatMulConstBOnly": True}
    assert quantized["pre_process"] == "not requested"
    assert manifest["task"] == {"name": "classification", "why": "--task"}
    assert (manifest["tuning"]["strategy"], manifest["tuning"]["keep_going"]) == ("fallback", True)
    assert (manifest["validation"]["metric"], manifest["validation"]["threshold"]) == ("top1_agreement", 0.9)

    # A mask input the digits' labels have no positions for reaches quantize, which says it is
    # ignored (recorded in the manifest) and does not fail the Job on it.
    masked = spec(sample, maxTrials=0, maskInput="attention_mask")
    done, result = run_job(masked.command("digits"), tmp_path / "masked")
    assert done.returncode == 0, done.stderr
    verdict = read_result(result.read_text())
    assert isinstance(verdict, Verdict) and verdict.passed and verdict.artifact is not None
    served = fetch.fetch(verdict.artifact, tmp_path / "masked-served", pvc_root=tmp_path / "masked" / "pvc")
    said = served.manifest["warnings"]
    assert any(line.startswith("--mask-input attention_mask ignored: output 'label'") for line in said), said


def test_the_section_hash_names_the_job_and_a_pvc_target_gets_a_folder_per_model_and_job(
    sample: zoo.SampleModel,
) -> None:
    one, other = spec(sample), spec(sample, threshold=0.5)
    assert one.hash != other.hash and one == spec(sample)
    assert quantization.job_name("digits", one.hash) == f"digits-quantize-{one.hash}"
    assert one.output("digits") == f"pvc://models/digits/int8/digits/{one.hash}"
    # two models asking for the same section write side by side, not into one folder
    assert one.output("digits-eu") != one.output("digits-us")


@pytest.mark.parametrize("length", [names.MAX_NAME_LENGTH - 1, names.MAX_NAME_LENGTH])
def test_long_names_sharing_a_prefix_get_jobs_of_their_own(sample: zoo.SampleModel, length: int) -> None:
    digest = spec(sample).hash
    first, second = ("m" * (length - 1) + "a", "m" * (length - 1) + "b")
    jobs = {quantization.job_name(model, digest) for model in (first, second)}
    assert len(jobs) == 2
    for job in jobs:
        assert re.fullmatch(names.DNS_1123_LABEL, job) and len(job) <= 63, job
        assert job.startswith("m" * 30) and job.endswith(f"-quantize-{digest}")


def test_job_resources_kubernetes_would_refuse_are_an_invalid_spec() -> None:
    section = {
        "model": "file:///models/digits.onnx",
        "calibration": "file:///data/calibration.npz",
        "target": {"uri": "pvc://models/digits/int8"},
        "resources": {"limits": {"memory": "1Gi", "gpu": 1}, "requests": {"memory": "2Gi"}},
    }
    with pytest.raises(InvalidSpec, match=r"'gpu' is not a container resource.*the request 2Gi is more"):
        quantization.QuantizeSpec.from_spec({"quantize": section})


def test_a_publish_killed_half_way_leaves_nothing_once_the_next_one_ran(
    sample: zoo.SampleModel, good_artifact: artifact.Artifact, tmp_path: Path
) -> None:
    """kill -9 between replace_dir's two renames, or mid-copy: `.NAME.old` (the older artifact) and
    `.NAME-xxxx` (the scratch) stayed on the shared claim for ever, artifact-sized each."""
    job = spec(sample, mode="static", metric="top1_agreement", threshold=0.9)
    dest = tmp_path / "pvc" / "models" / "digits" / "int8" / "digits" / job.hash
    dest.parent.mkdir(parents=True)
    shutil.copytree(good_artifact.root, dest.parent / f".{dest.name}.old")  # cut short after the first rename
    scratch = quantize_job.PUBLISH_PREFIX.format(dest.name)
    killed = dest.parent / f"{scratch}k1ll3d"
    shutil.copytree(good_artifact.root, killed / "artifact")  # a killed copy, an hour and more ago
    users = dest.parent / f".{dest.name}-cache"  # not a publish's: a user's, however old
    users.mkdir()
    old = time.time() - 2 * quantize_job.STALE_PUBLISH_S
    for leftover in (killed, users):
        os.utime(leftover, (old, old))
    racing = dest.parent / f"{scratch}n0wn0w"  # another Job's, publishing now
    racing.mkdir()

    done, _ = run_job(job.command("digits"), tmp_path)

    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in dest.parent.iterdir()) == sorted([dest.name, racing.name, users.name])


def pod(name: str, created: str, *, reason: str = "", terminated: str = "", disrupted: bool = False) -> Any:
    status: dict[str, Any] = {"reason": reason} if reason else {}
    if terminated:
        status["containerStatuses"] = [
            {"name": quantization.CONTAINER, "state": {"terminated": {"reason": terminated, "exitCode": 137}}}
        ]
    if disrupted:
        status["conditions"] = [{"type": "DisruptionTarget", "status": "True"}]
    return {"metadata": {"name": name, "creationTimestamp": created}, "status": status}


def test_what_befell_the_jobs_last_pod_is_said_not_an_eviction_it_ignored() -> None:
    evicted = pod("digits-q-zz", "2026-12-05T10:00:00Z", reason="Evicted", disrupted=True)
    killed = pod("digits-q-aa", "2026-12-05T10:05:00Z", terminated="OOMKilled")  # listed first by name
    quiet = pod("digits-q-bb", "2026-12-05T10:05:00Z")

    assert quantization.pod_trouble([killed, evicted]) == "container OOMKilled, exit code 137"
    assert quantization.pod_trouble([quiet, evicted]) is None, "the eviction did not count"


def test_why_the_jobs_newest_pod_has_not_started_is_the_schedulers_or_the_kubelets_word() -> None:
    unschedulable = {
        "metadata": {"name": "digits-q-aa", "creationTimestamp": "2026-12-05T10:05:00Z"},
        "status": {
            "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes"}
            ]
        },
    }
    creating = {
        "metadata": {"name": "digits-q-bb", "creationTimestamp": "2026-12-05T10:06:00Z"},
        "status": {
            "containerStatuses": [
                {"name": quantization.CONTAINER, "state": {"waiting": {"reason": "ContainerCreating"}}}
            ]
        },
    }
    missing_secret = {
        "metadata": {"name": "digits-q-cc", "creationTimestamp": "2026-12-05T10:07:00Z"},
        "status": {
            "containerStatuses": [
                {
                    "name": quantization.CONTAINER,
                    "state": {
                        "waiting": {"reason": "CreateContainerConfigError", "message": 'secret "s" not found'}
                    },
                }
            ]
        },
    }

    assert quantization.pod_waiting([unschedulable]) == ("Unschedulable", "0/3 nodes")
    assert quantization.pod_waiting([unschedulable, creating]) is None, "the newest is on its way"
    assert quantization.pod_waiting([missing_secret, creating]) == (
        "CreateContainerConfigError",
        'secret "s" not found',
    )


OWNER = {
    "apiVersion": "serving.quantship.io/v1alpha1",
    "kind": "QuantizedModel",
    "metadata": {"name": "digits", "namespace": "ml", "uid": "0b3c-uid"},
}


@pytest.mark.parametrize(
    ("tag", "owner"), [("int8", "digits"), ("t" * 128, "digits"), ("int8", "m" * 253), ("v1.2_rc-3", "a.b-c")]
)
def test_an_oci_targets_job_pushes_first_to_a_tag_of_its_own_within_the_tag_grammar(
    tag: str, owner: str
) -> None:
    section = {
        "model": "file:///m.onnx",
        "calibration": "file:///c.npz",
        "target": {"uri": f"oci://r.io/ml/d:{tag}"},
    }
    job = quantization.QuantizeSpec.from_spec({"quantize": section})
    assert job is not None
    unique = job.unique_tag("team-a", owner)
    assert unique is not None and re.fullmatch(oci.PUSH_REFERENCE_PATTERN, f"r.io/ml/d:{unique}")
    assert unique.endswith(f"-{job.hash}") and unique.startswith(f"{tag}-team-a"[:64])
    command = job.command(owner)
    assert command[command.index("--target") + 1] == f"oci://r.io/ml/d:{tag}", "the target's tag moves on too"
    other = quantization.QuantizeSpec.from_spec({"quantize": {**section, "options": {"maxTrials": 1}}})
    assert other is not None and other.unique_tag("team-a", owner) != unique, (
        "each Job pushes to a tag of its own"
    )
    models = [
        ("team-a", owner),
        ("team-b", owner),
        ("team-a", owner + "x"),
        ("team-a-b", owner),
        ("team", "a-b"),
    ]
    tags = [job.unique_tag(namespace, name) for namespace, name in models]
    assert len(set(tags)) == len(models), "the same section in another model (or namespace) is another tag"


def test_an_oci_targets_job_names_its_unique_tag_in_the_environment_an_older_image_ignores() -> None:
    section = {
        "model": "file:///m.onnx",
        "calibration": "file:///c.npz",
        "target": {"uri": "oci://r.io/ml/d:int8"},
    }
    job = quantization.QuantizeSpec.from_spec({"quantize": section})
    assert job is not None
    body = quantization.job(job, name="digits", namespace="ml", image="quantship:0.0.9", owner=OWNER)
    container = body["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env[UNIQUE_TAG_ENV] == job.unique_tag("ml", "digits")
    # an older quantize-job hands an option it does not know on to `quantship quantize`, which refuses it
    assert not any(arg.startswith("--unique-tag") for arg in container["command"])


def test_a_pvc_targets_job_has_no_unique_tag(sample: zoo.SampleModel) -> None:
    body = quantization.job(spec(sample), name="digits", namespace="ml", image="quantship", owner=OWNER)
    container = body["spec"]["template"]["spec"]["containers"][0]
    assert UNIQUE_TAG_ENV not in {item["name"] for item in container["env"]}


def test_a_stray_unique_tag_in_the_environment_does_not_refuse_a_pvc_target(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    """The operator sets UNIQUE_TAG_ENV for oci:// targets only; one left in a user's shell refused a
    pvc:// run with 'a unique tag is for an oci:// target only', naming no variable."""
    job = spec(sample, mode="static", metric="top1_agreement", threshold=0.9)
    done, _ = run_job(job.command("digits"), tmp_path, env={UNIQUE_TAG_ENV: "stale-tag"})
    assert done.returncode == 0, done.stderr
