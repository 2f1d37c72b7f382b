"""spec.quantize with an oci:// target: the Job's command line, as the operator writes it, run
with the real CLI against the real registry behind basic auth, its push secret mounted as a
dockerconfigjson. The verdict names the artifact pinned by digest, and the model servers' fetch
pulls exactly that."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import registry_harness
import requests
from fault_proxy import Fault, proxying
from hostile_registry import drips, serving
from registry_harness import PASSWORD, USER, Registry

from quantship import artifact, zoo
from quantship.operator import fetch, quantization, quantize_job
from quantship.operator.quantize_job import Verdict, read_result


def test_a_passing_job_pushes_to_the_registry_and_names_the_artifact_by_digest(
    auth_registry: Registry, sample: zoo.SampleModel, tmp_path: Path
) -> None:
    tag = auth_registry.uri("quantship/quantized:int8")
    section = {
        "model": f"file://{sample.model}",
        "calibration": f"file://{sample.calibration}",
        "options": {"maxTrials": 0},
        "target": {"uri": tag, "pullSecret": "registry-push"},
    }
    job = quantization.QuantizeSpec.from_spec({"quantize": section})
    assert job is not None
    command = job.command("digits")
    config = tmp_path / "config.json"  # the Secret's .dockerconfigjson, where the Job mounts it
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    config.write_text(json.dumps({"auths": {auth_registry.address: {"auth": token}}}))
    result = tmp_path / "termination-log"
    local = {"--workdir": tmp_path / "work", "--result-file": result, "--registry-config": config}
    for flag, path in local.items():
        command[command.index(flag) + 1] = str(path)
    assert command[0] == "quantship"
    done = subprocess.run(
        [sys.executable, "-m", "quantship", *command[1:]],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr

    verdict = read_result(result.read_text())
    assert isinstance(verdict, Verdict) and verdict.passed and verdict.artifact is not None
    prefix = auth_registry.uri("quantship/quantized@sha256:")
    assert verdict.artifact.startswith(prefix) and len(verdict.artifact) == len(prefix) + 64
    served = fetch.fetch(verdict.artifact, tmp_path / "served", registry_config=config)
    by_tag = fetch.fetch(tag, tmp_path / "by-tag", registry_config=config)
    assert served.digest == by_tag.digest, "the pinned reference is what the tag names"
    assert served.manifest["validation"]["gate"] == "passed"


OWNER = {
    "apiVersion": "serving.quantship.io/v1alpha1",
    "kind": "QuantizedModel",
    "metadata": {"name": "digits", "namespace": "ml", "uid": "0b3c-uid"},
}


def _run_job(section: dict[str, object], tmp_path: Path) -> Verdict:
    """The Job of `section` for the QuantizedModel ml/digits, its container's command and
    environment as the operator writes them."""
    job = quantization.QuantizeSpec.from_spec({"quantize": section})
    assert job is not None
    body = quantization.job(job, name="digits", namespace="ml", image="quantship", owner=OWNER)
    container = body["spec"]["template"]["spec"]["containers"][0]
    command = list(container["command"])
    result = tmp_path / "termination-log"
    for flag, path in {"--workdir": tmp_path / "work", "--result-file": result}.items():
        command[command.index(flag) + 1] = str(path)
    done = subprocess.run(
        [sys.executable, "-m", "quantship", *command[1:]],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, **{item["name"]: item["value"] for item in container["env"]}},
    )
    assert done.returncode == 0, done.stderr
    verdict = read_result(result.read_text())
    assert isinstance(verdict, Verdict) and verdict.artifact is not None
    return verdict


def test_the_stable_a_job_published_survives_the_next_job_and_the_registrys_untagged_cleanup(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    # Harbor, ECR and GHCR retention delete untagged manifests: the stable's digest must keep a tag
    # of its own once the next Job moves the target's tag to the canary.
    root = tmp_path / "registry"
    root.mkdir()
    served = registry_harness.start(root, auth=False)
    base = {"model": f"file://{sample.model}", "calibration": f"file://{sample.calibration}"}
    try:
        target = {"uri": served.uri("jobs/digits:quantized")}
        stable = _run_job({**base, "options": {"maxTrials": 0}, "target": target}, tmp_path / "job1")
        canary = _run_job(
            {**base, "options": {"maxTrials": 0, "perChannel": True}, "target": target}, tmp_path / "job2"
        )
        assert stable.artifact != canary.artifact
    finally:
        served.process.terminate()
        served.process.wait(10)
    subprocess.run(
        [registry_harness.BINARY, "garbage-collect", "--delete-untagged", str(root / "config.yml")],
        capture_output=True,
        check=True,
        timeout=120,
    )
    restarted = registry_harness.start(root, auth=False)  # another port: the pinned URIs are moved to it
    try:
        fetched = []
        for n, verdict in enumerate((stable, canary)):
            assert verdict.artifact is not None
            pinned = verdict.artifact.replace(served.address, restarted.address)
            fetched.append(fetch.fetch(pinned, tmp_path / f"served-{n}"))
        by_tag = fetch.fetch(restarted.uri("jobs/digits:quantized"), tmp_path / "by-tag")
        assert by_tag.digest == fetched[1].digest != fetched[0].digest, "the tag names the last Job's"
    finally:
        restarted.process.terminate()
        restarted.process.wait(10)


def _garbage_collect_untagged(root: Path) -> None:
    subprocess.run(
        [registry_harness.BINARY, "garbage-collect", "--delete-untagged", str(root / "config.yml")],
        capture_output=True,
        check=True,
        timeout=120,
    )


def test_models_of_two_namespaces_with_the_same_section_keep_their_stables_through_the_cleanup(
    sample: zoo.SampleModel,
    good_artifact: artifact.Artifact,
    skewed_artifact: artifact.Artifact,
    tmp_path: Path,
) -> None:
    # team-a/digits and team-b/digits, one quantize section, one target repository: each Job's
    # unique tag is its own, so team-b's push leaves the digest team-a's stable pins tagged.
    root = tmp_path / "registry"
    root.mkdir()
    served = registry_harness.start(root, auth=False)
    section = {
        "model": f"file://{sample.model}",
        "calibration": f"file://{sample.calibration}",
        "target": {"uri": served.uri("shared/digits:int8")},
    }
    job = quantization.QuantizeSpec.from_spec({"quantize": section})
    assert job is not None
    pinned = []
    try:
        for namespace, produced in (("team-a", good_artifact), ("team-b", skewed_artifact)):
            verdict = quantize_job.run(
                model=job.model,
                calibration=job.calibration,
                evaluation=None,
                target=job.target,
                quantize=lambda _m, _c, _e, out, made=produced: shutil.copytree(made.root, out),
                workdir=tmp_path / namespace,
                result_file=tmp_path / f"{namespace}.result",
                unique_tag=job.unique_tag(namespace, "digits"),
            )
            pinned.append(verdict.artifact)
    finally:
        served.process.terminate()
        served.process.wait(10)
    _garbage_collect_untagged(root)
    restarted = registry_harness.start(root, auth=False)
    try:
        for n, uri in enumerate(pinned):
            assert uri is not None
            fetch.fetch(uri.replace(served.address, restarted.address), tmp_path / f"served-{n}")
    finally:
        restarted.process.terminate()
        restarted.process.wait(10)


SLOW = ["--speed-limit", "100000", "--speed-time", "0.3"]
"""A limit a drip of 64 bytes every 50 ms falls far under within a second."""


def _quantize_job(
    args: list[str], tmp_path: Path
) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    """The Job's container, run as a process with its own empty TMPDIR: how it ended, and its verdict file."""
    result, tmp = tmp_path / "termination-log", tmp_path / "tmp"
    tmp.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "quantship", "quantize-job", "--result-file", str(result), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "TMPDIR": str(tmp)},
    )
    assert list(tmp.iterdir()) == [], "the push's and the quantization's scratch folders are gone"
    return done, json.loads(result.read_text())


def _error(stderr: str) -> str:
    """The one error line (quantize's warnings may come before it): the last line, without `error: `."""
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == stderr.strip().splitlines()[-1], stderr
    return errors[0].removeprefix("error: ")


def test_a_job_whose_push_drips_is_abandoned_in_one_line_and_leaves_no_tag(
    registry: Registry, sample: zoo.SampleModel, tmp_path: Path
) -> None:
    """A proxy in front of the registry answers the manifest's PUT (which it never passes on) with a
    page it drips: the push is abandoned at --speed-limit, exit 3, the error in the verdict file,
    and the target's tag is nowhere."""
    repository = "quantship/dripping-job"
    with proxying(registry.address) as proxy:
        page = b"<html>created</html>" * 5000
        proxy.faults.append(Fault("PUT", "/manifests/", status=201, body=page, drip=(64, 0.05)))
        args = [
            "--model", f"file://{sample.model}", "--calibration", f"file://{sample.calibration}",
            "--target", proxy.uri(f"{repository}:v1"), "--workdir", str(tmp_path / "work"),
            *SLOW, "--", "--max-trials", "0",
        ]  # fmt: skip
        done, verdict = _quantize_job(args, tmp_path)
    assert done.returncode == 3, done.stderr
    error = _error(done.stderr)
    assert f"PUT /v2/{repository}/manifests/v1: its answer moved" in error, error
    assert error.endswith("under the minimum of 100000 bytes/s over 0.3 s: abandoned"), error
    assert verdict == {"error": error}
    tag = requests.get(f"http://{registry.address}/v2/{repository}/manifests/v1", timeout=10)
    assert tag.status_code == 404, "no manifest reached the registry"


@pytest.mark.timeout(60)  # unheld, the drip takes minutes
def test_a_job_whose_input_drips_is_abandoned_and_leaves_no_half_file(
    sample: zoo.SampleModel, tmp_path: Path
) -> None:
    """The same flags hold the Job's http(s) downloads: the model, dripped, is abandoned before any
    quantization, and its half is removed from the work folder."""
    with serving() as server:
        server.answers["/model.onnx"] = drips(
            sample.model.read_bytes(), piece=64, every=0.05, until=server.released
        )
        work = tmp_path / "work"
        args = [
            "--model", f"http://{server.address}/model.onnx", "--calibration", f"file://{sample.calibration}",
            "--target", f"file://{tmp_path / 'published'}", "--workdir", str(work), *SLOW,
        ]  # fmt: skip
        done, verdict = _quantize_job(args, tmp_path)
    assert done.returncode == 3, done.stderr
    error = _error(done.stderr)
    assert error.startswith(f"http://{server.address}/model.onnx: its answer moved"), error
    assert error.endswith("abandoned") and verdict == {"error": error}
    assert list(work.iterdir()) == [] and not (tmp_path / "published").exists()
